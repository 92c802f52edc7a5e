import math

import torch

from detector.box_coding import TF_TO_XYWH_CODE_ORDER, decode_boxes, encode_boxes


def test_encode_hand_computed():
    anchor = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    box = torch.tensor([[0.25, 0.35, 0.75, 0.85]])  # centre (0.5, 0.6), half the anchor's size
    codes = encode_boxes(box, anchor)
    # tx = 10·(0.5 − 0.5)/1, ty = 10·(0.6 − 0.5)/1, tw = th = 5·log(0.5)
    assert torch.allclose(codes, torch.tensor([[0.0, 1.0, 5 * math.log(0.5), 5 * math.log(0.5)]]), atol=1e-6)


def test_round_trip():
    generator = torch.Generator().manual_seed(0)
    anchors = torch.rand(500, 2, generator=generator)
    anchors = torch.cat([anchors, anchors + 0.05 + torch.rand(500, 2, generator=generator)], dim=1)
    boxes = torch.rand(500, 2, generator=generator)
    boxes = torch.cat([boxes, boxes + 0.01 + torch.rand(500, 2, generator=generator)], dim=1)
    decoded = decode_boxes(encode_boxes(boxes, anchors), anchors)
    assert torch.allclose(decoded, boxes, atol=1e-5)


def test_decode_batched_shapes():
    anchors = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]])
    decoded = decode_boxes(torch.zeros(3, 2, 4), anchors)
    assert decoded.shape == (3, 2, 4)
    assert torch.equal(decoded[2], anchors)  # zero codes give the anchors back


def test_tf_code_order_permutation():
    # TF emits [ty, tx, th, tw]; ours is [tx, ty, tw, th].
    tf_codes = ["ty", "tx", "th", "tw"]
    assert [tf_codes[i] for i in TF_TO_XYWH_CODE_ORDER] == ["tx", "ty", "tw", "th"]
