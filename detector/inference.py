"""The Python API: ``Detector.from_weights(...).detect(images)``.

A ``Detector`` owns the engine that runs the network (:mod:`detector.backends`) and the whole path around it: load
and convert pixels, TF-exact preprocessing, the forward pass, decoding and NMS, and boxes mapped back to the
original image's pixels. Everything but the engine is numpy: a detector on ONNX Runtime or OpenVINO whose engine
file is in the cache (``make install`` exports it) is built from the weights file's metadata and that file alone,
and never imports torch. The network itself (eager PyTorch, batch norm folded) is loaded when something asks for it:
the ``torch`` backend, the reference outputs, exporting, measuring backends.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

from detector import defaults
from detector.anchors import anchors_for
from detector.backends import selection
from detector.backends.base import Backend, BackendChoice
from detector.backends.factory import build_backend
from detector.backends.selection import Choice, PrecisionMode
from detector.builtin import resolve_weights
from detector.cache import file_digest
from detector.errors import BackendUnavailable
from detector.images import ImageInput, load_image
from detector.postprocess import detections_in_pixels
from detector.preprocess import preprocess
from detector.results import ImageDetections, ModelInfo
from detector.spec import ModelSpec
from detector.weights import load_weights, read_spec

if TYPE_CHECKING:
    from detector.model import SSDLite


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
        choice: which engine runs and why (:func:`detector.backends.selection.choose`), for ``info``.
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
        choice: Choice | None = None,
    ):
        if network is None and weights is None:
            raise ValueError("a Detector needs its network or the weights file to load it from")
        self.spec = spec
        self.digest = digest
        self.device = device
        self.backend = backend
        self.choice = choice or Choice(backend.name, selection.REFERENCE_REASON)
        self.anchors = anchors_for(spec.image_size)
        self._network = network
        self._weights = weights

    @property
    def backend_reason(self) -> str:
        """Why this engine runs: asked for by name, or ``auto``'s measured choice and the table behind it."""
        return self.choice.reason

    @classmethod
    def from_model(cls, model: SSDLite, spec: ModelSpec, *, device: str = "cpu", digest: str = "") -> Detector:
        """A detector running a copy of ``model`` (left as it is) in eager PyTorch on ``device``."""
        from detector.model import inference_network

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
        precision: PrecisionMode = "fast",
        threads: int | None = None,
        calibration_images: Sequence[np.ndarray] = (),
    ) -> Detector:
        """Load a weights file or a built-in model by name; ``None`` is the default built-in model.

        Args:
            backend: "torch" (the reference), "auto" (the fastest engine meeting the accuracy bar here, measured
                once per machine in a child process and cached), or a name from
                :data:`detector.backends.base.BACKEND_NAMES`.
            precision: "fast" lets ``auto`` run reduced precision (fp16, bf16, int8) where it meets the bar;
                "exact" keeps to fp32 engines, whose outputs equal TF's / TF.js's (and refuses a reduced-precision
                backend asked for by name).
            threads: CPU threads of the engine (default: the CPUs this process may use).
            calibration_images: RGB uint8 photographs for ``openvino-int8`` asked for by name (default: the check
                photographs, :func:`detector.samples.check_images`).

        Raises:
            detector.errors.WeightsError: the file or built-in model is missing or does not fit.
            detector.errors.BackendUnavailable: the named backend cannot run here.
            detector.errors.DetectorError: an unknown precision, or a backend that computes in another one.
        """
        path = resolve_weights(weights)
        spec = read_spec(path)
        digest = file_digest(path)
        choice = selection.choose(
            path, spec, digest, backend=backend, precision=precision, device=device, threads=threads
        )
        calibration = None
        if choice.name == "openvino-int8" and choice.model_file is None:
            calibration = _calibration_batches(spec, calibration_images)

        def load_network() -> SSDLite:
            from detector.model import inference_network

            return inference_network(load_weights(path).model, device)

        try:
            engine, network = selection.build(
                choice, digest, device=device, threads=threads, calibration=calibration, load_network=load_network
            )
        except BackendUnavailable:
            if backend != "auto":
                raise
            # auto's choice no longer builds here (an engine uninstalled since it was measured): the reference.
            choice = Choice("torch", f"{choice.name} no longer builds here; {selection.REFERENCE_REASON}")
            engine, network = selection.build(choice, digest, device=device, threads=threads, load_network=load_network)
        return cls(spec, backend=engine, network=network, weights=path, digest=digest, device=device, choice=choice)

    @property
    def model(self) -> SSDLite:
        """The network in inference form (eager PyTorch), loaded from the weights file on first use."""
        if self._network is None:
            assert self._weights is not None
            from detector.model import inference_network

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
            backend_precision=self.choice.precision,
            backend_figures=self.choice.figures(),
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


def _calibration_batches(spec: ModelSpec, photos: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Preprocessed batches of ``photos`` (default: the check photographs) for int8 calibration."""
    if not photos:
        from detector.samples import check_images

        photos = list(check_images().values())
    pre = spec.preprocessing
    return [
        preprocess(photos[i : i + 8], spec.image_size, pre.pixel_scale, pre.pixel_offset, exact=True)
        for i in range(0, len(photos), 8)
    ]
