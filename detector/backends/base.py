"""The backend interface: what every engine that runs the network offers, and the names they go by.

Standard library only (torch appears in annotations), so settings and the service can name backends cheaply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Protocol, get_args

if TYPE_CHECKING:
    import torch

BackendName = Literal["torch", "torch-fp16", "onnxruntime", "openvino", "openvino-bf16", "openvino-int8"]
BACKEND_NAMES: tuple[BackendName, ...] = get_args(BackendName)
# What a caller may ask for: a backend by name, or ``auto`` (detector.backends.selection).
BackendChoice = Literal["auto", BackendName]
REDUCED_PRECISION: frozenset[str] = frozenset({"torch-fp16", "openvino-bf16", "openvino-int8"})


class Backend(Protocol):
    """Runs the network: ``backend(batch)`` → ``(box_codes, class_logits)``, float32 tensors."""

    name: str

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def describe(self) -> dict[str, str]:
        """Engine, version, device and precision, for ``Detector.info``."""
        ...
