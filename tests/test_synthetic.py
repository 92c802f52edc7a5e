"""The synthetic shapes data set: deterministic, COCO-valid, boxes that enclose what was drawn."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from detector.cli import main
from detector.training.coco import read_coco_file
from detector.training.synthetic import SHAPES, SceneSettings, make_dataset, make_scene


def _digests(root) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_arguments_give_identical_files(tmp_path):
    make_dataset(tmp_path / "a", num_train=6, num_val=3, seed=5)
    make_dataset(tmp_path / "b", num_train=6, num_val=3, seed=5)
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    make_dataset(tmp_path / "c", num_train=6, num_val=3, seed=6)
    assert _digests(tmp_path / "a") != _digests(tmp_path / "c")


def test_an_image_depends_only_on_seed_split_and_index():
    first, objects = make_scene(0, "train", 7)
    again, objects_again = make_scene(0, "train", 7)
    assert np.array_equal(np.asarray(first), np.asarray(again)) and objects == objects_again
    val, _ = make_scene(0, "val", 7)
    assert not np.array_equal(np.asarray(first.resize((8, 8))), np.asarray(val.resize((8, 8))))


def test_annotations_are_valid_coco_inside_their_images(tmp_path):
    paths = make_dataset(tmp_path, num_train=20, num_val=5, classes=SHAPES, settings=SceneSettings(gray_fraction=0.3))
    document = read_coco_file(paths["train"])
    assert [c["name"] for c in document["categories"]] == list(SHAPES)
    sizes = {image["id"]: (image["width"], image["height"]) for image in document["images"]}
    for image in document["images"]:
        with Image.open(tmp_path / "train" / image["file_name"]) as pixels:
            assert pixels.size == (image["width"], image["height"])
    assert len(document["annotations"]) >= 20
    for annotation in document["annotations"]:
        x, y, w, h = annotation["bbox"]
        width, height = sizes[annotation["image_id"]]
        assert x >= 0 and y >= 0 and x + w <= width and y + h <= height and w >= 4 and h >= 4
        assert 0 < annotation["area"] <= w * h and annotation["iscrowd"] == 0
    assert not document["_report"].lines()  # nothing needed filling in


def test_box_encloses_the_drawn_shape_exactly():
    settings = SceneSettings(max_objects=1)
    for index in range(10):
        image, (obj,) = make_scene(3, "train", index, ("square",), settings)
        x, y, w, h = (int(v) for v in obj["bbox"])
        pixels = np.asarray(image).astype(int)
        # A square is a flat-coloured rectangle: every pixel in the box has its colour, the ring outside does not all.
        inside = pixels[y : y + h, x : x + w].reshape(-1, 3)
        assert (inside == inside[0]).all()


def test_cli_make_dataset(tmp_path, capsys):
    assert main(["make-dataset", str(tmp_path), "--train", "3", "--val", "2", "--classes", "ring,cross"]) == 0
    document = json.loads((tmp_path / "annotations" / "instances_val.json").read_text())
    assert [c["name"] for c in document["categories"]] == ["ring", "cross"] and len(document["images"]) == 2
    assert "train:" in capsys.readouterr().out


def test_cli_make_dataset_refuses_unknown_shapes(tmp_path, capsys):
    assert main(["make-dataset", str(tmp_path), "--classes", "circle,hexagon"]) == 1
    assert "hexagon" in capsys.readouterr().err


@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_draws(shape):
    _, objects = make_scene(1, "val", 0, (shape,), SceneSettings(max_objects=3))
    assert objects and all(o["category"] == shape for o in objects)
