"""KServe v2 (the Open Inference Protocol) over gRPC, beside the HTTP API, in the same process and event loop.

``inference.GRPCInferenceService`` on ``DETECTOR_GRPC_PORT`` (default 8001, Triton's; 0: off) — ServerLive,
ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer and ModelStreamInfer, for every served model — and
the standard health service ``grpc.health.v1.Health``, for Kubernetes' gRPC probes and gRPC-aware load balancers.

**The service definition** is Triton's ``grpc_service.proto`` as compiled in ``tritonclient`` (released with Triton).
KServe's ``grpc_predict_v2.proto`` is its subset — the same package ``inference``, service, messages and field
numbers — so ``tritonclient.grpc``, KServe's clients and Triton's perf_analyzer all call it unchanged. Triton's other
methods (model repository, statistics, shared memory, trace and log settings) answer UNIMPLEMENTED, the generated
servicer's default.

**The same path as HTTP.** A request names the model (``model_version`` empty: any); the image is the BYTES input
``image`` with one element per image, in ``raw_input_contents`` (the tensor's serialized data, what ``tritonclient``
sends) or typed ``contents.bytes_contents``. It is validated by :mod:`api.kserve` with the HTTP route's messages
(parameters ``score_threshold`` and ``max_detections`` included) and run through ``DetectionService.detect``: the same
decoding threads, memory budget, queues, batches, deadline (``DETECTOR_REQUEST_TIMEOUT_S``) and per-model metrics.
The outputs are the HTTP route's four tensors, in ``raw_output_contents`` (FP32 little-endian), as Triton answers.
A client's own gRPC deadline cancels its call: a request still queued then costs the model nothing.

**Errors** map from our error classes in one place, :func:`status_code`, by the HTTP status each carries: 400, 415
and 422 → INVALID_ARGUMENT, 401 → UNAUTHENTICATED, 404 → NOT_FOUND, 413 → RESOURCE_EXHAUSTED, 503 → UNAVAILABLE
(but a full queue → RESOURCE_EXHAUSTED), 504 → DEADLINE_EXCEEDED, 500 → INTERNAL; the message is the HTTP route's.
Those that HTTP answers with ``Retry-After`` carry the trailer ``grpc-retry-pushback-ms`` (read by gRPC's retry
policies). A message over ``DETECTOR_MAX_BODY_BYTES`` is refused by gRPC itself, RESOURCE_EXHAUSTED. In a stream, a
failed request is answered in its place with ``error_message`` (as Triton does) and the stream goes on.

**API keys.** With ``DETECTOR_API_KEYS`` set, every method but ServerLive, ServerReady and the health service needs a
key in the call's metadata, ``authorization: Bearer KEY`` or ``x-api-key: KEY`` (as on HTTP, :mod:`api.auth`).

**Lifecycle.** The app's lifespan starts it as the models start loading (readiness false until they are) and stops
it before the inference worker.
After a SIGTERM, readiness (ServerReady, health) turns false at once while calls are still served; when the HTTP
server stops taking connections, gRPC stops taking calls and lets those in flight finish, within the same
``DETECTOR_SHUTDOWN_TIMEOUT_S`` (``api.__main__``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, NoReturn

import grpc
from fastapi.security.utils import get_authorization_scheme_param
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from api import kserve
from api.auth import API_KEY_HEADER, ApiKeys
from api.errors import ApiError, InternalError, InvalidRequest, QueueFull, from_detector_error
from api.logs import request_id_var
from api.metrics import Metrics
from api.middleware import REQUEST_ID_HEADER, request_id_for
from api.service import DetectionService
from api.settings import Settings
from detector.errors import DetectorError

log = logging.getLogger("api.grpc")

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
# Health service names: "" (the server, what a Kubernetes gRPC probe asks by default) and the inference service follow
# readiness; "liveness" follows liveness (the process and its inference worker run).
READINESS_SERVICES = ("", SERVICE_NAME)
LIVENESS_SERVICE = "liveness"
# How often the health service's watchers are told of a change (Check always answers the current state).
_HEALTH_INTERVAL_S = 0.5
# The trailer gRPC's retry policies read for how long to wait before retrying (gRFC A6).
RETRY_PUSHBACK = "grpc-retry-pushback-ms"

# Each of our errors by the HTTP status it carries: one table, so a new error class is mapped by its status.
_BY_STATUS: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
# Where the status alone says less than gRPC can: a full queue is exhausted capacity, not an unavailable server.
_BY_CLASS: dict[type[ApiError], grpc.StatusCode] = {QueueFull: grpc.StatusCode.RESOURCE_EXHAUSTED}


def status_code(error: ApiError) -> grpc.StatusCode:
    """The gRPC status code for one of our errors (see the module docstring)."""
    for cls in type(error).__mro__:
        if cls in _BY_CLASS:
            return _BY_CLASS[cls]
    return _BY_STATUS.get(error.status, grpc.StatusCode.UNKNOWN)


def _as_api_error(exc: Exception) -> ApiError:
    """Any failure of a call as one of our errors, as the HTTP side's handlers turn it into a response."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, DetectorError):
        return from_detector_error(exc)
    log.error("unhandled error", exc_info=exc)
    return InternalError("internal error")


