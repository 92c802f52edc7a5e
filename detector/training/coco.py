"""COCO-format data sets: reading and checking annotation files, and reading their images.

Everything a user's data can get wrong is caught here, at the edge: a file that is not COCO, images that are missing,
boxes that are degenerate or reach outside their image, crowd regions, grayscale images. Problems that make the data
unusable raise :class:`~detector.errors.DatasetError`; problems we can work around are counted in a
:class:`SkipReport` and logged, never dropped silently. The tensors training and evaluation feed the network are
made in :mod:`detector.training.pipeline`.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detector.errors import DatasetError, ImageError
from detector.images import open_image, to_rgb_array
from detector.labels import BACKGROUND

Log = Callable[[str], None]

# What a SkipReport counts, in the words the log uses.
SKIP_REASONS = {
    "missing_image": "images skipped: file not found",
    "unknown_image": "annotations skipped: image id not in 'images'",
    "unknown_category": "annotations skipped: category id not in 'categories'",
    "crowd": "crowd annotations ignored as training targets (iscrowd=1)",
    "degenerate_box": "annotations skipped: degenerate box (width or height < 1 px, or not finite)",
    "outside_image": "annotations skipped: box entirely outside its image",
    "clipped_box": "boxes clipped to their image (they reached outside it)",
    "filled_area": "annotations without 'area': area set to box width × height",
    "filled_iscrowd": "annotations without 'iscrowd': set to 0",
    "filled_id": "annotations without 'id': numbered",
    "no_objects": "images without any object (kept as background-only examples)",
    "converted_rgb": "images converted to RGB (grayscale, palette, RGBA, CMYK, 16-bit ...)",
    "exif_ignored": "images whose EXIF orientation disagrees with the annotated size: read unrotated",
    # Evaluation scores the ground truth as written, as pycocotools does; these only say what it contains.
    "eval_crowd": "crowd annotations (iscrowd=1): COCOeval ignores detections matched to them",
    "eval_degenerate_box": "ground-truth boxes under 1 px wide or high (scored as written, as pycocotools does)",
    "eval_outside_image": "ground-truth boxes reaching outside their image (scored as written, as pycocotools does)",
}


@dataclass
class SkipReport:
    """Counts of everything worked around while reading a data set, with a few examples of each."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, example: str = "", count: int = 1) -> None:
        self.counts[reason] += count
        if example and len(self.examples.setdefault(reason, [])) < 3:
            self.examples[reason].append(example)

    def merge(self, other: SkipReport) -> None:
        for reason, count in other.counts.items():
            self.counts[reason] += count
        for reason, examples in other.examples.items():
            mine = self.examples.setdefault(reason, [])
            mine.extend(examples[: max(0, 3 - len(mine))])

    def lines(self) -> list[str]:
        """One line per non-zero count: ``"3 images skipped: file not found (e.g. a.jpg, b.jpg)"``."""
        out = []
        for reason, text in SKIP_REASONS.items():
            if self.counts.get(reason):
                examples = self.examples.get(reason)
                suffix = f" (e.g. {', '.join(examples)})" if examples else ""
                out.append(f"{self.counts[reason]} {text}{suffix}")
        return out

    def log(self, log: Log, prefix: str = "") -> None:
        for line in self.lines():
            log(f"{prefix}{line}")


