"""The FastAPI app factory: ``create_app(settings)`` wires settings, API keys, metrics, the detection service, routes
and middleware.

Nothing is built at import time: ``python -m api`` calls the factory, and so can uvicorn
(``uvicorn --factory api.main:create_app``, settings from ``DETECTOR_*``). The models the settings name load in a
thread the lifespan hook starts, so the socket opens at once and answers liveness (200) and readiness (503) while
they load, as Kubernetes' probes expect; models handed to the factory are loaded already and start with the app. The
inference worker is stopped (queues drained) on shutdown.

The protocols it speaks, one router module each: ours (``/v1/detect``, ``/v1/models``...), DeepStack /
CodeProject.AI (``/v1/vision/...``) and KServe v2 / Triton (``/v2/...``); and KServe v2 over gRPC on its own port
(``api.grpc_server``), served from the same event loop while the app runs.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api.errors import drop_undeclared_validation_errors, install_error_handlers
from api.grpc_server import GrpcServer
from api.metrics import Metrics
from api.middleware import BodyLimitMiddleware, RequestContextMiddleware
from api.models import ServedModel, load_models
from api.routes import deepstack, detect, health, kserve, model, page
from api.service import DetectionService
from api.settings import Settings

log = logging.getLogger("api.main")


def create_app(
    settings: Settings | None = None,
    *,
    detector: ServedModel | None = None,
    detectors: Mapping[str, ServedModel] | None = None,
) -> FastAPI:
    """Build the app.

    Args:
        settings: the settings; default: from the environment.
        detector: serve this one model (under its own name) instead of loading ``settings``' models (tests,
            embedding).
        detectors: serve these models by name, the first the default, instead of loading any.
    """
    settings = settings if settings is not None else Settings()
    metrics = Metrics()
    if settings.models and settings.weights:
        log.warning("DETECTOR_WEIGHTS is ignored: DETECTOR_MODELS is set and wins")

    loader: Callable[[], Mapping[str, ServedModel]]
    if detectors is not None:
        loader = lambda: detectors  # noqa: E731
    elif detector is not None:
        loader = lambda: {detector.info().name: detector}  # noqa: E731
    else:
        loader = lambda: load_models(  # noqa: E731
            settings.model_sources, settings.backend, settings.threads, settings.precision, settings.device
        )
    service = DetectionService(settings, metrics, loader)
    preloaded = detectors is not None or detector is not None
    api_keys = settings.api_key_set()
    grpc_server = GrpcServer(service, settings, metrics, api_keys) if settings.grpc_port else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if preloaded:  # nothing to read: ready with the app
            await anyio.to_thread.run_sync(service.start)
        else:
            service.start_loading()
        try:
            if grpc_server is not None:  # in this event loop, beside HTTP
                await grpc_server.start()
            yield
        finally:
            if grpc_server is not None:  # its calls in flight finish before the worker stops
                await grpc_server.stop(settings.shutdown_timeout_s)
            await anyio.to_thread.run_sync(service.stop, settings.shutdown_timeout_s)

    app = FastAPI(
        title="SSDLite object detection",
        version="1",
        summary="Detect objects in images with SSDLite-MobileNetV2; batched, bounded, observable.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.service = service
    app.state.api_keys = api_keys
    app.state.grpc = grpc_server
    install_error_handlers(app, metrics)
    for router in (detect.router, model.router, deepstack.router, kserve.health, kserve.router, health.router):
        app.include_router(router)
    app.include_router(page.router)

    def openapi() -> dict[str, Any]:
        # FastAPI's schema, less the 422s it adds to routes of protocols that answer 400 (see api.errors).
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            app.openapi_schema = drop_undeclared_validation_errors(schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    # The last added is the outermost: the request context sees (and counts) the body limit's 413s.
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes, metrics=metrics)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    return app
