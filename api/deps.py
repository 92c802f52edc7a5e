"""Dependencies shared by the routes, as ``Annotated`` aliases; tests swap them through ``app.dependency_overrides``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Query, Request

from api.metrics import Metrics
from api.service import DetectionService, DetectParams
from api.settings import Settings
from detector import defaults


def get_service(request: Request) -> DetectionService:
    """The app's detection service (created by ``create_app``, started by the lifespan)."""
    return request.app.state.service


def get_settings(request: Request) -> Settings:
    """The app's settings."""
    return request.app.state.settings


def get_metrics(request: Request) -> Metrics:
    """The app's metrics."""
    return request.app.state.metrics


ServiceDep = Annotated[DetectionService, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]

# The path parameter naming a served model, on every route that has one (the dependencies below read it too).
MODEL_PARAM = "model"
ModelPath = Annotated[str, Path(description="the name the model is served under (see GET /v1/models)")]


def get_detect_params(
    request: Request,
    service: ServiceDep,
    score_threshold: Annotated[
        float, Query(ge=0.0, le=1.0, allow_inf_nan=False, description="keep detections scoring at least this")
    ] = defaults.SCORE_THRESHOLD,
    max_detections: Annotated[
        int | None, Query(ge=1, le=defaults.MAX_DETECTIONS, description="at most this many detections per image")
    ] = None,
    labels: Annotated[
        list[str] | None, Query(description="keep only these labels (repeat the parameter, or separate by commas)")
    ] = None,
) -> DetectParams:
    """The detection options from the query string, labels checked against the route's model (default: the
    default model)."""
    model = request.path_params.get(MODEL_PARAM)
    return DetectParams(score_threshold, max_detections, service.check_labels(model, labels))


DetectParamsDep = Annotated[DetectParams, Depends(get_detect_params)]
