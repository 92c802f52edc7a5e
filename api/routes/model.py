"""What the service runs and how: ``GET /v1/model`` (the default model), ``GET /v1/models`` (all of them) and
``GET /v1/models/{model}``."""

from __future__ import annotations

import dataclasses
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from api.auth import require_api_key
from api.deps import ModelPath, ServiceDep, SettingsDep
from api.errors import error_responses
from api.service import DetectionService
from api.settings import Settings
from detector.results import ModelInfo

router = APIRouter(tags=["model"], dependencies=[Depends(require_api_key)])


class ServingOut(BaseModel):
    """How this service runs the model: the backend and precision asked for, batching, limits, threads."""

    backend: str
    precision: str
    max_batch_size: int
    max_wait_ms: float
    queue_size: int
    request_timeout_s: float
    threads: int
    max_body_bytes: int
    max_pixels: int
    max_images_per_request: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelOut(ModelInfo):
    """The model (:class:`detector.results.ModelInfo`) and how the service runs it."""

    serving: ServingOut


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServedModelOut(ModelOut):
    """A served model: the name it is served under (``id``), whether it is the default, what it is."""

    id: str
    default: bool


class ModelsOut(BaseModel):
    default: str
    models: list[ServedModelOut]


def _describe(service: DetectionService, settings: Settings, name: str | None) -> dict[str, Any]:
    info = service.info(name)
    serving = ServingOut(**settings.model_dump(include=set(ServingOut.model_fields)))
    return {**{f.name: getattr(info, f.name) for f in dataclasses.fields(info)}, "serving": serving}


@router.get(
    "/v1/model",
    summary="The default model: name, labels, input size, weights digest, batching settings",
    responses=error_responses("detector", 401, 503),
)
async def model(service: ServiceDep, settings: SettingsDep) -> ModelOut:
    """The detector's own description plus how this service runs it."""
    return ModelOut(**_describe(service, settings, None))


@router.get(
    "/v1/models",
    summary="Every served model, the default first",
    responses=error_responses("detector", 401, 503),
)
async def models(service: ServiceDep, settings: SettingsDep) -> ModelsOut:
    """The models in the order they were listed (``DETECTOR_MODELS``); ``id`` is the name to use in paths."""
    default = service.resolve(None)
    served = [
        ServedModelOut(**_describe(service, settings, name), id=name, default=name == default)
        for name in service.models
    ]
    return ModelsOut(default=default, models=served)


@router.get(
    "/v1/models/{model}",
    summary="One served model",
    responses=error_responses("detector", 401, 404, 503),
)
async def served_model(model: ModelPath, service: ServiceDep, settings: SettingsDep) -> ServedModelOut:
    """As an entry of ``GET /v1/models``; 404 for a name not served."""
    name = service.resolve(model)
    return ServedModelOut(**_describe(service, settings, name), id=name, default=name == service.default)
