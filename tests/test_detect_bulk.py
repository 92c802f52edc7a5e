"""``detector detect`` over folders, globs, standard input and videos: streamed records, resume, torchrun.

The inputs are generated: small JPEG and PNG files cut from the sample photographs, a few seconds of video made
with PyAV, and broken files mixed in. In-process runs call ``main()``; the killed-and-resumed run and the torchrun
run are real subprocesses (marked slow).
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import detector
from detector.cli import main
from detector.cli.detect_inputs import Source, deal, expand_arguments, plan_units
from detector.cli.detect_outputs import match_image_id, read_records, sort_key, write_sorted
from detector.samples import photo, synthetic_image
from detector.video import VideoReader, VideoWriter

PHOTOS = ("grace_hopper.jpg", "bus.jpg", "zidane.jpg", "coffee.png", "chelsea.png", "astronaut.png")


def _photo(name: str, size: tuple[int, int] = (120, 90)) -> Image.Image:
    return Image.open(photo(name)).convert("RGB").resize(size)


def _make_inputs(root: Path, count: int = 6) -> dict[str, Path]:
    """A folder of ``count`` small photos (JPEG and PNG, one in a subfolder) and three broken files."""
    (root / "sub").mkdir(parents=True)
    files = {}
    for i in range(count):
        name = PHOTOS[i % len(PHOTOS)]
        path = root / ("sub" if i == 2 else "") / f"img{i:02d}{'.png' if i % 3 == 1 else '.jpg'}"
        _photo(name).save(path, quality=90)
        files[path.name] = path
    (root / "notes.jpg").write_text("not an image")
    (root / "cut.jpg").write_bytes((root / "img00.jpg").read_bytes()[:300])
    (root / "empty.png").write_bytes(b"")
    (root / "readme.txt").write_text("ignored: not an image suffix")
    return files


def _make_video(path: Path, frames: int = 20, rate: int = 10) -> None:
    """``frames`` frames at ``rate`` fps: a person photo sliding over a synthetic background (160×120)."""
    person = np.asarray(_photo("grace_hopper.jpg", (60, 70)))
    with VideoWriter(path, Fraction(rate)) as writer:
        for i in range(frames):
            frame = synthetic_image(120, 160, seed=i % 3).copy()
            x = 5 + 4 * i % 90
            frame[30:100, x : x + 60] = person
            writer.write(frame)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def run(capsys):
    def invoke(*args: str) -> tuple[int, str, str]:
        try:
            code = main(["detect", *args])
        except SystemExit as exc:
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return invoke


# --- inputs and plan ------------------------------------------------------------------------------------------------


def test_arguments_expand_to_sorted_unique_files(tmp_path, monkeypatch):
    files = _make_inputs(tmp_path / "in")
    _make_video(tmp_path / "in" / "sub" / "clip.mp4", frames=3)
    (tmp_path / "empty").mkdir()
    stdin = io.StringIO(f"{files['img03.jpg']}\n\n{tmp_path / 'listed-missing.jpg'}\n")
    arguments = [str(files["img05.jpg"]), str(tmp_path / "in"), str(tmp_path / "in" / "*.png"), "-"]
    arguments += [str(tmp_path / "empty"), str(tmp_path / "nothing-*.jpg"), str(tmp_path / "missing.jpg")]
    sources, problems = expand_arguments(arguments, stdin)
    names = [Path(s.path).relative_to(tmp_path).as_posix() for s in sources]
    # The explicit file first, then the folder walked in sorted order (subfolders too, .txt left out), each once.
    assert names == [
        "in/img05.jpg",
        "in/cut.jpg",
        "in/empty.png",
        "in/img00.jpg",
        "in/img01.png",
        "in/img03.jpg",
        "in/img04.png",
        "in/notes.jpg",
        "in/sub/clip.mp4",
        "in/sub/img02.jpg",
        "listed-missing.jpg",
        "missing.jpg",
    ]
    assert [s.position for s in sources] == list(range(len(sources)))
    assert [s.kind for s in sources if s.kind == "video"] == ["video"] and sources[8].kind == "video"
    assert problems == [
        f"{tmp_path / 'empty'}: no image or video files in this folder",
        f"{tmp_path / 'nothing-*.jpg'}: no files match",
    ]


def test_units_break_at_videos_and_are_dealt_in_turn():
    kinds = ["image"] * 5 + ["video"] + ["image"] * 3 + ["video", "video"]
    sources = [Source(i, f"f{i}", kind) for i, kind in enumerate(kinds)]  # type: ignore[arg-type]
    units = plan_units(sources, batch_size=2)
    assert [[s.position for s in u.sources] for u in units] == [[0, 1], [2, 3], [4], [5], [6, 7], [8], [9], [10]]
    assert [[s.position for s in u.sources] for u in deal(units, 1, 3)] == [[2, 3], [6, 7], [10]]
    shares = [unit for rank in range(3) for unit in deal(units, rank, 3)]
    assert shares != units and sorted(map(id, shares)) == sorted(map(id, units))  # dealt in turn, each once


def test_records_skip_a_cut_off_line_and_sort_in_input_order(tmp_path):
    path = tmp_path / "r.jsonl"
    lines = [
        {"file": "b.jpg", "width": 1, "height": 1, "detections": []},
        {"file": "v.mp4", "error": "broke off"},
        {"file": "v.mp4", "frame": 10, "timestamp": 1.0, "width": 1, "height": 1, "detections": []},
        {"file": "v.mp4", "frame": 2, "timestamp": 0.2, "width": 1, "height": 1, "detections": []},
        {"file": "a.jpg", "width": 1, "height": 1, "detections": []},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"file": "c.jpg", "wid')
    found = read_records([path, tmp_path / "absent.jsonl"])
    assert found.skipped == 1 and len(found.lines) == 5
    positions = {"a.jpg": 0, "v.mp4": 1, "b.jpg": 2}
    write_sorted(path, found.lines, positions)
    order = [(r["file"], r.get("frame"), "error" in r) for r in _lines(path)]
    expected = [("a.jpg", None, False), ("v.mp4", 2, False), ("v.mp4", 10, False), ("v.mp4", None, True)]
    assert order == [*expected, ("b.jpg", None, False)]  # frames in order, a video's error after its frames
    assert sort_key(("unknown.jpg", None), positions) > sort_key(("b.jpg", None), positions)


def test_coco_file_names_match_the_longest_path_tail():
    ids = {"000139.jpg": 139, "train/000139.jpg": 7}
    assert match_image_id("/data/coco/val/000139.jpg", ids) == 139
    assert match_image_id("/data/train/000139.jpg", ids) == 7
    assert match_image_id("000140.jpg", ids) is None


def test_video_reader_samples_at_the_asked_rate(tmp_path):
    _make_video(tmp_path / "v.mp4", frames=20, rate=10)
    with VideoReader(tmp_path / "v.mp4") as reader:
        assert (reader.info.width, reader.info.height, reader.info.rate) == (160, 120, Fraction(10))
        frames = list(reader.frames())
    assert [f.index for f in frames] == list(range(20)) and frames[3].timestamp == pytest.approx(0.3)
    assert frames[0].pixels.shape == (120, 160, 3) and frames[0].pixels.dtype == np.uint8
    with VideoReader(tmp_path / "v.mp4", fps=4) as reader:
        kept = [(f.index, f.timestamp) for f in reader.frames()]
    assert [index for index, _ in kept] == [0, 3, 5, 8, 10, 13, 15, 18]  # the first at or after each 0.25 s
    assert reader.info.frames_at(4) == 8


def test_a_rotated_video_comes_upright(tmp_path):
    """A phone's portrait clip: stored 160×120 landscape with a display matrix turning it 90° clockwise (-90 in
    FFmpeg's counter-clockwise degrees), as players show it; frames come 120 wide and 160 high, turned that way."""
    import av

    stored = synthetic_image(120, 160, seed=0).copy()
    stored[:, :16] = (255, 0, 0)  # a red left edge: after a clockwise quarter turn it is the top edge
    path = tmp_path / "portrait.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        stream.set_display_rotation(-90)
        for _ in range(2):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(stored, format="rgb24")))
        container.mux(stream.encode(None))
    with VideoReader(path) as reader:
        assert (reader.info.width, reader.info.height) == (160, 120)  # as stored
        pixels = next(iter(reader.frames())).pixels
    assert pixels.shape == (160, 120, 3) and pixels.flags.c_contiguous
    assert (pixels[:12, :, 0] > 200).all() and (pixels[:12, :, 1:] < 60).all()  # the red edge on top

    def off(expected: np.ndarray) -> float:  # mean difference in grey levels (the codec is lossy)
        return float(np.abs(pixels.astype(float) - expected.astype(float)).mean())

    assert off(np.rot90(stored, -1)) < 15 and off(np.rot90(stored, 1)) > 50  # measured: 6 and 80


