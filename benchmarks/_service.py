"""Helpers shared by the service benchmarks: start ``python -m api`` on a free loopback port (``tests.harness.live``),
talk to it, read its metrics and memory."""

from __future__ import annotations

import contextlib
import http.client
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from detector.samples import PHOTOS, photo  # noqa: E402
from tests.harness.live import running_service as live_service  # noqa: E402

CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}


def load_photos() -> list[tuple[str, bytes, str]]:
    """(name, bytes, content type) of each test photograph."""
    return [(name, photo(name).read_bytes(), CONTENT_TYPES[Path(name).suffix]) for name in PHOTOS]


@contextlib.contextmanager
def running_service(env: dict[str, str] | None = None) -> Iterator[tuple[str, int]]:
    """Start ``python -m api`` on 127.0.0.1; yields (base url, pid)."""
    with live_service(env) as service:
        yield service.url, service.process.pid


def metric_values(url: str, names: tuple[str, ...]) -> dict[str, float]:
    """The current value of each named sample (summed over labels) from ``/metrics``."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    values = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        sample, _, value = line.rpartition(" ")
        name = sample.split("{", 1)[0]
        if name in values:
            values[name] += float(value)
    return values


def rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


class Client:
    """One keep-alive HTTP/1.1 connection posting raw image bodies to ``/v1/detect``."""

    def __init__(self, url: str, timeout_s: float = 60.0):
        host, port = url.removeprefix("http://").split(":")
        self.connection = http.client.HTTPConnection(host, int(port), timeout=timeout_s)

    def detect(self, body: bytes, content_type: str, query: str = "") -> tuple[int, bytes]:
        """POST one image; (status, response body); status 0 for a connection error."""
        try:
            self.connection.request("POST", f"/v1/detect{query}", body=body, headers={"Content-Type": content_type})
            response = self.connection.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException):
            self.connection.close()
            return 0, b""

    def close(self) -> None:
        self.connection.close()
