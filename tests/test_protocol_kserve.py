"""The KServe v2 / Triton API: metadata, health, inference in its three body forms with JSON and binary outputs, and
every error with its status and body, with fakes; then ``tritonclient`` against a live service on real photos,
compared with ``/v1/detect``."""

from __future__ import annotations

import base64
import gzip
import json
import struct
import zlib
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from api import kserve
from api.main import create_app
from api.settings import Settings
from detector.samples import photo
from tests.support import FakeDetector, encode, random_rgb, two_model_service

PNG = encode(random_rgb(8, 6))
JPEG = encode(random_rgb(10, 4), "JPEG")


def settings(**overrides) -> Settings:
    return Settings(**{"threads": 1, "max_wait_ms": 0, "drain_delay_s": 0, **overrides})


@pytest.fixture
def client() -> Iterator[TestClient]:
    app = create_app(
        settings(max_body_bytes=200_000, max_pixels=10_000, max_images_per_request=3),
        detectors={"coco": FakeDetector("coco-fake"), "pets": FakeDetector("pets-fake", ("dog", "ball"))},
    )
    with TestClient(app) as c:
        yield c


def error(message: str) -> dict:
    return {"error": message}


def request_json(*images: bytes, **extra) -> dict:
    data = [base64.b64encode(image).decode() for image in images]
    return {"inputs": [{"name": "image", "shape": [len(images)], "datatype": "BYTES", "data": data}], **extra}


def binary_body(*images: bytes, **extra) -> tuple[bytes, dict[str, str]]:
    """What tritonclient sends by default: the JSON, then the BYTES tensor (4-byte little-endian lengths)."""
    raw = b"".join(struct.pack("<I", len(image)) + image for image in images)
    header = {
        "inputs": [
            {"name": "image", "shape": [len(images)], "datatype": "BYTES", "parameters": {"binary_data_size": len(raw)}}
        ],
        **extra,
    }
    text = json.dumps(header).encode()
    return text + raw, {kserve.HEADER_LENGTH: str(len(text)), "Content-Type": "application/octet-stream"}


def split_response(response) -> tuple[dict, bytes]:
    length = response.headers.get(kserve.HEADER_LENGTH)
    if length is None:
        return response.json(), b""
    return json.loads(response.content[: int(length)]), response.content[int(length) :]


def expected_tensors(width: int, height: int) -> dict[str, list]:
    """The fake's two detections (0.9 top-left quarter, class 1; 0.6 bottom-right, class 2) as TF OD API tensors."""
    boxes = np.zeros((1, 100, 4), np.float32)
    boxes[0, 0] = (0.0, 0.0, 0.5, 0.5)
    boxes[0, 1] = (0.5, 0.5, 1.0, 1.0)
    scores = np.zeros((1, 100), np.float32)
    scores[0, :2] = (0.9, 0.6)
    classes = np.zeros((1, 100), np.float32)
    classes[0, :2] = (1, 2)
    return {
        "detection_boxes": boxes.ravel().tolist(),
        "detection_scores": scores.ravel().tolist(),
        "detection_classes": classes.ravel().tolist(),
        "num_detections": [2.0],
    }


# --- metadata and health --------------------------------------------------------------------------------------------


def test_server_metadata(client: TestClient) -> None:
    body = client.get("/v2").json()
    assert body["name"] == "ssdlite-detector" and body["extensions"] == ["binary_tensor_data"]
    assert isinstance(body["version"], str)


def test_model_metadata_names_the_tf_od_api_outputs(client: TestClient) -> None:
    expected = {
        "name": "pets",
        "versions": ["0"],
        "platform": "pytorch",
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [
            {"name": "detection_boxes", "datatype": "FP32", "shape": [-1, 100, 4]},
            {"name": "detection_scores", "datatype": "FP32", "shape": [-1, 100]},
            {"name": "detection_classes", "datatype": "FP32", "shape": [-1, 100]},
            {"name": "num_detections", "datatype": "FP32", "shape": [-1]},
        ],
        # Beyond the protocol's schema: the engine, its precision and the accuracy bar's figures it met.
        "parameters": {"engine": "pytorch", "precision": "fp32"},
    }
    assert client.get("/v2/models/pets").json() == expected
    assert client.get("/v2/models/pets/versions/0").json() == expected