def test_a_writer_without_frames_leaves_no_file(tmp_path):
    with VideoWriter(tmp_path / "empty.mp4", Fraction(10)):
        pass
    assert not (tmp_path / "empty.mp4").exists()


# --- the command ----------------------------------------------------------------------------------------------------


def test_folder_streams_one_line_per_input_and_reports_bad_files(run, tmp_path):
    _make_inputs(tmp_path / "in")
    out = tmp_path / "results.jsonl"
    code, stdout, stderr = run(str(tmp_path / "in"), "--out", str(out), "--batch-size", "4", "--no-progress")
    assert code == 1 and stdout == ""
    records = _lines(out)
    names = [Path(r["file"]).name for r in records]
    assert names == [*sorted(names[:-1]), "img02.jpg"]  # input order: the folder sorted, the subfolder last
    assert len(records) == 9 and "readme.txt" not in names
    failed = {Path(r["file"]).name: r["error"] for r in records if "error" in r}
    assert set(failed) == {"notes.jpg", "cut.jpg", "empty.png"}
    assert "truncated" in failed["cut.jpg"].lower() and failed["notes.jpg"].startswith("not an image")
    errors = [line for line in stderr.splitlines() if line.startswith("detector: error: ")]
    assert len(errors) == 3 and "Traceback" not in stderr
    assert "detected 6 image(s)" in stderr.splitlines()[-1] and "3 failed" in stderr
    hopper = next(r for r in records if r["file"].endswith("img00.jpg"))
    assert hopper["width"] == 120 and any(d["label"] == "person" for d in hopper["detections"])
    # The single JSON object of a run without --out holds the same detections.
    code, stdout, _ = run(str(tmp_path / "in"), "--batch-size", "4")
    assert code == 1
    document = json.loads(stdout)
    assert document == {r["file"]: {k: v for k, v in r.items() if k != "file"} for r in records if "error" not in r}


