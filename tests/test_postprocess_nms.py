import numpy as np
import pytest
import torch
from torchvision.ops import batched_nms

from detector import postprocess
from detector.postprocess import _clip_and_prune, _nms_first, nms


def _random(seed: int, count: int = 1500, classes: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.random((count, 2), dtype=np.float32) * 1.2 - 0.1  # some boxes reach past the image
    sizes = rng.random((count, 2), dtype=np.float32) * 0.3 + 0.01
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1).astype(np.float32)
    return boxes, rng.random(count, dtype=np.float32), rng.integers(1, classes + 1, count)


def _full(boxes, scores, labels, max_detections, clip_after):
    keep = nms(boxes, scores, labels, 0.6)
    kept = (boxes[keep], scores[keep], labels[keep])
    kept = _clip_and_prune(*kept) if clip_after else kept
    return tuple(t[:max_detections] for t in kept)


@pytest.mark.parametrize("clip_after", [True, False])
@pytest.mark.parametrize("max_detections", [1, 5, 50, 100])
def test_short_list_nms_equals_full_nms(clip_after, max_detections):
    boxes, scores, labels = _random(max_detections)
    full = _full(boxes, scores, labels, max_detections, clip_after)
    fast = _nms_first(boxes, scores, labels, 0.6, max_detections, clip_after)
    for a, b in zip(full, fast, strict=True):
        assert np.array_equal(a, b)


def test_falls_back_when_the_short_list_is_all_duplicates():
    # 1000 copies of one box: the short list keeps one survivor, so every candidate must be looked at.
    boxes = np.concatenate([np.tile([[0.1, 0.1, 0.4, 0.4]], (1000, 1)), [[0.6, 0.6, 0.9, 0.9]]]).astype(np.float32)
    scores = np.concatenate([np.linspace(0.9, 0.5, 1000), [0.1]]).astype(np.float32)
    labels = np.ones(1001, dtype=np.int64)
    boxes_kept, scores_kept, _ = _nms_first(boxes, scores, labels, 0.6, 10, True)
    assert scores_kept.tolist() == pytest.approx([0.9, 0.1])
    assert boxes_kept[1].tolist() == pytest.approx([0.6, 0.6, 0.9, 0.9])


@pytest.mark.parametrize("engine", ["opencv", "numpy"])
@pytest.mark.parametrize(("count", "classes"), [(300, 1), (900, 5), (3000, 20)])
def test_nms_keeps_what_torchvision_batched_nms_keeps(count, classes, engine, monkeypatch):
    """The reference: torchvision's per-class NMS; OpenCV's C++ loop where installed, the numpy loop otherwise."""
    if engine == "opencv":
        pytest.importorskip("cv2")
    else:
        monkeypatch.setattr(postprocess, "cv2", None)
    boxes, scores, labels = _random(count + classes, count, classes)
    ours = nms(boxes, scores, labels, 0.6)
    theirs = batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels), 0.6).numpy()
    assert ours.tolist() == theirs.tolist()
    assert nms(boxes, scores, labels, 0.6, limit=7).tolist() == theirs[:7].tolist()
