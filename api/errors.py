"""Every error the service answers with, and the one place that turns them into HTTP responses.

Each kind of failure is a class carrying its status and a stable machine-readable ``code``. The body depends on the
protocol the client speaks, told by the path (:func:`error_style`):

- ours (``/v1/...``): ``{"error": {"code": ..., "message": ...}}``;
- DeepStack / CodeProject.AI (``/v1/vision/...``): ``{"success": false, "error": ..., "duration": 0}``, and 400
  where we say 422, as DeepStack does for a bad image or parameter;
- KServe v2 / Triton (``/v2...``): ``{"error": ...}``, and 400 where we say 415 or 422 (the protocol's "bad request").

``install_error_handlers`` maps these, the detector's own errors, FastAPI's validation errors and Starlette's HTTP
errors (404, 405) onto those shapes; :func:`error_responses` documents them in the OpenAPI schema from the same tables.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.metrics import Metrics
from detector.errors import DetectorError, ImageError

log = logging.getLogger("api.errors")

RETRY_AFTER_S = 1

ErrorStyle = Literal["detector", "deepstack", "kserve"]


class ApiError(Exception):
    """Base class: an error answered with ``status`` and the protocol's error body."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    retry_after: ClassVar[int | None] = None
    headers: ClassVar[tuple[tuple[str, str], ...]] = ()

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BodyTooLarge(ApiError):
    status, code = 413, "body_too_large"


class TooManyPixels(ApiError):
    status, code = 413, "too_many_pixels"


class TooManyImages(ApiError):
    status, code = 413, "too_many_images"


class UnsupportedMediaType(ApiError):
    status, code = 415, "unsupported_media_type"


class InvalidImage(ApiError):
    status, code = 422, "invalid_image"


class InvalidRequest(ApiError):
    status, code = 422, "invalid_request"


class Unauthorized(ApiError):
    """No valid API key was presented (only when ``DETECTOR_API_KEYS`` is set)."""

    status, code = 401, "unauthorized"
    headers = (("WWW-Authenticate", 'Bearer realm="detector"'),)


class UnknownModel(ApiError):
    """A model name this service does not serve."""

    status, code = 404, "model_not_found"


class QueueFull(ApiError):
    status, code, retry_after = 503, "queue_full", RETRY_AFTER_S


class OverMemoryBudget(ApiError):
    """A request's images hold more pixels together than the service may ever hold decoded at once (``api.memory``)."""

    status, code = 413, "over_memory_budget"


class MemoryBusy(ApiError):
    """The memory for decoded pixels stayed taken until the request's deadline (or too many requests wait for it)."""

    status, code, retry_after = 503, "memory_busy", RETRY_AFTER_S


class QueueTimeout(ApiError):
    """The request's deadline passed before the model started on it (it did no work)."""

    status, code, retry_after = 503, "queue_timeout", RETRY_AFTER_S


class DeadlineExceeded(ApiError):
    """The deadline passed while the model was working on the request."""

    status, code = 504, "deadline_exceeded"


class NotReady(ApiError):
    status, code, retry_after = 503, "not_ready", RETRY_AFTER_S


class Draining(ApiError):
    status, code, retry_after = 503, "draining", RETRY_AFTER_S


class InternalError(ApiError):
    status, code = 500, "internal_error"


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large", 415: "unsupported_media_type"}

# Where a protocol answers with another status than ours for the same failure.
_PROTOCOL_STATUS: dict[ErrorStyle, dict[int, int]] = {
    "detector": {},
    "deepstack": {422: 400},
    "kserve": {415: 400, 422: 400},
}


def error_style(path: str) -> ErrorStyle:
    """The protocol a request path belongs to, hence the shape of its error bodies."""
    if path.startswith("/v1/vision/"):
        return "deepstack"
    if path == "/v2" or path.startswith("/v2/"):
        return "kserve"
    return "detector"


def protocol_status(status: int, style: ErrorStyle) -> int:
    """``status`` as the protocol ``style`` answers it."""
    return _PROTOCOL_STATUS[style].get(status, status)


def _body(style: ErrorStyle, code: str, message: str) -> dict[str, Any]:
    if style == "deepstack":
        return {"success": False, "error": message, "duration": 0}
    if style == "kserve":
        return {"error": message}
    return {"error": {"code": code, "message": message}}


