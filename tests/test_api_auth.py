"""Optional API keys: parsing the setting, the three ways to present a key, the open endpoints, each protocol's 401,
constant-time comparison against every key, and keys never logged."""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.auth import ApiKeys
from api.main import create_app
from api.settings import Settings
from tests.support import FakeDetector, encode, random_rgb

PNG = encode(random_rgb(8, 6))
KEYS = "first-key,second-key"


def settings(**overrides) -> Settings:
    return Settings(**{"threads": 1, "max_wait_ms": 0, "drain_delay_s": 0, "api_keys": KEYS, **overrides})


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(create_app(settings(), detectors={"coco": FakeDetector("coco-fake")})) as c:
        yield c


OURS = {
    "error": {
        "code": "unauthorized",
        "message": "a valid API key is required: send it as X-API-Key or Authorization: Bearer",
    }
}
DEEPSTACK = {"success": False, "error": "Incorrect api key", "duration": 0}
KSERVE = {"error": "a valid API key is required: send it as X-API-Key or Authorization: Bearer"}


# --- the setting --------------------------------------------------------------------------------------------------


def test_keys_are_off_by_default_and_when_empty() -> None:
    assert ApiKeys.parse(None) is None and ApiKeys.parse("") is None and ApiKeys.parse("  ") is None
    assert Settings(threads=1).api_key_set() is None


def test_keys_from_a_comma_separated_list() -> None:
    keys = ApiKeys.parse(" a , b,,c ")
    assert keys is not None and len(keys) == 3
    assert keys.accepts("b") and not keys.accepts(" b") and not keys.accepts("") and not keys.accepts(None)


def test_keys_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("# rotated 2026-01\nalpha\n\n beta , gamma\n# old: delta\n")
    keys = ApiKeys.parse(str(path))
    assert keys is not None and len(keys) == 3
    assert all(keys.accepts(key) for key in ("alpha", "beta", "gamma")) and not keys.accepts("delta")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("/run/secrets/missing", "DETECTOR_API_KEYS looks like a path, but no such file exists"),
        (",,", "DETECTOR_API_KEYS is set but holds no key"),
    ],
)
def test_bad_settings_are_refused_at_start(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings(threads=1, api_keys=value)


def test_keys_never_show_in_settings_repr_or_dump() -> None:
    s = settings()
    assert "first-key" not in repr(s) and "first-key" not in json.dumps(s.model_dump(mode="json"))
    assert "first-key" not in repr(s.api_key_set())


def test_every_key_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    keys = ApiKeys(["k1", "k2", "k3"])
    assert keys.accepts("k1")  # a match on the first key still compares the others
    assert [b for _, b in calls] == [b"k1", b"k2", b"k3"]


# --- presenting a key ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{"X-API-Key": "first-key"}, {"X-API-Key": "second-key"}, {"Authorization": "Bearer second-key"}],
    ids=["x-api-key", "second-key", "bearer"],
)
def test_a_valid_key_in_a_header_is_accepted_everywhere(client: TestClient, headers: dict[str, str]) -> None:
    image = {"Content-Type": "image/png", **headers}
    assert client.post("/v1/detect", content=PNG, headers=image).status_code == 200
    assert client.post("/v1/models/coco/detect", content=PNG, headers=image).status_code == 200
    assert client.get("/v1/models", headers=headers).status_code == 200
    assert client.get("/v2/models/coco", headers=headers).status_code == 200
    assert client.get("/v2", headers=headers).status_code == 200
    files = {"image": ("i", PNG, "image/png")}
    assert client.post("/v1/vision/detection", files=files, headers=headers).status_code == 200


def test_deepstack_s_api_key_field_is_accepted_on_its_routes(client: TestClient) -> None:
    files = {"image": ("i", PNG, "image/png")}
    for path in ("/v1/vision/detection", "/v1/vision/custom/coco"):
        assert client.post(path, files=files, data={"api_key": "first-key"}).status_code == 200
    assert client.post("/v1/vision/custom/list", data={"api_key": "second-key"}).json()["models"] == ["coco"]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "body"),
    [
        ("POST", "/v1/detect", {"content": PNG, "headers": {"Content-Type": "image/png"}}, OURS),
        ("POST", "/v1/detect/render", {"content": PNG, "headers": {"Content-Type": "image/png"}}, OURS),
        ("POST", "/v1/models/coco/detect", {"content": PNG, "headers": {"Content-Type": "image/png"}}, OURS),
        ("GET", "/v1/model", {}, OURS),
        ("GET", "/v1/models", {}, OURS),
        ("GET", "/v1/models/coco", {}, OURS),
        ("POST", "/v1/vision/detection", {"files": {"image": ("i", PNG, "image/png")}}, DEEPSTACK),
        ("POST", "/v1/vision/custom/coco", {"files": {"image": ("i", PNG, "image/png")}}, DEEPSTACK),
        ("POST", "/v1/vision/custom/list", {}, DEEPSTACK),
        ("GET", "/v2", {}, KSERVE),
        ("GET", "/v2/models/coco", {}, KSERVE),
        ("GET", "/v2/models/coco/ready", {}, KSERVE),
        (
            "POST",
            "/v2/models/coco/infer",
            {"content": PNG, "headers": {"Inference-Header-Content-Length": "0"}},
            KSERVE,
        ),
    ],
)
def test_no_or_a_wrong_key_is_401_in_the_protocol_s_shape(
    client: TestClient, method: str, path: str, kwargs: dict, body: dict
) -> None:
    for credentials in (
        {},
        {"X-API-Key": "wrong"},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic Zmlyc3Qta2V5Og=="},
    ):
        headers = {**kwargs.get("headers", {}), **credentials}
        response = client.request(method, path, **{**kwargs, "headers": headers})
        assert (response.status_code, response.json()) == (401, body), (path, credentials)
        assert response.headers["www-authenticate"] == 'Bearer realm="detector"'


