"""Measuring the engines for ``auto``: build each, hold it to its bar, time it; cache and print the table.

The reference is fp32 on the weights' ONNX export — ONNX Runtime where installed, else OpenVINO fp32, else eager
PyTorch — so that measuring needs no torch once the export exists (a lean container measures too); the tests pin
both engines to eager PyTorch on raw outputs. fp32 candidates must give the reference's raw outputs within
:data:`~detector.backends.onnx.RAW_TOLERANCE`; reduced-precision ones are judged by their detections on the check
photographs (:mod:`detector.backends.accuracy`). INT8 is calibrated on the same photographs (NNCF's default
post-training recipe) and judged like the others. Each engine is timed at batch 8 (what ``auto`` ranks by: the
service batches and bulk detection runs batches of 8) and at batch 1.

Run as ``python -m detector.backends.measure WEIGHTS [--json]`` by :func:`detector.backends.selection.choose`,
in a child process; ``detector backends`` calls :func:`measure` directly and prints the table.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from detector.backends import accuracy
from detector.backends.base import Backend
from detector.backends.onnx import RAW_TOLERANCE, check_batch, find_onnx, max_abs_diff, weights_key
from detector.backends.selection import ENGINE_PRECISION, Candidate, remember
from detector.errors import BackendUnavailable, DetectorError
from detector.postprocess import detections_in_pixels
from detector.preprocess import preprocess
from detector.results import ImageDetections
from detector.spec import ModelSpec

if TYPE_CHECKING:
    from detector.model import SSDLite

log = logging.getLogger("detector.backends")

TIMING_BATCH = 8


def candidate_names(device: str = "cpu") -> list[str]:
    """The engines worth trying on ``device``: the CUDA ones on a GPU, the CPU engines otherwise (eager PyTorch
    on the CPU is 2× slower than either fp32 engine: it is the fallback, not a candidate)."""
    if str(device).startswith("cuda"):
        return ["torch", "torch-fp16"]
    return ["onnxruntime", "openvino", "litert", "openvino-fp16", "openvino-bf16", "openvino-int8"]


@dataclass
class Workbench:
    """What measuring one weights file needs: its spec, its ONNX export (None on a GPU), a way to load the network
    (torch; only called where needed), the check photographs and where they came from, and its TFLite export (None
    on a GPU, or why it is missing)."""

    spec: ModelSpec
    onnx: Path | None
    load_network: Callable[[], SSDLite]
    images: Mapping[str, np.ndarray]
    device: str = "cpu"
    threads: int | None = None
    tflite: Path | str | None = None


def _time_ms(backend: Backend, batch: np.ndarray, repeats: int = 3) -> float:
    backend(batch)  # warm-up: first-call allocations, lazy compilation
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        backend(batch)
        best = min(best, time.perf_counter() - start)
    return best * 1000 / batch.shape[0]


def _reference(bench: Workbench) -> Backend:
    """fp32 on the export (ONNX Runtime, else OpenVINO), else eager PyTorch."""
    if bench.onnx is not None:
        for name in ("onnxruntime", "openvino"):
            try:
                return _build(name, bench, [])
            except BackendUnavailable:
                continue
    from detector.backends.factory import build_backend

    return build_backend("torch", bench.load_network(), device=bench.device, threads=bench.threads)


def _build(name: str, bench: Workbench, calibration: Sequence[np.ndarray]) -> Backend:
    """Engine ``name`` on the export where it runs one (int8: quantized from it), else from the network."""
    if bench.onnx is not None and name == "litert":
        from detector.backends.litert_backend import LiteRtBackend

        if not isinstance(bench.tflite, Path):
            raise BackendUnavailable(bench.tflite or "no TFLite export")
        return LiteRtBackend(bench.tflite, threads=bench.threads)
    if bench.onnx is not None and name in (
        "onnxruntime",
        "openvino",
        "openvino-fp16",
        "openvino-bf16",
        "openvino-int8",
    ):
        if name == "onnxruntime":
            from detector.backends.onnxruntime_backend import OnnxRuntimeBackend

            return OnnxRuntimeBackend(bench.onnx, threads=bench.threads)
        from detector.backends.factory import OPENVINO_PRECISIONS
        from detector.backends.openvino_backend import OpenVinoBackend, quantized_model

        precision = OPENVINO_PRECISIONS[name]
        path = quantized_model(bench.onnx, calibration) if precision == "int8" else bench.onnx
        return OpenVinoBackend(path, precision=precision, threads=bench.threads)
    from detector.backends.factory import build_backend

    return build_backend(name, bench.load_network(), device=bench.device, threads=bench.threads)


def _model_file(backend: Backend) -> str | None:
    path = getattr(backend, "path", None)
    return str(path) if path is not None else None


def detections_of(
    run: Backend,
    batches: Sequence[np.ndarray],
    spec: ModelSpec,
    sizes: Sequence[tuple[int, int]],
    *,
    min_score: float = accuracy.CANDIDATE_SCORE,
) -> list[ImageDetections]:
    """Detections (down to ``min_score``) of engine ``run`` on preprocessed ``batches``."""
    from detector.anchors import anchors_for

    outputs = [run(batch) for batch in batches]
    codes = np.concatenate([np.asarray(o[0], np.float32) for o in outputs])
    logits = np.concatenate([np.asarray(o[1], np.float32) for o in outputs])
    anchors = anchors_for(spec.image_size)
    return detections_in_pixels(
        codes, logits, anchors, spec.postprocessing, spec.labels, sizes, score_threshold=min_score
    )


def annotated_ap(run: Backend, spec: ModelSpec) -> float | None:
    """COCO AP@[.5:.95] of engine ``run`` on the hand-annotated sample photographs (the categories the model
    detects, matched by id and name); None where the annotations or photographs are not at hand."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from detector.images import load_image
    from detector.samples import annotations_file, photo

    path = annotations_file()
    if path is None:
        return None
    document = json.loads(path.read_text())
    categories = [
        c["id"] for c in document["categories"] if c["id"] < len(spec.labels) and spec.labels[c["id"]] == c["name"]
    ]
    if not categories:
        return None
    results = []
    for record in document["images"]:
        try:
            pixels = load_image(photo(record["file_name"]))
        except (OSError, DetectorError, KeyError):
            return None
        (found,) = detections_of(run, [_preprocess(spec, [pixels])], spec, [pixels.shape[:2]], min_score=0.01)
        results += [
            {"image_id": record["id"], "category_id": d.class_id, "score": d.score,
             "bbox": [d.box[0], d.box[1], d.box[2] - d.box[0], d.box[3] - d.box[1]]}
            for d in found.detections
        ]  # fmt: skip
    if not results:
        return 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = document
        truth.createIndex()
        evaluator = COCOeval(truth, truth.loadRes(results), "bbox")
        evaluator.params.catIds = categories
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[0])


