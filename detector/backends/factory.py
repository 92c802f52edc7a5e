"""Building backends by name: a plain function that imports only the engine asked for.

:func:`build_backend` builds from the network in memory (exporting it to ONNX, or TFLite for litert, on first use);
:func:`build_from_export` builds from the cached export of a weights file alone, for a process that serves without
torch (the export was made when the backend was first chosen, e.g. by ``make install``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from detector.backends.base import BACKEND_NAMES, Backend
from detector.backends.onnx import discard_export, find_onnx
from detector.backends.tflite_export import find_tflite
from detector.errors import BackendUnavailable

if TYPE_CHECKING:
    import torch

    from detector.model import SSDLite

# The backends that run a cached export as it is (no network in memory needed): ONNX, or TFLite for litert.
FROM_EXPORT = ("onnxruntime", "openvino", "openvino-fp16", "openvino-bf16", "litert")
OPENVINO_PRECISIONS: dict[str, Literal["f32", "f16", "bf16", "int8"]] = {
    "openvino": "f32",
    "openvino-fp16": "f16",
    "openvino-bf16": "bf16",
    "openvino-int8": "int8",
}


def build_backend(
    name: str,
    model: SSDLite,
    *,
    device: str | torch.device = "cpu",
    calibration: Sequence[np.ndarray] = (),
    key: str | None = None,
    threads: int | None = None,
) -> Backend:
    """Build backend ``name`` for ``model`` (an eval-mode, batch-norm-folded network).

    Args:
        name: one of :data:`~detector.backends.base.BACKEND_NAMES`.
        device: for the torch backends ("cpu", "cuda", "cuda:1", ...).
        calibration: preprocessed batches (N, 3, S, S) for ``openvino-int8``'s post-training quantization.
        key: names the network's cached exports (the weights file's; default: a hash of its tensors).
        threads: CPU threads of the engine (default: the CPUs this process may use).

    Raises:
        BackendUnavailable: the name is unknown, the engine is not installed or the hardware cannot run this mode.
    """
    if name in ("torch", "torch-fp16"):
        import torch

        from detector.backends.torch_backend import TorchBackend

        dtype = torch.float16 if name == "torch-fp16" else torch.float32
        return TorchBackend(model, device=device, dtype=dtype, threads=threads)
    if name == "onnxruntime":
        from detector.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend.for_model(model, key=key, threads=threads)
    if name == "litert":
        from detector.backends.litert_backend import LiteRtBackend

        return LiteRtBackend.for_model(model, key=key, threads=threads)
    if name in OPENVINO_PRECISIONS:
        from detector.backends.openvino_backend import OpenVinoBackend

        precision = OPENVINO_PRECISIONS[name]
        return OpenVinoBackend.for_model(model, precision=precision, calibration=calibration, key=key, threads=threads)
    raise BackendUnavailable(f"unknown backend {name!r}; choose from auto, {', '.join(BACKEND_NAMES)}")


def build_from_export(
    name: str, key: str, *, threads: int | None = None, model_file: str | Path | None = None
) -> Backend | None:
    """Backend ``name`` on the cached export ``key`` (ONNX; TFLite for litert) without the network in memory (so
    without torch); None where there is no export yet, the backend needs the network (torch), or the engine cannot
    load the export (a corrupt file: removed, so that building from the network exports it again). ``model_file``:
    the engine file measured for it (for int8, the quantized model; used where it still exists)."""
    if name == "openvino-int8":
        path = Path(model_file) if model_file else None
        if path is None or not (path.is_file() and path.with_suffix(".bin").is_file()):
            return None
    elif name == "litert":
        path = find_tflite(key)
    else:
        path = find_onnx(key) if name in FROM_EXPORT else None
    if path is None:
        return None
    try:
        if name == "litert":
            from detector.backends.litert_backend import LiteRtBackend

            return LiteRtBackend(path, threads=threads)
        if name == "onnxruntime":
            from detector.backends.onnxruntime_backend import OnnxRuntimeBackend

            return OnnxRuntimeBackend(path, threads=threads)
        from detector.backends.openvino_backend import OpenVinoBackend

        return OpenVinoBackend(path, precision=OPENVINO_PRECISIONS[name], threads=threads)
    except BackendUnavailable:
        raise
    except Exception as exc:  # the engine's own error for a file it cannot load: a corrupt cache entry
        discard_export(path, f"{name} cannot load it: {str(exc).strip()[:200]}")
        return None
