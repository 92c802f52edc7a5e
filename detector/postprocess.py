"""From raw network outputs to detections: decode, sigmoid, per-class NMS, clip, top-k — in numpy.

The TF OD API's ``batch_multiclass_non_max_suppression`` (``core/post_processing.py``) with ``score_converter:
SIGMOID``: scores are independent sigmoids (no softmax), the background column is dropped, each class gets its own
NMS (IoU > threshold suppresses), all classes are merged and sorted by score, and boxes are clipped to the image
window (before NMS in the 2018 zoo graphs, after it in newer exports; zero-area boxes are dropped). torchvision's
``SSD.postprocess_detections`` uses softmax and clips first, so it is not reused; its ``batched_nms`` is the reference
the tests hold this numpy implementation to (serving runs without torch).

Filtering by the caller's score threshold before NMS gives the same detections above that threshold as TF's
1e-8 candidate threshold: greedy NMS only lets a box suppress lower-scored ones. Classes with an empty label (COCO's
ten unused category ids) are never reported.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from detector import defaults
from detector.box_coding import decode_boxes
from detector.results import Detection, ImageDetections
from detector.spec import ClipBoxes, Postprocessing

try:  # OpenCV's NMS, a C++ loop; optional (the "fast" extra)
    import cv2
except ImportError:  # pragma: no cover - depends on the environment
    cv2 = None  # type: ignore[assignment]

# How many of the highest-scored candidates NMS looks at first, in multiples of the detections wanted.
NMS_SHORT_LIST_FACTOR = 4

# Boxes of candidates: (image indices, anchor indices) → (M, 4) xyxy normalized.
CandidateBoxes = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class RawDetections:
    """Detections of one image: ``boxes`` (D, 4) float32 xyxy normalized to [0, 1], ``scores`` (D,) float32,
    ``labels`` (D,) int64 class indices (1..K-1), sorted by score, highest first."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-x) in float32."""
    logits = np.asarray(logits, dtype=np.float32)
    return np.float32(1.0) / (np.float32(1.0) + np.exp(-logits))


def _logit(probability: float) -> float:
    if probability <= 0.0:
        return -math.inf
    if probability >= 1.0:
        return math.inf
    return math.log(probability / (1.0 - probability))


def _areas(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _clip_and_prune(boxes: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    boxes = np.clip(boxes, np.float32(0.0), np.float32(1.0))
    keep = _areas(boxes) > 0
    return (boxes[keep], *(t[keep] for t in others))


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float, limit: int = 0) -> np.ndarray:
    """Per-class greedy NMS: indices of the kept boxes, highest score first (ties: the earlier box first), at most
    ``limit`` of them (0: all).

    A box is suppressed by a kept, higher-scored box of its own class overlapping it with IoU above the threshold:
    the outcome of one NMS per class merged by score, as TF and torchvision's ``batched_nms`` give it (the tests hold
    both implementations here to torchvision's). OpenCV's C++ ``NMSBoxesBatched`` runs it where installed (5-10×
    faster than the numpy loop); the numpy loop is the fallback.
    """
    if cv2 is not None and len(scores):
        return _nms_opencv(boxes, scores, classes, iou_threshold, limit)
    return _nms_numpy(boxes, scores, classes, iou_threshold, limit)


def _nms_opencv(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float, limit: int) -> np.ndarray:
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1).astype(np.float64)
    # OpenCV's stubs ask for sequences; its bindings take numpy arrays as they are.
    keep = cv2.dnn.NMSBoxesBatched(
        xywh,  # type: ignore[arg-type]
        scores.astype(np.float32),  # type: ignore[arg-type]
        classes.astype(np.int32),  # type: ignore[arg-type]
        -math.inf,
        float(iou),
    )
    kept = np.asarray(keep, dtype=np.int64).reshape(-1)
    return kept[:limit] if limit else kept