def _preprocess(spec: ModelSpec, arrays: Sequence[np.ndarray]) -> np.ndarray:
    pre = spec.preprocessing
    return preprocess(arrays, spec.image_size, pre.pixel_scale, pre.pixel_offset, exact=True)


def measure(bench: Workbench, names: Sequence[str] | None = None, *, annotated: bool = False) -> list[Candidate]:
    """The table: each engine in ``names`` (default: :func:`candidate_names`) built, judged and timed; with
    ``annotated``, also the reference's and each engine's AP on the hand-annotated photographs."""
    names = list(names or candidate_names(bench.device))
    spec = bench.spec
    arrays = list(bench.images.values())
    batches = [_preprocess(spec, arrays[i : i + TIMING_BATCH]) for i in range(0, len(arrays), TIMING_BATCH)]
    sizes = [(image.shape[0], image.shape[1]) for image in arrays]
    reference = _reference(bench)
    probe = check_batch(spec.image_size)
    reference_raw = reference(probe)
    reference_detections = detections_of(reference, batches, spec, sizes) if batches else []
    timing = np.repeat(probe, TIMING_BATCH // 2, axis=0)
    table = []
    for name in names:
        precision = ENGINE_PRECISION[name]
        try:
            engine = _build(name, bench, batches)
        except (BackendUnavailable, DetectorError, RuntimeError, OSError) as exc:  # an engine that cannot build here
            table.append(Candidate(name, precision, None, f"unavailable: {exc}", False))
            continue
        timed = Candidate(
            name,
            precision,
            ms_per_image=_time_ms(engine, timing),
            accuracy="",
            eligible=False,
            ms_batch1=_time_ms(engine, probe[:1]),
            model_file=_model_file(engine),
            annotated_ap=annotated_ap(engine, spec) if annotated else None,
        )
        if precision == "fp32":
            diff = max_abs_diff(reference_raw, engine(probe))
            table.append(replace(timed, accuracy=f"raw max abs diff {diff:.1e}", eligible=diff <= RAW_TOLERANCE))
        elif not batches:
            table.append(replace(timed, accuracy="not checked: no check photographs"))
        else:
            found = detections_of(engine, batches, spec, sizes)
            verdict = accuracy.judge(reference_detections, found, list(bench.images))
            table.append(
                replace(
                    timed,
                    accuracy=verdict.summary(),
                    eligible=verdict.passed,
                    agreement_ap=verdict.agreement_ap,
                    lost=len(verdict.lost),
                )
            )
        del engine
    return table


def workbench(
    weights: Path, *, device: str = "cpu", threads: int | None = None, images: Mapping[str, np.ndarray] | None = None
) -> Workbench:
    """A workbench for ``weights``: exports the network to ONNX first where the export is missing (needs torch), and
    to TFLite where LiteRT is installed; ``images`` default to :func:`detector.samples.check_images` (none where
    they cannot be had, with a warning)."""
    from detector.cache import file_digest
    from detector.weights import read_spec

    spec = read_spec(weights)
    key = weights_key(file_digest(weights))
    network: list[SSDLite] = []

    def load_network() -> SSDLite:
        if not network:
            from detector.model import inference_network
            from detector.weights import load_weights

            network.append(inference_network(load_weights(weights).model, device))
        return network[0]

    onnx = None
    if not str(device).startswith("cuda"):
        onnx = find_onnx(key)
        if onnx is None:
            from detector.backends.onnx import cached_onnx

            onnx = cached_onnx(load_network(), key)
    tflite = _tflite_export(key, load_network) if onnx is not None else None  # None on a GPU, like onnx
    if images is None:
        try:
            from detector.samples import check_images

            images = check_images()
        except (OSError, DetectorError, RuntimeError, ValueError) as exc:  # no photographs here (no network, say)
            log.warning("no check photographs (%s): reduced precision is not considered", exc)
            images = {}
    return Workbench(spec, onnx, load_network, images, device, threads, tflite)


def _tflite_export(key: str, load_network: Callable[[], SSDLite]) -> Path | str:
    """The cached TFLite export of ``key``, written now where it is missing; else why it cannot be had (litert is
    then measured as unavailable, with that reason)."""
    from detector.backends.tflite_export import INSTALL_HINT, cached_tflite, find_tflite

    if importlib.util.find_spec("ai_edge_litert") is None:
        return INSTALL_HINT
    try:
        return find_tflite(key) or cached_tflite(load_network(), key)
    except DetectorError as exc:
        return f"no TFLite export: {exc}"
    except ImportError as exc:  # no torch (the lean image) and no export made where it was
        return f"no TFLite export, and writing one needs torch: {exc}"


def main(argv: Sequence[str] | None = None) -> int:
    """The child process of :func:`detector.backends.selection.choose`: measure, cache, print the table."""
    parser = argparse.ArgumentParser(prog="python -m detector.backends.measure", description=__doc__.split("\n")[0])
    parser.add_argument("weights", type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--json", action="store_true", help="print the table as one JSON line")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    try:
        from detector.cache import file_digest

        bench = workbench(args.weights, device=args.device, threads=args.threads)
        table = measure(bench)
        remember(table, bench.spec, file_digest(args.weights), device=args.device)
    except DetectorError as exc:
        print(f"measure: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([asdict(row) for row in table]))
    else:
        for row in table:
            print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
