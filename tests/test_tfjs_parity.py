"""Parity with TF.js running the published COCO graph model (golden file from tests/golden/make_tfjs_golden.py).

Tolerances, the README's figures ("Faithful to TensorFlow.js"): raw scores (1917 × 90, after the sigmoid) and decoded
boxes within 1.2e-5 (measured: at most 1.06e-5 and 1.13e-5); the preprocessed input within 8.4e-5; anchors equal to
the graph's constant bit for bit; detections above 0.3 identical: same classes, scores within 1.2e-5 and boxes
within 1.2e-5 of the image's longer side, as the outputs they come from. The graph has no NMS, so the reference
detections are TF.js's scores and boxes through the TF OD API's post-processing (ours,
:func:`detector.postprocess.select_detections`, which tests/test_tf_postprocess.py holds to TensorFlow's own ops).
The measured maxima are printed (``pytest tests/test_tfjs_parity.py -s``) for the closing note.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from detector.box_coding import decode_boxes
from detector.images import load_image
from detector.postprocess import reported_classes, select_detections, sigmoid, to_image_detections
from detector.samples import people_mosaic, photo, synthetic_image, synthetic_images

YXYX = [1, 0, 3, 2]  # [ymin, xmin, ymax, xmax] ↔ xyxy
SCORE_TOLERANCE = 1.2e-5
BOX_TOLERANCE = 1.2e-5  # normalized coordinates
INPUT_TOLERANCE = 8.4e-5  # TF.js resizes in float64, TF1 and we in float32
GOLDEN_IMAGES = (
    *(f"synthetic_{size}" for size in ("300x300", "480x640", "317x211")),
    "astronaut.png",
    "camera.png",
    "coffee.png",
    "chelsea.png",
    "motorcycle_left.png",
    "rocket.jpg",
    "grace_hopper.jpg",
    "bus.jpg",
    "zidane.jpg",
    "people_mosaic",
)


def _pixels(name: str) -> np.ndarray:
    synthetic = synthetic_images()
    if name in synthetic:
        return synthetic[name]
    if name == "people_mosaic":
        return people_mosaic()
    return load_image(photo(name))


def _ours(detector, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Our eager-PyTorch outputs (of the reference preprocessing) as TF.js lays them out: scores (A, 90), boxes
    (A, 4) yxyx; and the raw outputs."""
    codes, logits = detector.model_outputs(detector.preprocess([pixels], exact=True))
    scores = sigmoid(logits[0, :, 1:])
    boxes = decode_boxes(codes[0], detector.anchors)[:, YXYX]
    return scores, boxes, codes, logits


def _reference_detections(detector, scores: np.ndarray, boxes: np.ndarray, height: int, width: int, threshold: float):
    """TF.js's scores and decoded boxes through the TF OD API post-processing the COCO model is specified with."""
    settings = detector.spec.postprocessing
    xyxy = boxes[:, YXYX]
    (raw,) = select_detections(
        scores[None],
        lambda image, anchor: xyxy[anchor],
        score_threshold=threshold,
        iou_threshold=settings.nms_iou_threshold,
        max_detections=settings.max_detections,
        clip_boxes=settings.clip_boxes,
        reported=reported_classes(detector.spec.labels),
    )
    return to_image_detections(raw, detector.spec.labels, height, width).detections


def test_the_golden_file_covers_every_sample(tfjs_golden):
    _, metadata = tfjs_golden
    assert sorted(metadata["images"]) == sorted(GOLDEN_IMAGES)
    assert metadata["tfjs-core"] == "4.22.0" and metadata["tfjs_backend"] == "cpu"


def test_anchors_bit_identical_to_the_graph_constant(tfjs_golden, coco_detector):
    tensors, _ = tfjs_golden
    assert np.array_equal(coco_detector.anchors, tensors["anchors"][:, YXYX])


