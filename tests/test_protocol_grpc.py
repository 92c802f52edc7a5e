"""KServe v2 over gRPC (api/grpc_server.py) with the real ``tritonclient.grpc``: health (the protocol's and
``grpc.health.v1``), metadata, inference in both tensor forms and as a stream, every error's status code and message,
metrics, against the fakes; the same detections as the HTTP KServe route on photographs; then a live service's
SIGTERM drain, and gRPC through the repository's nginx config."""

from __future__ import annotations

import base64
import contextlib
import queue
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio.from_thread
import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

from api import kserve
from api.auth import MESSAGE as KEY_REQUIRED
from api.errors import ApiError
from api.grpc_server import SERVICE_NAME, GrpcServer, status_code
from api.main import create_app
from api.metrics import Metrics
from api.service import DetectionService
from api.settings import Settings
from detector.samples import photo
from tests.harness.live import free_port, running_service
from tests.harness.stack import Nginx, find_nginx
from tests.support import FakeDetector, GatedModel, encode, random_rgb

PNG = encode(random_rgb(8, 6))
JPEG = encode(random_rgb(10, 4), "JPEG")
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


def settings(**overrides) -> Settings:
    return Settings(
        **{"threads": 1, "max_wait_ms": 0, "drain_delay_s": 0, "host": "127.0.0.1", "grpc_port": free_port()}
        | overrides
    )


def fakes() -> dict[str, FakeDetector]:
    return {"coco": FakeDetector("coco-fake"), "pets": FakeDetector("pets-fake", ("dog", "ball"))}


@dataclass
class Served:
    """An app serving HTTP (through the test client) and gRPC (on a loopback port) from one event loop."""

    app: FastAPI
    http: TestClient
    target: str
    client: grpcclient.InferenceServerClient

    @property
    def service(self) -> DetectionService:
        return self.app.state.service

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.target)


@contextlib.contextmanager
def serving(detectors: dict | None = None, **overrides) -> Iterator[Served]:
    config = settings(**overrides)
    app = create_app(config, detectors=detectors if detectors is not None else fakes())
    with TestClient(app) as http:
        target = f"127.0.0.1:{config.grpc_port}"
        client = grpcclient.InferenceServerClient(target)
        try:
            yield Served(app, http, target, client)
        finally:
            client.close()


@pytest.fixture
def served() -> Iterator[Served]:
    with serving(max_body_bytes=200_000, max_pixels=10_000, max_images_per_request=3) as s:
        yield s


def image_input(*images: bytes) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("image", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_))
    return tensor


def failure(call, *args, **kwargs) -> tuple[str, str]:
    """The (status code name, message) a ``tritonclient.grpc`` call fails with."""
    with pytest.raises(InferenceServerException) as raised:
        call(*args, **kwargs)
    return raised.value.status().removeprefix("StatusCode."), raised.value.message()


def raw_request(model: str, *images: bytes, **fields) -> pb.ModelInferRequest:
    """What a KServe client that is not tritonclient may send: the images as typed ``bytes_contents``."""
    request = pb.ModelInferRequest(model_name=model, **fields)
    tensor = request.inputs.add(name="image", datatype="BYTES", shape=[len(images)])
    tensor.contents.bytes_contents.extend(images)
    return request


def http_outputs(client: TestClient, model: str, *images: bytes, **extra) -> dict[str, np.ndarray]:
    """The HTTP KServe route's outputs (JSON) for ``images``, as float32 arrays of their shapes."""
    data = [base64.b64encode(image).decode() for image in images]
    body = {"inputs": [{"name": "image", "shape": [len(images)], "datatype": "BYTES", "data": data}], **extra}
    response = client.post(f"/v2/models/{model}/infer", json=body)
    assert response.status_code == 200, response.text
    return {o["name"]: np.array(o["data"], np.float32).reshape(o["shape"]) for o in response.json()["outputs"]}


# --- health and metadata --------------------------------------------------------------------------------------------


def test_health_and_metadata_agree_with_http(served: Served) -> None:
    client = served.client
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("coco") and client.is_model_ready("pets", "0")
    server = client.get_server_metadata()
    assert (server.name, server.version, list(server.extensions)) == tuple(served.http.get("/v2").json().values())
    for model in ("coco", "pets"):
        expected = served.http.get(f"/v2/models/{model}").json()
        metadata = client.get_model_metadata(model)
        assert (metadata.name, list(metadata.versions), metadata.platform) == (model, ["0"], "pytorch")
        for got, want in ((metadata.inputs, expected["inputs"]), (metadata.outputs, expected["outputs"])):
            assert [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in got] == want
        assert client.get_model_metadata(model, "0") == metadata


