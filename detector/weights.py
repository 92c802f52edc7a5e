"""Our weights format: a safetensors file whose metadata describes the model completely.

Never pickle: a weights file is data, and loading one must not run code. The metadata (a JSON document under the
``detector`` key) says what to build (architecture, input size, classes, width), how to feed it (preprocessing),
how to read its outputs (score mode, NMS settings, label names) and where the numbers came from (source, licence).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from detector import defaults
from detector.errors import WeightsError
from detector.model import SSDLite, ssdlite_mobilenet_v2

FORMAT_VERSION = 1
METADATA_KEY = "detector"


@dataclass(frozen=True)
class ModelSpec:
    """Everything about a model except its tensors."""

    num_classes: int
    labels: tuple[str, ...]
    name: str = "ssdlite-mobilenet-v2"
    version: str = "1"
    architecture: str = defaults.ARCHITECTURE
    image_size: int = defaults.IMAGE_SIZE
    width_mult: float = 1.0
    # "sigmoid": independent per-class sigmoids with background at index 0 (TF OD API weighted_sigmoid).
    score_mode: str = "sigmoid"
    preprocessing: dict[str, Any] = field(
        default_factory=lambda: {
            "color": "RGB",
            "resize": "bilinear_tf1_legacy",
            "pixel_scale": defaults.PIXEL_SCALE,
            "pixel_offset": defaults.PIXEL_OFFSET,
        }
    )
    postprocessing: dict[str, Any] = field(
        default_factory=lambda: {
            "nms_iou_threshold": defaults.NMS_IOU_THRESHOLD,
            "max_detections": defaults.MAX_DETECTIONS,
            "clip_boxes": "after_nms",
        }
    )
    source: str = "random initialisation"
    license: str = "unspecified"

    def __post_init__(self) -> None:
        if self.architecture != defaults.ARCHITECTURE:
            raise WeightsError(f"unknown architecture {self.architecture!r}, expected {defaults.ARCHITECTURE!r}")
        if len(self.labels) != self.num_classes:
            raise WeightsError(f"{len(self.labels)} labels for {self.num_classes} classes")
        if self.score_mode != "sigmoid":
            raise WeightsError(f"unsupported score mode {self.score_mode!r}")
        if self.postprocessing.get("clip_boxes") not in ("before_nms", "after_nms"):
            raise WeightsError(f"unsupported clip_boxes {self.postprocessing.get('clip_boxes')!r}")

    def to_json(self) -> str:
        return json.dumps({"format_version": FORMAT_VERSION, **dataclasses.asdict(self)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise WeightsError(f"weights metadata is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise WeightsError("weights metadata is not a JSON object")
        version = data.pop("format_version", None)
        if version != FORMAT_VERSION:
            raise WeightsError(f"weights format version {version!r} is not supported (expected {FORMAT_VERSION})")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise WeightsError(f"unknown weights metadata fields: {', '.join(unknown)}")
        data["labels"] = tuple(data.get("labels", ()))
        try:
            return cls(**data)
        except TypeError as exc:
            raise WeightsError(f"incomplete weights metadata: {exc}") from None


def build_model(spec: ModelSpec) -> SSDLite:
    """An untrained network with the structure ``spec`` describes."""
    return ssdlite_mobilenet_v2(num_classes=spec.num_classes, image_size=spec.image_size, width_mult=spec.width_mult)


def save_weights(path: str | Path, model: SSDLite, spec: ModelSpec) -> str:
    """Write ``model``'s tensors and ``spec`` to ``path``; returns the file's SHA-256."""
    check_state_dict(model, model.state_dict())
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # unique: replicas may convert at once
    save_file(tensors, str(tmp), metadata={METADATA_KEY: spec.to_json()})
    os.chmod(tmp, 0o644)  # safetensors writes 0600; weights are meant to be shared (e.g. with a service's user)
    tmp.replace(path)  # atomic: a crash never leaves a half-written weights file behind
    return file_digest(path)


@dataclass(frozen=True)
class LoadedWeights:
    spec: ModelSpec
    model: SSDLite
    digest: str  # SHA-256 of the file
    path: Path


def load_weights(path: str | Path) -> LoadedWeights:
    """Read a weights file and build its model (in eval mode), refusing anything that does not match."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"{path} is not a readable safetensors file: {exc}") from None
    if METADATA_KEY not in metadata:
        raise WeightsError(f"{path} has no '{METADATA_KEY}' metadata: not a weights file written by this project")
    spec = ModelSpec.from_json(metadata[METADATA_KEY])
    model = build_model(spec)
    check_state_dict(model, tensors, source=str(path))
    model.load_state_dict(tensors)
    return LoadedWeights(spec=spec, model=model.eval(), digest=file_digest(path), path=path)


def check_state_dict(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str = "weights") -> None:
    """Raise :class:`WeightsError` naming the first tensor that is missing, unexpected or mis-shaped."""
    expected = model.state_dict()
    for key, target in expected.items():
        if key not in tensors:
            raise WeightsError(f"{source}: missing tensor {key} {tuple(target.shape)}")
        if tuple(tensors[key].shape) != tuple(target.shape):
            raise WeightsError(
                f"{source}: tensor {key} has shape {tuple(tensors[key].shape)}, the model needs {tuple(target.shape)}"
            )
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise WeightsError(f"{source}: unexpected tensor {unexpected[0]} ({len(unexpected)} unexpected in all)")


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
