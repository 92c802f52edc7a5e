"""The service's memory under large-pixel load: peak and settled RSS against a replica's 2 GiB limit.

    .venv/bin/python benchmarks/memory.py [--memory-limit 2GiB] [--duration 60] [--connections 16]

Every request is 16 multipart parts of the same flat 5000×5000 PNG (84 KB each, 1.3 MB a request, each image within
``DETECTOR_MAX_PIXELS``; 400 M decoded pixels a request). The service (``python -m api``, default model, ``auto``
backend) gets the pixel budget ``api.memory`` derives from a ``--memory-limit`` cgroup limit, given as
``DETECTOR_MAX_INFLIGHT_PIXELS`` (``--no-budget``: none set, as before the budget existed). Two scenarios, one after
the other on the same process:

- ``3 at once``: three such requests sent at the same moment;
- ``N for a minute``: ``--connections`` keep-alive connections posting them back to back for ``--duration`` seconds.

The server's RSS is sampled every 10 ms from ``/proc/PID/status`` (and its ``VmHWM`` reset between scenarios through
``/proc/PID/clear_refs``): printed are the idle RSS before, and per scenario the peak, the RSS ``--settle`` seconds
after the last answer, and the count of each status (only 200 and 503 are acceptable; a 503 must carry
``Retry-After``). Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import io
import re
import sys
import threading
import time
import uuid
from pathlib import Path

from _service import running_service
from PIL import Image

from api.memory import pixel_budget
from detector.machine import describe_cpu_line

_SIZE = re.compile(r"^\s*([0-9.]+)\s*(B|KiB|MiB|GiB)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30}


def parse_size(text: str) -> int:
    """``"2GiB"`` → 2147483648 (units B, KiB, MiB, GiB; none: bytes)."""
    match = _SIZE.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 2GiB, 1536MiB)")
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "b").lower()])


def flat_png(side: int, mode: str = "RGB") -> bytes:
    """A flat ``side``×``side`` PNG (a few dozen KB that decode to ``3 · side²`` bytes); RGBA, translucent, takes
    Pillow's path (compositing onto white) instead of OpenCV's."""
    buffer = io.BytesIO()
    Image.new(mode, (side, side), (90, 120, 150, 200)[: len(mode)]).save(buffer, "PNG")
    return buffer.getvalue()


def multipart(image: bytes, parts: int) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body of ``parts`` copies of ``image`` as parts named ``image``, and its type."""
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="flat.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    body = b"".join(head + image + b"\r\n" for _ in range(parts)) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def status_field(pid: int, field: str) -> int:
    """A ``kB`` field of ``/proc/PID/status`` (``VmRSS``, ``VmHWM``), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for {pid}")


def reset_peak(pid: int) -> None:
    """Reset the kernel's ``VmHWM`` of ``pid`` to its current RSS (``clear_refs`` 5, Linux ≥ 4.0)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


class RssSampler:
    """Samples ``pid``'s RSS every ``interval_s`` in a thread; ``peak`` is the highest seen (and ``VmHWM``)."""

    def __init__(self, pid: int, interval_s: float = 0.01):
        self.pid, self.interval_s = pid, interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        reset_peak(self.pid)
        self.peak = status_field(self.pid, "VmRSS")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, status_field(self.pid, "VmHWM"))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, status_field(self.pid, "VmRSS"))


class Poster:
    """One keep-alive connection posting the same multipart body to ``/v1/detect``."""

    def __init__(self, url: str, body: bytes, content_type: str):
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.body, self.content_type = body, content_type
        self.connection = http.client.HTTPConnection(self.host, self.port, timeout=120)

    def post(self) -> str:
        """Post once; the status as text (``"503"``, or ``"503 without Retry-After"``, ``"error: ..."``)."""
        try:
            self.connection.request("POST", "/v1/detect", body=self.body, headers={"Content-Type": self.content_type})
            response = self.connection.getresponse()
            response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.connection.close()
            self.connection = http.client.HTTPConnection(self.host, self.port, timeout=120)
            return f"error: {type(exc).__name__}"
        if response.status == 503 and response.getheader("Retry-After") is None:
            return "503 without Retry-After"
        return str(response.status)


