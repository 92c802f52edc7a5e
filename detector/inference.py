"""The Python API: ``Detector.from_weights(...).detect(images)``.

A ``Detector`` owns one network in inference form (batch norm folded into the convolutions, eval mode, no
autograd) and runs the whole path: load/convert pixels, TF-exact preprocessing, the forward pass, decoding and NMS,
and boxes mapped back to the original image's pixels.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from detector import defaults
from detector.backends import Backend, build_backend
from detector.images import ImageInput, load_image
from detector.model import SSDLite
from detector.postprocess import RawDetections, postprocess
from detector.preprocess import preprocess
from detector.weights import ModelSpec, load_weights


@dataclass(frozen=True)
class Detection:
    """One object: ``box`` is [x1, y1, x2, y2] in the original image's pixels (after EXIF orientation)."""

    label: str
    class_id: int
    score: float
    box: tuple[float, float, float, float]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "box": list(self.box)}


@dataclass(frozen=True)
class ImageDetections:
    """All detections of one image, highest score first, with the image's size as detected (upright)."""

    width: int
    height: int
    detections: list[Detection]

    def to_dict(self) -> dict[str, Any]:
        return {"width": self.width, "height": self.height, "detections": [d.to_dict() for d in self.detections]}


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


class Detector:
    """Detects objects in images with an SSDLite-MobileNetV2 network.

    Args:
        model: the network (trained weights).
        spec: its description (labels, input size, NMS settings).
        digest: SHA-256 of the weights file, reported by ``info``.
        device: where to run ("cpu", "cuda", ...).
        backend: the engine running the network (:mod:`detector.backends`); default eager PyTorch on ``device``.
        backend_reason: why that backend, for ``info``.
    """

    def __init__(
        self,
        model: SSDLite,
        spec: ModelSpec,
        *,
        digest: str = "",
        device: str | torch.device = "cpu",
        backend: Backend | None = None,
        backend_reason: str = "the default: eager PyTorch, the reference",
    ):
        self.spec = spec
        self.digest = digest
        self.device = torch.device(device)
        self.model = fold_batch_norms(copy.deepcopy(model).eval()).to(self.device)
        self.backend = backend or build_backend("torch", self.model, device=self.device)
        self.backend_reason = backend_reason
        self.anchors = self.model.anchors
        post = spec.postprocessing
        self._nms_iou = float(post["nms_iou_threshold"])
        self._max_detections = int(post["max_detections"])
        self._clip_boxes = str(post["clip_boxes"])

    @classmethod
    def from_weights(
        cls,
        weights: str | Path | None = None,
        *,
        device: str | torch.device = "cpu",
        backend: str = "torch",
        check_images: Sequence[np.ndarray] = (),
    ) -> Detector:
        """Load a weights file; with ``None``, the built-in person model (converted on first use).

        Args:
            backend: "torch" (the reference), "auto" (the fastest one meeting the accuracy bar here, measured once
                per machine and cached), or a name from :data:`detector.backends.BACKEND_NAMES`.
            check_images: RGB uint8 photographs: ``auto`` judges reduced-precision backends on them (without
                any it refuses those), ``openvino-int8`` calibrates on them.

        Raises:
            detector.backends.BackendUnavailable: the named backend cannot run here.
        """
        if weights is None:
            from detector.builtin import builtin_weights

            weights = builtin_weights()
        loaded = load_weights(weights)
        detector = cls(loaded.model, loaded.spec, digest=loaded.digest, device=device)
        if backend == "auto":
            from detector.backends.selection import select_backend

            detector.backend, choice = select_backend(detector, check_images)
            detector.backend_reason = f"auto: {choice.reason}"
        elif backend != "torch":
            calibration = [detector.preprocess(check_images)] if check_images else []
            detector.backend = build_backend(backend, detector.model, device=device, calibration=calibration)
            detector.backend_reason = "asked for by name"
        return detector

    @property
    def labels(self) -> tuple[str, ...]:
        return self.spec.labels

    def info(self) -> dict[str, Any]:
        """What the model is: name, version, labels, input size, weights digest and provenance."""
        return {
            "name": self.spec.name,
            "version": self.spec.version,
            "architecture": self.spec.architecture,
            "input_size": [self.spec.image_size, self.spec.image_size],
            "num_classes": self.spec.num_classes,
            "labels": list(self.spec.labels[1:]),
            "score_mode": self.spec.score_mode,
            "weights_sha256": self.digest,
            "source": self.spec.source,
            "license": self.spec.license,
            "backend": self.backend.name,
            "backend_engine": self.backend.describe(),
            "backend_reason": self.backend_reason,
        }

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
        return preprocess(arrays, self.spec.image_size, pre["pixel_scale"], pre["pixel_offset"])

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
        raw = postprocess(
            box_codes.float(),
            class_logits.float(),
            self.anchors.to(box_codes.device),
            score_threshold=score_threshold,
            iou_threshold=self._nms_iou,
            max_detections=min(max_detections or self._max_detections, self._max_detections),
            clip_boxes=self._clip_boxes,
        )
        return [self._to_pixels(r, height, width) for r, (height, width) in zip(raw, sizes, strict=True)]

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
        batch_size: int = 8,
    ) -> list[ImageDetections]:
        """Detect objects in one image or a sequence of them; always returns one result per image, in order.

        Images may be paths, encoded bytes, PIL images or numpy arrays (RGB, gray, RGBA; uint8, uint16 or float in
        [0, 1]). Raises :class:`detector.errors.ImageError` for an image that cannot be read.
        """
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold}")
        if max_detections is not None and max_detections < 1:
            raise ValueError(f"max_detections must be at least 1, got {max_detections}")
        if isinstance(images, (str, Path, bytes, bytearray, memoryview, np.ndarray)) or not isinstance(
            images, Sequence
        ):
            images = [images]
        results: list[ImageDetections] = []
        for start in range(0, len(images), batch_size):
            arrays = [load_image(image) for image in images[start : start + batch_size]]
            results += self.detect_arrays(arrays, score_threshold=score_threshold, max_detections=max_detections)
        return results

    def _to_pixels(self, raw: RawDetections, height: int, width: int) -> ImageDetections:
        scale = torch.tensor([width, height, width, height], dtype=raw.boxes.dtype, device=raw.boxes.device)
        boxes = (raw.boxes * scale).tolist()
        detections = [
            Detection(label=self.spec.labels[label], class_id=label, score=score, box=tuple(box))
            for box, score, label in zip(boxes, raw.scores.tolist(), raw.labels.tolist(), strict=True)
        ]
        return ImageDetections(width=width, height=height, detections=detections)