def test_health_and_readiness_have_no_body(client: TestClient) -> None:
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/coco/ready", "/v2/models/coco/versions/0/ready"):
        response = client.get(path)
        assert (response.status_code, response.content) == (200, b""), path


def test_not_ready_is_503_everywhere_but_liveness() -> None:
    client = TestClient(create_app(settings(), detector=FakeDetector()))  # never started
    assert client.get("/v2/health/live").status_code == 200
    response = client.get("/v2/health/ready")
    assert (response.status_code, response.json()) == (503, error("the models are not loaded yet"))
    assert response.headers["retry-after"] == "1"
    for path in ("/v2/models/fake", "/v2/models/fake/ready"):
        response = client.get(path)
        assert (response.status_code, response.json()) == (503, error("the model is still loading")), path
    response = client.post("/v2/models/fake/infer", json=request_json(PNG))
    assert (response.status_code, response.json()) == (503, error("the model is still loading"))


def test_draining_turns_readiness_503(client: TestClient) -> None:
    client.app.state.service.draining = True
    response = client.get("/v2/health/ready")
    assert (response.status_code, response.json()) == (503, error("the service is shutting down"))


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/v2/models/nope", "Request for unknown model: 'nope' is not found"),
        ("/v2/models/nope/ready", "Request for unknown model: 'nope' is not found"),
        ("/v2/models/coco/versions/2", "Request for unknown model: 'coco' version 2 is not found"),
        ("/v2/models/coco/versions/2/ready", "Request for unknown model: 'coco' version 2 is not found"),
    ],
)
def test_unknown_model_or_version_is_404(client: TestClient, path: str, message: str) -> None:
    response = client.get(path)
    assert (response.status_code, response.json()) == (404, error(message))


# --- inference ------------------------------------------------------------------------------------------------------


def test_infer_json_in_json_out(client: TestClient) -> None:
    response = client.post("/v2/models/coco/infer", json=request_json(PNG, id="r-1"))
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert kserve.HEADER_LENGTH not in response.headers
    body = response.json()
    want = expected_tensors(8, 6)
    assert body == {
        "model_name": "coco",
        "model_version": "0",
        "id": "r-1",
        "outputs": [
            {"name": "detection_boxes", "datatype": "FP32", "shape": [1, 100, 4], "data": want["detection_boxes"]},
            {"name": "detection_scores", "datatype": "FP32", "shape": [1, 100], "data": want["detection_scores"]},
            {"name": "detection_classes", "datatype": "FP32", "shape": [1, 100], "data": want["detection_classes"]},
            {"name": "num_detections", "datatype": "FP32", "shape": [1], "data": [2.0]},
        ],
    }


def test_infer_binary_in_binary_out_as_tritonclient_sends(client: TestClient) -> None:
    body, headers = binary_body(PNG, JPEG, parameters={"binary_data_output": True})
    response = client.post("/v2/models/coco/infer", content=body, headers=headers)
    assert response.status_code == 200 and response.headers["content-type"] == "application/octet-stream"
    header, data = split_response(response)
    assert "id" not in header and [o["name"] for o in header["outputs"]] == list(kserve.OUTPUTS)
    offset, tensors = 0, {}
    for output in header["outputs"]:
        size = output["parameters"]["binary_data_size"]
        tensors[output["name"]] = np.frombuffer(data[offset : offset + size], "<f4").reshape(output["shape"])
        offset += size
    assert offset == len(data)
    assert tensors["num_detections"].tolist() == [2.0, 2.0]
    np.testing.assert_allclose(tensors["detection_boxes"][1, 1], [0.5, 0.5, 1.0, 1.0])  # normalised per image
    assert tensors["detection_classes"][:, :3].tolist() == [[1, 2, 0], [1, 2, 0]]


