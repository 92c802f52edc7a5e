"""From raw network outputs to detections: decode, sigmoid, per-class NMS, clip, top-k.

The TF OD API's ``batch_multiclass_non_max_suppression`` (``core/post_processing.py``) with ``score_converter:
SIGMOID``: scores are independent sigmoids (no softmax), the background column is dropped, each class gets its own
NMS (IoU > threshold suppresses), all classes are merged and sorted by score, and boxes are clipped to the image
window (before NMS in the 2018 zoo graphs, after it in newer exports; zero-area boxes are dropped). torchvision's
``SSD.postprocess_detections`` uses softmax and clips first, so it is not reused; its ``batched_nms`` is.

Filtering by the caller's score threshold before NMS gives the same detections above that threshold as TF's
1e-8 candidate threshold: greedy NMS only lets a box suppress lower-scored ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.ops import batched_nms, box_area, clip_boxes_to_image

from detector import defaults
from detector.box_coding import decode_boxes


@dataclass(frozen=True)
class RawDetections:
    """Detections of one image: ``boxes`` (D, 4) xyxy normalized to [0, 1], ``scores`` (D,), ``labels`` (D,)
    class indices (1..K-1), sorted by score, highest first."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor


def _clip_and_prune(boxes: torch.Tensor, *others: torch.Tensor) -> tuple[torch.Tensor, ...]:
    boxes = clip_boxes_to_image(boxes, (1, 1))
    keep = box_area(boxes) > 0
    return (boxes[keep], *(t[keep] for t in others))


def postprocess(
    box_codes: torch.Tensor,
    class_logits: torch.Tensor,
    anchors: torch.Tensor,
    *,
    score_threshold: float = defaults.NMS_SCORE_THRESHOLD,
    iou_threshold: float = defaults.NMS_IOU_THRESHOLD,
    max_detections: int = defaults.MAX_DETECTIONS,
    clip_boxes: str = "after_nms",
) -> list[RawDetections]:
    """Detections for each image of a batch.

    Args:
        box_codes: (N, A, 4) codes relative to ``anchors``.
        class_logits: (N, A, K) logits, background at index 0.
        anchors: (A, 4) xyxy normalized.
        score_threshold: keep class scores strictly above this.
        clip_boxes: "before_nms" or "after_nms", as the graph the weights came from did.
    """
    # Candidates of the whole batch at once: every (image, anchor, class) above the threshold, in that order.
    scores = torch.sigmoid(class_logits[..., 1:])
    image_index, anchor_index, class_index = torch.nonzero(scores > score_threshold, as_tuple=True)
    cand_scores = scores[image_index, anchor_index, class_index]
    # Only candidates are decoded: at a display threshold that is a handful of the N · A boxes.
    cand_boxes = decode_boxes(box_codes[image_index, anchor_index], anchors[anchor_index])
    cand_labels = class_index + 1
    if clip_boxes == "before_nms":
        cand_boxes, cand_scores, cand_labels, image_index = _clip_and_prune(
            cand_boxes, cand_scores, cand_labels, image_index
        )
    counts = torch.bincount(image_index, minlength=box_codes.shape[0]).tolist()
    results = []
    # One NMS per image (not one for the batch): an image's detections must not depend on its batch mates, and
    # torchvision's batched_nms offsets boxes by their group index, which would cost precision across images.
    for image_boxes, image_scores, image_labels in zip(
        cand_boxes.split(counts), cand_scores.split(counts), cand_labels.split(counts), strict=True
    ):
        keep = batched_nms(image_boxes, image_scores, image_labels, iou_threshold)
        kept = (image_boxes[keep], image_scores[keep], image_labels[keep])
        if clip_boxes == "after_nms":
            kept = _clip_and_prune(*kept)
        # TF keeps max_detections per class, then max_detections in all; the second cap implies the first.
        kept = tuple(t[:max_detections] for t in kept)
        results.append(RawDetections(boxes=kept[0], scores=kept[1], labels=kept[2]))
    return results
