"""Several models in one service: settings, naming, the routes per model, readiness and metrics, with fakes; then
the built-in ``coco`` and ``person`` models served at once by a live service, each answering with its own labels."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.models import check_names, served_name
from api.settings import Settings
from detector.samples import photo
from tests.support import FakeDetector, encode, random_rgb, two_model_service

PNG = encode(random_rgb(8, 6))


def settings(**overrides) -> Settings:
    return Settings(**{"threads": 1, "max_wait_ms": 0, "drain_delay_s": 0, **overrides})


@pytest.fixture
def models() -> dict[str, FakeDetector]:
    return {"street": FakeDetector("street-v2", ("person", "car")), "pets": FakeDetector("pets-v1", ("dog", "cat"))}


@pytest.fixture
def client(models: dict[str, FakeDetector]) -> Iterator[TestClient]:
    with TestClient(create_app(settings(), detectors=models)) as c:
        yield c


def error(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


def labels(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [d["label"] for d in response.json()["results"][0]["detections"]]


# --- settings and names -------------------------------------------------------------------------------------------


def test_detector_models_lists_the_models_and_wins_over_detector_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DETECTOR_WEIGHTS", "person")
    assert Settings().model_sources == ("person",)
    monkeypatch.setenv("DETECTOR_MODELS", " coco, person ,/models/mine.safetensors,")
    assert Settings().model_sources == ("coco", "person", "/models/mine.safetensors")
    monkeypatch.delenv("DETECTOR_WEIGHTS")
    monkeypatch.delenv("DETECTOR_MODELS")
    assert Settings().model_sources == (None,)  # the default built-in


def test_a_model_listed_twice_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DETECTOR_MODELS", "coco,person,coco")
    with pytest.raises(ValueError, match="a model is listed twice: coco, person, coco"):
        Settings()


def test_both_set_logs_that_models_wins(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="api.main"):
        create_app(settings(weights="person", models="coco,person"), detector=FakeDetector())
    assert "DETECTOR_WEIGHTS is ignored: DETECTOR_MODELS is set and wins" in caplog.text


def test_served_names_are_the_built_in_names_or_the_weights_own() -> None:
    model = FakeDetector("my-model")
    assert served_name(None, model) == "coco"  # the default built-in
    assert served_name("person", model) == "person"
    assert served_name("/models/mine.safetensors", model) == "my-model"


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["coco", "coco"], "two models would be served as 'coco'"),
        (["my model"], "model name 'my model' cannot be served"),
        (["a/b"], "model name 'a/b' cannot be served"),
        (["coco", "list"], r"model name 'list' cannot be served: /v1/vision/custom/list is DeepStack"),
    ],
)
def test_unservable_names_are_refused(names: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_names(names)


# --- routes -------------------------------------------------------------------------------------------------------


def test_each_model_answers_with_its_own_labels(client: TestClient) -> None:
    headers = {"Content-Type": "image/png"}
    assert labels(client.post("/v1/detect", content=PNG, headers=headers)) == ["person", "car"]  # the first
    assert labels(client.post("/v1/models/street/detect", content=PNG, headers=headers)) == ["person", "car"]
    response = client.post("/v1/models/pets/detect?labels=cat", content=PNG, headers=headers)
    assert labels(response) == ["cat"]
    assert response.json()["model"] == {"id": "pets", "name": "pets-v1", "version": "0"}


def test_labels_are_checked_against_the_route_s_model(client: TestClient) -> None:
    response = client.post("/v1/models/pets/detect?labels=car", content=PNG, headers={"Content-Type": "image/png"})
    assert (response.status_code, response.json()) == (
        422,
        error("invalid_request", "unknown labels ['car']; this model knows ['cat', 'dog']"),
    )


def test_render_with_a_model(client: TestClient) -> None:
    response = client.post(
        "/v1/models/pets/detect/render?format=png", content=PNG, headers={"Content-Type": "image/png"}
    )
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.headers["x-detections"] == "2"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/models/nope/detect"),
        ("POST", "/v1/models/nope/detect/render"),
        ("GET", "/v1/models/nope"),
    ],
)
def test_an_unknown_model_is_404_with_the_standard_body(client: TestClient, method: str, path: str) -> None:
    response = client.request(method, path, content=PNG, headers={"Content-Type": "image/png"})
    assert (response.status_code, response.json()) == (
        404,
        error("model_not_found", "no model 'nope'; this service serves: street, pets"),
    )


def test_models_lists_every_model_the_default_first(client: TestClient) -> None:
    body = client.get("/v1/models").json()
    assert body["default"] == "street"
    assert [(m["id"], m["default"], m["name"], m["labels"]) for m in body["models"]] == [
        ("street", True, "street-v2", ["person", "car"]),
        ("pets", False, "pets-v1", ["dog", "cat"]),
    ]
    assert body["models"][1]["serving"]["threads"] == 1
    one = client.get("/v1/models/pets").json()
    assert one == body["models"][1]
    assert client.get("/v1/model").json()["name"] == "street-v2"  # the default, as before


def test_ready_only_when_every_model_is_loaded(models: dict[str, FakeDetector]) -> None:
    client = TestClient(create_app(settings(), detectors=models))  # not started: nothing loaded
    assert client.get("/readyz").status_code == 503
    for path in ("/v1/models", "/v1/models/pets"):
        response = client.get(path)
        assert (response.status_code, response.json()) == (503, error("not_ready", "the model is still loading"))
    with client:
        assert client.get("/readyz").status_code == 200


def test_metrics_are_labelled_by_model(client: TestClient) -> None:
    client.post("/v1/models/pets/detect", content=PNG, headers={"Content-Type": "image/png"})
    client.post("/v1/models/pets/detect", content=PNG, headers={"Content-Type": "image/png"})
    client.post("/v1/detect", content=PNG, headers={"Content-Type": "image/png"})
    text = client.get("/metrics").text
    assert 'detector_images_total{model="pets"} 2.0' in text
    assert 'detector_images_total{model="street"} 1.0' in text
    assert 'detector_batch_size_count{model="pets"} 2.0' in text
    assert 'detector_queue_depth{model="street"} 0.0' in text
    assert 'detector_inference_seconds_count{model="pets"} 2.0' in text
    assert 'detector_decode_seconds_count{model="street"} 1.0' in text
    assert (
        'detector_model_info{backend="pytorch",model="pets",name="pets-v1",precision="fp32",version="0",'
        'weights_sha256=""} 1.0' in text
    )
    route = 'detector_http_requests_total{method="POST",route="/v1/models/{model}/detect",status="200"} 2.0'
    assert route in text


# --- the built-in models, served at once ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live() -> Iterator[str]:
    with two_model_service() as service:
        yield service.url


@pytest.mark.slow
def test_coco_and_person_served_at_once_each_with_its_own_labels(live: str) -> None:
    models = httpx.get(f"{live}/v1/models").json()
    assert models["default"] == "coco"
    assert [m["id"] for m in models["models"]] == ["coco", "person"]
    coco, person = models["models"]
    assert len(coco["labels"]) == 80 and person["labels"] == ["person"]
    files = {"image": ("bus.jpg", photo("bus.jpg").read_bytes(), "image/jpeg")}
    by_default = httpx.post(f"{live}/v1/detect?score_threshold=0.4", files=files, timeout=60).json()
    with_coco = httpx.post(f"{live}/v1/models/coco/detect?score_threshold=0.4", files=files, timeout=60).json()
    with_person = httpx.post(f"{live}/v1/models/person/detect?score_threshold=0.4", files=files, timeout=60).json()
    assert by_default["results"] == with_coco["results"]
    assert {d["label"] for d in with_coco["results"][0]["detections"]} == {"person", "bus"}
    assert {d["label"] for d in with_person["results"][0]["detections"]} == {"person"}
    assert with_person["model"] == {"id": "person", "name": "person-ssdlite-mobilenet-v2", "version": "1"}
    response = httpx.post(f"{live}/v1/models/nope/detect", files=files, timeout=60)
    assert (response.status_code, response.json()) == (
        404,
        error("model_not_found", "no model 'nope'; this service serves: coco, person"),
    )
    metrics = httpx.get(f"{live}/metrics").text
    assert 'detector_images_total{model="person"}' in metrics and 'detector_images_total{model="coco"}' in metrics
