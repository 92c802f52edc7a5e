"""The load-balanced stack under failure: replicas behind nginx, steady load, a SIGKILL, a SIGTERM, two restarts.

Runs the repository's nginx config (``docker/nginx.conf.template`` with the server parameters of
``docker/nginx-replicas.conf``) in front of three replicas on loopback ports, either as plain processes
(``python -m api``) or as containers of the image (``podman run --network host``). A closed-loop client posts real
photographs through nginx the whole time; meanwhile one replica is killed with SIGKILL and restarted a second later,
another gets SIGTERM (it drains and exits) and is restarted once it has exited. Reported: requests, failures (any
answer but 200, or no answer), p50/p99 latency before, during and after, and for each restarted replica the time
from its restart to its first answered request (nginx's access log says which replica answered).

``benchmarks/stack.py`` runs the drill and prints its table; ``tests/test_stack.py`` runs it in CI. Needs nginx
(Debian's ``nginx`` package) and, for containers, podman prepared by ``shared/tools/containers-setup.sh``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness.live import free_ports

ROOT = Path(__file__).resolve().parents[2]
NGINX_TEMPLATE = ROOT / "docker" / "nginx.conf.template"
NGINX_REPLICAS = ROOT / "docker" / "nginx-replicas.conf"
NGINX_GRPC_TEMPLATE = ROOT / "docker" / "nginx-grpc.conf.template"
NGINX_GRPC_REPLICAS = ROOT / "docker" / "nginx-replicas-grpc.conf"
MEDIA_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}
# One torch thread per replica, as docker-compose.yml runs them.
# gRPC off: the replicas share the host (and would all want port 8001); tests/test_protocol_grpc.py covers it.
REPLICA_ENV = {"DETECTOR_THREADS": "1", "DETECTOR_GRPC_PORT": "0"}


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """The status of ``GET url``, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1) -> float:
    """Poll ``predicate`` until it is true; return the time.time() it first was. Raises TimeoutError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.time()
        time.sleep(interval)
    raise TimeoutError(f"{what}: not within {timeout:.0f} s")


# --- nginx ------------------------------------------------------------------------------------------------------


def _rendered(template: Path, values: dict[str, str]) -> str:
    """``template`` with its ``${NAME}`` filled in, as the nginx image's envsubst does."""
    text = template.read_text()
    for name, value in values.items():
        text = text.replace("${" + name + "}", value)
    if unfilled := re.findall(r"\$\{\w+\}", text):
        raise ValueError(f"{template.name}: no value for {sorted(set(unfilled))}")
    return text


def _replica_lines(replicas: Path, compose_address: str, ports: Sequence[int]) -> str:
    """``server`` lines for loopback ``ports`` with the parameters of ``replicas``' line for ``compose_address``."""
    match = re.search(rf"^\s*server\s+{re.escape(compose_address)}\s+(.*);", replicas.read_text(), re.MULTILINE)
    if match is None:
        raise ValueError(f"{replicas}: no `server {compose_address} ...;` line")
    parameters = " ".join(p for p in match.group(1).split() if p != "resolve")
    return "".join(f"server 127.0.0.1:{port} {parameters};\n" for port in ports)


def render_nginx_config(
    directory: Path,
    listen_port: int,
    replica_ports: Sequence[int],
    max_body_bytes: int,
    *,
    grpc_listen_port: int | None = None,
    grpc_replica_ports: Sequence[int] = (),
) -> Path:
    """Write nginx.conf (the template, rendered like the nginx image's envsubst) and its replica list; with
    ``grpc_listen_port``, also the gRPC front (docker/nginx-grpc.conf.template) to ``grpc_replica_ports``.

    The replica lines keep the parameters of docker/nginx-replicas.conf (passive failure detection), with loopback
    addresses instead of Compose's ``api`` name and without ``resolve`` (nothing to re-resolve here).
    """
    values = {"NGINX_PORT": f"127.0.0.1:{listen_port}", "DETECTOR_MAX_BODY_BYTES": str(max_body_bytes)}
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "detector-replicas.conf").write_text(_replica_lines(NGINX_REPLICAS, "api:8000", replica_ports))
    if grpc_listen_port is not None:
        grpc = _rendered(NGINX_GRPC_TEMPLATE, {"NGINX_GRPC_PORT": f"127.0.0.1:{grpc_listen_port}"})
        (directory / "detector-grpc.conf").write_text(grpc)
        replicas = _replica_lines(NGINX_GRPC_REPLICAS, "api:8001", grpc_replica_ports)
        (directory / "detector-replicas-grpc.conf").write_text(replicas)
    config = directory / "nginx.conf"
    config.write_text(_rendered(NGINX_TEMPLATE, values))
    return config


