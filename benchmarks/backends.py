"""Backends side by side on this machine: the network alone and the whole request path (JPEG bytes → detections).

    python benchmarks/backends.py [--repeats 5]

Prints, for each available backend, ms/image at batch 1 and 8 and the speedup over eager PyTorch; then the end-to-end
figure at batch 1 and 8 and its split into decode, preprocess, network and postprocess, for eager PyTorch on the path
as it was before issue 6 (Pillow decoding, the torch resize, a per-image postprocess decoding every anchor), eager
PyTorch on today's path, and the backend ``auto`` picks. All in one run, so the ratios hold on a noisy machine.
The images are the sample photographs (detector/samples.py) re-encoded as JPEG, quality 90.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detector import images
from detector.backends.accuracy import MATCH_SCORE, compare_detections
from detector.backends.base import REDUCED_PRECISION
from detector.backends.factory import build_backend
from detector.box_coding import decode_boxes
from detector.errors import BackendUnavailable
from detector.inference import Detector
from detector.preprocess import resize_bilinear_legacy
from detector.samples import PHOTOS, photo

BACKENDS = ("torch", "onnxruntime", "openvino", "openvino-bf16", "openvino-int8")


def best_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1000


# --- the path before issue 6, kept here to measure against ----------------------------------------------------------


def preprocess_before(arrays: list[np.ndarray]) -> torch.Tensor:
    batch = torch.empty((len(arrays), 3, 300, 300))
    for i, array in enumerate(arrays):
        resized = resize_bilinear_legacy(torch.from_numpy(array).to(torch.float32), (300, 300))
        batch[i] = (resized * torch.tensor(2.0 / 255.0, dtype=torch.float32) - 1.0).permute(2, 0, 1)
    return batch


def postprocess_before(detector: Detector, codes: torch.Tensor, logits: torch.Tensor, threshold: float) -> list:
    """detector/postprocess.py before issue 6: every anchor decoded, one candidate search per image."""
    from torchvision.ops import batched_nms, box_area, clip_boxes_to_image

    boxes = decode_boxes(codes, detector.anchors)
    scores = torch.sigmoid(logits)[..., 1:]
    num_foreground = scores.shape[-1]
    results = []
    for image_boxes, image_scores in zip(boxes, scores, strict=True):
        flat_scores = image_scores.reshape(-1)
        candidates = torch.nonzero(flat_scores > threshold).squeeze(1)
        cand_scores = flat_scores[candidates]
        cand_boxes = image_boxes[candidates // num_foreground]
        cand_labels = candidates % num_foreground + 1
        keep = batched_nms(cand_boxes, cand_scores, cand_labels, 0.6)
        kept_boxes = clip_boxes_to_image(cand_boxes[keep], (1, 1))
        valid = box_area(kept_boxes) > 0
        results.append((kept_boxes[valid][:100], cand_scores[keep][valid][:100], cand_labels[keep][valid][:100]))
    return results


# --- measurements -----------------------------------------------------------------------------------------------------


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return (time.perf_counter() - start) * 1000, result


def one_round(detector: Detector, jpegs: list[bytes], batch_size: int, before: bool) -> dict[str, float]:
    """ms/image of each stage, once, over all ``jpegs`` in batches of ``batch_size``; then the whole path at once
    (``detect``, or for the path before issue 6 the stages run back to back)."""
    saved = images.simplejpeg
    if before:
        images.simplejpeg = None  # Pillow decoding, as before the fast path
    try:
        decode, arrays = timed(lambda: [images.load_image(j) for j in jpegs])
    finally:
        images.simplejpeg = saved
    chunks = [arrays[i : i + batch_size] for i in range(0, len(arrays), batch_size)]
    pre, batches = timed(lambda: [(preprocess_before if before else detector.preprocess)(c) for c in chunks])
    net, raws = timed(lambda: [detector.predict_raw(b) for b in batches])
    if before:
        post, _ = timed(lambda: [postprocess_before(detector, *r, 0.5) for r in raws])
        total = decode + pre + net + post
    else:
        sizes = [[a.shape[:2] for a in c] for c in chunks]
        post, _ = timed(lambda: [detector.postprocess(*r, s) for r, s in zip(raws, sizes, strict=True)])
        total, _ = timed(lambda: detector.detect(jpegs, batch_size=batch_size))
    n = len(jpegs)
    return {
        "decode": decode / n,
        "preprocess": pre / n,
        "network": net / n,
        "postprocess": post / n,
        "total": total / n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    arrays = [images.load_image(photo(name)) for name in PHOTOS]
    jpegs = []
    for array in [*arrays, arrays[0]][:8]:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG", quality=90)
        jpegs.append(buffer.getvalue())

    reference = Detector.from_weights()
    batch8 = reference.preprocess([images.load_image(j) for j in jpegs])
    photos_batch = reference.preprocess(arrays)
    sizes = [a.shape[:2] for a in arrays]
    ref_dets = reference.postprocess(*reference.predict_raw(photos_batch), sizes, score_threshold=MATCH_SCORE)

    print("\n## Network alone (ms/image, best of", args.repeats, "runs)\n")
    print("| backend | batch 1 | batch 8 | speedup b8 vs torch | accuracy on the photos |")
    print("|---|---|---|---|---|")
    built, base, per_photo = {}, None, {}
    for name in BACKENDS:
        try:
            backend = build_backend(name, reference.model, calibration=[photos_batch])
        except BackendUnavailable as exc:
            print(f"| {name} | - | - | - | unavailable: {exc} |")
            continue
        repeats = max(2, args.repeats // 2) if name == "torch" else args.repeats
        b1 = best_ms(lambda backend=backend: [backend(batch8[i : i + 1]) for i in range(8)], repeats) / 8
        b8 = best_ms(lambda backend=backend: backend(batch8), repeats) / 8
        base = base or b8
        agreement = compare_detections(
            ref_dets, reference.postprocess(*backend(photos_batch), sizes, score_threshold=MATCH_SCORE), list(PHOTOS)
        )
        verdict = ("meets the bar: " if agreement.passed else "FAILS the bar: ") + agreement.summary()
        print(f"| {name} | {b1:.1f} | {b8:.1f} | {base / b8:.1f}× | {verdict} |")
        built[name] = (backend, b8, agreement.passed)
        if name in REDUCED_PRECISION:
            got = reference.postprocess(*backend(photos_batch), sizes, score_threshold=MATCH_SCORE)
            per_photo[name] = [
                (photo_name, compare_detections([r], [g], [photo_name]))
                for photo_name, r, g in zip(PHOTOS, ref_dets, got, strict=True)
            ]

    print("\n## Reduced precision per photograph (detections above 0.3 vs eager PyTorch fp32)\n")
    print("| backend | photo | matched | max box diff (px) | max score diff | lost / extra |")
    print("|---|---|---|---|---|---|")
    for name, rows in per_photo.items():
        for photo_name, a in rows:
            misses = "; ".join(a.lost + a.extra) or "none"
            print(f"| {name} | {photo_name} | {a.matched} | {a.max_box_px:.2f} | {a.max_score_diff:.4f} | {misses} |")

    eligible = [n for n, (_, _, ok) in built.items() if ok]
    fastest = min(eligible, key=lambda n: built[n][1])
    print(f"\nfastest meeting the bar: {fastest}")

    print("\n## End to end: JPEG bytes → detections (ms/image)\n")
    print("| path | batch | decode | preprocess | network | postprocess | total | images/s | vs eager before |")
    print("|---|---|---|---|---|---|---|---|---|")
    paths = [("eager torch, path before issue 6", "torch", True), ("eager torch, path now", "torch", False)]
    paths.append((f"{fastest}, path now", fastest, False))
    # Rounds alternate between the paths, so a burst of load from elsewhere hits them alike; best round per stage.
    best: dict[tuple[str, int], dict[str, float]] = {}
    for round_index in range(args.repeats + 1):
        for label, name, before in paths:
            reference.backend = built[name][0]
            for batch_size in (1, 8):
                times = one_round(reference, jpegs, batch_size, before)
                if round_index == 0:
                    continue  # warm-up
                key = (label, batch_size)
                best[key] = {k: min(v, best.get(key, {}).get(k, v)) for k, v in times.items()}
    first = best[(paths[0][0], 8)]["total"]
    for (label, batch_size), s in best.items():
        print(
            f"| {label} | {batch_size} | {s['decode']:.2f} | {s['preprocess']:.2f} | {s['network']:.2f} | "
            f"{s['postprocess']:.2f} | {s['total']:.2f} | {1000 / s['total']:.0f} | {first / s['total']:.1f}× |"
        )
    fast_total = best[(paths[2][0], 8)]["total"]
    now = best[(paths[1][0], 8)]["total"] / fast_total
    print(
        f"\nbatch 8 end to end: {fastest} is {now:.1f}× eager PyTorch on today's path, {first / fast_total:.1f}× before"
    )


if __name__ == "__main__":
    main()
