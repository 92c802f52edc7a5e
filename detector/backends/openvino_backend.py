"""OpenVINO on the CPU: fp32, bf16 (AVX512-BF16 / AMX), and INT8 after post-training quantization.

INT8: ONNX Runtime's static quantization (QDQ format, per-channel int8 weights, uint8 activations, min-max ranges
calibrated on the caller's photographs) writes a quantized ONNX graph, which OpenVINO runs with int8 kernels (VNNI).
ORT's quantizer needs nothing beyond the ``fast`` extra, where NNCF would pull in a large dependency tree.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch

from detector.backends.onnx import INPUT_NAME, OUTPUT_NAMES, as_outputs, cached_onnx
from detector.cache import atomic_path
from detector.errors import BackendUnavailable
from detector.model import SSDLite

Precision = Literal["f32", "bf16", "int8"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)


def cpu_supports_bf16() -> bool:
    """Whether OpenVINO's CPU plugin has bf16 kernels here (AVX512-BF16 or AMX)."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVinoBackend:
    """Compiles an ONNX file or IR of the network for OpenVINO's CPU plugin, tuned for latency (one stream, all
    cores).

    Args:
        path: the network (:mod:`detector.backends.onnx`'s layout), as .onnx or OpenVINO .xml; for "int8", already
            quantized (see :meth:`for_model`).
        precision: "f32", "bf16" or "int8".
    """

    def __init__(self, path: str | Path, *, precision: Precision = "f32"):
        try:
            import openvino as ov
        except ImportError:
            raise BackendUnavailable("OpenVINO is not installed: pip install 'ssdlite-detector[fast]'") from None
        if precision not in PRECISIONS:
            raise BackendUnavailable(f"unknown OpenVINO precision {precision!r}; choose from {', '.join(PRECISIONS)}")
        if precision == "bf16" and not cpu_supports_bf16():
            raise BackendUnavailable("this CPU has no bf16 support (AVX512-BF16 or AMX)")
        self.precision = precision
        self.name = "openvino" if precision == "f32" else f"openvino-{precision}"
        self._version = ov.get_version()
        # int8: the operations left in float (the head's outputs, ...) run in fp32, not the bf16 default.
        hint = "bf16" if precision == "bf16" else "f32"
        self._compiled = ov.Core().compile_model(
            str(path),
            "CPU",
            {
                "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_PRECISION_HINT": hint,
                # One thread budget for the process: follow torch's (the service sets it from its CPU quota).
                "INFERENCE_NUM_THREADS": torch.get_num_threads(),
            },
        )
        self._request = self._compiled.create_infer_request()
        self._outputs = [self._compiled.output(name) for name in OUTPUT_NAMES]
        self._lock = threading.Lock()  # one infer request: calls from several threads take turns

    @classmethod
    def for_model(
        cls, model: SSDLite, *, precision: Precision = "f32", calibration: Sequence[torch.Tensor] = ()
    ) -> OpenVinoBackend:
        """The backend for ``model``'s cached ONNX export; "int8" quantizes it first on ``calibration``
        (preprocessed batches (N, 3, S, S), at least one image)."""
        if precision not in PRECISIONS:
            raise BackendUnavailable(f"unknown OpenVINO precision {precision!r}; choose from {', '.join(PRECISIONS)}")
        path = quantized_onnx(model, calibration) if precision == "int8" else cached_onnx(model)
        return cls(path, precision=precision)

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = {INPUT_NAME: np.ascontiguousarray(batch.cpu().numpy(), dtype=np.float32)}
        with self._lock:
            result = self._request.infer(inputs, share_inputs=True)
            codes, logits = (np.array(result[output]) for output in self._outputs)
        return as_outputs(codes, logits)

    def describe(self) -> dict[str, str]:
        return {"engine": "openvino", "version": self._version, "device": "cpu", "precision": self.precision}


def quantized_onnx(model: SSDLite, calibration: Sequence[torch.Tensor]) -> Path:
    """Path of the INT8 (QDQ) ONNX graph calibrated on ``calibration``, quantizing on first use (about 5 s).

    Cached per network and calibration data. Each calibration image is also fed mirrored, doubling the few
    photographs a repository can reach.
    """
    try:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
    except ImportError:
        raise BackendUnavailable(
            "INT8 quantization needs onnxruntime and onnx: pip install 'ssdlite-detector[fast]'"
        ) from None
    images = [np.asarray(image, np.float32) for batch in calibration for image in batch]
    if not images:
        raise BackendUnavailable("openvino-int8 needs calibration images (photographs) to quantize")
    key = hashlib.sha256(b"".join(image.tobytes() for image in images)).hexdigest()[:12]
    source = cached_onnx(model)
    target = source.with_name(f"{source.stem}-int8-{key}.onnx")
    if target.is_file():
        return target
    samples = [image[None] for image in images] + [np.ascontiguousarray(image[None, :, :, ::-1]) for image in images]

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._samples = iter({INPUT_NAME: sample} for sample in samples)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._samples, None)

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "int8.onnx"
        quantize_static(
            str(source),
            str(out),
            _Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        with atomic_path(target) as staged:  # concurrent replicas never read a half-written file
            shutil.move(out, staged)
    return target
