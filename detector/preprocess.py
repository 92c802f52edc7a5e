"""From RGB pixels to the network's input: TF1's legacy bilinear resize, then ``x · 2/255 − 1``.

TF1's ``ResizeBilinear`` with ``align_corners=False`` and no half-pixel centres samples source row ``y · in/out``
(TF ``core/util/image_resizer_state.h``, ``LegacyScaler``). PyTorch's ``interpolate`` uses half-pixel centres, so it
would feed the network different pixels; this module reproduces TF's sampling and its float32 arithmetic instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from detector import defaults


def _legacy_sample_points(in_size: int, out_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lower and upper source indices and the interpolation weight for each output index (float32, as TF)."""
    scale = torch.tensor(in_size / out_size, dtype=torch.float32)
    source = torch.arange(out_size, dtype=torch.float32) * scale
    lower = torch.floor(source)
    upper = torch.clamp(lower + 1, max=in_size - 1)
    return lower.long(), upper.long(), source - lower


def resize_bilinear_legacy(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a (H, W, C) float32 image to ``size`` = (height, width) exactly like TF1's ``ResizeBilinear``.

    TF interpolates along x first, then y: ``top = tl + (tr − tl)·dx``, ``bottom = bl + (br − bl)·dx``,
    ``out = top + (bottom − top)·dy``; the same order keeps the results equal in float32.
    """
    in_h, in_w = image.shape[:2]
    if (in_h, in_w) == tuple(size):
        return image
    y0, y1, dy = _legacy_sample_points(in_h, size[0])
    x0, x1, dx = _legacy_sample_points(in_w, size[1])
    dx = dx[None, :, None]
    rows_top, rows_bottom = image[y0], image[y1]
    top = rows_top[:, x0] + (rows_top[:, x1] - rows_top[:, x0]) * dx
    bottom = rows_bottom[:, x0] + (rows_bottom[:, x1] - rows_bottom[:, x0]) * dx
    return top + (bottom - top) * dy[:, None, None]


def preprocess(
    images: Sequence[np.ndarray],
    image_size: int = defaults.IMAGE_SIZE,
    pixel_scale: float = defaults.PIXEL_SCALE,
    pixel_offset: float = defaults.PIXEL_OFFSET,
) -> torch.Tensor:
    """Stack RGB uint8 images (H, W, 3) of any sizes into the network input (N, 3, S, S) float32 in [-1, 1]."""
    scale = torch.tensor(pixel_scale, dtype=torch.float32)
    batch = torch.empty((len(images), 3, image_size, image_size), dtype=torch.float32)
    for i, array in enumerate(images):
        resized = resize_bilinear_legacy(torch.from_numpy(array).to(torch.float32), (image_size, image_size))
        batch[i] = (resized * scale + pixel_offset).permute(2, 0, 1)
    return batch
