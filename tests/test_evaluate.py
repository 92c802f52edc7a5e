"""COCO evaluation: our numbers are pycocotools' numbers, and they move as they should."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detector.cli import main
from detector.spec import ModelSpec
from detector.training.coco import coco_api, load_dataset, read_coco_file
from detector.training.evaluate import STAT_NAMES, category_map, coco_evaluate, per_category_ap
from detector.training.synthetic import make_split
from detector.weights import build_model, save_weights


@pytest.fixture(scope="module")
def val_set(tmp_path_factory):
    """12 synthetic scenes with three shape classes."""
    root = tmp_path_factory.mktemp("shapes")
    annotations = make_split(root, "val", 12, seed=11)
    return root / "val", annotations


def _pycocotools(annotation_file, detections, cat_ids=None):
    """pycocotools called directly, the way its README does it."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotation_file))
        dt = gt.loadRes(detections)
        evaluator = COCOeval(gt, dt, "bbox")
        if cat_ids is not None:
            evaluator.params.catIds = cat_ids
        evaluator.evaluate()
        evaluator.accumulate()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        evaluator.summarize()
    return evaluator.stats, printed.getvalue()


def _ours(annotation_file, detections):
    document = read_coco_file(annotation_file)
    gt = coco_api(document)
    image_ids = [i["id"] for i in document["images"]]
    category_ids = [c["id"] for c in document["categories"]]
    evaluator, summary = coco_evaluate(gt, detections, image_ids, category_ids)
    return evaluator, summary, gt


def _ground_truth_as_detections(annotation_file, dx_fraction=0.0):
    document = json.loads(annotation_file.read_text())
    return [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": [a["bbox"][0] + dx_fraction * a["bbox"][2], *a["bbox"][1:]],
            "score": 1.0,
        }
        for a in document["annotations"]
    ]


def test_numbers_and_summary_equal_pycocotools_called_directly(val_set):
    _, annotations = val_set
    rng = np.random.default_rng(0)
    detections = []
    for det in _ground_truth_as_detections(annotations):
        x, y, w, h = det["bbox"]
        jitter = rng.normal(0, 0.08, size=4) * [w, h, w, h]
        det = {**det, "bbox": [x + jitter[0], y + jitter[1], w + jitter[2], h + jitter[3]]}
        det["score"] = float(rng.uniform(0.2, 1.0))
        if rng.random() < 0.2:
            det["category_id"] = int(rng.integers(1, 4))  # some confusions
        detections.append(det)
        if rng.random() < 0.5:  # and false positives
            detections.append({**det, "bbox": [x + w, y + h, w / 2, h / 2], "score": float(rng.uniform(0, 0.6))})
    reference, printed = _pycocotools(annotations, detections)
    evaluator, summary, _ = _ours(annotations, detections)
    assert np.array_equal(evaluator.stats, reference)
    assert summary == printed
    assert len(summary.strip().splitlines()) == 12
    assert 0.2 < reference[0] < 0.95  # a case where the numbers mean something


def test_perfect_detections_give_ap_one(val_set):
    _, annotations = val_set
    evaluator, _, gt = _ours(annotations, _ground_truth_as_detections(annotations))
    stats = dict(zip(STAT_NAMES, evaluator.stats, strict=True))
    assert stats["AP"] == 1.0 and stats["AP50"] == 1.0 and stats["AP75"] == 1.0 and stats["AR100"] == 1.0
    assert all(row["AP"] == 1.0 for row in per_category_ap(evaluator, gt))


def test_a_known_shift_gives_the_known_drop(val_set):
    # Shifting every box sideways by d·w gives IoU (1 − d)/(1 + d); d = 0.2 → 0.667: matched at IoU thresholds
    # 0.50, 0.55, 0.60, 0.65 and missed at 0.70 … 0.95, so AP = 4/10, AP50 = 1, AP75 = 0.
    _, annotations = val_set
    evaluator, _, _ = _ours(annotations, _ground_truth_as_detections(annotations, dx_fraction=0.2))
    stats = dict(zip(STAT_NAMES, evaluator.stats, strict=True))
    assert stats["AP"] == pytest.approx(0.4, abs=1e-12)
    assert stats["AP50"] == 1.0 and stats["AP75"] == 0.0


def test_no_detections_score_zero_instead_of_crashing(val_set):
    _, annotations = val_set
    evaluator, summary, _ = _ours(annotations, [])
    assert evaluator.stats[0] == 0.0 and len(summary.strip().splitlines()) == 12


