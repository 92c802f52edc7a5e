"""The DeepStack / CodeProject.AI object detection API, for the clients that speak it (Frigate's ``deepstack``
detector, Home Assistant's DeepStack and CodeProject.AI integrations, Blue Iris, Agent DVR...).

- ``POST /v1/vision/detection``: the default model; ``POST /v1/vision/custom/{model}``: any served model;
  ``POST /v1/vision/custom/list``: the served models' names.
- A multipart form: the file ``image``, and the optional fields ``min_confidence`` (default 0.4, DeepStack's) and
  ``api_key``. Other fields are ignored, as DeepStack does. Our one addition, the query parameter
  ``max_detections``, caps the predictions for clients that cannot hold more (Frigate's plugin fills at most 20
  rows: ``api_url: http://host:8000/v1/vision/detection?max_detections=20``).
- The answer is DeepStack's (``success``, ``predictions`` with ``label``, ``confidence`` and integer pixel
  ``x_min``/``y_min``/``x_max``/``y_max``, ``duration``) plus the fields CodeProject.AI adds (``message``,
  ``count``, ``inferenceMs``, ``processMs``, ``analysisRoundTripMs``, ``moduleId``, ``moduleName``, ``command``,
  ``code``, ``requestId``). Predictions are sorted by confidence, highest first: Frigate's plugin stops reading at the
  first one below its threshold.
- Errors are DeepStack's ``{"success": false, "error": ...}``: 400 for a missing or bad image or a bad
  ``min_confidence`` (DeepStack's own messages where it has one), 401 for a bad key, and our 404/413/415/503/504.
"""

from __future__ import annotations

import math
import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from api.auth import BearerKey, HeaderKey, app_keys, header_keys
from api.deps import ModelPath, ServiceDep, SettingsDep
from api.errors import InvalidImage, InvalidRequest, Unauthorized, error_responses
from api.service import DetectionService, DetectParams
from api.settings import Settings
from api.uploads import Upload, media_type, read_multipart
from detector import defaults
from detector.results import ImageDetections

router = APIRouter(prefix="/v1/vision", tags=["deepstack"])

IMAGE_FIELD = "image"
KEY_FIELD = "api_key"
CONFIDENCE_FIELD = "min_confidence"
DEFAULT_MIN_CONFIDENCE = 0.4  # DeepStack's and CodeProject.AI's default
MODULE_ID = "ssdlite-detector"
# DeepStack's messages, word for word, where clients or people may look for them.
NO_IMAGE = "No valid image file found"
BAD_KEY = "Incorrect api key"
# Text fields a DeepStack client sends (and whatever else it adds, ignored): a handful, each small.
_MAX_FIELDS = 16

_FORM: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        IMAGE_FIELD: {"type": "string", "format": "binary", "description": "the image"},
                        CONFIDENCE_FIELD: {
                            "type": "number",
                            "minimum": 0,
                            "maximum": 1,
                            "default": DEFAULT_MIN_CONFIDENCE,
                            "description": "keep predictions at least this confident",
                        },
                        KEY_FIELD: {"type": "string", "description": "the API key, when DETECTOR_API_KEYS is set"},
                    },
                    "required": [IMAGE_FIELD],
                }
            }
        },
    }
}
_LIST_FORM: dict[str, Any] = {
    "requestBody": {
        "required": False,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {KEY_FIELD: {"type": "string"}}},
            },
            "application/x-www-form-urlencoded": {
                "schema": {"type": "object", "properties": {KEY_FIELD: {"type": "string"}}},
            },
        },
    }
}
ERRORS = error_responses("deepstack", 401, 413, 415, 422, 500, 503, 504)
MODEL_ERRORS = error_responses("deepstack", 401, 404, 413, 415, 422, 500, 503, 504)


MaxDetections = Annotated[
    int | None,
    Query(
        ge=1, le=defaults.MAX_DETECTIONS, description="at most this many predictions (our addition to DeepStack's API)"
    ),
]


class Prediction(BaseModel):
    label: str
    confidence: float
    x_min: int
    y_min: int
    x_max: int
    y_max: int


class DetectionResponse(BaseModel):
    """DeepStack's answer with CodeProject.AI's additions (built as plain JSON; documented here)."""

    success: bool
    predictions: list[Prediction]
    duration: float
    message: str
    count: int
    inferenceMs: int
    processMs: int
    analysisRoundTripMs: int
    moduleId: str
    moduleName: str
    command: str
    code: int
    requestId: str


class ModelListResponse(BaseModel):
    success: bool
    models: list[str]


def _pixel(value: float, limit: int) -> int:
    return min(max(round(value), 0), limit)


def predictions(result: ImageDetections, limit: int | None = None) -> list[dict[str, Any]]:
    """A result as DeepStack predictions: integer pixels of the submitted (upright) image, most confident first,
    at most ``limit``."""
    ordered = sorted(result.detections, key=lambda d: d.score, reverse=True)[:limit]
    return [
        {
            "label": d.label,
            "confidence": d.score,
            "x_min": _pixel(d.box[0], result.width),
            "y_min": _pixel(d.box[1], result.height),
            "x_max": _pixel(d.box[2], result.width),
            "y_max": _pixel(d.box[3], result.height),
        }
        for d in ordered
    ]


