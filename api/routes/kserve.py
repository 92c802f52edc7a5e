"""The KServe v2 / Triton HTTP API (the Open Inference Protocol's required endpoints), for ``tritonclient`` and the
other clients that speak it.

``GET /v2`` (server metadata), ``/v2/health/live``, ``/v2/health/ready``, ``/v2/models/{model}[/versions/{v}]``
(metadata), ``.../ready`` and ``POST .../infer``. Health carries no body (the status is the answer) and needs no key.
Tensors and the binary data extension are in :mod:`api.kserve`. Errors are ``{"error": ...}``: 400 for a bad
request (tensor, parameter, image), 401 without a valid key, 404 for an unknown model or version, 413 for a body,
image or batch too large, 503 while loading, draining or overloaded, 504 past the deadline.
"""

from __future__ import annotations

import zlib
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Request
from fastapi.responses import Response

from api import kserve
from api.auth import require_api_key
from api.deps import ModelPath, ServiceDep, SettingsDep
from api.errors import BodyTooLarge, InternalError, InvalidRequest, UnsupportedMediaType, error_responses
from api.service import DetectionService
from api.settings import Settings

health = APIRouter(prefix="/v2/health", tags=["kserve"])
router = APIRouter(prefix="/v2", tags=["kserve"], dependencies=[Depends(require_api_key)])

