"""``auto``: the fastest backend that meets the accuracy bar on this machine, measured once and remembered.

Each available backend is built, held to its bar (:mod:`detector.backends.accuracy`) against eager PyTorch and
timed at batch 8; the fastest that passes wins. Reduced-precision backends need photographs to be judged on
(``check_images``); without them they are refused, never trusted. The outcome is cached per machine (CPU model and
flags, core count, engine versions, GPU) and weights in ``<cache dir>/backend-choice.json``, so a restart builds
the winner directly instead of measuring again. A choice made with photographs serves callers without any (it was
checked more strictly); one made without photographs is re-measured for a caller that brings some.
``detector backends PHOTO...`` re-measures, prints the table and caches the choice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from detector.backends import REDUCED_PRECISION, Backend, BackendUnavailable, build_backend
from detector.backends.accuracy import MATCH_SCORE, compare_detections
from detector.export import RAW_TOLERANCE, check_batch, max_abs_diff

if TYPE_CHECKING:
    from detector.inference import Detector

log = logging.getLogger("detector.backends")

TIMING_BATCH = 8
CACHE_FILE = "backend-choice.json"


@dataclass(frozen=True)
class Candidate:
    """One backend's outcome: speed (ms/image at batch 8), accuracy figures, and whether ``auto`` may pick it."""

    name: str
    ms_per_image: float | None
    accuracy: str
    eligible: bool


@dataclass(frozen=True)
class Choice:
    """The chosen backend, why, and the whole table it was chosen from."""

    name: str
    reason: str
    candidates: tuple[Candidate, ...]


def candidate_names(device: str | torch.device) -> list[str]:
    """The backends worth trying on ``device``: the CUDA ones on a GPU, the CPU engines otherwise."""
    if torch.device(device).type == "cuda":
        return ["torch", "torch-fp16"]
    return ["torch", "onnxruntime", "openvino", "openvino-bf16", "openvino-int8"]


def machine_fingerprint(device: str | torch.device) -> dict[str, str]:
    """What makes a measurement valid: the CPU and its flags, cores, engine versions, GPU."""
    cpu, flags = platform.processor(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not cpu.strip():
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = " ".join(f for f in line.split(":", 1)[1].split() if f.startswith(("avx", "amx")))
    except OSError:
        pass
    fingerprint = {"cpu": cpu, "flags": flags, "cores": str(os.cpu_count()), "torch": torch.__version__}
    for module in ("onnxruntime", "openvino"):
        try:
            fingerprint[module] = __import__(module).__version__
        except ImportError:
            fingerprint[module] = "absent"
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        fingerprint["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return fingerprint


def _time_per_image(backend: Backend, batch: torch.Tensor, repeats: int = 3) -> float:
    backend(batch)  # warm-up: first-call allocations, lazy compilation
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        backend(batch)
        best = min(best, time.perf_counter() - start)
    return best * 1000 / batch.shape[0]


def measure_backends(
    detector: Detector, check_images: Sequence[np.ndarray] = (), names: Sequence[str] | None = None
) -> tuple[list[Candidate], dict[str, Backend]]:
    """Build, check and time each backend in ``names`` (default: :func:`candidate_names`).

    ``detector`` runs the reference (its eager PyTorch network). Returns the table and the backends built.
    """
    names = list(names or candidate_names(detector.device))
    probe = check_batch(detector.spec.image_size)
    reference_raw = detector.model_outputs(probe)
    photos = detector.preprocess(check_images) if check_images else None
    sizes = [(image.shape[0], image.shape[1]) for image in check_images]
    reference_detections = None
    if photos is not None:
        reference_detections = detector.postprocess(*detector.model_outputs(photos), sizes, score_threshold=MATCH_SCORE)
    timing = probe.repeat((TIMING_BATCH + 1) // 2, 1, 1, 1)[:TIMING_BATCH]
    table, built = [], {}
    for name in names:
        try:
            backend = build_backend(
                name, detector.model, device=detector.device, calibration=[photos] if photos is not None else []
            )
        except BackendUnavailable as exc:
            table.append(Candidate(name, None, f"unavailable: {exc}", False))
            continue
        if name in REDUCED_PRECISION:
            if reference_detections is None:
                table.append(Candidate(name, _time_per_image(backend, timing), "not checked: no photographs", False))
                continue
            agreement = compare_detections(
                reference_detections, detector.postprocess(*backend(photos), sizes, score_threshold=MATCH_SCORE)
            )
            accuracy, eligible = agreement.summary(), agreement.passed
        else:
            diff = max_abs_diff(reference_raw, backend(probe))
            accuracy, eligible = f"raw max abs diff {diff:.1e}", diff <= RAW_TOLERANCE
        table.append(Candidate(name, _time_per_image(backend, timing), accuracy, eligible))
        built[name] = backend
    return table, built


def _choose(table: Sequence[Candidate]) -> Choice:
    eligible = sorted((c for c in table if c.eligible), key=lambda c: c.ms_per_image)
    if not eligible:
        return Choice("torch", "no backend met the accuracy bar; eager PyTorch is the reference", tuple(table))
    best = eligible[0]
    others = "; ".join(
        f"{c.name} {c.ms_per_image:.1f} ms" if c.eligible else f"{c.name} refused ({c.accuracy})"
        for c in table
        if c is not best
    )
    reason = (
        f"fastest of the backends meeting the accuracy bar: {best.ms_per_image:.1f} ms/image at batch "
        f"{TIMING_BATCH} ({best.accuracy}); {others}"
    )
    return Choice(best.name, reason, tuple(table))


def _cache_key(detector: Detector) -> str:
    digest = hashlib.sha256(json.dumps(machine_fingerprint(detector.device), sort_keys=True).encode())
    digest.update(detector.digest.encode() or str(detector.spec).encode())
    return digest.hexdigest()[:24]


def select_backend(
    detector: Detector, check_images: Sequence[np.ndarray] = (), *, use_cache: bool = True
) -> tuple[Backend, Choice]:
    """The backend ``auto`` picks for ``detector`` here, built, and the choice (from the cache when it holds one)."""
    from detector.builtin import cache_dir

    cache = cache_dir() / CACHE_FILE
    key = _cache_key(detector)
    if use_cache:
        try:
            entry = json.loads(cache.read_text()).get(key)
        except (OSError, ValueError):
            entry = None
        if entry and (entry.get("photographs", 0) or not check_images):
            choice = Choice(entry["name"], entry["reason"], tuple(Candidate(**c) for c in entry["candidates"]))
            calibration = [detector.preprocess(check_images)] if check_images else []
            try:
                backend = build_backend(choice.name, detector.model, device=detector.device, calibration=calibration)
                log.info("backend %s (measured earlier on this machine): %s", choice.name, choice.reason)
                return backend, choice
            except BackendUnavailable:
                pass
    table, built = measure_backends(detector, check_images)
    choice = _choose(table)
    backend = built.get(choice.name) or build_backend("torch", detector.model, device=detector.device)
    log.info("backend %s: %s", choice.name, choice.reason)
    try:
        entries = json.loads(cache.read_text()) if cache.is_file() else {}
    except (OSError, ValueError):
        entries = {}
    entries[key] = {**asdict(choice), "candidates": [asdict(c) for c in table], "photographs": len(check_images)}
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entries, indent=2))
        tmp.replace(cache)
    except OSError as exc:
        log.warning("cannot cache the backend choice in %s: %s", cache, exc)
    return backend, choice
