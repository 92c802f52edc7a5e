"""The detection service: the model, its batcher and its lifecycle (loading → ready → draining → stopped)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import anyio
import numpy as np
import torch

from api.batching import Batcher, BatchModel, Job
from api.errors import InvalidRequest, NotReady
from api.metrics import Metrics
from api.settings import Settings
from api.uploads import Upload, decode_upload
from detector import defaults
from detector.results import Detection, ImageDetections, ModelInfo

log = logging.getLogger("api.service")


class ServedModel(BatchModel, Protocol):
    """A detector the service can run: the batch pieces plus ``info`` and ``labels``."""

    @property
    def labels(self) -> tuple[str, ...]: ...

    def info(self) -> ModelInfo: ...


@dataclass(frozen=True)
class DetectParams:
    """A request's options: ``labels`` None keeps every class."""

    score_threshold: float = defaults.SCORE_THRESHOLD
    max_detections: int | None = None
    labels: frozenset[str] | None = None


@dataclass(frozen=True)
class DetectOutcome:
    """Detections per image (in upload order), the decoded pixels, and timings in seconds."""

    results: list[ImageDetections]
    arrays: list[np.ndarray]
    decode_s: float
    queue_s: float
    inference_s: float
    batch_size: int


def _keep(result: ImageDetections, labels: frozenset[str] | None, max_detections: int | None) -> ImageDetections:
    detections: list[Detection] = result.detections
    if labels is not None:
        detections = [d for d in detections if d.label in labels]
    if max_detections is not None:
        detections = detections[:max_detections]
    return ImageDetections(width=result.width, height=result.height, detections=detections)


class DetectionService:
    """Owns the detector and the batcher; ``start`` loads the model, ``stop`` drains the queue.

    Args:
        settings: the serving settings.
        metrics: where to record.
        load_model: called by ``start`` to get the detector (loading weights is slow: it runs off the event loop).
    """

    def __init__(self, settings: Settings, metrics: Metrics, load_model: Callable[[], ServedModel]):
        self.settings = settings
        self.metrics = metrics
        self._load_model = load_model
        self.model: ServedModel | None = None
        self.batcher: Batcher | None = None
        self.draining = False
        # Decoding is CPU work in threads beside the inference worker: at most one per CPU at a time.
        self._decode_limiter = anyio.CapacityLimiter(settings.threads)

    # --- lifecycle ----------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Load the model and start the inference worker (blocking)."""
        torch.set_num_threads(self.settings.threads)
        started = time.monotonic()
        model = self._load_model()
        self.batcher = Batcher(
            model,
            max_batch_size=self.settings.max_batch_size,
            max_wait_ms=self.settings.max_wait_ms,
            queue_size=self.settings.queue_size,
            threads=self.settings.threads,
            metrics=self.metrics,
        )
        self.batcher.start()
        self.model = model
        info = model.info()
        self.metrics.model.info(
            {"name": info.name, "version": info.version, "weights_sha256": info.weights_sha256, "backend": info.backend}
        )
        log.info("model loaded", extra={"model": info.name, "seconds": round(time.monotonic() - started, 2)})

    def stop(self, timeout: float) -> None:
        """Refuse new work, finish queued requests, stop the worker (blocking, at most ``timeout`` seconds)."""
        self.draining = True
        if self.batcher is not None:
            self.batcher.close(timeout)
        log.info("stopped")

    @property
    def alive(self) -> bool:
        """False only when the inference worker died after starting: the process should be restarted."""
        return self.batcher is None or self.batcher.alive

    @property
    def ready(self) -> bool:
        """Model loaded, worker running, not draining."""
        return self.model is not None and self.batcher is not None and self.batcher.alive and not self.draining

    def require_model(self) -> ServedModel:
        """The model, or ``NotReady`` while it is loading."""
        if self.model is None:
            raise NotReady("the model is still loading")
        return self.model

    # --- requests -----------------------------------------------------------------------------------------------

    def check_labels(self, labels: Sequence[str] | None) -> frozenset[str] | None:
        """The label filter as a set; ``InvalidRequest`` for a label the model does not know."""
        if not labels:
            return None
        known = {label for label in self.require_model().labels[1:] if label}
        wanted = frozenset(label.strip() for item in labels for label in item.split(",") if label.strip())
        unknown = sorted(wanted - known)
        if unknown:
            raise InvalidRequest(f"unknown labels {unknown}; this model knows {sorted(known)}")
        return wanted or None

    async def detect(self, uploads: Sequence[Upload], params: DetectParams) -> DetectOutcome:
        """Decode ``uploads`` (in a worker thread), run them through the batcher, filter by label."""
        # While draining, requests are still served (the balancer has not noticed yet); the batcher refuses new
        # work only once it is closing.
        self.require_model()
        batcher = self.batcher
        assert batcher is not None
        with batcher.arriving():
            started = time.monotonic()
            arrays = await anyio.to_thread.run_sync(self._decode_all, uploads, limiter=self._decode_limiter)
            decode_s = time.monotonic() - started
            self.metrics.decode.observe(decode_s)
            job = Job(
                arrays=arrays,
                score_threshold=params.score_threshold,
                max_detections=None if params.labels else params.max_detections,
                deadline=time.monotonic() + self.settings.request_timeout_s,
            )
            future = batcher.submit(job)
        result = await batcher.wait(job, future)
        self.metrics.images.inc(len(arrays))
        results = [_keep(r, params.labels, params.max_detections) for r in result.detections]
        return DetectOutcome(results, arrays, decode_s, result.queue_s, result.inference_s, result.batch_size)

    def _decode_all(self, uploads: Sequence[Upload]) -> list[np.ndarray]:
        return [decode_upload(upload, max_pixels=self.settings.max_pixels) for upload in uploads]
