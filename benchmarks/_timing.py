"""Timing shared by the benchmarks that compare engines side by side (tf_vs_torch.py, xnnpack.py)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def time_batches(
    run: Callable[[Sequence[T]], object], items: Sequence[T], batch_size: int, repeats: int
) -> list[float]:
    """Seconds each of ``repeats`` calls of ``run`` took, on batches of ``batch_size`` sliding over ``items`` (so
    that consecutive calls see different inputs)."""
    times = []
    for r in range(repeats):
        start = (r * batch_size) % (len(items) - batch_size + 1)
        t0 = time.perf_counter()
        run(items[start : start + batch_size])
        times.append(time.perf_counter() - t0)
    return times
