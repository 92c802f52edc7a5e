"""``GET /v1/model``: what the service runs and how."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import ServiceDep, SettingsDep

router = APIRouter(tags=["model"])


@router.get("/v1/model", summary="The model: name, labels, input size, weights digest, batching settings")
async def model(service: ServiceDep, settings: SettingsDep) -> dict[str, Any]:
    """The detector's own description plus how this service runs it."""
    info = dict(service.require_model().info())
    info.setdefault("backend", "pytorch")
    info["serving"] = {
        "backend": settings.backend,
        "max_batch_size": settings.max_batch_size,
        "max_wait_ms": settings.max_wait_ms,
        "queue_size": settings.queue_size,
        "request_timeout_s": settings.request_timeout_s,
        "threads": settings.threads,
        "max_body_bytes": settings.max_body_bytes,
        "max_pixels": settings.max_pixels,
        "max_images_per_request": settings.max_images_per_request,
    }
    return info