def _trailers(error: ApiError) -> tuple[tuple[str, str], ...]:
    return () if error.retry_after is None else ((RETRY_PUSHBACK, str(error.retry_after * 1000)),)


async def _abort(context: grpc.aio.ServicerContext, error: ApiError) -> NoReturn:
    await context.abort(status_code(error), error.message, _trailers(error))
    raise AssertionError("ServicerContext.abort returned")  # it raises, ending the call


# --- requests and answers -------------------------------------------------------------------------------------------


def _parameter_values(parameters: Mapping[str, pb.InferParameter]) -> dict[str, kserve.Parameter]:
    """Protobuf ``InferParameter`` values as JSON's: whichever of bool, int64, uint64, double, string is set."""
    values: dict[str, kserve.Parameter] = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        if choice is not None:
            values[key] = getattr(parameter, choice)
    return values


def parse_request(request: pb.ModelInferRequest, max_images: int) -> kserve.Inference:
    """A ``ModelInferRequest`` as the HTTP route reads its JSON: validated by :func:`api.kserve.validate_request`, the
    image elements from ``raw_input_contents`` or typed ``bytes_contents``. Raises ``InvalidRequest``,
    ``TooManyImages``."""
    fields: dict[str, Any] = {
        "id": request.id or None,
        "parameters": _parameter_values(request.parameters),
        "inputs": [
            {
                "name": tensor.name,
                "datatype": tensor.datatype,
                "shape": list(tensor.shape),
                "parameters": _parameter_values(tensor.parameters),
            }
            for tensor in request.inputs
        ],
        # None: every output (a protobuf list cannot tell "none asked for" from "empty"; Triton reads it so too).
        "outputs": [{"name": o.name, "parameters": _parameter_values(o.parameters)} for o in request.outputs] or None,
    }
    validated = kserve.validate_request(fields, max_images=max_images)
    tensor = request.inputs[0]
    if request.raw_input_contents:
        if len(request.raw_input_contents) != len(request.inputs):
            raise InvalidRequest(
                f"raw_input_contents has {len(request.raw_input_contents)} entries for {len(request.inputs)} input"
            )
        if tensor.HasField("contents"):
            raise InvalidRequest(f"input {kserve.INPUT!r} has both raw_input_contents and typed contents")
        images = kserve.bytes_elements(request.raw_input_contents[0])
    elif tensor.contents.bytes_contents:
        images = list(tensor.contents.bytes_contents)
    else:
        raise InvalidRequest(f"input {kserve.INPUT!r} has neither raw_input_contents nor contents.bytes_contents")
    return kserve.inference(validated, images)


