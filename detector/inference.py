"""The Python API: ``Detector.from_weights(...).detect(images)``.

A ``Detector`` owns the engine that runs the network (:mod:`detector.backends`) and the whole path around it: load
and convert pixels, TF-exact preprocessing, the forward pass, decoding and NMS, and boxes mapped back to the
original image's pixels. Everything but the engine is numpy: a detector on ONNX Runtime or OpenVINO whose engine
file is in the cache (``make install`` exports it) is built from the weights file's metadata and that file alone,
and never imports torch. The network itself (eager PyTorch, batch norm folded) is loaded when something asks for it:
the ``torch`` backend, the reference outputs, exporting, measuring backends.
"""

from __future__ import annotations

import copy
import json
import logging
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

from detector import defaults
from detector.anchors import anchors_for
from detector.backends.base import Backend, BackendChoice
from detector.backends.factory import FROM_EXPORT, build_backend, build_from_export
from detector.backends.onnx import weights_key
from detector.builtin import resolve_weights
from detector.cache import file_digest
from detector.images import ImageInput, load_image
from detector.postprocess import detections_in_pixels
from detector.preprocess import preprocess
from detector.results import ImageDetections, ModelInfo
from detector.spec import ModelSpec
from detector.weights import load_weights, read_spec

_log = logging.getLogger("detector.backends")

if TYPE_CHECKING:
    import torch
    from torch import nn

    from detector.model import SSDLite

REFERENCE_REASON = "the default: eager PyTorch, the reference"


def fold_batch_norms(module: nn.Module) -> nn.Module:
    """Fold every (Conv2d, BatchNorm2d) pair of ``Sequential`` containers into the conv, in place (eval only).

    Inference then does one multiply-add per weight instead of a conv followed by a per-channel affine pass.
    """
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

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
    import torch

    network = fold_batch_norms(copy.deepcopy(model).eval()).to(torch.device(device))
    return cast("SSDLite", network)


