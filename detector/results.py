"""What detection returns: one :class:`ImageDetections` per image, each holding its :class:`Detection` objects.

A leaf module (standard library only): the service, the backends' accuracy bar, drawing and evaluation all read
results without importing the network. :class:`ModelInfo` describes what produced them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Detection:
    """One object: ``box`` is [x1, y1, x2, y2] in the original image's pixels (after EXIF orientation);
    ``class_id`` is the model's class index (for the COCO model, the COCO category id)."""

    label: str
    class_id: int
    score: float
    box: tuple[float, float, float, float]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "box": list(self.box)}


@dataclass(frozen=True)
class ImageDetections:
    """All detections of one image, highest score first, with the image's size as detected (upright)."""

    width: int
    height: int
    detections: list[Detection]

    def to_dict(self) -> dict[str, Any]:
        return {"width": self.width, "height": self.height, "detections": [d.to_dict() for d in self.detections]}


@dataclass(frozen=True)
class ModelInfo:
    """What a detector runs: the model (name, the labels it reports, input size, weights digest, provenance) and its
    backend."""

    name: str
    version: str
    architecture: str
    input_size: tuple[int, int]
    num_classes: int
    labels: list[str]
    score_mode: str
    weights_sha256: str
    source: str
    license: str
    backend: str
    backend_engine: dict[str, str]
    backend_reason: str
    # The numeric precision the engine computes in, and the accuracy bar's figures it met (auto's measured choice).
    backend_precision: str = "fp32"
    backend_figures: dict[str, float | int | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "input_size": list(self.input_size)}
