"""The batcher alone: bounded queue, deadlines, batch formation and draining, with a controllable fake model."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from api.batching import Batcher, Job
from api.errors import DeadlineExceeded, Draining, QueueFull, QueueTimeout
from api.metrics import Metrics
from tests.support import GatedModel


def job(images: int = 1, timeout_s: float = 10.0) -> Job:
    arrays = [np.zeros((4, 5, 3), np.uint8)] * images
    return Job(arrays=arrays, score_threshold=0.5, max_detections=None, deadline=time.monotonic() + timeout_s)


def batcher(model: GatedModel, **overrides) -> Batcher:
    options = {"max_batch_size": 4, "max_wait_ms": 0, "queue_size": 2, "threads": 1, "metrics": Metrics()}
    b = Batcher(model, **{**options, **overrides})
    b.start()
    return b


def test_a_full_queue_refuses_with_queue_full() -> None:
    model = GatedModel()
    b = batcher(model)
    try:
        b.submit(job())
        assert model.entered.wait(5)  # the first job holds the worker
        b.submit(job())
        b.submit(job())
        with pytest.raises(QueueFull, match="2 requests waiting"):
            b.submit(job())
    finally:
        model.gate.set()
        b.close(5)


def test_queued_jobs_are_batched_up_to_the_max_and_large_jobs_sliced() -> None:
    model = GatedModel()
    b = batcher(model, queue_size=10)
    first = b.submit(job())
    assert model.entered.wait(5)
    futures = [b.submit(job(n)) for n in (2, 1, 2, 9)]
    model.gate.set()
    for f in [first, *futures]:
        f.result(5)
    b.close(5)
    # [1] ran alone; then 2+1 (the next 2 would exceed 4); then 2; then the 9-image job in slices of 4.
    assert model.batch_sizes == [1, 3, 2, 4, 4, 1]
    assert [len(f.result().detections) for f in futures] == [2, 1, 2, 9]
    assert futures[0].result().batch_size == 3


def test_a_job_queued_past_its_deadline_is_dropped_with_queue_timeout() -> None:
    model = GatedModel()
    b = batcher(model)

    async def scenario() -> None:
        b.submit(job())
        assert model.entered.wait(5)
        late = job(timeout_s=0.1)
        with pytest.raises(QueueTimeout):
            await b.wait(late, b.submit(late))

    try:
        asyncio.run(scenario())
    finally:
        model.gate.set()
        b.close(5)
    assert model.batch_sizes == [1]  # the late job cost the model nothing


def test_a_job_running_past_its_deadline_is_deadline_exceeded() -> None:
    model = GatedModel()
    b = batcher(model)

    async def scenario() -> None:
        slow = job(timeout_s=0.2)
        with pytest.raises(DeadlineExceeded):
            await b.wait(slow, b.submit(slow))

    try:
        asyncio.run(scenario())
    finally:
        model.gate.set()
        b.close(5)


def test_close_finishes_queued_jobs_then_refuses() -> None:
    model = GatedModel()
    b = batcher(model)
    futures = [b.submit(job()) for _ in range(2)]
    model.gate.set()
    b.close(5)
    assert all(f.result(0).detections for f in futures)
    assert not b.alive
    with pytest.raises(Draining):
        b.submit(job())
