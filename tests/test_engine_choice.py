"""The accuracy bar on synthetic engines, and the one door that chooses and builds the engine (auto, exact, named)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import replace

import pytest

from detector.backends import accuracy, selection
from detector.backends.selection import Candidate, Choice
from detector.errors import BackendUnavailable, DetectorError
from detector.images import load_image
from detector.results import Detection, ImageDetections
from detector.samples import photo


def _scene(index: int) -> ImageDetections:
    """Five well-separated detections of two classes, scored 0.35–0.95, in a 400×400 image."""
    detections = []
    for k in range(5):
        label, class_id = ("person", 1) if k % 2 else ("cat", 17)
        box = (10.0 + 75 * k, 20.0, 60.0 + 75 * k, 90.0 + index % 7)
        detections.append(Detection(label, class_id, 0.35 + 0.15 * k, box))
    return ImageDetections(400, 400, detections)


REFERENCE = [_scene(i) for i in range(40)]  # 40 images, 200 fp32 detections >= 0.3: the smallest set the bar takes


def _without(images: list[ImageDetections], image: int, detection: int) -> list[ImageDetections]:
    changed = list(images)
    kept = [d for k, d in enumerate(images[image].detections) if k != detection]
    changed[image] = ImageDetections(400, 400, kept)
    return changed


def test_an_engine_equal_to_fp32_is_accepted():
    verdict = accuracy.judge(REFERENCE, REFERENCE)
    assert verdict.agreement_ap == pytest.approx(1.0) and not verdict.lost and verdict.passed
    assert (verdict.images, verdict.truths) == (40, 200)


def test_an_engine_that_drops_one_confident_detection_is_refused():
    dropped = _without(REFERENCE, 3, 4)  # the 0.95 cat of image 3
    verdict = accuracy.judge(REFERENCE, dropped)
    assert verdict.agreement_ap >= accuracy.MIN_AGREEMENT_AP  # one box in 200 hardly moves the AP...
    assert verdict.lost == ("3: cat 0.950",) and not verdict.passed  # ...but a user would miss it
    # A detection below 0.5 may go: the AP judges it.
    assert accuracy.judge(REFERENCE, _without(REFERENCE, 3, 0)).passed


def test_a_partner_counts_from_iou_05_and_score_04():
    reference = [ImageDetections(100, 100, [Detection("cat", 17, 0.9, (0.0, 0.0, 40.0, 40.0))])]

    def lost(score: float, box: tuple[float, float, float, float]) -> list[str]:
        candidate = [ImageDetections(100, 100, [Detection("cat", 17, score, box)])]
        return accuracy.lost_confident(reference, candidate, ["a"])

    assert not lost(0.4, (0.0, 0.0, 40.0, 20.0))  # IoU 0.5, score 0.4: still there
    assert lost(0.39, (0.0, 0.0, 40.0, 40.0)) == ["a: cat 0.900"]
    assert lost(0.9, (0.0, 0.0, 40.0, 19.0))  # IoU 0.475
    other_class = [ImageDetections(100, 100, [Detection("dog", 18, 0.9, (0.0, 0.0, 40.0, 40.0))])]
    assert accuracy.lost_confident(reference, other_class, ["a"])


def test_agreement_ap_counts_false_alarms_but_not_dont_care_regions():
    extra = Detection("cat", 17, 0.97, (300.0, 300.0, 380.0, 380.0))
    alarmed = [ImageDetections(400, 400, [*image.detections, extra]) for image in REFERENCE]
    assert accuracy.agreement_ap(REFERENCE, alarmed) < 0.9  # a confident box fp32 does not have, everywhere
    # fp32 saw it at 0.25 (below the truth's 0.3): a don't-care region, neither hit nor false alarm.
    faint = replace(extra, score=0.25)
    reference = [ImageDetections(400, 400, [*image.detections, faint]) for image in REFERENCE]
    assert accuracy.agreement_ap(reference, alarmed) == pytest.approx(1.0)


def test_too_small_a_check_set_decides_nothing():
    verdict = accuracy.judge(REFERENCE[:39], REFERENCE[:39])
    assert not verdict.passed and "too few check photographs" in verdict.short
    assert "195 fp32 detections" in verdict.summary()


def _row(name: str, ms: float | None, eligible: bool = True) -> Candidate:
    return Candidate(name, selection.ENGINE_PRECISION[name], ms, "figures", eligible)


TABLE = (
    _row("onnxruntime", 11.0),
    _row("openvino", 9.5),
    _row("openvino-bf16", 5.0),
    _row("openvino-int8", 4.0, eligible=False),
    _row("openvino-fp16", None, eligible=False),
)


def test_auto_takes_the_fastest_engine_that_meets_the_bar():
    assert selection.rank(TABLE, "fast").name == "openvino-bf16"
    exact = selection.rank(TABLE, "exact")
    assert (exact.name, exact.precision) == ("openvino", "fp32") and "precision exact" in exact.reason
    assert selection.rank(TABLE[3:], "fast").name == "torch"  # none eligible: the reference


def test_precision_and_backend_are_checked():
    spec_args = (None, None, "")  # never read: the checks come first
    with pytest.raises(DetectorError, match="choose from fast, exact"):
        selection.choose(*spec_args, backend="openvino", precision="fp8")  # type: ignore[arg-type]
    with pytest.raises(DetectorError, match="computes in bf16; precision exact allows fp32"):
        selection.choose(*spec_args, backend="openvino-bf16", precision="exact")  # type: ignore[arg-type]
    with pytest.raises(BackendUnavailable, match="unknown backend"):
        selection.choose(*spec_args, backend="tensorrt")  # type: ignore[arg-type]


@pytest.fixture
def person_copy(person_detector, tmp_path, monkeypatch):
    """The person weights under a fresh cache: nothing measured, nothing exported yet."""
    monkeypatch.setenv("DETECTOR_CACHE_DIR", str(tmp_path / "cache"))
    return shutil.copy(person_detector._weights, tmp_path / "person.safetensors")


def test_auto_measures_once_then_reads_the_cache(person_copy, person_detector, monkeypatch):
    from detector.cache import file_digest
    from detector.inference import Detector

    measured = []
    monkeypatch.setattr(selection, "_measure_in_child", lambda *a: measured.append(a) or TABLE)
    detector = Detector.from_weights(person_copy, backend="auto", precision="exact")
    assert measured and detector.backend.name == "openvino" and "measured now" in detector.backend_reason
    selection.remember(TABLE, detector.spec, file_digest(person_copy), device="cpu")
    again = Detector.from_weights(person_copy, backend="auto", precision="exact")
    assert len(measured) == 1 and "measured earlier" in again.backend_reason
    # The exact choice runs the export: no network (no torch) in this detector.
    assert again._network is None
    info = again.info()
    assert (info.backend, info.backend_precision) == ("openvino", "fp32")
    assert info.backend_figures["ms_per_image_batch8"] == 9.5


def test_a_failed_measurement_falls_back_to_the_reference(person_copy, monkeypatch):
    from detector.inference import Detector

    monkeypatch.setattr(selection, "_measure_in_child", lambda *a: None)
    detector = Detector.from_weights(person_copy, backend="auto")
    assert detector.backend.name == "torch" and "measuring the engines failed" in detector.backend_reason


def test_measure_judges_reduced_precision_on_photographs_only(person_copy):
    pytest.importorskip("openvino")
    from detector.backends import measure

    few = {"astronaut": load_image(photo("astronaut.png"))}
    table = measure.measure(measure.workbench(person_copy, images=few), ["onnxruntime", "openvino-bf16"])
    assert (
        table[0].eligible and table[0].ms_per_image and table[0].ms_batch1 and "raw max abs diff" in table[0].accuracy
    )
    assert not table[1].eligible
    assert "too few check photographs" in table[1].accuracy or "unavailable" in table[1].accuracy
    nothing = measure.measure(measure.workbench(person_copy, images={}), ["openvino-bf16"])
    assert not nothing[0].eligible


def test_absent_engines_are_skipped_with_their_reason(person_copy, monkeypatch):
    from detector.backends import measure

    bench = measure.workbench(person_copy, images={})  # exports while the engines are still importable
    for module in ("onnxruntime", "openvino"):
        monkeypatch.setitem(sys.modules, module, None)  # `import onnxruntime` now raises ImportError
    table = measure.measure(bench, ["onnxruntime", "openvino", "openvino-bf16"])
    assert all(not row.eligible and "not installed" in row.accuracy for row in table)
    assert selection.rank(table, "fast").name == "torch"


@pytest.mark.slow
def test_auto_measures_in_a_child_and_serves_without_torch(person_copy):
    pytest.importorskip("openvino")
    from detector.inference import Detector

    detector = Detector.from_weights(person_copy, backend="auto", threads=1)
    table = detector.choice.candidates
    assert {row.name for row in table} >= {"onnxruntime", "openvino", "openvino-bf16", "openvino-int8"}
    assert detector.choice.name != "torch" and detector._network is None
    check = next(row for row in table if row.name == "openvino-bf16")
    assert check.accuracy.startswith(("agreement AP", "unavailable")), check.accuracy


def test_the_service_refuses_an_unknown_precision():
    done = subprocess.run(
        [sys.executable, "-m", "api"],
        env={**os.environ, "DETECTOR_PRECISION": "fp8"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "DETECTOR_PRECISION: Input should be 'fast' or 'exact'" in done.stderr


def test_the_service_loads_its_models_on_the_device_it_is_given(monkeypatch):
    from api.models import load_models
    from api.settings import Settings
    from detector.inference import Detector

    with pytest.raises(ValueError, match="device"):
        Settings(device="gpu")
    asked = {}

    def from_weights(source, **options):
        asked.update(options)
        raise DetectorError("loaded nothing")

    monkeypatch.setattr(Detector, "from_weights", from_weights)
    with pytest.raises(DetectorError):
        load_models(["person"], "auto", 1, "fast", Settings(device="cuda:1").device)
    assert asked["device"] == "cuda:1"


def test_choice_figures_for_info():
    choice = Choice("openvino-bf16", "r", "bf16", (replace(TABLE[2], agreement_ap=0.99, lost=0),))
    assert choice.figures() == {
        "ms_per_image_batch8": 5.0,
        "agreement_ap": 0.99,
        "confident_lost": 0,
        "annotated_ap": None,
    }