def test_resume_with_other_settings_is_refused_and_leaves_the_records(run, tmp_path):
    """--resume over records of another threshold (or model, limit, frame rate) would mix two runs in one file."""
    image = str(photo("grace_hopper.jpg"))
    out = tmp_path / "results.jsonl"
    assert run(image, "--out", str(out), "--score-threshold", "0.5", "--no-progress")[0] == 0
    before = out.read_text()
    settings = json.loads((tmp_path / "results.jsonl.settings.json").read_text())
    assert settings["score_threshold"] == 0.5 and settings["max_detections"] is None and settings["fps"] is None
    assert len(settings["weights_sha256"]) == 64

    code, _, stderr = run(image, "--out", str(out), "--resume", "--score-threshold", "0.3", "--no-progress")
    assert code == 1 and "Traceback" not in stderr
    assert "other settings (score_threshold: 0.5 → 0.3)" in stderr and "leave --resume out" in stderr
    assert out.read_text() == before
    code, _, stderr = run(image, "--out", str(out), "--resume", "--score-threshold", "0.5", "--no-progress")
    assert code == 0 and "1 record(s) kept from before" in stderr and out.read_text() == before
    # Records without a settings note (an earlier version's) resume as before, with a word about it.
    (tmp_path / "results.jsonl.settings.json").unlink()
    code, _, stderr = run(image, "--out", str(out), "--resume", "--score-threshold", "0.3", "--no-progress")
    assert code == 0 and "no settings noted" in stderr and out.read_text() == before


