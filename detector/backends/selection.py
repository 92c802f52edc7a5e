"""``auto``: the fastest backend that meets the accuracy bar on this machine, measured once and remembered.

Each available backend is built, held to its bar (:mod:`detector.backends.accuracy`) against eager PyTorch and
timed at batch 8; the fastest that passes wins. Reduced-precision backends need photographs to be judged on
(``check_images``); without them they are refused, never trusted. INT8 is only tried when the caller opts in
(``allow_int8``): post-training quantization moves scores and boxes enough that it is a choice to make knowingly,
and even then it must pass the same bar. The outcome is cached per machine (CPU model and flags, core count, engine
versions, GPU) and weights in ``<cache dir>/backend-choice.json``, so a restart builds the winner directly instead
of measuring again — from the weights' cached ONNX export, without torch, where the winner runs it as it is. A
choice made with photographs serves callers without any (it was checked more strictly); one made without
photographs is re-measured for a caller that brings some. ``detector backends`` re-measures, prints the table and
caches the choice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import TYPE_CHECKING

import numpy as np

from detector.backends.accuracy import MATCH_SCORE, compare_detections
from detector.backends.base import REDUCED_PRECISION, Backend
from detector.backends.factory import build_backend
from detector.backends.onnx import RAW_TOLERANCE, check_batch, max_abs_diff
from detector.cache import cache_dir, write_atomic
from detector.errors import BackendUnavailable
from detector.machine import cpu_description
from detector.postprocess import detections_in_pixels
from detector.preprocess import preprocess
from detector.results import ImageDetections
from detector.spec import ModelSpec

if TYPE_CHECKING:
    from detector.model import SSDLite

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


def _is_cuda(device: str) -> bool:
    return str(device).startswith("cuda")


def candidate_names(device: str = "cpu", *, allow_int8: bool = False) -> list[str]:
    """The backends worth trying on ``device``: the CUDA ones on a GPU, the CPU engines otherwise."""
    if _is_cuda(device):
        return ["torch", "torch-fp16"]
    engines = ["torch", "onnxruntime", "openvino", "openvino-fp16", "openvino-bf16"]
    return [*engines, *(["openvino-int8"] if allow_int8 else [])]


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def machine_fingerprint(device: str = "cpu") -> dict[str, str]:
    """What makes a measurement valid: the CPU and its flags, cores, engine versions, GPU. Read without importing
    the engines (a process serving from the cache must stay lean)."""
    fingerprint = {
        **cpu_description(),
        "torch": _version("torch"),
        "onnxruntime": _version("onnxruntime"),
        "openvino": _version("openvino"),
    }
    if _is_cuda(device):
        import torch

        if torch.cuda.is_available():
            fingerprint["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return fingerprint


def _time_per_image(backend: Backend, batch: np.ndarray, repeats: int = 3) -> float:
    backend(batch)  # warm-up: first-call allocations, lazy compilation
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        backend(batch)
        best = min(best, time.perf_counter() - start)
    return best * 1000 / batch.shape[0]


def _reference(network: SSDLite, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import torch

    device = next(network.parameters()).device
    with torch.inference_mode():
        codes, logits = network(torch.from_numpy(batch).to(device))
    return codes.float().cpu().numpy(), logits.float().cpu().numpy()


def _detections(
    outputs: tuple[np.ndarray, np.ndarray], network: SSDLite, spec: ModelSpec, sizes: list[tuple[int, int]]
) -> list[ImageDetections]:
    anchors = network.anchors.cpu().numpy()
    return detections_in_pixels(*outputs, anchors, spec.postprocessing, spec.labels, sizes, score_threshold=MATCH_SCORE)


def measure_backends(
    network: SSDLite,
    spec: ModelSpec,
    check_images: Sequence[np.ndarray] = (),
    names: Sequence[str] | None = None,
    *,
    device: str = "cpu",
    key: str | None = None,
    threads: int | None = None,
    allow_int8: bool = False,
) -> tuple[list[Candidate], dict[str, Backend]]:
    """Build, check and time each backend in ``names`` (default: :func:`candidate_names`) for ``network`` (the
    eval-mode, batch-norm-folded network on ``device``), against that network in eager PyTorch fp32.

    Photographs are judged in batches of 8 (the reference and the candidate alike). Returns the table and the
    backends built.
    """
    names = list(names or candidate_names(device, allow_int8=allow_int8))
    probe = check_batch(spec.image_size)
    reference_raw = _reference(network, probe)
    pre = spec.preprocessing
    batches = [
        preprocess(check_images[i : i + TIMING_BATCH], spec.image_size, pre.pixel_scale, pre.pixel_offset, exact=True)
        for i in range(0, len(check_images), TIMING_BATCH)
    ]
    sizes = [(image.shape[0], image.shape[1]) for image in check_images]

    def detections(run: Backend | None) -> list[ImageDetections]:
        outputs = [_reference(network, batch) if run is None else run(batch) for batch in batches]
        codes = np.concatenate([o[0] for o in outputs])
        logits = np.concatenate([o[1] for o in outputs])
        return _detections((codes, logits), network, spec, sizes)

    reference_detections = detections(None) if batches else None
    timing = np.repeat(probe, (TIMING_BATCH + 1) // 2, axis=0)[:TIMING_BATCH]
    table, built = [], {}
    for name in names:
        try:
            backend = build_backend(name, network, device=device, calibration=batches, key=key, threads=threads)
        except BackendUnavailable as exc:
            table.append(Candidate(name, None, f"unavailable: {exc}", False))
            continue
        if name in REDUCED_PRECISION:
            if reference_detections is None:
                table.append(Candidate(name, _time_per_image(backend, timing), "not checked: no photographs", False))
                continue
            agreement = compare_detections(reference_detections, detections(backend))
            accuracy = f"{agreement.summary()} on {len(check_images)} images"
            eligible = agreement.passed
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


def _cache_key(spec: ModelSpec, digest: str, device: str, allow_int8: bool) -> str:
    key = hashlib.sha256(json.dumps(machine_fingerprint(device), sort_keys=True).encode())
    key.update(digest.encode() or spec.to_json().encode())
    if allow_int8:  # a choice among more candidates is another choice
        key.update(b"int8")
    return key.hexdigest()[:24]


def cached_choice(
    spec: ModelSpec, digest: str, *, device: str = "cpu", with_photographs: bool = False, allow_int8: bool = False
) -> Choice | None:
    """The choice measured earlier on this machine for these weights, if any (one measured without photographs
    does not count for a caller that brings some: it was judged less strictly)."""
    try:
        entry = json.loads((cache_dir() / CACHE_FILE).read_text()).get(_cache_key(spec, digest, device, allow_int8))
    except (OSError, ValueError):
        return None
    if not entry or (with_photographs and not entry.get("photographs", 0)):
        return None
    return Choice(entry["name"], entry["reason"], tuple(Candidate(**c) for c in entry["candidates"]))


def select_backend(
    network: SSDLite,
    spec: ModelSpec,
    check_images: Sequence[np.ndarray] = (),
    *,
    digest: str = "",
    device: str = "cpu",
    threads: int | None = None,
    allow_int8: bool = False,
    use_cache: bool = True,
) -> tuple[Backend, Choice]:
    """The backend ``auto`` picks for ``network`` here, built, and the choice (from the cache when it holds one).

    Args:
        network: the eval-mode, batch-norm-folded network on ``device``.
        spec: its spec (input size, preprocessing, postprocessing, labels).
        check_images: RGB uint8 photographs to judge reduced-precision backends on (and calibrate int8).
        digest: the weights file's SHA-256, part of the cache key (the spec's JSON stands in without one) and the
            name of its exports.
        threads: CPU threads of the engine (default: the CPUs this process may use).
        allow_int8: also consider ``openvino-int8`` (opt-in; it must still meet the bar).
    """
    key = digest[:16] or None
    pre = spec.preprocessing
    choice = (
        cached_choice(spec, digest, device=device, with_photographs=bool(check_images), allow_int8=allow_int8)
        if use_cache
        else None
    )
    if choice is not None:
        calibration = (
            [preprocess(check_images, spec.image_size, pre.pixel_scale, pre.pixel_offset, exact=True)]
            if check_images
            else []
        )
        try:
            backend = build_backend(
                choice.name, network, device=device, calibration=calibration, key=key, threads=threads
            )
            log.info("backend %s (measured earlier on this machine): %s", choice.name, choice.reason)
            return backend, choice
        except BackendUnavailable:
            pass
    table, built = measure_backends(
        network, spec, check_images, device=device, key=key, threads=threads, allow_int8=allow_int8
    )
    choice = _choose(table)
    backend = built.get(choice.name) or build_backend("torch", network, device=device, threads=threads)
    log.info("backend %s: %s", choice.name, choice.reason)
    cache = cache_dir() / CACHE_FILE
    try:
        entries = json.loads(cache.read_text()) if cache.is_file() else {}
    except (OSError, ValueError):
        entries = {}
    entries[_cache_key(spec, digest, device, allow_int8)] = {
        **asdict(choice),
        "candidates": [asdict(c) for c in table],
        "photographs": len(check_images),
    }
    try:
        write_atomic(cache, json.dumps(entries, indent=2))
    except OSError as exc:
        log.warning("cannot cache the backend choice in %s: %s", cache, exc)
    return backend, choice
