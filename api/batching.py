"""Dynamic batching for several models: one bounded queue per model, one inference thread serving them in turn.

**The thread budget.** The CPU threads the service may use (``DETECTOR_THREADS``) are one budget, and a forward
pass already spreads over all of them (the engines' intra-op pools are sized to it). Two forward passes at once, of
one model or of two, would ask for twice the threads and only add contention (kserve/kserve#1031, ultralytics#16724:
several models × all cores → throttling and latency spikes). So there is exactly one inference thread, and it runs
one batch at a time. Fairness comes from how it picks the next batch: round-robin over the models with queued work,
one batch each per turn, so a flood of requests for one model delays another model's request by at most one batch
of each other model, never by that model's whole queue. (A lock or semaphore shared by per-model threads would give
the same exclusion with more threads and a fairness that depends on the lock's wake-up order.)

**Batching.** Requests enter their model's bounded queue (full: ``QueueFull``, answered 503 + Retry-After). The
worker takes the oldest job of the model whose turn it is, then adds that model's queued jobs up to
``max_batch_size`` images. It waits up to ``max_wait_ms`` for more only while other requests for that model are
known to be on their way (admitted and being decoded, see ``arriving``) and no other model has work waiting: a lone
request at low load runs at once instead of paying the wait, and a burst still fills a batch. This is Triton's
``max_queue_delay`` made adaptive, in the spirit of BentoML's adaptive batching, without learning a window.

Each job has a deadline. A job still queued at its deadline is dropped without work (``QueueTimeout``, 503); the
waiting side (``Batcher.wait``) gives up at the deadline too, answering 504 if the model had already started.

Batches and raw outputs are whatever the model's ``preprocess`` and ``predict_raw`` return (arrays); the batcher only
slices them, so it is independent of the engine.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

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
    """One request's images (decoded RGB uint8 arrays) for ``model``, and its postprocessing options."""

    model: str
    arrays: list[np.ndarray]
    score_threshold: float
    max_detections: int | None
    deadline: float
    enqueued_at: float = 0.0
    future: Future[BatchResult] = field(default_factory=Future)

    @property
    def size(self) -> int:
        return len(self.arrays)


@dataclass
class _Segment:
    """The part of a job that fell into one forward pass: its images ``[start, end)`` of the pass's batch."""

    job: Job
    start: int
    end: int
    first_image: int  # index of the segment's first image within the job


