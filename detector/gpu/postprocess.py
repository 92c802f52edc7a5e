"""From raw outputs to detections on the device: decode, sigmoid, a short list per image, one NMS for the batch.

The same TF OD API post-processing as :mod:`detector.postprocess` (numpy; its docstring says what TF does and why
torchvision's ``SSD.postprocess_detections`` does not fit), on tensors, with one round trip to the host per batch:

1. sigmoid scores of every (anchor, class) but the background, and boxes decoded with torchvision's ``BoxCoder``
   (:mod:`detector.box_coding` holds the numpy version to it); classes the label map never reports score 0;
2. per image, the ``NMS_SHORT_LIST_FACTOR · max_detections`` best candidates (``topk``), in numpy's order: score,
   then (anchor, class) index on ties. Greedy NMS only lets a box suppress lower-scored ones, so the first
   ``max_detections`` survivors of the short list are those of all candidates (:func:`detector.postprocess._nms_first`
   makes the same argument); an image whose short list was cut and leaves fewer survivors than that is finished by
   the numpy reference, rarely (TF's 1e-8 threshold on a few images). One short list over all classes is smaller
   than torchvision's per-class ``topk`` (400 candidates per image, not 90 × 100) and gives the same answer;
3. those above the score threshold (clipped first where the weights' graph clipped before NMS) go through one
   ``torchvision.ops.nms`` for the whole batch, each (image, class) moved apart by an offset in float64 (see
   :func:`_batched_nms`); clipping after NMS where the graph did, then the first ``max_detections`` per image;
4. only those boxes, scores and labels are copied to the host.

Keep lists equal numpy's on the golden files' raw outputs; scores and boxes agree within 1.2e-7 (CPU ``exp`` and
numpy's differ in the last bit).
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import nms

from detector import defaults
from detector.postprocess import NMS_SHORT_LIST_FACTOR, RawDetections
from detector.postprocess import select_detections as select_detections_numpy
from detector.spec import ClipBoxes


def decode_boxes(
    codes: torch.Tensor, anchors: torch.Tensor, weights: tuple[float, float, float, float] = defaults.BOX_CODER_WEIGHTS
) -> torch.Tensor:
    """Boxes (N, A, 4) xyxy normalized from codes (N, A, 4) (tx, ty, tw, th) relative to ``anchors`` (A, 4) xyxy."""
    count, num_anchors = codes.shape[:2]
    flat_anchors = anchors.to(codes).expand(count, num_anchors, 4).reshape(-1, 4)
    return BoxCoder(weights).decode_single(codes.reshape(-1, 4), flat_anchors).reshape(count, num_anchors, 4)


def postprocess(
    box_codes: torch.Tensor,
    class_logits: torch.Tensor,
    anchors: torch.Tensor,
    *,
    score_threshold: float = defaults.NMS_SCORE_THRESHOLD,
    iou_threshold: float = defaults.NMS_IOU_THRESHOLD,
    max_detections: int = defaults.MAX_DETECTIONS,
    clip_boxes: ClipBoxes = "after_nms",
    reported: np.ndarray | None = None,
) -> list[RawDetections]:
    """Detections for each image of a batch, as :func:`detector.postprocess.postprocess` gives them.

    Args:
        box_codes: (N, A, 4) codes relative to ``anchors``, any float dtype.
        class_logits: (N, A, K) logits, background at index 0.
        anchors: (A, 4) xyxy normalized.
        score_threshold: keep class scores strictly above this.
        clip_boxes: "before_nms" or "after_nms", as the graph the weights came from did.
        reported: (K,) bool, which class indices may be detected (None: every class but the background).
    """
    scores = torch.sigmoid(class_logits[..., 1:].float())
    boxes = decode_boxes(box_codes.float(), anchors)
    return select_detections(
        scores,
        boxes,
        score_threshold=score_threshold,
        iou_threshold=iou_threshold,
        max_detections=max_detections,
        clip_boxes=clip_boxes,
        reported=reported,
    )


def select_detections(
    scores: torch.Tensor,
    boxes: torch.Tensor,
    *,
    score_threshold: float = defaults.NMS_SCORE_THRESHOLD,
    iou_threshold: float = defaults.NMS_IOU_THRESHOLD,
    max_detections: int = defaults.MAX_DETECTIONS,
    clip_boxes: ClipBoxes = "after_nms",
    reported: np.ndarray | None = None,
) -> list[RawDetections]:
    """TF's ``batch_multiclass_non_max_suppression`` on class scores, as :func:`detector.postprocess.select_detections`.

    Args:
        scores: (N, A, K − 1) float32 foreground class scores (class index k + 1 in column k).
        boxes: (N, A, 4) float32 xyxy normalized, one box per anchor.
        reported: as in :func:`postprocess`.
    """
    count, _, num_foreground = scores.shape
    device = scores.device
    if reported is not None:
        allowed = torch.from_numpy(np.asarray(reported, dtype=bool)[1:]).to(device)
        scores = scores.masked_fill(~allowed, 0.0)
    threshold = float(np.float32(score_threshold))  # compared as float32, as numpy does
    flat = scores.reshape(count, -1)  # (N, A · (K − 1)), (anchor, class) index order as np.nonzero's
    short = min(NMS_SHORT_LIST_FACTOR * max_detections, flat.shape[1])
    top_scores, top_index = flat.topk(short, dim=1)
    # Ties in candidate order, as numpy's stable sort leaves them: by index, then stably by score.
    top_index, order = top_index.sort(dim=1)
    top_scores, order = top_scores.gather(1, order).sort(dim=1, descending=True, stable=True)
    top_index = top_index.gather(1, order)
    anchor_index = torch.div(top_index, num_foreground, rounding_mode="floor")
    labels = top_index % num_foreground + 1
    cand_boxes = boxes.gather(1, anchor_index[..., None].expand(-1, -1, 4))
    valid = top_scores > threshold
    if clip_boxes == "before_nms":
        cand_boxes = cand_boxes.clamp(0.0, 1.0)
        valid &= _areas(cand_boxes) > 0
    images = torch.arange(count, device=device)[:, None].expand(count, short)
    # The valid candidates of the whole batch, image by image, each image's in rank order.
    chosen = valid.reshape(-1).nonzero().squeeze(1)
    kept_boxes = cand_boxes.reshape(-1, 4)[chosen]
    kept_scores = top_scores.reshape(-1)[chosen]
    kept_labels = labels.reshape(-1)[chosen]
    kept_images = images.reshape(-1)[chosen]
    keep = _batched_nms(kept_boxes, kept_scores, kept_images * (num_foreground + 1) + kept_labels, iou_threshold)
    keep = keep.sort().values  # back to image by image, rank order within each
    kept_boxes, kept_scores, kept_labels, kept_images = (
        t[keep] for t in (kept_boxes, kept_scores, kept_labels, kept_images)
    )
    if clip_boxes == "after_nms":
        kept_boxes = kept_boxes.clamp(0.0, 1.0)
        nonzero = _areas(kept_boxes) > 0
        kept_boxes, kept_scores, kept_labels, kept_images = (
            t[nonzero] for t in (kept_boxes, kept_scores, kept_labels, kept_images)
        )
    survivors = torch.bincount(kept_images, minlength=count)
    starts = torch.cumsum(survivors, 0) - survivors
    rank = torch.arange(kept_images.shape[0], device=device) - starts[kept_images]
    first = rank < max_detections
    host = torch.cat(
        [kept_boxes[first], kept_scores[first, None], kept_labels[first, None].to(torch.float32)], dim=1
    ).cpu()
    # Images whose short list was cut and that kept fewer than max_detections need every candidate.
    cut = ((flat > threshold).sum(1) > short) & (survivors < max_detections)
    per_image = torch.stack([survivors.clamp(max=max_detections), cut.long()], dim=1).cpu().tolist()
    results = []
    start = 0
    for image, (kept, needs_all) in enumerate(per_image):
        rows = host[start : start + kept].numpy()
        start += kept
        if needs_all:
            results.append(
                _all_candidates(scores[image], boxes[image], threshold, iou_threshold, max_detections, clip_boxes)
            )
            continue
        results.append(
            RawDetections(
                boxes=np.ascontiguousarray(rows[:, :4]),
                scores=np.ascontiguousarray(rows[:, 4]),
                labels=rows[:, 5].astype(np.int64),
            )
        )
    return results


def _areas(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _batched_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS within each group: kept indices, highest score first, ties in input order.

    torchvision's ``batched_nms`` does this with per-group offsets in the boxes' own dtype (or, beyond 25,000 boxes
    on a GPU, a loop over the groups). At 64 images × 91 classes the offsets reach ~10^4, where float32 keeps only
    1e-3 of a normalized coordinate and IoUs change; in float64 the shifted coordinates stay exact to ~1e-12, so
    the groups are apart and every IoU is the one of the original boxes.
    """
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    wide = boxes.to(torch.float64)
    low = wide.min()
    span = wide.max() - low + 1
    shifted = wide - low + (groups.to(torch.float64) * span)[:, None]
    # nms sorts the scores stably (descending): equal scores keep their order here, numpy's candidate order.
    return nms(shifted, scores.to(torch.float64), iou_threshold)


def _all_candidates(
    scores: torch.Tensor,
    boxes: torch.Tensor,
    threshold: float,
    iou_threshold: float,
    max_detections: int,
    clip_boxes: ClipBoxes,
) -> RawDetections:
    """One image through the numpy reference with every candidate (unused classes already at score 0)."""
    host_boxes = boxes.cpu().numpy()
    (raw,) = select_detections_numpy(
        scores[None].cpu().numpy(),
        lambda _, anchor: host_boxes[anchor],
        score_threshold=threshold,
        iou_threshold=iou_threshold,
        max_detections=max_detections,
        clip_boxes=clip_boxes,
    )
    return raw
