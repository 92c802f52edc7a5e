"""Export the network to ONNX and OpenVINO IR, checked against eager PyTorch.

The exported graph is the network alone: the preprocessed batch ``images`` (N, 3, S, S) float32 in [-1, 1] in,
``box_codes`` (N, A, 4) and ``class_logits`` (N, A, K) out, with a dynamic batch dimension. Decoding and NMS stay in
:mod:`detector.postprocess`, so every backend shares them. The spatial size is fixed, which makes the TF 'SAME'
paddings of :mod:`detector.padding` constants in the graph.

We use the TorchScript-based ``torch.onnx.export(dynamo=False)``: it exports this network in about 4 s, against 14 s
for the dynamo exporter, and gives the same graph for a fixed-size input.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from detector.errors import DetectorError
from detector.model import SSDLite

ONNX_OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAMES = ("box_codes", "class_logits")
FORMATS = ("onnx", "openvino")
# fp32 engines must give eager PyTorch's raw outputs within this (issue 6's bar).
RAW_TOLERANCE = 1e-3


class ExportError(DetectorError):
    """An export could not be written, or its outputs differ from eager PyTorch's."""


@dataclass(frozen=True)
class ExportReport:
    """What ``export`` wrote and how far its outputs are from eager PyTorch's on a check batch."""

    path: Path
    format: str
    max_abs_diff: float


def model_key(model: SSDLite) -> str:
    """SHA-256 (16 hex digits) of the network's tensors and input size: names its cached exports."""
    digest = hashlib.sha256(f"{model.image_size}".encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def onnx_bytes(model: SSDLite) -> bytes:
    """The network as an ONNX model (opset 17, dynamic batch)."""
    example = torch.zeros(2, 3, model.image_size, model.image_size)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on shape arithmetic (constant for a fixed size) and deprecation
        torch.onnx.export(
            model.eval(),
            (example,),
            buffer,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    return buffer.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def cached_onnx(model: SSDLite) -> Path:
    """Path of the network's ONNX export in the cache directory, exporting it on first use (about 4 s)."""
    from detector.builtin import cache_dir

    name = f"ssdlite-{model_key(model)}.onnx"
    path = cache_dir() / "exports" / name
    if path.is_file():
        return path
    try:
        _write_atomic(path, onnx_bytes(model))
    except OSError:
        # A read-only cache (a container's baked-in one): export into the temporary directory instead.
        path = Path(tempfile.gettempdir()) / "ssdlite-detector-exports" / name
        if not path.is_file():
            _write_atomic(path, onnx_bytes(model))
    return path


def check_batch(image_size: int, batch_size: int = 2) -> torch.Tensor:
    """A fixed pseudo-random input in [-1, 1] for comparing engines on raw outputs."""
    generator = torch.Generator().manual_seed(0)
    return torch.rand(batch_size, 3, image_size, image_size, generator=generator) * 2 - 1


def max_abs_diff(reference: tuple[torch.Tensor, torch.Tensor], outputs: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Largest absolute difference over both raw outputs."""
    return max(float((r.float().cpu() - o.float().cpu()).abs().max()) for r, o in zip(reference, outputs, strict=True))


def export(model: SSDLite, out: str | Path, *, format: str) -> ExportReport:
    """Write ``model`` to ``out`` as ``format`` ("onnx": one .onnx file; "openvino": ``out`` .xml + .bin IR) and
    check the written file on a batch of 2 against eager PyTorch (max abs diff ≤ 1e-3), with ONNX Runtime for ONNX
    and OpenVINO (fp32) for IR.

    Raises:
        ExportError: unknown format, unwritable path, or outputs beyond the tolerance (the file is then removed).
        BackendUnavailable: the engine needed to write or check the format is not installed.
    """
    from detector.backends import BackendUnavailable

    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; choose from {', '.join(FORMATS)}")
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)  # fail on a bad path before the 4 s export
    except OSError as exc:
        raise ExportError(f"cannot write {out}: {exc.strerror or exc}") from None
    model = model.eval()
    data = onnx_bytes(model)
    written: list[Path]
    try:
        if format == "onnx":
            _write_atomic(out, data)
            written = [out]
        else:
            try:
                import openvino as ov
            except ImportError:
                raise BackendUnavailable("OpenVINO is not installed: pip install 'ssdlite-detector[fast]'") from None
            out = out.with_suffix(".xml")
            out.parent.mkdir(parents=True, exist_ok=True)
            # fp32 weights: the default fp16 compression would move the outputs by more than the tolerance.
            ov.save_model(ov.convert_model(io.BytesIO(data)), out, compress_to_fp16=False)
            written = [out, out.with_suffix(".bin")]
    except OSError as exc:
        raise ExportError(f"cannot write {out}: {exc.strerror or exc}") from None
    batch = check_batch(model.image_size)
    with torch.inference_mode():
        reference = model(batch)
    outputs = _run_exported(out, format, batch.numpy())
    diff = max_abs_diff(reference, outputs)
    if not diff <= RAW_TOLERANCE:
        for path in written:
            path.unlink(missing_ok=True)
        raise ExportError(f"exported {format} model differs from eager PyTorch by {diff:.2e} (> {RAW_TOLERANCE})")
    return ExportReport(path=out, format=format, max_abs_diff=diff)


def _run_exported(path: Path, format: str, batch: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    from detector.backends import BackendUnavailable

    if format == "onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailable(
                "checking an ONNX export needs onnxruntime: pip install 'ssdlite-detector[fast]'"
            ) from None
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        codes, logits = session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch})
    else:
        import openvino as ov

        compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        result = compiled(batch)
        codes, logits = (result[compiled.output(name)] for name in OUTPUT_NAMES)
    return torch.from_numpy(codes), torch.from_numpy(logits)
