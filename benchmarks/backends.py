"""Backends side by side on this machine: speed, the accuracy bar, and agreement with fp32; then the whole path.

    python benchmarks/backends.py [--weights coco] [--repeats 5] [--no-accuracy-control]

1. The network alone, ms/image at batch 1 and 8 and the speedup over eager PyTorch, for every engine and precision
   here (fp32, fp16, bf16, INT8 by NNCF's default post-training quantization and, unless
   ``--no-accuracy-control``, by ``nncf.quantize_with_accuracy_control``), each with its verdict on the accuracy bar
   (:mod:`detector.backends.accuracy`) and its detection agreement with fp32: COCO AP of its detections with fp32's
   as the ground truth (pycocotools), on the judging set (the sample photographs, their mirrored, rescaled and
   cropped variants, synthetic scenes: :func:`detector.samples.check_images`), and its AP on the hand-annotated
   sample photographs (tests/data/sample_photos_coco.json).
2. End to end from JPEG bytes (640×480 camera-sized frames) to detections on ``auto``'s backend: decode,
   preprocess (the exact resize and the fast one), network and postprocess, ms/image at batch 1 and 8.

All in one run with the CPU's model and flags, so the ratios hold on a noisy machine.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detector import images
from detector.backends import accuracy
from detector.backends.factory import build_backend
from detector.errors import BackendUnavailable
from detector.inference import Detector
from detector.machine import describe_cpu_line
from detector.samples import ALL_PHOTOS, check_images, photo, samples_dir

ROOT = Path(__file__).resolve().parent.parent
ANNOTATED = ROOT / "tests" / "data" / "sample_photos_coco.json"
BACKENDS = ("torch", "onnxruntime", "openvino", "openvino-fp16", "openvino-bf16", "openvino-int8")


def best_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1000


def run_batches(run: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], batches: Sequence[np.ndarray]):
    outputs = [run(batch) for batch in batches]
    return np.concatenate([o[0] for o in outputs]), np.concatenate([o[1] for o in outputs])


def labelled_ap(detector: Detector, run) -> float:
    """COCO AP on the hand-annotated sample photographs (the COCO model only)."""
    from detector.training.coco import coco_api, read_coco_file
    from detector.training.evaluate import coco_evaluate

    document = read_coco_file(ANNOTATED)
    results = []
    for record in document["images"]:
        pixels = images.load_image(samples_dir() / record["file_name"])
        codes, logits = run(detector.preprocess([pixels]))
        (result,) = detector.postprocess(codes, logits, [pixels.shape[:2]], score_threshold=0.01)
        for det in result.detections:
            x1, y1, x2, y2 = det.box
            results.append(
                {"image_id": record["id"], "category_id": det.class_id, "bbox": [x1, y1, x2 - x1, y2 - y1],
                 "score": det.score}
            )  # fmt: skip
    truth = coco_api(document)
    evaluator, _ = coco_evaluate(
        truth, results, [i["id"] for i in document["images"]], [c["id"] for c in document["categories"]]
    )
    return float(evaluator.stats[0])


def accuracy_controlled_int8(detector: Detector, batches: list[np.ndarray], reference, names, sizes):
    """``nncf.quantize_with_accuracy_control``: INT8 with layers reverted to fp32 until the agreement AP with fp32
    drops by at most 0.01; returns (backend, seconds it took) or raises BackendUnavailable."""
    try:
        import nncf
        import openvino as ov
    except ImportError as exc:
        raise BackendUnavailable(f"needs NNCF: {exc}") from None
    from detector.backends.onnx import cached_onnx
    from detector.backends.openvino_backend import OpenVinoBackend, shared_core

    onnx = cached_onnx(detector.model, detector.digest[:16])
    samples = [image[None] for batch in batches for image in batch]

    def validate(compiled, data) -> float:
        outputs = [compiled(sample) for sample in data]
        codes = np.concatenate([np.asarray(o[0]) for o in outputs])
        logits = np.concatenate([np.asarray(o[1]) for o in outputs])
        got = detector.postprocess(codes, logits, sizes, score_threshold=accuracy.CANDIDATE_SCORE)
        return accuracy.agreement_ap(reference, got)

    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        quantized = nncf.quantize_with_accuracy_control(
            shared_core().read_model(str(onnx)),
            nncf.Dataset(samples),
            nncf.Dataset(samples),
            validate,
            max_drop=0.01,
            drop_type=nncf.DropType.ABSOLUTE,
            subset_size=len(samples),
        )
    target = onnx.with_name(f"{onnx.stem}-int8-accuracy-control.xml")
    ov.save_model(quantized, str(target), compress_to_fp16=False)
    return OpenVinoBackend(target, precision="int8"), time.perf_counter() - started


def camera_frames(count: int = 16) -> list[bytes]:
    """640×480 JPEG frames (quality 90) made from the sample photographs."""
    frames = []
    for name in list(ALL_PHOTOS)[:count]:
        frame = Image.fromarray(images.load_image(photo(name))).resize((640, 480))
        buffer = io.BytesIO()
        frame.save(buffer, format="JPEG", quality=90)
        frames.append(buffer.getvalue())
    return (frames * ((count + len(frames) - 1) // len(frames)))[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="coco")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-accuracy-control", action="store_true", help="skip the (minutes long) NNCF AAQ run")
    args = parser.parse_args()
    print(describe_cpu_line())

    reference = Detector.from_weights(args.weights)
    judged = check_images()
    names, arrays = list(judged), list(judged.values())
    sizes = [a.shape[:2] for a in arrays]
    batches = [reference.preprocess(arrays[i : i + 8], exact=True) for i in range(0, len(arrays), 8)]
    ref_dets = reference.postprocess(
        *run_batches(reference.model_outputs, batches), sizes, score_threshold=accuracy.CANDIDATE_SCORE
    )
    timing8 = batches[0]
    labelled = ANNOTATED.is_file() and args.weights == "coco"

    engines: dict[str, object] = {}
    notes: dict[str, str] = {}
    for name in BACKENDS:
        try:
            started = time.perf_counter()
            engines[name] = build_backend(name, reference.model, calibration=batches, key=reference.digest[:16])
            if name == "openvino-int8":
                notes[name] = (
                    f"NNCF default PTQ (MIXED preset, {len(arrays)} images): {time.perf_counter() - started:.0f} s"
                )
        except BackendUnavailable as exc:
            print(f"{name}: unavailable ({exc})")
    if not args.no_accuracy_control and "openvino-int8" in engines:
        try:
            engine, seconds = accuracy_controlled_int8(reference, batches, ref_dets, names, sizes)
            engines["openvino-int8 (accuracy control)"] = engine
            notes["openvino-int8 (accuracy control)"] = (
                f"quantize_with_accuracy_control, max drop 0.01: {seconds:.0f} s"
            )
        except Exception as exc:  # NNCF raises many kinds; the table says what happened
            print(f"accuracy-controlled INT8 failed: {type(exc).__name__}: {exc}")

    print(
        f"\n## Network alone on {args.weights} (ms/image, best of {args.repeats}); accuracy on {len(arrays)} images\n"
    )
    print("| backend | batch 1 | batch 8 | speedup b8 vs torch | accuracy bar | agreement AP vs fp32 |"
          + (" AP, annotated photos |" if labelled else ""))  # fmt: skip
    print("|---|---|---|---|---|---|" + ("---|" if labelled else ""))
    base = None
    for name, engine in engines.items():
        repeats = max(2, args.repeats // 2) if name == "torch" else args.repeats
        b1 = best_ms(lambda e=engine: [e(timing8[i : i + 1]) for i in range(8)], repeats) / 8
        b8 = best_ms(lambda e=engine: e(timing8), repeats) / 8
        base = base or b8
        got = reference.postprocess(*run_batches(engine, batches), sizes, score_threshold=accuracy.CANDIDATE_SCORE)
        judged = accuracy.judge(ref_dets, got, names)
        verdict = ("meets" if judged.passed else "fails") + f": {len(judged.lost)} confident lost"
        row = f"| {name} | {b1:.2f} | {b8:.2f} | {base / b8:.1f}× | {verdict} | {judged.agreement_ap:.4f} |"
        if labelled:
            row += f" {labelled_ap(reference, engine):.3f} |"
        print(row)
    for name, note in notes.items():
        print(f"- {name}: {note}")

    detector = Detector.from_weights(args.weights, backend="auto")
    print(f"\n## End to end on auto's backend ({detector.backend.name}): 640×480 JPEG bytes → detections, ms/image\n")
    jpegs = camera_frames(16)
    print("| batch | decode | preprocess (exact) | preprocess (fast) | network | postprocess | total (fast) | img/s |")
    print("|---|---|---|---|---|---|---|---|")
    for batch_size in (1, 8):
        stats: dict[str, float] = {}
        for _ in range(args.repeats):
            t = {}
            start = time.perf_counter()
            decoded = [images.load_image(j) for j in jpegs]
            t["decode"] = time.perf_counter() - start
            chunks = [decoded[i : i + batch_size] for i in range(0, len(decoded), batch_size)]
            start = time.perf_counter()
            [detector.preprocess(c, exact=True) for c in chunks]
            t["exact"] = time.perf_counter() - start
            start = time.perf_counter()
            prepared = [detector.preprocess(c) for c in chunks]
            t["fast"] = time.perf_counter() - start
            start = time.perf_counter()
            raws = [detector.predict_raw(b) for b in prepared]
            t["network"] = time.perf_counter() - start
            start = time.perf_counter()
            for chunk, raw in zip(chunks, raws, strict=True):
                detector.postprocess(*raw, [a.shape[:2] for a in chunk])
            t["post"] = time.perf_counter() - start
            stats = {k: min(v, stats.get(k, v)) for k, v in t.items()}
        n = len(jpegs)
        total = stats["decode"] + stats["fast"] + stats["network"] + stats["post"]
        print(
            f"| {batch_size} | {stats['decode'] * 1000 / n:.2f} | {stats['exact'] * 1000 / n:.2f} | "
            f"{stats['fast'] * 1000 / n:.2f} | {stats['network'] * 1000 / n:.2f} | {stats['post'] * 1000 / n:.2f} | "
            f"{total * 1000 / n:.2f} | {n / total:.0f} |"
        )
    print(json.dumps({"auto": detector.backend.name, "reason": detector.backend_reason[:200]}))


if __name__ == "__main__":
    main()
