import numpy as np
import torch
import torch.nn.functional as F

from detector.preprocess import preprocess, resize_bilinear_legacy


def test_legacy_resize_hand_computed():
    # 2×2 → 4×4: TF1 samples source x = 0, 0.5, 1, 1.5 (clamped), no half-pixel offset.
    image = torch.tensor([[0.0, 10.0], [20.0, 30.0]])[:, :, None]
    out = resize_bilinear_legacy(image, (4, 4))[:, :, 0]
    expected = torch.tensor(
        [[0.0, 5.0, 10.0, 10.0], [10.0, 15.0, 20.0, 20.0], [20.0, 25.0, 30.0, 30.0], [20.0, 25.0, 30.0, 30.0]]
    )
    assert torch.equal(out, expected)
    # PyTorch's half-pixel bilinear gives different pixels: that is why we do not use it.
    half_pixel = F.interpolate(image.permute(2, 0, 1)[None], size=(4, 4), mode="bilinear", align_corners=False)
    assert not torch.equal(half_pixel[0, 0], expected)


def test_legacy_resize_downscale_and_identity():
    image = torch.arange(6 * 4, dtype=torch.float32).reshape(6, 4, 1)
    out = resize_bilinear_legacy(image, (3, 2))[:, :, 0]
    # Source rows 0, 2, 4 and columns 0, 2: exact samples when the scale is an integer.
    assert torch.equal(out, image[::2, ::2, 0])
    assert resize_bilinear_legacy(image, (6, 4)) is image


def test_preprocess_scales_to_minus_one_one():
    black = np.zeros((10, 20, 3), np.uint8)
    white = np.full((300, 300, 3), 255, np.uint8)
    batch = preprocess([black, white], image_size=300)
    assert batch.shape == (2, 3, 300, 300)
    assert (batch[0] == -1.0).all()
    assert np.allclose(batch[1], np.ones((3, 300, 300)))