def test_requested_outputs_in_their_order_each_json_or_binary(client: TestClient) -> None:
    outputs = [
        {"name": "num_detections", "parameters": {"binary_data": True}},
        {"name": "detection_scores"},
    ]
    response = client.post("/v2/models/coco/infer", json=request_json(PNG, outputs=outputs))
    header, data = split_response(response)
    assert [(o["name"], "data" in o) for o in header["outputs"]] == [
        ("num_detections", False),
        ("detection_scores", True),
    ]
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 4}
    assert np.frombuffer(data, "<f4").tolist() == [2.0]


def test_raw_binary_request_is_one_image_with_binary_outputs(client: TestClient) -> None:
    for body in (PNG, struct.pack("<I", len(PNG)) + PNG):  # with or without the element's length
        response = client.post("/v2/models/pets/infer", content=body, headers={kserve.HEADER_LENGTH: "0"})
        assert response.status_code == 200, response.text
        header, data = split_response(response)
        assert [o["name"] for o in header["outputs"]] == list(kserve.OUTPUTS) and len(data) == 4 * (400 + 100 * 2 + 1)


def test_parameters_set_threshold_and_cap(client: TestClient) -> None:
    def count(**parameters) -> float:
        outputs = [{"name": "num_detections"}]
        response = client.post("/v2/models/coco/infer", json=request_json(PNG, parameters=parameters, outputs=outputs))
        assert response.status_code == 200, response.text
        return response.json()["outputs"][0]["data"][0]

    assert count() == 2 and count(score_threshold=0.7) == 1 and count(max_detections=1) == 1
    assert count(score_threshold=0.95) == 0 and count(priority=1, timeout=1000, anything="x") == 2


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_request_bodies(client: TestClient, encoding: str) -> None:
    body, headers = binary_body(PNG)
    compressed = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
    response = client.post(
        "/v2/models/coco/infer", content=compressed, headers={**headers, "Content-Encoding": encoding}
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"content": b"{not json", "headers": {}},
            "invalid inference request: Invalid JSON: key must be a string at line 1 column 2",
        ),
        (
            {"json": {"inputs": []}},
            "invalid inference request: inputs: List should have at least 1 item after validation, not 0",
        ),
        (
            {"json": {"inputs": [{"name": "input0", "shape": [1], "datatype": "BYTES", "data": ["AA=="]}]}},
            "invalid inference request: inputs.0.name: Input should be 'image'",
        ),
        (
            {"json": {"inputs": [{"name": "image", "shape": [1], "datatype": "FP32", "data": ["AA=="]}]}},
            "invalid inference request: inputs.0.datatype: Input should be 'BYTES'",
        ),
        (
            {"json": {"inputs": [{"name": "image", "shape": [1, 3], "datatype": "BYTES", "data": ["AA=="]}]}},
            "invalid inference request: inputs.0.shape: List should have at most 1 item after validation, not 2",
        ),
        (
            {"json": {"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": ["AA=="]}]}},
            "input 'image' has shape [2] but 1 elements",
        ),
        (
            {"json": {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["not base64!"]}]}},
            "a BYTES element is not valid base64 (images in JSON are base64-encoded)",
        ),
        (
            {"json": {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES"}]}},
            "input 'image' has neither data nor binary_data_size",
        ),
        (
            {"json": request_json(PNG, outputs=[{"name": "boxes"}])},
            "invalid inference request: outputs.0.name: Input should be 'detection_boxes', 'detection_scores', "
            "'detection_classes' or 'num_detections'",
        ),
        (
            {"json": request_json(PNG, parameters={"score_threshold": 2})},
            "parameter 'score_threshold' must be a number from 0 to 1, got 2",
        ),
        (
            {"json": request_json(PNG, parameters={"score_threshold": True})},
            "parameter 'score_threshold' must be a number from 0 to 1, got True",
        ),
        (
            {"json": request_json(PNG, parameters={"max_detections": 0})},
            "parameter 'max_detections' must be an integer from 1 to 100, got 0",
        ),
        (
            {"json": request_json(PNG, parameters={"binary_data_output": "yes"})},
            "parameter 'binary_data_output' must be a boolean, got 'yes'",
        ),
        (
            {"content": b"{}", "headers": {kserve.HEADER_LENGTH: "abc"}},
            "Inference-Header-Content-Length: Input should be a valid integer, unable to parse string as an integer",
        ),
        (
            {"content": b"{}", "headers": {kserve.HEADER_LENGTH: "9"}},
            "Inference-Header-Content-Length is 9, but the body has 2 bytes",
        ),
        (
            {"content": b"x", "headers": {"Content-Encoding": "br"}},
            "unsupported Content-Encoding 'br'; send gzip, deflate or none",
        ),
        ({"content": b"x", "headers": {"Content-Encoding": "gzip"}}, "the body is not valid gzip data"),
        ({"json": request_json(b"")}, "empty image"),
        (
            {"json": request_json(b"not an image")},
            "not a valid JPEG / PNG / WEBP / GIF / BMP / TIFF image (unrecognised data)",
        ),
    ],
    ids=lambda value: None if isinstance(value, dict) else value[:40],
)
def test_bad_requests_are_400(client: TestClient, kwargs: dict, message: str) -> None:
    response = client.post("/v2/models/coco/infer", **kwargs)
    assert (response.status_code, response.json()) == (400, error(message))