def run_clients(url: str, body: bytes, content_type: str, connections: int, until: float | None) -> collections.Counter:
    """``connections`` clients started together; each posts once (``until`` None) or until ``until``."""
    statuses: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    start = threading.Barrier(connections)

    def client() -> None:
        poster = Poster(url, body, content_type)
        counts: collections.Counter[str] = collections.Counter()
        start.wait()
        while True:
            counts[poster.post()] += 1
            if until is None or time.monotonic() >= until:
                break
        poster.connection.close()
        with lock:
            statuses.update(counts)

    threads = [threading.Thread(target=client) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def mib(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB"


def loaded_rss(env: dict[str, str]) -> int:
    """The service's RSS once ready and idle, from a start of its own (what the service sizes its budget from)."""
    with running_service(env) as (_, pid):
        time.sleep(2)
        return status_field(pid, "VmRSS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--memory-limit", type=parse_size, default=parse_size("2GiB"), help="the replica's limit")
    parser.add_argument("--no-budget", action="store_true", help="leave DETECTOR_MAX_INFLIGHT_PIXELS unset")
    parser.add_argument("--side", type=int, default=5000, help="the flat PNG's width and height")
    parser.add_argument("--mode", choices=["RGB", "RGBA"], default="RGB", help="RGBA: decoded through Pillow")
    parser.add_argument("--parts", type=int, default=16, help="images per request")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of the second scenario (0: skip it)")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after a scenario before the RSS reading")
    args = parser.parse_args()

    body, content_type = multipart(flat_png(args.side, args.mode), args.parts)
    env = {"DETECTOR_LOG_LEVEL": "WARNING"}
    print(describe_cpu_line())
    if not args.no_budget:
        # As the service sizes it in a container with this limit: from the memory left once its models are loaded.
        loaded = loaded_rss(env)
        env["DETECTOR_MAX_INFLIGHT_PIXELS"] = str(pixel_budget(args.memory_limit, loaded))
        print(
            f"budget: {int(env['DETECTOR_MAX_INFLIGHT_PIXELS']) / 1e6:.0f} M pixels "
            f"(limit {mib(args.memory_limit)}, {mib(loaded)} loaded)"
        )
    print(
        f"each request: {args.parts} × {args.side}×{args.side} flat {args.mode} PNG ({len(body) / 1e6:.2f} MB, "
        f"{args.parts * args.side**2 / 1e6:.0f} M pixels)",
        flush=True,
    )
    scenarios = [("3 at once", 3, 0.0)]
    if args.duration > 0:
        scenarios.append((f"{args.connections} connections for {args.duration:g} s", args.connections, args.duration))
    rows = []
    with running_service(env) as (url, pid):
        time.sleep(2)
        idle = status_field(pid, "VmRSS")
        print(f"idle RSS {mib(idle)}", flush=True)
        for name, connections, duration in scenarios:
            with RssSampler(pid) as sampler:
                started = time.monotonic()
                statuses = run_clients(url, body, content_type, connections, started + duration if duration else None)
                took = time.monotonic() - started
                time.sleep(args.settle)
            after = status_field(pid, "VmRSS")
            counts = ", ".join(f"{status}: {n}" for status, n in sorted(statuses.items()))
            rows.append((name, sampler.peak, after, counts, took))
            print(f"{name}: peak {mib(sampler.peak)}, after {mib(after)}; {counts} in {took:.1f} s", flush=True)
    print()
    print(f"idle RSS before: {mib(idle)}")
    print("| scenario | peak RSS | RSS after | statuses | took |")
    print("|---|---|---|---|---|")
    for name, peak, after, counts, took in rows:
        print(f"| {name} | {mib(peak)} | {mib(after)} | {counts} | {took:.1f} s |")
    bad = [r for r in rows if any(s.split(":")[0] not in ("200", "503") for s in r[3].split(", "))]
    if bad or any(peak > args.memory_limit for _, peak, *_ in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
