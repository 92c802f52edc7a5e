"""The DeepStack / CodeProject.AI API: exact payloads and every error with fakes, then the real clients (the
``deepstack-python`` package Home Assistant's integrations use, and Frigate's plugin's parsing) against a live
service on real photos, compared with ``/v1/detect``."""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.main import create_app
from api.settings import Settings
from detector.results import Detection, ImageDetections
from detector.samples import photo
from tests.support import FakeDetector, encode, random_rgb, two_model_service

PNG = encode(random_rgb(8, 6))
JPEG = encode(random_rgb(8, 6), "JPEG")


def settings(**overrides) -> Settings:
    return Settings(**{"threads": 1, "max_wait_ms": 0, "drain_delay_s": 0, **overrides})


class Unsorted(FakeDetector):
    """Detections in no particular order, with fractional boxes, to check sorting and rounding."""

    def postprocess(self, box_codes, class_logits, sizes, *, score_threshold, max_detections=None):
        results = []
        for height, width in sizes:
            detections = [
                Detection("cat", 2, 0.5, (1.4, 1.6, 3.5, 5.49)),
                Detection("person", 1, 0.95, (-0.3, 0.2, width + 0.4, height - 0.5)),
                Detection("cat", 2, 0.7, (2.0, 2.0, 4.0, 4.0)),
            ]
            detections = [d for d in detections if d.score >= score_threshold]
            results.append(ImageDetections(width=width, height=height, detections=detections))
        return results


@pytest.fixture
def client() -> Iterator[TestClient]:
    app = create_app(
        settings(max_body_bytes=200_000, max_pixels=10_000),
        detectors={"coco": Unsorted("coco-fake"), "pets": FakeDetector("pets-fake", ("dog", "ball"))},
    )
    with TestClient(app) as c:
        yield c


def failure(message: str) -> dict:
    return {"success": False, "error": message, "duration": 0}


def post(client: TestClient, path: str = "/v1/vision/detection", image: bytes | None = PNG, **data: str):
    files = {"image": ("image", image, "image/png")} if image is not None else None
    return client.post(path, files=files, data=data or None)


# --- answers ------------------------------------------------------------------------------------------------------


def test_detection_answers_as_deepstack_and_codeproject_do(client: TestClient) -> None:
    response = post(client, min_confidence="0.45", api_key="")
    assert response.status_code == 200
    body = response.json()
    # Sorted by confidence, highest first; integer pixels of the image, clamped to it; below 0.45 dropped.
    assert body["predictions"] == [
        {"label": "person", "confidence": 0.95, "x_min": 0, "y_min": 0, "x_max": 8, "y_max": 6},
        {"label": "cat", "confidence": 0.7, "x_min": 2, "y_min": 2, "x_max": 4, "y_max": 4},
        {"label": "cat", "confidence": 0.5, "x_min": 1, "y_min": 2, "x_max": 4, "y_max": 5},
    ]
    assert body["success"] is True and body["count"] == 3 and body["code"] == 200
    assert body["message"] == "Found person, cat, cat"
    assert body["command"] == "detect" and body["moduleId"] == "ssdlite-detector"
    assert body["moduleName"] == "SSDLite-MobileNetV2 (coco)"
    assert body["requestId"] == response.headers["x-request-id"]
    for field in ("duration", "inferenceMs", "processMs", "analysisRoundTripMs"):
        assert body[field] >= 0
    assert all(isinstance(body[f], int) for f in ("inferenceMs", "processMs", "analysisRoundTripMs"))


def test_min_confidence_defaults_to_deepstack_s_0_4(client: TestClient) -> None:
    assert [p["confidence"] for p in post(client).json()["predictions"]] == [0.95, 0.7, 0.5]
    assert [p["confidence"] for p in post(client, min_confidence="0.6").json()["predictions"]] == [0.95, 0.7]
    assert post(client, min_confidence="0.99").json()["message"] == "No objects found"
    assert post(client, min_confidence="").status_code == 200  # an empty field is the default


def test_max_detections_caps_the_predictions(client: TestClient) -> None:
    response = post(client, "/v1/vision/detection?max_detections=2")
    assert [p["confidence"] for p in response.json()["predictions"]] == [0.95, 0.7]
    response = post(client, "/v1/vision/custom/pets?max_detections=1")
    assert [p["label"] for p in response.json()["predictions"]] == ["dog"]
    response = post(client, "/v1/vision/detection?max_detections=0")
    assert (response.status_code, response.json()) == (
        400,
        failure("max_detections: Input should be greater than or equal to 1"),
    )


