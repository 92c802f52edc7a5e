"""``detector detect`` on a folder of camera frames and on a video, beside the raw ``Detector`` in the same run.

    python benchmarks/detect_cli.py [--frames 200] [--rounds 5] [--backend auto] [--workers 2]

Makes ``--frames`` JPEG camera frames, 640×480 at quality 90, cut and resized from the sample photographs
(detector/samples.py) with a slow pan so that no two are the same, and an H.264 video of the same frames at 25 fps.
Then, in alternating rounds:

- raw ``Detector``: in this process, decode each file (``detector.images.load_image``) and ``detect_arrays`` in
  batches of 8, one after the other: what a hand-written loop over the API does;
- the command line: ``detector detect FOLDER --out results.jsonl`` in a subprocess, on the same backend. Its rate is
  the one it reports (from its first decode to its last record written, the network already loaded) and, beside
  it, the whole command's wall time (Python start, imports, loading the model);
- the same two for the video: frames decoded with PyAV, and ``detector detect VIDEO --out``.

The machine may be shared: each round's command-line rate is divided by the raw rate measured just before it,
and the table gives the median of those ratios, with median (and best) rates. Prints the CPU model and its vector
flags from /proc/cpuinfo with the table.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detector.images import load_image
from detector.inference import Detector
from detector.samples import PHOTOS, STREET_PHOTOS, photo
from detector.video import VideoReader, VideoWriter

WIDTH, HEIGHT = 640, 480
BATCH = 8
SUMMARY = re.compile(r"in ([0-9.]+) s \(([0-9.]+)/s\)")


def cpu_description() -> str:
    """The CPU model, core count and its vector-instruction flags (AVX*, AMX*), from /proc/cpuinfo."""
    model, flags = "unknown CPU", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown CPU":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = " ".join(f for f in line.split(":", 1)[1].split() if f.startswith(("avx", "amx", "fma")))
    except OSError:
        pass
    return f"{model}, {len(os.sched_getaffinity(0))} cores usable; flags: {flags or 'none found'}"


def camera_frames(count: int) -> list[np.ndarray]:
    """``count`` 640×480 RGB frames: 4:3 windows panning across the sample photographs, resized."""
    sources = [np.asarray(Image.open(photo(name)).convert("RGB")) for name in (*STREET_PHOTOS, *PHOTOS)]
    frames = []
    for i in range(count):
        source = sources[i % len(sources)]
        height, width = source.shape[:2]
        crop_h = min(height, width * 3 // 4)
        crop_w = crop_h * 4 // 3
        step = (i // len(sources)) / max(1, count // len(sources))
        top = int((height - crop_h) * step)
        left = int((width - crop_w) * (1 - step))
        window = Image.fromarray(source[top : top + crop_h, left : left + crop_w])
        frames.append(np.asarray(window.resize((WIDTH, HEIGHT), Image.Resampling.BILINEAR)))
    return frames


def raw_images(detector: Detector, files: list[Path]) -> float:
    """Images per second: decode then ``detect_arrays`` in batches of 8, in turn."""
    start = time.perf_counter()
    for first in range(0, len(files), BATCH):
        arrays = [load_image(path) for path in files[first : first + BATCH]]
        detector.detect_arrays(arrays)
    return len(files) / (time.perf_counter() - start)


def raw_video(detector: Detector, video: Path) -> float:
    """Frames per second: PyAV decoding then ``detect_arrays`` in batches of 8, in turn."""
    start = time.perf_counter()
    count, batch = 0, []
    with VideoReader(video) as reader:
        for frame in reader.frames():
            batch.append(frame.pixels)
            if len(batch) == BATCH:
                detector.detect_arrays(batch)
                count, batch = count + len(batch), []
    if batch:
        detector.detect_arrays(batch)
        count += len(batch)
    return count / (time.perf_counter() - start)


def command_line(inputs: Path, out: Path, backend: str, workers: int) -> tuple[float, float, int]:
    """(the rate the command reports, its wall-clock rate, records written) for ``detector detect INPUTS``."""
    command = [sys.executable, "-m", "detector.cli", "detect", str(inputs), "--out", str(out), "--no-progress"]
    command += ["--backend", backend, "--workers", str(workers)]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"detector detect failed ({result.returncode}):\n{result.stderr[-2000:]}")
    match = SUMMARY.search(result.stderr)
    if not match:
        raise SystemExit(f"no summary line in:\n{result.stderr[-2000:]}")
    records = sum(1 for _ in out.open())
    return float(match.group(2)), records / wall, records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--backend", default="auto", help="for both sides (default: auto, the command's default)")
    parser.add_argument("--workers", type=int, default=2, help="the command's --workers (default: its default, 2)")
    args = parser.parse_args()

    load_before = Path("/proc/loadavg").read_text().split()[:3]
    detector = Detector.from_weights(backend=args.backend)
    backend = detector.backend.name  # the command line runs the same engine, by name
    with tempfile.TemporaryDirectory() as tmp:
        folder, video = Path(tmp) / "frames", Path(tmp) / "clip.mp4"
        folder.mkdir()
        frames = camera_frames(args.frames)
        files = []
        for i, frame in enumerate(frames):
            files.append(folder / f"frame_{i:05d}.jpg")
            Image.fromarray(frame).save(files[-1], quality=90)
        with VideoWriter(video, Fraction(25)) as writer:
            for frame in frames:
                writer.write(frame)
        raw_images(detector, files[:BATCH])  # warm-up: first-call allocations, page cache
        rows: dict[str, list[float]] = {k: [] for k in ("raw", "cli", "cli_wall", "raw_video", "cli_video", "wall_v")}
        for _ in range(args.rounds):
            rows["raw"].append(raw_images(detector, files))
            rate, wall, records = command_line(folder, Path(tmp) / "images.jsonl", backend, args.workers)
            assert records == len(files), records
            rows["cli"].append(rate)
            rows["cli_wall"].append(wall)
            rows["raw_video"].append(raw_video(detector, video))
            rate, wall, records = command_line(video, Path(tmp) / "video.jsonl", backend, args.workers)
            assert records == len(frames), records
            rows["cli_video"].append(rate)
            rows["wall_v"].append(wall)
    median = {key: statistics.median(values) for key, values in rows.items()}
    best = {key: max(values) for key, values in rows.items()}
    # Each round's command-line rate over the raw rate measured just before it: the pairs share the machine's load.
    ratio = statistics.median(c / r for c, r in zip(rows["cli"], rows["raw"], strict=True))
    ratio_video = statistics.median(c / r for c, r in zip(rows["cli_video"], rows["raw_video"], strict=True))
    print(f"CPU: {cpu_description()}")
    print(f"load average before: {load_before}, after: {Path('/proc/loadavg').read_text().split()[:3]}")
    print(f"backend: {backend} ({detector.backend_reason})")
    print(f"{args.frames} JPEG frames {WIDTH}x{HEIGHT} q90, and a {args.frames}-frame H.264 video of them")
    print(f"{args.rounds} alternating rounds; median (best) per second; ratio: median over rounds of command / raw")
    print()
    print("| input | raw `Detector` | `detector detect` (its own rate) | ratio | whole command incl. start-up |")
    print("|---|---|---|---|---|")
    for name, raw, cli, wall, r in (
        ("folder of JPEGs, img/s", "raw", "cli", "cli_wall", ratio),
        ("video, frames/s", "raw_video", "cli_video", "wall_v", ratio_video),
    ):
        print(
            f"| {name} | {median[raw]:.1f} ({best[raw]:.1f}) | {median[cli]:.1f} ({best[cli]:.1f}) | {r:.2f}× | "
            f"{median[wall]:.1f} ({best[wall]:.1f}) |"
        )
    print()
    print("per round:", {key: [round(v, 1) for v in values] for key, values in rows.items()})


if __name__ == "__main__":
    main()