def test_globs_and_standard_input(run, tmp_path, monkeypatch):
    files = _make_inputs(tmp_path / "in")
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{files['img03.jpg']}\n{files['img00.jpg']}\n"))
    out = tmp_path / "r.jsonl"
    code, _, stderr = run(str(tmp_path / "in" / "**" / "img0[12]*"), "-", "--out", str(out), "--no-progress")
    assert code == 0, stderr
    assert [Path(r["file"]).name for r in _lines(out)] == ["img01.png", "img02.jpg", "img03.jpg", "img00.jpg"]
    code, _, stderr = run(str(tmp_path / "in" / "*.gif"), "--out", str(out))
    assert code == 1 and "no files match" in stderr and out.read_text() == ""


def test_video_frames_are_records_and_the_drawing_is_a_video(run, tmp_path):
    video = tmp_path / "clip.mp4"
    _make_video(video, frames=20, rate=10)
    image = tmp_path / "still.jpg"
    _photo("bus.jpg").save(image)
    out, drawn = tmp_path / "r.jsonl", tmp_path / "drawn"
    code, _, stderr = run(str(video), str(image), "--fps", "5", "--out", str(out), "--draw", str(drawn))
    assert code == 0, stderr
    records = _lines(out)
    frames = [r for r in records if r["file"] == str(video)]
    assert [r["frame"] for r in frames] == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]
    assert [r["timestamp"] for r in frames][:3] == pytest.approx([0.0, 0.2, 0.4])
    assert all((r["width"], r["height"]) == (160, 120) for r in frames)
    assert sum(any(d["label"] == "person" for d in r["detections"]) for r in frames) >= 5
    assert records[-1]["file"] == str(image) and "frame" not in records[-1]
    assert "10 video frame(s)" in stderr
    assert sorted(p.name for p in drawn.iterdir()) == ["clip.mp4", "still.jpg"]
    with VideoReader(drawn / "clip.mp4") as reader:
        assert reader.info.rate == 5 and sum(1 for _ in reader.frames()) == 10


def test_a_broken_video_is_one_error_and_the_run_goes_on(run, tmp_path):
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 200)
    _photo("bus.jpg").save(tmp_path / "ok.jpg")
    out = tmp_path / "r.jsonl"
    code, _, stderr = run(str(tmp_path / "bad.mp4"), str(tmp_path / "ok.jpg"), "--out", str(out))
    assert code == 1 and stderr.count("detector: error: ") == 1 and "bad.mp4" in stderr
    records = _lines(out)
    assert "error" in records[0] and records[1]["file"].endswith("ok.jpg")


def test_coco_results_for_the_images_of_an_annotation_file(run, tmp_path):
    files = _make_inputs(tmp_path / "in")
    annotations = tmp_path / "instances.json"
    images = [{"id": 100 + i, "file_name": name, "width": 120, "height": 90} for i, name in enumerate(sorted(files))]
    images[2]["file_name"] = "sub/img02.jpg"
    categories = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 6, "name": "bus"}]
    annotations.write_text(json.dumps({"images": images, "annotations": [], "categories": categories}))
    out = tmp_path / "detections.json"
    _photo("bus.jpg").save(tmp_path / "stray.jpg")  # an input that is not an image of the annotation file
    arguments = [str(tmp_path / "in"), str(tmp_path / "stray.jpg"), "--format", "coco", "--annotations"]
    code, _, stderr = run(*arguments, str(annotations), "--out", str(out), "--score-threshold", "0.3")
    assert code == 1  # the broken files
    results = json.loads(out.read_text())
    assert results and {r["category_id"] for r in results} <= {1, 3, 6}
    assert {r["image_id"] for r in results} <= {i["id"] for i in images}
    assert all(len(r["bbox"]) == 4 and r["bbox"][2] > 0 and 0.3 <= r["score"] <= 1 for r in results)
    assert 100 in {r["image_id"] for r in results if r["category_id"] == 1}  # grace_hopper: a person
    assert not list(tmp_path.glob("detections.json.*"))  # the working records are gone
    assert "1 input(s) are not images of" in stderr and "stray.jpg" in stderr


