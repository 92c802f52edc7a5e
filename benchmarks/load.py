"""The HTTP service under load from an external generator (wrk), side by side with the raw ``Detector``.

The service runs as ``python -m api`` (the default model, ``auto`` backend, its default settings); wrk, a C load
generator from Debian (``apt-get install wrk``), posts camera frames as raw JPEG bodies over keep-alive connections,
closed loop, so the client costs the server's two cores little. For each traffic kind (640×480 JPEG, 1280×720 JPEG,
640×480 PNG) and concurrency (default 1 and 16): requests/s, p50/p90/p99 latency, errors (non-2xx or socket). In the
same run the raw ``Detector`` (the same model and backend, in this process while the service idles) is timed on the
same frames: decode + ``detect_arrays`` in batches of 8 (what the service's batches do) and one frame at a time
(the latency floor for concurrency 1). Also the server's cold start (process start to ``/readyz`` 200, the backend
choice cached) and its resident memory after the load.

    .venv/bin/python benchmarks/load.py [--duration 10] [--concurrency 1,16] [--kinds jpeg640,jpeg1280,png640]

Goals (issue 11): at 16 connections ≥ 0.9× the raw detector (and ≥ 150 img/s where the CPU has AMX); at one
connection p50 ≤ 1.2× the raw single-frame latency; zero errors; RSS ≤ 400 MB.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detector.images import load_image
from detector.inference import Detector
from detector.machine import describe_cpu_line
from detector.samples import ALL_PHOTOS, photo
from tests.harness.live import running_service

KINDS = {"jpeg640": ("JPEG", (640, 480)), "jpeg1280": ("JPEG", (1280, 720)), "png640": ("PNG", (640, 480))}
CONTENT_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png"}

WRK_SCRIPT = r"""
local bodies = {}
local content_type = "image/jpeg"
local counter = 0
function init(args)
  content_type = args[1]
  for i = 2, #args do
    local f = assert(io.open(args[i], "rb")); bodies[#bodies + 1] = f:read("*all"); f:close()
  end
end
function request()
  counter = counter + 1
  return wrk.format("POST", "/v1/detect", {["Content-Type"] = content_type}, bodies[counter % #bodies + 1])
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('RESULT {"requests": %d, "duration_us": %d, "p50": %d, "p90": %d, "p99": %d, ' ..
    '"errors": %d}\n', summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def frames(kind: str, count: int = 12) -> list[bytes]:
    """``count`` camera-sized frames of ``kind`` from the sample photographs (JPEG quality 90)."""
    format_, size = KINDS[kind]
    out = []
    for name in list(ALL_PHOTOS)[:count]:
        buffer = io.BytesIO()
        image = Image.fromarray(load_image(photo(name))).resize(size)
        image.save(buffer, format=format_, **({"quality": 90} if format_ == "JPEG" else {}))
        out.append(buffer.getvalue())
    return out


def run_wrk(url: str, files: list[Path], content_type: str, connections: int, seconds: float) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT)
    threads = min(2, connections)
    duration = max(1, round(seconds))
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--timeout", "10s", "-s", script.name]
    output = subprocess.run([*command, url, "--", content_type, *map(str, files)], capture_output=True, text=True)
    line = next(text for text in output.stdout.splitlines() if text.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    result["rate"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def raw_rates(detector: Detector, encoded: list[bytes], repeats: int = 5) -> tuple[float, float]:
    """(images/s of decode + detect_arrays in batches of 8, median ms of one frame decoded and detected)."""
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, len(encoded), 8):
            detector.detect_arrays([load_image(data) for data in encoded[i : i + 8]])
        rates.append(len(encoded) / (time.perf_counter() - start))
    singles = []
    for _ in range(repeats):
        for data in encoded:
            start = time.perf_counter()
            detector.detect_arrays([load_image(data)])
            singles.append(time.perf_counter() - start)
    return statistics.median(rates), statistics.median(singles) * 1000


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--kinds", default="jpeg640,jpeg1280,png640")
    parser.add_argument("--warmup", type=float, default=3.0)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("needs wrk: apt-get install wrk", file=sys.stderr)
        return 1
    print(describe_cpu_line())
    detector = Detector.from_weights(backend="auto")
    print(f"model {detector.spec.name}, backend {detector.backend.name}; wrk {args.duration:g} s per level")
    levels = [int(c) for c in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        started = time.monotonic()
        with running_service({"DETECTOR_BACKEND": "auto"}) as service:
            cold_start = time.monotonic() - started
            pid = service.process.pid
            info = json.loads(urllib.request.urlopen(f"{service.url}/v1/model", timeout=10).read())
            print(f"service: cold start {cold_start:.2f} s (process start to ready), backend {info['backend']}")
            rss_steps = [f"ready {rss_mib(pid):.0f}"]
            print("| traffic | connections | img/s | p50 ms | p90 ms | p99 ms | errors | raw Detector | ratio |")
            print("|---|---|---|---|---|---|---|---|---|")
            for kind in args.kinds.split(","):
                encoded = frames(kind)
                files = []
                for i, data in enumerate(encoded):
                    path = Path(tmp) / f"{kind}-{i}.bin"
                    path.write_bytes(data)
                    files.append(path)
                content_type = CONTENT_TYPES[KINDS[kind][0]]
                run_wrk(service.url, files, content_type, max(levels), args.warmup)  # warm-up
                raw_before = raw_rates(detector, encoded)
                results = {c: run_wrk(service.url, files, content_type, c, args.duration) for c in levels}
                raw_after = raw_rates(detector, encoded)
                raw_rate = (raw_before[0] + raw_after[0]) / 2
                raw_single = (raw_before[1] + raw_after[1]) / 2
                for connections, r in results.items():
                    if connections == 1:
                        reference, ratio = f"{raw_single:.1f} ms/frame", r["p50"] / 1000 / raw_single
                        ratio_text = f"p50 {ratio:.2f}× (goal ≤ 1.2×)"
                    else:
                        reference, ratio = f"{raw_rate:.1f} img/s", r["rate"] / raw_rate
                        ratio_text = f"{ratio:.2f}× (goal ≥ 0.9×)"
                    print(
                        f"| {kind} | {connections} | {r['rate']:.1f} | {r['p50'] / 1000:.1f} | {r['p90'] / 1000:.1f} |"
                        f" {r['p99'] / 1000:.1f} | {r['errors']} | {reference} | {ratio_text} |"
                    )
                rss_steps.append(f"after {kind} {rss_mib(pid):.0f}")
            print(f"service RSS (MiB): {', '.join(rss_steps)} (goal ≤ 400)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
