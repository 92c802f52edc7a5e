"""Every bad input named in issue 17 gets one ``detector: error: <file>: <reason>`` line and exit status 1 (or an
``ImageError`` / ``DetectorError`` from the Python API), never a traceback, and the run goes on where it can.

Images: a decompression bomb, garbage EXIF/ICC/XMP blocks over intact pixels. Outputs that cannot be written,
refused before the work. Corrupt lines in a resumed results file, warned about and redone. Weights whose spec has
values of the wrong type, a bare state dict given to ``train --resume``, malformed TF.js and TF graphs, a corrupt
cached ONNX export (rebuilt), an unreadable image in ``evaluate``'s data set. ``tests/test_fuzz_files.py`` mutates
photographs by the hundred for the same promises.
"""

from __future__ import annotations

import json
import random
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from detector.errors import GraphImportError, ImageTooLarge, WeightsError
from detector.images import load_image
from detector.samples import photo
from detector.spec import ModelSpec
from detector.training.checkpoint import load_checkpoint
from detector.weights import METADATA_KEY, read_spec
from tests.fuzz.targets import run_cli, write_coco
from tests.support import encode, png_header_only

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _photos(folder: Path, names: str = "abcde") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    with Image.open(photo("grace_hopper.jpg")) as image:
        small = image.convert("RGB").resize((64, 72))
    paths = []
    for i, name in enumerate(names):
        path = folder / f"{name}.jpg"
        small.rotate(7 * i).save(path, quality=90)
        paths.append(path)
    return paths


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("detector: error:")]


def _detect(tiny: Path, *args: str) -> tuple[int, str, str]:
    return run_cli(["detect", *args, "--weights", str(tiny), "--backend", "torch", "--no-progress"])


# --- images -------------------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_a_decompression_bomb_is_one_line_and_the_other_images_are_detected(tiny, tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(png_header_only(20000, 20000))
    with pytest.raises(ImageTooLarge, match=r"^image too large: 400,000,000 pixels; the limit is 178,956,970$"):
        load_image(big)
    with pytest.raises(ImageTooLarge, match=r"10000×10000 = 100,000,000 pixels; the limit is 1,000,000$"):
        load_image(png_header_only(10000, 10000), max_pixels=1_000_000)
    (good,) = _photos(tmp_path, "g")
    code, out, err = _detect(tiny, str(big), str(good))
    assert code == 1 and "Traceback" not in err
    assert _error_lines(err) == [
        f"detector: error: {big}: image too large: 400,000,000 pixels; the limit is 178,956,970"
    ]
    assert list(json.loads(out)) == [str(good)]


def _jpeg_with(data: bytes, marker: int, payload: bytes) -> bytes:
    return data[:2] + bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload + data[2:]


def _png_with(data: bytes, kind: bytes, payload: bytes) -> bytes:
    chunk = struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    return data[:33] + chunk + data[33:]  # after IHDR


GRACE = photo("grace_hopper.jpg").read_bytes()
COFFEE = photo("coffee.png").read_bytes()


@pytest.mark.parametrize(
    ("original", "broken"),
    [
        pytest.param(GRACE, _jpeg_with(GRACE, 0xE1, b"Exif\x00\x00" + b"\x13\x37" * 40), id="jpeg-exif"),
        pytest.param(GRACE, _jpeg_with(GRACE, 0xE2, b"ICC_PROFILE\x00\x01\x01" + b"\x42" * 100), id="jpeg-icc"),
        pytest.param(GRACE, _jpeg_with(GRACE, 0xE1, b"http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta \xff"), id="jpeg-xmp"),
        pytest.param(COFFEE, _png_with(COFFEE, b"eXIf", b"\x9e\n\xdbi3%\xb2I" * 8), id="png-exif"),
        pytest.param(COFFEE, _png_with(COFFEE, b"iCCP", b"icc\x00\x00" + zlib.compress(b"\x42" * 200)), id="png-icc"),
        pytest.param(COFFEE, _png_with(COFFEE, b"iCCP", b"icc\x00\x00not zlib"), id="png-icc-not-zlib"),
    ],
)
def test_garbage_metadata_over_intact_pixels_decodes_them(original, broken):
    np.testing.assert_array_equal(load_image(broken), load_image(original))