def test_standard_health_service_follows_readiness_and_liveness(served: Served) -> None:
    with served.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)

        def status(service: str) -> int:
            return health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status

        assert status("") == status(SERVICE_NAME) == status("liveness") == SERVING
        with pytest.raises(grpc.RpcError) as raised:
            status("no.such.Service")
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert next(watch).status == SERVING
        served.service.draining = True  # what the first SIGTERM does (api/__main__.py)
        assert status("") == status(SERVICE_NAME) == NOT_SERVING and status("liveness") == SERVING
        assert next(watch).status == NOT_SERVING  # watchers hear of it within half a second
        watch.cancel()
    assert not served.client.is_server_ready() and served.client.is_server_live()
    assert not served.client.is_model_ready("coco")
    # While the balancer notices, requests are still served (as over HTTP).
    assert served.client.infer("coco", [image_input(PNG)]).as_numpy("num_detections").tolist() == [2.0]


# --- inference ------------------------------------------------------------------------------------------------------


def test_infer_gives_the_http_route_s_outputs(served: Served) -> None:
    parameters = {"score_threshold": 0.7}
    result = served.client.infer("pets", [image_input(PNG, JPEG)], request_id="r-7", parameters=parameters)
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("pets", "0", "r-7")
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("detection_boxes", "FP32", [2, 100, 4]),
        ("detection_scores", "FP32", [2, 100]),
        ("detection_classes", "FP32", [2, 100]),
        ("num_detections", "FP32", [2]),
    ]
    expected = http_outputs(served.http, "pets", PNG, JPEG, parameters=parameters)
    for name in kserve.OUTPUTS:
        np.testing.assert_array_equal(result.as_numpy(name), expected[name], err_msg=name)
    assert result.as_numpy("num_detections").tolist() == [1.0, 1.0]  # the 0.6 detection is below 0.7


def test_requested_outputs_in_their_order_and_max_detections(served: Served) -> None:
    outputs = [grpcclient.InferRequestedOutput(name) for name in ("num_detections", "detection_scores")]
    result = served.client.infer("coco", [image_input(PNG)], outputs=outputs, parameters={"max_detections": 1})
    assert [o.name for o in result.get_response().outputs] == ["num_detections", "detection_scores"]
    assert result.as_numpy("num_detections").tolist() == [1.0]
    assert result.as_numpy("detection_scores")[0, :2].tolist() == pytest.approx([0.9, 0.0])


def test_typed_bytes_contents_from_a_plain_kserve_client(served: Served) -> None:
    with served.channel() as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(raw_request("coco", PNG, JPEG, id="typed"), timeout=10)
    assert response.id == "typed" and len(response.raw_output_contents) == 4
    expected = http_outputs(served.http, "coco", PNG, JPEG)
    for output, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        np.testing.assert_array_equal(np.frombuffer(raw, "<f4").reshape(output.shape), expected[output.name])


def test_stream_answers_in_order_with_errors_in_place(served: Served) -> None:
    answers: queue.Queue = queue.Queue()
    served.client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for i, image in enumerate([PNG, b"not an image", JPEG, PNG]):
            served.client.async_stream_infer("coco", [image_input(image)], request_id=str(i))
        received = [answers.get(timeout=10) for _ in range(4)]
    finally:
        served.client.stop_stream()
    assert [result.get_response().id if result else None for result, _ in received] == ["0", None, "2", "3"]
    assert received[1][1].message() == "not a valid JPEG / PNG / WEBP / GIF / BMP / TIFF image (unrecognised data)"
    assert all(result.as_numpy("num_detections").tolist() == [2.0] for result, _ in received if result)


def test_calls_are_counted_beside_the_service_s_own_metrics(served: Served) -> None:
    served.client.infer("coco", [image_input(PNG, PNG)])
    failure(served.client.infer, "nope", [image_input(PNG)])
    text = served.http.get("/metrics").text
    assert 'detector_grpc_requests_total{code="OK",method="ModelInfer"} 1.0' in text
    assert 'detector_grpc_requests_total{code="NOT_FOUND",method="ModelInfer"} 1.0' in text
    assert 'detector_rejections_total{reason="model_not_found"} 1.0' in text
    # The same batcher and per-model metrics as HTTP.
    assert 'detector_images_total{model="coco"} 2.0' in text and 'detector_batch_size_count{model="coco"} 1.0' in text


