"""Operations: liveness, readiness and Prometheus metrics (open even when API keys are on: probes carry none)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from api.deps import MetricsDep, ServiceDep
from api.errors import Draining, InternalError, NotReady, error_responses

router = APIRouter(tags=["operations"])


@router.get(
    "/healthz",
    summary="Liveness: the process serves HTTP and its inference worker runs",
    responses=error_responses("detector", 500),
)
async def healthz(service: ServiceDep) -> dict[str, str]:
    """200 while alive, loading included; 500 if loading the models failed or the inference worker died (restart the
    process)."""
    if service.load_error is not None:
        raise InternalError("loading the models failed")
    if not service.alive:
        raise InternalError("the inference worker stopped")
    return {"status": "alive"}


@router.get(
    "/readyz",
    summary="Readiness: every model loaded and not draining (200), else 503",
    responses=error_responses("detector", 503),
)
async def readyz(service: ServiceDep) -> dict[str, str]:
    """What a load balancer polls: 503 while loading, after a SIGTERM, or if the worker died."""
    if service.draining:
        raise Draining("the service is shutting down")
    if not service.ready:
        raise NotReady("the model is not loaded yet")
    return {"status": "ready"}


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}}},
)
async def metrics(metrics: MetricsDep) -> Response:
    """Counters, gauges and histograms in Prometheus text format."""
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
