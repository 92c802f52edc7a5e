"""``build_backend(name, network)``: one engine by name. A plain function that imports only the engine asked for."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from detector.backends.base import BACKEND_NAMES, Backend
from detector.errors import BackendUnavailable
from detector.model import SSDLite


def build_backend(
    name: str,
    model: SSDLite,
    *,
    device: str | torch.device = "cpu",
    calibration: Sequence[torch.Tensor] = (),
) -> Backend:
    """Build backend ``name`` for ``model`` (an eval-mode, batch-norm-folded network).

    Args:
        name: one of :data:`~detector.backends.base.BACKEND_NAMES`.
        device: for the torch backends ("cpu", "cuda", "cuda:1", ...).
        calibration: preprocessed batches (N, 3, S, S) for ``openvino-int8``'s post-training quantization.

    Raises:
        BackendUnavailable: the name is unknown, the engine is not installed or the hardware cannot run this mode.
    """
    if name == "torch":
        from detector.backends.torch_backend import TorchBackend

        return TorchBackend(model, device=device)
    if name == "torch-fp16":
        from detector.backends.torch_backend import TorchBackend

        return TorchBackend(model, device=device, dtype=torch.float16)
    if name == "onnxruntime":
        from detector.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend.for_model(model)
    if name in ("openvino", "openvino-bf16"):
        from detector.backends.openvino_backend import OpenVinoBackend

        return OpenVinoBackend.for_model(model, precision="bf16" if name.endswith("bf16") else "f32")
    if name == "openvino-int8":
        from detector.backends.openvino_backend import OpenVinoBackend

        return OpenVinoBackend.for_model(model, precision="int8", calibration=calibration)
    raise BackendUnavailable(f"unknown backend {name!r}; choose from auto, {', '.join(BACKEND_NAMES)}")
