"""Closed-loop load on the HTTP service, side by side with the raw ``Detector`` on the same photographs.

For each concurrency (default 1, 2, 4, 8, 16, 32) that many clients each send one photo, wait for the answer and
send the next, for ``--duration`` seconds after ``--warmup``; the table gives throughput, p50/p90/p99 latency,
errors (any non-200) and the mean batch size (images per forward pass, from the service's own metrics). In the same
run the raw ``Detector`` is timed in-process, before and after the service levels (the mean of both is used):
``detect`` on the encoded photos in batches of the service's max batch size (decode + inference, the same work a
request does), ``detect_arrays`` on decoded pixels (inference alone), and one photo at a time (decode + inference)
as the latency floor for concurrency 1.

    .venv/bin/python benchmarks/load.py [--duration 10] [--concurrency 1,2,4,8,16,32] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time

# The same OpenMP setting as `python -m api` (see api/__main__.py), so the raw timings compare like with like.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
from _service import Client, load_photos, metric_values, running_service

from api.settings import Settings
from detector.images import load_image
from detector.inference import Detector


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100), nearest rank."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def run_level(url: str, photos: list[tuple[str, bytes, str]], concurrency: int, warmup: float, duration: float):
    """One closed-loop level: returns throughput, latencies (s) and error count within the measured window."""
    start = time.monotonic()
    window_start, window_end = start + warmup, start + warmup + duration
    records: list[tuple[float, float, int]] = []
    lock = threading.Lock()

    def client_loop(index: int) -> None:
        client = Client(url)
        mine = []
        i = index
        while time.monotonic() < window_end:
            _, body, content_type = photos[i % len(photos)]
            i += 1
            t0 = time.monotonic()
            status, _ = client.detect(body, content_type)
            mine.append((t0, time.monotonic(), status))
        client.close()
        with lock:
            records.extend(mine)

    before: dict[str, float] = {}
    timer = threading.Timer(warmup, lambda: before.update(metric_values(url, BATCH_METRICS)))
    timer.start()
    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    timer.join()
    after = metric_values(url, BATCH_METRICS)
    measured = [(t0, t1, s) for t0, t1, s in records if t0 >= window_start and t1 <= window_end]
    ok = [t1 - t0 for t0, t1, s in measured if s == 200]
    batches = after["detector_batch_size_count"] - before.get("detector_batch_size_count", 0)
    images = after["detector_batch_size_sum"] - before.get("detector_batch_size_sum", 0)
    return {
        "concurrency": concurrency,
        "requests": len(measured),
        "throughput": len(ok) / duration,
        "p50_ms": percentile(ok, 50) * 1000,
        "p90_ms": percentile(ok, 90) * 1000,
        "p99_ms": percentile(ok, 99) * 1000,
        "errors": sum(1 for *_, s in measured if s != 200),
        "mean_batch": images / batches if batches else float("nan"),
    }


BATCH_METRICS = ("detector_batch_size_sum", "detector_batch_size_count")


def time_raw_batched(detector: Detector, encoded: list[bytes], batch_size: int) -> float:
    """The raw Detector's throughput (images/s) on encoded photos: ``detect`` decodes and runs batches."""
    t0 = time.perf_counter()
    detector.detect(encoded, batch_size=batch_size)
    return len(encoded) / (time.perf_counter() - t0)


def time_raw_inference(detector: Detector, arrays: list, batch_size: int) -> float:
    """The raw Detector's throughput (images/s) on decoded pixels: ``detect_arrays`` alone."""
    t0 = time.perf_counter()
    for start in range(0, len(arrays), batch_size):
        detector.detect_arrays(arrays[start : start + batch_size])
    return len(arrays) / (time.perf_counter() - t0)


