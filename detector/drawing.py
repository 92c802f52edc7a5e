"""Draw detections on an image: a coloured box per object and a label with its score."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from detector.results import ImageDetections

# Distinct, readable colours (Okabe–Ito palette), picked by class id.
PALETTE = ((230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0), (204, 121, 167))


def draw_detections(image: Image.Image | np.ndarray, result: ImageDetections) -> Image.Image:
    """A copy of ``image`` (RGB, upright as detected) with ``result``'s boxes and labels drawn on it."""
    canvas = Image.fromarray(image) if isinstance(image, np.ndarray) else image.convert("RGB")
    canvas = canvas.copy()
    draw = ImageDraw.Draw(canvas)
    line = max(2, round(min(canvas.size) / 250))
    font = ImageFont.load_default(size=max(12, round(min(canvas.size) / 40)))
    for det in result.detections:
        color = PALETTE[det.class_id % len(PALETTE)]
        x1, y1, x2, y2 = det.box
        draw.rectangle((x1, y1, x2, y2), outline=color, width=line)
        text = f"{det.label} {det.score:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top + 4
        ty = y1 - th if y1 - th >= 0 else y1  # above the box unless that leaves the image
        draw.rectangle((x1, ty, x1 + tw + 6, ty + th), fill=color)
        draw.text((x1 + 3, ty + 2 - top), text, fill=(0, 0, 0), font=font)
    return canvas
