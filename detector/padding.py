"""TensorFlow 'SAME' padding for strided convolutions.

PyTorch pads symmetrically; TF's 'SAME' puts the odd pixel at the bottom/right. For a 3×3 stride-2 convolution on an
even input TF pads (0, 1), so PyTorch's ``padding=1`` would shift every output by one input pixel and imported
weights would no longer give TensorFlow's answers (tf.nn.conv2d docs, "SAME" padding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def tf_same_padding(size: int, kernel_size: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """Padding (before, after) that TF's 'SAME' applies along one spatial axis of length ``size``.

    ``out = ceil(size / stride)``; the total padding makes the last window fit and ``before = total // 2``.
    """
    effective_kernel = (kernel_size - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + effective_kernel - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow 'SAME' padding computed from the input's shape.

    A drop-in replacement that keeps ``nn.Conv2d``'s parameters and state-dict keys, so torchvision's MobileNetV2
    blocks can be converted in place.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = tf_same_padding(x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0])
        left, right = tf_same_padding(x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1])
        if top == bottom and left == right:
            return F.conv2d(x, self.weight, self.bias, self.stride, (top, left), self.dilation, self.groups)
        x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def convert_strided_convs_to_same(module: nn.Module) -> nn.Module:
    """Replace, in place, every strided ``nn.Conv2d`` under ``module`` by a :class:`Conv2dSame` sharing its weights.

    Stride-1 convolutions keep PyTorch's symmetric padding, which equals 'SAME' for odd kernels.
    """
    for name, child in module.named_children():
        if type(child) is nn.Conv2d and max(child.stride) > 1:
            same = Conv2dSame(
                child.in_channels,
                child.out_channels,
                (child.kernel_size[0], child.kernel_size[1]),
                stride=(child.stride[0], child.stride[1]),
                padding=0,
                dilation=(child.dilation[0], child.dilation[1]),
                groups=child.groups,
                bias=child.bias is not None,
            )
            same.weight = child.weight
            same.bias = child.bias
            setattr(module, name, same)
        else:
            convert_strided_convs_to_same(child)
    return module