@pytest.mark.parametrize(
    ("raw", "size", "message"),
    [
        (b"\x05\x00", 2, "BYTES tensor data ends inside an element's 4-byte length"),
        (struct.pack("<I", 50) + b"abc", 7, "a BYTES element claims 50 bytes, more than the tensor data holds"),
        (struct.pack("<I", 3) + b"abc", 9, "input 'image' has binary_data_size 9, but 7 bytes follow the JSON"),
    ],
)
def test_malformed_binary_tensor_data_is_400(client: TestClient, raw: bytes, size: int, message: str) -> None:
    header = json.dumps(
        {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": size}}]}
    ).encode()
    response = client.post(
        "/v2/models/coco/infer", content=header + raw, headers={kserve.HEADER_LENGTH: str(len(header))}
    )
    assert (response.status_code, response.json()) == (400, error(message))


def test_binary_data_without_binary_data_size_is_400(client: TestClient) -> None:
    header = json.dumps(request_json(PNG)).encode()
    response = client.post(
        "/v2/models/coco/infer", content=header + b"xx", headers={kserve.HEADER_LENGTH: str(len(header))}
    )
    assert (response.status_code, response.json()) == (
        400,
        error("2 bytes follow the JSON, but no input has binary_data_size"),
    )


def test_limits_are_413(client: TestClient) -> None:
    response = client.post("/v2/models/coco/infer", json=request_json(PNG, PNG, PNG, PNG))
    assert (response.status_code, response.json()) == (413, error("4 images; at most 3 per request"))
    response = client.post("/v2/models/coco/infer", json=request_json(encode(random_rgb(101, 100))))
    assert (response.status_code, response.json()) == (
        413,
        error("image has 101×100 = 10100 pixels; the limit is 10000"),
    )
    response = client.post("/v2/models/coco/infer", content=b"\0" * 200_001)
    assert (response.status_code, response.json()) == (413, error("request body is 200001 bytes; limit 200000"))
    bomb = gzip.compress(b"\0" * 300_000)
    response = client.post("/v2/models/coco/infer", content=bomb, headers={"Content-Encoding": "gzip"})
    assert (response.status_code, response.json()) == (
        413,
        error("the decompressed body exceeds the limit of 200000 bytes"),
    )


def test_infer_on_unknown_model_or_version_is_404(client: TestClient) -> None:
    response = client.post("/v2/models/nope/infer", json=request_json(PNG))
    assert (response.status_code, response.json()) == (404, error("Request for unknown model: 'nope' is not found"))
    response = client.post("/v2/models/coco/versions/7/infer", json=request_json(PNG))
    assert (response.status_code, response.json()) == (
        404,
        error("Request for unknown model: 'coco' version 7 is not found"),
    )
    assert client.post("/v2/models/coco/versions/0/infer", json=request_json(PNG)).status_code == 200


def test_unknown_paths_and_methods_answer_in_kserve_s_shape(client: TestClient) -> None:
    response = client.get("/v2/models/coco/infer")
    assert (response.status_code, response.json()) == (405, error("Method Not Allowed"))
    response = client.get("/v2/repository/index")
    assert (response.status_code, response.json()) == (404, error("Not Found"))


def test_a_model_failure_is_a_500(client: TestClient) -> None:
    client.app.state.service.models["coco"].fail = True
    response = client.post("/v2/models/coco/infer", json=request_json(PNG))
    assert (response.status_code, response.json()) == (500, error("postprocessing failed"))


# --- tritonclient against the real service --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_models() -> Iterator[str]:
    with two_model_service() as service:
        yield service.url


def _reference(url: str, data: bytes, model: str) -> dict:
    response = httpx.post(f"{url}/v1/models/{model}/detect", files={"image": ("i", data)}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["results"][0]


def _check(result, index: int, reference: dict) -> None:
    width, height = reference["width"], reference["height"]
    detections = reference["detections"]
    n = int(result.as_numpy("num_detections")[index])
    assert n == len(detections) >= 1
    boxes = result.as_numpy("detection_boxes")[index, :n]
    np.testing.assert_allclose(boxes[:, [1, 3]] * width, [[d["box"][0], d["box"][2]] for d in detections], atol=1e-2)
    np.testing.assert_allclose(boxes[:, [0, 2]] * height, [[d["box"][1], d["box"][3]] for d in detections], atol=1e-2)
    np.testing.assert_allclose(
        result.as_numpy("detection_scores")[index, :n], [d["score"] for d in detections], atol=1e-6
    )
    assert result.as_numpy("detection_classes")[index, :n].tolist() == [d["class_id"] for d in detections]
    assert (result.as_numpy("detection_scores")[index, n:] == 0).all()


@pytest.mark.slow
def test_tritonclient_binary_and_json_get_the_detections_of_v1_detect(two_models: str) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=two_models.removeprefix("http://"), network_timeout=60)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("coco") and client.is_model_ready("person") and not client.is_model_ready("nope")
    metadata = client.get_model_metadata("coco")
    assert [o["name"] for o in metadata["outputs"]] == list(kserve.OUTPUTS)
    names = ["bus.jpg", "grace_hopper.jpg"]
    images = [photo(name).read_bytes() for name in names]
    for model in ("coco", "person"):
        # The default: the input as binary tensor data, every output binary (binary_data_output).
        image = httpclient.InferInput("image", [len(images)], "BYTES")
        image.set_data_from_numpy(np.array(images, dtype=np.object_))
        result = client.infer(model, [image], request_id="r-7")
        assert result.get_response()["id"] == "r-7" and result.get_response()["model_name"] == model
        for index, data in enumerate(images):
            _check(result, index, _reference(two_models, data, model))
        # Plain JSON both ways: base64 elements, outputs asked for as JSON.
        image = httpclient.InferInput("image", [1], "BYTES")
        image.set_data_from_numpy(np.array([base64.b64encode(images[0])], dtype=np.object_), binary_data=False)
        outputs = [httpclient.InferRequestedOutput(name, binary_data=False) for name in kserve.OUTPUTS]
        result = client.infer(model, [image], outputs=outputs)
        assert all("data" in o for o in result.get_response()["outputs"])
        _check(result, 0, _reference(two_models, images[0], model))
    with pytest.raises(Exception, match="unknown model") as raised:
        client.infer("nope", [image])
    assert raised.value.status() == "404"
    client.close()
