"""The HTTP service with a fake detector: every endpoint and every error, status and body.

The model is not the point here, so a ``FakeDetector`` (``tests/support.py``) stands in (the real batcher, decoding
and limits still run); ``tests/test_api_model.py`` uses the real model.
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.deps import get_service
from api.errors import QueueFull
from api.logs import JsonFormatter, request_id_var
from api.main import create_app
from api.service import DetectionService
from api.settings import Settings, available_cpus
from tests.support import FakeDetector, encode, png_header_only, random_rgb

ROOT = Path(__file__).resolve().parent.parent


def rgb(width: int = 8, height: int = 6) -> Image.Image:
    return random_rgb(width, height)


PNG = encode(rgb())
JPEG = encode(rgb(), "JPEG")


def settings(**overrides) -> Settings:
    base = {"threads": 1, "max_wait_ms": 0, "drain_delay_s": 0}
    return Settings(**{**base, **overrides})


@pytest.fixture
def fake() -> FakeDetector:
    return FakeDetector()


@pytest.fixture
def client(fake: FakeDetector) -> Iterator[TestClient]:
    with TestClient(
        create_app(settings(max_body_bytes=200_000, max_pixels=10_000, max_images_per_request=3), detector=fake)
    ) as c:
        yield c


def error(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


# --- operations ---------------------------------------------------------------------------------------------------


def test_healthz_and_readyz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "alive"}
    response = client.get("/readyz")
    assert (response.status_code, response.json()) == (200, {"status": "ready"})


def test_readyz_is_503_while_the_model_is_not_loaded(fake: FakeDetector) -> None:
    client = TestClient(create_app(settings(), detector=fake))  # no `with`: the lifespan never ran
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == error("not_ready", "the model is not loaded yet")
    assert response.headers["retry-after"] == "1"
    response = client.post("/v1/detect", content=PNG, headers={"Content-Type": "image/png"})
    assert (response.status_code, response.json()) == (503, error("not_ready", "the model is still loading"))
    assert client.get("/healthz").status_code == 200


def test_readyz_is_503_while_draining(client: TestClient) -> None:
    client.app.state.service.draining = True
    response = client.get("/readyz")
    assert (response.status_code, response.json()) == (503, error("draining", "the service is shutting down"))
    assert response.headers["retry-after"] == "1"
    # Requests are still served while the balancer catches up.
    assert client.post("/v1/detect", content=PNG, headers={"Content-Type": "image/png"}).status_code == 200


def test_model_describes_model_and_serving(client: TestClient) -> None:
    body = client.get("/v1/model").json()
    assert body["name"] == "fake" and body["labels"] == ["person", "cat"] and body["input_size"] == [8, 8]
    assert body["backend"] == "pytorch"
    assert body["serving"] == {
        "backend": "auto",
        "precision": "fast",
        "max_batch_size": 4,
        "max_wait_ms": 0.0,
        "queue_size": 64,
        "request_timeout_s": 10.0,
        "threads": 1,
        "max_body_bytes": 200_000,
        "max_pixels": 10_000,
        "max_images_per_request": 3,
    }


def test_metrics_count_requests_batches_and_rejections(client: TestClient) -> None:
    client.post("/v1/detect", content=PNG, headers={"Content-Type": "image/png"})
    client.post("/v1/detect", content=b"x", headers={"Content-Type": "text/plain"})
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'detector_http_requests_total{method="POST",route="/v1/detect",status="200"} 1.0' in text
    assert 'detector_rejections_total{reason="unsupported_media_type"} 1.0' in text
    assert 'detector_batch_size_count{model="fake"} 1.0' in text
    assert 'detector_images_total{model="fake"} 1.0' in text
    for name in (
        "detector_http_request_duration_seconds_bucket",
        "detector_queue_wait_seconds_bucket",
        "detector_inference_seconds_bucket",
        "detector_queue_depth",
        "detector_decode_seconds_bucket",
    ):
        assert name in text


def test_openapi_documents_the_endpoints(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/detect", "/v1/detect/render", "/v1/model", "/healthz", "/readyz", "/metrics"} <= set(paths)
    assert "multipart/form-data" in paths["/v1/detect"]["post"]["requestBody"]["content"]
    assert client.get("/docs").status_code == 200


def test_page_is_self_contained(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert "<canvas" in response.text and "/v1/detect" in response.text
    assert "http://" not in response.text and "https://" not in response.text  # no external assets


def test_request_id_is_echoed_or_generated(client: TestClient) -> None:
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"
    generated = client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"}).headers["x-request-id"]
    assert generated != "bad id\twith spaces" and len(generated) == 32
    response = client.post("/v1/detect", content=PNG, headers={"Content-Type": "image/png", "X-Request-ID": "r1"})
    assert response.json()["request_id"] == "r1" and response.headers["x-request-id"] == "r1"


def test_unknown_path_and_wrong_method(client: TestClient) -> None:
    response = client.get("/nope")
    assert (response.status_code, response.json()) == (404, error("not_found", "Not Found"))
    response = client.get("/v1/detect")
    assert (response.status_code, response.json()) == (405, error("method_not_allowed", "Method Not Allowed"))
    assert response.headers["allow"] == "POST"


# --- detection ----------------------------------------------------------------------------------------------------


def test_detect_multipart_one_image(client: TestClient) -> None:
    response = client.post("/v1/detect", files={"image": ("a.png", PNG, "image/png")})
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == {"id": "fake", "name": "fake", "version": "0"}
    assert body["results"] == [
        {
            "width": 8,
            "height": 6,
            "detections": [
                {"label": "person", "class_id": 1, "score": 0.9, "box": [0.0, 0.0, 4.0, 3.0]},
                {"label": "cat", "class_id": 2, "score": 0.6, "box": [4.0, 3.0, 8.0, 6.0]},
            ],
        }
    ]
    assert set(body["timings_ms"]) == {"decode", "queue", "inference", "total"}
    assert body["batch_size"] == 1


def test_detect_multipart_several_images_in_order(client: TestClient) -> None:
    files = [
        ("image", ("a.png", encode(rgb(8, 6)), "image/png")),
        ("image", ("b.jpg", encode(rgb(5, 9), "JPEG"), "image/jpeg")),
        ("image", ("c", encode(rgb(7, 7), "WEBP"), "application/octet-stream")),
    ]
    response = client.post("/v1/detect", files=files)
    assert response.status_code == 200
    assert [(r["width"], r["height"]) for r in response.json()["results"]] == [(8, 6), (5, 9), (7, 7)]
    assert response.json()["batch_size"] == 3


def test_detect_raw_body(client: TestClient) -> None:
    response = client.post("/v1/detect", content=JPEG, headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 200 and len(response.json()["results"]) == 1


def test_detect_options(client: TestClient) -> None:
    def detections(query: str) -> list[str]:
        response = client.post(f"/v1/detect?{query}", content=PNG, headers={"Content-Type": "image/png"})
        assert response.status_code == 200, response.text
        return [d["label"] for d in response.json()["results"][0]["detections"]]

    assert detections("") == ["person", "cat"]
    assert detections("score_threshold=0.7") == ["person"]
    assert detections("max_detections=1") == ["person"]
    assert detections("labels=cat") == ["cat"]
    assert detections("labels=cat&max_detections=1") == ["cat"]  # filter first, then cap
    assert detections("labels=cat,person") == ["person", "cat"]
    assert detections("labels=cat&labels=person") == ["person", "cat"]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("score_threshold=2", "score_threshold: Input should be less than or equal to 1"),
        ("score_threshold=-0.1", "score_threshold: Input should be greater than or equal to 0"),
        ("score_threshold=abc", "score_threshold: Input should be a valid number, unable to parse string as a number"),
        ("score_threshold=nan", "score_threshold: Input should be a finite number"),
        ("max_detections=0", "max_detections: Input should be greater than or equal to 1"),
        ("max_detections=101", "max_detections: Input should be less than or equal to 100"),
        ("labels=dog", "unknown labels ['dog']; this model knows ['cat', 'person']"),
        ("format=gif", "format: Input should be 'jpeg' or 'png'"),
    ],
)
def test_bad_parameters_are_422(client: TestClient, query: str, message: str) -> None:
    path = "/v1/detect/render" if query.startswith("format") else "/v1/detect"
    response = client.post(f"{path}?{query}", content=PNG, headers={"Content-Type": "image/png"})
    assert (response.status_code, response.json()) == (422, error("invalid_request", message))


# --- accepted image kinds -----------------------------------------------------------------------------------------


def _animated_gif() -> bytes:
    frames = [Image.new("P", (6, 4), color) for color in (1, 2, 3)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def _rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to view
    return encode(rgb(8, 6), "JPEG", exif=exif)


@pytest.mark.parametrize(
    ("data", "content_type", "size"),
    [
        (encode(Image.new("L", (8, 6), 80)), "image/png", (8, 6)),
        (encode(Image.new("1", (8, 6), 1)), "image/png", (8, 6)),
        (encode(rgb().convert("P")), "image/png", (8, 6)),
        (encode(Image.new("RGBA", (8, 6), (10, 20, 30, 0))), "image/png", (8, 6)),
        (encode(Image.new("CMYK", (8, 6), (0, 50, 100, 0)), "JPEG"), "image/jpeg", (8, 6)),
        (encode(Image.fromarray(np.full((6, 8), 40000, dtype=np.uint16))), "image/png", (8, 6)),
        (encode(rgb(), "TIFF"), "image/tiff", (8, 6)),
        (encode(rgb(), "BMP"), "image/bmp", (8, 6)),
        (_animated_gif(), "image/gif", (6, 4)),
        (_rotated_jpeg(), "image/jpeg", (6, 8)),  # EXIF orientation applied: upright is 6 wide, 8 high
    ],
    ids=["gray", "bilevel", "palette", "rgba", "cmyk", "16-bit", "tiff", "bmp", "animated-gif", "exif-rotated"],
)
def test_image_kinds_are_accepted(client: TestClient, data: bytes, content_type: str, size: tuple[int, int]) -> None:
    response = client.post("/v1/detect", content=data, headers={"Content-Type": content_type})
    assert response.status_code == 200, response.text
    result = response.json()["results"][0]
    assert (result["width"], result["height"]) == size


# --- limits and bad input -----------------------------------------------------------------------------------------


def test_body_over_the_limit_is_413_from_content_length(client: TestClient) -> None:
    response = client.post("/v1/detect", content=b"\0" * 200_001, headers={"Content-Type": "image/png"})
    assert response.status_code == 413
    assert response.json() == error("body_too_large", "request body is 200001 bytes; limit 200000")


def test_chunked_body_over_the_limit_is_413(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield b"\0" * 10_000

    response = client.post("/v1/detect", content=chunks(), headers={"Content-Type": "image/png"})
    assert response.status_code == 413
    assert response.json() == error("body_too_large", "request body exceeds the limit of 200000 bytes")


def test_chunked_multipart_over_the_limit_is_413(client: TestClient) -> None:
    boundary = b"xyz"
    head = b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'

    def chunks() -> Iterator[bytes]:
        yield head
        for _ in range(40):
            yield b"\0" * 10_000

    response = client.post(
        "/v1/detect", content=chunks(), headers={"Content-Type": f"multipart/form-data; boundary={boundary.decode()}"}
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "body_too_large"


def test_too_many_pixels_is_413_before_decoding(client: TestClient) -> None:
    response = client.post("/v1/detect", content=encode(rgb(101, 100)), headers={"Content-Type": "image/png"})
    assert response.status_code == 413
    assert response.json() == error("too_many_pixels", "image has 101×100 = 10100 pixels; the limit is 10000")
    # A bomb: the header claims 100000 × 100000 with almost no data behind it.
    response = client.post(
        "/v1/detect", content=png_header_only(100_000, 100_000), headers={"Content-Type": "image/png"}
    )
    assert response.status_code == 413 and response.json()["error"]["code"] == "too_many_pixels"


def test_too_many_images_is_413(client: TestClient) -> None:
    files = [("image", (f"{i}.png", PNG, "image/png")) for i in range(4)]
    response = client.post("/v1/detect", files=files)
    assert (response.status_code, response.json()) == (413, error("too_many_images", "at most 3 images per request"))


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"hello", "text/plain", "unsupported content type 'text/plain'"),
        (b"{}", "application/json", "unsupported content type 'application/json'"),
        (PNG, None, "unsupported content type '(none)'"),
        (PNG, "image/heic", "unsupported image type 'image/heic'"),
        (JPEG, "image/png", "content type 'image/png' does not match the data, which is JPEG"),
    ],
)
def test_unsupported_media_type_is_415(client: TestClient, body: bytes, content_type: str | None, message: str) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post("/v1/detect", content=body, headers=headers)
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"
    assert response.json()["error"]["message"].startswith(message)


def test_mismatched_part_type_is_415(client: TestClient) -> None:
    response = client.post("/v1/detect", files={"image": ("a.png", JPEG, "image/png")})
    assert response.status_code == 415
    assert response.json() == error(
        "unsupported_media_type", "content type 'image/png' does not match the data, which is JPEG"
    )


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"", "image/jpeg", "empty image"),
        (b"not an image at all", "image/png", "not a valid PNG image (unrecognised data)"),
        (b"not an image at all", "application/octet-stream", None),
        (JPEG[: len(JPEG) // 2], "image/jpeg", None),
        (PNG[:40], "image/png", None),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 50, "image/png", None),
    ],
    ids=["empty", "garbage-png", "garbage-octet", "truncated-jpeg", "truncated-png", "corrupt-png"],
)
def test_corrupt_or_empty_image_is_422(client: TestClient, body: bytes, content_type: str, message: str | None) -> None:
    if content_type == "application/octet-stream":
        response = client.post("/v1/detect", files={"image": ("x", body, content_type)})
    else:
        response = client.post("/v1/detect", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_image"
    if message:
        assert response.json()["error"]["message"] == message


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"data": {"other": "x"}, "files": {"image": ("a.png", PNG, "image/png")}},
            "unexpected form field 'other'; send images as parts named 'image'",
        ),
        (
            {"files": {"picture": ("a.png", PNG, "image/png")}},
            "unexpected form field 'picture'; send images as parts named 'image'",
        ),
        (
            {
                "content": b'--b\r\nContent-Disposition: form-data; name="image"\r\n\r\ntext\r\n--b--\r\n',
                "headers": {"Content-Type": "multipart/form-data; boundary=b"},
            },
            "form field 'image' must be a file",
        ),
    ],
)
def test_bad_multipart_is_422(client: TestClient, kwargs: dict, message: str) -> None:
    response = client.post("/v1/detect", **kwargs)
    assert (response.status_code, response.json()) == (422, error("invalid_request", message))


def test_multipart_without_parts_or_boundary_is_422(client: TestClient) -> None:
    response = client.post(
        "/v1/detect", content=b"--b--\r\n", headers={"Content-Type": "multipart/form-data; boundary=b"}
    )
    assert (response.status_code, response.json()) == (
        422,
        error("invalid_request", "no image: send one or more multipart parts named 'image'"),
    )
    response = client.post("/v1/detect", content=b"abc", headers={"Content-Type": "multipart/form-data"})
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_request"


def test_a_model_failure_is_a_json_500_and_the_worker_survives(client: TestClient, fake: FakeDetector) -> None:
    fake.fail = True
    response = client.post("/v1/detect", content=PNG, headers={"Content-Type": "image/png"})
    assert (response.status_code, response.json()) == (500, error("internal_error", "postprocessing failed"))
    fake.fail = False
    assert client.post("/v1/detect", content=PNG, headers={"Content-Type": "image/png"}).status_code == 200
    assert client.get("/healthz").status_code == 200


def test_queue_full_is_503_with_retry_after(client: TestClient) -> None:
    class FullService(DetectionService):
        async def detect(self, name, uploads, params):
            raise QueueFull("the queue is full (64 requests waiting); retry shortly")

    service = client.app.state.service
    full = FullService(service.settings, service.metrics, lambda: service.models)
    full.models, full.infos = service.models, service.infos
    client.app.dependency_overrides[get_service] = lambda: full
    try:
        response = client.post("/v1/detect", content=PNG, headers={"Content-Type": "image/png"})
    finally:
        client.app.dependency_overrides.clear()
    assert response.status_code == 503
    assert response.json() == error("queue_full", "the queue is full (64 requests waiting); retry shortly")
    assert response.headers["retry-after"] == "1"


# --- render ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_render_returns_the_image_with_boxes(client: TestClient, fmt: str) -> None:
    image = Image.new("RGB", (80, 60), (255, 255, 255))
    response = client.post(
        f"/v1/detect/render?format={fmt}", content=encode(image), headers={"Content-Type": "image/png"}
    )
    assert response.status_code == 200 and response.headers["content-type"] == f"image/{fmt}"
    assert response.headers["x-detections"] == "2"
    drawn = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))
    assert drawn.shape == (60, 80, 3)
    assert (np.abs(drawn.astype(int) - 255).sum(axis=2) > 60).any()  # something was drawn on the white image


def test_render_takes_one_image(client: TestClient) -> None:
    files = [("image", ("a.png", PNG, "image/png")), ("image", ("b.png", PNG, "image/png"))]
    response = client.post("/v1/detect/render", files=files)
    assert (response.status_code, response.json()) == (
        422,
        error("invalid_request", "render takes exactly one image, got 2"),
    )


# --- concurrency through HTTP ---------------------------------------------------------------------------------------


def test_concurrent_requests_share_forward_passes(fake: FakeDetector) -> None:
    gate = threading.Event()
    real_predict = fake.predict_raw

    entered: list[int] = []

    def slow_predict(batch):
        entered.append(batch.shape[0])
        gate.wait(5)
        return real_predict(batch)

    fake.predict_raw = slow_predict
    # Room for all six in one pass: with the default of 4, the five that queue behind the first need two.
    with TestClient(create_app(settings(max_wait_ms=50, max_batch_size=8), detector=fake)) as client:
        statuses: list[int] = []

        def post() -> None:
            statuses.append(client.post("/v1/detect", content=PNG, headers={"Content-Type": "image/png"}).status_code)

        threads = [threading.Thread(target=post) for _ in range(6)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 5
        while sum(entered) + client.app.state.service.batcher.depth() < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        gate.set()
        for t in threads:
            t.join()
    assert statuses == [200] * 6
    # The first request(s) hold the model; the others queue meanwhile and then share forward passes.
    assert sum(fake.batch_sizes) == 6 and len(fake.batch_sizes) <= 2


# --- settings, logs, imports ----------------------------------------------------------------------------------------


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "DETECTOR_WEIGHTS": "",
        "DETECTOR_PORT": "9000",
        "DETECTOR_MAX_BATCH_SIZE": "4",
        "DETECTOR_MAX_WAIT_MS": "2.5",
        "DETECTOR_QUEUE_SIZE": "7",
        "DETECTOR_REQUEST_TIMEOUT_S": "3",
        "DETECTOR_MAX_BODY_BYTES": "1000",
        "DETECTOR_MAX_PIXELS": "500",
        "DETECTOR_LOG_LEVEL": "debug",
    }.items():
        monkeypatch.setenv(name, value)
    s = Settings()
    assert (s.weights, s.port, s.max_batch_size, s.max_wait_ms, s.queue_size) == (None, 9000, 4, 2.5, 7)
    assert (s.request_timeout_s, s.max_body_bytes, s.max_pixels, s.log_level) == (3.0, 1000, 500, "DEBUG")
    assert s.host == "0.0.0.0" and s.threads == available_cpus() >= 1
    monkeypatch.setenv("DETECTOR_THREADS", "3")
    assert Settings().threads == 3


def test_logs_are_json_with_the_request_id() -> None:
    record = logging.LogRecord("api.test", logging.INFO, __file__, 1, "hello %s", ("world",), None)
    record.status = 200
    token = request_id_var.set("req-1")
    try:
        line = json.loads(JsonFormatter().format(record))
    finally:
        request_id_var.reset(token)
    assert line["message"] == "hello world" and line["request_id"] == "req-1" and line["status"] == 200
    assert line["level"] == "INFO" and line["logger"] == "api.test"


def test_the_service_never_imports_training_code() -> None:
    # The modules the import-linter contract forbids the service (pyproject.toml), checked here at run time too.
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (contract,) = [c for c in contracts if c["type"] == "forbidden" and c["source_modules"] == ["api"]]
    training = tuple(contract["forbidden_modules"])
    assert {"detector.training", "detector.cli", "pycocotools"} <= set(training)
    # The process as it serves: the app built and the model loaded.
    code = (
        "import sys; from api.main import create_app; from api.settings import Settings; "
        "create_app(Settings(backend='torch', threads=1)).state.service.start(); print('\\n'.join(sorted(sys.modules)))"
    )
    modules = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    forbidden = [m for m in modules if m in training or m.startswith(tuple(f"{t}." for t in training))]
    assert forbidden == []
    assert "api.main" in modules and "detector.inference" in modules