def test_the_orientation_is_applied_as_far_as_a_broken_exif_block_can_be_read():
    # Orientation 6 (turn 90° clockwise), then a pointer to an EXIF sub-directory far past the end of the block.
    entries = struct.pack("<HHII", 0x0112, 3, 1, 6) + struct.pack("<HHII", 0x8769, 4, 1, 0xFFFFFF00)
    exif = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 2) + entries + struct.pack("<I", 0)
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = (255, 0, 0)
    upright = load_image(_jpeg_with(encode(Image.fromarray(stored), "JPEG", quality=95), 0xE1, b"Exif\x00\x00" + exif))
    assert upright.shape == (40, 20, 3) and upright[5, 10, 0] > 200 and upright[35, 10, 0] < 50


# --- outputs ------------------------------------------------------------------------------------------------------


def test_outputs_that_cannot_be_written_are_refused_before_any_work(tmp_path):
    (image,) = _photos(tmp_path / "in", "a")
    folder, a_file = tmp_path / "results", tmp_path / "notes.txt"
    folder.mkdir()
    a_file.write_text("mine")
    # Weights that do not exist: the output is refused first, so no model is loaded and no image detected.
    missing = str(tmp_path / "no-such-weights.safetensors")
    for args, message in [
        (["--out", str(folder)], f"{folder}: is a folder; --out takes a file name"),
        (["--out", f"{a_file}/results.jsonl"], f"{a_file}/results.jsonl: {a_file} is not a folder (--out)"),
        (["--draw", str(a_file)], f"{a_file}: is a file; --draw takes a folder"),
        (["--json", str(folder)], f"{folder}: is a folder; --json takes a file name"),
        (["--json", f"{a_file}/out.json"], f"{a_file}/out.json: {a_file} is not a folder (--json)"),
        # sysfs: no file can be made there, even by root (who passes every permission check).
        *([(["--json", "/sys/out.json"], "/sys/out.json: cannot write in /sys: Permission denied (--json)")]
          if Path("/sys/kernel").is_dir() else []),
    ]:  # fmt: skip
        code, out, err = run_cli(["detect", str(image), *args, "--weights", missing, "--no-progress"])
        assert (code, out, _error_lines(err)) == (1, "", [f"detector: error: {message}"]), args
        assert "Traceback" not in err
    assert a_file.read_text() == "mine" and not any(folder.iterdir())


def test_a_drawing_that_cannot_be_written_fails_its_input_only(tiny, tmp_path):
    images = _photos(tmp_path / "in", "ab")
    drawings = tmp_path / "drawn"
    (drawings / "a.jpg").mkdir(parents=True)  # where a's drawing would go
    code, _, err = _detect(tiny, *map(str, images), "--draw", str(drawings), "--out", str(tmp_path / "r.jsonl"))
    assert code == 1 and "Traceback" not in err
    (line,) = _error_lines(err)
    assert line.startswith(f"detector: error: {images[0]}: cannot write its drawing {drawings / 'a.jpg'}")
    records = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert ["error" in record for record in records] == [True, False] and (drawings / "b.jpg").is_file()


# --- resume -------------------------------------------------------------------------------------------------------


