"""Every installed backend against eager PyTorch, ``auto``'s choice, and clean fallback without the engines."""

import sys

import numpy as np
import pytest

from detector.backends.accuracy import MATCH_SCORE, compare_detections
from detector.backends.factory import build_backend
from detector.backends.onnx import RAW_TOLERANCE, check_batch, max_abs_diff
from detector.errors import BackendUnavailable
from detector.results import Detection, ImageDetections
from detector.samples import photo

PERSON_PHOTOS = ("astronaut.png", "camera.png", "grace_hopper.jpg", "coffee.png")


@pytest.fixture(scope="module")
def photos():
    from detector.images import load_image

    return [load_image(photo(name)) for name in PERSON_PHOTOS]


def _detections(detector, backend, photos):
    batch = detector.preprocess(photos)
    sizes = [p.shape[:2] for p in photos]
    return detector.postprocess(*backend(batch), sizes, score_threshold=MATCH_SCORE)


@pytest.mark.parametrize("name", ["onnxruntime", "openvino"])
def test_fp32_backends_match_eager_within_1e3(person_detector, photos, name):
    pytest.importorskip(name)
    backend = build_backend(name, person_detector.model)
    for batch in (check_batch(300, 1), person_detector.preprocess(photos)):
        assert max_abs_diff(person_detector.model_outputs(batch), backend(batch)) <= RAW_TOLERANCE


def test_bf16_keeps_every_detection_on_photographs(person_detector, photos):
    pytest.importorskip("openvino")
    try:
        backend = build_backend("openvino-bf16", person_detector.model)
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    reference = _detections(person_detector, person_detector.backend, photos)
    agreement = compare_detections(reference, _detections(person_detector, backend, photos), PERSON_PHOTOS)
    assert agreement.matched >= 3, agreement.summary()
    assert agreement.passed, agreement.summary()


@pytest.mark.slow
def test_int8_is_quantized_and_judged_by_the_bar(person_detector, photos):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    with pytest.raises(BackendUnavailable, match="calibration"):
        build_backend("openvino-int8", person_detector.model)
    backend = build_backend("openvino-int8", person_detector.model, calibration=[person_detector.preprocess(photos)])
    reference = _detections(person_detector, person_detector.backend, photos)
    agreement = compare_detections(reference, _detections(person_detector, backend, photos), PERSON_PHOTOS)
    # Detections stay (same people found, scores close); whether they stay within the bar decides auto's verdict.
    assert agreement.matched >= 3 and agreement.max_score_diff < 0.05, agreement.summary()


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


def test_compare_detections_enforces_the_bar():
    def image(*dets):
        return ImageDetections(100, 100, [Detection("person", 1, s, b) for s, b in dets])

    ref = [image((0.9, (10.0, 10.0, 50.0, 50.0)))]
    # On a 40 px box a 0.5 px shift is IoU 0.975, 2 px off one edge is the limit (0.95), 3 px is past it.
    assert compare_detections(ref, [image((0.91, (10.5, 10.0, 50.5, 50.0)))]).passed
    assert compare_detections(ref, [image((0.9, (10.0, 10.0, 50.0, 48.0)))]).passed  # 38/40 = IoU 0.95
    assert not compare_detections(ref, [image((0.9, (13.0, 10.0, 50.0, 50.0)))]).passed  # 3 px: IoU 0.925
    big = [ImageDetections(3840, 2160, [Detection("person", 1, 0.9, (100.0, 100.0, 3000.0, 2000.0))])]
    shifted = [ImageDetections(3840, 2160, [Detection("person", 1, 0.9, (114.0, 100.0, 3014.0, 2000.0))])]
    assert compare_detections(big, shifted).passed  # 14 px on a 2900-px box: IoU 0.990
    assert not compare_detections(ref, [image((0.85, (10.0, 10.0, 50.0, 50.0)))]).passed  # score 0.05 off
    lost = compare_detections(ref, [image()])
    assert lost.lost == ["0: person 0.900"] and not lost.passed
    # Just across the threshold within the score tolerance is no loss; a new confident box is an extra.
    assert compare_detections(
        [image((0.31, (10.0, 10.0, 50.0, 50.0)))], [image((0.295, (10.0, 10.0, 50.0, 50.0)))]
    ).passed
    assert compare_detections(ref, [image((0.9, (10.0, 10.0, 50.0, 50.0)), (0.5, (60.0, 60.0, 90.0, 90.0)))]).extra


