"""The memory budget for decoded pixels: how many the service may hold at once, and the queue that shares them.

A request's cost in memory is its pixels, not its body: 16 parts of a flat 5000×5000 PNG are 1.3 MB on the wire and
1.2 GB decoded (RGB uint8, 3 bytes a pixel, kept until the model has run on them). Three such requests at once took
a replica to 2839 MiB, past the 2 GiB that compose and ``docker/k8s.yaml`` allow it, and left it at 1441 MiB (issue
17; benchmarks/memory.py). The image header gives the pixel count before any pixel is decoded
(``api.uploads.pixel_count``), so every request, of every model and protocol, reserves its pixels here first, decodes
only once they fit, and gives them back once its arrays are gone (``DetectionService.detecting``).

- :func:`pixel_budget` sizes the budget from the memory the process may use (:func:`memory_limit`: its cgroup's
  limit, else the machine's memory) less what it holds once its models are loaded; ``DETECTOR_MAX_INFLIGHT_PIXELS``
  overrides it.
- :class:`PixelBudget` shares it first come, first served: a request that does not fit waits, behind every request
  that came before it, until its deadline (then ``MemoryBusy``, 503 + Retry-After); one larger than the whole budget
  never fits (``OverMemoryBudget``, 413). Standard library only; no clock but asyncio's.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from api.errors import MemoryBusy, OverMemoryBudget

# A decoded image is RGB uint8: 3 bytes a pixel, held from decoding until the model has run on it.
BYTES_PER_PIXEL = 3
# The share of the memory left after loading the models that decoded pixels may take. The rest covers what decoding
# needs beside the arrays it returns, one image per decoding thread (OpenCV's BGR output before its conversion to
# RGB: 3 more bytes a pixel; Pillow's 4-byte-a-pixel image before numpy's copy), the engines' workspaces for batch
# shapes not seen yet (25-50 MB each), the request bodies, and the allocator's slack. With a 2 GiB limit and
# 223 MiB loaded this gives 482 M pixels: one request of 16 images of 5000×5000 (400 M) at a time, peaking at
# 1466-1533 MiB; three of 4 translucent ones at once (Pillow's path) at 1693 MiB (benchmarks/memory.py).
PIXEL_SHARE = 0.75
# After freeing a request of at least this many pixels (30 MB decoded, a 12 MP photo), hand the allocator's free
# memory back to the OS. Arrays above 32 MiB are unmapped when freed, but Pillow allocates images in 16 MiB blocks,
# which glibc keeps in its per-thread heaps: three requests at once of 4 translucent 5000×5000 PNGs left the
# service at 882 MiB without this (1392 after a second round), 296 MiB with it (idle: 223; benchmarks/memory.py
# --mode RGBA --parts 4).
TRIM_AFTER_PIXELS = 10_000_000
# cgroup v1 writes "no limit" as the largest page-aligned int64; anything at or above the machine's memory is none.
_CGROUP_LIMITS = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))


def physical_memory() -> int:
    """The machine's memory in bytes."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def memory_limit(limit_files: tuple[Path, ...] = _CGROUP_LIMITS) -> int:
    """The memory this process may use, in bytes: its cgroup's limit (v2 ``memory.max``, v1
    ``memory.limit_in_bytes``, as a container sees them), else the machine's memory."""
    limit = physical_memory()
    for path in limit_files:
        with contextlib.suppress(OSError, ValueError):
            text = path.read_text().strip()
            if text != "max":
                limit = min(limit, int(text))
    return limit


def resident_memory(status: Path = Path("/proc/self/status")) -> int:
    """This process's resident memory (``VmRSS``) in bytes; 0 where the kernel does not say."""
    with contextlib.suppress(OSError, ValueError):
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def return_free_memory() -> None:
    """Hand the memory the C allocator holds free back to the OS (glibc's ``malloc_trim``; nothing where there is
    none). Slow with much to return (200 ms a gigabyte): call it off the event loop."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim
    except AttributeError:  # not glibc (musl, macOS)
        return None


def pixel_budget(limit: int, resident: int = 0) -> int:
    """The decoded pixels a process limited to ``limit`` bytes, ``resident`` of them already in use, may hold at
    once: ``PIXEL_SHARE`` of the rest, at ``BYTES_PER_PIXEL`` (0 when nothing is left)."""
    return max(0, int((limit - resident) * PIXEL_SHARE) // BYTES_PER_PIXEL)


@dataclass(eq=False)
class _Waiter:
    pixels: int
    granted: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class PixelBudget:
    """``capacity`` pixels shared by the requests of one event loop, first come, first served.

    Invariant: ``in_use`` never exceeds ``capacity``, and a request is granted only after every request that began
    waiting before it (no overtaking: a large request is not starved by a stream of small ones that fit).

    Args:
        capacity: the most pixels reserved at once.
        max_waiting: the most requests waiting; beyond it, ``MemoryBusy`` at once.
        on_change: called with ``in_use`` whenever it changes (the metrics' gauge).
    """

    def __init__(self, capacity: int, *, max_waiting: int, on_change: Callable[[int], object] = lambda _: None):
        if capacity < 1:
            raise ValueError(f"a pixel budget needs a capacity of at least 1, got {capacity}")
        self.capacity = capacity
        self.max_waiting = max_waiting
        self.in_use = 0
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._on_change = on_change

    @property
    def waiting(self) -> int:
        """Requests waiting for their pixels."""
        return len(self._waiters)

    async def acquire(self, pixels: int, timeout_s: float) -> None:
        """Reserve ``pixels``, waiting at most ``timeout_s`` for them.

        Raises ``OverMemoryBudget`` when ``pixels`` exceeds the capacity, ``MemoryBusy`` when ``max_waiting``
        requests already wait or the time runs out. Cancelled while waiting, it reserves nothing.
        """
        if pixels > self.capacity:
            raise OverMemoryBudget(
                f"the images have {pixels} pixels together; this service decodes at most {self.capacity} at once: "
                "send fewer or smaller images per request"
            )
        if not self._waiters and self.in_use + pixels <= self.capacity:
            self._take(pixels)
            return
        if len(self._waiters) >= self.max_waiting:
            raise MemoryBusy(f"{len(self._waiters)} requests are already waiting for memory to decode; retry shortly")
        waiter = _Waiter(pixels)
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(max(0.0, timeout_s)):
                await waiter.granted
        except BaseException as exc:
            if waiter.granted.done() and not waiter.granted.cancelled():
                self.release(pixels)  # granted as the time ran out: not used, so given back
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
                self._grant()  # the head leaving may let the next ones in
            if isinstance(exc, TimeoutError):
                raise MemoryBusy(
                    "the memory for decoding stayed in use until the request's deadline; retry shortly"
                ) from None
            raise

    def release(self, pixels: int) -> None:
        """Give back ``pixels`` reserved by :meth:`acquire`, and grant the waiting requests that now fit, in order."""
        self.in_use -= pixels
        self._on_change(self.in_use)
        self._grant()

    def _take(self, pixels: int) -> None:
        self.in_use += pixels
        self._on_change(self.in_use)

    def _grant(self) -> None:
        while self._waiters:
            head = self._waiters[0]
            if head.granted.done():  # cancelled: its task removes it, or has
                self._waiters.popleft()
                continue
            if self.in_use + head.pixels > self.capacity:
                return
            self._waiters.popleft()
            self._take(head.pixels)
            head.granted.set_result(None)
