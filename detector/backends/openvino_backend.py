"""OpenVINO on the CPU: fp32, fp16 (AVX512-FP16), bf16 (AVX512-BF16 / AMX), and INT8 after NNCF post-training
quantization.

fp16 keeps 11 bits of mantissa to bf16's 8: on the sample photographs and their variants its detections stay within
the accuracy bar where bf16's do not (boxes move to IoU 0.885, scores by 0.054 on the COCO model).

INT8: NNCF (OpenVINO's own compression library; the ``int8`` extra) quantizes the network's OpenVINO model with its
default post-training recipe (the ``MIXED`` preset: symmetric int8 weights, asymmetric activations, ranges from
calibration images), and the result runs on int8 kernels (VNNI, AMX). It is never trusted blindly:
:mod:`detector.backends.selection` only considers it when the caller opts in, and then holds it to the same
detection bar as bf16.
"""

from __future__ import annotations

import functools
import hashlib
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np

from detector.backends.onnx import INPUT_NAME, OUTPUT_NAMES, cached_onnx
from detector.cache import atomic_path
from detector.errors import BackendUnavailable
from detector.machine import available_cpus

if TYPE_CHECKING:
    import openvino as ov

    from detector.model import SSDLite

Precision = Literal["f32", "f16", "bf16", "int8"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)


@functools.cache
def shared_core() -> ov.Core:
    """The process's one OpenVINO ``Core``, kept until exit.

    Why one: each Core's CPU plugin installs an alternate signal stack on the calling thread when it is created and
    puts back the one it found when it is destroyed. Cores whose lives overlap without nesting leave the thread's
    signal stack pointing at freed memory, and the next Python signal handler that runs there (SIGCHLD, SIGTERM)
    kills the process with SIGSEGV instead (seen with OpenVINO 2026.4: the test suite crashed in
    ``subprocess.run`` after a few engines had come and gone). One immortal Core creates the plugin once.
    """
    import openvino as ov

    return ov.Core()


def cpu_supports(precision: Precision) -> bool:
    """Whether OpenVINO's CPU plugin has kernels of ``precision`` here: bf16 needs AVX512-BF16 or AMX, f16
    AVX512-FP16 (f32 and int8 run everywhere)."""
    if precision not in ("bf16", "f16"):
        return True
    capabilities = shared_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if precision == "f16":
        from detector.machine import cpu_description

        # OpenVINO lists FP16 wherever it can convert, but only AVX512-FP16 computes in it natively.
        return "FP16" in capabilities and "avx512_fp16" in cpu_description()["flags"].split()
    return "BF16" in capabilities


