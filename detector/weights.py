"""Our weights format: a safetensors file whose metadata describes the model completely.

Never pickle: a weights file is data, and loading one must not run code. The metadata (a JSON document under the
``detector`` key) is the model's :class:`~detector.spec.ModelSpec`: what to build, how to feed it, how to read its
outputs and where the numbers came from. Reading the spec alone (:func:`read_spec`) needs no torch: a process
serving from an exported engine never builds the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import SafetensorError, safe_open

from detector.cache import atomic_path, file_digest
from detector.errors import WeightsError
from detector.spec import ModelSpec

if TYPE_CHECKING:
    import torch

    from detector.model import SSDLite

METADATA_KEY = "detector"


def build_model(spec: ModelSpec) -> SSDLite:
    """An untrained network with the structure ``spec`` describes."""
    from detector.model import ssdlite_mobilenet_v2

    return ssdlite_mobilenet_v2(num_classes=spec.num_classes, image_size=spec.image_size, width_mult=spec.width_mult)


def save_weights(path: str | Path, model: SSDLite, spec: ModelSpec) -> str:
    """Write ``model``'s tensors and ``spec`` to ``path``; returns the file's SHA-256."""
    from safetensors.torch import save_file

    check_state_dict(model, model.state_dict())
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    # 0644: safetensors writes 0600, but weights are meant to be shared (e.g. with a service's user); atomic, so a
    # crash or a replica converting at the same time never leaves a half-written weights file behind.
    with atomic_path(path, mode=0o644) as staged:
        save_file(tensors, str(staged), metadata={METADATA_KEY: spec.to_json()})
    return file_digest(path)


@dataclass(frozen=True)
class LoadedWeights:
    spec: ModelSpec
    model: SSDLite
    digest: str  # SHA-256 of the file
    path: Path


def read_spec(path: str | Path) -> ModelSpec:
    """The spec stored in a weights file, without reading its tensors."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="np") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"{path} is not a readable safetensors file: {exc}") from None
    if METADATA_KEY not in metadata:
        raise WeightsError(f"{path} has no '{METADATA_KEY}' metadata: not a weights file written by this project")
    try:
        return ModelSpec.from_json(metadata[METADATA_KEY])
    except WeightsError as exc:
        raise WeightsError(f"{path}: {exc}") from None


def load_weights(path: str | Path) -> LoadedWeights:
    """Read a weights file and build its model (in eval mode), refusing anything that does not match."""
    from safetensors.torch import load_file

    path = Path(path)
    spec = read_spec(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"{path} is not a readable safetensors file: {exc}") from None
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