# --- errors ---------------------------------------------------------------------------------------------------------


def _error_classes(cls: type[ApiError] = ApiError) -> list[type[ApiError]]:
    return [cls, *(c for sub in cls.__subclasses__() for c in _error_classes(sub))]


def test_every_error_class_has_a_grpc_status_of_its_http_meaning() -> None:
    codes = {cls.__name__: status_code(cls("x")).name for cls in _error_classes()}
    assert "UNKNOWN" not in codes.values(), codes
    expected = {
        "InvalidImage": "INVALID_ARGUMENT",
        "InvalidRequest": "INVALID_ARGUMENT",
        "UnsupportedMediaType": "INVALID_ARGUMENT",
        "Unauthorized": "UNAUTHENTICATED",
        "UnknownModel": "NOT_FOUND",
        "BodyTooLarge": "RESOURCE_EXHAUSTED",
        "TooManyPixels": "RESOURCE_EXHAUSTED",
        "TooManyImages": "RESOURCE_EXHAUSTED",
        "QueueFull": "RESOURCE_EXHAUSTED",
        "NotReady": "UNAVAILABLE",
        "Draining": "UNAVAILABLE",
        "QueueTimeout": "UNAVAILABLE",
        "DeadlineExceeded": "DEADLINE_EXCEEDED",
        "InternalError": "INTERNAL",
    }
    assert {name: codes[name] for name in expected} == expected


@pytest.mark.parametrize(
    ("images", "kwargs", "message"),
    [
        ([b"not an image"], {}, "not a valid JPEG / PNG / WEBP / GIF / BMP / TIFF image (unrecognised data)"),
        ([b""], {}, "empty image"),
        (
            [PNG],
            {"parameters": {"score_threshold": 2}},
            "parameter 'score_threshold' must be a number from 0 to 1, got 2",
        ),
        (
            [PNG],
            {"parameters": {"max_detections": 0}},
            "parameter 'max_detections' must be an integer from 1 to 100, got 0",
        ),
        (
            [PNG],
            {"outputs": [grpcclient.InferRequestedOutput("boxes")]},
            "invalid inference request: outputs.0.name: Input should be 'detection_boxes', 'detection_scores', "
            "'detection_classes' or 'num_detections'",
        ),
    ],
    ids=["not-an-image", "empty-image", "threshold", "max-detections", "output-name"],
)
def test_bad_images_and_requests_are_invalid_argument(
    served: Served, images: list[bytes], kwargs: dict, message: str
) -> None:
    assert failure(served.client.infer, "coco", [image_input(*images)], **kwargs) == ("INVALID_ARGUMENT", message)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda r: r.inputs.add(name="image", datatype="BYTES", shape=[1]),
            "invalid inference request: inputs: List should have at most 1 item after validation, not 2",
        ),
        (
            lambda r: setattr(r.inputs[0], "name", "input0"),
            "invalid inference request: inputs.0.name: Input should be 'image'",
        ),
        (
            lambda r: setattr(r.inputs[0], "datatype", "FP32"),
            "invalid inference request: inputs.0.datatype: Input should be 'BYTES'",
        ),
        (
            lambda r: r.inputs[0].shape.append(3),
            "invalid inference request: inputs.0.shape: List should have at most 1 item after validation, not 2",
        ),
        (lambda r: r.inputs[0].shape.__setitem__(0, 2), "input 'image' has shape [2] but 1 elements"),
        (
            lambda r: r.inputs[0].ClearField("contents"),
            "input 'image' has neither raw_input_contents nor contents.bytes_contents",
        ),
        (
            lambda r: r.raw_input_contents.append(b"\x05\x00"),
            "input 'image' has both raw_input_contents and typed contents",
        ),
        (
            lambda r: (r.inputs[0].ClearField("contents"), r.raw_input_contents.append(b"\x05\x00")),
            "BYTES tensor data ends inside an element's 4-byte length",
        ),
        (
            lambda r: setattr(r.parameters["binary_data_output"], "string_param", "yes"),
            "parameter 'binary_data_output' must be a boolean, got 'yes'",
        ),
    ],
    ids=["two-inputs", "name", "datatype", "shape", "count", "no-data", "both-forms", "bad-raw", "parameter-type"],
)
def test_malformed_requests_are_invalid_argument(served: Served, build, message: str) -> None:
    request = raw_request("coco", PNG)
    build(request)
    with served.channel() as channel, pytest.raises(grpc.RpcError) as raised:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    assert (raised.value.code(), raised.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, message)


