import math

import numpy as np
import torch

from detector.box_coding import TF_TO_XYWH_CODE_ORDER, decode_boxes, encode_boxes


def test_encode_hand_computed():
    anchor = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    box = torch.tensor([[0.25, 0.35, 0.75, 0.85]])  # centre (0.5, 0.6), half the anchor's size
    codes = encode_boxes(box, anchor)
    # tx = 10·(0.5 − 0.5)/1, ty = 10·(0.6 − 0.5)/1, tw = th = 5·log(0.5)
    assert torch.allclose(codes, torch.tensor([[0.0, 1.0, 5 * math.log(0.5), 5 * math.log(0.5)]]), atol=1e-6)


def _random_boxes(seed: int, count: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    anchors = torch.rand(count, 2, generator=generator)
    anchors = torch.cat([anchors, anchors + 0.05 + torch.rand(count, 2, generator=generator)], dim=1)
    boxes = torch.rand(count, 2, generator=generator)
    boxes = torch.cat([boxes, boxes + 0.01 + torch.rand(count, 2, generator=generator)], dim=1)
    return boxes, anchors


def test_round_trip():
    boxes, anchors = _random_boxes(0)
    decoded = decode_boxes(encode_boxes(boxes, anchors).numpy(), anchors.numpy())
    assert torch.allclose(torch.from_numpy(decoded), boxes, atol=1e-5)


def test_decode_equals_torchvision_s_box_coder():
    """The numpy decoder is torchvision's decode_single op by op, its clamp included."""
    from torchvision.models.detection._utils import BoxCoder

    _, anchors = _random_boxes(1)
    codes = torch.randn(500, 4, generator=torch.Generator().manual_seed(2)) * 3
    codes[:5, 2:] = 40.0  # far past the log(1000/16) clamp
    ours = decode_boxes(codes.numpy(), anchors.numpy())
    theirs = BoxCoder((10.0, 10.0, 5.0, 5.0)).decode_single(codes, anchors).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=2e-7, atol=2.5e-7)  # exp may differ in its last bit
    assert np.isfinite(ours).all()


def test_decode_batched_shapes():
    anchors = np.array([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]], dtype=np.float32)
    decoded = decode_boxes(np.zeros((3, 2, 4), np.float32), anchors)
    assert decoded.shape == (3, 2, 4)
    assert np.array_equal(decoded[2], anchors)  # zero codes give the anchors back


def test_tf_code_order_permutation():
    # TF emits [ty, tx, th, tw]; ours is [tx, ty, tw, th].
    tf_codes = ["ty", "tx", "th", "tw"]
    assert [tf_codes[i] for i in TF_TO_XYWH_CODE_ORDER] == ["tx", "ty", "tw", "th"]