def test_resume_warns_about_corrupt_lines_and_detects_their_inputs_again(tiny, tmp_path):
    images = _photos(tmp_path / "in")
    out = tmp_path / "results.jsonl"
    assert _detect(tiny, *map(str, images), "--out", str(out))[0] == 0
    complete = out.read_text()
    lines = complete.splitlines()
    a, b, c = (json.loads(line) for line in lines[:3])
    corrupt = [
        json.dumps({**a, "file": [a["file"]]}),  # TypeError before
        json.dumps({**b, "frame": "x", "timestamp": 0.0}),  # ValueError before
        json.dumps({k: v for k, v in c.items() if k != "detections"}),  # taken as done before
    ]
    out.write_text("\n".join(corrupt + lines[3:]) + "\n")
    code, _, err = _detect(tiny, *map(str, images), "--out", str(out), "--resume")
    assert code == 0 and "Traceback" not in err
    warnings = [line for line in err.splitlines() if line.startswith("--resume: left out")]
    assert warnings == [
        f"--resume: left out 3 malformed line(s) of {out} (results.jsonl:1: 'file' is not a file name; "
        "results.jsonl:2: 'frame' and 'timestamp' are not a frame number and a time; results.jsonl:3: no "
        "'detections' list); their inputs are detected again"
    ]
    assert out.read_text() == complete


# --- weights, checkpoints, graphs -----------------------------------------------------------------------------------


def _with_spec(source: Path, target: Path, change) -> Path:
    from safetensors import safe_open

    with safe_open(str(source), "pt") as handle:
        spec = json.loads(handle.metadata()[METADATA_KEY])
    change(spec)
    save_file(load_file(str(source)), str(target), metadata={METADATA_KEY: json.dumps(spec)})
    return target


def test_weights_whose_spec_has_a_string_threshold_are_refused_in_one_line(tiny, tmp_path):
    bad = _with_spec(
        tiny, tmp_path / "bad.safetensors", lambda spec: spec["postprocessing"].update(nms_iou_threshold="0.6")
    )
    message = f"{bad}: weights metadata field nms_iou_threshold must be a number, got '0.6'"
    with pytest.raises(WeightsError) as caught:
        read_spec(bad)
    assert str(caught.value) == message
    (image,) = _photos(tmp_path / "in", "a")
    code, out, err = run_cli(["detect", str(image), "--weights", str(bad), "--no-progress"])
    assert (code, out, err.splitlines()) == (1, "", [f"detector: error: {message}"])


BAD_VALUES = [None, "x", "0.5", -1, 0, 1.5, True, [], {}, [1], 1e308, 2**70]


def test_every_spec_field_of_a_wrong_type_or_range_is_a_weights_error():
    base = json.loads(ModelSpec(num_classes=3, labels=("background", "a", "b"), image_size=96).to_json())
    fields = [(key,) for key in base] + [
        (part, key) for part in ("preprocessing", "postprocessing") for key in base[part]
    ]
    accepted = []
    for path in fields:
        for value in BAD_VALUES:
            document = json.loads(json.dumps(base))
            target = document[path[0]] if len(path) == 2 else document
            target[path[-1]] = value
            try:
                spec = ModelSpec.from_json(json.dumps(document))
            except WeightsError:
                continue
            accepted.append((path, value, spec))
    # What is accepted is of its type and within range: a number where one is meant, an allowed size.
    assert {(path, repr(value)) for path, value, _ in accepted} <= {
        (("image_size",), "1"),
        (("width_mult",), "1"),
        (("width_mult",), "1.5"),
        (("postprocessing", "max_detections"), "1"),
        (("postprocessing", "max_detections"), repr(2**70)),
        (("postprocessing", "nms_iou_threshold"), "1"),
        (("preprocessing",), "{}"),  # every field its default
        (("postprocessing",), "{}"),
        *(((part, key), repr(v)) for part in ("preprocessing",) for key in ("pixel_scale", "pixel_offset")
          for v in (-1, 0, 1.5, 1e308, 2**70)),
        *(((key,), repr(v)) for key in ("name", "version", "source", "license") for v in ("x", "0.5")),
    }  # fmt: skip