def test_unknown_models_and_versions_are_not_found(served: Served) -> None:
    unknown = "Request for unknown model: 'nope' is not found"
    assert failure(served.client.infer, "nope", [image_input(PNG)]) == ("NOT_FOUND", unknown)
    assert failure(served.client.get_model_metadata, "nope") == ("NOT_FOUND", unknown)
    assert failure(served.client.is_model_ready, "nope") == ("NOT_FOUND", unknown)
    versioned = "Request for unknown model: 'coco' version 7 is not found"
    assert failure(served.client.infer, "coco", [image_input(PNG)], model_version="7") == ("NOT_FOUND", versioned)
    assert failure(served.client.get_model_metadata, "coco", "7") == ("NOT_FOUND", versioned)


def test_limits_are_resource_exhausted(served: Served) -> None:
    assert failure(served.client.infer, "coco", [image_input(PNG, PNG, PNG, PNG)]) == (
        "RESOURCE_EXHAUSTED",
        "4 images; at most 3 per request",
    )
    assert failure(served.client.infer, "coco", [image_input(encode(random_rgb(101, 100)))]) == (
        "RESOURCE_EXHAUSTED",
        "image has 101×100 = 10100 pixels; the limit is 10000",
    )
    # A message over the HTTP body limit (200 000 bytes here) is refused by gRPC itself.
    code, message = failure(served.client.infer, "coco", [image_input(b"\xff\xd8\xff" + bytes(200_000))])
    assert code == "RESOURCE_EXHAUSTED" and "larger than max" in message and "200000" in message


def test_a_full_queue_is_resource_exhausted_with_a_retry_pushback() -> None:
    model = GatedModel()
    with serving({"gated": model}, queue_size=1, max_batch_size=1) as s:
        answered: queue.Queue = queue.Queue()
        s.client.async_infer("gated", [image_input(PNG)], callback=lambda result, error: answered.put(error))
        assert model.entered.wait(5)  # the model runs the first request...
        s.client.async_infer("gated", [image_input(PNG)], callback=lambda result, error: answered.put(error))
        deadline = time.monotonic() + 5
        while s.service.batcher.depth("gated") < 1 and time.monotonic() < deadline:  # ...and the second waits
            time.sleep(0.01)
        with s.channel() as channel, pytest.raises(grpc.RpcError) as raised:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(raw_request("gated", PNG), timeout=10)
        model.gate.set()
        assert [answered.get(timeout=10), answered.get(timeout=10)] == [None, None]
    error = raised.value
    assert (error.code(), error.details()) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "the queue is full (1 requests waiting); retry shortly",
    )
    assert ("grpc-retry-pushback-ms", "1000") in error.trailing_metadata()


def test_past_the_deadline_in_the_model_or_in_the_queue() -> None:
    model = GatedModel()
    with serving({"gated": model}, request_timeout_s=0.5, max_batch_size=1) as s:
        answered: queue.Queue = queue.Queue()
        s.client.async_infer("gated", [image_input(PNG)], callback=lambda result, error: answered.put(error))
        assert model.entered.wait(5)
        # Queued behind the held model until its deadline: it did no work, retry (HTTP 503).
        assert failure(s.client.infer, "gated", [image_input(PNG)]) == (
            "UNAVAILABLE",
            "the request waited in the queue past its deadline; retry shortly",
        )
        # The first one: the model started but did not finish in time (HTTP 504).
        error = answered.get(timeout=10)
        assert (error.status(), error.message()) == (
            "StatusCode.DEADLINE_EXCEEDED",
            "the model did not finish this request before its deadline",
        )
        model.gate.set()


def test_a_client_deadline_cancels_a_queued_request() -> None:
    model = GatedModel()
    with serving({"gated": model}, max_batch_size=1) as s:
        answered: queue.Queue = queue.Queue()
        s.client.async_infer("gated", [image_input(PNG)], callback=lambda result, error: answered.put(error))
        assert model.entered.wait(5)
        code, _ = failure(s.client.infer, "gated", [image_input(PNG)], client_timeout=0.3)
        assert code == "DEADLINE_EXCEEDED"
        cancelled = 'detector_grpc_requests_total{code="CANCELLED",method="ModelInfer"} 1.0'
        deadline = time.monotonic() + 5
        while cancelled not in s.http.get("/metrics").text:  # the server's side of it, a moment later
            assert time.monotonic() < deadline
            time.sleep(0.02)
        model.gate.set()
        assert answered.get(timeout=10) is None
        assert s.client.infer("gated", [image_input(PNG)]).as_numpy("num_detections").tolist() == [0.0]
        assert model.batch_sizes == [1, 1]  # the cancelled request never reached the model