def _nms_numpy(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float, limit: int) -> np.ndarray:
    order = np.argsort(-scores, kind="stable")
    boxes, classes = boxes[order], classes[order]
    areas = _areas(boxes)
    remaining = np.arange(len(order))
    keep: list[int] = []
    threshold, zero = np.float32(iou), np.float32(0.0)
    while remaining.size and not (limit and len(keep) >= limit):
        i = int(remaining[0])
        keep.append(i)
        rest = remaining[1:]
        width = np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0])
        height = np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1])
        inter = np.maximum(width, zero) * np.maximum(height, zero)
        overlap = inter / (areas[i] + areas[rest] - inter)
        remaining = rest[~((overlap > threshold) & (classes[rest] == classes[i]))]
    return order[np.asarray(keep, dtype=np.int64)]


def _nms_first(
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    iou_threshold: float,
    max_detections: int,
    clip_after: bool,
) -> tuple[np.ndarray, ...]:
    """The first ``max_detections`` survivors of greedy NMS, without running it over every candidate.

    Greedy NMS visits boxes in score order and a box is only ever suppressed by a higher-scored one, so the first k
    survivors among the highest-scored candidates are the first k survivors among all of them. Try a short list
    (a few times ``max_detections``); only if it yields fewer than ``max_detections`` run over every candidate. At
    TF's 1e-8 candidate threshold this cuts NMS from all ~1900 boxes per class to a few hundred (TF's own
    ``NonMaxSuppressionV3`` stops at its maximum output size for the same reason).
    """

    def run(index: np.ndarray) -> tuple[np.ndarray, ...]:
        # Clipping after NMS may drop boxes, so only a limit-free NMS is sure to leave max_detections of them.
        limit = 0 if clip_after else max_detections
        kept = index[nms(boxes[index], scores[index], labels[index], iou_threshold, limit)]
        out = (boxes[kept], scores[kept], labels[kept])
        return _clip_and_prune(*out) if clip_after else out

    short = NMS_SHORT_LIST_FACTOR * max_detections
    if scores.size > short:
        # The short list in score order, ties broken by position as the full sort would.
        top = np.argpartition(-scores, short - 1)[:short]
        kept = run(np.sort(top))
        if kept[0].shape[0] >= max_detections:
            return tuple(t[:max_detections] for t in kept)
    return tuple(t[:max_detections] for t in run(np.arange(scores.size)))


