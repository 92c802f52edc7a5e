"""``precision="exact"`` keeps TF's answers: whatever fp32 engine ``auto`` picks under it passes the TF parity tests.

The parity tests (tests/test_parity.py) run on eager PyTorch; here the same golden file judges the engine that
``Detector.from_weights(backend="auto", precision="exact")`` runs on this machine (from the cached choice that
``make install`` measured, else measured now in a child process).
"""

import numpy as np
import pytest

from tests.test_parity import IMAGES, TF_TO_OURS, _pixels


@pytest.fixture(scope="module")
def exact_detector():
    from detector.inference import Detector

    detector = Detector.from_weights("person", backend="auto", precision="exact")
    assert detector.choice.precision == "fp32", detector.backend_reason
    return detector


@pytest.mark.parametrize("name", IMAGES)
def test_the_exact_engine_matches_tensorflow(golden, exact_detector, name):
    tensors, _ = golden
    pixels = _pixels(name)
    codes, logits = exact_detector.predict_raw(exact_detector.preprocess([pixels], exact=True))
    assert np.abs(codes[0] - tensors[f"{name}/box_encodings"][:, TF_TO_OURS]).max() < 1e-3
    assert np.abs(logits[0] - tensors[f"{name}/class_logits"]).max() < 1e-3
    height, width = pixels.shape[:2]
    ours = exact_detector.detect_arrays([pixels], score_threshold=0.3)[0].detections
    count = int(tensors[f"{name}/num_detections"][0])
    tf_scores = tensors[f"{name}/detection_scores"][:count]
    keep = tf_scores > 0.3
    tf_boxes = tensors[f"{name}/detection_boxes"][:count][keep][:, TF_TO_OURS] * [width, height, width, height]
    assert len(ours) == int(keep.sum())
    for detection, box, score in zip(ours, tf_boxes, tf_scores[keep], strict=True):
        assert np.abs(np.array(detection.box) - box).max() <= 0.5 and abs(detection.score - score) <= 1e-3