def test_preprocessed_input_matches_the_graph(tfjs_golden, coco_detector):
    """Ours is TF1's legacy resize in float32, bit-identical to TensorFlow's (tests/test_parity.py); TF.js's CPU kernel
    computes the same sampling in float64 (JavaScript numbers), which lands up to 8.4e-5 away (0.011 grey levels)."""
    tensors, _ = tfjs_golden
    ours = coco_detector.preprocess([_pixels("synthetic_480x640")], exact=True)[0].transpose(1, 2, 0)
    difference = np.abs(ours - tensors["synthetic_480x640/input"]).max()
    print(f"\npreprocessed input: max |Δ| {difference:.2e}")
    assert difference <= INPUT_TOLERANCE


@pytest.mark.parametrize("name", GOLDEN_IMAGES)
def test_raw_outputs_and_detections_match_tfjs(tfjs_golden, coco_detector, name):
    tensors, metadata = tfjs_golden
    pixels = _pixels(name)
    assert hashlib.sha256(pixels.tobytes()).hexdigest() == metadata["images"][name], "decoded pixels differ"
    scores, boxes, codes, logits = _ours(coco_detector, pixels)
    score_diff = float(np.abs(scores - tensors[f"{name}/scores"]).max())
    box_diff = float(np.abs(boxes - tensors[f"{name}/boxes"]).max())
    assert score_diff <= SCORE_TOLERANCE and box_diff <= BOX_TOLERANCE

    height, width = pixels.shape[:2]
    ours = coco_detector.postprocess(codes, logits, [(height, width)], score_threshold=0.3)[0].detections
    reference = _reference_detections(
        coco_detector, tensors[f"{name}/scores"], tensors[f"{name}/boxes"], height, width, 0.3
    )
    assert [d.class_id for d in ours] == [d.class_id for d in reference]
    det_box = max((np.abs(np.subtract(a.box, b.box)).max() for a, b in zip(ours, reference, strict=True)), default=0)
    det_score = max((abs(a.score - b.score) for a, b in zip(ours, reference, strict=True)), default=0.0)
    assert det_box <= BOX_TOLERANCE * max(height, width) and det_score <= SCORE_TOLERANCE
    names = ", ".join(f"{d.label} {d.score:.2f}" for d in ours) or "-"
    print(
        f"\n{name}: scores {score_diff:.2e} boxes {box_diff:.2e} | {len(ours)} detections > 0.3 ({names}), "
        f"box {det_box:.4f} px, score {det_score:.1e}"
    )


def test_unused_coco_ids_are_never_reported(coco_detector):
    """The ten ids COCO 2017 does not use have outputs but no label: no detection ever carries one."""
    unused = [i for i, label in enumerate(coco_detector.spec.labels) if i and not label]
    assert unused == [12, 26, 29, 30, 45, 66, 68, 69, 71, 83]
    codes = np.zeros((1, coco_detector.anchors.shape[0], 4), np.float32)
    logits = np.full((1, coco_detector.anchors.shape[0], 91), -20.0, np.float32)
    logits[0, 100, 12] = logits[0, 200, 1] = 5.0  # an unused id and person, both confident
    (result,) = coco_detector.postprocess(codes, logits, [(300, 300)], score_threshold=0.5)
    assert [d.class_id for d in result.detections] == [1]


@pytest.mark.slow
def test_live_tfjs_agrees_on_a_new_image(coco_detector, tfjs_runner):
    """TF.js run now, on an image the golden file does not hold (the runner is installed by the fixture)."""
    pixels = synthetic_image(377, 505, 11)
    outputs = tfjs_runner.run_tfjs({"live": pixels})["live"]
    scores, boxes, _, _ = _ours(coco_detector, pixels)
    score_diff = float(np.abs(scores - outputs[tfjs_runner.SCORES][0]).max())
    box_diff = float(np.abs(boxes - outputs[tfjs_runner.BOXES][0, :, 0]).max())
    print(f"\nlive: scores {score_diff:.2e} boxes {box_diff:.2e}")
    assert score_diff <= SCORE_TOLERANCE and box_diff <= BOX_TOLERANCE
