"""The Python API: ``Detector.from_weights(...).detect(images)``.

A ``Detector`` owns one network in inference form (batch norm folded into the convolutions, eval mode, no
autograd), the backend that runs it, and the whole path around it: load/convert pixels, TF-exact preprocessing, the
forward pass, decoding and NMS, and boxes mapped back to the original image's pixels.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from detector import defaults
from detector.backends.base import Backend, BackendChoice
from detector.backends.factory import build_backend
from detector.builtin import resolve_weights
from detector.images import ImageInput, load_image
from detector.model import SSDLite
from detector.postprocess import detections_in_pixels
from detector.preprocess import preprocess
from detector.results import ImageDetections, ModelInfo
from detector.spec import ModelSpec
from detector.weights import load_weights


def fold_batch_norms(module: nn.Module) -> nn.Module:
    """Fold every (Conv2d, BatchNorm2d) pair of ``Sequential`` containers into the conv, in place (eval only).

    Inference then does one multiply-add per weight instead of a conv followed by a per-channel affine pass.
    """
    for child in module.children():
        fold_batch_norms(child)
    if isinstance(module, nn.Sequential):
        for i in range(len(module) - 1):
            conv, bn = module[i], module[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                module[i] = fuse_conv_bn_eval(conv, bn)
                module[i + 1] = nn.Identity()
    return module


def inference_network(model: SSDLite, device: str | torch.device = "cpu") -> SSDLite:
    """A copy of ``model`` in inference form: eval mode, batch norm folded, on ``device``."""
    network = fold_batch_norms(copy.deepcopy(model).eval()).to(torch.device(device))
    assert isinstance(network, SSDLite)
    return network


class Detector:
    """Detects objects in images with an SSDLite-MobileNetV2 network.

    Build one with :meth:`from_weights` (a weights file or a built-in model) or :meth:`from_model` (a network in
    memory, e.g. while training).

    Args:
        network: the network in inference form (:func:`inference_network`), on ``device``.
        spec: its description (labels, input size, pre- and post-processing).
        backend: the engine running ``network`` (:mod:`detector.backends`).
        digest: SHA-256 of the weights file, reported by ``info``.
        backend_reason: why that backend, for ``info``.
    """

    def __init__(
        self,
        network: SSDLite,
        spec: ModelSpec,
        *,
        backend: Backend,
        digest: str = "",
        backend_reason: str = "the default: eager PyTorch, the reference",
    ):
        self.spec = spec
        self.digest = digest
        self.model = network
        self.device = next(network.parameters()).device
        self.backend = backend
        self.backend_reason = backend_reason
        self.anchors = network.anchors

    @classmethod
    def from_model(
        cls, model: SSDLite, spec: ModelSpec, *, device: str | torch.device = "cpu", digest: str = ""
    ) -> Detector:
        """A detector running a copy of ``model`` (left as it is) in eager PyTorch on ``device``."""
        network = inference_network(model, device)
        return cls(network, spec, backend=build_backend("torch", network, device=device), digest=digest)

    @classmethod
    def from_weights(
        cls,
        weights: str | Path | None = None,
        *,
        device: str | torch.device = "cpu",
        backend: BackendChoice = "torch",
        check_images: Sequence[np.ndarray] = (),
    ) -> Detector:
        """Load a weights file or a built-in model by name; ``None`` is the default built-in model.

        Args:
            backend: "torch" (the reference), "auto" (the fastest one meeting the accuracy bar here, measured once
                per machine and cached), or a name from :data:`detector.backends.base.BACKEND_NAMES`.
            check_images: RGB uint8 photographs: ``auto`` judges reduced-precision backends on them (without
                any it refuses those), ``openvino-int8`` calibrates on them.

        Raises:
            detector.errors.WeightsError: the file or built-in model is missing or does not fit.
            detector.errors.BackendUnavailable: the named backend cannot run here.
        """
        loaded = load_weights(resolve_weights(weights))
        network = inference_network(loaded.model, device)
        if backend == "auto":
            from detector.backends.selection import select_backend

            engine, choice = select_backend(network, loaded.spec, check_images, digest=loaded.digest, device=device)
            reason = f"auto: {choice.reason}"
        elif backend == "torch":
            engine, reason = build_backend("torch", network, device=device), "the default: eager PyTorch, the reference"
        else:
            pre = loaded.spec.preprocessing
            size = loaded.spec.image_size
            calibration = [preprocess(check_images, size, pre.pixel_scale, pre.pixel_offset)] if check_images else []
            engine = build_backend(backend, network, device=device, calibration=calibration)
            reason = "asked for by name"
        return cls(network, loaded.spec, backend=engine, digest=loaded.digest, backend_reason=reason)

    @property
    def labels(self) -> tuple[str, ...]:
        return self.spec.labels

    def info(self) -> ModelInfo:
        """What the model is: name, version, labels, input size, weights digest, provenance and backend."""
        return ModelInfo(
            name=self.spec.name,
            version=self.spec.version,
            architecture=self.spec.architecture,
            input_size=(self.spec.image_size, self.spec.image_size),
            num_classes=self.spec.num_classes,
            labels=list(self.spec.reported_labels),
            score_mode=self.spec.score_mode,
            weights_sha256=self.digest,
            source=self.spec.source,
            license=self.spec.license,
            backend=self.backend.name,
            backend_engine=self.backend.describe(),
            backend_reason=self.backend_reason,
        )

    def predict_raw(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The network alone, on the backend: (N, 3, S, S) preprocessed input → (N, A, 4) box codes, (N, A, K)
        logits, float32."""
        return self.backend(batch)

    @torch.inference_mode()
    def model_outputs(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Like :meth:`predict_raw`, always with eager PyTorch fp32: the reference other backends are checked on."""
        return self.model(batch.to(self.device))

    def preprocess(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        """RGB uint8 (H, W, 3) arrays → the network's (N, 3, S, S) input."""
        pre = self.spec.preprocessing
        return preprocess(arrays, self.spec.image_size, pre.pixel_scale, pre.pixel_offset)

    @torch.inference_mode()
    def postprocess(
        self,
        box_codes: torch.Tensor,
        class_logits: torch.Tensor,
        sizes: Sequence[tuple[int, int]],
        *,
        score_threshold: float = defaults.SCORE_THRESHOLD,
        max_detections: int | None = None,
    ) -> list[ImageDetections]:
        """Raw outputs → detections in pixels; ``sizes`` holds each image's (height, width)."""
        return detections_in_pixels(
            box_codes,
            class_logits,
            self.anchors,
            self.spec.postprocessing,
            self.spec.labels,
            sizes,
            score_threshold=score_threshold,
            max_detections=max_detections,
        )

    def detect_arrays(
        self,
        arrays: Sequence[np.ndarray],
        *,
        score_threshold: float = defaults.SCORE_THRESHOLD,
        max_detections: int | None = None,
    ) -> list[ImageDetections]:
        """Detect in RGB uint8 (H, W, 3) arrays with one forward pass."""
        if not arrays:
            return []
        codes, logits = self.predict_raw(self.preprocess(arrays))
        sizes = [(a.shape[0], a.shape[1]) for a in arrays]
        return self.postprocess(codes, logits, sizes, score_threshold=score_threshold, max_detections=max_detections)

    def detect(
        self,
        images: ImageInput | Sequence[ImageInput],
        *,
        score_threshold: float = defaults.SCORE_THRESHOLD,
        max_detections: int | None = None,
        batch_size: int = defaults.DETECT_BATCH_SIZE,
    ) -> list[ImageDetections]:
        """Detect objects in one image or a sequence of them; always returns one result per image, in order.

        Images may be paths, encoded bytes, PIL images or numpy arrays (RGB, gray, RGBA; uint8, uint16 or float in
        [0, 1]). Raises :class:`detector.errors.ImageError` for an image that cannot be read.
        """
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold}")
        if max_detections is not None and max_detections < 1:
            raise ValueError(f"max_detections must be at least 1, got {max_detections}")
        one = isinstance(images, (str, Path, bytes, bytearray, memoryview, np.ndarray)) or not isinstance(
            images, Sequence
        )
        items = [cast(ImageInput, images)] if one else cast(Sequence[ImageInput], images)
        results: list[ImageDetections] = []
        for start in range(0, len(items), batch_size):
            arrays = [load_image(image) for image in items[start : start + batch_size]]
            results += self.detect_arrays(arrays, score_threshold=score_threshold, max_detections=max_detections)
        return results
