"""SSDLite-MobileNetV2 object detection with TensorFlow-exact conventions.

The inference surface: ``Detector``, ``Detection``, ``ImageDetections``. Attributes load lazily, so importing a
light submodule (``detector.images``) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = ["Detection", "Detector", "ImageDetections"]

if TYPE_CHECKING:
    from detector.inference import Detection, Detector, ImageDetections


def __getattr__(name: str):
    if name in __all__:
        from detector import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'detector' has no attribute {name!r}")