class Batcher:
    """Per-model bounded job queues and the one thread that runs them, in batches, model by model in turn.

    Args:
        models: the detectors by the name they are served under (each gets its own queue).
        max_batch_size: most images in one forward pass (a larger single job is run in slices of this size).
        max_wait_ms: how long a batch waits for requests that are still arriving.
        queue_size: most jobs waiting per model; ``submit`` raises ``QueueFull`` beyond it.
        metrics: where queue depth, waits, inference time and batch sizes are recorded, by model.
    """

    def __init__(
        self,
        models: Mapping[str, BatchModel],
        *,
        max_batch_size: int,
        max_wait_ms: float,
        queue_size: int,
        metrics: Metrics,
    ):
        if not models:
            raise ValueError("a batcher needs at least one model")
        self.models = dict(models)
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.queue_size = queue_size
        self.metrics = metrics
        self._order = list(self.models)
        self._turn = 0  # index into _order of the model whose turn is next
        self._queues: dict[str, collections.deque[Job]] = {name: collections.deque() for name in self._order}
        self._arriving = dict.fromkeys(self._order, 0)
        self._closing = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="inference-worker", daemon=True)
        for name in self._order:
            metrics.queue_depth.labels(name).set(0)

    # --- the request side -------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the inference thread."""
        self._thread.start()

    @property
    def alive(self) -> bool:
        """Whether the inference thread is running."""
        return self._thread.is_alive()

    def depth(self, model: str | None = None) -> int:
        """Jobs waiting in ``model``'s queue, or in all queues."""
        if model is not None:
            return len(self._queues[model])
        return sum(len(queue) for queue in self._queues.values())

    @contextlib.contextmanager
    def arriving(self, model: str) -> Iterator[None]:
        """Announce a request for ``model`` that will be submitted soon (while it is decoded), so a forming batch of
        that model waits for it."""
        with self._cond:
            self._arriving[model] += 1
        try:
            yield
        finally:
            with self._cond:
                self._arriving[model] -= 1
                self._cond.notify_all()

    def submit(self, job: Job) -> Future[BatchResult]:
        """Queue ``job`` on its model's queue; raises ``QueueFull`` when that is full, ``Draining`` once closing."""
        with self._cond:
            if self._closing:
                raise Draining("the service is shutting down; retry on another replica")
            queue = self._queues[job.model]
            if len(queue) >= self.queue_size:
                raise QueueFull(f"the queue is full ({self.queue_size} requests waiting); retry shortly")
            job.enqueued_at = time.monotonic()
            queue.append(job)
            self.metrics.queue_depth.labels(job.model).set(len(queue))
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
        while True:
            jobs = self._next_batch()
            if not jobs:
                return
            self._run_batch(jobs)

    def _next_with_work(self) -> str | None:
        """The first model from the current turn on (round-robin) with a queued job."""
        for step in range(len(self._order)):
            name = self._order[(self._turn + step) % len(self._order)]
            if self._queues[name]:
                return name
        return None

    def _others_waiting(self, model: str) -> bool:
        return any(queue for name, queue in self._queues.items() if name != model)

    def _next_batch(self) -> list[Job]:
        """Wait for a job, then gather more of the same model up to ``max_batch_size`` images; [] once closing and
        every queue is empty."""
        with self._cond:
            while (model := self._next_with_work()) is None:
                if self._closing:
                    return []
                self._cond.wait()
            queue = self._queues[model]
            jobs = [queue.popleft()]
            images = jobs[0].size
            gather_until = time.monotonic() + self.max_wait_s
            while images < self.max_batch_size:
                if queue:
                    if images + queue[0].size > self.max_batch_size:
                        break
                    jobs.append(queue.popleft())
                    images += jobs[-1].size
                    continue
                remaining = gather_until - time.monotonic()
                if self._arriving[model] == 0 or self._closing or remaining <= 0 or self._others_waiting(model):
                    break
                self._cond.wait(remaining)
            self._turn = (self._order.index(model) + 1) % len(self._order)
            self.metrics.queue_depth.labels(model).set(len(queue))
        return jobs

    def _run_batch(self, jobs: list[Job]) -> None:
        model_name = jobs[0].model
        model = self.models[model_name]
        started = time.monotonic()
        live = []
        for job in jobs:
            if not job.future.set_running_or_notify_cancel():
                continue  # its caller gave up (deadline) while it was queued
            if started > job.deadline:
                job.future.set_exception(QueueTimeout("the request waited in the queue past its deadline"))
                continue
            self.metrics.queue_wait.labels(model_name).observe(started - job.enqueued_at)
            live.append(job)
        if not live:
            return
        images = sum(job.size for job in live)
        detections: dict[int, list[ImageDetections]] = {id(job): [] for job in live}
        failed: set[int] = set()
        try:
            for batch_start, segments in self._passes(live):
                codes, logits = model.predict_raw(model.preprocess([a for s in segments for a in self._arrays(s)]))
                for segment in segments:
                    if id(segment.job) in failed:
                        continue
                    a, b = segment.start - batch_start, segment.end - batch_start
                    try:
                        detections[id(segment.job)] += model.postprocess(
                            codes[a:b],
                            logits[a:b],
                            [(x.shape[0], x.shape[1]) for x in self._arrays(segment)],
                            score_threshold=segment.job.score_threshold,
                            max_detections=segment.job.max_detections,
                        )
                    except Exception:
                        log.exception("postprocessing failed", extra={"model": model_name})
                        failed.add(id(segment.job))
        except Exception:
            log.exception("inference failed", extra={"model": model_name, "batch_size": images})
            for job in live:
                job.future.set_exception(InternalError("inference failed"))
            return
        inference_s = time.monotonic() - started
        self.metrics.batch_size.labels(model_name).observe(images)
        self.metrics.inference.labels(model_name).observe(inference_s)
        for job in live:
            if id(job) in failed:
                job.future.set_exception(InternalError("postprocessing failed"))
            else:
                job.future.set_result(BatchResult(detections[id(job)], started - job.enqueued_at, inference_s, images))

    @staticmethod
    def _arrays(segment: _Segment) -> list[np.ndarray]:
        count = segment.end - segment.start
        return segment.job.arrays[segment.first_image : segment.first_image + count]

    def _passes(self, jobs: list[Job]) -> Iterator[tuple[int, list[_Segment]]]:
        """Split the jobs' images, in order, into forward passes of at most ``max_batch_size``: each pass's first
        image index and the job segments it holds."""
        segments: list[_Segment] = []
        position = 0
        for job in jobs:
            segments.append(_Segment(job, position, position + job.size, 0))
            position += job.size
        for batch_start in range(0, position, self.max_batch_size):
            batch_end = min(position, batch_start + self.max_batch_size)
            inside = []
            for segment in segments:
                start, end = max(segment.start, batch_start), min(segment.end, batch_end)
                if start < end:
                    inside.append(_Segment(segment.job, start, end, start - segment.start))
            yield batch_start, inside