def test_category_map_by_name():
    categories = [{"id": 1, "name": "person"}, {"id": 7, "name": "Traffic Light"}, {"id": 9, "name": "dog"}]
    labels = ("background", "traffic light", "person", "cat")
    assert category_map(labels, categories) == {1: 7, 2: 1}


def test_cli_evaluate_equals_pycocotools_on_its_own_results(val_set, tmp_path, capsys):
    images, annotations = val_set
    spec = ModelSpec(num_classes=4, labels=("background", "circle", "square", "triangle"), image_size=96)
    model = build_model(spec)
    weights = tmp_path / "random.safetensors"
    save_weights(weights, model, spec)
    out = tmp_path / "eval"
    argv = ["evaluate", "--images", str(images), "--annotations", str(annotations), "--weights", str(weights)]
    assert main([*argv, "--out", str(out), "--workers", "0", "--batch-size", "5", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    detections = json.loads((out / "detections.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert detections and {d["category_id"] for d in detections} <= {1, 2, 3}
    reference, summary = _pycocotools(annotations, detections)
    assert [metrics[name] for name in STAT_NAMES] == list(reference)
    assert summary.rstrip() in printed and "category" in printed and "triangle" in printed
    assert len(metrics["per_category"]) == 3 and metrics["processes"] == 1


def test_person_model_evaluates_on_the_person_category(val_set, tmp_path, capsys):
    images, annotations = val_set
    document = json.loads(annotations.read_text())
    # Rename one category "person": the built-in model is scored on it alone.
    document["categories"][1]["name"] = "person"
    renamed = tmp_path / "instances.json"
    renamed.write_text(json.dumps(document))
    argv = ["evaluate", "--images", str(images), "--annotations", str(renamed), "--workers", "0", "--weights", "person"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "evaluating 1 of 3 categories (those the model knows): person" in captured.err
    table = captured.out.split("\n\n", 1)[1]
    assert "person" in table and "circle" not in table


def test_cli_evaluate_refuses_a_model_without_shared_labels(val_set, tmp_path, capsys):
    images, annotations = val_set
    spec = ModelSpec(num_classes=2, labels=("background", "zebra"), image_size=96)
    weights = tmp_path / "zebra.safetensors"
    save_weights(weights, build_model(spec), spec)
    assert (
        main(["evaluate", "--images", str(images), "--annotations", str(annotations), "--weights", str(weights)]) == 1
    )
    assert "none of the model's labels (zebra) is a category" in capsys.readouterr().err


def test_missing_images_are_left_out_and_counted(val_set, tmp_path):
    images, annotations = val_set
    document = json.loads(annotations.read_text())
    document["images"].append({"id": 999, "file_name": "gone.png", "width": 100, "height": 100})
    edited = tmp_path / "instances.json"
    edited.write_text(json.dumps(document))
    lines = []
    dataset = load_dataset(images, edited, for_training=False, log=lines.append)
    assert 999 not in [r.image_id for r in dataset.records]
    assert any("1 images skipped: file not found (e.g. gone.png)" in line for line in lines)


def test_evaluation_detections_are_the_detector_api_s(val_set):
    from detector.inference import Detector
    from detector.training.coco import read_rgb
    from detector.training.evaluate import evaluate

    images, annotations = val_set
    spec = ModelSpec(num_classes=4, labels=("background", "circle", "square", "triangle"), image_size=96)
    detector = Detector.from_model(build_model(spec), spec)
    dataset = load_dataset(images, annotations, for_training=False, log=lambda _: None)
    result = evaluate(detector, dataset, batch_size=4, progress=False, log=lambda _: None)
    expected = []
    for start in range(0, len(dataset.records), 4):
        records = dataset.records[start : start + 4]
        arrays = [read_rgb(r.path)[0] for r in records]
        for record, output in zip(records, detector.detect_arrays(arrays, score_threshold=0.01), strict=True):
            for det in output.detections:
                x1, y1, _, y2 = det.box
                expected.append((record.image_id, det.class_id, round(x1, 3), round(y2 - y1, 3), round(det.score, 6)))
    ours = [(d["image_id"], d["category_id"], d["bbox"][0], d["bbox"][3], d["score"]) for d in result.detections]
    assert ours == expected and len(ours) > 0
