"""LiteRT (XNNPACK) on our own TFLite export: eager PyTorch's raw outputs within 1e-3 on both built-in models, at
every batch size, modules the exporter cannot express refused by name, and the cached file served without torch."""

import subprocess
import sys

import numpy as np
import pytest
from torch import nn

from detector.backends import tflite_export
from detector.backends.factory import build_backend, build_from_export
from detector.backends.litert_backend import LiteRtBackend
from detector.backends.onnx import RAW_TOLERANCE, check_batch, max_abs_diff, weights_key
from detector.errors import ExportError
from detector.images import load_image
from detector.samples import photo

pytest.importorskip("ai_edge_litert")

PHOTOS = ("astronaut.png", "camera.png", "grace_hopper.jpg", "coffee.png")


@pytest.fixture
def cache(person_detector, tmp_path, monkeypatch):
    """A fresh cache directory for the exports, once the person model is loaded from the real one."""
    monkeypatch.setenv("DETECTOR_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize("fixture", ["person_detector", "coco_detector"])
def test_raw_outputs_match_eager_within_1e3_at_any_batch_size(request, fixture, tmp_path, monkeypatch):
    detector = request.getfixturevalue(fixture)
    monkeypatch.setenv("DETECTOR_CACHE_DIR", str(tmp_path / "cache"))  # once the model is loaded from the real one
    backend = build_backend("litert", detector.model, threads=2)
    assert isinstance(backend, LiteRtBackend) and backend.describe()["engine"] == "litert"
    photos = detector.preprocess([load_image(photo(name)) for name in PHOTOS])
    for batch in (check_batch(300, 1), photos, check_batch(300, 8), check_batch(300, 1)):
        codes, logits = backend(batch)
        assert codes.shape == (len(batch), 1917, 4) and logits.shape == (len(batch), 1917, detector.spec.num_classes)
        assert max_abs_diff(detector.model_outputs(batch), (codes, logits)) <= RAW_TOLERANCE
    # Image by image in one interpreter: each image's outputs are its own, whatever else is in the batch.
    alone = backend(photos[2:3])
    assert all(np.array_equal(a, b[2:3]) for a, b in zip(alone, backend(photos), strict=True))


def _with(network, place):
    import copy

    network = copy.deepcopy(network)
    place(network)
    return network


@pytest.mark.parametrize(
    ("place", "message"),
    [
        (lambda n: n.backbone.features[1].conv.append(nn.SiLU()), "cannot express SiLU"),
        (lambda n: n.backbone.features[3].conv.insert(0, nn.ReLU6()), "fuses ReLU6 into the convolution right before"),
        (
            lambda n: n.backbone.extras[0][1].__setitem__(0, nn.Conv2d(256, 256, 3, 2, padding=1, groups=256)),
            "TFLite pads 'SAME' or 'VALID'",
        ),
        (
            lambda n: n.backbone.extras[0].__setitem__(0, nn.Conv2d(1280, 256, 1, groups=2)),
            "cannot express grouped convolutions",
        ),
    ],
    ids=["activation", "unfused-relu6", "symmetric-strided-padding", "grouped"],
)
def test_a_module_tflite_cannot_express_is_refused_by_name(person_detector, place, message):
    with pytest.raises(ExportError, match=message):
        tflite_export.tflite_bytes(_with(person_detector.model, place))


def test_the_cached_export_serves_without_torch(person_detector, cache, tmp_path):
    key = weights_key(person_detector.digest)
    assert build_from_export("litert", key) is None  # nothing exported yet
    path = tflite_export.cached_tflite(person_detector.model, key)
    assert path.is_file() and tflite_export.find_tflite(key) == path
    shim = tmp_path / "without-torch"
    shim.mkdir()
    for name in ("torch", "torchvision"):
        (shim / f"{name}.py").write_text(f"raise ImportError('no {name} here')\n")
    script = (
        "import sys; from detector.backends.factory import build_from_export; "
        "from detector.backends.onnx import check_batch; import numpy as np; "
        f"backend = build_from_export('litert', {key!r}, threads=1); codes, logits = backend(check_batch(300, 2)); "
        "assert 'torch' not in sys.modules or sys.modules['torch'] is None; "
        "np.save(sys.argv[1], np.concatenate([codes, logits], axis=-1))"
    )
    out = tmp_path / "outputs.npy"
    env = {"PYTHONPATH": str(shim), "DETECTOR_CACHE_DIR": str(cache), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", script, str(out)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    got = np.load(out)
    reference = person_detector.model_outputs(check_batch(300, 2))
    assert max_abs_diff(reference, (got[..., :4], got[..., 4:])) <= RAW_TOLERANCE


def test_a_corrupt_cached_export_is_removed_and_written_again(person_detector, cache, monkeypatch):
    key = weights_key(person_detector.digest)
    path = tflite_export.cached_tflite(person_detector.model, key)
    written, calls = path.read_bytes(), []
    original = tflite_export.tflite_bytes
    monkeypatch.setattr(tflite_export, "tflite_bytes", lambda model: calls.append(1) or original(model))

    path.write_bytes(written[: len(written) // 2])  # cut short: its digest no longer matches
    assert build_from_export("litert", key) is None and not path.exists()  # removed: to be written again
    assert build_backend("litert", person_detector.model, key=key).path == path
    assert len(calls) == 1 and path.read_bytes() == written
    # An export without its digest, turned to garbage: LiteRT refuses it, and it is written again.
    path.with_name(path.name + ".sha256").unlink()
    path.write_bytes(b"garbage")
    assert build_from_export("litert", key) is None and not path.exists()
    path.write_bytes(b"garbage")
    backend = build_backend("litert", person_detector.model, key=key)
    assert len(calls) == 2 and path.read_bytes() == written
    assert max_abs_diff(person_detector.model_outputs(check_batch(300, 1)), backend(check_batch(300, 1))) <= 1e-3


def test_an_export_that_differs_from_eager_is_removed_and_refused(person_detector, cache, monkeypatch):
    real = tflite_export.tflite_bytes

    def shifted(model):  # an exporter bug: one bias off by 0.01
        return real(_with(model, lambda n: n.head.regression_head.module_list[0][1].bias.data.add_(0.01)))

    monkeypatch.setattr(tflite_export, "tflite_bytes", shifted)
    with pytest.raises(ExportError, match="differs from eager PyTorch"):
        tflite_export.cached_tflite(person_detector.model, weights_key(person_detector.digest))
    assert not list(cache.glob("exports/*.tflite*"))
