"""Every error a user can cause, one class per kind, so each edge (CLI, HTTP) maps them to one message and status.

All derive from :class:`DetectorError`: a problem with the user's input, files, settings or machine, never a bug in
the detector. The CLI prints one line and exits 1 for any of them; the service answers 4xx.
"""

from __future__ import annotations


class DetectorError(Exception):
    """Base class: a problem with the user's input, files or settings, never a bug in the detector."""


class WeightsError(DetectorError):
    """A weights file is missing, unreadable, truncated or does not fit the model it describes."""


class GraphImportError(DetectorError):
    """A TensorFlow or TF.js graph is not an SSDLite-MobileNetV2 export we can import."""


class ImageError(DetectorError):
    """An image is missing, unreadable, corrupt or of a kind we cannot convert."""


class ImageTooLarge(ImageError):
    """An image has more pixels than the limit it is read under (a decompression bomb, or just too big)."""


class DatasetError(DetectorError):
    """A COCO-format data set (annotation file or image folder) is missing, malformed or inconsistent."""


class VideoError(DetectorError):
    """A video is missing, unreadable, has no video stream, or breaks off midway."""


class BackendUnavailable(DetectorError):
    """A backend cannot run here: its engine is not installed, or the hardware lacks what it needs."""


class ExportError(DetectorError):
    """An export could not be written, or its outputs differ from eager PyTorch's."""


class DownloadError(DetectorError):
    """A published model could not be fetched or verified: its package manager is missing, the registry is out of
    reach, or a file's digest differs from the pinned one."""