def read_coco_file(path: str | Path) -> dict[str, Any]:
    """Read and check a COCO instances file; fills the optional fields pycocotools needs (``area``, ``iscrowd``,
    ``id``) and returns the document with ``"_report"`` holding a :class:`SkipReport` of what was filled."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"annotation file not found: {path}")
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read annotation file {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path} is not JSON: {exc}") from None
    if isinstance(document, list):
        raise DatasetError(f"{path} is a JSON list (a COCO results file?), not a COCO annotation file")
    if not isinstance(document, dict):
        raise DatasetError(f"{path} is not a COCO annotation file: the top level is not an object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(document.get(key), list):
            raise DatasetError(f"{path} is not a COCO annotation file: no '{key}' list")
    report = SkipReport()
    image_ids: set[int] = set()
    for image in document["images"]:
        if not isinstance(image, dict) or not {"id", "file_name", "width", "height"} <= set(image):
            raise DatasetError(f"{path}: every image needs id, file_name, width and height; got {str(image)[:120]}")
        if image["id"] in image_ids:
            raise DatasetError(f"{path}: image id {image['id']} appears twice")
        image_ids.add(image["id"])
    names: set[str] = set()
    for category in document["categories"]:
        if not isinstance(category, dict) or not {"id", "name"} <= set(category):
            raise DatasetError(f"{path}: every category needs id and name; got {str(category)[:120]}")
        if category["name"] in names:
            raise DatasetError(f"{path}: category name {category['name']!r} appears twice")
        names.add(category["name"])
    if not document["categories"]:
        raise DatasetError(f"{path}: no categories")
    used_ids = {a.get("id") for a in document["annotations"] if isinstance(a, dict)}
    next_id = max((i for i in used_ids if isinstance(i, int)), default=0) + 1
    for annotation in document["annotations"]:
        if not isinstance(annotation, dict) or not {"image_id", "category_id", "bbox"} <= set(annotation):
            raise DatasetError(
                f"{path}: every annotation needs image_id, category_id and bbox; got {str(annotation)[:120]}"
            )
        bbox = annotation["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            raise DatasetError(
                f"{path}: annotation {annotation.get('id')} has bbox {bbox!r}, not [x, y, width, height]"
            )
        if "id" not in annotation:
            annotation["id"] = next_id
            next_id += 1
            report.add("filled_id")
        if "iscrowd" not in annotation:
            annotation["iscrowd"] = 0
            report.add("filled_iscrowd")
        if "area" not in annotation:
            annotation["area"] = float(bbox[2] * bbox[3])
            report.add("filled_area")
    document["_report"] = report
    return document


def coco_api(document: dict[str, Any]):
    """A ``pycocotools.coco.COCO`` over an already read document (pycocotools' index-building chatter muted)."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = {k: v for k, v in document.items() if not k.startswith("_")}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def read_rgb(path: str | Path, expected_size: tuple[int, int] | None = None) -> tuple[np.ndarray, list[str]]:
    """RGB uint8 (H, W, 3) pixels of an image file, and what was done to get them (``converted_rgb``, ...).

    EXIF orientation is applied as everywhere else in the detector, unless the annotations' ``expected_size``
    (width, height) says the annotated frame is the unrotated one. Raises :class:`DatasetError` when the pixels
    cannot match the annotated size at all.
    """
    notes = []
    try:
        with open_image(path) as image:
            if image.mode != "RGB":
                notes.append("converted_rgb")
            array = to_rgb_array(image)
            rotated = expected_size is not None and (array.shape[1], array.shape[0]) != tuple(expected_size)
            if rotated and (image.width, image.height) == expected_size:
                notes.append("exif_ignored")
                array = np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    except ImageError as exc:
        raise DatasetError(f"{path}: {exc}") from None
    if expected_size is not None and (array.shape[1], array.shape[0]) != tuple(expected_size):
        raise DatasetError(
            f"{path} is {array.shape[1]}×{array.shape[0]} pixels but its annotations say "
            f"{expected_size[0]}×{expected_size[1]}"
        )
    return array, notes


@dataclass(frozen=True)
class ImageRecord:
    """One image of a data set and its training targets: ``boxes`` (M, 4) xyxy pixels, ``categories`` (M,) ids."""

    image_id: int
    path: Path
    width: int
    height: int
    boxes: np.ndarray
    categories: np.ndarray


@dataclass
class CocoDataset:
    """A checked COCO-format data set: the annotation document, the images found on disk, the skip counts."""

    document: dict[str, Any]
    images_dir: Path
    annotation_path: Path
    records: list[ImageRecord]
    report: SkipReport

    @property
    def categories(self) -> list[dict[str, Any]]:
        """Categories sorted by id."""
        return sorted(self.document["categories"], key=lambda c: c["id"])

    def labels(self) -> tuple[str, ...]:
        """The label map a model trained on this data set uses: background, then category names by id."""
        return (BACKGROUND, *(c["name"] for c in self.categories))


def load_dataset(
    images_dir: str | Path, annotation_path: str | Path, *, for_training: bool = True, log: Log = print
) -> CocoDataset:
    """Read a COCO-format data set, check it, and log what was skipped or repaired.

    Training targets exclude crowd regions; boxes are clipped to their image; degenerate boxes and boxes outside
    their image are skipped; images whose file is missing are skipped. The document itself is left as the file says
    (plus pycocotools' required fields), so evaluation sees exactly what pycocotools would; with ``for_training``
    False the box problems are only counted, under evaluation's wording.
    """
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise DatasetError(f"image folder not found: {images_dir}")
    document = read_coco_file(annotation_path)
    report: SkipReport = document["_report"]
    category_ids = {c["id"] for c in document["categories"]}
    by_image: dict[Any, list[dict[str, Any]]] = {image["id"]: [] for image in document["images"]}
    for annotation in document["annotations"]:
        if annotation["image_id"] not in by_image:
            report.add("unknown_image", f"annotation {annotation['id']}")
        elif annotation["category_id"] not in category_ids:
            report.add("unknown_category", f"annotation {annotation['id']} (category {annotation['category_id']})")
        else:
            by_image[annotation["image_id"]].append(annotation)
    records = []
    for image in document["images"]:
        path = images_dir / image["file_name"]
        if not path.is_file():
            report.add("missing_image", str(image["file_name"]))
            continue
        width, height = int(image["width"]), int(image["height"])
        boxes, categories = [], []
        for annotation in by_image[image["id"]]:
            if not for_training:
                _count_ground_truth(annotation, width, height, report)
                continue
            box = _training_box(annotation, width, height, report)
            if box is not None:
                boxes.append(box)
                categories.append(annotation["category_id"])
        if not boxes and for_training:
            report.add("no_objects", str(image["file_name"]))
        records.append(
            ImageRecord(
                image_id=image["id"],
                path=path,
                width=width,
                height=height,
                boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                categories=np.asarray(categories, dtype=np.int64),
            )
        )
    if not records:
        listed = len(document["images"])
        raise DatasetError(
            f"none of the {listed} images listed in {annotation_path} is in {images_dir}"
            if listed
            else f"{annotation_path} lists no images"
        )
    num_objects = sum(len(r.boxes) for r in records) if for_training else len(document["annotations"])
    log(f"{annotation_path}: {len(records)} images, {num_objects} objects, {len(document['categories'])} categories")
    report.log(log, prefix=f"{Path(annotation_path).name}: ")
    return CocoDataset(document, images_dir, Path(annotation_path), records, report)


def _training_box(annotation: dict[str, Any], width: int, height: int, report: SkipReport) -> list[float] | None:
    """The annotation's box as xyxy pixels clipped to the image, or None (counted) when it cannot be a target."""
    name = f"annotation {annotation['id']}"
    if annotation.get("iscrowd", 0):
        report.add("crowd", name)
        return None
    x, y, w, h = (float(v) for v in annotation["bbox"])
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w < 1 or h < 1:
        report.add("degenerate_box", f"{name} bbox {annotation['bbox']}")
        return None
    x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))
    if x2 - x1 < 1 or y2 - y1 < 1:
        report.add("outside_image", f"{name} bbox {annotation['bbox']} in {width}×{height}")
        return None
    if (x1, y1, x2, y2) != (x, y, x + w, y + h):
        report.add("clipped_box", name)
    return [x1, y1, x2, y2]


def _count_ground_truth(annotation: dict[str, Any], width: int, height: int, report: SkipReport) -> None:
    name = f"annotation {annotation['id']}"
    x, y, w, h = (float(v) for v in annotation["bbox"])
    if annotation.get("iscrowd", 0):
        report.add("eval_crowd", name)
    elif not all(math.isfinite(v) for v in (x, y, w, h)) or w < 1 or h < 1:
        report.add("eval_degenerate_box", f"{name} bbox {annotation['bbox']}")
    elif x < 0 or y < 0 or x + w > width or y + h > height:
        report.add("eval_outside_image", f"{name} bbox {annotation['bbox']} in {width}×{height}")
