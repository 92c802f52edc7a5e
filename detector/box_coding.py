"""Box codes relative to anchors: the Faster R-CNN coder with SSD's scales.

torchvision's ``BoxCoder`` implements the same transform as TF's ``FasterRcnnBoxCoder`` (centre offsets over anchor
size, log size ratios, scaled by 10, 10, 5, 5) but in (x, y, w, h) order on xyxy boxes. We keep torchvision's order
everywhere; the TF importer permutes the predictor's output channels from TF's [ty, tx, th, tw] once.
"""

from __future__ import annotations

import torch
from torchvision.models.detection._utils import BoxCoder

from detector import defaults

# Per anchor, the TF output channel that becomes our channel i: ours (tx, ty, tw, th) = TF (1, 0, 3, 2).
TF_TO_XYWH_CODE_ORDER = (1, 0, 3, 2)


def box_coder(weights: tuple[float, float, float, float] = defaults.BOX_CODER_WEIGHTS) -> BoxCoder:
    """torchvision's coder with SSD's scales.

    torchvision clamps log size ratios at log(1000 / 16) (a box at most 62.5× its anchor); TF does not clamp. The
    clamp only changes boxes many times larger than the image, and keeps ``exp`` finite on garbage outputs.
    """
    return BoxCoder(weights)


def encode_boxes(boxes: torch.Tensor, anchors: torch.Tensor, coder: BoxCoder | None = None) -> torch.Tensor:
    """Codes (N, 4) as (tx, ty, tw, th) of ``boxes`` (N, 4) xyxy relative to ``anchors`` (N, 4) xyxy."""
    return (coder or box_coder()).encode_single(boxes, anchors)


def decode_boxes(codes: torch.Tensor, anchors: torch.Tensor, coder: BoxCoder | None = None) -> torch.Tensor:
    """Boxes xyxy, shaped like ``codes`` (..., A, 4), from codes relative to ``anchors`` (A, 4) xyxy.

    Invariant: ``decode_boxes(encode_boxes(b, a), a) == b`` up to float rounding (tests check it).
    """
    coder = coder or box_coder()
    flat = codes.reshape(-1, 4)
    # expand, not repeat(N // A): with no candidates A is 0 and the division would fail.
    expanded = anchors.expand(codes.shape).reshape(-1, 4)
    return coder.decode_single(flat, expanded).reshape(codes.shape)
