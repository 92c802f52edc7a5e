"""``GET /v1/model``: what the service runs and how."""

from __future__ import annotations

import dataclasses

from fastapi import APIRouter
from pydantic import BaseModel

from api.deps import ServiceDep, SettingsDep
from detector.results import ModelInfo

router = APIRouter(tags=["model"])


class ServingOut(BaseModel):
    """How this service runs the model: the backend asked for, batching, limits, threads."""

    backend: str
    max_batch_size: int
    max_wait_ms: float
    queue_size: int
    request_timeout_s: float
    threads: int
    max_body_bytes: int
    max_pixels: int
    max_images_per_request: int


@dataclasses.dataclass(frozen=True)
class ModelOut(ModelInfo):
    """The model (:class:`detector.results.ModelInfo`) and how the service runs it."""

    serving: ServingOut


@router.get("/v1/model", summary="The model: name, labels, input size, weights digest, batching settings")
async def model(service: ServiceDep, settings: SettingsDep) -> ModelOut:
    """The detector's own description plus how this service runs it."""
    info = service.require_model().info()
    serving = ServingOut(**settings.model_dump(include=set(ServingOut.model_fields)))
    return ModelOut(**{f.name: getattr(info, f.name) for f in dataclasses.fields(info)}, serving=serving)