def test_draining_and_loading_are_unavailable() -> None:
    with serving() as s:
        s.service.batcher.close(0)  # the worker refuses new work once the service is closing
        assert failure(s.client.infer, "coco", [image_input(PNG)]) == (
            "UNAVAILABLE",
            "the service is shutting down; retry on another replica",
        )
    # A service whose models are still loading: its gRPC endpoint alone, in an event loop of its own.
    config = settings()
    service = DetectionService(config, Metrics(), lambda: fakes())
    server = GrpcServer(service, config, service.metrics, None)
    with anyio.from_thread.start_blocking_portal() as portal:
        portal.call(server.start)
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.port}")
        try:
            assert client.is_server_live() and not client.is_server_ready() and not client.is_model_ready("coco")
            loading = ("UNAVAILABLE", "the model is still loading")
            assert failure(client.infer, "coco", [image_input(PNG)]) == loading
            assert failure(client.get_model_metadata, "coco") == loading
        finally:
            client.close()
            portal.call(server.stop, 0)


def test_a_model_failure_is_internal(served: Served) -> None:
    served.service.models["coco"].fail = True
    assert failure(served.client.infer, "coco", [image_input(PNG)]) == ("INTERNAL", "postprocessing failed")


def test_api_keys_as_bearer_or_x_api_key_metadata() -> None:
    with serving(api_keys="k1,k2") as s:
        client, image = s.client, [image_input(PNG)]
        assert client.is_server_live() and client.is_server_ready()  # probes carry no key
        for call, args in ((client.infer, ("coco", image)), (client.get_model_metadata, ("coco",))):
            assert failure(call, *args) == ("UNAUTHENTICATED", KEY_REQUIRED)
            assert failure(call, *args, headers={"x-api-key": "wrong"}) == ("UNAUTHENTICATED", KEY_REQUIRED)
            assert failure(call, *args, headers={"authorization": "Basic k1"}) == ("UNAUTHENTICATED", KEY_REQUIRED)
        assert failure(client.is_model_ready, "coco") == ("UNAUTHENTICATED", KEY_REQUIRED)
        assert failure(client.get_server_metadata) == ("UNAUTHENTICATED", KEY_REQUIRED)
        for headers in ({"authorization": "Bearer k1"}, {"authorization": "bearer k2"}, {"x-api-key": "k2"}):
            assert client.infer("coco", image, headers=headers).as_numpy("num_detections").tolist() == [2.0]
            assert client.is_model_ready("coco", headers=headers)
        with s.channel() as channel:
            check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert check.status == SERVING
        answers: queue.Queue = queue.Queue()
        client.start_stream(callback=lambda result, error: answers.put(error))
        with contextlib.suppress(InferenceServerException):  # the server may have ended the stream already
            client.async_stream_infer("coco", image)
        error = answers.get(timeout=10)
        client.stop_stream()
        assert (error.status(), error.message()) == ("StatusCode.UNAUTHENTICATED", KEY_REQUIRED)


def test_a_taken_grpc_port_stops_the_start() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        app = create_app(settings(grpc_port=taken.getsockname()[1]), detectors=fakes())
        with pytest.raises(RuntimeError, match="Failed to bind"), TestClient(app):
            pass
    assert not app.state.service.batcher.alive  # the worker was stopped again


# --- a real model on photographs ------------------------------------------------------------------------------------


def test_photographs_get_the_http_route_s_detections(coco_detector) -> None:
    images = [photo(name).read_bytes() for name in ("bus.jpg", "grace_hopper.jpg")]
    with serving({"coco": coco_detector}) as s:
        result = s.client.infer("coco", [image_input(*images)])
        expected = http_outputs(s.http, "coco", *images)
    assert result.as_numpy("num_detections").min() >= 1
    for name in kserve.OUTPUTS:
        np.testing.assert_allclose(result.as_numpy(name), expected[name], atol=1e-6, err_msg=name)


