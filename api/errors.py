"""Every error the service answers with, and the one place that turns them into HTTP responses.

Each kind of failure is a class carrying its status and a stable machine-readable ``code``; the body is always
``{"error": {"code": ..., "message": ...}}``. ``install_error_handlers`` maps these, the detector's own errors,
FastAPI's validation errors and Starlette's HTTP errors (404, 405) onto that shape.
"""

from __future__ import annotations

import logging
from typing import ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.metrics import Metrics
from detector.errors import DetectorError, ImageError

log = logging.getLogger("api.errors")

RETRY_AFTER_S = 1


class ApiError(Exception):
    """Base class: an error answered with ``status`` and ``{"error": {"code", "message"}}``."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    retry_after: ClassVar[int | None] = None

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


class QueueFull(ApiError):
    status, code, retry_after = 503, "queue_full", RETRY_AFTER_S


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


def error_response(
    status: int, code: str, message: str, retry_after: int | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The JSON error response; every error body of the service is built here."""
    headers = dict(headers or {})
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers or None)


def api_error_response(exc: ApiError) -> JSONResponse:
    """The response for one of our errors."""
    return error_response(exc.status, exc.code, exc.message, exc.retry_after)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()) if part not in ("query", "body", "path"))
        parts.append(f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg", "invalid")))
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    """Register the mapping from exceptions to JSON error responses on ``app``, counting each by its code."""

    def respond(exc: ApiError) -> JSONResponse:
        metrics.rejected(exc.code)
        return api_error_response(exc)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return respond(exc)

    @app.exception_handler(ImageError)
    async def _image_error(request: Request, exc: ImageError) -> JSONResponse:
        return respond(InvalidImage(str(exc)))

    @app.exception_handler(DetectorError)
    async def _detector_error(request: Request, exc: DetectorError) -> JSONResponse:
        return respond(InvalidRequest(str(exc)))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return respond(InvalidRequest(_validation_message(exc)))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "invalid_request" if exc.status_code < 500 else "internal_error")
        metrics.rejected(code)
        return error_response(exc.status_code, code, str(exc.detail), headers=dict(exc.headers or {}))