def test_message_lists_the_first_three_labels() -> None:
    from api.routes.deepstack import _message

    found = [{"label": label} for label in ("a", "b", "c", "d")]
    assert _message(found) == "Found a, b, c..."


def test_custom_serves_any_model_with_its_own_labels(client: TestClient) -> None:
    body = post(client, "/v1/vision/custom/pets").json()
    assert [p["label"] for p in body["predictions"]] == ["dog", "ball"]
    assert body["moduleName"] == "SSDLite-MobileNetV2 (pets)"
    body = post(client, "/v1/vision/custom/coco").json()
    assert [p["label"] for p in body["predictions"]] == ["person", "cat", "cat"]


def test_custom_list_names_the_served_models(client: TestClient) -> None:
    response = client.post("/v1/vision/custom/list")
    assert (response.status_code, response.json()) == (200, {"success": True, "models": ["coco", "pets"]})


def test_extra_fields_and_parts_are_ignored_as_deepstack_does(client: TestClient) -> None:
    files = [("image", ("a.png", PNG, "image/png")), ("other", ("b.png", PNG, "image/png"))]
    response = client.post("/v1/vision/detection", files=files, data={"user_id": "x", "api_key": ""})
    assert response.status_code == 200 and response.json()["count"] == 3


# --- errors, as DeepStack gives them ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("abc", "Invalid value for min_confidence"),
        ("nan", "Invalid value for min_confidence"),
        ("1.5", "min_confidence cannot be greater than 1"),
        ("-0.1", "min_confidence cannot be negative"),
    ],
)
def test_bad_min_confidence_is_400(client: TestClient, value: str, message: str) -> None:
    response = post(client, min_confidence=value)
    assert (response.status_code, response.json()) == (400, failure(message))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"data": {"min_confidence": "0.5"}},  # a form without the image
        {"files": {"picture": ("a.png", PNG, "image/png")}},
        {"data": {"image": "not a file"}},
        {"content": PNG, "headers": {"Content-Type": "image/png"}},  # not a form at all
        {},
    ],
    ids=["no-image", "other-name", "image-as-text", "raw-body", "empty"],
)
def test_no_image_is_400_with_deepstack_s_message(client: TestClient, kwargs: dict) -> None:
    response = client.post("/v1/vision/detection", **kwargs)
    assert (response.status_code, response.json()) == (400, failure("No valid image file found"))


def test_a_bad_image_is_400(client: TestClient) -> None:
    response = post(client, image=b"")
    assert (response.status_code, response.json()) == (400, failure("empty image"))
    response = client.post("/v1/vision/detection", files={"image": ("x", b"garbage", "application/octet-stream")})
    assert response.status_code == 400 and response.json()["success"] is False


def test_unsupported_type_is_415_and_too_large_is_413(client: TestClient) -> None:
    response = client.post("/v1/vision/detection", files={"image": ("a", PNG, "image/heic")})
    assert response.status_code == 415 and response.json()["success"] is False
    response = post(client, image=encode(random_rgb(101, 100)))
    assert (response.status_code, response.json()) == (
        413,
        failure("image has 101×100 = 10100 pixels; the limit is 10000"),
    )
    response = client.post("/v1/vision/detection", content=b"\0" * 200_001, headers={"Content-Type": "image/png"})
    assert (response.status_code, response.json()) == (413, failure("request body is 200001 bytes; limit 200000"))


def test_unknown_custom_model_is_404(client: TestClient) -> None:
    response = post(client, "/v1/vision/custom/nope")
    assert (response.status_code, response.json()) == (
        404,
        failure("no model 'nope'; this service serves: coco, pets"),
    )


def test_not_ready_is_503_with_retry_after() -> None:
    client = TestClient(create_app(settings(), detector=FakeDetector()))  # no `with`: never started
    response = post(client)
    assert (response.status_code, response.json()) == (503, failure("the model is still loading"))
    assert response.headers["retry-after"] == "1"


