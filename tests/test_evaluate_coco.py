"""The COCO model evaluated on a COCO-format set: the sample photographs with hand-annotated boxes (tests/data).

A file that uses COCO's ids and names is scored by id on all 80 categories; a file with other ids and some other
names (a VOC-derived one) is matched by name, the names that differ mapped with ``--category-map``; the output says
which categories were scored and why the others were not. pycocotools' own numbers on our detections are the judge.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from detector.cli import main
from detector.samples import ALL_PHOTOS, photo, samples_dir
from detector.training.evaluate import STAT_NAMES, match_categories

ANNOTATIONS = Path(__file__).parent / "data" / "sample_photos_coco.json"
# PASCAL VOC's names for the COCO categories they share but name differently.
VOC_NAMES = {"motorcycle": "motorbike", "dining table": "diningtable", "couch": "sofa", "airplane": "aeroplane"}
VOC_TO_COCO = {voc: coco for coco, voc in VOC_NAMES.items()}


@pytest.fixture(scope="module")
def images() -> Path:
    for name in ALL_PHOTOS:
        photo(name)
    return samples_dir()


def _pycocotools(annotations: Path, detections: list[dict]) -> list[float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(annotations))
        evaluator = COCOeval(truth, truth.loadRes(detections), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(s) for s in evaluator.stats]


def _evaluate(capsys, images: Path, annotations: Path, out: Path, *extra: str) -> tuple[dict, list, str, str]:
    argv = ["evaluate", "--images", str(images), "--annotations", str(annotations), "--out", str(out)]
    assert main([*argv, "--workers", "0", "--no-progress", *extra]) == 0
    captured = capsys.readouterr()
    metrics = json.loads((out / "metrics.json").read_text())
    return metrics, json.loads((out / "detections.json").read_text()), captured.out, captured.err


def test_a_coco_file_is_scored_by_id_on_every_category(capsys, images, tmp_path):
    metrics, detections, printed, log = _evaluate(capsys, images, ANNOTATIONS, tmp_path / "eval")
    print(printed)
    assert "evaluating 80 of 80 categories, matched by id" in log
    assert len(metrics["per_category"]) == 80 and metrics["num_images"] == 9
    # Real COCO ids in the results, and pycocotools' own numbers on them.
    assert {d["category_id"] for d in detections} <= {
        c["id"] for c in json.loads(ANNOTATIONS.read_text())["categories"]
    }
    assert [metrics[name] for name in STAT_NAMES] == _pycocotools(ANNOTATIONS, detections)
    rows = {row["name"]: row for row in metrics["per_category"]}
    assert rows["person"]["num_gt"] == 9 and rows["person"]["AP50"] > 0.9
    assert rows["cat"]["AP50"] == pytest.approx(1.0) and rows["bus"]["AP50"] == pytest.approx(1.0)
    assert rows["toothbrush"]["AP"] is None  # no ground truth: "-" in the table, null in the JSON
    table = printed.split("\n\n", 1)[1]
    assert len([line for line in table.splitlines() if line.startswith(("person ", "toothbrush "))]) == 2


def test_a_voc_named_file_is_matched_by_name_with_a_category_map(capsys, images, tmp_path):
    document = json.loads(ANNOTATIONS.read_text())
    # VOC-style: its own ids (1..N by name), VOC's spellings for four categories.
    renamed = {c["id"]: VOC_NAMES.get(c["name"], c["name"]) for c in document["categories"]}
    new_ids = {old: new for new, old in enumerate(sorted(renamed, key=lambda i: renamed[i]), start=1)}
    document["categories"] = [{**c, "id": new_ids[c["id"]], "name": renamed[c["id"]]} for c in document["categories"]]
    for annotation in document["annotations"]:
        annotation["category_id"] = new_ids[annotation["category_id"]]
    voc = tmp_path / "voc.json"
    voc.write_text(json.dumps(document))

    metrics, _, _, log = _evaluate(capsys, images, voc, tmp_path / "unmapped")
    assert "evaluating 76 of 80 categories (those the model knows)" in log
    assert "not scored: aeroplane (no model class named 'aeroplane'; --category-map can map names)" in log
    assert "motorbike (no model class named 'motorbike'" in log and len(metrics["per_category"]) == 76

    mapping = tmp_path / "voc_to_coco.json"
    mapping.write_text(json.dumps(VOC_TO_COCO))
    metrics, detections, _, log = _evaluate(capsys, images, voc, tmp_path / "mapped", "--category-map", str(mapping))
    assert "evaluating 80 of 80 categories, matched by name" in log and "not scored" not in log
    by_id = json.loads((tmp_path / "mapped" / "metrics.json").read_text())
    assert [metrics[name] for name in STAT_NAMES] == _pycocotools(voc, detections)
    # The same detections as the COCO file's run, so the same numbers (up to the order the means are summed in, as
    # the categories sort differently): only the names and ids differ.
    reference, _, _, _ = _evaluate(capsys, images, ANNOTATIONS, tmp_path / "coco")
    assert [metrics[name] for name in STAT_NAMES] == pytest.approx([reference[name] for name in STAT_NAMES], abs=1e-12)
    motorbike = next(r for r in by_id["per_category"] if r["name"] == "motorbike")
    motorcycle = next(r for r in reference["per_category"] if r["name"] == "motorcycle")
    assert motorbike["AP"] == motorcycle["AP"] and motorbike["num_gt"] == 1


def test_the_person_model_is_scored_on_the_person_category_alone(capsys, images, tmp_path):
    metrics, detections, _, log = _evaluate(capsys, images, ANNOTATIONS, tmp_path / "person", "--weights", "person")
    assert "evaluating 1 of 80 categories (those the model knows): person" in log
    assert "not scored: bicycle (no model class named 'bicycle'" in log
    assert [row["name"] for row in metrics["per_category"]] == ["person"]
    assert {d["category_id"] for d in detections} == {1}


def test_a_category_map_to_an_unknown_label_is_refused(capsys, images, tmp_path):
    mapping = tmp_path / "bad.json"
    mapping.write_text(json.dumps({"sofa": "settee"}))
    argv = ["evaluate", "--images", str(images), "--annotations", str(ANNOTATIONS), "--category-map", str(mapping)]
    assert main(argv) == 1
    assert "--category-map maps 'sofa' to 'settee', which is not one of the model's labels" in capsys.readouterr().err
    mapping.write_text("[1, 2]")
    assert main(argv) == 1
    assert "must be a JSON object of names" in capsys.readouterr().err


def test_matching_by_id_needs_every_id_to_carry_the_model_s_name():
    labels = ("background", "person", "bicycle", "")
    assert match_categories(labels, [{"id": 1, "name": "person"}, {"id": 2, "name": "Bicycle"}]).by == "id"
    # An unused (empty) id, or the right name at another id, falls back to names.
    assert match_categories(labels, [{"id": 3, "name": "person"}]).class_to_category == {1: 3}
    swapped = match_categories(labels, [{"id": 1, "name": "bicycle"}, {"id": 2, "name": "person"}])
    assert swapped.by == "name" and swapped.class_to_category == {1: 2, 2: 1}


@pytest.mark.parametrize(("backend", "precision"), [("openvino", "exact"), ("openvino-bf16", "fast")])
def test_evaluate_measures_the_engine_it_is_asked_for(capsys, images, tmp_path, backend, precision):
    """``evaluate --backend --precision``: the AP of the engine a user serves, recorded beside the figures."""
    pytest.importorskip("openvino")
    from detector.backends.openvino_backend import cpu_supports

    if backend == "openvino-bf16" and not cpu_supports("bf16"):
        pytest.skip("this CPU has no bf16 kernels")
    torch_metrics, *_ = _evaluate(capsys, images, ANNOTATIONS, tmp_path / "torch")
    metrics, _, _, log = _evaluate(
        capsys, images, ANNOTATIONS, tmp_path / backend, "--backend", backend, "--precision", precision
    )
    assert f"engine: {backend}" in log and metrics["engine"] == backend
    if precision == "exact":  # fp32: the reference's AP to the fourth digit
        assert metrics["AP"] == pytest.approx(torch_metrics["AP"], abs=1e-4)
    else:  # reduced precision: close, not equal (README, "Backends and speed")
        assert metrics["AP"] == pytest.approx(torch_metrics["AP"], abs=0.03)


def test_evaluate_refuses_a_reduced_engine_under_exact_precision(capsys, images, tmp_path):
    argv = ["evaluate", "--images", str(images), "--annotations", str(ANNOTATIONS), "--workers", "0"]
    assert main([*argv, "--backend", "openvino-bf16", "--precision", "exact", "--no-progress"]) == 1
    assert "precision exact allows fp32 engines only" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--precision", "fp8"])
    assert exited.value.code == 2 and "invalid choice: 'fp8'" in capsys.readouterr().err
