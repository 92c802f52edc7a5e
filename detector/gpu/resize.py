"""TF1's legacy bilinear resize and the input normalisation on torch tensors, batched, on any device.

The resize gathers each output pixel's four source samples in uint8 (``index_select`` on rows, then columns, at TF's
float32 source coordinates ``index · float32(in/out)``, upper sample clamped to the last row or column), converts
only those to float32 and interpolates with TF's own operations in TF's order (x first, then y). That is
:func:`detector.preprocess.resize_bilinear_legacy` batched, so the result is bit-identical to the numpy reference
(``preprocess(..., exact=True)``; the tests check photographs and odd sizes), on any device: each step is one
elementwise float32 operation, which CUDA rounds as IEEE does.

Why not PyTorch's resampling (measured on the CPU against the reference, photographs and noise at 480×640,
720×1280, 123×457, 1080×810, 299×301, 601×599, 2×3, 1×1 → 300²; ``/tmp`` scratch, figures in the README note):

- ``interpolate(bilinear)`` has no legacy mapping (``align_corners=False`` uses half-pixel centres). Replicate-
  padding one pixel right and bottom, resizing to S+1 with ``align_corners=True`` and cropping to S samples TF's
  coordinates: at most 4.6e-5 grey levels off (it weights the four samples in another order), and it converts the
  whole image to float first (4× the bytes of the gather's 4·S² samples at 640×480).
- ``grid_sample`` on TF's coordinates: 1.8e-2 grey levels off, from normalising the coordinates to [-1, 1] and back.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch


@lru_cache(maxsize=256)
def _sample_points(
    in_size: int, out_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lower and upper source indices and the weight of the upper one for each output index (TF's ``LegacyScaler``:
    float32 ``index · (in/out)``, the same float32 arithmetic as :func:`detector.preprocess._legacy_source`)."""
    source = torch.arange(out_size, dtype=torch.float32) * torch.tensor(in_size / out_size, dtype=torch.float32)
    lower = source.floor()
    weight = source - lower
    upper = torch.clamp(lower + 1, max=in_size - 1)
    return lower.long().to(device), upper.long().to(device), weight.to(device)


def resize_legacy(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize (N, C, H, W) images (uint8 or float) to (N, C, height, width) float32 exactly like TF1's
    ``ResizeBilinear`` with ``align_corners=False`` (``size`` = (height, width))."""
    height, width = size
    in_h, in_w = images.shape[-2:]
    if (in_h, in_w) == (height, width):
        return images.to(torch.float32)
    y0, y1, dy = _sample_points(int(in_h), height, images.device)
    x0, x1, dx = _sample_points(int(in_w), width, images.device)
    rows_top, rows_bottom = images.index_select(2, y0), images.index_select(2, y1)
    top, top_right = rows_top.index_select(3, x0).float(), rows_top.index_select(3, x1).float()
    bottom, bottom_right = rows_bottom.index_select(3, x0).float(), rows_bottom.index_select(3, x1).float()
    # top = tl + (tr − tl)·dx; bottom = bl + (br − bl)·dx; out = top + (bottom − top)·dy, in place, in TF's order
    # (a + b and b + a round alike, so adding the left sample last changes nothing).
    top = top_right.sub_(top).mul_(dx).add_(top)
    bottom = bottom_right.sub_(bottom).mul_(dx).add_(bottom)
    return bottom.sub_(top).mul_(dy[:, None]).add_(top)


def preprocess_images(
    images: Sequence[torch.Tensor], image_size: int, pixel_scale: float, pixel_offset: float
) -> torch.Tensor:
    """RGB uint8 images (3, H, W) of any sizes, on one device → the network input (N, 3, S, S) float32.

    Images of one size are resized together (one set of kernels per size in the batch); then ``x · scale + offset``
    in float32, as :func:`detector.preprocess.preprocess` does.
    """
    if not images:
        raise ValueError("no images to preprocess")
    device = images[0].device
    batch = torch.empty((len(images), 3, image_size, image_size), dtype=torch.float32, device=device)
    by_size: dict[tuple[int, int], list[int]] = {}
    for position, image in enumerate(images):
        by_size.setdefault((int(image.shape[1]), int(image.shape[2])), []).append(position)
    for positions in by_size.values():
        group = torch.stack([images[i] for i in positions])
        resized = resize_legacy(group, (image_size, image_size))
        if len(positions) == len(images):
            batch = resized
        else:
            batch[torch.tensor(positions, device=device)] = resized
    # The scalars as float32 values: a float32 tensor times (or plus) them rounds as numpy's float32 operations do.
    return batch.mul_(float(np.float32(pixel_scale))).add_(float(np.float32(pixel_offset)))
