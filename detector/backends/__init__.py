"""Engines that run the network, behind one interface.

Every backend takes the preprocessed batch (N, 3, S, S) float32 in [-1, 1] and returns the raw outputs
``(box_codes (N, A, 4), class_logits (N, A, K))`` as float32 CPU-or-device tensors; decoding and NMS stay in
:mod:`detector.postprocess`, shared by all of them. :func:`build_backend` builds one by name (a plain function, no
registry); :mod:`detector.backends.selection` picks the fastest one that meets the accuracy bar ("auto").

Backends, and what they promise:

- ``torch``: eager PyTorch fp32, the reference (on any device).
- ``torch-fp16``: PyTorch in half precision on CUDA.
- ``onnxruntime``: ONNX Runtime fp32 on the CPU; within 1e-3 of eager on raw outputs.
- ``openvino``: OpenVINO fp32 on the CPU; within 1e-3 of eager on raw outputs.
- ``openvino-bf16``: OpenVINO with bfloat16 inference (CPUs with AVX512-BF16 or AMX).
- ``openvino-int8``: OpenVINO on a post-training quantized (INT8) network, calibrated on photographs.

Reduced-precision backends (the last three kinds) are held to the detection bar of
:mod:`detector.backends.accuracy` instead of the raw-output one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from detector.errors import DetectorError
from detector.model import SSDLite

BACKEND_NAMES = ("torch", "torch-fp16", "onnxruntime", "openvino", "openvino-bf16", "openvino-int8")
REDUCED_PRECISION = frozenset({"torch-fp16", "openvino-bf16", "openvino-int8"})


class BackendUnavailable(DetectorError):
    """A backend cannot run here: its engine is not installed, or the hardware lacks what it needs."""


class Backend(Protocol):
    """Runs the network: ``backend(batch)`` → ``(box_codes, class_logits)``, float32 tensors."""

    name: str

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def describe(self) -> dict[str, str]:
        """Engine, version, device and precision, for ``Detector.info``."""
        ...


def build_backend(
    name: str,
    model: SSDLite,
    *,
    device: str | torch.device = "cpu",
    calibration: Sequence[np.ndarray] = (),
) -> Backend:
    """Build backend ``name`` for ``model`` (an eval-mode, batch-norm-folded network).

    Args:
        name: one of :data:`BACKEND_NAMES`.
        device: for the torch backends ("cpu", "cuda", "cuda:1", ...).
        calibration: preprocessed batches (N, 3, S, S) for ``openvino-int8``'s post-training quantization.

    Raises:
        BackendUnavailable: the engine is not installed or the hardware cannot run this mode.
    """
    if name == "torch":
        from detector.backends.torch_backend import TorchBackend

        return TorchBackend(model, device=device)
    if name == "torch-fp16":
        from detector.backends.torch_backend import TorchBackend

        return TorchBackend(model, device=device, dtype=torch.float16)
    if name == "onnxruntime":
        from detector.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(model)
    if name in ("openvino", "openvino-bf16"):
        from detector.backends.openvino_backend import OpenVinoBackend

        return OpenVinoBackend(model, precision="bf16" if name.endswith("bf16") else "f32")
    if name == "openvino-int8":
        from detector.backends.openvino_backend import OpenVinoBackend

        return OpenVinoBackend(model, precision="int8", calibration=calibration)
    raise BackendUnavailable(f"unknown backend {name!r}; choose from auto, {', '.join(BACKEND_NAMES)}")


def as_outputs(box_codes: np.ndarray, class_logits: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """An engine's numpy outputs as float32 tensors, without a copy where they already are float32."""
    return torch.from_numpy(np.asarray(box_codes, np.float32)), torch.from_numpy(np.asarray(class_logits, np.float32))