def time_raw_single(detector: Detector, photos: list[tuple[str, bytes, str]], rounds: int = 2) -> float:
    """Median latency (ms) of decoding one photo and detecting in it alone."""
    singles = []
    for _ in range(rounds):
        for _, data, _ in photos:
            t0 = time.perf_counter()
            detector.detect_arrays([load_image(data)])
            singles.append(time.perf_counter() - t0)
    return statistics.median(singles) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", default="1,2,4,8,16,32", help="comma-separated levels")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each level")
    parser.add_argument("--raw-images", type=int, default=48, help="images per raw Detector timing")
    parser.add_argument("--json", dest="json_out", help="also write the results here")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    settings = Settings()
    torch.set_num_threads(settings.threads)
    photos = load_photos()
    # The same engine as the service's (DETECTOR_BACKEND, default auto), so the ratio compares like with like.
    detector = Detector.from_weights(None, backend=settings.backend)
    print(f"backend: {detector.info()['backend']} (DETECTOR_BACKEND={settings.backend})")
    encoded = [photos[i % len(photos)][1] for i in range(args.raw_images)]
    arrays = [load_image(data) for data in encoded]
    detector.detect(encoded[: settings.max_batch_size], batch_size=settings.max_batch_size)  # warm-up
    rows = []
    # This machine is shared and noisy: each level is measured between two raw timings, and compared with them.
    with running_service() as (url, _):
        for level in levels:
            raw_before = time_raw_batched(detector, encoded, settings.max_batch_size)
            single_before = time_raw_single(detector, photos) if level == 1 else float("nan")
            row = run_level(url, photos, level, args.warmup, args.duration)
            raw_after = time_raw_batched(detector, encoded, settings.max_batch_size)
            single_after = time_raw_single(detector, photos) if level == 1 else float("nan")
            row["raw_with_decode"] = (raw_before + raw_after) / 2
            row["raw_single_p50_ms"] = (single_before + single_after) / 2
            row["vs_raw"] = row["throughput"] / row["raw_with_decode"]
            rows.append(row)
            print(
                f"  c={level}: {row['throughput']:.1f} img/s (raw {raw_before:.1f} / {raw_after:.1f}), "
                f"p50 {row['p50_ms']:.0f} ms, batch {row['mean_batch']:.2f}",
                flush=True,
            )
    raw_inference = time_raw_inference(detector, arrays, settings.max_batch_size)

    print(
        f"\nservice: threads={settings.threads} max_batch_size={settings.max_batch_size} "
        f"max_wait_ms={settings.max_wait_ms}; {len(photos)} photos, one per request; {args.duration:.0f} s per level"
    )
    print(
        f"{'conc':>4} {'img/s':>7} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} {'errors':>6} {'batch':>6} "
        f"{'raw img/s':>9} {'ratio':>6}"
    )
    for r in rows:
        print(
            f"{r['concurrency']:>4} {r['throughput']:>7.1f} {r['p50_ms']:>7.1f} {r['p90_ms']:>7.1f} "
            f"{r['p99_ms']:>7.1f} {r['errors']:>6} {r['mean_batch']:>6.2f} "
            f"{r['raw_with_decode']:>9.1f} {r['vs_raw']:>6.2f}"
        )
    print(
        f"\nraw: Detector.detect, batches of {settings.max_batch_size}, decode + inference, "
        "timed just before and after each level (mean)"
    )
    print(
        f"raw Detector.detect_arrays, batches of {settings.max_batch_size}, inference only: {raw_inference:.1f} img/s"
    )
    by_level = {r["concurrency"]: r for r in rows}
    summary = {}
    summary: dict[str, float] = {"raw_inference_only": raw_inference}
    if 16 in by_level:
        summary["c16_vs_raw"] = by_level[16]["vs_raw"]
        print(f"\nc=16 throughput / raw (decode + inference): {summary['c16_vs_raw']:.2f}  (goal ≥ 0.85)")
    if 1 in by_level:
        summary["c1_p50_vs_single"] = by_level[1]["p50_ms"] / by_level[1]["raw_single_p50_ms"]
        print(
            f"c=1 p50 {by_level[1]['p50_ms']:.1f} ms / one-photo decode + inference "
            f"{by_level[1]['raw_single_p50_ms']:.1f} ms: {summary['c1_p50_vs_single']:.2f}  (goal ≤ 1.3)"
        )
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"levels": rows, "summary": summary}, f, indent=2)


if __name__ == "__main__":
    main()
