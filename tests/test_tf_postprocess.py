"""The COCO model's post-processing against TensorFlow's own ops (golden file from
tests/golden/make_tf_postprocess_golden.py).

Both sides start from the same tensors, TF.js's outputs of the published graph (tests/golden/tfjs_coco_ssdlite
.safetensors: scores after the sigmoid and boxes decoded by TF.js itself): TensorFlow ran on them the TF OD API's
2018 ``multiclass_non_max_suppression`` (clip to the image, per-class NMS, top 100), we run
:func:`detector.postprocess.select_detections`, the part of ``Detector.postprocess`` that follows decoding, with the
model's own post-processing settings. Clipping and gathering do no arithmetic, so the detections must be the same
bit for bit: same classes in the same order, same scores, same boxes (tolerance 0). Our decoding and sigmoid are
held to TF.js's by tests/test_tfjs_parity.py.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from detector import postprocess
from detector.postprocess import RawDetections, reported_classes, select_detections

GOLDEN = Path(__file__).parent / "golden" / "tf_postprocess_coco.safetensors"
TFJS_GOLDEN = Path(__file__).parent / "golden" / "tfjs_coco_ssdlite.safetensors"
YXYX = [1, 0, 3, 2]  # [ymin, xmin, ymax, xmax] ↔ xyxy
THRESHOLDS = ("1e-08", "0.3")


@pytest.fixture(scope="module")
def tf_postprocess_golden() -> tuple[dict[str, np.ndarray], dict[str, str]]:
    from safetensors import safe_open
    from safetensors.numpy import load_file

    with safe_open(str(GOLDEN), "np") as handle:
        metadata = handle.metadata()
    return load_file(str(GOLDEN)), metadata


def _ours(tfjs: dict[str, np.ndarray], name: str, threshold: float, spec, reported) -> RawDetections:
    xyxy = tfjs[f"{name}/boxes"][:, YXYX]
    settings = spec.postprocessing
    (raw,) = select_detections(
        tfjs[f"{name}/scores"][None],
        lambda image, anchor: xyxy[anchor],
        score_threshold=threshold,
        iou_threshold=settings.nms_iou_threshold,
        max_detections=settings.max_detections,
        clip_boxes=settings.clip_boxes,
        reported=reported,
    )
    return raw


def _tensorflow(golden: dict[str, np.ndarray], key: str) -> RawDetections:
    return RawDetections(
        boxes=golden[f"{key}/boxes"][:, YXYX],
        scores=golden[f"{key}/scores"],
        labels=golden[f"{key}/classes"].astype(np.int64),
    )


def _assert_same(ours: RawDetections, theirs: RawDetections) -> None:
    assert ours.labels.tolist() == theirs.labels.tolist()
    np.testing.assert_array_equal(ours.scores, theirs.scores)
    np.testing.assert_array_equal(ours.boxes, theirs.boxes)


def test_the_golden_file_was_made_from_this_tfjs_golden_file(tf_postprocess_golden, tfjs_golden, coco_detector):
    _, metadata = tf_postprocess_golden
    assert metadata["tfjs_golden_sha256"] == hashlib.sha256(TFJS_GOLDEN.read_bytes()).hexdigest(), (
        "tests/golden/tfjs_coco_ssdlite.safetensors changed: rerun tests/golden/make_tf_postprocess_golden.py"
    )
    assert sorted(json.loads(metadata["images"])) == sorted(tfjs_golden[1]["images"])
    assert json.loads(metadata["score_thresholds"]) == list(THRESHOLDS)
    # The settings TF ran with are the model's.
    settings = coco_detector.spec.postprocessing
    assert float(metadata["iou_threshold"]) == settings.nms_iou_threshold
    assert int(metadata["max_total_detections"]) == int(metadata["max_detections_per_class"]) == settings.max_detections
    assert settings.clip_boxes == "before_nms"


def _image_names() -> list[str]:
    from safetensors import safe_open

    with safe_open(str(GOLDEN), "np") as handle:
        return json.loads(handle.metadata()["images"])


@pytest.mark.parametrize("nms", ["opencv", "numpy"])
@pytest.mark.parametrize("name", _image_names())
def test_every_candidate_as_tensorflow_selects_it(
    tf_postprocess_golden, tfjs_golden, coco_detector, name, nms, monkeypatch
):
    """The exported graph's threshold (1e-8): every box is a candidate, so the caps of 100 decide; TF knows nothing
    of COCO's unused ids, so ours runs over every class here too. Both of our NMS loops: OpenCV's and numpy's."""
    if nms == "numpy":
        monkeypatch.setattr(postprocess, "cv2", None)
    elif postprocess.cv2 is None:
        pytest.skip("OpenCV is not installed (the `fast` extra)")
    golden, _ = tf_postprocess_golden
    ours = _ours(tfjs_golden[0], name, 1e-8, coco_detector.spec, reported=None)
    theirs = _tensorflow(golden, f"{name}@1e-08")
    assert len(theirs.scores) == coco_detector.spec.postprocessing.max_detections
    _assert_same(ours, theirs)


@pytest.mark.parametrize("name", _image_names())
def test_detections_above_0_3_as_tensorflow_selects_them(tf_postprocess_golden, tfjs_golden, coco_detector, name):
    """As the detector runs it: only the classes the model reports (TF's would never include an unused id here)."""
    golden, _ = tf_postprocess_golden
    ours = _ours(tfjs_golden[0], name, 0.3, coco_detector.spec, reported_classes(coco_detector.spec.labels))
    theirs = _tensorflow(golden, f"{name}@0.3")
    assert reported_classes(coco_detector.spec.labels)[theirs.labels].all()
    _assert_same(ours, theirs)
