"""Deterministic synthetic images (numpy only): shapes, gradients and noise with a fixed seed."""

from __future__ import annotations

import numpy as np

# (name, height, width, seed): one at the network's size (resize is the identity), a landscape one, and an odd one.
SYNTHETIC = (("synthetic_300x300", 300, 300, 1), ("synthetic_480x640", 480, 640, 2), ("synthetic_317x211", 317, 211, 3))


def synthetic_image(height: int, width: int, seed: int) -> np.ndarray:
    """An (H, W, 3) uint8 image: a colour gradient, random rectangles and ellipses, and mild noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([xx / max(width - 1, 1), yy / max(height - 1, 1), 0.5 + 0 * xx], axis=2) * 255.0
    for _ in range(12):
        color = rng.uniform(0, 255, size=3)
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(0.05, 0.3) * height, rng.uniform(0.05, 0.3) * width
        if rng.random() < 0.5:
            mask = (np.abs(yy - cy) < ry) & (np.abs(xx - cx) < rx)
        else:
            mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1.0
        image[mask] = color
    image += rng.normal(0, 6.0, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)
