"""The backend interface: what every engine that runs the network offers, and the names they go by.

Batches and outputs are numpy arrays, whatever the engine: a process serving on ONNX Runtime or OpenVINO never needs
torch.
"""

from __future__ import annotations

from typing import Literal, Protocol, get_args

import numpy as np

BackendName = Literal[
    "torch", "torch-fp16", "onnxruntime", "openvino", "openvino-fp16", "openvino-bf16", "openvino-int8", "litert"
]
BACKEND_NAMES: tuple[BackendName, ...] = get_args(BackendName)
# What a caller may ask for: a backend by name, or ``auto`` (detector.backends.selection).
BackendChoice = Literal["auto", BackendName]
REDUCED_PRECISION: frozenset[str] = frozenset({"torch-fp16", "openvino-fp16", "openvino-bf16", "openvino-int8"})


class Backend(Protocol):
    """Runs the network: ``backend(batch)`` with (N, 3, S, S) float32 → ``(box_codes, class_logits)``, float32
    (N, A, 4) and (N, A, K) numpy arrays."""

    name: str

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def describe(self) -> dict[str, str]:
        """Engine, version, device and precision, for ``Detector.info``."""
        ...
