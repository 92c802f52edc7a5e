"""ONNX Runtime on the CPU, fp32: the exported graph with ORT's graph optimisations (fusions, NCHWc layouts)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from detector.backends.onnx import INPUT_NAME, OUTPUT_NAMES, cached_onnx
from detector.errors import BackendUnavailable
from detector.machine import available_cpus

if TYPE_CHECKING:
    from detector.model import SSDLite


class OnnxRuntimeBackend:
    """Runs an ONNX file of the network (:mod:`detector.backends.onnx`'s layout) in an ``InferenceSession``.

    Args:
        path: the ONNX file.
        threads: intra-op threads (default: the CPUs this process may use; the service passes its budget).
    """

    name = "onnxruntime"

    def __init__(self, path: str | Path, *, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailable("onnxruntime is not installed: pip install 'ssdlite-detector[fast]'") from None
        self._version = ort.__version__
        self.path = Path(path)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or available_cpus()
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    @classmethod
    def for_model(cls, model: SSDLite, *, key: str | None = None, threads: int | None = None) -> OnnxRuntimeBackend:
        """The backend for ``model``'s cached ONNX export (exported on first use; ``key`` names it)."""
        return cls(cached_onnx(model, key), threads=threads)

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        codes, logits = self._session.run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(batch, np.float32)})
        return codes, logits

    def describe(self) -> dict[str, str]:
        return {"engine": "onnxruntime", "version": self._version, "device": "cpu", "precision": "fp32"}
