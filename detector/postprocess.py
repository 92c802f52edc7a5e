"""From raw network outputs to detections: decode, sigmoid, per-class NMS, clip, top-k.

The TF OD API's ``batch_multiclass_non_max_suppression`` (``core/post_processing.py``) with ``score_converter:
SIGMOID``: scores are independent sigmoids (no softmax), the background column is dropped, each class gets its own
NMS (IoU > threshold suppresses), all classes are merged and sorted by score, and boxes are clipped to the image
window (before NMS in the 2018 zoo graphs, after it in newer exports; zero-area boxes are dropped). torchvision's
``SSD.postprocess_detections`` uses softmax and clips first, so it is not reused; its ``batched_nms`` is.

Filtering by the caller's score threshold before NMS gives the same detections above that threshold as TF's
1e-8 candidate threshold: greedy NMS only lets a box suppress lower-scored ones. Classes with an empty label (COCO's
ten unused category ids) are never reported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torchvision.ops import batched_nms, box_area, clip_boxes_to_image

from detector import defaults
from detector.box_coding import decode_boxes
from detector.results import Detection, ImageDetections
from detector.spec import ClipBoxes, Postprocessing


@dataclass(frozen=True)
class RawDetections:
    """Detections of one image: ``boxes`` (D, 4) xyxy normalized to [0, 1], ``scores`` (D,), ``labels`` (D,)
    class indices (1..K-1), sorted by score, highest first."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor


# How many of the highest-scored candidates NMS looks at first, in multiples of the detections wanted.
NMS_SHORT_LIST_FACTOR = 4


def _clip_and_prune(boxes: torch.Tensor, *others: torch.Tensor) -> tuple[torch.Tensor, ...]:
    boxes = clip_boxes_to_image(boxes, (1, 1))
    keep = box_area(boxes) > 0
    return (boxes[keep], *(t[keep] for t in others))


def _nms(
    boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_threshold: float, clip_after: bool
) -> tuple[torch.Tensor, ...]:
    keep = batched_nms(boxes, scores, labels, iou_threshold)
    kept = (boxes[keep], scores[keep], labels[keep])
    return _clip_and_prune(*kept) if clip_after else kept


def _nms_first(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    iou_threshold: float,
    max_detections: int,
    clip_after: bool,
) -> tuple[torch.Tensor, ...]:
    """The first ``max_detections`` survivors of greedy NMS, without running it over every candidate.

    Greedy NMS visits boxes in score order and a box is only ever suppressed by a higher-scored one, so the first k
    survivors among the highest-scored candidates are the first k survivors among all of them. Try a short list
    (a few times ``max_detections``); only if it yields fewer than ``max_detections`` run over every candidate. At
    TF's 1e-8 candidate threshold this cuts NMS from all ~1900 boxes per class to a few hundred (TF's own
    ``NonMaxSuppressionV3`` stops at its maximum output size for the same reason).
    """
    short = NMS_SHORT_LIST_FACTOR * max_detections
    if scores.numel() > short:
        top = scores.topk(short).indices
        kept = _nms(boxes[top], scores[top], labels[top], iou_threshold, clip_after)
        if kept[0].shape[0] >= max_detections:
            return tuple(t[:max_detections] for t in kept)
    return tuple(t[:max_detections] for t in _nms(boxes, scores, labels, iou_threshold, clip_after))


# Boxes of candidates: (image indices, anchor indices) → (M, 4) xyxy normalized.
CandidateBoxes = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def postprocess(
    box_codes: torch.Tensor,
    class_logits: torch.Tensor,
    anchors: torch.Tensor,
    *,
    score_threshold: float = defaults.NMS_SCORE_THRESHOLD,
    iou_threshold: float = defaults.NMS_IOU_THRESHOLD,
    max_detections: int = defaults.MAX_DETECTIONS,
    clip_boxes: ClipBoxes = "after_nms",
    reported: torch.Tensor | None = None,
) -> list[RawDetections]:
    """Detections for each image of a batch.

    Args:
        box_codes: (N, A, 4) codes relative to ``anchors``.
        class_logits: (N, A, K) logits, background at index 0.
        anchors: (A, 4) xyxy normalized.
        score_threshold: keep class scores strictly above this.
        clip_boxes: "before_nms" or "after_nms", as the graph the weights came from did.
        reported: (K,) bool, which class indices may be detected (None: every class but the background).
    """

    def decode(image_index: torch.Tensor, anchor_index: torch.Tensor) -> torch.Tensor:
        # Only candidates are decoded: at a display threshold that is a handful of the N · A boxes.
        return decode_boxes(box_codes[image_index, anchor_index], anchors[anchor_index])

    return select_detections(
        torch.sigmoid(class_logits[..., 1:]),
        decode,
        score_threshold=score_threshold,
        iou_threshold=iou_threshold,
        max_detections=max_detections,
        clip_boxes=clip_boxes,
        reported=reported,
    )


