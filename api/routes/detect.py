"""Our detection API: ``POST /v1/detect`` (JSON detections) and ``POST /v1/detect/render`` (the image with its boxes
drawn) on the default model, and the same on any served model under ``/v1/models/{model}/``."""

from __future__ import annotations

import io
import time
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from api.auth import require_api_key
from api.deps import DetectParamsDep, ModelPath, ServiceDep, SettingsDep
from api.errors import InvalidRequest, TooManyImages, UnsupportedMediaType, error_responses
from api.service import DetectionService, DetectParams
from api.settings import Settings
from api.uploads import MEDIA_TYPES, Upload, check_media_type, media_type, read_multipart
from detector.drawing import draw_detections

router = APIRouter(prefix="/v1", tags=["detection"], dependencies=[Depends(require_api_key)])

IMAGE_PART = "image"

_BINARY = {"schema": {"type": "string", "format": "binary"}}
REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "Images as multipart parts named `image` (one or more), or one image as the raw body.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        IMAGE_PART: {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1}
                    },
                    "required": [IMAGE_PART],
                    "additionalProperties": False,
                }
            },
            **{t: _BINARY for t in ("image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "image/tiff")},
        },
    }
}
# Every status these routes answer besides 200 (a model route adds 404).
ERRORS = error_responses("detector", 401, 413, 415, 422, 500, 503, 504)
MODEL_ERRORS = error_responses("detector", 401, 404, 413, 415, 422, 500, 503, 504)


class ModelRef(BaseModel):
    id: str  # the name it is served under: /v1/models/{id}/detect
    name: str  # the model's own name, from its weights
    version: str


class DetectionOut(BaseModel):
    label: str
    class_id: int
    score: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in the original image's pixels


class ImageResultOut(BaseModel):
    width: int
    height: int
    detections: list[DetectionOut]


class TimingsOut(BaseModel):
    decode: float
    queue: float
    inference: float
    total: float


class DetectResponse(BaseModel):
    """Documents the response of ``POST /v1/detect`` (it is built as plain JSON, not validated)."""

    request_id: str
    model: ModelRef
    results: list[ImageResultOut]
    timings_ms: TimingsOut
    batch_size: int


async def read_uploads(request: Request, settings: Settings) -> list[Upload]:
    """The request's images: multipart parts named ``image``, or the whole body for an image content type."""
    content_type = media_type(request.headers.get("content-type"))
    if content_type == "multipart/form-data":
        return await _read_multipart(request, settings.max_images_per_request)
    if content_type.startswith("image/"):
        check_media_type(content_type)
        return [Upload(await request.body(), content_type)]
    raise UnsupportedMediaType(
        f"unsupported content type {content_type or '(none)'!r}: send multipart/form-data with parts named "
        f"{IMAGE_PART!r}, or one image as the body ({', '.join(sorted(set(MEDIA_TYPES)))})"
    )


async def _read_multipart(request: Request, max_images: int) -> list[Upload]:
    uploads = []
    for name, value in await read_multipart(request, max_files=max_images, max_fields=max_images):
        if name != IMAGE_PART:
            raise InvalidRequest(f"unexpected form field {name!r}; send images as parts named {IMAGE_PART!r}")
        if isinstance(value, str):
            raise InvalidRequest(f"form field {IMAGE_PART!r} must be a file")
        uploads.append(value)
    if not uploads:
        raise InvalidRequest(f"no image: send one or more multipart parts named {IMAGE_PART!r}")
    if len(uploads) > max_images:
        raise TooManyImages(f"{len(uploads)} images; at most {max_images} per request")
    return uploads


async def _detect(
    model: str | None, request: Request, service: DetectionService, settings: Settings, params: DetectParams
) -> JSONResponse:
    started = time.monotonic()
    uploads = await read_uploads(request, settings)
    outcome = await service.detect(model, uploads, params)
    info = service.info(outcome.model)
    body = {
        "request_id": request.state.request_id,
        "model": {"id": outcome.model, "name": info.name, "version": info.version},
        "results": [result.to_dict() for result in outcome.results],
        "timings_ms": {
            "decode": round(outcome.decode_s * 1000, 2),
            "queue": round(outcome.queue_s * 1000, 2),
            "inference": round(outcome.inference_s * 1000, 2),
            "total": round((time.monotonic() - started) * 1000, 2),
        },
        "batch_size": outcome.batch_size,
    }
    return JSONResponse(body)


async def _render(
    model: str | None,
    request: Request,
    service: DetectionService,
    settings: Settings,
    params: DetectParams,
    format: Literal["jpeg", "png"],
) -> Response:
    uploads = await read_uploads(request, settings)
    if len(uploads) != 1:
        raise InvalidRequest(f"render takes exactly one image, got {len(uploads)}")
    async with service.detecting(model, uploads, params) as outcome:  # the pixels are drawn on, then given back

        def encode() -> bytes:
            buffer = io.BytesIO()
            draw_detections(outcome.arrays[0], outcome.results[0]).save(buffer, format=format.upper(), quality=90)
            return buffer.getvalue()

        data = await anyio.to_thread.run_sync(encode)
    return Response(
        data, media_type=f"image/{format}", headers={"X-Detections": str(len(outcome.results[0].detections))}
    )


RenderFormat = Annotated[Literal["jpeg", "png"], Query(description="the returned image's format")]
_RENDERED = {"content": {"image/jpeg": {}, "image/png": {}}, "description": "the image with its boxes drawn"}


@router.post(
    "/detect",
    summary="Detect objects in one or more images (the default model)",
    response_model=DetectResponse,
    responses=ERRORS,
    openapi_extra=REQUEST_BODY,
)
async def detect(request: Request, service: ServiceDep, settings: SettingsDep, params: DetectParamsDep) -> JSONResponse:
    """Boxes in each image's original pixels (after EXIF orientation), one result per image, in order."""
    return await _detect(None, request, service, settings, params)


@router.post(
    "/detect/render",
    summary="Detect objects in one image and get it back with the boxes drawn (the default model)",
    response_class=Response,
    responses={200: _RENDERED, **ERRORS},
    openapi_extra=REQUEST_BODY,
)
async def render(
    request: Request, service: ServiceDep, settings: SettingsDep, params: DetectParamsDep, format: RenderFormat = "jpeg"
) -> Response:
    """The upright image with each detection's box and label drawn; ``X-Detections`` holds the count."""
    return await _render(None, request, service, settings, params, format)


@router.post(
    "/models/{model}/detect",
    summary="Detect objects in one or more images with the named model",
    response_model=DetectResponse,
    responses=MODEL_ERRORS,
    openapi_extra=REQUEST_BODY,
)
async def detect_with(
    model: ModelPath, request: Request, service: ServiceDep, settings: SettingsDep, params: DetectParamsDep
) -> JSONResponse:
    """As ``POST /v1/detect``, with the model served as ``model``; 404 for a name not served."""
    return await _detect(model, request, service, settings, params)


@router.post(
    "/models/{model}/detect/render",
    summary="Detect objects in one image with the named model and get it back with the boxes drawn",
    response_class=Response,
    responses={200: _RENDERED, **MODEL_ERRORS},
    openapi_extra=REQUEST_BODY,
)
async def render_with(
    model: ModelPath,
    request: Request,
    service: ServiceDep,
    settings: SettingsDep,
    params: DetectParamsDep,
    format: RenderFormat = "jpeg",
) -> Response:
    """As ``POST /v1/detect/render``, with the model served as ``model``."""
    return await _render(model, request, service, settings, params, format)