def test_unknown_path_and_method_answer_in_deepstack_s_shape(client: TestClient) -> None:
    response = client.get("/v1/vision/detection")
    assert (response.status_code, response.json()) == (405, failure("Method Not Allowed"))
    response = client.post("/v1/vision/face")
    assert (response.status_code, response.json()) == (404, failure("Not Found"))


# --- the real clients against the real service ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_models() -> Iterator[str]:
    with two_model_service() as service:
        yield service.url


def _reference(url: str, data: bytes, model: str | None = None, threshold: float = 0.4) -> list[dict]:
    path = f"/v1/models/{model}/detect" if model else "/v1/detect"
    response = httpx.post(f"{url}{path}?score_threshold={threshold}", files={"image": ("i", data)}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["results"][0]["detections"]


def _same(predictions: list[dict], reference: list[dict]) -> None:
    assert [p["label"] for p in predictions] == [d["label"] for d in reference]
    for p, d in zip(predictions, reference, strict=True):
        assert p["confidence"] == pytest.approx(d["score"], abs=1e-6)
        np.testing.assert_allclose([p["x_min"], p["y_min"], p["x_max"], p["y_max"]], d["box"], atol=0.5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bus.jpg", "grace_hopper.jpg"])
def test_deepstack_python_gets_the_detections_of_v1_detect(two_models: str, name: str) -> None:
    from deepstack.core import DeepstackObject

    host, port = two_models.removeprefix("http://").split(":")
    data = photo(name).read_bytes()
    # What Home Assistant's deepstack_object integration does: the client's detect(), its summary helpers.
    predictions = DeepstackObject(ip=host, port=int(port), min_confidence=0.4, timeout=60).detect(data)
    reference = _reference(two_models, data)
    assert reference, "the photo should have detections"
    _same(predictions, reference)
    people = DeepstackObject(ip=host, port=int(port), min_confidence=0.4, timeout=60, custom_model="person")
    _same(people.detect(data), _reference(two_models, data, "person"))


@pytest.mark.slow
def test_frigate_s_deepstack_plugin_reads_the_answer(two_models: str) -> None:
    # frigate/detectors/plugins/deepstack.py (blakeblackshear/frigate): it posts the model-input frame as JPEG with
    # `api_key` in the form, reads `predictions`, maps labels through its labelmap (truck → car), and stops at the
    # first prediction below 0.4 or with an unknown label, filling at most 20 rows of
    # [label index, confidence, y_min/h, x_min/w, y_max/h, x_max/w].
    labelmap = {0: "person", 1: "bicycle", 2: "car", 3: "motorcycle", 5: "bus", 7: "boat", 15: "cat", 16: "dog"}

    def get_label_index(label_value: str) -> int:
        if label_value.lower() == "truck":
            label_value = "car"
        for index, value in labelmap.items():
            if value == label_value.lower():
                return index
        return -1

    frame = np.asarray(Image.open(photo("bus.jpg")).convert("RGB").resize((320, 320)))
    image = Image.fromarray(np.squeeze(frame).astype(np.uint8))
    w, h = image.size
    with io.BytesIO() as output:
        image.save(output, format="JPEG")
        image_bytes = output.getvalue()
    response = httpx.post(
        f"{two_models}/v1/vision/detection?max_detections=20",  # an api_url that caps at the plugin's 20 rows
        data={"api_key": ""},
        files={"image": image_bytes},
        timeout=60,
    )
    response_json = response.json()
    assert response_json.get("predictions") is not None
    detections = np.zeros((20, 6), np.float32)
    read = 0
    for i, detection in enumerate(response_json.get("predictions")):
        if detection["confidence"] < 0.4:
            break
        label = get_label_index(detection["label"])
        if label < 0:
            break
        detections[i] = [
            label,
            float(detection["confidence"]),
            detection["y_min"] / h,
            detection["x_min"] / w,
            detection["y_max"] / h,
            detection["x_max"] / w,
        ]
        read += 1
    reference = _reference(two_models, image_bytes)
    # Every prediction at 0.4 or more was read (sorted: none hidden behind a lower one), and they match /v1/detect.
    assert read == len(reference) >= 2
    assert {labelmap[int(row[0])] for row in detections[:read]} == {d["label"] for d in reference}
    assert (detections[:read, 2:] >= 0).all() and (detections[:read, 2:] <= 1).all()
    np.testing.assert_allclose(detections[:read, 1], [d["score"] for d in reference], atol=1e-6)
