"""The file fuzzer: thousands of broken photographs through ``load_image``, ``detector detect``, ``detector
evaluate`` and the service, counting what each makes of them.

    python benchmarks/fuzz_files.py [--cases 5000] [--seed 0] [--evaluate-cases 100] [--service-cases 2000]

The cases are :mod:`tests.fuzz.mutations`' (real photographs in JPEG, PNG, WebP, GIF, BMP and TIFF; bit flips,
truncations, marker, chunk and header edits, garbage EXIF/ICC/XMP, wrong extensions), case ``i`` of seed ``s`` the
same file on every machine. Then:

- ``load_image`` on every case, in this process: counts per outcome (decoded, ``ImageError`` by kind, anything
  else), the cases whose decoder wrote to stderr itself (libtiff, libpng: lines beside ours), the slowest case,
  and this process's resident memory before, at its peak and after;
- ``detector detect`` on a folder of every case (a subprocess, the tiny model of :mod:`tests.fuzz.targets`):
  its exit status, a traceback or not, one record per file and one ``detector: error:`` line per file that failed,
  the files whose outcome differs from ``load_image``'s in this process, and the other lines of stderr;
- ``detector evaluate`` on ``--evaluate-cases`` one-image data sets (in this process): exit 0 or 1 with one error
  line, never a traceback;
- ``POST /v1/detect`` on the service (FastAPI's test client, a stand-in model: decoding and limits are real) with
  ``--service-cases`` cases under their format's media type, or their extension's for the renamed ones: the
  statuses, never a 5xx, and ``/readyz`` still 200 after.

Exits 1 when any check fails, printing the first cases of each failure.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fuzz.mutations import MEDIA_TYPES, Case, make_case, seeds
from tests.fuzz.targets import load_outcome, run_cli, tiny_weights, write_coco

# Unanchored: a C library's message written from a decoding thread can land in front of ours on the same line.
ERROR_LINE = re.compile(r"detector: error: (.+?): ")


def _rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _StderrCapture:
    """Catches what C libraries write to file descriptor 2 while a case decodes (one case at a time)."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 - kept for the whole run, closed with the process
        self._saved = os.dup(2)

    def __enter__(self) -> _StderrCapture:
        sys.stderr.flush()
        os.dup2(self._file.fileno(), 2)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.stderr.flush()
        os.dup2(self._saved, 2)

    def take(self) -> str:
        self._file.seek(0)
        text = self._file.read().decode(errors="replace")
        self._file.seek(0)
        self._file.truncate()
        return text


def fuzz_load_image(cases: list[Case]) -> tuple[dict[int, str], list[str]]:
    """Every case through ``load_image``; returns each case's outcome and the failures."""
    import warnings

    warnings.simplefilter("ignore")  # Pillow's warnings about what it tolerates; counted as outcomes instead
    before, outcomes, noisy = _rss_mib(), {}, collections.Counter()
    slowest = (0.0, "")
    capture = _StderrCapture()
    started = time.perf_counter()
    for case in cases:
        begun = time.perf_counter()
        with capture:
            outcomes[case.index] = load_outcome(case)
        printed = capture.take().strip()
        if printed:
            noisy[printed.splitlines()[0].split(":")[0][:40]] += 1
        took = time.perf_counter() - begun
        if took > slowest[0]:
            slowest = (took, f"{case.file_name} {'+'.join(case.operations)}")
    seconds = time.perf_counter() - started
    counts = collections.Counter(outcomes.values())
    print(f"\nload_image: {len(cases)} cases in {seconds:.1f} s ({len(cases) / seconds:.0f}/s)")
    for outcome, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        print(f"  {count:6d}  {outcome}")
    intact = [c for c in cases if c.intact]
    print(f"  of which intact (metadata or extension only): {len(intact)}, decoded to the seed's pixels: "
          f"{sum(outcomes[c.index] == 'decoded' for c in intact)}")  # fmt: skip
    print(f"  cases whose decoder printed on stderr itself: {sum(noisy.values())} {dict(noisy.most_common(6))}")
    print(f"  slowest case: {slowest[0] * 1e3:.0f} ms ({slowest[1]})")
    print(f"  resident memory: {before:.0f} MiB before, peak {_peak_mib():.0f} MiB, {_rss_mib():.0f} MiB after")
    failures = [f"load_image {c.file_name} {'+'.join(c.operations)}: {outcomes[c.index]}" for c in cases
                if outcomes[c.index].startswith("other") or outcomes[c.index] == "wrong pixels"]  # fmt: skip
    return outcomes, failures


