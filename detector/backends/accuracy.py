"""The accuracy bar a backend must meet before ``auto`` may choose it.

fp32 engines: raw outputs within 1e-3 of eager PyTorch (:data:`detector.backends.onnx.RAW_TOLERANCE`). Reduced
precision (bf16, fp16, int8) is judged by its detections, not its pixels: on real photographs (and their variants),
every detection above 0.3 of either side has a partner of the same class on the other side (scored down to
0.3 − 0.02, so a score crossing the threshold inside the tolerance is no miss) whose box overlaps it with IoU ≥ 0.95
and whose score is within 0.02 — none lost, none added. IoU rather than pixels: 14 px on a 3840-px box is nothing,
4 px on a 40-px one is a different box.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

from detector.results import Detection, ImageDetections

MIN_SCORE = 0.3
MIN_IOU = 0.95
SCORE_TOLERANCE = 0.02
# Run both sides' postprocess at this threshold, so partners just under MIN_SCORE are found.
MATCH_SCORE = MIN_SCORE - SCORE_TOLERANCE


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two xyxy boxes (0 for boxes without area)."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass
class Agreement:
    """How far a backend's detections are from the reference's over a set of images.

    ``min_iou``: the smallest IoU between matched detections; ``max_score_diff``: the largest score difference;
    ``lost``/``extra``: "image: label score" of detections above 0.3 without a partner on the other side.
    """

    min_iou: float = 1.0
    max_score_diff: float = 0.0
    matched: int = 0
    lost: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Whether the backend meets the bar on these images."""
        return not self.lost and not self.extra and self.min_iou >= MIN_IOU and self.max_score_diff <= SCORE_TOLERANCE

    def summary(self) -> str:
        """One line: the figures and, if any, the detections without a partner."""
        text = (
            f"{self.matched} detections matched, min IoU {self.min_iou:.3f}, max score diff {self.max_score_diff:.4f}"
        )
        if self.lost:
            text += f", lost {', '.join(self.lost[:5])}" + (f" (+{len(self.lost) - 5})" if len(self.lost) > 5 else "")
        if self.extra:
            text += f", extra {', '.join(self.extra[:5])}" + (
                f" (+{len(self.extra) - 5})" if len(self.extra) > 5 else ""
            )
        return text


def _overlap(det: Detection, other: Detection) -> float:
    return box_iou(det.box, other.box)


def compare_detections(
    reference: Sequence[ImageDetections], candidate: Sequence[ImageDetections], names: Sequence[str] | None = None
) -> Agreement:
    """Match each detection above 0.3 with the other side's most overlapping box of its class (both postprocessed
    at :data:`MATCH_SCORE` or lower); unmatched ones, or partners too far, are lost/extra."""
    names = names or [str(i) for i in range(len(reference))]
    agreement = Agreement()
    for name, ref, got in zip(names, reference, candidate, strict=True):
        for side, mine, theirs, misses in (
            ("ref", ref.detections, got.detections, agreement.lost),
            ("got", got.detections, ref.detections, agreement.extra),
        ):
            for det in mine:
                if det.score <= MIN_SCORE:
                    continue
                partners = [other for other in theirs if other.class_id == det.class_id]
                if not partners:
                    misses.append(f"{name}: {det.label} {det.score:.3f}")
                    continue
                best = max(partners, key=functools.partial(_overlap, det))
                iou, score_diff = box_iou(det.box, best.box), abs(det.score - best.score)
                if iou < MIN_IOU or score_diff > SCORE_TOLERANCE:
                    misses.append(f"{name}: {det.label} {det.score:.3f} (IoU {iou:.3f}, score {score_diff:.3f})")
                if side == "ref":
                    agreement.matched += 1
                agreement.min_iou = min(agreement.min_iou, iou)
                agreement.max_score_diff = max(agreement.max_score_diff, score_diff)
    return agreement
