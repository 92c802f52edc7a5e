"""What training and evaluation feed the network: augmented samples, and images preprocessed as inference does.

The training pipeline is torchvision's SSD augmentation (``transforms.v2``: photometric distortion, zoom out, IoU
crop, horizontal flip, box sanitising), then the *inference* preprocessing: TF1's legacy bilinear resize to the
network's square input and ``x · 2/255 − 1`` (:mod:`detector.preprocess`). Training on exactly the pixels inference
feeds the network matters more than the resize's small sub-pixel shift: a network trained with a different resampler
sees slightly different (shifted, differently blurred) inputs at inference.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from detector import defaults
from detector.errors import DatasetError
from detector.preprocess import preprocess, resize_bilinear_legacy
from detector.training.coco import CocoDataset, ImageRecord, read_rgb
from detector.training.config import AUGMENTATIONS, Augmentation

Batch = TypeVar("Batch")


@dataclass(frozen=True)
class Unreadable:
    """An image of the data set that cannot be read: what the datasets below return instead of raising, because a
    DataLoader worker's exception comes back with the worker's whole traceback in its message. The loop over the
    batches raises it as the one-line :class:`DatasetError` it is (:func:`raise_unreadable`)."""

    reason: str


def raise_unreadable(batches: Iterable[Batch]) -> Iterator[Batch]:
    """The batches of a DataLoader over :class:`TrainingSet` or :class:`EvaluationImages`; raises
    :class:`DatasetError` naming the first image that could not be read."""
    for batch in batches:
        failed = [item for item in (batch if isinstance(batch, list) else [batch]) if isinstance(item, Unreadable)]
        if failed:
            raise DatasetError(failed[0].reason)
        yield batch


def ssd_augmentation(
    kind: Augmentation = defaults.TRAIN_AUGMENTATION, fill: Sequence[int] = defaults.TRAIN_ZOOM_OUT_FILL
) -> tuple[v2.Compose, v2.Compose]:
    """torchvision's SSD training augmentation as transforms v2, for samples ``(image, {"boxes", "labels"})``.

    ``"ssd"``: photometric distortion, zoom out (filled with the ImageNet mean), IoU crop, flip (torchvision's
    ``--data-augmentation ssd``, the SSD paper's recipe). ``"ssdlite"``: IoU crop and flip only (torchvision's
    SSDlite recipe). ``"flip"``: flip only. ``"none"``: nothing. Returns (transform for images with objects,
    transform for images without: ``RandomIoUCrop`` needs at least one box).
    """
    if kind not in AUGMENTATIONS:
        raise DatasetError(f"unknown augmentation {kind!r}; choose from {', '.join(AUGMENTATIONS)}")
    photometric = [v2.RandomPhotometricDistort(p=0.5)] if kind == "ssd" else []
    zoom = [v2.RandomZoomOut(fill={tv_tensors.Image: tuple(fill), "others": 0}, p=0.5)] if kind == "ssd" else []
    crop = [v2.RandomIoUCrop()] if kind in ("ssd", "ssdlite") else []
    flip = [v2.RandomHorizontalFlip(p=0.5)] if kind != "none" else []
    sanitize = [v2.SanitizeBoundingBoxes(min_size=1.0)]
    with_objects = v2.Compose([*photometric, *zoom, *crop, *flip, *sanitize])
    without_objects = v2.Compose([*photometric, *zoom, *flip, *sanitize])
    return with_objects, without_objects


class TrainingSet(torch.utils.data.Dataset):
    """Augmented training samples: ``(image (3, S, S) float in [-1, 1], {"boxes": (M, 4) xyxy normalized,
    "labels": (M,) class indices 1..K-1}, notes)`` where ``notes`` lists what reading the image took."""

    def __init__(
        self,
        dataset: CocoDataset,
        labels: Sequence[str],
        image_size: int,
        augmentation: Augmentation = defaults.TRAIN_AUGMENTATION,
    ) -> None:
        self.records = dataset.records
        self.image_size = image_size
        index = {name: i for i, name in enumerate(labels)}
        missing = [c["name"] for c in dataset.categories if c["name"] not in index]
        if missing:
            raise DatasetError(f"the model's labels do not include data set categories: {', '.join(missing)}")
        self.class_of_category = {c["id"]: index[c["name"]] for c in dataset.categories}
        self.transforms = ssd_augmentation(augmentation)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]] | Unreadable:
        record = self.records[i]
        try:
            array, notes = read_rgb(record.path, (record.width, record.height))
        except DatasetError as exc:
            return Unreadable(str(exc))
        image = tv_tensors.Image(torch.from_numpy(array).permute(2, 0, 1))
        boxes = tv_tensors.BoundingBoxes(
            torch.from_numpy(record.boxes), format="XYXY", canvas_size=(record.height, record.width)
        )
        labels = torch.tensor([self.class_of_category[int(c)] for c in record.categories], dtype=torch.int64)
        transform = self.transforms[0] if len(boxes) else self.transforms[1]
        image, target = transform(image, {"boxes": boxes, "labels": labels})
        return (*to_network_input(image, target["boxes"], self.image_size), target["labels"], notes)


def to_network_input(image: torch.Tensor, boxes: torch.Tensor, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, H, W) uint8 image and (M, 4) xyxy pixel boxes → the network's (3, S, S) input and boxes normalized to
    [0, 1], through the same resize and scaling as inference."""
    height, width = image.shape[-2:]
    resized = resize_bilinear_legacy(image.permute(1, 2, 0).to(torch.float32), (image_size, image_size))
    scaled = resized * torch.tensor(defaults.PIXEL_SCALE, dtype=torch.float32) + defaults.PIXEL_OFFSET
    pixels = scaled.permute(2, 0, 1)
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    return pixels.contiguous(), boxes.as_subclass(torch.Tensor).to(torch.float32) / scale


def collate_training(batch) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]], Counter] | Unreadable:
    """Stack images; keep per-image targets as a list; count the read notes of the batch (or pass on the first
    :class:`Unreadable` image)."""
    unreadable = [item for item in batch if isinstance(item, Unreadable)]
    if unreadable:
        return unreadable[0]
    images = torch.stack([item[0] for item in batch])
    targets = [{"boxes": item[1], "labels": item[2]} for item in batch]
    notes = Counter(note for item in batch for note in item[3])
    return images, targets, notes


class EvaluationImages(torch.utils.data.Dataset):
    """``(position, image_id, network input (3, S, S), (height, width), notes)`` for the images of a data set
    (:class:`Unreadable` for an image that cannot be read).

    Reading and the inference preprocessing (:func:`detector.preprocess.preprocess`, per image, so batching does not
    change a pixel) run here, in the DataLoader's workers, leaving the main process to the network.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        image_size: int,
        pixel_scale: float = defaults.PIXEL_SCALE,
        pixel_offset: float = defaults.PIXEL_OFFSET,
    ) -> None:
        self.records = list(records)
        self.image_size = image_size
        self.pixel_scale = pixel_scale
        self.pixel_offset = pixel_offset

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[int, int, torch.Tensor, tuple[int, int], list[str]] | Unreadable:
        record = self.records[i]
        try:
            array, notes = read_rgb(record.path, (record.width, record.height))
        except DatasetError as exc:
            return Unreadable(str(exc))
        pixels = preprocess([array], self.image_size, self.pixel_scale, self.pixel_offset)[0]
        return i, record.image_id, pixels, (array.shape[0], array.shape[1]), notes


def collate_list(batch: list) -> list:
    """Keep a batch as the list of its samples."""
    return batch
