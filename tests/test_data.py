"""Bad data: clear messages for what cannot be used, logged counts for what is skipped or repaired."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from detector.cli import main
from detector.errors import DatasetError
from detector.training.coco import load_dataset, read_coco_file
from detector.training.pipeline import (
    TrainingSet,
    Unreadable,
    collate_training,
    raise_unreadable,
    ssd_augmentation,
    to_network_input,
)
from detector.training.synthetic import make_split


@pytest.fixture()
def shapes(tmp_path):
    """Six synthetic training scenes; returns (image folder, annotation document, annotation path)."""
    annotations = make_split(tmp_path, "train", 6, seed=2)
    return tmp_path / "train", json.loads(annotations.read_text()), annotations


def _write(path, document):
    path.write_text(json.dumps(document))
    return path


def test_every_problem_is_counted_and_logged(shapes, tmp_path):
    images, document, _ = shapes
    annotations = document["annotations"]
    width, height = document["images"][0]["width"], document["images"][0]["height"]
    extra = [
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 0, 20]},  # degenerate: zero width
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 0.5]},  # degenerate: under a pixel
        {"image_id": 1, "category_id": 1, "bbox": [width + 5, 5, 20, 20]},  # entirely outside
        {"image_id": 1, "category_id": 1, "bbox": [width - 10, height - 10, 30, 30]},  # reaches outside: clipped
        {"image_id": 1, "category_id": 2, "bbox": [5, 5, 30, 30], "iscrowd": 1},  # crowd
        {"image_id": 1, "category_id": 42, "bbox": [5, 5, 30, 30]},  # unknown category
        {"image_id": 77, "category_id": 1, "bbox": [5, 5, 30, 30]},  # unknown image
    ]
    for i, a in enumerate(extra):
        a.setdefault("iscrowd", 0)
        a.update(id=1000 + i, area=a["bbox"][2] * a["bbox"][3])
    del extra[0]["area"]  # pycocotools needs it: filled in, and said so
    document["annotations"] = annotations + extra
    document["images"].append({"id": 50, "file_name": "missing.png", "width": 64, "height": 64})
    lines: list[str] = []
    dataset = load_dataset(images, _write(tmp_path / "bad.json", document), log=lines.append)
    counts = dataset.report.counts
    assert counts["degenerate_box"] == 2 and counts["outside_image"] == 1 and counts["clipped_box"] == 1
    assert counts["crowd"] == 1 and counts["unknown_category"] == 1 and counts["unknown_image"] == 1
    assert counts["missing_image"] == 1 and counts["filled_area"] == 1
    assert len(dataset.records) == 6
    assert sum(len(r.boxes) for r in dataset.records) == len(annotations) + 1  # only the clipped one was added
    log = "\n".join(lines)
    for text in (
        "1 images skipped: file not found (e.g. missing.png)",
        "2 annotations skipped: degenerate box",
        "1 annotations skipped: box entirely outside its image",
        "1 boxes clipped to their image",
        "1 crowd annotations ignored as training targets",
        "1 annotations skipped: category id not in 'categories'",
        "1 annotations skipped: image id not in 'images'",
        "1 annotations without 'area'",
    ):
        assert text in log, log
    clipped = dataset.records[0].boxes
    assert clipped[:, 2].max() <= width and clipped[:, 3].max() <= height


def test_evaluation_counts_ground_truth_problems_but_keeps_them(shapes, tmp_path):
    images, document, _ = shapes
    document["annotations"].append(
        {"id": 900, "image_id": 1, "category_id": 1, "bbox": [5, 5, 30, 30], "iscrowd": 1, "area": 900}
    )
    lines: list[str] = []
    dataset = load_dataset(images, _write(tmp_path / "a.json", document), for_training=False, log=lines.append)
    assert dataset.report.counts["eval_crowd"] == 1
    assert any("COCOeval ignores detections matched to them" in line for line in lines)
    assert any(a["id"] == 900 for a in dataset.document["annotations"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json at all", "is not JSON"),
        ("[]", "a COCO results file?"),
        ('{"images": [], "annotations": []}', "no 'categories' list"),
        ('{"images": [{"id": 1}], "annotations": [], "categories": []}', "every image needs"),
        (
            '{"images": [], "annotations": [{"image_id": 1, "category_id": 1, "bbox": [1, 2]}],'
            ' "categories": [{"id": 1, "name": "a"}]}',
            "not [x, y, width, height]",
        ),
        ('{"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "a"}]}', "twice"),
    ],
)
def test_non_coco_files_are_refused_clearly(tmp_path, content, message):
    path = tmp_path / "file.json"
    path.write_text(content)
    with pytest.raises(DatasetError, match=message.replace("?", r"\?").replace("[", r"\[")):
        read_coco_file(path)


def test_cli_reports_a_non_coco_file_in_one_line(shapes, tmp_path, capsys):
    images, _, _ = shapes
    bad = tmp_path / "list.json"
    bad.write_text("[1, 2, 3]")
    assert main(["evaluate", "--images", str(images), "--annotations", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a COCO annotation file" in err and "Traceback" not in err


def test_cli_reports_missing_annotation_file(shapes, tmp_path, capsys):
    images, _, _ = shapes
    missing = str(tmp_path / "no.json")
    code = main(["train", "--train-images", str(images), "--train-annotations", missing, "--out", str(tmp_path)])
    assert code == 1 and "annotation file not found" in capsys.readouterr().err


def test_all_images_missing_is_an_error(shapes, tmp_path):
    _, _, annotations = shapes
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="none of the 6 images"):
        load_dataset(tmp_path / "empty", annotations, log=lambda _: None)


def test_image_size_disagreeing_with_annotations_is_an_error(shapes, tmp_path):
    images, document, _ = shapes
    document["images"][0]["width"] += 7
    dataset = load_dataset(images, _write(tmp_path / "a.json", document), log=lambda _: None)
    training = TrainingSet(dataset, dataset.labels(), 96, "none")
    # Returned, not raised (a DataLoader worker's exception would carry its traceback); the loop raises it.
    failed = training[0]
    assert isinstance(failed, Unreadable) and "but its annotations say" in failed.reason
    with pytest.raises(DatasetError, match="but its annotations say"):
        list(raise_unreadable([collate_training([training[1], failed])]))


def test_grayscale_images_are_converted_and_counted(shapes, tmp_path):
    images, document, annotations = shapes
    path = images / document["images"][0]["file_name"]
    Image.open(path).convert("L").save(path)
    dataset = load_dataset(images, annotations, log=lambda _: None)
    image, _, _, notes = TrainingSet(dataset, dataset.labels(), 96, "flip")[0]
    assert notes == ["converted_rgb"] and image.shape == (3, 96, 96)
    channels = image.reshape(3, -1)
    assert torch.equal(channels[0], channels[1])  # still gray, as three channels


def test_training_samples_are_what_the_network_expects(shapes):
    images, _, annotations = shapes
    dataset = load_dataset(images, annotations, log=lambda _: None)
    training = TrainingSet(dataset, dataset.labels(), 96, "ssd")
    torch.manual_seed(0)
    for i in range(len(training)):
        image, boxes, labels, _ = training[i]
        assert image.shape == (3, 96, 96) and image.min() >= -1 and image.max() <= 1
        assert boxes.shape == (len(labels), 4) and (boxes >= 0).all() and (boxes <= 1).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all() and set(labels.tolist()) <= {1, 2, 3}


def test_network_input_matches_inference_preprocessing():
    from detector.preprocess import preprocess

    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, size=(70, 90, 3), dtype=np.uint8)
    pixels, boxes = to_network_input(torch.from_numpy(array).permute(2, 0, 1), torch.tensor([[9.0, 7, 45, 35]]), 64)
    assert np.array_equal(pixels.numpy(), preprocess([array], 64, exact=True)[0])
    assert torch.allclose(boxes, torch.tensor([[0.1, 0.1, 0.5, 0.5]]))


def test_augmentation_without_objects_does_not_hang():
    from torchvision import tv_tensors

    _, without_objects = ssd_augmentation("ssd")
    image = tv_tensors.Image(torch.zeros(3, 40, 50, dtype=torch.uint8))
    boxes = tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=(40, 50))
    _, target = without_objects(image, {"boxes": boxes, "labels": torch.zeros(0, dtype=torch.int64)})
    assert target["boxes"].shape == (0, 4)
