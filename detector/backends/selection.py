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

import numpy as np
import torch

from detector.backends.accuracy import MATCH_SCORE, compare_detections
from detector.backends.base import REDUCED_PRECISION, Backend
from detector.backends.factory import build_backend
from detector.backends.onnx import RAW_TOLERANCE, check_batch, max_abs_diff
from detector.cache import cache_dir, write_atomic
from detector.errors import BackendUnavailable
from detector.model import SSDLite
from detector.postprocess import detections_in_pixels
from detector.preprocess import preprocess
from detector.results import ImageDetections
from detector.spec import ModelSpec

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


def _reference(network: SSDLite, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    device = next(network.parameters()).device
    with torch.inference_mode():
        return network(batch.to(device))


def _detections(
    outputs: tuple[torch.Tensor, torch.Tensor], network: SSDLite, spec: ModelSpec, sizes: list[tuple[int, int]]
) -> list[ImageDetections]:
    return detections_in_pixels(
        *outputs, network.anchors, spec.postprocessing, spec.labels, sizes, score_threshold=MATCH_SCORE
    )


def measure_backends(
    network: SSDLite,
    spec: ModelSpec,
    check_images: Sequence[np.ndarray] = (),
    names: Sequence[str] | None = None,
    *,
    device: str | torch.device = "cpu",
) -> tuple[list[Candidate], dict[str, Backend]]:
    """Build, check and time each backend in ``names`` (default: :func:`candidate_names`) for ``network`` (the
    eval-mode, batch-norm-folded network on ``device``), against that network in eager PyTorch fp32.

    Returns the table and the backends built.
    """
    names = list(names or candidate_names(device))
    probe = check_batch(spec.image_size)
    reference_raw = _reference(network, probe)
    pre = spec.preprocessing
    photos = preprocess(check_images, spec.image_size, pre.pixel_scale, pre.pixel_offset) if check_images else None
    sizes = [(image.shape[0], image.shape[1]) for image in check_images]
    reference_detections = None
    if photos is not None:
        reference_detections = _detections(_reference(network, photos), network, spec, sizes)
    timing = probe.repeat((TIMING_BATCH + 1) // 2, 1, 1, 1)[:TIMING_BATCH]
    table, built = [], {}
    for name in names:
        try:
            backend = build_backend(name, network, device=device, calibration=[photos] if photos is not None else [])
        except BackendUnavailable as exc:
            table.append(Candidate(name, None, f"unavailable: {exc}", False))
            continue
        if name in REDUCED_PRECISION:
            if photos is None or reference_detections is None:
                table.append(Candidate(name, _time_per_image(backend, timing), "not checked: no photographs", False))
                continue
            agreement = compare_detections(reference_detections, _detections(backend(photos), network, spec, sizes))
            accuracy, eligible = agreement.summary(), agreement.passed
        else:
            diff = max_abs_diff(reference_raw, backend(probe))
            accuracy, eligible = f"raw max abs diff {diff:.1e}", diff <= RAW_TOLERANCE
        table.append(Candidate(name, _time_per_image(backend, timing), accuracy, eligible))
        built[name] = backend
    return table, built


def _speed(candidate: Candidate) -> float:
    return candidate.ms_per_image if candidate.ms_per_image is not None else float("inf")


def _choose(table: Sequence[Candidate]) -> Choice:
    eligible = sorted((c for c in table if c.eligible and c.ms_per_image is not None), key=_speed)
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


def _cache_key(spec: ModelSpec, digest: str, device: str | torch.device) -> str:
    key = hashlib.sha256(json.dumps(machine_fingerprint(device), sort_keys=True).encode())
    key.update(digest.encode() or spec.to_json().encode())
    return key.hexdigest()[:24]


def select_backend(
    network: SSDLite,
    spec: ModelSpec,
    check_images: Sequence[np.ndarray] = (),
    *,
    digest: str = "",
    device: str | torch.device = "cpu",
    use_cache: bool = True,
) -> tuple[Backend, Choice]:
    """The backend ``auto`` picks for ``network`` here, built, and the choice (from the cache when it holds one).

    Args:
        network: the eval-mode, batch-norm-folded network on ``device``.
        spec: its spec (input size, preprocessing, postprocessing, labels).
        check_images: RGB uint8 photographs to judge reduced-precision backends on (and calibrate int8).
        digest: the weights file's SHA-256, part of the cache key (the spec's JSON stands in without one).
    """
    cache = cache_dir() / CACHE_FILE
    key = _cache_key(spec, digest, device)
    pre = spec.preprocessing
    if use_cache:
        try:
            entry = json.loads(cache.read_text()).get(key)
        except (OSError, ValueError):
            entry = None
        if entry and (entry.get("photographs", 0) or not check_images):
            choice = Choice(entry["name"], entry["reason"], tuple(Candidate(**c) for c in entry["candidates"]))
            calibration = (
                [preprocess(check_images, spec.image_size, pre.pixel_scale, pre.pixel_offset)] if check_images else []
            )
            try:
                backend = build_backend(choice.name, network, device=device, calibration=calibration)
                log.info("backend %s (measured earlier on this machine): %s", choice.name, choice.reason)
                return backend, choice
            except BackendUnavailable:
                pass
    table, built = measure_backends(network, spec, check_images, device=device)
    choice = _choose(table)
    backend = built.get(choice.name) or build_backend("torch", network, device=device)
    log.info("backend %s: %s", choice.name, choice.reason)
    try:
        entries = json.loads(cache.read_text()) if cache.is_file() else {}
    except (OSError, ValueError):
        entries = {}
    entries[key] = {**asdict(choice), "candidates": [asdict(c) for c in table], "photographs": len(check_images)}
    try:
        write_atomic(cache, json.dumps(entries, indent=2))
    except OSError as exc:
        log.warning("cannot cache the backend choice in %s: %s", cache, exc)
    return backend, choice