def find_nginx() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


class Nginx:
    """nginx in the foreground with the rendered config; its JSON access log goes to ``access.log``."""

    def __init__(
        self,
        directory: Path,
        port: int,
        replica_ports: Sequence[int],
        max_body_bytes: int,
        *,
        grpc_port: int | None = None,
        grpc_replica_ports: Sequence[int] = (),
    ):
        self.directory = directory
        self.port = port
        self.grpc_port = grpc_port
        self.config = render_nginx_config(
            directory,
            port,
            replica_ports,
            max_body_bytes,
            grpc_listen_port=grpc_port,
            grpc_replica_ports=grpc_replica_ports,
        )
        self.access_log = directory / "access.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        nginx = find_nginx()
        if nginx is None:
            raise FileNotFoundError("nginx is not installed (apt-get install nginx)")
        global_directives = f"daemon off; pid {self.directory / 'nginx.pid'};"
        command = [nginx, "-p", str(self.directory), "-c", str(self.config), "-e", "stderr", "-g", global_directives]
        with open(self.access_log, "ab") as out, open(self.directory / "error.log", "ab") as err:
            self.process = subprocess.Popen(command, stdout=out, stderr=err, start_new_session=True)
        wait_until(lambda: http_status(f"{self.url}/nginx-healthz") == 200, 10, "nginx")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful: finish what is in flight
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def served(self) -> list[dict]:
        """The access log's entries so far."""
        entries = []
        with contextlib.suppress(FileNotFoundError):
            for line in self.access_log.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    entries.append(json.loads(line))
        return entries


# --- replicas ---------------------------------------------------------------------------------------------------