def error_response(
    status: int,
    code: str,
    message: str,
    retry_after: int | None = None,
    headers: dict[str, str] | None = None,
    style: ErrorStyle = "detector",
) -> JSONResponse:
    """The JSON error response; every error body of the service is built here."""
    headers = dict(headers or {})
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return JSONResponse(
        _body(style, code, message), status_code=protocol_status(status, style), headers=headers or None
    )


def from_detector_error(exc: DetectorError) -> ApiError:
    """The detector's own error as ours: ``InvalidImage`` for an image it cannot read, else ``InvalidRequest``."""
    return InvalidImage(str(exc)) if isinstance(exc, ImageError) else InvalidRequest(str(exc))


def api_error_response(exc: ApiError, style: ErrorStyle = "detector") -> JSONResponse:
    """The response for one of our errors, in the protocol ``style``."""
    return error_response(exc.status, exc.code, exc.message, exc.retry_after, dict(exc.headers), style)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()) if part not in ("query", "body", "path", "header"))
        parts.append(f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg", "invalid")))
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    """Register the mapping from exceptions to JSON error responses on ``app``, counting each by its code."""

    def respond(request: Request, exc: ApiError) -> JSONResponse:
        metrics.rejected(exc.code)
        return api_error_response(exc, error_style(request.scope["path"]))

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return respond(request, exc)

    @app.exception_handler(DetectorError)  # ImageError too: handlers are looked up along the exception's MRO
    async def _detector_error(request: Request, exc: DetectorError) -> JSONResponse:
        return respond(request, from_detector_error(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return respond(request, InvalidRequest(_validation_message(exc)))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "invalid_request" if exc.status_code < 500 else "internal_error")
        metrics.rejected(code)
        style = error_style(request.scope["path"])
        return error_response(exc.status_code, code, str(exc.detail), headers=dict(exc.headers or {}), style=style)


# --- the OpenAPI side: what each protocol's error bodies look like, per status ----------------------------------------


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    """Our error body."""

    error: ErrorDetail


class DeepStackErrorBody(BaseModel):
    """DeepStack's error body (CodeProject.AI answers the same)."""

    success: Literal[False]
    error: str
    duration: float


class KServeErrorBody(BaseModel):
    """The KServe v2 / Triton error body."""

    error: str


_ERROR_MODELS: dict[ErrorStyle, type[BaseModel]] = {
    "detector": ErrorBody,
    "deepstack": DeepStackErrorBody,
    "kserve": KServeErrorBody,
}

_STATUS_DESCRIPTIONS = {
    400: "bad request: an invalid image, parameter or tensor",
    401: "a valid API key is required (only when DETECTOR_API_KEYS is set)",
    404: "no such model (or path)",
    413: "too large: the body, an image's pixel count, the number of images, or their pixels for the memory",
    415: "unsupported media type",
    422: "invalid image or request",
    500: "internal error",
    503: "not ready, draining, the queue is full or timed out, or the memory is busy: retry (see Retry-After)",
    504: "the model did not finish before the request's deadline",
}

_HEADERS = {
    401: {"WWW-Authenticate": {"description": "how to authenticate", "schema": {"type": "string"}}},
    503: {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}},
}


def error_responses(style: ErrorStyle, *statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` entries for ``statuses`` (ours; mapped to the protocol's) in the ``style`` body."""
    documented: dict[int | str, dict[str, Any]] = {}
    for ours in statuses:
        status = protocol_status(ours, style)
        entry: dict[str, Any] = {"model": _ERROR_MODELS[style], "description": _STATUS_DESCRIPTIONS[status]}
        if status in _HEADERS:
            entry["headers"] = _HEADERS[status]
        documented[status] = entry
    return documented


def drop_undeclared_validation_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """Remove the 422 FastAPI documents on its own for operations whose protocol never answers 422.

    FastAPI adds a 422 (``HTTPValidationError``) to every operation with parameters unless one is declared; the
    DeepStack and KServe routes answer a validation failure with 400 in their own body (declared), so that 422 would
    be a status they never return.
    """
    for path, operations in schema.get("paths", {}).items():
        if error_style(path) == "detector":
            continue
        for operation in operations.values():
            responses = operation.get("responses", {})
            if "422" in responses and "HTTPValidationError" in str(responses["422"]):
                del responses["422"]
    return schema
