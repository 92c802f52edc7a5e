"""The file fuzzer in the test suite: a few hundred fixed broken photographs (``tests/fuzz``; seed 0) through
``load_image``, ``detector detect`` (in this process, and once as a real command) and ``detector evaluate``.

``load_image`` decodes a case or raises ``ImageError``, nothing else, and a case whose metadata or extension alone
changed decodes to its seed's pixels. ``detect`` writes one record per file and one ``detector: error:`` line per
file that failed, agreeing with ``load_image``, and never a traceback. ``benchmarks/fuzz_files.py`` runs the same
cases by the thousand (and the service: ``tests/test_fuzz_api.py``).
"""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.mutations import make_case, seeds
from tests.fuzz.targets import load_outcome, orientations, run_cli, write_coco

CASES = [make_case(0, index) for index in range(400)]


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def outcomes() -> dict[int, str]:
    return {case.index: load_outcome(case) for case in CASES}


def test_the_seeds_are_real_photographs_in_every_format():
    formats = collections.Counter(seed.format for seed in seeds())
    assert set(formats) == {"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"} and min(formats.values()) >= 2


@pytest.mark.filterwarnings("ignore")  # Pillow's warnings about what it tolerates: the outcome is what counts
def test_load_image_decodes_or_raises_image_error_and_intact_cases_keep_their_pixels(outcomes):
    counts = collections.Counter(outcomes.values())
    bugs = {case.file_name: outcomes[case.index] for case in CASES if not _expected(outcomes[case.index])}
    assert not bugs
    intact = [case for case in CASES if case.intact]
    assert len(intact) > 50 and all(outcomes[case.index] == "decoded" for case in intact)
    # Mutations that matter: a good share decodes, a good share is refused, for several reasons.
    assert counts["decoded"] > 100 and sum(n for o, n in counts.items() if o.startswith("ImageError")) > 100
    assert len([o for o in counts if o.startswith("ImageError")]) >= 4


def _expected(outcome: str) -> bool:
    return outcome == "decoded" or outcome.startswith("ImageError: ")


def _write(cases, folder: Path) -> dict[str, object]:
    folder.mkdir(parents=True)
    files = {}
    for case in cases:
        (folder / case.file_name).write_bytes(case.data)
        files[str(folder / case.file_name)] = case
    return files


@pytest.mark.filterwarnings("ignore")
def test_detect_over_broken_files_gives_one_record_each_and_one_line_per_failure(tiny, tmp_path, outcomes):
    files = _write(CASES[:48], tmp_path / "in")
    out = tmp_path / "results.jsonl"
    code, _, err = run_cli(["detect", str(tmp_path / "in"), "--out", str(out), "--weights", str(tiny),
                            "--backend", "torch", "--no-progress"])  # fmt: skip
    assert code == 1 and "Traceback" not in err
    records = {record["file"]: record for record in map(json.loads, out.read_text().splitlines())}
    error_lines = collections.Counter(line.split(": ")[2] for line in err.splitlines() if line.startswith("detector:"))
    assert set(records) == set(files) and set(error_lines) <= set(files)
    for file, case in files.items():
        decoded = outcomes[case.index] == "decoded"
        assert ("error" not in records[file]) == decoded, (case.file_name, outcomes[case.index])
        assert error_lines[file] == (0 if decoded else 1), case.file_name
    assert err.splitlines()[-1].startswith("detected ")


def test_the_detect_command_never_prints_a_traceback(tiny, tmp_path, outcomes):
    """The real command, in its own process: its stderr holds our lines, one per failed file, and no traceback."""
    chosen = [case for case in CASES if outcomes[case.index] != "decoded"][:12]
    chosen += [case for case in CASES if "wrong_extension" in case.operations][:4]  # renamed, still read
    files = _write(chosen, tmp_path / "in")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "detector.cli", "detect", str(tmp_path / "in"), "--weights", str(tiny),
               "--backend", "torch", "--no-progress"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 1 and "Traceback" not in done.stderr and "Warning" not in done.stderr
    # Searched, not matched at the start: libtiff may print its own complaint from a decoding thread just before.
    ours = re.findall(r"detector: error: (.+?): ", done.stderr)
    assert len(ours) == 12 and set(ours) <= set(files)
    assert len(json.loads(done.stdout)) == 4


def test_evaluate_on_broken_images_exits_0_or_1_with_one_line(tiny, tmp_path, outcomes):
    decoded = [case for case in CASES if outcomes[case.index] == "decoded" and not case.intact][:2]
    refused = [case for case in CASES if outcomes[case.index] != "decoded"][:2]
    for case in decoded + refused:
        root = tmp_path / str(case.index)
        (image,) = _write([case], root / "images").keys()
        height, width = orientations(case.seed)[0].shape[:2]
        annotations = write_coco(root / "images", [Path(image)], [(width, height)], root / "instances.json")
        argv = ["evaluate", "--images", str(root / "images"), "--annotations", str(annotations), "--weights",
                str(tiny), "--workers", "0", "--no-progress"]  # fmt: skip
        code, _, err = run_cli(argv)
        errors = [line for line in err.splitlines() if line.startswith("detector: error:")]
        assert "Traceback" not in err and code in (0, 1) and len(errors) == code, (case.file_name, err)
        if case in refused:
            assert code == 1 and errors[0].startswith(f"detector: error: {image}: ")