def test_train_resume_from_a_bare_state_dict_is_refused_in_one_line(tmp_path):
    from detector.training.synthetic import make_split
    from detector.weights import build_model

    plain = tmp_path / "plain.pt"
    torch.save(build_model(ModelSpec(num_classes=2, labels=("background", "x"), image_size=96)).state_dict(), plain)
    message = f"{plain}: a bare state dict (tensors only), not a checkpoint of `detector train`"
    with pytest.raises(WeightsError, match=re.escape(message)):
        load_checkpoint(plain)
    for content, problem in [
        ([1, 2], "it holds a list"),
        ({"epoch": 1, "spec": "{}"}, "no 'config', 'model'"),
        ({"epoch": "1", "spec": "", "config": {}, "model": {}, "optimizer": {}, "scheduler": {}, "scaler": {},
          "rng": [], "history": []}, "checkpoint entry 'epoch' is a str, not a int"),
    ]:  # fmt: skip
        torch.save(content, tmp_path / "other.pt")
        with pytest.raises(WeightsError, match=problem):
            load_checkpoint(tmp_path / "other.pt")
    annotations = make_split(tmp_path / "data", "train", 4, seed=3)
    argv = ["train", "--train-images", str(tmp_path / "data" / "train"), "--train-annotations", str(annotations)]
    code, _, err = run_cli([*argv, "--out", str(tmp_path / "run"), "--resume", str(plain), "--no-progress"])
    assert code == 1 and "Traceback" not in err
    assert _error_lines(err) == [
        f"detector: error: {message}; --resume continues from the checkpoint.pt a training run writes in its --out "
        "folder"
    ]


def test_convert_tfjs_on_a_node_list_of_numbers_is_one_line(tmp_path):
    model = tmp_path / "model.json"
    model.write_text(json.dumps({"format": "graph-model", "modelTopology": {"node": [1]}, "weightsManifest": []}))
    code, _, err = run_cli(["convert-tfjs", str(model), str(tmp_path / "out.safetensors")])
    assert (code, err.splitlines()) == (1, [f"detector: error: {model}: a node without a name or op: 1"])


JSON_VALUES = [None, 1, -1, 0, 1.5, "x", "", [], [1], {}, {"a": 1}, True, "NaN", 2**40]


def _json_paths(node, prefix=()):
    if prefix:
        yield prefix
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        yield from _json_paths(child, (*prefix, key))


def test_tfjs_model_json_with_any_value_of_the_wrong_type_is_refused_by_name(tmp_path):
    """300 small graph models, each with one or two values of model.json replaced (or removed): read, or refused
    with a GraphImportError, and nothing else."""
    from detector.convert.tfjs_graph import read_tfjs_graph
    from tests.test_tfjs_graph import _write_model

    original = json.loads(_write_model(tmp_path).read_text())
    outcomes = {"read": 0, "refused": 0}
    for case in range(300):
        rng = random.Random(case)
        document = json.loads(json.dumps(original))
        for _ in range(rng.choice((1, 1, 2))):
            path = rng.choice(list(_json_paths(document)))
            parent = document
            for key in path[:-1]:
                parent = parent[key]
            if isinstance(parent, dict) and rng.random() < 0.15:
                del parent[path[-1]]
            else:
                parent[path[-1]] = rng.choice(JSON_VALUES)
        (tmp_path / "model.json").write_text(json.dumps(document))
        try:
            read_tfjs_graph(tmp_path / "model.json")
            outcomes["read"] += 1
        except GraphImportError as exc:
            assert str(exc).startswith(f"{tmp_path / 'model.json'}: ") and "\n" not in str(exc)
            outcomes["refused"] += 1
    assert outcomes["refused"] > 200 and outcomes["read"] > 20


