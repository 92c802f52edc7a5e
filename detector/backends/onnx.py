"""The network as ONNX: the graph every non-torch engine runs, exported once per weights and cached.

The exported graph is the network alone: the preprocessed batch ``images`` (N, 3, S, S) float32 in [-1, 1] in,
``box_codes`` (N, A, 4) and ``class_logits`` (N, A, K) out, with a dynamic batch dimension. Decoding and NMS stay in
:mod:`detector.postprocess`, so every backend shares them. The spatial size is fixed, which makes the TF 'SAME'
paddings of :mod:`detector.padding` constants in the graph.

We use the TorchScript-based ``torch.onnx.export(dynamo=False)``: it exports this network in about 4 s, against 14 s
for the dynamo exporter, and gives the same graph for a fixed-size input.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from detector.cache import cache_dir, write_atomic
from detector.model import SSDLite

ONNX_OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAMES = ("box_codes", "class_logits")
# fp32 engines must give eager PyTorch's raw outputs within this (issue 6's bar).
RAW_TOLERANCE = 1e-3


def model_key(model: SSDLite) -> str:
    """SHA-256 (16 hex digits) of the network's tensors and input size: names its cached exports."""
    digest = hashlib.sha256(f"{model.image_size}".encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def onnx_bytes(model: SSDLite) -> bytes:
    """The network as an ONNX model (opset 17, dynamic batch)."""
    example = torch.zeros(2, 3, model.image_size, model.image_size)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on shape arithmetic (constant for a fixed size) and deprecation
        torch.onnx.export(
            model.eval(),
            (example,),
            buffer,  # type: ignore[arg-type]  # torch.onnx.export writes to any binary file object
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    return buffer.getvalue()


def cached_onnx(model: SSDLite) -> Path:
    """Path of the network's ONNX export in the cache directory, exporting it on first use (about 4 s)."""
    name = f"ssdlite-{model_key(model)}.onnx"
    path = cache_dir() / "exports" / name
    if path.is_file():
        return path
    try:
        return write_atomic(path, onnx_bytes(model))
    except OSError:
        # A read-only cache (a container's baked-in one): export into the temporary directory instead.
        path = Path(tempfile.gettempdir()) / "ssdlite-detector-exports" / name
        return path if path.is_file() else write_atomic(path, onnx_bytes(model))


def check_batch(image_size: int, batch_size: int = 2) -> torch.Tensor:
    """A fixed pseudo-random input in [-1, 1] for comparing engines on raw outputs."""
    generator = torch.Generator().manual_seed(0)
    return torch.rand(batch_size, 3, image_size, image_size, generator=generator) * 2 - 1


def max_abs_diff(reference: tuple[torch.Tensor, torch.Tensor], outputs: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Largest absolute difference over both raw outputs."""
    return max(float((r.float().cpu() - o.float().cpu()).abs().max()) for r, o in zip(reference, outputs, strict=True))


def as_outputs(box_codes: np.ndarray, class_logits: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """An engine's numpy outputs as float32 tensors, without a copy where they already are float32."""
    return torch.from_numpy(np.asarray(box_codes, np.float32)), torch.from_numpy(np.asarray(class_logits, np.float32))
