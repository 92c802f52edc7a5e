"""SSD default boxes exactly as the TF Object Detection API's ``create_ssd_anchors`` makes them.

torchvision's ``DefaultBoxGenerator`` cannot express this grid: it puts 6 boxes on every layer (TF reduces the
lowest to 3, with a 0.1-scale box), orders them [1, 1', 2, 1/2, ...] (TF appends the interpolated box last), clips
box sizes (TF does not) and works in pixels. Sources: tensorflow/models research/object_detection
``anchor_generators/multiple_grid_anchor_generator.py`` and ``grid_anchor_generator.py`` (``tile_anchors``).

numpy only: the service computes anchors without torch; the model registers them as a buffer.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from detector import defaults

BoxSpec = tuple[float, float]  # (scale, aspect ratio = width / height)


def ssd_box_specs(
    num_layers: int = 6,
    min_scale: float = defaults.ANCHOR_MIN_SCALE,
    max_scale: float = defaults.ANCHOR_MAX_SCALE,
    aspect_ratios: Sequence[float] = defaults.ANCHOR_ASPECT_RATIOS,
    interpolated_scale_aspect_ratio: float = defaults.ANCHOR_INTERPOLATED_ASPECT_RATIO,
    reduce_boxes_in_lowest_layer: bool = True,
) -> list[list[BoxSpec]]:
    """(scale, aspect ratio) pairs per feature layer, in TF's order.

    Scales are linear from ``min_scale`` to ``max_scale`` (SSD paper eq. 4) with 1.0 appended for the interpolated
    box of the last layer. The lowest layer holds (0.1, 1), (s0, 2), (s0, 1/2); every other layer holds each aspect
    ratio at s_k, then the interpolated box sqrt(s_k · s_k+1) at ``interpolated_scale_aspect_ratio``.
    """
    scales = [min_scale + (max_scale - min_scale) * i / (num_layers - 1) for i in range(num_layers)] + [1.0]
    specs = []
    for layer, (scale, scale_next) in enumerate(itertools.pairwise(scales)):
        if layer == 0 and reduce_boxes_in_lowest_layer:
            specs.append([(0.1, 1.0), (scale, 2.0), (scale, 0.5)])
            continue
        layer_specs = [(scale, ratio) for ratio in aspect_ratios]
        if interpolated_scale_aspect_ratio > 0:
            layer_specs.append((float(np.sqrt(scale * scale_next)), interpolated_scale_aspect_ratio))
        specs.append(layer_specs)
    return specs


def num_anchors_per_location(specs: Sequence[Sequence[BoxSpec]]) -> list[int]:
    """How many boxes each layer places at one grid cell (3, 6, 6, 6, 6, 6 for the default specs)."""
    return [len(layer_specs) for layer_specs in specs]


def feature_map_sizes(image_size: int, num_layers: int = 6) -> list[tuple[int, int]]:
    """(height, width) of each SSDLite feature map for a square ``image_size`` input.

    Every stride-2 convolution pads TF's 'SAME' way, so each halves with ``ceil``: the first map is the stride-16
    expansion, the second the stride-32 ``Conv_1``, and each extra layer halves again (300 → 19, 10, 5, 3, 2, 1).
    """
    size = image_size
    for _ in range(4):  # the stem and the three stride-2 blocks before the stride-16 map
        size = -(-size // 2)
    sizes = []
    for _ in range(num_layers):
        sizes.append((size, size))
        size = -(-size // 2)
    return sizes


def ssd_anchors(feature_map_sizes: Sequence[tuple[int, int]], specs: Sequence[Sequence[BoxSpec]]) -> np.ndarray:
    """All anchors of an image, (A, 4) float32 xyxy normalized to [0, 1] (not clipped: they may reach past it).

    Order: box spec fastest, then x, then y, then layer, finest layer first, the order of the predictor outputs.
    Arithmetic follows ``tile_anchors`` in float32 op by op (stride = 1 / grid, offset = stride / 2,
    h = scale / sqrt(ratio), w = scale · sqrt(ratio), corners = centre ∓ 0.5 · size), so the anchors equal the
    exported graph's to the last bit. TF stores [ymin, xmin, ymax, xmax]; we keep torchvision's xyxy.
    """
    if len(feature_map_sizes) != len(specs):
        raise ValueError(f"{len(feature_map_sizes)} feature maps but box specs for {len(specs)} layers")
    one, half = np.float32(1.0), np.float32(0.5)
    layers = []
    for (grid_h, grid_w), layer_specs in zip(feature_map_sizes, specs, strict=True):
        scales = np.array([s for s, _ in layer_specs], dtype=np.float32)
        ratio_sqrts = np.sqrt(np.array([r for _, r in layer_specs], dtype=np.float32))
        heights = scales / ratio_sqrts
        widths = scales * ratio_sqrts
        stride_y, stride_x = one / np.float32(grid_h), one / np.float32(grid_w)
        y_centers = np.arange(grid_h, dtype=np.float32) * stride_y + half * stride_y
        x_centers = np.arange(grid_w, dtype=np.float32) * stride_x + half * stride_x
        # (grid_h, grid_w, num_specs) grids, flattened with the spec index fastest.
        yc, xc, h = np.broadcast_arrays(y_centers[:, None, None], x_centers[None, :, None], heights)
        w = np.broadcast_arrays(yc, widths)[1]
        yc, xc, h, w = (t.reshape(-1) for t in (yc, xc, h, w))
        layers.append(np.stack([xc - half * w, yc - half * h, xc + half * w, yc + half * h], axis=1))
    return np.concatenate(layers).astype(np.float32, copy=False)


def anchors_for(image_size: int) -> np.ndarray:
    """The (A, 4) anchors of the SSDLite-MobileNetV2 recipe at ``image_size`` (1917 at 300), without the network."""
    specs = ssd_box_specs()
    return ssd_anchors(feature_map_sizes(image_size, len(specs)), specs)