def postprocess(
    box_codes: np.ndarray,
    class_logits: np.ndarray,
    anchors: np.ndarray,
    *,
    score_threshold: float = defaults.NMS_SCORE_THRESHOLD,
    iou_threshold: float = defaults.NMS_IOU_THRESHOLD,
    max_detections: int = defaults.MAX_DETECTIONS,
    clip_boxes: ClipBoxes = "after_nms",
    reported: np.ndarray | None = None,
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
    codes = np.asarray(box_codes, dtype=np.float32)
    logits = np.asarray(class_logits, dtype=np.float32)[..., 1:]
    # Candidates are found on the logits (the sigmoid is monotonic), slightly below the threshold's logit so that
    # rounding never loses one; the exact test on the sigmoid follows in select_detections.
    bound = _logit(score_threshold)
    margin = 1e-6 * max(1.0, abs(bound)) if math.isfinite(bound) else 0.0
    image_index, anchor_index, class_index = np.nonzero(logits > bound - margin)
    scores = sigmoid(logits[image_index, anchor_index, class_index])

    def decode(images: np.ndarray, anchor_rows: np.ndarray) -> np.ndarray:
        # Only candidates are decoded: at a display threshold that is a handful of the N · A boxes.
        return decode_boxes(codes[images, anchor_rows], anchors[anchor_rows])

    return _select(
        codes.shape[0],
        image_index,
        anchor_index,
        class_index,
        scores,
        decode,
        score_threshold=score_threshold,
        iou_threshold=iou_threshold,
        max_detections=max_detections,
        clip_boxes=clip_boxes,
        reported=reported,
    )


def select_detections(
    scores: np.ndarray,
    candidate_boxes: CandidateBoxes,
    *,
    score_threshold: float = defaults.NMS_SCORE_THRESHOLD,
    iou_threshold: float = defaults.NMS_IOU_THRESHOLD,
    max_detections: int = defaults.MAX_DETECTIONS,
    clip_boxes: ClipBoxes = "after_nms",
    reported: np.ndarray | None = None,
) -> list[RawDetections]:
    """TF's ``batch_multiclass_non_max_suppression`` on class scores: candidates above ``score_threshold``, per-class
    NMS per image, clipping, the ``max_detections`` best.

    Args:
        scores: (N, A, K − 1) foreground class scores (class index k + 1 in column k).
        candidate_boxes: the xyxy boxes of the candidates, from their image and anchor indices.
        reported: as in :func:`postprocess`.
    """
    scores = np.asarray(scores, dtype=np.float32)
    image_index, anchor_index, class_index = np.nonzero(scores > np.float32(score_threshold))
    return _select(
        scores.shape[0],
        image_index,
        anchor_index,
        class_index,
        scores[image_index, anchor_index, class_index],
        candidate_boxes,
        score_threshold=score_threshold,
        iou_threshold=iou_threshold,
        max_detections=max_detections,
        clip_boxes=clip_boxes,
        reported=reported,
    )


def _select(
    num_images: int,
    image_index: np.ndarray,
    anchor_index: np.ndarray,
    class_index: np.ndarray,
    cand_scores: np.ndarray,
    candidate_boxes: CandidateBoxes,
    *,
    score_threshold: float,
    iou_threshold: float,
    max_detections: int,
    clip_boxes: ClipBoxes,
    reported: np.ndarray | None,
) -> list[RawDetections]:
    # Every (image, anchor, class) above the threshold, in that order (np.nonzero's).
    keep = cand_scores > np.float32(score_threshold)
    if reported is not None:
        # Classes a model has but never reports (COCO's unused ids) are no candidates at all.
        keep &= np.asarray(reported)[class_index + 1]
    image_index, anchor_index, class_index, cand_scores = (
        image_index[keep],
        anchor_index[keep],
        class_index[keep],
        cand_scores[keep],
    )
    cand_boxes = np.asarray(candidate_boxes(image_index, anchor_index), dtype=np.float32).reshape(-1, 4)
    cand_labels = (class_index + 1).astype(np.int64)
    if clip_boxes == "before_nms":
        cand_boxes, cand_scores, cand_labels, image_index = _clip_and_prune(
            cand_boxes, cand_scores, cand_labels, image_index
        )
    results = []
    # One NMS per image: an image's detections must not depend on its batch mates.
    bounds = np.searchsorted(image_index, np.arange(num_images + 1))
    for start, end in itertools.pairwise(bounds):
        # TF keeps max_detections per class, then max_detections in all; the second cap implies the first.
        boxes, scores, labels = _nms_first(
            cand_boxes[start:end],
            cand_scores[start:end],
            cand_labels[start:end],
            iou_threshold,
            max_detections,
            clip_boxes == "after_nms",
        )
        results.append(RawDetections(boxes=boxes, scores=scores, labels=labels))
    return results


def reported_classes(labels: Sequence[str]) -> np.ndarray:
    """(K,) bool: the class indices a label map lets detections have (named ones; not the background)."""
    return np.array([index > 0 and bool(label) for index, label in enumerate(labels)])


def to_image_detections(raw: RawDetections, labels: Sequence[str], height: int, width: int) -> ImageDetections:
    """One image's normalized detections as :class:`ImageDetections` in its pixels, named by ``labels``."""
    boxes = (raw.boxes * np.array([width, height, width, height], dtype=np.float32)).tolist()
    detections = [
        Detection(label=labels[label], class_id=label, score=score, box=(box[0], box[1], box[2], box[3]))
        for box, score, label in zip(boxes, raw.scores.tolist(), raw.labels.tolist(), strict=True)
    ]
    return ImageDetections(width=width, height=height, detections=detections)


def detections_in_pixels(
    box_codes: np.ndarray,
    class_logits: np.ndarray,
    anchors: np.ndarray,
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
        box_codes,
        class_logits,
        anchors,
        score_threshold=score_threshold,
        iou_threshold=settings.nms_iou_threshold,
        max_detections=min(max_detections or settings.max_detections, settings.max_detections),
        clip_boxes=settings.clip_boxes,
        reported=reported_classes(labels),
    )
    return [to_image_detections(r, labels, height, width) for r, (height, width) in zip(raw, sizes, strict=True)]
