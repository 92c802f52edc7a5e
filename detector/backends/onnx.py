"""The network as ONNX: the graph every non-torch engine runs, exported once per weights and cached.

The exported graph is the network alone: the preprocessed batch ``images`` (N, 3, S, S) float32 in [-1, 1] in,
``box_codes`` (N, A, 4) and ``class_logits`` (N, A, K) out, with a dynamic batch dimension. Decoding and NMS stay in
:mod:`detector.postprocess`, so every backend shares them. The spatial size is fixed, which makes the TF 'SAME'
paddings of :mod:`detector.padding` constants in the graph.

The cached file is named after the weights file's SHA-256 (or, for a network in memory, its tensors'), so a
process that serves from the cache finds it without building the network, and without importing torch; exporting
needs torch. Beside it, ``<name>.onnx.sha256`` holds the export's own digest: a cached file that no longer matches
it (a bit flipped on disk, a copy cut short) is removed and exported again instead of being run, and so is one the
engine refuses to load (:func:`discard_export`; exports from before the digest was written are checked that way
only). We use the TorchScript-based ``torch.onnx.export(dynamo=False)``: it exports this network in about 4 s,
against 14 s for the dynamo exporter, and gives the same graph for a fixed-size input.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import logging
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from detector.cache import cache_dir, file_digest, write_atomic
from detector.errors import ExportError

if TYPE_CHECKING:
    from detector.model import SSDLite

log = logging.getLogger("detector.backends")

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
    """The cached ONNX export of ``key``, if one was made and is intact (a corrupt one is removed)."""
    return find_intact(export_paths(key))


def find_intact(paths: Sequence[Path]) -> Path | None:
    """The first of ``paths`` (an export's places, in order) that exists and is intact; a corrupt one is removed."""
    for path in paths:
        if path.is_file():
            if matches_its_digest(path):
                return path
            discard_export(path, "its SHA-256 differs from the one noted when it was exported")
    return None


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def matches_its_digest(path: Path) -> bool:
    """Whether ``path`` still has the SHA-256 noted beside it when it was exported (a bit flipped, or cut short: no)."""
    try:
        noted = _digest_path(path).read_text().strip()
    except OSError:
        return True  # an export from before digests were noted (or copied without it): the engine's load checks it
    return file_digest(path) == noted


def discard_export(path: Path, reason: str) -> None:
    """Remove a corrupt cached export (and its digest), so that the next use exports it again.

    Raises:
        ExportError: it cannot be exported again here (no torch: the lean serving image) or cannot be removed (a
            read-only cache), naming it and what to do.
    """
    if importlib.util.find_spec("torch") is None:
        raise ExportError(
            f"{path}: a corrupt cached export ({reason}); exporting it again needs torch (the `torch` extra): "
            "export on a machine that has it (`detector backends`), or rebuild the image"
        )
    log.warning("the cached export %s is corrupt (%s): removed, it will be exported again", path, reason)
    try:
        path.unlink(missing_ok=True)
        _digest_path(path).unlink(missing_ok=True)
    except OSError as exc:
        raise ExportError(
            f"{path}: a corrupt cached export ({reason}) that cannot be removed ({exc.strerror or exc}): delete it, "
            "or set DETECTOR_CACHE_DIR to a writable folder"
        ) from None


def cached_onnx(model: SSDLite, key: str | None = None) -> Path:
    """Path of the network's ONNX export in the cache directory, exporting it on first use (about 4 s).

    ``key``: the weights file's :func:`weights_key` when the network came from one (default: its tensors' hash).
    """
    key = key or model_key(model)
    found = find_onnx(key)
    if found is not None:
        return found
    return write_export_first_writable(export_paths(key), onnx_bytes(model))


def write_export_first_writable(paths: Sequence[Path], data: bytes) -> Path:
    """Write an export to the first of ``paths`` (the cache, then the temporary directory) that takes it."""
    *preferred, last = paths
    for path in preferred:
        with contextlib.suppress(OSError):
            return write_export(path, data)
    return write_export(last, data)


def write_export(path: Path, data: bytes) -> Path:
    """Write an export and the SHA-256 noted beside it, each atomically; returns ``path``."""
    # The digest first: a reader that finds the export finds its digest (a stale one fails it: exported again).
    write_atomic(_digest_path(path), hashlib.sha256(data).hexdigest() + "\n")
    return write_atomic(path, data)


def check_batch(image_size: int, batch_size: int = 2) -> np.ndarray:
    """A fixed pseudo-random input in [-1, 1] for comparing engines on raw outputs."""
    return np.random.default_rng(0).uniform(-1.0, 1.0, (batch_size, 3, image_size, image_size)).astype(np.float32)


def max_abs_diff(reference: tuple[np.ndarray, np.ndarray], outputs: tuple[np.ndarray, np.ndarray]) -> float:
    """Largest absolute difference over both raw outputs."""
    return max(
        float(np.abs(np.asarray(r, np.float32) - np.asarray(o, np.float32)).max())
        for r, o in zip(reference, outputs, strict=True)
    )