# --- the services ---------------------------------------------------------------------------------------------------


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The protocol's methods on the service (see the module docstring).

    Args:
        service: the detection service the HTTP routes use too.
        settings: the serving settings (limits).
        metrics: where calls are counted (``detector_grpc_*``) beside the service's own metrics.
        api_keys: the accepted keys; None: authentication off.
    """

    def __init__(self, service: DetectionService, settings: Settings, metrics: Metrics, api_keys: ApiKeys | None):
        self._service = service
        self._settings = settings
        self._metrics = metrics
        self._keys = api_keys
        # Requests of one stream in progress at once: enough to fill a batch while the previous one runs.
        self._stream_window = 2 * settings.max_batch_size

    # --- health and metadata ------------------------------------------------------------------------------------

    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext) -> Any:
        live = self._service.alive
        return await self._answer("ServerLive", context, lambda: pb.ServerLiveResponse(live=live), keyed=False)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext) -> Any:
        ready = self._service.ready
        return await self._answer("ServerReady", context, lambda: pb.ServerReadyResponse(ready=ready), keyed=False)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext) -> Any:
        return await self._answer("ModelReady", context, lambda: self._model_ready(request))

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext) -> Any:
        return await self._answer(
            "ServerMetadata", context, lambda: pb.ServerMetadataResponse(**kserve.server_metadata().model_dump())
        )

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext) -> Any:
        return await self._answer("ModelMetadata", context, lambda: self._model_metadata(request))

    def _model_metadata(self, request: pb.ModelMetadataRequest) -> pb.ModelMetadataResponse:
        metadata = kserve.served_model_metadata(self._service, request.name, request.version or None)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=metadata.name,
            versions=metadata.versions,
            platform=metadata.platform,
            inputs=[tensor(**t.model_dump()) for t in metadata.inputs],
            outputs=[tensor(**t.model_dump()) for t in metadata.outputs],
        )

    def _model_ready(self, request: pb.ModelReadyRequest) -> pb.ModelReadyResponse:
        if not self._service.loaded:  # which names exist is not known yet
            return pb.ModelReadyResponse(ready=False)
        kserve.served_model(self._service, request.name, request.version or None)  # NOT_FOUND if unknown
        return pb.ModelReadyResponse(ready=self._service.ready)

    # --- inference ----------------------------------------------------------------------------------------------

    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> Any:
        return await self._answer("ModelInfer", context, lambda: self._infer(request))

    async def ModelStreamInfer(
        self, requests: AsyncIterator[pb.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Each request of the stream answered in order, up to ``2 × DETECTOR_MAX_BATCH_SIZE`` in progress at once
        (reading pauses beyond that: HTTP/2 flow control holds the client back)."""
        try:
            self._authorize(context)
        except ApiError as error:
            self._record("ModelStreamInfer", status_code(error), time.perf_counter(), error)
            await _abort(context, error)
        window = asyncio.Semaphore(self._stream_window)
        answers: asyncio.Queue[asyncio.Task[pb.ModelStreamInferResponse] | None] = asyncio.Queue()

        async def read() -> None:
            try:
                async for request in requests:
                    await window.acquire()
                    answers.put_nowait(asyncio.create_task(self._stream_one(request)))
            finally:
                answers.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (task := await answers.get()) is not None:
                answer = await task
                window.release()
                yield answer
            await reader  # a failure to read the stream ends the call with it
        finally:
            reader.cancel()
            while not answers.empty():
                if (pending := answers.get_nowait()) is not None:
                    pending.cancel()

    async def _infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        name = kserve.served_model(self._service, request.model_name, request.model_version or None)
        # Up to DETECTOR_MAX_BODY_BYTES to copy out of the message, split and validate: in a decoding thread, as HTTP's.
        inference = await self._service.decoding(parse_request, request, self._settings.max_images_per_request)
        results = await kserve.detect(self._service, name, inference)
        response = pb.ModelInferResponse(model_name=name, model_version=self._service.info(name).version, id=request.id)
        for output, tensor, _ in kserve.output_tensors(inference, results):
            response.outputs.add(name=output, datatype="FP32", shape=tensor.shape)
            response.raw_output_contents.append(tensor.tobytes())
        return response

    async def _stream_one(self, request: pb.ModelInferRequest) -> pb.ModelStreamInferResponse:
        started = time.perf_counter()
        self._metrics.inflight.inc()
        try:
            response = await self._infer(request)
        except Exception as exc:
            error = _as_api_error(exc)
            self._record("ModelStreamInfer", status_code(error), started, error)
            return pb.ModelStreamInferResponse(error_message=error.message)
        finally:
            self._metrics.inflight.dec()
        self._record("ModelStreamInfer", grpc.StatusCode.OK, started)
        return pb.ModelStreamInferResponse(infer_response=response)

    # --- every call -----------------------------------------------------------------------------------------------

    async def _answer(
        self,
        method: str,
        context: grpc.aio.ServicerContext,
        handler: Callable[[], Any],
        *,
        keyed: bool = True,
    ) -> Any:
        """``handler``'s answer (awaited, if it is awaitable), or the call ended with the status of its error; counted
        and logged either way."""
        started = time.perf_counter()
        metadata = {key: value for key, value in context.invocation_metadata() or ()}
        token = request_id_var.set(request_id_for(metadata.get(REQUEST_ID_HEADER)))
        self._metrics.inflight.inc()
        code, error = grpc.StatusCode.OK, None
        try:
            if keyed:
                self._authorize(context)
            answer = handler()
            return await answer if inspect.isawaitable(answer) else answer
        except asyncio.CancelledError:  # the client cancelled, or its own deadline passed
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            error = _as_api_error(exc)
            code = status_code(error)
            await _abort(context, error)
        finally:
            self._metrics.inflight.dec()
            self._record(method, code, started, error)
            request_id_var.reset(token)

    def _authorize(self, context: grpc.aio.ServicerContext) -> None:
        """``Unauthorized`` unless the call's metadata carries a key (nothing to check when keys are off)."""
        if self._keys is None:
            return
        metadata = {key: value for key, value in context.invocation_metadata() or ()}
        scheme, token = get_authorization_scheme_param(metadata.get("authorization"))
        self._keys.require(metadata.get(API_KEY_HEADER.lower()), token if scheme.lower() == "bearer" else None)

    def _record(self, method: str, code: grpc.StatusCode, started: float, error: ApiError | None = None) -> None:
        duration = time.perf_counter() - started
        self._metrics.grpc_requests.labels(method, code.name).inc()
        self._metrics.grpc_request_duration.labels(method).observe(duration)
        if error is not None:
            self._metrics.rejected(error.code)
        log.info("call", extra={"method": method, "code": code.name, "duration_ms": round(duration * 1000, 2)})


