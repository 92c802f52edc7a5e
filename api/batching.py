"""Dynamic batching: concurrent requests share forward passes, run by one dedicated inference thread.

Requests enter a bounded queue (full: ``QueueFull``, answered 503 + Retry-After). The worker takes the oldest job,
then keeps adding queued jobs up to ``max_batch_size`` images. It waits up to ``max_wait_ms`` for more only while
other requests are known to be on their way (admitted and being decoded, see ``arriving``): a lone request at low
load runs at once instead of paying the wait, and a burst still fills a batch. This is Triton's ``max_queue_delay``
made adaptive, in the spirit of BentoML's adaptive batching, without learning a window.

Each job has a deadline. A job still queued at its deadline is dropped without work (``QueueTimeout``, 503); the
waiting side (``Batcher.wait``) gives up at the deadline too, answering 504 if the model had already started.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from api.errors import DeadlineExceeded, Draining, InternalError, QueueFull, QueueTimeout
from api.metrics import Metrics
from detector.results import ImageDetections

log = logging.getLogger("api.batching")


class BatchModel(Protocol):
    """What the batcher needs from a detector (``detector.inference.Detector`` is one)."""

    def preprocess(self, arrays: Sequence[np.ndarray]) -> Any: ...

    def predict_raw(self, batch: Any) -> tuple[Any, Any]: ...

    def postprocess(
        self,
        box_codes: Any,
        class_logits: Any,
        sizes: Sequence[tuple[int, int]],
        *,
        score_threshold: float,
        max_detections: int | None = None,
    ) -> list[ImageDetections]: ...


@dataclass(frozen=True)
class BatchResult:
    """One job's detections (one per image, in order) and where its time went."""

    detections: list[ImageDetections]
    queue_s: float
    inference_s: float
    batch_size: int


@dataclass
class Job:
    """One request's images (decoded RGB uint8 arrays) and its postprocessing options."""

    arrays: list[np.ndarray]
    score_threshold: float
    max_detections: int | None
    deadline: float
    enqueued_at: float = 0.0
    future: Future[BatchResult] = field(default_factory=Future)

    @property
    def size(self) -> int:
        return len(self.arrays)


def _concatenate(parts: Sequence[Any]) -> Any:
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(list(parts))
    return np.concatenate(parts)


