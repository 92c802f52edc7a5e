"""From RGB pixels to the network's input: TF1's legacy bilinear resize, then ``x · 2/255 − 1``.

TF1's ``ResizeBilinear`` with ``align_corners=False`` and no half-pixel centres samples source row ``y · in/out``
(TF ``core/util/image_resizer_state.h``, ``LegacyScaler``). PyTorch's ``interpolate`` and OpenCV's ``resize`` use
half-pixel centres, so they would feed the network different pixels; this module reproduces TF's sampling instead:

- the reference path (``exact=True``) does TF's float32 arithmetic op by op: bit-identical to TensorFlow's own
  preprocessed tensor (tests/test_parity.py), 1.5–2.8 ms for a 640×480 image on one core (CPU-dependent);
- the fast path (the default where OpenCV ≥ 5 is installed, the ``fast`` extra) is OpenCV's ``remap`` on float32
  pixels with maps holding TF's own float32 source coordinates: within 3.5e-5 grey levels of the reference in about
  0.6 ms (tests pin its network outputs to the reference path's within 1e-4). The maps, not an affine matrix, because
  ``warpAffine`` splits its coordinates into integer and fraction at a precision that depends on the CPU's dispatch
  (0.014 grey levels off on an AMD EPYC, exact on a Xeon), while ``remap`` takes the fraction of the float32 value it
  is given. OpenCV 4.x quantises both to 1/32 of a pixel (5 grey levels), so the first use checks the fast path on
  a synthetic image and falls back to the reference where it does not agree. Images above 1.5 megapixels take the
  reference, which is faster there (it gathers its samples before converting to float).

numpy only (and OpenCV where present); :func:`resize_bilinear_legacy` is the same resize on torch tensors, for
training.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from detector import defaults

if TYPE_CHECKING:
    import torch

try:  # the fast path; optional (the "fast" extra)
    import cv2

    # One thread per resize: the callers already run several images (or requests) side by side, and OpenCV's own
    # pool would compete with the inference engine's threads for the same cores.
    cv2.setNumThreads(1)
except ImportError:  # pragma: no cover - depends on the environment
    cv2 = None  # type: ignore[assignment]


_log = logging.getLogger(__name__)

# Largest difference from the reference the fast resize may make on the self-check image, in grey levels: float32
# rounding stays below 4e-5; OpenCV's fixed-point paths are 1e-2 (coordinates) to 5 (1/32-pixel weights) off.
_FAST_RESIZE_TOLERANCE = 1e-3
# Above this many source pixels the reference is the faster one: remap converts the whole image to float32, the
# reference gathers its 4 · S² samples in uint8 first (benchmarks/resize.py: remap 0.5 ms vs 1.5 at 640×480, 0.9 vs
# 1.5 at 1280×720, even at 1920×1080, 9.6 vs 1.8 at 3840×2160).
_FAST_RESIZE_MAX_PIXELS = 1_500_000


def _legacy_source(in_size: int, out_size: int) -> np.ndarray:
    """TF's source coordinate of each output index: ``index · float32(in/out)`` in float32 (``LegacyScaler``)."""
    return np.arange(out_size, dtype=np.float32) * np.float32(in_size / out_size)


