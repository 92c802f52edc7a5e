"""KServe v2 over gRPC against HTTP under load, side by side with the raw ``Detector`` (issue 20).

One ``python -m api`` (the built-in ``coco`` model, ``auto`` backend, its default settings, gRPC on a free loopback
port) takes closed-loop load from Triton's own clients, the same KServe v2 request each time (one 640×480 JPEG camera
frame as the BYTES input ``image``, all four outputs): over HTTP (``tritonclient.http``, binary tensor data), over gRPC
(``tritonclient.grpc``, unary ModelInfer), and over gRPC as a stream (ModelStreamInfer, each frame sent once the
previous one is answered). Each worker has its own client and connection; 1 and 16 workers by default. Per row:
images/s, p50/p90/p99 latency, errors. In the same run the raw ``Detector`` (the same model and backend, in this
process while the service idles) is timed on the same frames, as in ``benchmarks/load.py``: decode + ``detect_arrays``
one frame at a time (the latency floor for one worker) and in batches of 8 (the throughput ceiling for 16).

    .venv/bin/python benchmarks/grpc_load.py [--duration 8] [--rounds 4] [--concurrency 1,16] [--warmup 2]

Traffic goes to 127.0.0.1 only, and each level stops after ``--duration`` seconds in all, run as ``--rounds`` slices
taken in turn (protocol after protocol, the raw detector between rounds), so that whatever else the machine does
falls on every row alike. The load generators are Python threads in this process, on the same CPUs as the service:
their cost is in the figures, the same for every protocol.
"""

from __future__ import annotations

import argparse
import os
import queue
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# benchmarks/load.py: the same camera frames, the raw Detector's timing, the service's memory.
from load import frames, raw_rates, rss_mib

from detector.inference import Detector
from detector.machine import describe_cpu_line
from tests.harness.live import free_port, running_service

MODEL = "coco"
Call = Callable[[bytes], None]


def http_worker(url: str) -> tuple[Call, Callable[[], None]]:
    """A KServe HTTP client: (infer one frame, close)."""
    client = httpclient.InferenceServerClient(url.removeprefix("http://"), network_timeout=60)

    def call(frame: bytes) -> None:
        tensor = httpclient.InferInput("image", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([frame], dtype=np.object_))
        client.infer(MODEL, [tensor])

    return call, client.close


def grpc_worker(target: str) -> tuple[Call, Callable[[], None]]:
    """A KServe gRPC client making unary ModelInfer calls: (infer one frame, close)."""
    client = grpcclient.InferenceServerClient(target)

    def call(frame: bytes) -> None:
        tensor = grpcclient.InferInput("image", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([frame], dtype=np.object_))
        client.infer(MODEL, [tensor], client_timeout=60)

    return call, client.close


def stream_worker(target: str) -> tuple[Call, Callable[[], None]]:
    """A KServe gRPC client with one ModelStreamInfer stream, a frame at a time: (infer one frame, close)."""
    client = grpcclient.InferenceServerClient(target)
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put(error))

    def call(frame: bytes) -> None:
        tensor = grpcclient.InferInput("image", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([frame], dtype=np.object_))
        client.async_stream_infer(MODEL, [tensor])
        error = answers.get(timeout=60)
        if error is not None:
            raise error

    def close() -> None:
        client.stop_stream()
        client.close()

    return call, close


def run_level(make: Callable[[], tuple[Call, Callable[[], None]]], encoded: list[bytes], workers: int, seconds: float):
    """``workers`` closed loops for ``seconds``: (seconds taken, latencies in ms, errors)."""
    clients = [make() for _ in range(workers)]
    latencies: list[list[float]] = [[] for _ in range(workers)]
    errors = [0] * workers
    go = threading.Barrier(workers + 1)
    stop_at = [0.0]

    def loop(index: int) -> None:
        call = clients[index][0]
        go.wait()
        n = index
        while time.perf_counter() < stop_at[0]:
            started = time.perf_counter()
            try:
                call(encoded[n % len(encoded)])
                latencies[index].append((time.perf_counter() - started) * 1000)
            except Exception:
                errors[index] += 1
            n += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    started = time.perf_counter()
    stop_at[0] = started + seconds
    go.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    for _, close in clients:
        close()
    return elapsed, [x for each in latencies for x in each], sum(errors)


def percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))] if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per protocol and concurrency, in all")
    parser.add_argument("--rounds", type=int, default=4, help="slices each level's duration is run in, in turn")
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--warmup", type=float, default=2.0)
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    load_before = os.getloadavg()[0]
    print(describe_cpu_line().split("; all flags")[0] + ")")
    detector = Detector.from_weights(MODEL, backend="auto")
    encoded = frames("jpeg640")
    print(f"model {MODEL}, backend {detector.backend.name}; 640×480 JPEG frames; {args.duration:g} s per level")
    grpc_port = free_port()
    with running_service({"DETECTOR_WEIGHTS": MODEL, "DETECTOR_GRPC_PORT": str(grpc_port)}) as service:
        target = f"127.0.0.1:{grpc_port}"
        protocols: dict[str, Callable[[], tuple[Call, Callable[[], None]]]] = {
            "HTTP (tritonclient.http)": lambda: http_worker(service.url),
            "gRPC ModelInfer (tritonclient.grpc)": lambda: grpc_worker(target),
            "gRPC ModelStreamInfer, one stream each": lambda: stream_worker(target),
        }
        for make in protocols.values():
            run_level(make, encoded, max(levels), args.warmup)
        raws = [raw_rates(detector, encoded, repeats=2)]
        rows: dict[tuple[str, int], tuple[float, list[float], int]] = {}
        for _ in range(args.rounds):
            for name, make in protocols.items():
                for workers in levels:
                    seconds, latencies, errors = run_level(make, encoded, workers, args.duration / args.rounds)
                    total_s, total, total_errors = rows.get((name, workers), (0.0, [], 0))
                    rows[name, workers] = (total_s + seconds, total + latencies, total_errors + errors)
            raws.append(raw_rates(detector, encoded, repeats=2))
        rss = rss_mib(service.process.pid)
    raw_rate = statistics.median(rate for rate, _ in raws)
    raw_single = statistics.median(single for _, single in raws)
    print("| protocol | workers | img/s | p50 ms | p90 ms | p99 ms | errors | vs raw Detector |")
    print("|---|---|---|---|---|---|---|---|")
    for (name, workers), (seconds, latencies, errors) in rows.items():
        rate = len(latencies) / seconds
        latencies.sort()
        p50 = percentile(latencies, 50)
        versus = f"p50 {p50 / raw_single:.2f}× its {raw_single:.1f} ms" if workers == 1 else ""
        versus = versus or f"{rate / raw_rate:.2f}× its {raw_rate:.1f} img/s"
        print(
            f"| {name} | {workers} | {rate:.1f} | {p50:.1f} | {percentile(latencies, 90):.1f} |"
            f" {percentile(latencies, 99):.1f} | {errors} | {versus} |"
        )
    print(f"raw Detector: {raw_single:.1f} ms a frame one at a time, {raw_rate:.1f} img/s in batches of 8")
    print(f"service RSS after the load: {rss:.0f} MiB")
    # Other work on the machine shows here: 1-minute load averages above the core count mean shared CPUs.
    print(f"load average (1 min) at the start {load_before:.1f}, at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
