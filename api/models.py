"""The models a service serves, and the names it serves them under.

``DETECTOR_MODELS`` (or, for one model, ``DETECTOR_WEIGHTS``) lists what to load. A built-in model is served under
its built-in name (``coco``, ``person``: what the user wrote); a weights file under the model name recorded in its
metadata (``ModelSpec.name``, set by ``detector convert-tf --name``). Names appear in URL paths
(``/v1/models/{name}/detect``, ``/v2/models/{name}/infer``), so they are checked to be URL-safe and distinct here,
at start, rather than turning into unreachable routes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

from api.batching import BatchModel
from detector import defaults
from detector.backends.base import BackendChoice
from detector.backends.selection import PrecisionMode
from detector.builtin import BUILTIN_MODELS
from detector.results import ModelInfo

_SERVABLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# Path segments a route owns where a model name would go: DeepStack's ``POST /v1/vision/custom/list``.
RESERVED_NAMES = frozenset({"list"})


class ServedModel(BatchModel, Protocol):
    """A detector the service can run: the batch pieces plus ``info`` and ``labels``."""

    @property
    def labels(self) -> tuple[str, ...]: ...

    def info(self) -> ModelInfo: ...


def served_name(source: str | None, model: ServedModel) -> str:
    """The name ``model``, loaded from ``source`` (a built-in name, a file, None: the default), is served under."""
    if source is None:
        return defaults.MODEL
    if source in BUILTIN_MODELS:
        return source
    return model.info().name


def check_names(names: Sequence[str]) -> None:
    """Refuse (``ValueError``) names that are not URL-safe, that a route owns, or that two models share."""
    for name in names:
        if not _SERVABLE_NAME.fullmatch(name):
            raise ValueError(
                f"model name {name!r} cannot be served: use letters, digits, '.', '_' and '-' "
                "(re-convert the weights with --name)"
            )
        if name in RESERVED_NAMES:
            raise ValueError(
                f"model name {name!r} cannot be served: /v1/vision/custom/{name} is DeepStack's model list "
                "(re-convert the weights with another --name)"
            )
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"two models would be served as {duplicates[0]!r}; give one of them another --name")


def load_models(
    sources: Sequence[str | None],
    backend: BackendChoice,
    threads: int,
    precision: PrecisionMode = "fast",
    device: str = "cpu",
) -> dict[str, ServedModel]:
    """Load every source in order (the first is the default) and name them; slow: call it off the event loop.

    Every engine gets the whole thread budget ``threads``: the batcher runs one forward pass at a time.
    """
    # Imported here, not at the top: the Detector brings torch, which must not load before the service has set the
    # engines' thread budget (``api.service``).
    from detector.inference import Detector

    loaded: list[tuple[str, ServedModel]] = []
    for source in sources:
        detector = Detector.from_weights(source, backend=backend, precision=precision, threads=threads, device=device)
        model: ServedModel = detector
        if device.startswith("cuda"):
            # Resize, network and NMS on the GPU (detector/gpu); uploads are still decoded on the CPU threads.
            from detector.gpu.pipeline import GpuPipeline

            model = GpuPipeline(detector)
        loaded.append((served_name(source, model), model))
    check_names([name for name, _ in loaded])
    return dict(loaded)
