"""The FastAPI app factory: ``create_app(settings)`` wires settings, metrics, the detection service, routes and
middleware.

Nothing is built at import time: ``python -m api`` calls the factory, and so can uvicorn
(``uvicorn --factory api.main:create_app``, settings from ``DETECTOR_*``). The model loads in the lifespan hook, off
the event loop, and the inference worker is stopped (queue drained) on shutdown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI

from api.errors import install_error_handlers
from api.metrics import Metrics
from api.middleware import BodyLimitMiddleware, RequestContextMiddleware
from api.routes import detect, health, model, page
from api.service import DetectionService, ServedModel
from api.settings import Settings


def create_app(settings: Settings | None = None, *, detector: ServedModel | None = None) -> FastAPI:
    """Build the app. ``detector``: serve this model instead of loading ``settings.weights`` (tests, embedding)."""
    settings = settings if settings is not None else Settings()
    metrics = Metrics()

    def load_model() -> ServedModel:
        if detector is not None:
            return detector
        from detector.inference import Detector

        return Detector.from_weights(settings.weights, backend=settings.backend)

    service = DetectionService(settings, metrics, load_model)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(service.start)
        try:
            yield
        finally:
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
    install_error_handlers(app, metrics)
    for module in (detect, model, health, page):
        app.include_router(module.router)
    # The last added is the outermost: the request context sees (and counts) the body limit's 413s.
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes, metrics=metrics)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    return app
