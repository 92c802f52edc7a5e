"""A deterministic synthetic detection data set in COCO format: coloured shapes on cluttered backgrounds.

COCO itself cannot be downloaded everywhere, so tests, examples and benchmarks train and evaluate on scenes this
module draws: several classes that differ by shape (circle, square, triangle, ...), at random sizes, colours and
positions, partly overlapping, on backgrounds of four kinds (flat + noise, gradient, stripes, blobs). Every image
depends only on ``(seed, split, index)``, so the same arguments give byte-identical files on any machine.

Layout written by :func:`make_dataset` (the ``train2017`` / ``annotations/instances_*.json`` layout of COCO)::

    OUT/train/000000.png ...
    OUT/val/000000.png ...
    OUT/annotations/instances_train.json
    OUT/annotations/instances_val.json
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from detector import defaults

SHAPES = ("circle", "square", "triangle", "cross", "ring")
DEFAULT_CLASSES = defaults.SYNTHETIC_CLASSES
SPLITS = ("train", "val")


@dataclass(frozen=True)
class SceneSettings:
    """How scenes are drawn.

    Attributes:
        min_size, max_size: image sides (pixels) are drawn uniformly from this range, independently.
        max_objects: objects per image are drawn uniformly from 1..max_objects.
        object_scale: an object's side is this range's fraction of the image's shorter side.
        max_overlap: an object may overlap earlier ones up to this IoU (later objects occlude earlier ones).
        gray_fraction: this fraction of images is saved as 8-bit grayscale (to exercise the RGB conversion).
    """

    min_size: int = defaults.SYNTHETIC_MIN_SIZE
    max_size: int = defaults.SYNTHETIC_MAX_SIZE
    max_objects: int = defaults.SYNTHETIC_MAX_OBJECTS
    object_scale: tuple[float, float] = (0.2, 0.6)
    max_overlap: float = 0.3
    gray_fraction: float = 0.0


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two xyxy boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _colour(rng: np.random.Generator, avoid: np.ndarray | None = None) -> tuple[int, int, int]:
    """A random RGB colour at least a clear distance from ``avoid`` (so objects stand out from the background)."""
    for _ in range(20):
        colour = rng.integers(0, 256, size=3)
        if avoid is None or np.abs(colour.astype(int) - avoid.astype(int)).sum() > 150:
            break
    return int(colour[0]), int(colour[1]), int(colour[2])


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8: flat colour, a two-colour gradient, stripes or soft blobs, plus mild noise."""
    kind = int(rng.integers(0, 4))
    base = rng.integers(0, 256, size=3).astype(np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image: np.ndarray
    if kind == 0:
        image = np.broadcast_to(base, (height, width, 3)).copy()
    elif kind == 1:
        other = rng.integers(0, 256, size=3).astype(np.float32)
        angle = rng.uniform(0, 2 * math.pi)
        t = (xx * math.cos(angle) + yy * math.sin(angle)) / max(height, width)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        image = base * (1 - t[..., None]) + other * t[..., None]
    elif kind == 2:
        other = rng.integers(0, 256, size=3).astype(np.float32)
        period = rng.uniform(6, 24)
        stripes = ((xx if rng.random() < 0.5 else yy) // period) % 2
        image = np.where(stripes[..., None] > 0, base, 0.6 * base + 0.4 * other)
    else:
        image = np.broadcast_to(base, (height, width, 3)).copy()
        for _ in range(int(rng.integers(2, 6))):
            cy, cx = rng.uniform(0, height), rng.uniform(0, width)
            radius = rng.uniform(0.1, 0.4) * min(height, width)
            weight = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))[..., None]
            image = image * (1 - 0.5 * weight) + rng.integers(0, 256, size=3) * 0.5 * weight
    image = image + rng.normal(0, 8.0, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], colour, rng) -> float:
    """Draw ``shape`` filling the xyxy pixel ``box`` (inclusive corners); returns its area in pixels."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0 + 1, y1 - y0 + 1
    if shape == "circle":
        draw.ellipse(box, fill=colour)
        return math.pi * w * h / 4
    if shape == "square":
        draw.rectangle(box, fill=colour)
        return float(w * h)
    if shape == "triangle":
        if rng.random() < 0.5:
            points = [(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)]
        else:
            points = [(x0, y0), (x1, y0), ((x0 + x1) / 2, y1)]
        draw.polygon(points, fill=colour)
        return w * h / 2
    if shape == "cross":
        tx, ty = max(1, w // 3), max(1, h // 3)
        draw.rectangle((x0 + tx, y0, x1 - tx, y1), fill=colour)
        draw.rectangle((x0, y0 + ty, x1, y1 - ty), fill=colour)
        return float(w * ty + h * tx - tx * ty) if w > 2 and h > 2 else float(w * h)
    if shape == "ring":
        thickness = max(2, min(w, h) // 5)
        draw.ellipse(box, outline=colour, width=thickness)
        inner_w, inner_h = max(0, w - 2 * thickness), max(0, h - 2 * thickness)
        return math.pi * (w * h - inner_w * inner_h) / 4
    raise ValueError(f"unknown shape {shape!r}; known shapes: {', '.join(SHAPES)}")


def make_scene(
    seed: int, split: str, index: int, classes: Sequence[str] = DEFAULT_CLASSES, settings: SceneSettings | None = None
) -> tuple[Image.Image, list[dict[str, Any]]]:
    """Draw one scene; returns the image and its objects as ``{"category": name, "bbox": [x, y, w, h], "area"}``.

    Boxes are COCO xywh in pixels and enclose the drawn shape exactly (later shapes may cover parts of earlier ones).
    """
    settings = settings or SceneSettings()
    rng = np.random.default_rng([seed, SPLITS.index(split) if split in SPLITS else len(split), index])
    width = int(rng.integers(settings.min_size, settings.max_size + 1))
    height = int(rng.integers(settings.min_size, settings.max_size + 1))
    pixels = _background(rng, height, width)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    mean_colour = pixels.reshape(-1, 3).mean(axis=0)
    objects: list[dict[str, Any]] = []
    boxes: list[tuple[int, int, int, int]] = []
    for _ in range(int(rng.integers(1, settings.max_objects + 1))):
        shape = classes[int(rng.integers(0, len(classes)))]
        for _attempt in range(10):
            side = rng.uniform(*settings.object_scale) * min(width, height)
            aspect = rng.uniform(0.75, 1.33) if shape != "circle" or rng.random() < 0.5 else 1.0
            w = max(4, min(width, int(side * math.sqrt(aspect))))
            h = max(4, min(height, int(side / math.sqrt(aspect))))
            x0 = int(rng.integers(0, width - w + 1))
            y0 = int(rng.integers(0, height - h + 1))
            box = (x0, y0, x0 + w - 1, y0 + h - 1)
            if all(_iou(box, other) <= settings.max_overlap for other in boxes):
                break
        else:
            continue
        area = _draw_shape(draw, shape, box, _colour(rng, mean_colour), rng)
        boxes.append(box)
        objects.append({"category": shape, "bbox": [float(x0), float(y0), float(w), float(h)], "area": float(area)})
    if rng.random() < settings.gray_fraction:
        image = image.convert("L")
    return image, objects


def make_split(
    out_dir: str | Path,
    split: str,
    num_images: int,
    *,
    seed: int = 0,
    classes: Sequence[str] = DEFAULT_CLASSES,
    settings: SceneSettings | None = None,
) -> Path:
    """Write ``num_images`` scenes to ``out_dir/split/`` and their COCO annotations; returns the JSON's path."""
    unknown = [c for c in classes if c not in SHAPES]
    if unknown or not classes or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be distinct names from {', '.join(SHAPES)}; got {', '.join(classes)}")
    out_dir = Path(out_dir)
    image_dir = out_dir / split
    image_dir.mkdir(parents=True, exist_ok=True)
    categories = [{"id": i, "name": name, "supercategory": "shape"} for i, name in enumerate(classes, start=1)]
    category_ids = {c["name"]: c["id"] for c in categories}
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for index in range(num_images):
        image, objects = make_scene(seed, split, index, classes, settings)
        file_name = f"{index:06d}.png"
        image.save(image_dir / file_name, optimize=False)
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "width": image.width, "height": image.height})
        for obj in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_ids[obj["category"]],
                    "bbox": obj["bbox"],
                    "area": obj["area"],
                    "iscrowd": 0,
                }
            )
    document = {
        "info": {"description": f"synthetic shapes, split {split}, seed {seed}", "version": "1.0"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    annotation_path = out_dir / "annotations" / f"instances_{split}.json"
    annotation_path.parent.mkdir(parents=True, exist_ok=True)
    annotation_path.write_text(json.dumps(document, indent=1) + "\n")
    return annotation_path


def make_dataset(
    out_dir: str | Path,
    *,
    num_train: int = defaults.SYNTHETIC_TRAIN_IMAGES,
    num_val: int = defaults.SYNTHETIC_VAL_IMAGES,
    seed: int = 0,
    classes: Sequence[str] = DEFAULT_CLASSES,
    settings: SceneSettings | None = None,
) -> dict[str, Path]:
    """Write the train and val splits; returns ``{split: annotation file}``."""
    return {
        split: make_split(out_dir, split, count, seed=seed, classes=classes, settings=settings)
        for split, count in (("train", num_train), ("val", num_val))
    }
