"""Startup as Kubernetes probes it: the socket opens before the models load; meanwhile liveness answers 200 and
readiness and detection 503 ``not_ready``; a model that fails to load turns liveness to 500, and ``python -m api``
exits with status 1.

The app and uvicorn are the real ones, serving on a loopback port from a thread; only the loading is held back
(``api.main.load_models`` swapped for one that waits for the test) so that the window is observed, not raced.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import api.main
from api.main import create_app
from api.settings import Settings
from tests.harness.live import free_port, serving_in_thread
from tests.support import FakeDetector, encode, random_rgb

PNG = encode(random_rgb(8, 6))


def settings() -> Settings:
    return Settings(threads=1, max_wait_ms=0, drain_delay_s=0, grpc_port=0)


def call(url: str, body: bytes | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "image/png"} if body else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@contextlib.contextmanager
def serving(app) -> Iterator[str]:
    """``app`` under uvicorn on a free loopback port, from a thread; its URL once the socket is open."""
    with serving_in_thread(app) as port:
        yield f"http://127.0.0.1:{port}"


def test_health_is_served_while_the_models_load(monkeypatch) -> None:
    release = threading.Event()

    def slow_load(*args, **kwargs):
        assert release.wait(30), "the test never released the loading"
        return {"coco": FakeDetector("coco-fake")}

    monkeypatch.setattr(api.main, "load_models", slow_load)
    with serving(create_app(settings())) as url:
        assert call(f"{url}/healthz") == (200, {"status": "alive"})
        not_ready = {"error": {"code": "not_ready", "message": "the model is not loaded yet"}}
        assert call(f"{url}/readyz") == (503, not_ready)
        loading = {"error": {"code": "not_ready", "message": "the model is still loading"}}
        assert call(f"{url}/v1/detect", PNG) == (503, loading)
        release.set()
        deadline = time.monotonic() + 10
        while call(f"{url}/readyz")[0] != 200:
            assert time.monotonic() < deadline, "not ready 10 s after the models were loaded"
            time.sleep(0.02)
        status, body = call(f"{url}/v1/detect", PNG)
        assert status == 200 and [d["label"] for d in body["results"][0]["detections"]] == ["person", "cat"]


def test_a_model_that_fails_to_load_fails_liveness(monkeypatch) -> None:
    def broken_load(*args, **kwargs):
        raise ValueError("no such weights")

    monkeypatch.setattr(api.main, "load_models", broken_load)
    app = create_app(settings())
    with serving(app) as url:
        deadline = time.monotonic() + 10
        while app.state.service.load_error is None:
            assert time.monotonic() < deadline, "loading neither failed nor finished"
            time.sleep(0.02)
        failed = {"error": {"code": "internal_error", "message": "loading the models failed"}}
        assert call(f"{url}/healthz") == (500, failed)
        assert call(f"{url}/readyz")[0] == 503
    assert app.state.service.load_error == "ValueError: no such weights"


def test_python_m_api_exits_1_when_the_model_does_not_load(tmp_path) -> None:
    missing = tmp_path / "missing.safetensors"
    env = {"DETECTOR_WEIGHTS": str(missing), "DETECTOR_PORT": str(free_port()), "DETECTOR_HOST": "127.0.0.1"}
    done = subprocess.run(
        [sys.executable, "-m", "api"], env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1, done.stderr[-3000:]
    messages = [json.loads(line)["message"] for line in done.stderr.splitlines() if line.startswith("{")]
    assert "loading the models failed" in messages
