"""TF1's legacy resize three ways, side by side: the bit-exact numpy reference, the fast path (OpenCV ``remap`` on
TF's coordinates) and, for comparison, OpenCV ``warpAffine`` with the equivalent matrix (the earlier fast path).

    python benchmarks/resize.py [--repeats 200]

For 640×480, 1280×720 and 3840×2160 noise images (uint8 RGB in, float32 300×300 out, one thread): ms per image,
the ratio to the reference, and the largest difference from the reference in grey levels. ``warpAffine``'s
difference depends on the CPU's dispatch (how it splits coordinates into integer and fraction), which is why the
service uses ``remap``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detector import defaults
from detector.machine import describe_cpu_line
from detector.preprocess import _resize_legacy_into, _resize_remap, fast_resize_available

SIZES = [(640, 480), (1280, 720), (1920, 1080), (2560, 1440), (3840, 2160)]


def _milliseconds(function: Callable[[], object], repeats: int) -> float:
    function()
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - start) / repeats * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=200)
    arguments = parser.parse_args()
    import cv2

    cv2.setNumThreads(1)
    size = defaults.IMAGE_SIZE
    print(describe_cpu_line())
    print(f"OpenCV {cv2.__version__}; fast path in use: {fast_resize_available()}")
    print("| image | exact (reference) ms | remap (used) ms | ×ref | off (grey levels) | warpAffine ms | ×ref | off |")
    print("|---|---|---|---|---|---|---|---|")
    scratch = np.empty((4, size, size, 3), dtype=np.float32)
    for width, height in SIZES:
        image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
        matrix = np.array([[width / size, 0.0, 0.0], [0.0, height / size, 0.0]])

        def warp(image: np.ndarray = image, matrix: np.ndarray = matrix) -> np.ndarray:
            flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
            resized = cv2.warpAffine(
                image.astype(np.float32), matrix, (size, size), flags=flags, borderMode=cv2.BORDER_REPLICATE
            )
            return np.asarray(resized)

        repeats = max(3, arguments.repeats * 640 * 480 // (width * height))
        reference = _resize_legacy_into(image, size, scratch).copy()
        cells = [f"{width}×{height}"]
        exact_ms = _milliseconds(lambda image=image: _resize_legacy_into(image, size, scratch), repeats)
        cells.append(f"{exact_ms:.3f}")
        for resize in (lambda image=image: _resize_remap(image, size), warp):
            milliseconds = _milliseconds(resize, repeats)
            off = float(np.abs(resize() - reference).max())
            cells += [f"{milliseconds:.3f}", f"{exact_ms / milliseconds:.2f}", f"{off:.1e}"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
