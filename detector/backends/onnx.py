"""The network as ONNX: the graph every non-torch engine runs, exported once per weights and cached.

The exported graph is the network alone: the preprocessed batch ``images`` (N, 3, S, S) float32 in [-1, 1] in,
``box_codes`` (N, A, 4) and ``class_logits`` (N, A, K) out, with a dynamic batch dimension. Decoding and NMS stay in
:mod:`detector.postprocess`, so every backend shares them. The spatial size is fixed, which makes the TF 'SAME'
paddings of :mod:`detector.padding` constants in the graph.

The cached file is named after the weights file's SHA-256 (or, for a network in memory, its tensors'), so a
process that serves from the cache finds it without building the network, and without importing torch; exporting
needs torch. We use the TorchScript-based ``torch.onnx.export(dynamo=False)``: it exports this network in about 4 s,
against 14 s for the dynamo exporter, and gives the same graph for a fixed-size input.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from detector.cache import cache_dir, write_atomic

if TYPE_CHECKING:
    from detector.model import SSDLite

ONNX_OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAMES = ("box_codes", "class_logits")
# fp32 engines must give eager PyTorch's raw outputs within this (issue 6's bar).
RAW_TOLERANCE = 1e-3


def model_key(model: SSDLite) -> str:
    """SHA-256 (16 hex digits) of the network's tensors and input size: names the exports of a network in memory."""
    digest = hashlib.sha256(f"{model.image_size}".encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def weights_key(weights_sha256: str) -> str:
    """The export key of a weights file (by its SHA-256): what a serving process looks its engine files up by."""
    return weights_sha256[:16]


def onnx_bytes(model: SSDLite) -> bytes:
    """The network as an ONNX model (opset 17, dynamic batch)."""
    import torch

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


def export_paths(key: str) -> list[Path]:
    """Where the ONNX export of ``key`` is looked for: the cache, then the temporary directory (a read-only
    cache, such as a container's baked-in one, exports there)."""
    name = f"ssdlite-{key}.onnx"
    return [cache_dir() / "exports" / name, Path(tempfile.gettempdir()) / "ssdlite-detector-exports" / name]


def find_onnx(key: str) -> Path | None:
    """The cached ONNX export of ``key``, if one was made."""
    return next((path for path in export_paths(key) if path.is_file()), None)


def cached_onnx(model: SSDLite, key: str | None = None) -> Path:
    """Path of the network's ONNX export in the cache directory, exporting it on first use (about 4 s).

    ``key``: the weights file's :func:`weights_key` when the network came from one (default: its tensors' hash).
    """
    key = key or model_key(model)
    found = find_onnx(key)
    if found is not None:
        return found
    preferred, fallback = export_paths(key)
    try:
        return write_atomic(preferred, onnx_bytes(model))
    except OSError:
        return write_atomic(fallback, onnx_bytes(model))


def check_batch(image_size: int, batch_size: int = 2) -> np.ndarray:
    """A fixed pseudo-random input in [-1, 1] for comparing engines on raw outputs."""
    return np.random.default_rng(0).uniform(-1.0, 1.0, (batch_size, 3, image_size, image_size)).astype(np.float32)


def max_abs_diff(reference: tuple[np.ndarray, np.ndarray], outputs: tuple[np.ndarray, np.ndarray]) -> float:
    """Largest absolute difference over both raw outputs."""
    return max(
        float(np.abs(np.asarray(r, np.float32) - np.asarray(o, np.float32)).max())
        for r, o in zip(reference, outputs, strict=True)
    )
