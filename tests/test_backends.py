"""Every installed backend against eager PyTorch, ``auto``'s choice, and clean fallback without the engines."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from detector.backends import accuracy
from detector.backends.factory import build_backend
from detector.backends.onnx import RAW_TOLERANCE, check_batch, max_abs_diff
from detector.errors import BackendUnavailable
from detector.samples import photo

PERSON_PHOTOS = ("astronaut.png", "camera.png", "grace_hopper.jpg", "coffee.png")


@pytest.fixture(scope="module")
def photos():
    from detector.images import load_image

    return [load_image(photo(name)) for name in PERSON_PHOTOS]


def _detections(detector, backend, photos):
    batch = detector.preprocess(photos)
    sizes = [p.shape[:2] for p in photos]
    return detector.postprocess(*backend(batch), sizes, score_threshold=accuracy.CANDIDATE_SCORE)


@pytest.mark.parametrize("name", ["onnxruntime", "openvino", "litert"])
def test_fp32_backends_match_eager_within_1e3(person_detector, photos, name):
    pytest.importorskip({"litert": "ai_edge_litert"}.get(name, name))
    backend = build_backend(name, person_detector.model)
    for batch in (check_batch(300, 1), person_detector.preprocess(photos)):
        assert max_abs_diff(person_detector.model_outputs(batch), backend(batch)) <= RAW_TOLERANCE


def test_bf16_keeps_every_confident_detection_on_photographs(person_detector, photos):
    pytest.importorskip("openvino")
    try:
        backend = build_backend("openvino-bf16", person_detector.model)
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    reference = _detections(person_detector, person_detector.backend, photos)
    verdict = accuracy.judge(reference, _detections(person_detector, backend, photos), PERSON_PHOTOS)
    assert verdict.truths >= 3 and not verdict.lost, verdict.summary()
    assert verdict.agreement_ap >= accuracy.MIN_AGREEMENT_AP, verdict.summary()
    assert verdict.short and not verdict.passed  # four photographs are too few to decide on


@pytest.mark.slow
def test_int8_is_quantized_and_judged_by_the_bar(person_detector, photos):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    with pytest.raises(BackendUnavailable, match="calibration"):
        build_backend("openvino-int8", person_detector.model)
    backend = build_backend("openvino-int8", person_detector.model, calibration=[person_detector.preprocess(photos)])
    reference = _detections(person_detector, person_detector.backend, photos)
    verdict = accuracy.judge(reference, _detections(person_detector, backend, photos), PERSON_PHOTOS)
    # The same people are found; whether the figures meet the bar on the whole check set decides auto's verdict.
    assert verdict.truths >= 3 and verdict.agreement_ap > 0.8, verdict.summary()


@pytest.mark.slow
def test_int8_model_of_a_read_only_export_goes_to_the_temp_dir(person_detector, photos, tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    import shutil
    import tempfile

    import nncf

    from detector.backends import openvino_backend
    from detector.backends.onnx import cached_onnx

    baked = tmp_path / "cache" / "exports"  # a container's cache: read-only
    baked.mkdir(parents=True)
    onnx = Path(shutil.copy(cached_onnx(person_detector.model), baked))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    save = openvino_backend._save_quantized

    def refuse_the_cache(model: object, target: Path) -> Path:
        if target.parent == baked:
            raise PermissionError(30, "Read-only file system", str(target))
        return save(model, target)

    monkeypatch.setattr(openvino_backend, "_save_quantized", refuse_the_cache)
    calibration = [person_detector.preprocess(photos[:2])]
    path = openvino_backend.quantized_model(onnx, calibration)
    assert path.parent == tmp_path / "tmp" / "ssdlite-detector-exports" and path.with_suffix(".bin").is_file()
    monkeypatch.setattr(nncf, "quantize", lambda *a, **k: pytest.fail("quantized again"))
    assert openvino_backend.quantized_model(onnx, calibration) == path  # found there next time


def test_detector_on_another_backend_detects_the_same(person_detector, photos):
    pytest.importorskip("onnxruntime")
    from detector.inference import Detector

    fast = Detector.from_weights("person", backend="onnxruntime")
    info = fast.info()
    assert info.backend == "onnxruntime" and info.backend_engine["engine"] == "onnxruntime"
    assert info.backend_reason
    for got, want in zip(fast.detect(photos), person_detector.detect(photos), strict=True):
        assert len(got.detections) == len(want.detections)
        for a, b in zip(got.detections, want.detections, strict=True):
            assert a.score == pytest.approx(b.score, abs=1e-4) and np.allclose(a.box, b.box, atol=0.05)


_ENGINES_COME_AND_GO = """
import gc, signal, subprocess, sys
from detector.backends.openvino_backend import OpenVinoBackend
first, second = OpenVinoBackend(sys.argv[1]), OpenVinoBackend(sys.argv[1])
del first; gc.collect()   # lives that overlap without nesting
del second; gc.collect()
signal.signal(signal.SIGCHLD, lambda *_: None)  # any Python handler runs on the thread's alternate signal stack
subprocess.run([sys.executable, "-c", "pass"], check=True)
print("alive")
"""


def test_openvino_engines_that_come_and_go_leave_signal_handling_intact(person_detector):
    """Two raw ``ov.Core``s freed in this order leave the signal stack dangling and the child's SIGCHLD kills the
    process with SIGSEGV (OpenVINO 2026.4); the backends share one Core, so it survives."""
    pytest.importorskip("openvino")
    from detector.backends.onnx import cached_onnx

    onnx = cached_onnx(person_detector.model)
    done = subprocess.run(
        [sys.executable, "-c", _ENGINES_COME_AND_GO, str(onnx)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == "alive", (done.returncode, done.stderr[-800:])