class Detector:
    """Detects objects in images with an SSDLite-MobileNetV2 network.

    Build one with :meth:`from_weights` (a weights file or a built-in model) or :meth:`from_model` (a network in
    memory, e.g. while training).

    Args:
        spec: the model's description (labels, input size, pre- and post-processing).
        backend: the engine running the network (:mod:`detector.backends`).
        network: the network in inference form (:func:`inference_network`), if already loaded.
        weights: the weights file, to load the network from when it is first needed.
        digest: SHA-256 of the weights file, reported by ``info``.
        device: where the network runs (for the torch backends).
        backend_reason: why that backend, for ``info``.
    """

    def __init__(
        self,
        spec: ModelSpec,
        *,
        backend: Backend,
        network: SSDLite | None = None,
        weights: Path | None = None,
        digest: str = "",
        device: str = "cpu",
        backend_reason: str = REFERENCE_REASON,
    ):
        if network is None and weights is None:
            raise ValueError("a Detector needs its network or the weights file to load it from")
        self.spec = spec
        self.digest = digest
        self.device = device
        self.backend = backend
        self.backend_reason = backend_reason
        self.anchors = anchors_for(spec.image_size)
        self._network = network
        self._weights = weights

    @classmethod
    def from_model(cls, model: SSDLite, spec: ModelSpec, *, device: str = "cpu", digest: str = "") -> Detector:
        """A detector running a copy of ``model`` (left as it is) in eager PyTorch on ``device``."""
        network = inference_network(model, device)
        return cls(
            spec, backend=build_backend("torch", network, device=device), network=network, digest=digest, device=device
        )

    @classmethod
    def from_weights(
        cls,
        weights: str | Path | None = None,
        *,
        device: str = "cpu",
        backend: BackendChoice = "torch",
        check_images: Sequence[np.ndarray] = (),
        threads: int | None = None,
        allow_int8: bool = False,
        measure_apart: bool = False,
    ) -> Detector:
        """Load a weights file or a built-in model by name; ``None`` is the default built-in model.

        Args:
            backend: "torch" (the reference), "auto" (the fastest one meeting the accuracy bar here, measured once
                per machine and cached), or a name from :data:`detector.backends.base.BACKEND_NAMES`.
            check_images: RGB uint8 photographs: ``auto`` judges reduced-precision backends on them (without
                any it refuses those), ``openvino-int8`` calibrates on them.
            threads: CPU threads of the engine (default: the CPUs this process may use).
            allow_int8: let ``auto`` consider INT8 (it must still meet the accuracy bar).
            measure_apart: with "auto" and nothing cached for this machine, measure in a child process (which
                imports torch for the reference) and build its choice here, so that this process stays without
                torch when the choice runs from the export (the service does this).

        Raises:
            detector.errors.WeightsError: the file or built-in model is missing or does not fit.
            detector.errors.BackendUnavailable: the named backend cannot run here.
        """
        path = resolve_weights(weights)
        spec = read_spec(path)
        digest = file_digest(path)
        lean = cls._from_export(spec, path, digest, backend, device, check_images, threads, allow_int8)
        if lean is not None:
            return lean
        if backend == "auto" and measure_apart and str(device) == "cpu" and not check_images and not allow_int8:
            measured = _choose_in_child(path, threads)
            if measured is not None:
                name, reason = measured
                chosen = cls.from_weights(path, device=device, backend=name, threads=threads)  # type: ignore[arg-type]
                chosen.backend_reason = reason
                return chosen
        network = inference_network(load_weights(path).model, device)
        key = weights_key(digest)
        if backend == "auto":
            from detector.backends.selection import select_backend

            engine, choice = select_backend(
                network, spec, check_images, digest=digest, device=device, threads=threads, allow_int8=allow_int8
            )
            reason = f"auto: {choice.reason}"
        elif backend == "torch":
            engine, reason = build_backend("torch", network, device=device, threads=threads), REFERENCE_REASON
        else:
            pre = spec.preprocessing
            calibration = (
                [preprocess(check_images, spec.image_size, pre.pixel_scale, pre.pixel_offset, exact=True)]
                if check_images
                else []
            )
            engine = build_backend(backend, network, device=device, calibration=calibration, key=key, threads=threads)
            reason = "asked for by name"
        return cls(
            spec, backend=engine, network=network, weights=path, digest=digest, device=device, backend_reason=reason
        )

    @classmethod
    def _from_export(
        cls,
        spec: ModelSpec,
        path: Path,
        digest: str,
        backend: BackendChoice,
        device: str,
        check_images: Sequence[np.ndarray],
        threads: int | None,
        allow_int8: bool,
    ) -> Detector | None:
        """The detector without its network, when its engine can run the cached export (no torch); else None."""
        if str(device) != "cpu":
            return None
        name, reason = str(backend), "asked for by name"
        if backend == "auto":
            from detector.backends.selection import cached_choice

            choice = cached_choice(
                spec, digest, device=device, with_photographs=bool(check_images), allow_int8=allow_int8
            )
            if choice is None:
                return None
            name, reason = choice.name, f"auto: {choice.reason}"
        if name not in FROM_EXPORT:
            return None
        engine = build_from_export(name, weights_key(digest), threads=threads)
        if engine is None:
            return None
        return cls(spec, backend=engine, weights=path, digest=digest, device=device, backend_reason=reason)

    @property
    def model(self) -> SSDLite:
        """The network in inference form (eager PyTorch), loaded from the weights file on first use."""
        if self._network is None:
            assert self._weights is not None
            self._network = inference_network(load_weights(self._weights).model, self.device)
        return self._network

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

    def predict_raw(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The network alone, on the backend: (N, 3, S, S) preprocessed input → (N, A, 4) box codes, (N, A, K)
        logits, float32."""
        return self.backend(batch)

    def model_outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`predict_raw`, always with eager PyTorch fp32: the reference other backends are checked on."""
        import torch

        with torch.inference_mode():
            codes, logits = self.model(torch.from_numpy(np.ascontiguousarray(batch, np.float32)).to(self.device))
        return codes.float().cpu().numpy(), logits.float().cpu().numpy()

    def preprocess(self, arrays: Sequence[np.ndarray], *, exact: bool = False) -> np.ndarray:
        """RGB uint8 (H, W, 3) arrays → the network's (N, 3, S, S) float32 input (``exact``: the bit-exact
        reference resize; default: the fast one, see :mod:`detector.preprocess`)."""
        pre = self.spec.preprocessing
        return preprocess(arrays, self.spec.image_size, pre.pixel_scale, pre.pixel_offset, exact=exact)

    def postprocess(
        self,
        box_codes: np.ndarray,
        class_logits: np.ndarray,
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
        one = not isinstance(images, Sequence) or isinstance(images, (str, bytes, bytearray, memoryview))
        items = [cast(ImageInput, images)] if one else cast(Sequence[ImageInput], images)
        results: list[ImageDetections] = []
        for start in range(0, len(items), batch_size):
            arrays = [load_image(image) for image in items[start : start + batch_size]]
            results += self.detect_arrays(arrays, score_threshold=score_threshold, max_detections=max_detections)
        return results


# The child's whole program: measure as ``Detector.from_weights(backend="auto")`` does, print the choice.
_MEASURE_CHILD = """
import json, sys
from detector.inference import Detector
detector = Detector.from_weights(sys.argv[1], backend="auto", threads=int(sys.argv[2]) or None)
print(json.dumps({"name": detector.backend.name, "reason": detector.backend_reason}))
"""


def _choose_in_child(weights: Path, threads: int | None, timeout_s: float = 900.0) -> tuple[str, str] | None:
    """``auto``'s measurement in a child process: (backend name, reason), or None if the child failed.

    Measuring needs eager PyTorch as the reference, and a process that has imported torch keeps its few hundred MB
    for good. The child also caches the choice where the cache is writable; where it is not (a read-only image),
    its answer still reaches this process.
    """
    command = [sys.executable, "-c", _MEASURE_CHILD, str(weights), str(threads or 0)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
        if done.returncode == 0:
            outcome = json.loads(done.stdout.strip().splitlines()[-1])
            return str(outcome["name"]), str(outcome["reason"])
        _log.warning("measuring the backends in a child process failed: %s", done.stderr.strip()[-500:])
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError, KeyError) as exc:
        _log.warning("measuring the backends in a child process failed: %s", exc)
    return None