def test_absent_engines_fall_back_to_torch(person_detector, monkeypatch, tmp_path):
    from detector.backends import selection

    monkeypatch.setenv("DETECTOR_CACHE_DIR", str(tmp_path))
    for module in ("onnxruntime", "openvino"):
        monkeypatch.setitem(sys.modules, module, None)  # `import onnxruntime` now raises ImportError
    for name in ("onnxruntime", "openvino", "openvino-bf16"):
        with pytest.raises(BackendUnavailable, match="not installed"):
            build_backend(name, person_detector.model)
    with pytest.raises(BackendUnavailable, match="CUDA"):
        build_backend("torch-fp16", person_detector.model)
    backend, choice = selection.select_backend(person_detector.model, person_detector.spec, use_cache=False)
    assert choice.name == "torch" and backend.name == "torch"
    verdicts = {c.name: c for c in choice.candidates}
    assert verdicts["onnxruntime"].accuracy.startswith("unavailable") and not verdicts["openvino"].eligible


def test_auto_remembers_its_choice_per_machine(person_detector, photos, monkeypatch, tmp_path):
    from detector.backends import selection

    monkeypatch.setenv("DETECTOR_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(selection, "candidate_names", lambda device, **_: ["torch"])
    measured = []
    measure = selection.measure_backends
    monkeypatch.setattr(selection, "measure_backends", lambda *a, **k: measured.append(1) or measure(*a, **k))
    _, first = selection.select_backend(person_detector.model, person_detector.spec)
    assert (tmp_path / selection.CACHE_FILE).is_file() and len(measured) == 1
    backend, again = selection.select_backend(person_detector.model, person_detector.spec)
    assert again == first and backend.name == "torch" and len(measured) == 1
    # Measured without photographs: a caller bringing some gets a fresh measurement, which then serves everyone.
    selection.select_backend(person_detector.model, person_detector.spec, photos[:1])
    selection.select_backend(person_detector.model, person_detector.spec)
    assert len(measured) == 2


def test_reduced_precision_is_refused_without_photographs(person_detector):
    pytest.importorskip("openvino")
    from detector.backends import selection

    table, _ = selection.measure_backends(person_detector.model, person_detector.spec, names=["torch", "openvino-bf16"])
    bf16 = table[1]
    assert not bf16.eligible and ("no photographs" in bf16.accuracy or "unavailable" in bf16.accuracy)
    assert table[0].eligible and table[0].ms_per_image > 0


def test_torch_backend_on_cpu_is_the_reference(person_detector):
    batch = check_batch(300, 2)
    assert max_abs_diff(person_detector.model_outputs(batch), person_detector.predict_raw(batch)) == 0.0
    assert isinstance(person_detector.predict_raw(batch)[0], np.ndarray)  # every engine speaks numpy


@pytest.mark.slow
def test_measuring_apart_leaves_the_caller_without_the_network(person_detector, monkeypatch, tmp_path):
    pytest.importorskip("openvino")
    import shutil

    from detector.backends import selection
    from detector.inference import Detector

    weights = shutil.copy(person_detector._weights, tmp_path / "person.safetensors")
    monkeypatch.setenv("DETECTOR_CACHE_DIR", str(tmp_path / "cache"))
    detector = Detector.from_weights(weights, backend="auto", threads=1, measure_apart=True)
    # A child measured (and cached) the choice; this process built the winner from the export, with no network.
    cached = selection.cached_choice(detector.spec, detector.digest)
    assert cached is not None and detector.backend.name == cached.name != "torch"
    assert detector._network is None and detector.backend_reason.startswith("auto: ")


def test_measuring_apart_falls_back_to_measuring_here(person_detector, monkeypatch, tmp_path):
    import shutil

    from detector import inference
    from detector.backends import selection

    weights = shutil.copy(person_detector._weights, tmp_path / "person.safetensors")
    monkeypatch.setenv("DETECTOR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(inference, "_choose_in_child", lambda *_: None)  # the child failed
    monkeypatch.setattr(selection, "candidate_names", lambda device, **_: ["torch"])
    detector = inference.Detector.from_weights(weights, backend="auto", threads=1, measure_apart=True)
    assert detector.backend.name == "torch" and detector.backend_reason.startswith("auto: ")