def test_argument_combinations_are_usage_errors(run, tmp_path):
    image = str(photo("grace_hopper.jpg"))
    assert run(image, "--resume")[0] == 2
    assert run(image, "--format", "coco", "--out", str(tmp_path / "x.json"))[0] == 2
    assert run(image, "--annotations", str(tmp_path / "a.json"))[0] == 2
    assert run(image, "--json", str(tmp_path / "a.json"), "--out", str(tmp_path / "r.jsonl"))[0] == 2


# --- many processes and interruptions (subprocesses) ----------------------------------------------------------------


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "detector.cli", "detect", *args]


def _env() -> dict[str, str]:
    # One thread: oneDNN's results depend on the thread count in the last bits; every run here uses the same.
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _bulk_inputs(root: Path) -> list[str]:
    files = _make_inputs(root / "in", count=18)
    _make_video(root / "in" / "clip.mp4", frames=12, rate=10)
    return [str(root / "in"), str(files["img03.jpg"])]


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_uninterrupted_results(tmp_path):
    inputs = _bulk_inputs(tmp_path)
    common = ["--backend", "torch", "--batch-size", "2", "--workers", "1", "--no-progress"]
    reference = tmp_path / "reference.jsonl"
    done = subprocess.run(_command(*inputs, "--out", str(reference), *common), env=_env(), capture_output=True)
    assert done.returncode == 1, done.stderr.decode()[-2000:]  # the three broken files
    expected = reference.read_text().splitlines()
    assert len(expected) == 18 + 12 + 3

    out = tmp_path / "results.jsonl"
    process = subprocess.Popen(_command(*inputs, "--out", str(out), *common), env=_env(), stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not out.exists() or out.read_text().count("\n") < 6):
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    partial = out.read_text().count("\n")
    assert 6 <= partial < len(expected), "the run was killed midway"
    with out.open("a") as handle:  # as if killed in the middle of a write
        handle.write('{"file": "' + inputs[0] + '/img04.png", "width": 12')

    resumed = subprocess.run(_command(*inputs, "--out", str(out), "--resume", *common), env=_env(), capture_output=True)
    assert resumed.returncode == 1, resumed.stderr.decode()[-2000:]
    assert "left out 1 cut-off line(s)" in resumed.stderr.decode() and "kept from before" in resumed.stderr.decode()
    assert out.read_text().splitlines() == expected  # exactly one line per input, the same results, in order
    again = subprocess.run(_command(*inputs, "--out", str(out), "--resume", *common), env=_env(), capture_output=True)
    assert again.returncode == 1 and out.read_text().splitlines() == expected  # only the broken files re-tried


def _torchrun(processes: int, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    return subprocess.run(
        [*command, "-m", "detector.cli", "detect", *args], env=_env(), capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_torchrun_two_processes_merge_to_the_one_process_output(tmp_path):
    inputs = _bulk_inputs(tmp_path)
    common = ["--backend", "torch", "--batch-size", "3", "--no-progress"]
    one, two = tmp_path / "one" / "results.jsonl", tmp_path / "two" / "results.jsonl"
    first = _torchrun(1, *inputs, "--out", str(one), *common)
    second = _torchrun(2, *inputs, "--out", str(two), "--draw", str(tmp_path / "drawn"), *common)
    # Failed inputs make every rank exit 1 (torchrun then adds its own ChildFailedError report); none of our code
    # printed a traceback.
    assert first.returncode == 1 and second.returncode == 1, second.stderr[-3000:]
    assert f'File "{Path(detector.__file__).parent}' not in second.stderr
    assert second.stderr.count("detector: error: ") == 3  # each broken file reported once, by the rank reading it
    lines = two.read_text().splitlines()
    assert len(lines) == 18 + 12 + 3 and lines == one.read_text().splitlines()
    # The rank files merged and removed; the settings note stays for a later --resume.
    assert sorted(p.name for p in two.parent.iterdir()) == ["results.jsonl", "results.jsonl.settings.json"]
    drawn = sorted(p.name for p in (tmp_path / "drawn").iterdir())
    assert len(drawn) == 18 + 1 and "clip.mp4" in drawn
    # Without --out: the single JSON object, gathered on rank 0, equals the one-process one.
    single = _torchrun(1, *inputs, *common)
    double = _torchrun(2, *inputs, *common)
    assert json.loads(double.stdout) == json.loads(single.stdout)
