"""The accuracy bar a reduced-precision engine (fp16, bf16, int8) must meet before ``auto`` may choose it: judged by
what users can measure, on the check photographs (:func:`detector.samples.check_images`).

Two figures, both against the fp32 engine's detections on the same images:

- **agreement AP**: COCO AP@[.5:.95] (pycocotools) of the engine's detections, with fp32's detections scored
  ≥ 0.3 taken as the ground truth. ≥ 0.98 passes. fp32's detections scored 0.1–0.3 are "don't care" regions
  (COCO's crowd regions, KITTI's DontCare): an engine's detection on one of them is neither a hit nor a false
  alarm. Without them, an object both engines score at about 0.3 decides the figure: on the COCO model, one bottle
  that fp32 scores just above 0.3 and bf16 just below, beside another bottle the other way round, is a category
  of its own at AP 0.5, and takes bf16 from 0.9985 to 0.9747 over 21 categories (AMD EPYC, AVX512-BF16).
  For scale: MLPerf Inference accepts a reduced-precision SSD-MobileNet at 99 % of fp32's mAP against real labels;
  on 38 COCO 2017 photographs with their official labels bf16 scored 0.2525 AP against fp32's 0.2509 while its
  agreement AP was 0.995 (issue 16).
- **confident detections lost**: an fp32 detection scored ≥ 0.5 that has no detection of the same class at
  IoU ≥ 0.5 scored ≥ 0.4 on the engine's side. None may be lost: that is the detection a user would miss.

The set must be large enough for the figures to mean something: at least 40 images holding at least 200 fp32
detections ≥ 0.3. fp32 engines are held to raw outputs instead (:data:`detector.backends.onnx.RAW_TOLERANCE`).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass

from detector.results import ImageDetections

# fp32's detections at or above this are the ground truth of the agreement AP.
TRUTH_SCORE = 0.3
MIN_AGREEMENT_AP = 0.98
# An fp32 detection this confident must keep a partner: same class, IoU ≥ PARTNER_IOU, score ≥ PARTNER_SCORE.
CONFIDENT_SCORE = 0.5
PARTNER_IOU = 0.5
PARTNER_SCORE = 0.4
# Both sides are postprocessed down to this score: a true detection just above 0.3 whose partner scores just below
# it is still found (at a lower rank), as in any COCO evaluation that keeps low-scored detections; fp32's detections
# from here up to TRUTH_SCORE are the don't-care regions.
CANDIDATE_SCORE = 0.1
MIN_CHECK_IMAGES = 40
MIN_CHECK_DETECTIONS = 200


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two xyxy boxes (0 for boxes without area)."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass(frozen=True)
class Verdict:
    """An engine's figures on the check set, and whether it passes.

    ``lost``: "image: label score" of each confident fp32 detection without a partner. ``truths``: fp32 detections
    ≥ 0.3 in the set; ``images``: its size. ``short``: why the set is too small to judge on (empty when it is not).
    """

    agreement_ap: float
    lost: tuple[str, ...]
    truths: int
    images: int

    @property
    def short(self) -> str:
        if self.images >= MIN_CHECK_IMAGES and self.truths >= MIN_CHECK_DETECTIONS:
            return ""
        return (
            f"too few check photographs: {self.images} images with {self.truths} fp32 detections >= {TRUTH_SCORE}, "
            f"the bar needs {MIN_CHECK_IMAGES} and {MIN_CHECK_DETECTIONS}"
        )

    @property
    def passed(self) -> bool:
        return not self.short and self.agreement_ap >= MIN_AGREEMENT_AP and not self.lost

    def summary(self) -> str:
        """One line: the figures, the lost detections (up to 3) and, if any, why the set is too small."""
        text = f"agreement AP {self.agreement_ap:.4f}, {len(self.lost)} confident lost"
        if self.lost:
            text += f" ({', '.join(self.lost[:3])}{' …' if len(self.lost) > 3 else ''})"
        text += f"; {self.images} images, {self.truths} fp32 detections"
        return f"{text}; {self.short}" if self.short else text


def _coco_boxes(result: ImageDetections, image_id: int, min_score: float) -> list[dict[str, object]]:
    return [
        {
            "image_id": image_id,
            "category_id": det.class_id,
            "bbox": [det.box[0], det.box[1], det.box[2] - det.box[0], det.box[3] - det.box[1]],
            "score": det.score,
        }
        for det in result.detections
        if det.score >= min_score
    ]


def agreement_ap(reference: Sequence[ImageDetections], candidate: Sequence[ImageDetections]) -> float:
    """COCO AP@[.5:.95] of ``candidate`` with ``reference``'s detections ≥ 0.3 as the ground truth (1.0 when
    neither side has any; 0.0 when only the candidate has)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    truths = [box for i, ref in enumerate(reference, 1) for box in _coco_boxes(ref, i, TRUTH_SCORE)]
    dont_care = [
        box
        for i, ref in enumerate(reference, 1)
        for box in _coco_boxes(ref, i, CANDIDATE_SCORE)
        if float(box["score"]) < TRUTH_SCORE  # type: ignore[arg-type]
    ]
    guesses = [box for i, got in enumerate(candidate, 1) for box in _coco_boxes(got, i, CANDIDATE_SCORE)]
    if not truths:
        return 0.0 if any(float(box["score"]) >= TRUTH_SCORE for box in guesses) else 1.0  # type: ignore[arg-type]
    if not guesses:
        return 0.0
    document = {
        "images": [{"id": i, "width": ref.width, "height": ref.height} for i, ref in enumerate(reference, 1)],
        "annotations": [
            # iscrowd 1: COCOeval's ignored regions (a detection matched to one counts neither way).
            {**box, "id": n, "area": box["bbox"][2] * box["bbox"][3], "iscrowd": int(n > len(truths))}  # type: ignore[index]
            for n, box in enumerate(truths + dont_care, 1)
        ],
        "categories": [{"id": c} for c in sorted({int(box["category_id"]) for box in truths})],  # type: ignore[call-overload]
    }
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        truth = COCO()
        truth.dataset = document
        truth.createIndex()
        evaluator = COCOeval(truth, truth.loadRes(guesses), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return max(0.0, float(evaluator.stats[0]))


def lost_confident(
    reference: Sequence[ImageDetections], candidate: Sequence[ImageDetections], names: Sequence[str]
) -> list[str]:
    """The fp32 detections ≥ 0.5 with no same-class detection at IoU ≥ 0.5 scored ≥ 0.4 on the other side."""
    lost = []
    for name, ref, got in zip(names, reference, candidate, strict=True):
        for det in ref.detections:
            if det.score < CONFIDENT_SCORE:
                continue
            if not any(
                other.class_id == det.class_id
                and other.score >= PARTNER_SCORE
                and box_iou(det.box, other.box) >= PARTNER_IOU
                for other in got.detections
            ):
                lost.append(f"{name}: {det.label} {det.score:.3f}")
    return lost


def judge(
    reference: Sequence[ImageDetections], candidate: Sequence[ImageDetections], names: Sequence[str] | None = None
) -> Verdict:
    """The bar's figures for ``candidate`` against ``reference`` (fp32), image by image, both postprocessed down to
    :data:`CANDIDATE_SCORE` or lower. ``names`` label lost detections (default: image indices)."""
    names = names or [str(i) for i in range(len(reference))]
    truths = sum(1 for ref in reference for det in ref.detections if det.score >= TRUTH_SCORE)
    return Verdict(
        agreement_ap=agreement_ap(reference, candidate),
        lost=tuple(lost_confident(reference, candidate, names)),
        truths=truths,
        images=len(reference),
    )
