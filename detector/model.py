"""SSDLite on MobileNetV2 (MobileNetV2 paper §6.2), with the TF Object Detection API's conventions.

The parts are torchvision's: MobileNetV2's ``features`` (inverted residuals, linear bottlenecks, ReLU6), the SSDLite
extra blocks and the SSDLite head (depthwise-separable predictors). What differs from torchvision, and why:

- Strided convolutions use TF 'SAME' padding (:mod:`detector.padding`), or imported weights see shifted inputs.
- Batch norm epsilon is 1e-3 (slim's default), not PyTorch's 1e-5.
- The first feature map is the 576-channel expansion of ``expanded_conv_13`` (``features[14].conv[0]``), the block
  at stride 16; torchvision's ``SSDLiteFeatureExtractorMobileNet`` indexes ``.block``, which only MobileNetV3 has.
- Anchors come from :mod:`detector.anchors` (TF's grid), and the forward pass stops at raw outputs: decoding and NMS
  live in :mod:`detector.postprocess`, shared by every backend.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import partial
from typing import cast

import torch
from torch import nn
from torchvision.models import mobilenet_v2
from torchvision.models.detection.ssdlite import SSDLiteHead, _extra_block

from detector import defaults
from detector.anchors import feature_map_sizes, num_anchors_per_location, ssd_anchors, ssd_box_specs
from detector.padding import convert_strided_convs_to_same

# Index in torchvision's ``mobilenet_v2().features`` of the stride-16 → 32 block whose expansion is the first map
# (TF ``expanded_conv_13``, endpoint ``layer_15/expansion_output``).
C4_BLOCK = 14


class MobileNetV2Features(nn.Module):
    """MobileNetV2 up to ``Conv_1`` plus the four SSDLite extra layers: six feature maps.

    Keeps torchvision's ``features`` module intact, so ImageNet checkpoints of ``torchvision.models.mobilenet_v2``
    load into ``features`` unchanged.
    """

    def __init__(
        self,
        width_mult: float = 1.0,
        extra_depths: tuple[int, ...] = defaults.EXTRA_LAYER_DEPTHS,
        min_depth: int = 16,
        norm_layer: Callable[..., nn.Module] | None = None,
    ) -> None:
        super().__init__()
        norm_layer = norm_layer or partial(
            nn.BatchNorm2d, eps=defaults.BATCH_NORM_EPSILON, momentum=defaults.BATCH_NORM_MOMENTUM
        )
        self.features = mobilenet_v2(width_mult=width_mult, norm_layer=norm_layer).features
        c4_block = self.features[C4_BLOCK]
        if c4_block.use_res_connect:
            raise ValueError("the stride-16 block must not have a residual connection")
        last_channels = self.features[-1].out_channels
        depths = [max(min_depth, int(d * width_mult)) for d in extra_depths]
        self.extras = nn.ModuleList(
            _extra_block(cin, cout, norm_layer) for cin, cout in zip([last_channels, *depths[:-1]], depths, strict=True)
        )
        self.out_channels = [c4_block.conv[0].out_channels, last_channels, *depths]
        convert_strided_convs_to_same(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.features[:C4_BLOCK](x)
        c4_block = self.features[C4_BLOCK].conv
        expansion = c4_block[0](x)
        x = self.features[C4_BLOCK + 1 :](c4_block[1:](expansion))
        maps = [expansion, x]
        for extra in self.extras:
            x = extra(x)
            maps.append(x)
        return maps


class SSDLite(nn.Module):
    """The detection network: a preprocessed batch in, raw outputs for every anchor out.

    ``forward(images)`` takes (N, 3, H, W) float images already resized to ``image_size`` and scaled to [-1, 1] and
    returns ``(box_codes, class_logits)``: (N, A, 4) codes (tx, ty, tw, th) relative to ``anchors`` and (N, A, K)
    logits, K = ``num_classes`` including background at index 0. ``anchors`` is (A, 4) xyxy normalized.
    """

    def __init__(
        self,
        backbone: MobileNetV2Features,
        head: nn.Module,
        anchors: torch.Tensor,
        image_size: int,
        num_classes: int,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.image_size = image_size
        self.num_classes = num_classes
        self.anchors: torch.Tensor
        self.register_buffer("anchors", anchors, persistent=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = self.head(self.backbone(images))
        return outputs["bbox_regression"], outputs["cls_logits"]


def measured_feature_map_sizes(backbone: nn.Module, image_size: int) -> list[tuple[int, int]]:
    """(height, width) of each feature map for a square ``image_size`` input, measured with a dry run (what
    :func:`detector.anchors.feature_map_sizes` computes, checked in the tests)."""
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        maps = backbone(torch.zeros(1, 3, image_size, image_size))
    backbone.train(was_training)
    return [(m.shape[-2], m.shape[-1]) for m in maps]


def ssdlite_mobilenet_v2(
    *,
    num_classes: int = 91,
    image_size: int = defaults.IMAGE_SIZE,
    width_mult: float = 1.0,
) -> SSDLite:
    """Build SSDLite-MobileNetV2 with the published recipe's structure, randomly initialised.

    Args:
        num_classes: outputs per anchor, background included (91 for COCO, 2 for the person model).
        image_size: side of the square network input (300 for the TF export, 320 in the paper).
        width_mult: MobileNetV2 width multiplier, also applied to the extra layers.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes counts the background and must be at least 2, got {num_classes}")
    backbone = MobileNetV2Features(width_mult=width_mult)
    specs = ssd_box_specs(num_layers=len(backbone.out_channels))
    norm_layer = partial(nn.BatchNorm2d, eps=defaults.BATCH_NORM_EPSILON, momentum=defaults.BATCH_NORM_MOMENTUM)
    head = SSDLiteHead(backbone.out_channels, num_anchors_per_location(specs), num_classes, norm_layer)
    anchors = torch.from_numpy(ssd_anchors(feature_map_sizes(image_size, len(backbone.out_channels)), specs))
    return SSDLite(backbone, head, anchors, image_size=image_size, num_classes=num_classes)


def fold_batch_norms(module: nn.Module) -> nn.Module:
    """Fold every (Conv2d, BatchNorm2d) pair of ``Sequential`` containers into the conv, in place (eval only).

    Inference then does one multiply-add per weight instead of a conv followed by a per-channel affine pass.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for child in module.children():
        fold_batch_norms(child)
    if isinstance(module, nn.Sequential):
        for i in range(len(module) - 1):
            conv, bn = module[i], module[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                module[i] = fuse_conv_bn_eval(conv, bn)
                module[i + 1] = nn.Identity()
    return module


def inference_network(model: SSDLite, device: str | torch.device = "cpu") -> SSDLite:
    """A copy of ``model`` in inference form: eval mode, batch norm folded, on ``device``."""
    network = fold_batch_norms(copy.deepcopy(model).eval()).to(torch.device(device))
    return cast("SSDLite", network)
