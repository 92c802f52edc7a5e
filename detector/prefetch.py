"""A producer thread working ahead of its consumer, through a bounded queue.

The command line decodes images and video frames ahead of the network (:mod:`detector.cli.detect_inputs`), and the
GPU pipeline reads and stages batches ahead of the device (:mod:`detector.gpu.pipeline`): both run a generator in a
thread of its own, at most ``depth`` items ahead, hand its exception to the consumer, and stop it when the consumer
stops. The queue's bound is what bounds the decoded pixels held in memory.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

_DONE = object()


class Prefetched(Generic[T]):
    """The items of ``produce()``, made in a thread named ``name`` at most ``depth`` items ahead of the consumer.

    Iterating yields them in order and raises whatever ``produce`` raised, where it raised it. :meth:`close` (also on
    leaving a ``with`` block) stops the producer before it makes another item and waits for its thread.
    """

    def __init__(self, produce: Callable[[], Iterable[T]], *, depth: int, name: str) -> None:
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, args=(produce,), name=name, daemon=True)
        self._thread.start()

    def _put(self, item: object) -> bool:
        """Queue ``item`` unless the consumer stops first (then False)."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self, produce: Callable[[], Iterable[T]]) -> None:
        try:
            items = iter(produce())
            while not self._stop.is_set():
                item = next(items, _DONE)
                if not self._put(item) or item is _DONE:
                    return
        except BaseException as exc:  # handed to the consumer, which raises it
            self._put(exc)

    def __iter__(self) -> Iterator[T]:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> Prefetched[T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