def fuzz_detect(cases: list[Case], outcomes: dict[int, str], folder: Path, weights: Path) -> list[str]:
    """``detector detect FOLDER --out`` over every case, in a subprocess; each file's record agrees with
    ``load_image``."""
    import json

    images = folder / "images"
    images.mkdir()
    names = {}
    for case in cases:
        (images / case.file_name).write_bytes(case.data)
        names[str(images / case.file_name)] = case
    out = folder / "results.jsonl"
    command = [sys.executable, "-m", "detector.cli", "detect", str(images), "--out", str(out), "--weights",
               str(weights), "--backend", "torch", "--no-progress"]  # fmt: skip
    started = time.perf_counter()
    # One thread: the model is tiny, and on a shared machine more threads only wait for each other.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600, env=env)
    seconds = time.perf_counter() - started
    failures = []
    if done.returncode not in (0, 1) or "Traceback" in done.stderr:
        failures.append(f"detect: exit {done.returncode}, stderr ends {done.stderr[-2000:]}")
    records = [json.loads(line) for line in out.read_text().splitlines()] if out.is_file() else []
    by_file = collections.Counter(record["file"] for record in records)
    errors = collections.Counter()
    other_lines = collections.Counter()
    for line in done.stderr.splitlines():
        matched = ERROR_LINE.search(line)
        if matched and matched[1] in names:
            errors[matched[1]] += 1
            if matched.start():
                other_lines["(a library's message in front of our line)"] += 1
        elif not line.startswith("detected "):
            other_lines[re.sub(r"\d+", "N", line)[:60]] += 1
    differ = []
    for file, case in names.items():
        failed = any(r["file"] == file and "error" in r for r in records)
        what = f"{case.file_name} {'+'.join(case.operations)}: load_image {outcomes[case.index]}"
        if by_file[file] != 1 or errors[file] != int(failed):
            failures.append(f"detect {what}, {by_file[file]} record(s), {errors[file]} error line(s)")
        elif failed == (outcomes[case.index] == "decoded"):
            # Pillow decodes a few corrupt PNGs or not depending on what the process did before (seed 0: 2 of 5000).
            differ.append(f"{what}, detect: {'error' if failed else 'decoded'}")
    print(f"\ndetector detect: {len(cases)} files in {seconds:.1f} s, exit status {done.returncode}, "
          f"traceback: {'yes' if 'Traceback' in done.stderr else 'no'}")  # fmt: skip
    print(
        f"  records: {len(records)} ({sum('error' in r for r in records)} errors); error lines: "
        f"{sum(errors.values())}; files without exactly one record, or one error line per error: {len(failures)}"
    )
    print(f"  outcome other than load_image's in this process: {len(differ)} {differ[:3]}")  # fmt: skip
    print(f"  other stderr lines: {sum(other_lines.values())} {dict(other_lines.most_common(5))}")
    return failures