VersionPath = Annotated[str, Path(description="the model's version (GET /v2/models/{model} lists it)")]
_NO_BODY: dict[int | str, dict[str, Any]] = {200: {"description": "yes (no body: the status is the answer)"}}
_INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": (
            "The inference request as JSON (BYTES elements base64), or JSON followed by binary tensor data "
            f"({kserve.HEADER_LENGTH} gives the JSON's length), or one raw image ({kserve.HEADER_LENGTH}: 0)."
        ),
        "content": {
            "application/json": {"schema": kserve.inline_schema(kserve.InferenceRequest)},
            kserve.BINARY_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
_INFERRED: dict[int | str, dict[str, Any]] = {
    200: {
        "model": kserve.InferenceResponse,
        "description": "the outputs: JSON, or JSON followed by binary tensor data",
        "content": {kserve.BINARY_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
    }
}


# --- health (no key) ------------------------------------------------------------------------------------------------


@health.get(
    "/live", summary="Liveness", response_class=Response, responses={**_NO_BODY, **error_responses("kserve", 500)}
)
async def live(service: ServiceDep) -> Response:
    """200 while the process and its inference worker run."""
    if not service.alive:
        raise InternalError("the inference worker stopped")
    return Response(status_code=200)


@health.get(
    "/ready",
    summary="Readiness: every model loaded, not draining",
    response_class=Response,
    responses={**_NO_BODY, **error_responses("kserve", 503)},
)
async def ready(service: ServiceDep) -> Response:
    """200 when ready; 503 while loading or draining."""
    kserve.require_ready(service)
    return Response(status_code=200)


# --- metadata -------------------------------------------------------------------------------------------------------


@router.get("", summary="Server metadata", responses=error_responses("kserve", 401))
async def server_metadata() -> kserve.ServerMetadata:
    """The server's name, version and protocol extensions."""
    return kserve.server_metadata()


@router.get("/models/{model}", summary="Model metadata", responses=error_responses("kserve", 401, 404, 503))
async def model_metadata(model: ModelPath, service: ServiceDep) -> kserve.ModelMetadata:
    """The model's one input and four outputs, with datatypes and shapes."""
    return kserve.served_model_metadata(service, model)


@router.get(
    "/models/{model}/versions/{version}",
    summary="Model metadata (of a version)",
    responses=error_responses("kserve", 401, 404, 503),
)
async def model_version_metadata(model: ModelPath, version: VersionPath, service: ServiceDep) -> kserve.ModelMetadata:
    """As ``GET /v2/models/{model}``, for its one version."""
    return kserve.served_model_metadata(service, model, version)


def _model_ready(service: DetectionService, model: str, version: str | None) -> Response:
    kserve.served_model(service, model, version)
    kserve.require_ready(service)
    return Response(status_code=200)


_READY_RESPONSES: dict[int | str, dict[str, Any]] = {**_NO_BODY, **error_responses("kserve", 401, 404, 503)}


@router.get("/models/{model}/ready", summary="Model readiness", response_class=Response, responses=_READY_RESPONSES)
async def model_ready(model: ModelPath, service: ServiceDep) -> Response:
    """200 when the model is ready; 404 for an unknown one."""
    return _model_ready(service, model, None)


@router.get(
    "/models/{model}/versions/{version}/ready",
    summary="Model readiness (of a version)",
    response_class=Response,
    responses=_READY_RESPONSES,
)
async def model_version_ready(model: ModelPath, version: VersionPath, service: ServiceDep) -> Response:
    """As ``GET /v2/models/{model}/ready``, for its one version."""
    return _model_ready(service, model, version)


# --- inference ------------------------------------------------------------------------------------------------------


def _decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body as sent before ``Content-Encoding`` (``tritonclient``'s gzip / deflate), at most ``limit`` bytes."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise UnsupportedMediaType(f"unsupported Content-Encoding {encoding!r}; send gzip, deflate or none")
    # gzip is zlib's deflate with gzip framing: window bits + 16.
    decompressor = zlib.decompressobj(zlib.MAX_WBITS | 16 if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        data = decompressor.decompress(body, limit + 1)
    except zlib.error:
        raise InvalidRequest(f"the body is not valid {encoding} data") from None
    if len(data) > limit:
        raise BodyTooLarge(f"the decompressed body exceeds the limit of {limit} bytes")
    if not decompressor.eof:
        raise InvalidRequest(f"the body is not valid {encoding} data")
    return data


def _read_inference(
    body: bytes, encoding: str | None, header_length: str | None, settings: Settings
) -> kserve.Inference:
    return kserve.parse_request(
        _decompress(body, encoding, settings.max_body_bytes),
        header_length,
        max_images=settings.max_images_per_request,
    )


# Declared so that the schema documents it and a malformed value is refused (400) before the body is read; the value
# itself is read with the body (api.kserve.parse_request).
InferenceHeaderLength = Annotated[
    int | None,
    Header(
        alias=kserve.HEADER_LENGTH,
        ge=0,
        description="the JSON's length when binary tensor data follow it; 0: the body is one raw image",
    ),
]


async def _infer(
    request: Request, service: DetectionService, settings: Settings, model: str, version: str | None
) -> Response:
    name = kserve.served_model(service, model, version)
    # Up to 16 MiB to inflate, validate as JSON and base64-decode: CPU work, so in a decoding thread.
    inference = await service.decoding(
        _read_inference,
        await request.body(),
        request.headers.get("content-encoding"),
        request.headers.get(kserve.HEADER_LENGTH),
        settings,
    )
    results = await kserve.detect(service, name, inference)
    content, headers, media_type = kserve.encode_response(name, service.info(name).version, inference, results)
    return Response(content, media_type=media_type, headers=headers)


_INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_INFERRED,
    **error_responses("kserve", 401, 404, 413, 415, 422, 500, 503, 504),
}


@router.post("/models/{model}/infer", summary="Inference", responses=_INFER_RESPONSES, openapi_extra=_INFER_BODY)
async def infer(
    model: ModelPath,
    request: Request,
    service: ServiceDep,
    settings: SettingsDep,
    header_length: InferenceHeaderLength = None,
) -> Response:
    """Detect objects in each element of the ``image`` input; outputs as the TF Object Detection API names them."""
    return await _infer(request, service, settings, model, None)


@router.post(
    "/models/{model}/versions/{version}/infer",
    summary="Inference (on a version)",
    responses=_INFER_RESPONSES,
    openapi_extra=_INFER_BODY,
)
async def infer_version(
    model: ModelPath,
    version: VersionPath,
    request: Request,
    service: ServiceDep,
    settings: SettingsDep,
    header_length: InferenceHeaderLength = None,
) -> Response:
    """As ``POST /v2/models/{model}/infer``, on its one version."""
    return await _infer(request, service, settings, model, version)
