"""The errors users can cause, one class per kind, so each edge (CLI, HTTP) maps them to one message and status."""

from __future__ import annotations


class DetectorError(Exception):
    """Base class: a problem with the user's input, files or settings, never a bug in the detector."""


class WeightsError(DetectorError):
    """A weights file is missing, unreadable, truncated or does not fit the model it describes."""


class GraphImportError(DetectorError):
    """A TensorFlow graph is not an SSDLite-MobileNetV2 export we can import."""


class ImageError(DetectorError):
    """An image is missing, unreadable, corrupt or of a kind we cannot convert."""


class DatasetError(DetectorError):
    """A COCO-format data set (annotation file or image folder) is missing, malformed or inconsistent."""
