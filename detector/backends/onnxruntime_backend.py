"""ONNX Runtime on the CPU, fp32: the exported graph with ORT's graph optimisations (fusions, NCHWc layouts)."""

from __future__ import annotations

from pathlib import Path

import torch

from detector.backends.onnx import INPUT_NAME, OUTPUT_NAMES, as_outputs, cached_onnx
from detector.errors import BackendUnavailable
from detector.model import SSDLite


class OnnxRuntimeBackend:
    """Runs an ONNX file of the network (:mod:`detector.backends.onnx`'s layout) in an ``InferenceSession``."""

    name = "onnxruntime"

    def __init__(self, path: str | Path):
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailable("onnxruntime is not installed: pip install 'ssdlite-detector[fast]'") from None
        self._version = ort.__version__
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # One thread budget for the process: follow torch's (the service sets it from the CPUs it may use).
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    @classmethod
    def for_model(cls, model: SSDLite) -> OnnxRuntimeBackend:
        """The backend for ``model``'s cached ONNX export (exported on first use)."""
        return cls(cached_onnx(model))

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        codes, logits = self._session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch.cpu().numpy()})
        return as_outputs(codes, logits)

    def describe(self) -> dict[str, str]:
        return {"engine": "onnxruntime", "version": self._version, "device": "cpu", "precision": "fp32"}