def select_detections(
    scores: torch.Tensor,
    candidate_boxes: CandidateBoxes,
    *,
    score_threshold: float = defaults.NMS_SCORE_THRESHOLD,
    iou_threshold: float = defaults.NMS_IOU_THRESHOLD,
    max_detections: int = defaults.MAX_DETECTIONS,
    clip_boxes: ClipBoxes = "after_nms",
    reported: torch.Tensor | None = None,
) -> list[RawDetections]:
    """TF's ``batch_multiclass_non_max_suppression`` on class scores: candidates above ``score_threshold``, per-class
    NMS per image, clipping, the ``max_detections`` best.

    Args:
        scores: (N, A, K − 1) foreground class scores (class index k + 1 in column k).
        candidate_boxes: the xyxy boxes of the candidates, from their image and anchor indices.
        reported: as in :func:`postprocess`.
    """
    # Candidates of the whole batch at once: every (image, anchor, class) above the threshold, in that order.
    image_index, anchor_index, class_index = torch.nonzero(scores > score_threshold, as_tuple=True)
    if reported is not None:
        # Classes a model has but never reports (COCO's unused ids) are no candidates at all.
        keep = reported.to(class_index.device)[class_index + 1]
        image_index, anchor_index, class_index = image_index[keep], anchor_index[keep], class_index[keep]
    cand_scores = scores[image_index, anchor_index, class_index]
    cand_boxes = candidate_boxes(image_index, anchor_index)
    cand_labels = class_index + 1
    if clip_boxes == "before_nms":
        cand_boxes, cand_scores, cand_labels, image_index = _clip_and_prune(
            cand_boxes, cand_scores, cand_labels, image_index
        )
    counts = torch.bincount(image_index, minlength=scores.shape[0]).tolist()
    results = []
    # One NMS per image (not one for the batch): an image's detections must not depend on its batch mates, and
    # torchvision's batched_nms offsets boxes by their group index, which would cost precision across images.
    for image_boxes, image_scores, image_labels in zip(
        cand_boxes.split(counts), cand_scores.split(counts), cand_labels.split(counts), strict=True
    ):
        # TF keeps max_detections per class, then max_detections in all; the second cap implies the first.
        kept = _nms_first(
            image_boxes, image_scores, image_labels, iou_threshold, max_detections, clip_boxes == "after_nms"
        )
        results.append(RawDetections(boxes=kept[0], scores=kept[1], labels=kept[2]))
    return results


def reported_classes(labels: Sequence[str]) -> torch.Tensor:
    """(K,) bool: the class indices a label map lets detections have (named ones; not the background)."""
    return torch.tensor([index > 0 and bool(label) for index, label in enumerate(labels)])


def to_image_detections(raw: RawDetections, labels: Sequence[str], height: int, width: int) -> ImageDetections:
    """One image's normalized detections as :class:`ImageDetections` in its pixels, named by ``labels``."""
    scale = torch.tensor([width, height, width, height], dtype=raw.boxes.dtype, device=raw.boxes.device)
    boxes = (raw.boxes * scale).tolist()
    detections = [
        Detection(label=labels[label], class_id=label, score=score, box=tuple(box))
        for box, score, label in zip(boxes, raw.scores.tolist(), raw.labels.tolist(), strict=True)
    ]
    return ImageDetections(width=width, height=height, detections=detections)


def detections_in_pixels(
    box_codes: torch.Tensor,
    class_logits: torch.Tensor,
    anchors: torch.Tensor,
    settings: Postprocessing,
    labels: Sequence[str],
    sizes: Sequence[tuple[int, int]],
    *,
    score_threshold: float = defaults.SCORE_THRESHOLD,
    max_detections: int | None = None,
) -> list[ImageDetections]:
    """Raw outputs of a batch → each image's detections in its pixels; ``sizes`` holds each (height, width).

    ``settings`` are the model's (NMS IoU, its detection cap, clipping); ``max_detections`` may only lower the cap.
    """
    raw = postprocess(
        box_codes.float(),
        class_logits.float(),
        anchors.to(box_codes.device),
        score_threshold=score_threshold,
        iou_threshold=settings.nms_iou_threshold,
        max_detections=min(max_detections or settings.max_detections, settings.max_detections),
        clip_boxes=settings.clip_boxes,
        reported=reported_classes(labels),
    )
    return [to_image_detections(r, labels, height, width) for r, (height, width) in zip(raw, sizes, strict=True)]
