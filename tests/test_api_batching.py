"""The batcher alone: bounded queues, deadlines, batch formation, draining, and several models taking turns on the
one inference thread, with controllable fake models."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from api.batching import Batcher, Job
from api.errors import DeadlineExceeded, Draining, QueueFull, QueueTimeout
from api.metrics import Metrics
from detector.results import ImageDetections
from tests.support import GatedModel


def job(images: int = 1, timeout_s: float = 10.0, model: str = "gated") -> Job:
    arrays = [np.zeros((4, 5, 3), np.uint8)] * images
    return Job(model, arrays, score_threshold=0.5, max_detections=None, deadline=time.monotonic() + timeout_s)


def batcher(model: GatedModel | dict, **overrides) -> Batcher:
    options = {"max_batch_size": 4, "max_wait_ms": 0, "queue_size": 2, "metrics": Metrics()}
    models = model if isinstance(model, dict) else {"gated": model}
    b = Batcher(models, **{**options, **overrides})
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


# --- several models ---------------------------------------------------------------------------------------------


class RecordingModel(GatedModel):
    """Appends ``(name, batch size)`` to a shared log at each forward pass, and counts passes running at once."""

    running = 0
    most_at_once = 0
    lock = threading.Lock()

    def __init__(self, name: str, log: list[tuple[str, int]], gate: threading.Event) -> None:
        super().__init__(name)
        self.log = log
        self.gate = gate

    def predict_raw(self, batch):
        with RecordingModel.lock:
            RecordingModel.running += 1
            RecordingModel.most_at_once = max(RecordingModel.most_at_once, RecordingModel.running)
        self.log.append((self.name, batch.shape[0]))
        self.entered.set()
        self.gate.wait(10)
        time.sleep(0.005)  # long enough for a second pass to overlap, were two allowed
        with RecordingModel.lock:
            RecordingModel.running -= 1
        return batch, batch


def test_models_take_turns_on_the_one_inference_thread() -> None:
    log: list[tuple[str, int]] = []
    gate = threading.Event()
    a, b = RecordingModel("a", log, gate), RecordingModel("b", log, gate)
    batcher_ = batcher({"a": a, "b": b}, max_batch_size=2, queue_size=20)
    first = batcher_.submit(job(model="a"))
    assert a.entered.wait(5)  # the worker holds a's first pass
    # A flood for a (8 jobs: 4 batches of 2), then one request for b.
    futures = [batcher_.submit(job(model="a")) for _ in range(8)]
    late = batcher_.submit(job(model="b"))
    gate.set()
    for future in [first, *futures, late]:
        future.result(5)
    batcher_.close(5)
    # b's request is served right after a's next batch, not after a's whole queue.
    assert log == [("a", 1), ("b", 1), ("a", 2), ("a", 2), ("a", 2), ("a", 2)]
    assert RecordingModel.most_at_once == 1  # never two forward passes at once: one thread budget


def test_round_robin_alternates_while_both_models_have_work() -> None:
    log: list[tuple[str, int]] = []
    gate = threading.Event()
    a, b = RecordingModel("a", log, gate), RecordingModel("b", log, gate)
    batcher_ = batcher({"a": a, "b": b}, max_batch_size=1, queue_size=20)
    first = batcher_.submit(job(model="b"))
    assert b.entered.wait(5)
    futures = [batcher_.submit(job(model=name)) for name in ("a",) * 3 + ("b",) * 3]
    gate.set()
    for future in [first, *futures]:
        future.result(5)
    batcher_.close(5)
    assert [name for name, _ in log] == ["b", "a", "b", "a", "b", "a", "b"]


def test_each_model_has_its_own_bounded_queue() -> None:
    log: list[tuple[str, int]] = []
    gate = threading.Event()
    a, b = RecordingModel("a", log, gate), RecordingModel("b", log, gate)
    batcher_ = batcher({"a": a, "b": b}, queue_size=1)
    try:
        batcher_.submit(job(model="a"))
        assert a.entered.wait(5)
        batcher_.submit(job(model="a"))
        with pytest.raises(QueueFull):
            batcher_.submit(job(model="a"))
        batcher_.submit(job(model="b"))  # a's full queue does not refuse b
        assert (batcher_.depth("a"), batcher_.depth("b"), batcher_.depth()) == (1, 1, 2)
    finally:
        gate.set()
        batcher_.close(5)


def test_a_job_larger_than_a_batch_is_sliced_and_its_results_stay_in_order() -> None:
    class Sized(GatedModel):
        def postprocess(self, box_codes, class_logits, sizes, *, score_threshold, max_detections=None):
            return [ImageDetections(width=w, height=h, detections=[]) for h, w in sizes]

    model = Sized()
    model.gate.set()
    batcher_ = batcher(model, max_batch_size=3, queue_size=5)
    arrays = [np.zeros((h, 7, 3), np.uint8) for h in range(1, 9)]
    job_ = Job("gated", arrays, score_threshold=0.5, max_detections=None, deadline=time.monotonic() + 10)
    result = batcher_.submit(job_).result(5)
    batcher_.close(5)
    assert model.batch_sizes == [3, 3, 2]
    assert [d.height for d in result.detections] == list(range(1, 9))