def _legacy_sample_points(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower and upper source indices and the interpolation weight for each output index (float32, as TF)."""
    source = _legacy_source(in_size, out_size)
    lower = np.floor(source)
    upper = np.minimum(lower + np.float32(1), np.float32(in_size - 1))
    return lower.astype(np.int64), upper.astype(np.int64), source - lower


def resize_bilinear_legacy(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a (H, W, C) float32 image to ``size`` = (height, width) exactly like TF1's ``ResizeBilinear``.

    TF interpolates along x first, then y: ``top = tl + (tr − tl)·dx``, ``bottom = bl + (br − bl)·dx``,
    ``out = top + (bottom − top)·dy``; the same order keeps the results equal in float32.
    """
    import torch

    in_h, in_w = image.shape[:2]
    if (in_h, in_w) == tuple(size):
        return image
    y0, y1, dy = (torch.from_numpy(t) for t in _legacy_sample_points(in_h, size[0]))
    x0, x1, dx = (torch.from_numpy(t) for t in _legacy_sample_points(in_w, size[1]))
    dx = dx[None, :, None]
    rows_top, rows_bottom = image[y0], image[y1]
    top = rows_top[:, x0] + (rows_top[:, x1] - rows_top[:, x0]) * dx
    bottom = rows_bottom[:, x0] + (rows_bottom[:, x1] - rows_bottom[:, x0]) * dx
    return top + (bottom - top) * dy[:, None, None]


@lru_cache(maxsize=256)
def _legacy_sample_points_numpy(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return _legacy_sample_points(in_size, out_size)


@lru_cache(maxsize=256)
def _column_indices(in_width: int, out_width: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Byte offsets in a (W · C) row of the lower and upper source pixels of each output column, all channels."""
    lower, upper, _ = _legacy_sample_points_numpy(in_width, out_width)
    offsets = np.arange(channels)
    return (lower[:, None] * channels + offsets).ravel(), (upper[:, None] * channels + offsets).ravel()


def _resize_legacy_into(image: np.ndarray, size: int, scratch: np.ndarray) -> np.ndarray:
    """TF1 legacy bilinear resize of a uint8 (H, W, C) image to (size, size, C) float32, in ``scratch`` (4, S, S, C).

    The same float32 operations in the same order as :func:`resize_bilinear_legacy`, so the results are bit-equal;
    only the four corner samples are gathered (in uint8, before conversion) and every step writes in place, which
    makes it about 10× faster than gathering whole float rows with fresh tensors.
    """
    height, width, channels = image.shape
    y0, y1, dy = _legacy_sample_points_numpy(height, size)
    _, _, dx = _legacy_sample_points_numpy(width, size)
    x0, x1 = _column_indices(width, size, channels)
    # Rows as flat (W · C) byte strings: taking single bytes is much faster than taking C-byte pixels.
    rows = image.reshape(height, width * channels)
    rows_top, rows_bottom = rows.take(y0, axis=0), rows.take(y1, axis=0)
    top, top_right, bottom, bottom_right = (s.reshape(size, size * channels) for s in scratch)
    np.copyto(top, rows_top.take(x0, axis=1))
    np.copyto(top_right, rows_top.take(x1, axis=1))
    np.copyto(bottom, rows_bottom.take(x0, axis=1))
    np.copyto(bottom_right, rows_bottom.take(x1, axis=1))
    top, top_right, bottom, bottom_right = scratch
    dx = dx[None, :, None]
    # top = tl + (tr − tl)·dx; bottom = bl + (br − bl)·dx; out = top + (bottom − top)·dy.
    np.add(top, np.multiply(np.subtract(top_right, top, out=top_right), dx, out=top_right), out=top)
    np.add(bottom, np.multiply(np.subtract(bottom_right, bottom, out=bottom_right), dx, out=bottom_right), out=bottom)
    np.add(top, np.multiply(np.subtract(bottom, top, out=bottom), dy[:, None, None], out=bottom), out=top)
    return top


@lru_cache(maxsize=64)
def _remap_map(height: int, width: int, size: int) -> np.ndarray:
    """``cv2.remap``'s (S, S, 2) float32 map of source (x, y): TF's coordinates, so its fractions are TF's weights."""
    grid = np.empty((size, size, 2), dtype=np.float32)
    grid[..., 0] = _legacy_source(width, size)[None, :]
    grid[..., 1] = _legacy_source(height, size)[:, None]
    grid.setflags(write=False)
    return grid


def _resize_remap(image: np.ndarray, size: int) -> Any:
    """TF1's legacy sampling through OpenCV: float32 (size, size, C), within 3.5e-5 grey levels of the reference."""
    source = _remap_map(image.shape[0], image.shape[1], size)
    # BORDER_REPLICATE: TF clamps the upper sample to the last row/column.
    return cv2.remap(image.astype(np.float32), source, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


@lru_cache(maxsize=1)
def fast_resize_available() -> bool:
    """Whether OpenCV is installed and its resize agrees with the reference here (checked once per process)."""
    if cv2 is None:
        return False
    # Noise at a camera frame's size: coordinates up to 640 expose any rounding of the fraction, noise any weight.
    image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    size = defaults.IMAGE_SIZE
    reference = _resize_legacy_into(image, size, np.empty((4, size, size, 3), dtype=np.float32))
    difference = float(np.abs(_resize_remap(image, size) - reference).max())
    if difference > _FAST_RESIZE_TOLERANCE:
        _log.warning(
            "OpenCV %s resizes %.3g grey levels away from TF's resize; using the exact (slower) resize instead",
            cv2.__version__,
            difference,
        )
        return False
    return True


def preprocess(
    images: Sequence[np.ndarray],
    image_size: int = defaults.IMAGE_SIZE,
    pixel_scale: float = defaults.PIXEL_SCALE,
    pixel_offset: float = defaults.PIXEL_OFFSET,
    *,
    exact: bool = False,
) -> np.ndarray:
    """Stack RGB uint8 images (H, W, 3) of any sizes into the network input (N, 3, S, S) float32 in [-1, 1].

    ``exact``: bit-equal to :func:`resize_bilinear_legacy` followed by ``x · scale + offset`` in float32 (the
    reference; tests check it); otherwise OpenCV's equivalent where it agrees (see the module docstring).
    """
    scale = np.float32(pixel_scale)
    offset = np.float32(pixel_offset)
    batch = np.empty((len(images), 3, image_size, image_size), dtype=np.float32)
    fast = not exact and fast_resize_available()
    scratch: np.ndarray | None = None
    for out, array in zip(batch, images, strict=True):
        if array.shape[:2] == (image_size, image_size):
            resized = array.astype(np.float32)
        elif fast and array.shape[0] * array.shape[1] <= _FAST_RESIZE_MAX_PIXELS:
            resized = _resize_remap(array, image_size)
        else:
            if scratch is None:
                scratch = np.empty((4, image_size, image_size, 3), dtype=np.float32)
            resized = _resize_legacy_into(array, image_size, scratch)
        np.multiply(resized.transpose(2, 0, 1), scale, out=out)
        np.add(out, offset, out=out)
    return batch
