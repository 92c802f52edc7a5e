"""LiteRT (TensorFlow Lite's runtime, ``ai-edge-litert``) on the CPU, fp32, through its default XNNPACK delegate.

It runs the network's TFLite export (:mod:`detector.backends.tflite_export`), NHWC: the fastest fp32 engine on an
AMD EPYC with 2 threads (7.2 ms per image against OpenVINO fp32's 9.4, benchmarks/xnnpack.py), with raw outputs
within 1e-4 of eager PyTorch, so ``auto`` may pick it under ``precision="exact"``.
"""

from __future__ import annotations

import threading
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from detector.backends.onnx import OUTPUT_NAMES, discard_export
from detector.backends.tflite_export import INSTALL_HINT, cached_tflite
from detector.errors import BackendUnavailable
from detector.machine import available_cpus

if TYPE_CHECKING:
    from detector.model import SSDLite


class LiteRtBackend:
    """Runs a TFLite file of the network in one LiteRT interpreter shaped for a single image, a batch image by
    image: XNNPACK's batch-1 plan is the faster one per image here (7.6 ms against 8.9 in batches of 8, person
    model, 2 threads, AMD EPYC), and an interpreter per batch size would hold its own working memory for each
    (about 575 MiB more for batches of 2, 4, 8 and 16 on the person model).

    Args:
        path: the TFLite file (:mod:`detector.backends.tflite_export`'s layout).
        threads: inference threads (default: the CPUs this process may use; the service passes its budget).
    """

    name = "litert"
    precision = "f32"

    def __init__(self, path: str | Path, *, threads: int | None = None):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise BackendUnavailable(INSTALL_HINT) from None
        self.path = Path(path)
        self.threads = threads or available_cpus()
        self._version = metadata.version("ai-edge-litert")
        # Loaded now: a file LiteRT cannot read fails here, not on the first image.
        self._interpreter: Any = Interpreter(model_path=str(self.path), num_threads=self.threads)
        (source,) = self._interpreter.get_input_details()
        self._interpreter.resize_tensor_input(source["index"], [1, *(int(d) for d in source["shape"][1:])], strict=True)
        self._interpreter.allocate_tensors()
        self._source = source["index"]
        outputs = {detail["name"]: detail["index"] for detail in self._interpreter.get_output_details()}
        self._outputs = [outputs[name] for name in OUTPUT_NAMES]
        self._lock = threading.Lock()  # an interpreter runs one call at a time: calls from several threads take turns

    @classmethod
    def for_model(cls, model: SSDLite, *, key: str | None = None, threads: int | None = None) -> LiteRtBackend:
        """The backend for ``model``'s cached TFLite export (written and checked on first use; ``key`` names it). A
        cached file LiteRT cannot load is removed and written again."""
        path = cached_tflite(model, key)
        try:
            return cls(path, threads=threads)
        except ValueError as exc:  # LiteRT's error for a file that is no TFLite model: a corrupt cache entry
            discard_export(path, f"LiteRT cannot load it: {str(exc).strip()[:200]}")
        return cls(cached_tflite(model, key), threads=threads)

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images = np.asarray(batch, np.float32).transpose(0, 2, 3, 1)  # NCHW → NHWC
        codes, logits = [], []
        with self._lock:
            for image in images:
                self._interpreter.set_tensor(self._source, np.ascontiguousarray(image[None]))
                self._interpreter.invoke()
                # get_tensor copies: the interpreter's buffers are overwritten by the next image.
                codes.append(self._interpreter.get_tensor(self._outputs[0]))
                logits.append(self._interpreter.get_tensor(self._outputs[1]))
        return np.concatenate(codes), np.concatenate(logits)

    def describe(self) -> dict[str, str]:
        return {"engine": "litert", "version": self._version, "device": "cpu", "precision": "fp32"}