class Batcher:
    """A bounded job queue and the thread that runs its jobs through ``model`` in batches.

    Args:
        model: the detector.
        max_batch_size: most images in one forward pass (a larger single job is run in slices of this size).
        max_wait_ms: how long a batch waits for requests that are still arriving.
        queue_size: most jobs waiting; ``submit`` raises ``QueueFull`` beyond it.
        threads: torch intra-op threads of the worker.
        metrics: where queue depth, waits, inference time and batch sizes are recorded.
    """

    def __init__(
        self,
        model: BatchModel,
        *,
        max_batch_size: int,
        max_wait_ms: float,
        queue_size: int,
        threads: int,
        metrics: Metrics,
    ):
        self.model = model
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.queue_size = queue_size
        self.threads = threads
        self.metrics = metrics
        self._queue: collections.deque[Job] = collections.deque()
        self._arriving = 0
        self._closing = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="inference-worker", daemon=True)

    # --- the request side -------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the inference thread."""
        self._thread.start()

    @property
    def alive(self) -> bool:
        """Whether the inference thread is running."""
        return self._thread.is_alive()

    @property
    def depth(self) -> int:
        """Jobs waiting in the queue."""
        return len(self._queue)

    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Announce a request that will be submitted soon (while it is decoded), so a forming batch waits for it."""
        with self._cond:
            self._arriving += 1
        try:
            yield
        finally:
            with self._cond:
                self._arriving -= 1
                self._cond.notify_all()

    def submit(self, job: Job) -> Future[BatchResult]:
        """Queue ``job``; raises ``QueueFull`` when the queue is full, ``Draining`` once closing."""
        with self._cond:
            if self._closing:
                raise Draining("the service is shutting down; retry on another replica")
            if len(self._queue) >= self.queue_size:
                raise QueueFull(f"the queue is full ({self.queue_size} requests waiting); retry shortly")
            job.enqueued_at = time.monotonic()
            self._queue.append(job)
            self.metrics.queue_depth.set(len(self._queue))
            self._cond.notify_all()
        return job.future

    async def wait(self, job: Job, future: Future[BatchResult]) -> BatchResult:
        """Wait for a submitted job until its deadline (then ``QueueTimeout`` or ``DeadlineExceeded``)."""
        try:
            return await asyncio.wait_for(
                asyncio.shield(asyncio.wrap_future(future)), timeout=max(0.0, job.deadline - time.monotonic())
            )
        except TimeoutError:
            if future.cancel():  # never started: it costs the model nothing
                raise QueueTimeout("the request waited in the queue past its deadline; retry shortly") from None
            raise DeadlineExceeded("the model did not finish this request before its deadline") from None
        except asyncio.CancelledError:
            future.cancel()
            raise

    def close(self, timeout: float | None = None) -> None:
        """Refuse new jobs, finish the queued ones, and stop the thread (waiting at most ``timeout`` seconds)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # --- the worker side --------------------------------------------------------------------------------------

    def _run(self) -> None:
        torch.set_num_threads(self.threads)
        while True:
            jobs = self._next_batch()
            if not jobs:
                return
            self._run_batch(jobs)

    def _next_batch(self) -> list[Job]:
        """Wait for a job, then gather more up to ``max_batch_size`` images; [] once closing and empty."""
        with self._cond:
            while not self._queue:
                if self._closing:
                    return []
                self._cond.wait()
            jobs = [self._queue.popleft()]
            images = jobs[0].size
            gather_until = time.monotonic() + self.max_wait_s
            while images < self.max_batch_size:
                if self._queue:
                    if images + self._queue[0].size > self.max_batch_size:
                        break
                    jobs.append(self._queue.popleft())
                    images += jobs[-1].size
                    continue
                remaining = gather_until - time.monotonic()
                if self._arriving == 0 or self._closing or remaining <= 0:
                    break
                self._cond.wait(remaining)
            self.metrics.queue_depth.set(len(self._queue))
        return jobs

    def _run_batch(self, jobs: list[Job]) -> None:
        started = time.monotonic()
        live = []
        for job in jobs:
            if not job.future.set_running_or_notify_cancel():
                continue  # its caller gave up (deadline) while it was queued
            if started > job.deadline:
                job.future.set_exception(QueueTimeout("the request waited in the queue past its deadline"))
                continue
            self.metrics.queue_wait.observe(started - job.enqueued_at)
            live.append(job)
        if not live:
            return
        images = sum(job.size for job in live)
        try:
            arrays = [array for job in live for array in job.arrays]
            box_codes, class_logits = self._forward(arrays)
        except Exception:
            log.exception("inference failed", extra={"batch_size": images})
            for job in live:
                job.future.set_exception(InternalError("inference failed"))
            return
        offset = 0
        results: list[tuple[Job, list[ImageDetections] | Exception]] = []
        for job in live:
            end = offset + job.size
            try:
                detections = self.model.postprocess(
                    box_codes[offset:end],
                    class_logits[offset:end],
                    [(a.shape[0], a.shape[1]) for a in job.arrays],
                    score_threshold=job.score_threshold,
                    max_detections=job.max_detections,
                )
                results.append((job, detections))
            except Exception as exc:
                log.exception("postprocessing failed")
                results.append((job, exc))
            offset = end
        inference_s = time.monotonic() - started
        self.metrics.batch_size.observe(images)
        self.metrics.inference.observe(inference_s)
        for job, outcome in results:
            if isinstance(outcome, Exception):
                job.future.set_exception(InternalError("postprocessing failed"))
            else:
                job.future.set_result(BatchResult(outcome, started - job.enqueued_at, inference_s, images))

    def _forward(self, arrays: list[np.ndarray]) -> tuple[Any, Any]:
        """Preprocess and run ``arrays`` in slices of at most ``max_batch_size``."""
        codes, logits = [], []
        for start in range(0, len(arrays), self.max_batch_size):
            c, k = self.model.predict_raw(self.model.preprocess(arrays[start : start + self.max_batch_size]))
            codes.append(c)
            logits.append(k)
        return _concatenate(codes), _concatenate(logits)
