"""The OpenAPI schema documents every status each endpoint returns, in each protocol's error body; schemathesis
(generated requests, positive and negative, against the live service with keys on) finds nothing it contradicts."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import Settings
from tests.support import FakeDetector, two_model_service


@pytest.fixture(scope="module")
def schema() -> dict:
    app = create_app(Settings(threads=1, drain_delay_s=0), detector=FakeDetector())
    return TestClient(app).get("/openapi.json").json()


def statuses(schema: dict, path: str, method: str) -> set[str]:
    return set(schema["paths"][path][method]["responses"])


OPEN = {"/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"}


def test_every_protected_operation_documents_401_and_every_open_one_does_not(schema: dict) -> None:
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            assert ("401" in operation["responses"]) == (path not in OPEN), (method, path)


@pytest.mark.parametrize(
    ("path", "method", "expected"),
    [
        ("/v1/detect", "post", {"200", "401", "413", "415", "422", "500", "503", "504"}),
        ("/v1/detect/render", "post", {"200", "401", "413", "415", "422", "500", "503", "504"}),
        ("/v1/models/{model}/detect", "post", {"200", "401", "404", "413", "415", "422", "500", "503", "504"}),
        ("/v1/models/{model}/detect/render", "post", {"200", "401", "404", "413", "415", "422", "500", "503", "504"}),
        ("/v1/model", "get", {"200", "401", "503"}),
        ("/v1/models", "get", {"200", "401", "503"}),
        ("/v1/models/{model}", "get", {"200", "401", "404", "422", "503"}),
        ("/v1/vision/detection", "post", {"200", "400", "401", "413", "415", "500", "503", "504"}),
        ("/v1/vision/custom/{model}", "post", {"200", "400", "401", "404", "413", "415", "500", "503", "504"}),
        ("/v1/vision/custom/list", "post", {"200", "400", "401", "413", "503"}),
        ("/v2", "get", {"200", "401"}),
        ("/v2/health/live", "get", {"200", "500"}),
        ("/v2/health/ready", "get", {"200", "503"}),
        ("/v2/models/{model}", "get", {"200", "401", "404", "503"}),
        ("/v2/models/{model}/ready", "get", {"200", "401", "404", "503"}),
        ("/v2/models/{model}/infer", "post", {"200", "400", "401", "404", "413", "500", "503", "504"}),
        (
            "/v2/models/{model}/versions/{version}/infer",
            "post",
            {"200", "400", "401", "404", "413", "500", "503", "504"},
        ),
        ("/healthz", "get", {"200", "500"}),
        ("/readyz", "get", {"200", "503"}),
    ],
)
def test_the_statuses_each_operation_returns(schema: dict, path: str, method: str, expected: set[str]) -> None:
    assert statuses(schema, path, method) == expected


def test_error_bodies_are_each_protocol_s(schema: dict) -> None:
    def ref(path: str, method: str, status: str) -> str:
        return schema["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]["$ref"]

    assert ref("/v1/detect", "post", "422").endswith("/ErrorBody")
    assert ref("/v1/vision/detection", "post", "400").endswith("/DeepStackErrorBody")
    assert ref("/v2/models/{model}/infer", "post", "400").endswith("/KServeErrorBody")
    assert "HTTPValidationError" not in str(schema["paths"]["/v1/detect"])  # ours is reshaped, so documented as ours
    retry = schema["paths"]["/v1/detect"]["post"]["responses"]["503"]["headers"]
    assert set(retry) == {"Retry-After"}


def test_request_bodies_cannot_be_empty(schema: dict) -> None:
    multipart = schema["paths"]["/v1/detect"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert multipart["required"] == ["image"] and multipart["properties"]["image"]["minItems"] == 1
    deepstack = schema["paths"]["/v1/vision/detection"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert deepstack["schema"]["required"] == ["image"]
    infer = schema["paths"]["/v2/models/{model}/infer"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert infer["properties"]["inputs"]["minItems"] == 1 and "$ref" not in str(infer)


# Every check, but: positive_data_acceptance (a schema cannot say "a real photograph", so generated binary "images" are
# rightly refused), and, on the DeepStack form routes, negative_data_rejection (a form's fields are text on the wire:
# an api_key "made a number" is the same text as a valid string, and an empty array is an absent field, so those
# "invalid" requests are valid ones). ignored_auth drops the key sent with every request and expects 401.
SCHEMATHESIS_CONFIG = """
[checks]
positive_data_acceptance.enabled = false

[[operations]]
include-tag = "deepstack"
checks.negative_data_rejection.enabled = false

[dictionaries.models]
values = ["coco", "person"]

[dictionaries.versions]
values = ["1"]

[parameters]
"path.model" = { dictionary = "models", probability = 0.8 }
"path.version" = { dictionary = "versions", probability = 0.8 }
"""


@pytest.mark.slow
def test_schemathesis_finds_no_failure_against_the_live_service(tmp_path: Path) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG)
    schemathesis = Path(sys.executable).with_name("schemathesis")
    env = {"DETECTOR_API_KEYS": "schema-key", "DETECTOR_MAX_BODY_BYTES": str(2 * 1024 * 1024)}
    with two_model_service(**env) as service:
        started = time.monotonic()
        # Every check but positive_data_acceptance: a schema cannot say "a real photograph", so generated binary
        # "images" are rightly refused. With the key sent on every request, ignored_auth drops it and expects 401.
        result = subprocess.run(
            [str(schemathesis), "--config-file", str(config), "run", f"{service.url}/openapi.json",
             "--header", "X-API-Key: schema-key", "--generation-with-security-parameters", "false",
             "--max-examples", "50", "--seed", "12", "--workers", "1", "--generation-database", "none",
             "--phases", "examples,coverage,fuzzing", "--suppress-health-check", "all",
             "--request-timeout", "30", "--no-color"],
            capture_output=True, text=True, timeout=300, cwd=tmp_path,  # schemathesis writes .schemathesis/ there
        )  # fmt: skip
        took = time.monotonic() - started
    print(result.stdout[-3000:], f"\nschemathesis took {took:.1f} s")
    assert result.returncode == 0, result.stdout[-12000:] + result.stderr[-3000:]
    assert "0 failures" in result.stdout or "passed" in result.stdout
