"""The accuracy bar a backend must meet before ``auto`` may choose it.

fp32 engines: raw outputs within 1e-3 of eager PyTorch (:data:`detector.backends.onnx.RAW_TOLERANCE`). Reduced precision
(bf16, fp16, int8): on real photographs, every detection above 0.3 of either side has a partner of the same class
on the other side (scored down to 0.3 − 0.02, so a score crossing the threshold inside the tolerance is no miss)
with every box edge within 2 px and the score within 0.02.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

from detector.results import Detection, ImageDetections

MIN_SCORE = 0.3
BOX_TOLERANCE_PX = 2.0
SCORE_TOLERANCE = 0.02
# Run both sides' postprocess at this threshold, so partners just under MIN_SCORE are found.
MATCH_SCORE = MIN_SCORE - SCORE_TOLERANCE


@dataclass
class Agreement:
    """How far a backend's detections are from the reference's over a set of images.

    ``max_box_px``: largest box-edge difference between matched detections (pixels); ``max_score_diff``: largest
    score difference; ``lost``/``extra``: "image: score" of detections above 0.3 without a partner on the other side.
    """

    max_box_px: float = 0.0
    max_score_diff: float = 0.0
    matched: int = 0
    lost: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Whether the backend meets the bar on these images."""
        return (
            not self.lost
            and not self.extra
            and self.max_box_px <= BOX_TOLERANCE_PX
            and self.max_score_diff <= SCORE_TOLERANCE
        )

    def summary(self) -> str:
        """One line: the figures and, if any, the detections without a partner."""
        text = (
            f"{self.matched} detections matched, max box diff {self.max_box_px:.2f} px, "
            f"max score diff {self.max_score_diff:.4f}"
        )
        if self.lost:
            text += f", lost {', '.join(self.lost)}"
        if self.extra:
            text += f", extra {', '.join(self.extra)}"
        return text


def _box_diff(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def _box_distance(det: Detection, other: Detection) -> float:
    return _box_diff(det.box, other.box)


def compare_detections(
    reference: Sequence[ImageDetections], candidate: Sequence[ImageDetections], names: Sequence[str] | None = None
) -> Agreement:
    """Match each detection above 0.3 with the other side's closest box of its class (both postprocessed at
    :data:`MATCH_SCORE` or lower); unmatched ones, or partners too far, are lost/extra."""
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
                best = min(partners, key=functools.partial(_box_distance, det))
                box_px, score_diff = _box_diff(det.box, best.box), abs(det.score - best.score)
                if box_px > BOX_TOLERANCE_PX or score_diff > SCORE_TOLERANCE:
                    misses.append(f"{name}: {det.label} {det.score:.3f} (box {box_px:.1f} px, score {score_diff:.3f})")
                if side == "ref":
                    agreement.matched += 1
                agreement.max_box_px = max(agreement.max_box_px, box_px)
                agreement.max_score_diff = max(agreement.max_score_diff, score_diff)
    return agreement
