import dataclasses
import json

import pytest
import torch
from safetensors.torch import save_file

from detector.errors import WeightsError
from detector.labels import default_labels
from detector.model import ssdlite_mobilenet_v2
from detector.spec import ModelSpec
from detector.weights import METADATA_KEY, load_weights, save_weights


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    torch.manual_seed(0)
    model = ssdlite_mobilenet_v2(num_classes=3).eval()
    spec = ModelSpec(num_classes=3, labels=("background", "cat", "dog"), source="unit test", license="MIT")
    path = tmp_path_factory.mktemp("w") / "small.safetensors"
    digest = save_weights(path, model, spec)
    return model, spec, path, digest


def test_round_trip(small):
    model, spec, path, digest = small
    loaded = load_weights(path)
    assert loaded.spec == spec and loaded.digest == digest and len(digest) == 64
    x = torch.randn(1, 3, 300, 300)
    with torch.no_grad():
        for ours, theirs in zip(model(x), loaded.model(x), strict=True):
            assert torch.equal(ours, theirs)


def test_metadata_is_complete(small):
    _, _, path, _ = small
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        meta = json.loads(handle.metadata()[METADATA_KEY])
    for key in (
        "architecture",
        "image_size",
        "num_classes",
        "labels",
        "score_mode",
        "preprocessing",
        "source",
        "license",
    ):
        assert key in meta
    assert meta["preprocessing"]["resize"] == "bilinear_tf1_legacy"


def test_truncated_file(small, tmp_path):
    _, _, path, _ = small
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        load_weights(truncated)


def test_pickle_is_refused(small, tmp_path):
    model, _, _, _ = small
    pickled = tmp_path / "model.pt"
    torch.save(model.state_dict(), pickled)
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        load_weights(pickled)


def test_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_weights(tmp_path / "nope.safetensors")


def test_wrong_architecture_names_first_mismatch(small, tmp_path):
    model, spec, _, _ = small
    # Metadata claims 5 classes, tensors are for 3.
    lying = tmp_path / "lying.safetensors"
    spec5 = dataclasses.replace(spec, num_classes=5, labels=default_labels(5))
    save_file(model.state_dict(), str(lying), metadata={METADATA_KEY: spec5.to_json()})
    with pytest.raises(WeightsError, match=r"head\.classification_head\.module_list\.0\.1\.weight has shape \(9, "):
        load_weights(lying)
    # A tensor missing.
    partial = tmp_path / "partial.safetensors"
    tensors = dict(model.state_dict())
    del tensors["backbone.features.3.conv.1.1.running_var"]
    save_file(tensors, str(partial), metadata={METADATA_KEY: spec.to_json()})
    with pytest.raises(WeightsError, match=r"missing tensor backbone\.features\.3\.conv\.1\.1\.running_var"):
        load_weights(partial)


def test_foreign_safetensors_refused(tmp_path):
    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign))
    with pytest.raises(WeightsError, match="no 'detector' metadata"):
        load_weights(foreign)


def test_bad_metadata(tmp_path, small):
    model, spec, _, _ = small
    for meta, message in [
        ("not json", "not JSON"),
        (json.dumps({"format_version": 99}), "version 99"),
        (spec.to_json().replace('"sigmoid"', '"softmax"'), "unsupported score mode"),
        (spec.to_json().replace('"ssdlite_mobilenet_v2"', '"yolo"'), "unknown architecture"),
    ]:
        path = tmp_path / "bad.safetensors"
        save_file(model.state_dict(), str(path), metadata={METADATA_KEY: meta})
        with pytest.raises(WeightsError, match=message):
            load_weights(path)
