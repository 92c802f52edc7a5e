"""The HTTP service with the real built-in person model: what a user gets back on real photographs."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.main import create_app
from api.settings import Settings
from detector.samples import photo


@pytest.fixture(scope="module")
def client(person_detector) -> Iterator[TestClient]:
    settings = Settings(threads=2, max_wait_ms=0, drain_delay_s=0)
    with TestClient(create_app(settings, detector=person_detector)) as c:
        yield c


def test_a_person_is_found_where_the_detector_finds_it(client: TestClient, person_detector) -> None:
    data = photo("grace_hopper.jpg").read_bytes()
    response = client.post("/v1/detect", content=data, headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 200
    body = response.json()
    info = person_detector.info()
    assert body["model"] == {"id": info.name, "name": info.name, "version": info.version}
    (result,) = body["results"]
    assert (result["width"], result["height"]) == (512, 600)
    expected = person_detector.detect(data)[0]
    assert [d["label"] for d in result["detections"]] == [d.label for d in expected.detections] == ["person"]
    np.testing.assert_allclose(result["detections"][0]["box"], expected.detections[0].box, atol=1e-3)


def test_batching_does_not_change_the_answers(client: TestClient, person_detector) -> None:
    names = ["astronaut.png", "coffee.png", "grace_hopper.jpg", "camera.png"]
    files = [("image", (name, photo(name).read_bytes(), "application/octet-stream")) for name in names]
    response = client.post("/v1/detect?score_threshold=0.3", files=files)
    assert response.status_code == 200
    results = response.json()["results"]
    for name, result in zip(names, results, strict=True):
        (alone,) = person_detector.detect(photo(name).read_bytes(), score_threshold=0.3)
        assert len(result["detections"]) == len(alone.detections), name
        for got, want in zip(result["detections"], alone.detections, strict=True):
            np.testing.assert_allclose(got["box"], want.box, atol=1e-2)
            assert got["score"] == pytest.approx(want.score, abs=1e-4)


def test_an_image_without_people_gives_no_detections(client: TestClient) -> None:
    # One image with no candidate above the threshold (this once crashed decoding of zero boxes).
    response = client.post(
        "/v1/detect", content=photo("coffee.png").read_bytes(), headers={"Content-Type": "image/png"}
    )
    assert response.status_code == 200
    assert response.json()["results"][0]["detections"] == []


def test_render_draws_the_person(client: TestClient) -> None:
    data = photo("astronaut.png").read_bytes()
    response = client.post("/v1/detect/render?format=png", content=data, headers={"Content-Type": "image/png"})
    assert response.status_code == 200 and int(response.headers["x-detections"]) >= 1
    drawn = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"), dtype=int)
    original = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=int)
    assert drawn.shape == original.shape and (np.abs(drawn - original).sum(axis=2) > 100).mean() > 0.001