def _graph_mutations():
    from tensorboard.compat.proto import types_pb2

    from detector.convert.tf_graph import NMS

    def resize_without_size(graph):
        node = next(n for n in graph.node if n.op == "ResizeBilinear" and n.name.startswith("Preprocessor/"))
        del node.input[1:]
        return "has 1 inputs, not 2 or more"

    def iou_of_strings(graph):
        nms = next(n for n in graph.node if n.op.startswith("NonMaxSuppression") and n.name.startswith(NMS))
        iou = next(n for n in graph.node if n.name == nms.input[3])
        iou.attr["value"].tensor.dtype = types_pb2.DT_STRING
        return f"the graph's constant {nms.input[3]} is"

    def kernel_cut_short(graph):
        name = "FeatureExtractor/MobilenetV2/expanded_conv_3/depthwise/depthwise_weights"
        tensor = next(n for n in graph.node if n.name == name).attr["value"].tensor
        tensor.tensor_content = tensor.tensor_content[: len(tensor.tensor_content) // 2]
        return f"the graph's constant {name} is malformed"

    return [resize_without_size, iou_of_strings, kernel_cut_short]


@pytest.mark.parametrize("mutate", _graph_mutations(), ids=lambda f: f.__name__)
def test_a_malformed_tf_graph_is_refused_in_one_line(published_graph, tmp_path, mutate):
    from tensorboard.compat.proto import graph_pb2

    graph = graph_pb2.GraphDef()
    graph.ParseFromString(published_graph.read_bytes())
    expected = mutate(graph)
    broken = tmp_path / "broken.pb"
    broken.write_bytes(graph.SerializeToString())
    code, _, err = run_cli(["convert-tf", str(broken), str(tmp_path / "out.safetensors")])
    assert code == 1 and len(err.splitlines()) == 1 and expected in err and "Traceback" not in err


def test_a_corrupt_cached_onnx_export_is_removed_and_exported_again(tiny, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from detector.backends import onnx
    from detector.inference import Detector

    monkeypatch.setenv("DETECTOR_CACHE_DIR", str(tmp_path / "cache"))
    image = np.asarray(Image.open(photo("grace_hopper.jpg")).convert("RGB"))
    reference = Detector.from_weights(tiny, backend="onnxruntime").detect_arrays([image])
    export = onnx.find_onnx(onnx.weights_key(Detector.from_weights(tiny, backend="torch").digest))
    assert export is not None
    exported, calls = export.read_bytes(), []
    monkeypatch.setattr(onnx, "onnx_bytes", lambda model: calls.append(1) or exported)  # the same export, at once

    export.write_bytes(exported[: len(exported) // 2])  # cut short: its digest no longer matches
    assert Detector.from_weights(tiny, backend="onnxruntime").detect_arrays([image]) == reference
    assert len(calls) == 1 and export.read_bytes() == exported
    # An export from before digests were noted, turned to garbage: the engine refuses it, and it is exported again.
    export.with_name(export.name + ".sha256").unlink()
    export.write_bytes(b"garbage")
    assert Detector.from_weights(tiny, backend="onnxruntime").detect_arrays([image]) == reference
    assert len(calls) == 2 and export.read_bytes() == exported


def test_a_corrupt_export_where_nothing_can_export_it_again_is_kept_and_named(tmp_path, monkeypatch):
    import importlib.util

    from detector.backends import onnx
    from detector.errors import ExportError

    export = tmp_path / "ssdlite-0123456789abcdef.onnx"
    export.write_bytes(b"garbage")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    with pytest.raises(ExportError, match=r"garbage\); exporting it again needs torch"):
        onnx.discard_export(export, "garbage")
    assert export.read_bytes() == b"garbage"


def test_evaluate_stops_at_an_unreadable_image_in_one_line_without_traceback(tiny, tmp_path):
    images = _photos(tmp_path / "val", "abcd")
    annotations = write_coco(tmp_path / "val", images, [(64, 72)] * 4, tmp_path / "instances.json")
    broken = images[1]
    broken.write_bytes(broken.read_bytes()[:300])
    argv = ["evaluate", "--images", str(tmp_path / "val"), "--annotations", str(annotations), "--weights", str(tiny)]
    code, _, err = run_cli([*argv, "--workers", "2", "--no-progress"])  # the error crosses a DataLoader worker
    assert code == 1 and "Traceback" not in err
    assert _error_lines(err) == [f"detector: error: {broken}: cannot read image: Truncated File Read"]