def _message(found: list[dict[str, Any]]) -> str:
    # CodeProject.AI's wording: the first three labels, then an ellipsis.
    if not found:
        return "No objects found"
    labels = ", ".join(p["label"] for p in found[:3])
    return f"Found {labels}..." if len(found) > 3 else f"Found {labels}"


def _min_confidence(fields: dict[str, str]) -> float:
    text = fields.get(CONFIDENCE_FIELD, "").strip()
    if not text:
        return DEFAULT_MIN_CONFIDENCE
    try:
        value = float(text)
    except ValueError:
        raise InvalidRequest("Invalid value for min_confidence") from None
    if not math.isfinite(value):
        raise InvalidRequest("Invalid value for min_confidence")
    if value > 1.0:
        raise InvalidRequest("min_confidence cannot be greater than 1")
    if value < 0.0:
        raise InvalidRequest("min_confidence cannot be negative")
    return value


async def _form(request: Request, settings: Settings) -> tuple[Upload | None, dict[str, str]]:
    """The first file part named ``image`` (None without one) and the text fields (first value of each)."""
    if media_type(request.headers.get("content-type")) != "multipart/form-data":
        return None, {}
    image: Upload | None = None
    fields: dict[str, str] = {}
    for name, value in await read_multipart(request, max_files=settings.max_images_per_request, max_fields=_MAX_FIELDS):
        if isinstance(value, str):
            fields.setdefault(name, value)
        elif name == IMAGE_FIELD and image is None:
            image = value
    return image, fields


def _authorize(request: Request, header_key: HeaderKey, bearer_key: BearerKey, form_key: str | None) -> None:
    keys = app_keys(request)
    if keys is None:
        return
    if not any([keys.accepts(key) for key in (*header_keys(header_key, bearer_key), form_key)]):
        raise Unauthorized(BAD_KEY)


async def _detect(
    model: str | None,
    request: Request,
    service: DetectionService,
    settings: Settings,
    header_key: HeaderKey,
    bearer_key: BearerKey,
    max_detections: int | None,
) -> JSONResponse:
    started = time.monotonic()
    image, fields = await _form(request, settings)
    _authorize(request, header_key, bearer_key, fields.get(KEY_FIELD))
    name = service.resolve(model)
    if image is None:
        raise InvalidImage(NO_IMAGE)
    # The cap is applied after sorting (``predictions``), so it keeps the most confident whatever the model's order.
    outcome = await service.detect(name, [image], DetectParams(score_threshold=_min_confidence(fields)))
    found = predictions(outcome.results[0], max_detections)
    process_ms = (time.monotonic() - started) * 1000
    body = {
        "success": True,
        "predictions": found,
        "duration": round(process_ms, 2),
        "message": _message(found),
        "count": len(found),
        "inferenceMs": round(outcome.inference_s * 1000),
        "processMs": round(process_ms),
        "analysisRoundTripMs": round(process_ms),
        "moduleId": MODULE_ID,
        "moduleName": f"SSDLite-MobileNetV2 ({name})",
        "command": "detect",
        "code": 200,
        "requestId": request.state.request_id,
    }
    return JSONResponse(body)


@router.post(
    "/detection",
    summary="DeepStack / CodeProject.AI object detection with the default model",
    response_model=DetectionResponse,
    responses=ERRORS,
    openapi_extra=_FORM,
)
async def detection(
    request: Request,
    service: ServiceDep,
    settings: SettingsDep,
    header_key: HeaderKey,
    bearer_key: BearerKey,
    max_detections: MaxDetections = None,
) -> JSONResponse:
    """Objects in ``image`` at ``min_confidence`` or more, most confident first."""
    return await _detect(None, request, service, settings, header_key, bearer_key, max_detections)


@router.post(
    "/custom/list",
    summary="The names usable in /v1/vision/custom/{model} (CodeProject.AI's model list)",
    response_model=ModelListResponse,
    responses=error_responses("deepstack", 401, 413, 422, 503),
    openapi_extra=_LIST_FORM,
)
async def custom_list(
    request: Request, service: ServiceDep, header_key: HeaderKey, bearer_key: BearerKey
) -> ModelListResponse:
    """Every served model's name."""
    form_key = None
    if media_type(request.headers.get("content-type")) in ("multipart/form-data", "application/x-www-form-urlencoded"):
        parts = await read_multipart(request, max_files=1, max_fields=_MAX_FIELDS)
        form_key = next((value for name, value in parts if name == KEY_FIELD and isinstance(value, str)), None)
    _authorize(request, header_key, bearer_key, form_key)
    service.resolve(None)
    return ModelListResponse(success=True, models=list(service.models))


@router.post(
    "/custom/{model}",
    summary="DeepStack / CodeProject.AI custom-model detection with the named model",
    response_model=DetectionResponse,
    responses=MODEL_ERRORS,
    openapi_extra=_FORM,
)
async def custom(
    model: ModelPath,
    request: Request,
    service: ServiceDep,
    settings: SettingsDep,
    header_key: HeaderKey,
    bearer_key: BearerKey,
    max_detections: MaxDetections = None,
) -> JSONResponse:
    """As ``/v1/vision/detection``, with the model served as ``model`` (its own labels); 404 for a name not
    served."""
    return await _detect(model, request, service, settings, header_key, bearer_key, max_detections)