def fuzz_evaluate(cases: list[Case], outcomes: dict[int, str], folder: Path, weights: Path) -> list[str]:
    """``detector evaluate`` on one-image data sets (the image annotated at its seed's size)."""
    import torch

    from tests.fuzz.targets import orientations

    torch.set_num_threads(1)  # as detect's: a tiny model
    statuses: collections.Counter[str] = collections.Counter()
    failures = []
    started = time.perf_counter()
    for case in cases:
        root = folder / f"evaluate-{case.index}"
        root.mkdir()
        image = root / case.file_name
        image.write_bytes(case.data)
        height, width = orientations(case.seed)[0].shape[:2]
        annotations = write_coco(root, [image], [(width, height)], root / "instances.json")
        argv = ["evaluate", "--images", str(root), "--annotations", str(annotations), "--weights", str(weights),
                "--workers", "0", "--no-progress"]  # fmt: skip
        code, _, err = run_cli(argv)
        error_lines = [line for line in err.splitlines() if line.startswith("detector: error:")]
        statuses[f"exit {code}" + (" (one error line)" if code == 1 and len(error_lines) == 1 else "")] += 1
        if "Traceback" in err or code not in (0, 1) or (code == 1) != (len(error_lines) == 1):
            failures.append(f"evaluate {case.file_name} {'+'.join(case.operations)}: exit {code}: {err[-500:]}")
    seconds = time.perf_counter() - started
    print(f"\ndetector evaluate: {len(cases)} one-image data sets in {seconds:.1f} s: {dict(statuses)}")
    return failures


def fuzz_service(cases: list[Case]) -> list[str]:
    """``POST /v1/detect`` with each case, under its extension's media type."""
    from fastapi.testclient import TestClient

    from api.main import create_app
    from api.settings import Settings
    from tests.support import FakeDetector

    settings = Settings(threads=1, max_wait_ms=0, drain_delay_s=0)
    statuses: collections.Counter[int] = collections.Counter()
    failures = []
    started = time.perf_counter()
    with TestClient(create_app(settings, detector=FakeDetector())) as client:
        for case in cases:
            response = client.post("/v1/detect", content=case.data, headers={"Content-Type": MEDIA_TYPES[case.suffix]})
            statuses[response.status_code] += 1
            if response.status_code >= 500:
                failures.append(f"service {case.file_name} {'+'.join(case.operations)}: {response.text[:200]}")
        ready = client.get("/readyz").status_code
    seconds = time.perf_counter() - started
    print(f"\nservice POST /v1/detect: {len(cases)} requests in {seconds:.1f} s: statuses "
          f"{dict(sorted(statuses.items()))}, /readyz after: {ready}")  # fmt: skip
    if ready != 200:
        failures.append(f"service: /readyz answers {ready} after the run")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=5000, help="cases through load_image and detect")
    parser.add_argument("--seed", type=int, default=0, help="the run's seed: case i of seed s is always the same")
    parser.add_argument("--size", type=int, default=96, help="the seeds' long side in pixels (default: 96)")
    parser.add_argument("--evaluate-cases", type=int, default=100, help="one-image evaluate runs (the first cases)")
    parser.add_argument("--service-cases", type=int, default=2000, help="requests to the service (the first cases)")
    args = parser.parse_args()

    pool = seeds(args.size)
    formats = collections.Counter(seed.format for seed in pool)
    print(f"seeds: {len(pool)} files from {len({s.name.split('-')[0] for s in pool})} photographs: {dict(formats)}")
    cases = [make_case(args.seed, index, pool) for index in range(args.cases)]
    operations = collections.Counter(op for case in cases for op in case.operations)
    print(f"cases: {len(cases)} (seed {args.seed}), mutations: {dict(operations.most_common())}")
    outcomes, failures = fuzz_load_image(cases)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        weights = tiny_weights(folder / "tiny.safetensors")
        failures += fuzz_detect(cases, outcomes, folder, weights)
        failures += fuzz_evaluate(cases[: args.evaluate_cases], outcomes, folder, weights)
    failures += fuzz_service(cases[: args.service_cases])
    print(f"\nresident memory at the end: {_rss_mib():.0f} MiB (peak {_peak_mib():.0f} MiB)")
    print(f"failures: {len(failures)}")
    for failure in failures[:20]:
        print("  " + failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