# --- a live service -------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_drains_grpc_like_http() -> None:
    port = free_port()
    env = {"DETECTOR_WEIGHTS": "person", "DETECTOR_GRPC_PORT": str(port), "DETECTOR_DRAIN_DELAY_S": "2"}
    data = photo("zidane.jpg").read_bytes()
    with running_service(env) as service:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        health = health_pb2_grpc.HealthStub(channel)
        ready = lambda: health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status  # noqa: E731
        assert ready() == SERVING and client.is_server_ready()
        # A stream of frames, one every 50 ms, open from before the signal until after the service closed.
        answers: queue.Queue = queue.Queue()
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        stop_sending = threading.Event()

        def send() -> None:
            while not stop_sending.is_set():
                client.async_stream_infer("person", [image_input(data)])
                time.sleep(0.05)

        sender = threading.Thread(target=send)
        sender.start()
        time.sleep(0.5)
        signalled = time.monotonic()
        service.process.send_signal(signal.SIGTERM)
        while ready() != NOT_SERVING:  # readiness turns false at once...
            assert time.monotonic() - signalled < 1
            time.sleep(0.05)
        assert not client.is_server_ready() and client.is_server_live()
        # ...while calls are still served until the drain delay is over,
        assert client.infer("person", [image_input(data)]).as_numpy("num_detections")[0] >= 1
        # then no new call is taken, and the stream in flight goes on being answered.
        refused = None
        while refused is None and time.monotonic() - signalled < 10:
            try:
                client.infer("person", [image_input(data)], client_timeout=2)
                time.sleep(0.1)
            except InferenceServerException as exc:
                refused = exc.status()
        assert refused == "StatusCode.UNAVAILABLE"
        time.sleep(0.5)
        stop_sending.set()
        sender.join()
        client.stop_stream()
        results = []
        while not answers.empty():
            results.append(answers.get())
        assert service.process.wait(30) == 0
        channel.close()
    assert len(results) >= 20 and all(error is None for _, error in results), [e for _, e in results if e][:3]
    assert '"message": "gRPC stopped"' in service.log()


@pytest.mark.slow
@pytest.mark.skipif(find_nginx() is None, reason="nginx is not installed (apt-get install nginx)")
def test_tritonclient_grpc_through_nginx(tmp_path: Path) -> None:
    port = free_port()
    env = {"DETECTOR_WEIGHTS": "person", "DETECTOR_GRPC_PORT": str(port), "DETECTOR_API_KEYS": "nginx-key"}
    with running_service(env) as service:
        http_port = int(service.url.rsplit(":", 1)[1])
        nginx = Nginx(tmp_path, free_port(), [http_port], 1 << 20, grpc_port=free_port(), grpc_replica_ports=[port])
        nginx.start()
        try:
            client = grpcclient.InferenceServerClient(f"127.0.0.1:{nginx.grpc_port}")
            assert client.is_server_ready()
            image = [image_input(photo("zidane.jpg").read_bytes())]
            assert failure(client.infer, "person", image) == ("UNAUTHENTICATED", KEY_REQUIRED)
            result = client.infer("person", image, headers={"authorization": "Bearer nginx-key"}, request_id="n-1")
            assert result.get_response().id == "n-1" and result.as_numpy("num_detections")[0] >= 1
            assert failure(client.infer, "nope", image, headers={"x-api-key": "nginx-key"})[0] == "NOT_FOUND"
            with grpc.insecure_channel(f"127.0.0.1:{nginx.grpc_port}") as channel:
                check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert check.status == SERVING
            client.close()
        finally:
            nginx.stop()
    calls = [entry for entry in nginx.served() if entry["uri"].startswith("/inference.")]
    assert {entry["uri"] for entry in calls} >= {"/inference.GRPCInferenceService/ModelInfer"}


# --- deployment files -----------------------------------------------------------------------------------------------


def test_compose_publishes_grpc_through_nginx() -> None:
    root = Path(__file__).resolve().parent.parent
    compose = yaml.safe_load((root / "docker-compose.yml").read_text())
    api, nginx = compose["services"]["api"], compose["services"]["nginx"]
    port = str(Settings.model_fields["grpc_port"].default)
    assert port in api["expose"] and any(p.endswith(f":{port}") for p in nginx["ports"])
    assert nginx["environment"]["NGINX_GRPC_PORT"] == port
    mounts = {volume.split(":")[1] for volume in nginx["volumes"]}
    assert {"/etc/nginx/templates/detector-grpc.conf.template", "/etc/nginx/detector-replicas-grpc.conf"} <= mounts
    replicas = (root / "docker" / "nginx-replicas-grpc.conf").read_text()
    assert f"server api:{port} resolve" in replicas
