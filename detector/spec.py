"""What a model is, apart from its tensors: :class:`ModelSpec`, stored as JSON in every weights file.

It says what to build (architecture, input size, classes, width), how to feed the network (:class:`Preprocessing`),
how to read its outputs (:class:`Postprocessing`, label names) and where the numbers came from (source, licence).
Every field is checked on construction against its type (``Literal`` options, numbers, strings), so a misspelt
value in a file (``"after-nms"``) or a string where a number belongs (``"nms_iou_threshold": "0.6"``) is refused at
load time with a :class:`~detector.errors.WeightsError` naming it, instead of silently changing behaviour or failing
later where it is used. Standard library only: the service reads a spec without torch.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_type_hints

from detector import defaults
from detector.errors import WeightsError

FORMAT_VERSION = 1
# Bounds a spec's sizes must keep: far past any SSD export (inputs of 300–640 pixels, width multipliers of
# 0.35–1.4); a larger claim is a corrupt file, and building it would allocate without end.
MAX_IMAGE_SIZE = 4096
MAX_WIDTH_MULT = 4.0

ScoreMode = Literal["sigmoid"]  # independent per-class sigmoids, background at index 0 (TF OD API weighted_sigmoid)
ResizeMethod = Literal["bilinear_tf1_legacy"]  # TF1 ResizeBilinear, align_corners=False, no half-pixel centres
ColorOrder = Literal["RGB"]
# Where the TF OD API clips boxes to the image: before NMS in the 2018 zoo exports, after it in newer ones.
ClipBoxes = Literal["before_nms", "after_nms"]


def _check_fields(instance: Any) -> None:
    """Raise :class:`WeightsError` for a field whose value is not of its declared type: not one its ``Literal``
    allows, not a finite number for a ``float``, not an integer for an ``int`` (``True`` is neither), not a string,
    a tuple of strings or the part it names."""
    hints = get_type_hints(type(instance))
    for f in dataclasses.fields(instance):
        hint, value = hints[f.name], getattr(instance, f.name)
        if getattr(hint, "__origin__", None) is Literal:
            allowed = get_args(hint)
            if value not in allowed:
                what = f.name.replace("_", " ")
                raise WeightsError(f"unsupported {what} {value!r}; expected one of {', '.join(map(repr, allowed))}")
            continue
        expected = {
            float: "a number",
            int: "an integer",
            str: "a string",
            tuple[str, ...]: "a list of strings",
        }.get(hint, f"a {getattr(hint, '__name__', hint)} object")
        if not _is_a(value, hint):
            raise WeightsError(f"weights metadata field {f.name} must be {expected}, got {value!r}")


def _is_a(value: Any, hint: Any) -> bool:
    if isinstance(value, bool):
        return False
    if hint is float:
        return isinstance(value, (int, float)) and math.isfinite(value)
    if hint == tuple[str, ...]:
        return isinstance(value, tuple) and all(isinstance(item, str) for item in value)
    return isinstance(value, hint)


@dataclass(frozen=True)
class Preprocessing:
    """From RGB pixels to the network input: resize to the square input, then ``x · pixel_scale + pixel_offset``."""

    color: ColorOrder = "RGB"
    resize: ResizeMethod = "bilinear_tf1_legacy"
    pixel_scale: float = defaults.PIXEL_SCALE
    pixel_offset: float = defaults.PIXEL_OFFSET

    def __post_init__(self) -> None:
        _check_fields(self)


@dataclass(frozen=True)
class Postprocessing:
    """From raw outputs to detections: per-class NMS at ``nms_iou_threshold``, at most ``max_detections`` per class
    and in all (the TF OD API's ``max_detections_per_class`` and ``max_total_detections``), clipped as it did."""

    nms_iou_threshold: float = defaults.NMS_IOU_THRESHOLD
    max_detections: int = defaults.MAX_DETECTIONS
    clip_boxes: ClipBoxes = "after_nms"

    def __post_init__(self) -> None:
        _check_fields(self)
        if not 0.0 < self.nms_iou_threshold <= 1.0:
            raise WeightsError(f"nms_iou_threshold must be in (0, 1], got {self.nms_iou_threshold}")
        if self.max_detections < 1:
            raise WeightsError(f"max_detections must be at least 1, got {self.max_detections}")


@dataclass(frozen=True)
class ModelSpec:
    """Everything about a model except its tensors. ``labels[i]`` names class index ``i`` (0 is the background);
    an empty name marks an index the model has but never reports (COCO's ten unused category ids)."""

    num_classes: int
    labels: tuple[str, ...]
    name: str = "ssdlite-mobilenet-v2"
    version: str = "1"
    architecture: str = defaults.ARCHITECTURE
    image_size: int = defaults.IMAGE_SIZE
    width_mult: float = 1.0
    score_mode: ScoreMode = "sigmoid"
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    postprocessing: Postprocessing = field(default_factory=Postprocessing)
    source: str = "random initialisation"
    license: str = "unspecified"

    def __post_init__(self) -> None:
        _check_fields(self)
        if self.architecture != defaults.ARCHITECTURE:
            raise WeightsError(f"unknown architecture {self.architecture!r}, expected {defaults.ARCHITECTURE!r}")
        if self.num_classes < 2:
            raise WeightsError(
                f"num_classes counts the background and at least one class: 2 or more, got {self.num_classes}"
            )
        if len(self.labels) != self.num_classes:
            raise WeightsError(f"{len(self.labels)} labels for {self.num_classes} classes")
        if not 1 <= self.image_size <= MAX_IMAGE_SIZE:
            raise WeightsError(f"image_size must be between 1 and {MAX_IMAGE_SIZE}, got {self.image_size}")
        if not 0 < self.width_mult <= MAX_WIDTH_MULT:
            raise WeightsError(f"width_mult must be in (0, {MAX_WIDTH_MULT}], got {self.width_mult}")

    @property
    def reported_labels(self) -> tuple[str, ...]:
        """The names of the classes detections can have, in class-index order (no background, no unused ids)."""
        return tuple(label for label in self.labels[1:] if label)

    def to_json(self) -> str:
        return json.dumps({"format_version": FORMAT_VERSION, **dataclasses.asdict(self)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        """Parse the JSON :meth:`to_json` writes; refuses unknown fields, other versions and unsupported values."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise WeightsError(f"weights metadata is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise WeightsError("weights metadata is not a JSON object")
        version = data.pop("format_version", None)
        if type(version) is not int or version != FORMAT_VERSION:
            raise WeightsError(f"weights format version {version!r} is not supported (expected {FORMAT_VERSION})")
        _refuse_unknown(cls, data, "weights metadata")
        labels = data.get("labels", [])
        if not isinstance(labels, list):
            raise WeightsError(f"weights metadata field labels must be a list of strings, got {labels!r}")
        data["labels"] = tuple(labels)
        for key, part in (("preprocessing", Preprocessing), ("postprocessing", Postprocessing)):
            if key in data:
                if not isinstance(data[key], dict):
                    raise WeightsError(f"weights metadata field {key} is not an object")
                _refuse_unknown(part, data[key], key)
                data[key] = part(**data[key])
        try:
            return cls(**data)
        except TypeError as exc:
            raise WeightsError(f"incomplete weights metadata: {exc}") from None


def _refuse_unknown(cls: type, data: dict[str, Any], what: str) -> None:
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise WeightsError(f"unknown {what} fields: {', '.join(unknown)}")
