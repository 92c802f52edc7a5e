"""The SSD training loss for the sigmoid head, as the TF Object Detection API's SSDLite config defines it.

- Matching (``argmax_matcher``): an anchor whose best IoU with a ground-truth box is at least 0.5 is a positive
  for that box, every other anchor a negative, and each ground-truth box is also forced onto its best anchor.
  torchvision's ``SSDMatcher`` is exactly this.
- Classification (``weighted_sigmoid``): binary cross-entropy on every one of the K columns, background included
  (one-hot targets; a negative's target is column 0), summed over columns. torchvision's ``SSD.compute_loss`` is
  softmax cross-entropy, which does not fit a head whose scores are independent sigmoids.
- Hard-example mining (``hard_example_miner``, loss type CLASSIFICATION): per image all positives and the
  negatives with the highest classification loss, ``max(3 · positives, 3)`` of them. TF's miner also runs a 0.99-IoU
  NMS over the candidates first; it only removes near-duplicate anchors and is left out.
- Localisation (``weighted_smooth_l1``, δ = 1): smooth L1 on the (tx, ty, tw, th) codes of positives.
- Both sums are divided by the number of positives in the batch (``normalize_loss_by_num_matches``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.models.detection._utils import SSDMatcher
from torchvision.ops import box_iou

from detector import defaults
from detector.box_coding import encode_boxes


def match_anchors(
    gt_boxes: torch.Tensor, anchors: torch.Tensor, iou_threshold: float = defaults.MATCH_IOU_THRESHOLD
) -> torch.Tensor:
    """For each anchor (A, 4) the index of its ground-truth box in ``gt_boxes`` (M, 4), or -1 for a negative.

    Both box sets are xyxy in the same coordinates (normalized here). Every ground-truth box gets at least its
    best anchor, whatever the IoU.
    """
    if gt_boxes.numel() == 0:
        return torch.full((anchors.shape[0],), -1, dtype=torch.int64, device=anchors.device)
    return SSDMatcher(iou_threshold)(box_iou(gt_boxes, anchors))


@dataclass(frozen=True)
class LossParts:
    """The loss to minimise (``total``) and its parts, already normalized by ``num_positives`` (at least 1)."""

    total: torch.Tensor
    classification: torch.Tensor
    localization: torch.Tensor
    num_positives: int


def ssd_loss(
    box_codes: torch.Tensor,
    class_logits: torch.Tensor,
    targets: Sequence[dict[str, torch.Tensor]],
    anchors: torch.Tensor,
    *,
    iou_threshold: float = defaults.MATCH_IOU_THRESHOLD,
    negatives_per_positive: int = defaults.HARD_NEGATIVES_PER_POSITIVE,
    min_negatives_per_image: int = defaults.MIN_NEGATIVES_PER_IMAGE,
) -> LossParts:
    """The batch's loss.

    Args:
        box_codes: (N, A, 4) predicted codes (tx, ty, tw, th).
        class_logits: (N, A, K) logits, background at index 0.
        targets: per image ``boxes`` (M, 4) xyxy normalized to [0, 1] and ``labels`` (M,) in 1..K-1.
        anchors: (A, 4) xyxy normalized.
    """
    box_codes, class_logits = box_codes.float(), class_logits.float()
    num_classes = class_logits.shape[-1]
    matches = torch.stack([match_anchors(t["boxes"], anchors, iou_threshold) for t in targets])  # (N, A)
    positive = matches >= 0

    # One-hot targets, (N, A, K): the matched box's class for positives, background (column 0) for negatives.
    class_index = torch.zeros_like(matches)
    loc_loss = box_codes.new_zeros(())
    for i, target in enumerate(targets):
        pos = positive[i]
        if not pos.any():
            continue
        matched = matches[i, pos]
        class_index[i, pos] = target["labels"][matched]
        wanted = encode_boxes(target["boxes"][matched], anchors[pos])
        loc_loss = loc_loss + F.smooth_l1_loss(box_codes[i, pos], wanted, beta=1.0, reduction="sum")
    one_hot = F.one_hot(class_index, num_classes).to(class_logits.dtype)
    per_anchor = F.binary_cross_entropy_with_logits(class_logits, one_hot, reduction="none").sum(-1)  # (N, A)

    # Hard negatives: rank each image's negatives by loss, keep the top max(3 · positives, 3).
    num_pos_per_image = positive.sum(1)
    num_neg = torch.clamp(negatives_per_positive * num_pos_per_image, min=min_negatives_per_image)
    negative_loss = per_anchor.detach().masked_fill(positive, -float("inf"))
    order = negative_loss.argsort(dim=1, descending=True)
    rank = order.argsort(dim=1)
    hard_negative = (rank < num_neg[:, None]) & ~positive

    num_positives = int(num_pos_per_image.sum())
    normalizer = max(1, num_positives)
    cls_loss = (per_anchor * (positive | hard_negative)).sum() / normalizer
    loc_loss = loc_loss / normalizer
    return LossParts(cls_loss + loc_loss, cls_loss.detach(), loc_loss.detach(), num_positives)