class Replica:
    """One instance of the service on a loopback port: a ``python -m api`` process or a podman container."""

    def __init__(self, port: int, directory: Path, image: str | None = None, podman_args: Sequence[str] = ()):
        self.port = port
        self.directory = directory
        self.image = image
        self.podman_args = list(podman_args)
        self.name = f"detector-stack-{port}"
        self.process: subprocess.Popen | None = None
        self.starts = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        if self.image is None:
            return [sys.executable, "-m", "api"]
        env = [f"--env={k}={v}" for k, v in REPLICA_ENV.items()]
        # PORT, not DETECTOR_PORT: the image's entrypoint maps it, and that is part of what is tested.
        return ["podman", "run", "--rm", f"--name={self.name}", "--network=host", f"--env=PORT={self.port}",
                "--env=DETECTOR_HOST=127.0.0.1", *env, *self.podman_args, self.image]  # fmt: skip

    def start(self) -> float:
        """Start it; returns the time.time() of the start."""
        env = {**os.environ, **REPLICA_ENV, "DETECTOR_HOST": "127.0.0.1", "DETECTOR_PORT": str(self.port)}
        self.starts += 1
        log = self.directory / f"replica-{self.port}.log"
        with open(log, "ab") as out:
            out.write(f"--- start {self.starts}\n".encode())
            out.flush()
            started = time.time()
            self.process = subprocess.Popen(
                self.command(), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        return started

    def ready(self) -> bool:
        """Whether /readyz answers 200. Raises RuntimeError if the replica has exited (no use waiting)."""
        if self.process is not None and self.process.poll() is not None:
            log = (self.directory / f"replica-{self.port}.log").read_text(errors="replace")
            raise RuntimeError(f"replica {self.address} exited with {self.process.returncode}:\n{log[-3000:]}")
        return http_status(f"http://{self.address}/readyz", timeout=1.0) == 200

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the service itself (for a container: to its PID 1, like ``docker kill --signal``)."""
        if self.image is None:
            assert self.process is not None
            self.process.send_signal(sig)
        else:
            subprocess.run(["podman", "kill", f"--signal={sig.name}", self.name], check=True, capture_output=True)

    def wait_exit(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        """Tear down, whatever state it is in."""
        if self.process is None or self.process.poll() is not None:
            return
        if self.image is not None:
            subprocess.run(["podman", "rm", "--force", "--time=5", self.name], capture_output=True, check=False)
        else:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(40)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# --- load -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    start: float  # time.time() the request was sent
    latency: float  # seconds
    status: int | None  # None: no HTTP answer at all
    error: str = ""


class Load:
    """``concurrency`` clients, each posting photos back to back over a keep-alive connection, until stopped.

    Bounded: every client also stops after ``max_seconds``.
    """

    def __init__(self, url: str, photos: Sequence[Path], concurrency: int, max_seconds: float, timeout: float = 60):
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.bodies = [(p.read_bytes(), MEDIA_TYPES[p.suffix.lower()]) for p in photos]
        self.concurrency = concurrency
        self.max_seconds = max_seconds
        self.timeout = timeout
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def _client(self, index: int) -> None:
        deadline = time.monotonic() + self.max_seconds
        connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        n = index
        while not self._stop.is_set() and time.monotonic() < deadline:
            body, media_type = self.bodies[n % len(self.bodies)]
            n += 1
            start, t0 = time.time(), time.perf_counter()
            try:
                connection.request("POST", "/v1/detect", body=body, headers={"Content-Type": media_type})
                response = connection.getresponse()
                payload = response.read()
                status, error = response.status, "" if response.status == 200 else payload[:200].decode("replace")
                if response.will_close:
                    connection.close()
            except (OSError, http.client.HTTPException) as exc:
                status, error = None, f"{type(exc).__name__}: {exc}"
                connection.close()
            with self._lock:
                self.samples.append(Sample(start, time.perf_counter() - t0, status, error))
        connection.close()

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(self.concurrency)]
        for thread in self._threads:
            thread.start()

    def stop(self) -> list[Sample]:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)
        return sorted(self.samples, key=lambda s: s.start)


# --- the drill ----------------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of a non-empty sequence."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@dataclass
class Phase:
    name: str
    requests: int
    failures: int
    p50_ms: float
    p99_ms: float


@dataclass
class Report:
    mode: str
    requests: int
    failures: int
    failure_kinds: dict[str, int]
    retried: int  # requests that nginx sent to more than one replica (client saw one answer)
    phases: list[Phase]
    restart_to_ready_s: dict[str, float]
    restart_to_traffic_s: dict[str, float]
    events: list[tuple[float, str]] = field(default_factory=list)

    def table(self) -> str:
        lines = [
            f"stack drill ({self.mode}): {self.requests} requests, {self.failures} failed, "
            f"{self.retried} retried by nginx on another replica",
            "",
            "| phase | requests | failed | p50 ms | p99 ms |",
            "|---|---:|---:|---:|---:|",
            *(f"| {p.name} | {p.requests} | {p.failures} | {p.p50_ms:.0f} | {p.p99_ms:.0f} |" for p in self.phases),
            "",
            "| restarted replica | restart → ready (s) | restart → first request served (s) |",
            "|---|---:|---:|",
            *(
                f"| {name} | {self.restart_to_ready_s.get(name, math.nan):.1f} | {seconds:.1f} |"
                for name, seconds in self.restart_to_traffic_s.items()
            ),
        ]
        if self.failure_kinds:
            lines += ["", "failures: " + ", ".join(f"{k} ×{n}" for k, n in self.failure_kinds.items())]
        return "\n".join(lines)


class Stack:
    """nginx and ``replicas`` replicas on loopback ports; a context manager that tears everything down."""

    def __init__(
        self,
        directory: Path,
        *,
        replicas: int = 3,
        image: str | None = None,
        podman_args: Sequence[str] = (),
        max_body_bytes: int | None = None,
    ):
        """``image``: run the replicas as podman containers of it (with ``podman_args``); else as processes.

        ``max_body_bytes`` is nginx's body limit: by default the service's own (DETECTOR_MAX_BODY_BYTES).
        """
        if max_body_bytes is None:
            from api.settings import Settings

            max_body_bytes = Settings().max_body_bytes
        nginx_port, *ports = free_ports(replicas + 1)
        self.directory = directory
        self.image = image
        self.max_body_bytes = max_body_bytes
        self.replicas = [Replica(port, directory, image, podman_args) for port in ports]
        self.nginx = Nginx(directory / "nginx", nginx_port, ports, max_body_bytes)

    @property
    def url(self) -> str:
        return self.nginx.url

    def __enter__(self) -> Stack:
        try:
            for replica in self.replicas:
                replica.start()
            self.nginx.start()
            for replica in self.replicas:
                wait_until(replica.ready, 180, f"replica {replica.address} ready", interval=0.25)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        for replica in self.replicas:
            replica.stop()
        self.nginx.stop()

    def first_served_by(self, replica: Replica, since: float) -> float | None:
        """time.time() of the first request after ``since`` that ``replica`` answered with 200, per nginx's log."""
        for entry in self.nginx.served():
            answered_by = entry["upstream"].split(", ")[-1]
            if entry["time"] >= since and answered_by == replica.address and entry["upstream_status"].endswith("200"):
                return float(entry["time"])
        return None


def failure_drill(
    stack: Stack, photos: Sequence[Path], *, phase_s: float = 5.0, concurrency: int = 4, restart_delay_s: float = 1.0
) -> Report:
    """Steady load through nginx; SIGKILL one replica, SIGTERM another, restart both; measure what clients saw.

    Phases by request start: ``before`` the SIGKILL; ``during`` until both restarted replicas answer requests again;
    ``after``, another ``phase_s``.
    """
    killed, terminated = stack.replicas[0], stack.replicas[1]
    events: list[tuple[float, str]] = []

    def note(what: str) -> float:
        now = time.time()
        events.append((now, what))
        return now

    # Every replica has run its first inference before anything is measured.
    for replica in stack.replicas:
        warm = Load(f"http://{replica.address}", photos[:1], concurrency=1, max_seconds=60)
        warm.start()
        time.sleep(0.2)
        warm.stop()

    load = Load(stack.url, photos, concurrency=concurrency, max_seconds=phase_s * 2 + 300)
    load.start()
    t_start = note("load started")
    time.sleep(phase_s)

    t_kill = note(f"SIGKILL {killed.address}")
    killed.signal(signal.SIGKILL)
    killed.wait_exit(30)
    time.sleep(restart_delay_s)  # a restart policy's back-off
    restarts = {killed.address: killed.start()}
    note(f"restarted {killed.address}")

    note(f"SIGTERM {terminated.address}")
    terminated.signal(signal.SIGTERM)
    terminated.wait_exit(60)  # it drains: readiness 503, in-flight requests finish, then it exits
    note(f"{terminated.address} exited")
    restarts[terminated.address] = terminated.start()
    note(f"restarted {terminated.address}")

    ready: dict[str, float] = {}
    traffic: dict[str, float] = {}
    for replica in (killed, terminated):
        ready[replica.address] = wait_until(replica.ready, 180, f"{replica.address} ready again", 0.1)

        def served(replica: Replica = replica) -> bool:
            return stack.first_served_by(replica, restarts[replica.address]) is not None

        wait_until(served, 60, f"{replica.address} serving again")
        traffic[replica.address] = stack.first_served_by(replica, restarts[replica.address]) or math.nan
    t_back = note("both restarted replicas serve again")
    time.sleep(phase_s)
    samples = load.stop()
    t_end = note("load stopped")

    def phase(name: str, begin: float, end: float) -> Phase:
        chosen = [s for s in samples if begin <= s.start < end]
        latencies = [s.latency * 1000 for s in chosen] or [math.nan]
        failed = sum(s.status != 200 for s in chosen)
        return Phase(name, len(chosen), failed, percentile(latencies, 50), percentile(latencies, 99))

    kinds = Counter(
        str(s.status) if s.status is not None else s.error.split(":")[0] for s in samples if s.status != 200
    )
    retried = sum(
        "," in e["upstream"]
        for e in stack.nginx.served()
        if t_start <= e["time"] <= t_end + 60 and e["uri"] == "/v1/detect"
    )
    return Report(
        mode=f"image {stack.image}" if stack.image else "plain processes",
        requests=len(samples),
        failures=sum(s.status != 200 for s in samples),
        failure_kinds=dict(kinds),
        retried=retried,
        phases=[phase("before", t_start, t_kill), phase("during", t_kill, t_back), phase("after", t_back, t_end)],
        restart_to_ready_s={a: ready[a] - restarts[a] for a in restarts},
        restart_to_traffic_s={a: traffic[a] - restarts[a] for a in restarts},
        events=[(t - t_start, what) for t, what in events],
    )
