"""Model size: trainable parameters and multiply-adds, counted the way the MobileNetV2 paper counts them."""

from __future__ import annotations

import torch
from torch import nn


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (conv weights and biases, batch-norm scales and shifts)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_multiply_adds(model: nn.Module, image_size: int) -> int:
    """Multiply-adds of one forward pass at ``image_size``×``image_size``: convolutions and linear layers.

    Each output element of a convolution costs (in_channels / groups) · kh · kw multiply-adds. Batch norm, ReLU6
    and the residual additions are not counted (the paper's convention; batch norm folds into the convolutions).
    """
    total = 0

    def conv_hook(module: nn.Conv2d, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        total += output.numel() // output.shape[0] * (module.in_channels // module.groups) * kh * kw

    def linear_hook(module: nn.Linear, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        total += output.numel() // output.shape[0] * module.in_features

    handles = [
        m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else linear_hook)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return total
