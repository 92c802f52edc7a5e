import math

import pytest
import torch

from detector.anchors import feature_map_sizes, num_anchors_per_location, ssd_anchors, ssd_box_specs
from detector.model import measured_feature_map_sizes, ssdlite_mobilenet_v2


@pytest.fixture(scope="module")
def anchors_300():
    specs = ssd_box_specs()
    return torch.from_numpy(ssd_anchors([(19, 19), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)], specs))


def test_box_specs_follow_tf_order():
    specs = ssd_box_specs()
    assert num_anchors_per_location(specs) == [3, 6, 6, 6, 6, 6]
    # Lowest layer: the 0.1 box, then s0 at 2 and 1/2.
    assert specs[0] == [(0.1, 1.0), (pytest.approx(0.2), 2.0), (pytest.approx(0.2), 0.5)]
    # Other layers: the five ratios at s_k, then the interpolated sqrt(s_k s_k+1) box last.
    assert [r for _, r in specs[1]] == pytest.approx([1.0, 2.0, 0.5, 3.0, 0.3333, 1.0], abs=1e-4)
    assert specs[1][-1][0] == pytest.approx(math.sqrt(0.35 * 0.5), abs=1e-6)
    assert specs[5][-1][0] == pytest.approx(math.sqrt(0.95 * 1.0), abs=1e-6)


def test_anchor_counts():
    assert ssdlite_mobilenet_v2(num_classes=2, image_size=300).anchors.shape == (1917, 4)
    model = ssdlite_mobilenet_v2(num_classes=2, image_size=320)
    assert measured_feature_map_sizes(model.backbone, 320) == [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
    assert model.anchors.shape == (20 * 20 * 3 + (100 + 25 + 9 + 4 + 1) * 6, 4)


def test_first_and_last_anchors_hand_computed(anchors_300):
    c = 0.5 / 19  # centre of the first cell
    # (0.1, 1): a 0.1 square.
    assert anchors_300[0].tolist() == pytest.approx([c - 0.05, c - 0.05, c + 0.05, c + 0.05], abs=1e-6)
    # (0.2, 2): width 0.2·√2, height 0.2/√2 (aspect ratio is width / height); xyxy.
    hw, hh = 0.1 * math.sqrt(2), 0.1 / math.sqrt(2)
    assert anchors_300[1].tolist() == pytest.approx([c - hw, c - hh, c + hw, c + hh], abs=1e-6)
    assert anchors_300[2].tolist() == pytest.approx([c - hh, c - hw, c + hh, c + hw], abs=1e-6)
    # Anchor 3 is the next cell along x (x varies before y).
    assert anchors_300[3].tolist() == pytest.approx([1.5 / 19 - 0.05, c - 0.05, 1.5 / 19 + 0.05, c + 0.05], abs=1e-6)
    # The very last: the 1×1 map's interpolated box sqrt(0.95 · 1.0), centred.
    half = math.sqrt(0.95) / 2
    assert anchors_300[-1].tolist() == pytest.approx([0.5 - half, 0.5 - half, 0.5 + half, 0.5 + half], abs=1e-6)


def test_anchors_are_not_clipped(anchors_300):
    assert anchors_300.min() < -0.4 and anchors_300.max() > 1.4


def test_spec_index_varies_fastest(anchors_300):
    # Layer 1 (10×10, 6 specs) starts after 19·19·3 anchors; its first 6 share one centre.
    layer1 = anchors_300[19 * 19 * 3 : 19 * 19 * 3 + 12]
    centres = (layer1[:, :2] + layer1[:, 2:]) / 2
    assert torch.allclose(centres[:6], centres[0].expand(6, 2))
    assert centres[6, 0] > centres[0, 0] and torch.isclose(centres[6, 1], centres[0, 1])


@pytest.mark.parametrize("size", [96, 128, 255, 256, 300, 320, 513])
def test_computed_feature_map_sizes_equal_the_network_s(size):
    """The anchors are computed without running the network: TF 'SAME' halving gives the same grid sizes."""
    backbone = ssdlite_mobilenet_v2(num_classes=2, image_size=size, width_mult=0.35).backbone
    assert feature_map_sizes(size) == measured_feature_map_sizes(backbone, size)
