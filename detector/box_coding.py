"""Box codes relative to anchors: the Faster R-CNN coder with SSD's scales.

torchvision's ``BoxCoder`` implements the same transform as TF's ``FasterRcnnBoxCoder`` (centre offsets over anchor
size, log size ratios, scaled by 10, 10, 5, 5) but in (x, y, w, h) order on xyxy boxes. We keep torchvision's order
everywhere; the TF importer permutes the predictor's output channels from TF's [ty, tx, th, tw] once.

Encoding (training) is torchvision's, on tensors. Decoding (inference) is numpy, so serving needs no torch: it is
``BoxCoder.decode_single`` operation by operation in float32 (tests pin the two together), including torchvision's
clamp of log size ratios at log(1000 / 16), a box at most 62.5× its anchor. TF does not clamp; the clamp only
changes boxes many times larger than the image, and keeps ``exp`` finite on garbage outputs.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from detector import defaults

if TYPE_CHECKING:
    import torch

# Per anchor, the TF output channel that becomes our channel i: ours (tx, ty, tw, th) = TF (1, 0, 3, 2).
TF_TO_XYWH_CODE_ORDER = (1, 0, 3, 2)
# torchvision's BoxCoder default bbox_xform_clip.
LOG_SCALE_CLIP = math.log(1000.0 / 16)


def encode_boxes(
    boxes: torch.Tensor, anchors: torch.Tensor, weights: tuple[float, float, float, float] = defaults.BOX_CODER_WEIGHTS
) -> torch.Tensor:
    """Codes (N, 4) as (tx, ty, tw, th) of ``boxes`` (N, 4) xyxy relative to ``anchors`` (N, 4) xyxy."""
    from torchvision.models.detection._utils import BoxCoder

    return BoxCoder(weights).encode_single(boxes, anchors)


def decode_boxes(
    codes: np.ndarray, anchors: np.ndarray, weights: tuple[float, float, float, float] = defaults.BOX_CODER_WEIGHTS
) -> np.ndarray:
    """Boxes xyxy, shaped like ``codes`` (..., 4), from codes relative to ``anchors`` (..., 4) xyxy (broadcast).

    Invariant: ``decode_boxes(encode_boxes(b, a), a) == b`` up to float rounding (tests check it).
    """
    codes = np.asarray(codes, dtype=np.float32)
    anchors = np.asarray(anchors, dtype=np.float32)
    widths = anchors[..., 2] - anchors[..., 0]
    heights = anchors[..., 3] - anchors[..., 1]
    half = np.float32(0.5)
    ctr_x = anchors[..., 0] + half * widths
    ctr_y = anchors[..., 1] + half * heights
    wx, wy, ww, wh = (np.float32(w) for w in weights)
    dx, dy = codes[..., 0] / wx, codes[..., 1] / wy
    clip = np.float32(LOG_SCALE_CLIP)
    dw, dh = np.minimum(codes[..., 2] / ww, clip), np.minimum(codes[..., 3] / wh, clip)
    pred_ctr_x = dx * widths + ctr_x
    pred_ctr_y = dy * heights + ctr_y
    half_w = half * (np.exp(dw) * widths)
    half_h = half * (np.exp(dh) * heights)
    return np.stack([pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h], axis=-1)
