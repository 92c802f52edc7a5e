"""The one door for the engine: which backend runs a weights file here, why, and building it.

:func:`choose` decides; :func:`build` builds what it decided, once. A backend asked for by name is taken as it is
(after checking it against the precision asked for). ``auto`` takes the fastest engine that meets its bar on this
machine, measured once (:mod:`detector.backends.measure`) and remembered per machine (CPU model and flags, cores,
engine versions, GPU) and weights in ``<cache dir>/backend-choice.json``:

- ``precision="fast"`` (the default): any engine whose detections meet :mod:`detector.backends.accuracy`'s bar:
  fp32 engines, and fp16, bf16 or int8 ones where they pass on the check photographs.
- ``precision="exact"``: fp32 engines only, whose raw outputs equal eager PyTorch's within 1e-3 — and so TF's and
  TF.js's within the parity tests' tolerances.

Measuring builds every engine, imports pycocotools and, where the export is missing, torch; it runs in a child
process (``python -m detector.backends.measure``), so that the caller — the service above all — keeps none of that
memory and never imports them. The child writes the cache and prints its choice. What is chosen runs from the
weights' cached exports where it can (ONNX, or the int8 model quantized from it), without torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from detector.backends.base import Backend, BackendChoice
from detector.backends.factory import build_backend, build_from_export
from detector.backends.onnx import weights_key
from detector.cache import cache_dir, write_atomic
from detector.errors import BackendUnavailable, DetectorError
from detector.machine import cpu_description

if TYPE_CHECKING:
    import numpy as np

    from detector.model import SSDLite
    from detector.spec import ModelSpec

log = logging.getLogger("detector.backends")

PrecisionMode = Literal["fast", "exact"]
PRECISION_MODES: tuple[PrecisionMode, ...] = get_args(PrecisionMode)
CACHE_FILE = "backend-choice.json"
# The numeric precision each backend computes in; "exact" allows the fp32 ones only.
ENGINE_PRECISION: dict[str, str] = {
    "torch": "fp32",
    "torch-fp16": "fp16",
    "onnxruntime": "fp32",
    "openvino": "fp32",
    "openvino-fp16": "fp16",
    "openvino-bf16": "bf16",
    "openvino-int8": "int8",
    "litert": "fp32",
}
REFERENCE_REASON = "eager PyTorch fp32, the reference"


def check_precision_mode(value: str) -> PrecisionMode:
    """``value`` if it is a precision mode, else a :class:`DetectorError` naming the accepted ones."""
    if value not in PRECISION_MODES:
        raise DetectorError(f"unknown precision {value!r}; choose from {', '.join(PRECISION_MODES)}")
    return value


@dataclass(frozen=True)
class Candidate:
    """One engine's row of the table ``auto`` chooses from.

    ``ms_per_image``: at batch 8 (what ``auto`` ranks by), ``ms_batch1``: a lone image; ``accuracy``: one line
    about the bar; ``agreement_ap`` and ``lost``: the bar's figures (reduced precision); ``annotated_ap``: COCO AP
    on the hand-annotated sample photographs, where they were at hand; ``model_file``: the engine file it runs.
    """

    name: str
    precision: str
    ms_per_image: float | None
    accuracy: str
    eligible: bool
    ms_batch1: float | None = None
    agreement_ap: float | None = None
    lost: int | None = None
    annotated_ap: float | None = None
    model_file: str | None = None


@dataclass(frozen=True)
class Choice:
    """The engine to run, its precision, why, and (for ``auto``) the table it was chosen from."""

    name: str
    reason: str
    precision: str = "fp32"
    candidates: tuple[Candidate, ...] = field(default=())
    model_file: str | None = None

    @property
    def chosen(self) -> Candidate | None:
        """This engine's row of the table, if it was measured."""
        return next((c for c in self.candidates if c.name == self.name), None)

    def figures(self) -> dict[str, float | int | None]:
        """The bar's figures the chosen engine met (empty when it was not measured)."""
        row = self.chosen
        if row is None:
            return {}
        return {
            "ms_per_image_batch8": row.ms_per_image,
            "agreement_ap": row.agreement_ap,
            "confident_lost": row.lost,
            "annotated_ap": row.annotated_ap,
        }


def rank(table: tuple[Candidate, ...] | list[Candidate], precision: PrecisionMode) -> Choice:
    """``auto``'s choice from a measured table: the fastest eligible engine (fp32 only for "exact"); eager
    PyTorch where none is."""
    allowed = [
        c for c in table if c.eligible and c.ms_per_image is not None and (precision == "fast" or c.precision == "fp32")
    ]
    if not allowed:
        return Choice("torch", f"no engine met the bar; {REFERENCE_REASON}", "fp32", tuple(table))
    best = min(allowed, key=lambda c: c.ms_per_image or 0.0)
    others = "; ".join(
        f"{c.name} {c.ms_per_image:.1f} ms"
        if c.eligible and c.ms_per_image is not None
        else f"{c.name} refused ({c.accuracy})"
        for c in table
        if c is not best
    )
    scope = "meeting the accuracy bar" if precision == "fast" else "in fp32 (precision exact)"
    reason = f"fastest engine {scope}: {best.ms_per_image:.1f} ms/image at batch 8 ({best.accuracy}); {others}"
    return Choice(best.name, reason, best.precision, tuple(table), best.model_file)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def _is_cuda(device: str) -> bool:
    return str(device).startswith("cuda")


