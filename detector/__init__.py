"""SSDLite-MobileNetV2 object detection with TensorFlow-exact conventions.

The inference surface: ``Detector``, ``Detection``, ``ImageDetections``. Attributes load lazily, so importing a
light submodule (``detector.images``) does not import torch.

The package is layered; ``make lint`` checks it (import-linter, the contracts in ``pyproject.toml``)::

    detector.cli                        the command line
    detector.training | detector.convert   COCO data, training, evaluation | TF / TF.js import, built-in installs
    detector.inference, detector.export    the Detector; exporting the network;
      and detector.gpu                   the GPU pipeline (decode, resize, network, NMS on a device)
    detector.backends                   engines running the network, ``auto``
    the core (flat modules)             model, anchors, box coding, pre/postprocessing, images, weights, spec, ...

Nothing imports upward, and the service (``api``) never imports training, conversion or CLI code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Detection", "Detector", "ImageDetections"]

if TYPE_CHECKING:
    from detector.inference import Detector
    from detector.results import Detection, ImageDetections


def __getattr__(name: str) -> Any:
    if name == "Detector":
        from detector.inference import Detector

        return Detector
    if name in ("Detection", "ImageDetections"):
        from detector import results

        return getattr(results, name)
    raise AttributeError(f"module 'detector' has no attribute {name!r}")
