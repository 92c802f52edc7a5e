"""A real ``python -m api`` process on a free loopback port, for the tests and benchmarks that need one."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class LiveService:
    """A running service: its base URL, process and log file."""

    url: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        """Everything the service wrote so far."""
        return self.log_path.read_text(errors="replace")


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that nothing listens on, on 127.0.0.1, right now."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    return free_ports(1)[0]


def wait_ready(url: str, process: subprocess.Popen, log_path: Path, timeout_s: float) -> None:
    """Poll ``/readyz`` until 200; raise if the process exits or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the service exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
            if response.status == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the service was not ready after {timeout_s} s:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.2)


@contextlib.contextmanager
def running_service(env: dict[str, str] | None = None, timeout_s: float = 120.0) -> Iterator[LiveService]:
    """Start ``python -m api`` bound to 127.0.0.1 with ``DETECTOR_*`` overrides; SIGTERM (then kill) at the end."""
    port = free_port()
    log_file = tempfile.NamedTemporaryFile(prefix="detector-service-", suffix=".log", delete=False)  # noqa: SIM115
    full_env = {**os.environ, "DETECTOR_HOST": "127.0.0.1", "DETECTOR_PORT": str(port), "DETECTOR_DRAIN_DELAY_S": "0"}
    full_env["DETECTOR_GRPC_PORT"] = "0"  # gRPC off unless asked for: several services would all want port 8001
    full_env.update(env or {})
    process = subprocess.Popen(
        [sys.executable, "-m", "api"], cwd=ROOT, env=full_env, stdout=log_file, stderr=subprocess.STDOUT
    )
    service = LiveService(f"http://127.0.0.1:{port}", process, Path(log_file.name))
    try:
        wait_ready(service.url, process, service.log_path, timeout_s)
        yield service
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log_file.close()


@contextlib.contextmanager
def serving_in_thread(app: object) -> Iterator[int]:
    """``app`` (an ASGI app) under uvicorn on a free loopback port, in a thread of this process; yields the port once
    the socket is open, and stops the server on leaving."""
    import threading

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield server.config.port
    finally:
        server.should_exit = True
        thread.join(30)
