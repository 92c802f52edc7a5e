"""``detector export``: the network as an ONNX file, OpenVINO IR or TFLite file for other runtimes, checked before
it is kept.

The file holds the network alone (see :mod:`detector.backends.onnx`: preprocessed batch in, raw box codes and class
logits out, dynamic batch). The written file is run by the engine it is meant for, through the same backend class
the detector serves with, and compared with eager PyTorch on a fixed batch: beyond 1e-3 it is removed and the
export fails.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from detector.backends.onnx import RAW_TOLERANCE, check_batch, max_abs_diff, onnx_bytes
from detector.cache import write_atomic
from detector.errors import BackendUnavailable, ExportError

if TYPE_CHECKING:
    from detector.model import SSDLite

ExportFormat = Literal["onnx", "openvino", "tflite"]
FORMATS: tuple[ExportFormat, ...] = get_args(ExportFormat)


@dataclass(frozen=True)
class ExportReport:
    """What ``export`` wrote and how far its outputs are from eager PyTorch's on a check batch."""

    path: Path
    format: ExportFormat
    max_abs_diff: float


def export(model: SSDLite, out: str | Path, *, format: ExportFormat) -> ExportReport:
    """Write ``model`` to ``out`` as ``format`` ("onnx": one .onnx file; "openvino": ``out`` .xml + .bin IR;
    "tflite": one .tflite file, NHWC input, batch norm folded) and check the written file on a batch of 2 against
    eager PyTorch (max abs diff ≤ 1e-3), with ONNX Runtime for ONNX, OpenVINO (fp32) for IR and LiteRT for TFLite.

    Raises:
        ExportError: unknown format, unwritable path, or outputs beyond the tolerance (the file is then removed).
        BackendUnavailable: the engine needed to write or check the format is not installed.
    """
    import torch

    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; choose from {', '.join(FORMATS)}")
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)  # fail on a bad path before the 4 s export
    except OSError as exc:
        raise ExportError(f"cannot write {out}: {exc.strerror or exc}") from None
    model = model.eval()
    if format == "tflite":
        from detector.backends.tflite_export import tflite_bytes
        from detector.model import inference_network

        data = tflite_bytes(inference_network(model, model.anchors.device))
    else:
        data = onnx_bytes(model)
    try:
        if format == "openvino":
            out = out.with_suffix(".xml")
            written = _write_openvino_ir(data, out)
        else:
            written = [write_atomic(out, data)]
    except OSError as exc:
        raise ExportError(f"cannot write {out}: {exc.strerror or exc}") from None
    batch = check_batch(model.image_size)
    with torch.inference_mode():
        codes, logits = model(torch.from_numpy(batch))
    diff = max_abs_diff((codes.numpy(), logits.numpy()), _engine_for(out, format)(batch))
    if not diff <= RAW_TOLERANCE:
        for path in written:
            path.unlink(missing_ok=True)
        raise ExportError(f"exported {format} model differs from eager PyTorch by {diff:.2e} (> {RAW_TOLERANCE})")
    return ExportReport(path=out, format=format, max_abs_diff=diff)


def _write_openvino_ir(data: bytes, out: Path) -> list[Path]:
    try:
        import openvino as ov
    except ImportError:
        raise BackendUnavailable("OpenVINO is not installed: pip install 'ssdlite-detector[fast]'") from None
    # fp32 weights: the default fp16 compression would move the outputs by more than the tolerance.
    ov.save_model(ov.convert_model(io.BytesIO(data)), out, compress_to_fp16=False)
    return [out, out.with_suffix(".bin")]


def _engine_for(path: Path, format: ExportFormat):
    if format == "tflite":
        from detector.backends.litert_backend import LiteRtBackend

        return LiteRtBackend(path)
    if format == "onnx":
        from detector.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(path)
    from detector.backends.openvino_backend import OpenVinoBackend

    return OpenVinoBackend(path, precision="f32")
