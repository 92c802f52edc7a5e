"""ASGI middleware: the request context (id, access log, metrics, last-resort 500) and the body size limit.

Both are plain ASGI (not ``BaseHTTPMiddleware``) so they see the raw ``receive``/``send`` channel: the body limit
must count bytes as they arrive, and refuse a declared ``Content-Length`` before reading any of it.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from api.errors import BodyTooLarge, InternalError, api_error_response, error_style
from api.logs import request_id_var
from api.metrics import Metrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("api.access")

REQUEST_ID_HEADER = "x-request-id"
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


def request_id_for(supplied: str | None) -> str:
    """The client's request id when it is sane (1-128 URL-safe characters), else a new one."""
    return supplied if supplied and _VALID_REQUEST_ID.fullmatch(supplied) else uuid.uuid4().hex


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class RequestContextMiddleware:
    """Gives each request an id (the client's ``X-Request-ID`` when sane, else a new one) and echoes it; logs one
    JSON access line; counts requests by route and status; turns an escaped exception into a JSON 500."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_for(_header(scope, REQUEST_ID_HEADER.encode()))
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        status = 500
        response_started = False
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        self.metrics.inflight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error", extra={"method": scope["method"], "path": scope["path"]})
            self.metrics.rejected(InternalError.code)
            if not response_started:
                response = api_error_response(InternalError("internal error"), error_style(scope["path"]))
                await response(scope, receive, send_with_id)
        finally:
            self.metrics.inflight.dec()
            duration = time.perf_counter() - start
            route = scope.get("route")
            route_path = getattr(route, "path", "unmatched")
            self.metrics.requests.labels(route_path, scope["method"], str(status)).inc()
            self.metrics.request_duration.labels(route_path).observe(duration)
            log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round(duration * 1000, 2),
                    "client": (scope.get("client") or ("", 0))[0],
                },
            )
            request_id_var.reset(token)


class BodyLimitMiddleware:
    """Refuses bodies over ``max_body_bytes`` with 413: from ``Content-Length`` before reading anything, and by
    counting the bytes of a chunked (or lying) upload as they arrive, raising ``BodyTooLarge`` into the app."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, metrics: Metrics):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = _header(scope, b"content-length")
        if declared is not None:
            try:
                declared_bytes = int(declared)
            except ValueError:
                declared_bytes = -1  # the HTTP server refuses malformed lengths before we get here
            if declared_bytes > limit:
                self.metrics.rejected(BodyTooLarge.code)
                response = api_error_response(
                    BodyTooLarge(f"request body is {declared_bytes} bytes; limit {limit}"), error_style(scope["path"])
                )
                await response(scope, receive, send)
                return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
            return message

        await self.app(scope, limited_receive, send)
