import pytest
import torch
from torch import nn

from detector.padding import Conv2dSame, convert_strided_convs_to_same, tf_same_padding


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "expected"),
    [
        (300, 3, 2, (0, 1)),  # even input: TF pads bottom/right only
        (150, 3, 2, (0, 1)),
        (75, 3, 2, (1, 1)),  # odd input: symmetric
        (19, 3, 2, (1, 1)),
        (2, 3, 2, (0, 1)),
        (1, 3, 2, (1, 1)),
        (300, 3, 1, (1, 1)),  # stride 1: same as PyTorch's padding=1
        (300, 1, 1, (0, 0)),
    ],
)
def test_tf_same_padding(size, kernel, stride, expected):
    assert tf_same_padding(size, kernel, stride) == expected


def test_conv2d_same_hand_computed():
    # x[i, j] = 4i + j on a 4×4 grid; a 3×3 box filter with stride 2.
    x = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
    conv = Conv2dSame(1, 1, 3, stride=2, bias=False)
    nn.init.ones_(conv.weight)
    out = conv(x)
    # TF pads (0, 1): output (0, 0) sums rows/cols 0..2 = 45; output (1, 1) sums x[2:4, 2:4] = 50.
    assert out.shape == (1, 1, 2, 2)
    assert out[0, 0, 0, 0].item() == 45.0
    assert out[0, 0, 1, 1].item() == 50.0
    # PyTorch's symmetric padding=1 would have given 0 + 1 + 4 + 5 = 10 at (0, 0).
    torch_pad = nn.functional.conv2d(x, conv.weight, stride=2, padding=1)
    assert torch_pad[0, 0, 0, 0].item() == 10.0


def test_convert_keeps_parameters_and_stride1_convs():
    block = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.Conv2d(8, 8, 3, padding=1))
    weight = block[0].weight
    convert_strided_convs_to_same(block)
    assert type(block[0]) is Conv2dSame and block[0].weight is weight
    assert type(block[1]) is nn.Conv2d
    assert set(block.state_dict()) == {"0.weight", "0.bias", "1.weight", "1.bias"}