def machine_fingerprint(device: str = "cpu") -> dict[str, str]:
    """What makes a measurement valid: the CPU and its flags, cores, engine versions, GPU. Read without importing
    the engines (a process serving from the cache must stay lean)."""
    fingerprint = {
        **cpu_description(),
        "torch": _version("torch"),
        "onnxruntime": _version("onnxruntime"),
        "openvino": _version("openvino"),
        "nncf": _version("nncf"),
        "ai-edge-litert": _version("ai-edge-litert"),
    }
    if _is_cuda(device):
        import torch

        if torch.cuda.is_available():
            fingerprint["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return fingerprint


def _cache_key(spec: ModelSpec, digest: str, device: str) -> str:
    key = hashlib.sha256(json.dumps(machine_fingerprint(device), sort_keys=True).encode())
    key.update(digest.encode() or spec.to_json().encode())
    return key.hexdigest()[:24]


def cached_table(spec: ModelSpec, digest: str, *, device: str = "cpu") -> tuple[Candidate, ...] | None:
    """The table measured earlier on this machine for these weights, if any."""
    try:
        entry = json.loads((cache_dir() / CACHE_FILE).read_text()).get(_cache_key(spec, digest, device))
        return tuple(Candidate(**row) for row in entry["candidates"]) if entry else None
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None  # absent, or written by another version: measured again


def remember(table: list[Candidate] | tuple[Candidate, ...], spec: ModelSpec, digest: str, *, device: str) -> None:
    """Cache ``table`` for these weights on this machine (a warning where the cache is not writable)."""
    cache = cache_dir() / CACHE_FILE
    try:
        entries = json.loads(cache.read_text()) if cache.is_file() else {}
        if not isinstance(entries, dict):
            entries = {}
    except (OSError, ValueError):
        entries = {}
    entries[_cache_key(spec, digest, device)] = {"candidates": [asdict(c) for c in table]}
    try:
        write_atomic(cache, json.dumps(entries, indent=2))
    except OSError as exc:
        log.warning("cannot cache the backend choice in %s: %s", cache, exc)


def choose(
    weights: Path,
    spec: ModelSpec,
    digest: str,
    *,
    backend: BackendChoice | str = "auto",
    precision: PrecisionMode | str = "fast",
    device: str = "cpu",
    threads: int | None = None,
) -> Choice:
    """Which engine runs ``weights`` here: by name, or ``auto``'s choice (cached, else measured in a child).

    Raises:
        DetectorError: an unknown precision, or a named backend that computes in another precision than asked.
    """
    mode = check_precision_mode(str(precision))
    if backend != "auto":
        if backend not in ENGINE_PRECISION:
            raise BackendUnavailable(f"unknown backend {backend!r}; choose from auto, {', '.join(ENGINE_PRECISION)}")
        numeric = ENGINE_PRECISION[str(backend)]
        if mode == "exact" and numeric != "fp32":
            raise DetectorError(f"backend {backend} computes in {numeric}; precision exact allows fp32 engines only")
        reason = REFERENCE_REASON if backend == "torch" else "asked for by name"
        # An int8 model quantized when auto measured here is reused rather than quantized again.
        measured = next((c for c in cached_table(spec, digest, device=device) or () if c.name == backend), None)
        return Choice(str(backend), reason, numeric, model_file=measured.model_file if measured else None)
    table = cached_table(spec, digest, device=device)
    if table is None:
        table = _measure_in_child(weights, device, threads)
        if table is None:
            return Choice("torch", f"measuring the engines failed (see the log); {REFERENCE_REASON}", "fp32")
        learned = "measured now"
    else:
        learned = "measured earlier on this machine"
    choice = rank(table, mode)
    return Choice(choice.name, f"auto ({learned}): {choice.reason}", choice.precision, table, choice.model_file)


def _measure_in_child(
    weights: Path, device: str, threads: int | None, timeout_s: float = 1800.0
) -> tuple[Candidate, ...] | None:
    """Run ``python -m detector.backends.measure`` on ``weights``: it measures, caches and prints the table."""
    command = [sys.executable, "-m", "detector.backends.measure", str(weights), "--device", str(device), "--json"]
    if threads:
        command += ["--threads", str(threads)]
    log.info("measuring the engines for %s on this machine (once; about a minute)", weights.name)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
        if done.returncode == 0:
            rows = json.loads(done.stdout.strip().splitlines()[-1])
            return tuple(Candidate(**row) for row in rows)
        log.warning("measuring the engines failed: %s", done.stderr.strip()[-800:])
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError, TypeError) as exc:
        log.warning("measuring the engines failed: %s", exc)
    return None


def build(
    choice: Choice,
    digest: str,
    *,
    device: str = "cpu",
    threads: int | None = None,
    calibration: list[np.ndarray] | None = None,
    load_network: Callable[[], SSDLite],
) -> tuple[Backend, SSDLite | None]:
    """Build ``choice``'s engine: from the cached export where it runs one (no torch; the network stays None),
    else from the network (``load_network()``: eval mode, batch norm folded, on ``device``). ``calibration``:
    preprocessed batches for an int8 engine asked for by name.

    Raises:
        BackendUnavailable: the engine cannot run here.
    """
    if not _is_cuda(device):
        engine = build_from_export(choice.name, weights_key(digest), threads=threads, model_file=choice.model_file)
        if engine is not None:
            return engine, None
    network = load_network()
    engine = build_backend(
        choice.name, network, device=device, calibration=calibration or [], key=weights_key(digest), threads=threads
    )
    return engine, network