def test_a_wrong_deepstack_field_is_401(client: TestClient) -> None:
    response = client.post("/v1/vision/detection", files={"image": ("i", PNG, "image/png")}, data={"api_key": "x"})
    assert (response.status_code, response.json()) == (401, DEEPSTACK)


def test_the_key_is_checked_before_the_model_or_the_body(client: TestClient) -> None:
    # No model names leak to a client without a key, and no upload is decoded for it.
    assert client.get("/v1/models/secret-model").status_code == 401
    assert client.post("/v1/detect", content=b"junk", headers={"Content-Type": "text/plain"}).status_code == 401
    assert client.post("/v2/models/secret/infer", content=b"{").status_code == 401


def test_health_readiness_metrics_docs_and_page_stay_open(client: TestClient) -> None:
    for path in (
        "/healthz",
        "/readyz",
        "/metrics",
        "/v2/health/live",
        "/v2/health/ready",
        "/",
        "/docs",
        "/openapi.json",
    ):
        assert client.get(path).status_code == 200, path


def test_unauthorized_requests_are_counted(client: TestClient) -> None:
    client.get("/v1/models")
    assert 'detector_rejections_total{reason="unauthorized"} 1.0' in client.get("/metrics").text


def test_the_openapi_schema_declares_both_schemes(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"] == {
        "APIKeyHeader": {
            "type": "apiKey",
            "description": "an API key, when the service has DETECTOR_API_KEYS set",
            "in": "header",
            "name": "X-API-Key",
        },
        "HTTPBearer": {
            "type": "http",
            "description": "an API key as a bearer token, when DETECTOR_API_KEYS is set",
            "scheme": "bearer",
        },
    }
    assert schema["paths"]["/v1/detect"]["post"]["security"] == [{"APIKeyHeader": []}, {"HTTPBearer": []}]
    assert "security" not in schema["paths"]["/healthz"]["get"]


@pytest.mark.slow
def test_keys_are_not_logged_by_the_live_service(tmp_path: Path) -> None:
    import httpx

    from tests.harness.live import running_service

    path = tmp_path / "keys"
    path.write_text("live-secret-key\n")
    with running_service({"DETECTOR_API_KEYS": str(path), "DETECTOR_WEIGHTS": "person"}) as service:
        files = {"image": ("i", PNG, "image/png")}
        assert (
            httpx.post(f"{service.url}/v1/vision/detection", files=files, data={"api_key": "nope"}).status_code == 401
        )
        ok = httpx.post(f"{service.url}/v1/detect", files=files, headers={"Authorization": "Bearer live-secret-key"})
        assert ok.status_code == 200
        log = service.log()
    assert "live-secret-key" not in log and "nope" not in log
    (start,) = [json.loads(line) for line in log.splitlines() if '"message": "starting"' in line]
    assert start["settings"]["api_keys"] == "**********"


def test_the_stdlib_logger_never_sees_a_key(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        client.post("/v1/detect", content=PNG, headers={"Content-Type": "image/png", "X-API-Key": "first-key"})
        client.get("/v1/models", headers={"Authorization": "Bearer wrong-key"})
    assert "first-key" not in caplog.text and "wrong-key" not in caplog.text


@pytest.mark.slow
def test_the_page_asks_for_a_key_and_sends_it() -> None:
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip("Debian's chromium is not installed (run `make browser`, which uses apt-get)")
    from playwright.sync_api import sync_playwright

    from detector.samples import photo
    from tests.harness.live import running_service

    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-sync"]
    env = {"DETECTOR_API_KEYS": "page-key", "DETECTOR_WEIGHTS": "person"}
    with running_service(env) as service, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=args)
        try:
            page = browser.new_page()
            prompts: list[str] = []

            def answer(dialog) -> None:
                prompts.append(dialog.message)
                dialog.accept("page-key")

            page.on("dialog", answer)
            sent: list[str | None] = []
            page.on("request", lambda request: sent.append(request.headers.get("x-api-key")))
            page.goto(f"{service.url}/")
            page.set_input_files("#file", str(photo("grace_hopper.jpg")))
            page.wait_for_selector("#canvas[data-state=done]", timeout=60_000)
            assert prompts == ["This service needs an API key:"]  # once: the key is kept for the tab
            assert "page-key" in sent and "person" in page.inner_text("#detections")
        finally:
            browser.close()