class OpenVinoBackend:
    """Compiles an ONNX file or IR of the network for OpenVINO's CPU plugin, tuned for latency (one stream using
    every thread it is given: a batch of 8 runs about as fast per image as 2 streams do, and a lone image twice as
    fast).

    Args:
        path: the network (:mod:`detector.backends.onnx`'s layout), as .onnx or OpenVINO .xml; for "int8", already
            quantized (see :meth:`for_model`).
        precision: "f32", "f16", "bf16" or "int8".
        threads: inference threads (default: the CPUs this process may use; the service passes its budget).
    """

    def __init__(self, path: str | Path, *, precision: Precision = "f32", threads: int | None = None):
        try:
            import openvino as ov
        except ImportError:
            raise BackendUnavailable("OpenVINO is not installed: pip install 'ssdlite-detector[fast]'") from None
        if precision not in PRECISIONS:
            raise BackendUnavailable(f"unknown OpenVINO precision {precision!r}; choose from {', '.join(PRECISIONS)}")
        if not cpu_supports(precision):
            needs = "AVX512-BF16 or AMX" if precision == "bf16" else "AVX512-FP16"
            raise BackendUnavailable(f"this CPU has no {precision} kernels ({needs})")
        self.precision = precision
        self.path = Path(path)
        self.name = "openvino" if precision == "f32" else f"openvino-{precision}"
        self._version = ov.get_version()
        # int8: the operations left in float (the head's outputs, ...) run in fp32, not the bf16 default.
        hint = precision if precision in ("bf16", "f16") else "f32"
        self._compiled = shared_core().compile_model(
            str(path),
            "CPU",
            {
                "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_PRECISION_HINT": hint,
                "INFERENCE_NUM_THREADS": threads or available_cpus(),
            },
        )
        self._request = self._compiled.create_infer_request()
        self._outputs = [self._compiled.output(name) for name in OUTPUT_NAMES]
        self._lock = threading.Lock()  # one infer request: calls from several threads take turns

    @classmethod
    def for_model(
        cls,
        model: SSDLite,
        *,
        precision: Precision = "f32",
        calibration: Sequence[np.ndarray] = (),
        key: str | None = None,
        threads: int | None = None,
    ) -> OpenVinoBackend:
        """The backend for ``model``'s cached ONNX export (``key`` names it); "int8" quantizes it first on
        ``calibration`` (preprocessed batches (N, 3, S, S), at least one image)."""
        if precision not in PRECISIONS:
            raise BackendUnavailable(f"unknown OpenVINO precision {precision!r}; choose from {', '.join(PRECISIONS)}")
        onnx = cached_onnx(model, key)
        path = quantized_model(onnx, calibration) if precision == "int8" else onnx
        return cls(path, precision=precision, threads=threads)

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        inputs = {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)}
        with self._lock:
            result = self._request.infer(inputs, share_inputs=True)
            codes, logits = (np.array(result[output]) for output in self._outputs)
        return codes, logits

    def describe(self) -> dict[str, str]:
        return {"engine": "openvino", "version": self._version, "device": "cpu", "precision": self.precision}


def quantized_model(onnx: Path, calibration: Sequence[np.ndarray]) -> Path:
    """Path of the INT8 OpenVINO model of ``onnx`` calibrated on ``calibration``, quantizing on first use.

    Cached beside the export per network and calibration data, written atomically (replicas may quantize at once);
    in the temporary directory where the export's directory is read-only (a container's baked-in cache), as the
    export itself is (:func:`detector.backends.onnx.export_paths`).
    """
    try:
        import nncf
        import openvino  # noqa: F401  (the model is read by shared_core(); asked here for the message below)
    except ImportError:
        raise BackendUnavailable("INT8 quantization needs NNCF: pip install 'ssdlite-detector[int8]'") from None
    images = [np.ascontiguousarray(image, np.float32) for batch in calibration for image in batch]
    if not images:
        raise BackendUnavailable("openvino-int8 needs calibration images (photographs) to quantize")
    key = hashlib.sha256(b"".join(image.tobytes() for image in images)).hexdigest()[:12]
    name = f"{onnx.stem}-int8-{key}.xml"
    targets = [onnx.with_name(name), Path(tempfile.gettempdir()) / "ssdlite-detector-exports" / name]
    found = next((t for t in targets if t.is_file() and t.with_suffix(".bin").is_file()), None)
    if found is not None:
        return found
    dataset = nncf.Dataset([image[None] for image in images])
    quantized = nncf.quantize(shared_core().read_model(str(onnx)), dataset, subset_size=len(images))
    try:
        return _save_quantized(quantized, targets[0])
    except OSError:
        return _save_quantized(quantized, targets[1])


def _save_quantized(model: object, target: Path) -> Path:
    import openvino as ov

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        ov.save_model(model, str(Path(tmp) / "int8.xml"), compress_to_fp16=False)
        # Weights (.bin) first, then the graph (.xml) that names them: whoever finds the .xml finds its weights.
        for suffix in (".bin", ".xml"):
            with atomic_path(target.with_suffix(suffix)) as staged:
                (Path(tmp) / f"int8{suffix}").replace(staged)
    return target
