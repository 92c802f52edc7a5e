import pytest
import torch

from detector.postprocess import _nms, _nms_first


@pytest.mark.parametrize("clip_after", [True, False])
@pytest.mark.parametrize("max_detections", [1, 5, 50, 100])
def test_short_list_nms_equals_full_nms(clip_after, max_detections):
    generator = torch.Generator().manual_seed(max_detections)
    centres = torch.rand(1500, 2, generator=generator) * 1.2 - 0.1  # some boxes reach past the image
    sizes = torch.rand(1500, 2, generator=generator) * 0.3 + 0.01
    boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], dim=1)
    scores = torch.rand(1500, generator=generator)
    labels = torch.randint(1, 4, (1500,), generator=generator)
    full = tuple(t[:max_detections] for t in _nms(boxes, scores, labels, 0.6, clip_after))
    fast = _nms_first(boxes, scores, labels, 0.6, max_detections, clip_after)
    for a, b in zip(full, fast, strict=True):
        assert torch.equal(a, b)


def test_falls_back_when_the_short_list_is_all_duplicates():
    # 1000 copies of one box: the short list keeps one survivor, so every candidate must be looked at.
    boxes = torch.cat([torch.tensor([[0.1, 0.1, 0.4, 0.4]]).repeat(1000, 1), torch.tensor([[0.6, 0.6, 0.9, 0.9]])])
    scores = torch.cat([torch.linspace(0.9, 0.5, 1000), torch.tensor([0.1])])
    labels = torch.ones(1001, dtype=torch.long)
    boxes_kept, scores_kept, _ = _nms_first(boxes, scores, labels, 0.6, 10, True)
    assert scores_kept.tolist() == pytest.approx([0.9, 0.1])
    assert boxes_kept[1].tolist() == pytest.approx([0.6, 0.6, 0.9, 0.9])