class ServiceHealth(health.aio.HealthServicer):
    """``grpc.health.v1.Health`` following the service: :data:`READINESS_SERVICES` SERVING while it is ready (models
    loaded, not draining), :data:`LIVENESS_SERVICE` while alive. Check reads the state at once; watchers hear of a
    change within half a second (:meth:`follow`)."""

    def __init__(self, service: DetectionService):
        super().__init__()
        self._service = service

    async def Check(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext) -> Any:
        await self.refresh()
        return await super().Check(request, context)

    async def refresh(self) -> None:
        """Set every status from the service's state now."""
        serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        ready = serving if self._service.ready else not_serving
        for name in READINESS_SERVICES:
            await self.set(name, ready)
        await self.set(LIVENESS_SERVICE, serving if self._service.alive else not_serving)

    async def follow(self) -> None:
        """Refresh forever (until cancelled), for the watchers."""
        while True:
            await self.refresh()
            await asyncio.sleep(_HEALTH_INTERVAL_S)


# --- the server -----------------------------------------------------------------------------------------------------


class GrpcServer:
    """The service's gRPC endpoint on ``settings.host``:``settings.grpc_port``; ``start`` and ``stop`` run in the
    event loop that serves it (the app's: ``api.main``'s lifespan).

    Args:
        service: the detection service.
        settings: the serving settings; the port, and the message size limit (``max_body_bytes``, each way).
        metrics: the app's metrics.
        api_keys: the accepted keys; None: authentication off.
    """

    def __init__(self, service: DetectionService, settings: Settings, metrics: Metrics, api_keys: ApiKeys | None):
        self.settings = settings
        self.health = ServiceHealth(service)
        self.servicer = InferenceServicer(service, settings, metrics, api_keys)
        self.port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._follower: asyncio.Task[None] | None = None
        self._stopping: asyncio.Future[None] | None = None

    async def start(self) -> None:
        """Bind and serve; ``RuntimeError`` if the port cannot be bound (taken: no port sharing, SO_REUSEPORT off)."""
        options = [
            ("grpc.max_receive_message_length", self.settings.max_body_bytes),
            ("grpc.max_send_message_length", self.settings.max_body_bytes),
            ("grpc.so_reuseport", 0),
        ]
        server = grpc.aio.server(options=options)
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        host = self.settings.host
        address = f"[{host}]:{self.settings.grpc_port}" if ":" in host else f"{host}:{self.settings.grpc_port}"
        self.port = server.add_insecure_port(address)
        await server.start()
        self._server = server
        self._follower = asyncio.create_task(self.health.follow())
        log.info("gRPC serving", extra={"address": address, "services": [SERVICE_NAME, "grpc.health.v1.Health"]})

    def begin_stop(self, grace_s: float) -> None:
        """Stop taking calls now; those in flight get ``grace_s`` seconds to finish, then are cancelled."""
        if self._server is not None and self._stopping is None:
            self._stopping = asyncio.ensure_future(self._server.stop(grace_s))

    async def stop(self, grace_s: float) -> None:
        """As :meth:`begin_stop`, and wait until the server has stopped (idempotent; nothing if never started)."""
        self.begin_stop(grace_s)
        if self._stopping is None:
            return
        await self._stopping
        if self._follower is not None:
            self._follower.cancel()
            self._follower = None
            log.info("gRPC stopped")
