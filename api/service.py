"""The detection service: its models, the batcher they share and its lifecycle (loading → ready → draining → stopped).

One service serves one or several models (``api.models``); each has its own batching queue, and all share the one
inference thread and its CPU thread budget (``api.batching``), the decoding threads, and the memory budget for decoded
pixels (``api.memory``). It is ready once every model is loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TypeVar

import anyio
import numpy as np

from api.batching import Batcher, BatchResult, Job
from api.errors import InvalidRequest, NotReady, UnknownModel
from api.memory import TRIM_AFTER_PIXELS, PixelBudget, memory_limit, pixel_budget, resident_memory, return_free_memory
from api.metrics import Metrics
from api.models import ServedModel
from api.settings import Settings
from api.uploads import Upload, decode_upload, pixel_count
from detector import defaults
from detector.results import Detection, ImageDetections, ModelInfo

log = logging.getLogger("api.service")

# The engines size their thread pools from these when they start (torch's intra-op pool, which OpenVINO and ONNX
# Runtime follow; OpenMP; MKL; OpenBLAS).
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

T = TypeVar("T")


def limit_engine_threads(threads: int) -> bool:
    """Give the inference engines ``threads`` threads, before they load; False if torch was already loaded.

    The service never imports torch (it treats batches as opaque arrays), so it sets the budget the way the
    engines read it at start: their environment variables. Loaded earlier (an embedding application, the tests),
    torch keeps its own pool size.
    """
    if "torch" in sys.modules:
        return False
    for name in _THREAD_VARIABLES:
        os.environ[name] = str(threads)
    return True


@dataclass(frozen=True)
class DetectParams:
    """A request's options: ``labels`` None keeps every class."""

    score_threshold: float = defaults.SCORE_THRESHOLD
    max_detections: int | None = None
    labels: frozenset[str] | None = None


@dataclass(frozen=True)
class DetectOutcome:
    """Detections per image (in upload order) by ``model``, the decoded pixels (only inside
    :meth:`DetectionService.detecting`; empty after it), and timings in seconds."""

    model: str
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
    """Owns the models and the batcher; ``start`` loads the models, ``stop`` drains the queues.

    Args:
        settings: the serving settings.
        metrics: where to record.
        load_models: called by ``start`` to get the detectors by served name, the default first (loading weights is
            slow: it runs off the event loop).
    """

    def __init__(self, settings: Settings, metrics: Metrics, load_models: Callable[[], Mapping[str, ServedModel]]):
        self.settings = settings
        self.metrics = metrics
        self._load_models = load_models
        self.models: dict[str, ServedModel] = {}
        self.infos: dict[str, ModelInfo] = {}
        self.batcher: Batcher | None = None
        self.pixels: PixelBudget | None = None
        self.draining = False
        # Why loading in the background failed (``start_loading``); None while loading, once loaded, or not tried.
        self.load_error: str | None = None
        self._stopped = False
        self._lifecycle = threading.Lock()  # start and stop agree on whether the worker starts
        # Decoding is CPU work in threads beside the inference worker: at most one per CPU at a time, all models.
        self._decode_limiter = anyio.CapacityLimiter(settings.threads)
        # Decoded pixels are freed in a thread of their own (``_free``), never on the event loop.
        self._freeing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="free-pixels")

    # --- lifecycle ----------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Load the models and start the inference worker (blocking); nothing starts if ``stop`` came first."""
        if not limit_engine_threads(self.settings.threads):
            log.warning(
                "torch was loaded before the service: the engines keep their own thread count",
                extra={"threads": self.settings.threads},
            )
        started = time.monotonic()
        models = dict(self._load_models())
        if not models:
            raise ValueError("no model to serve")
        batcher = Batcher(
            models,
            max_batch_size=self.settings.max_batch_size,
            max_wait_ms=self.settings.max_wait_ms,
            queue_size=self.settings.queue_size,
            metrics=self.metrics,
        )
        infos = {name: model.info() for name, model in models.items()}
        for name, info in infos.items():
            self.metrics.model.labels(name).info(
                {
                    "name": info.name,
                    "version": info.version,
                    "weights_sha256": info.weights_sha256,
                    "backend": info.backend,
                    "precision": info.backend_precision,
                }
            )
        self.infos = infos
        self.pixels = self._pixel_budget()
        with self._lifecycle:
            if self._stopped:  # a SIGTERM while loading: the process is on its way out
                log.info("stopped while loading: the models are not served")
                return
            batcher.start()
            self.batcher = batcher
        self.models = models  # last: from now on the service is ready
        log.info(
            "models loaded",
            extra={"models": list(models), "default": self.default, "seconds": round(time.monotonic() - started, 2)},
        )

    def start_loading(self) -> None:
        """``start`` in a thread of its own; returns at once.

        Meanwhile the service answers liveness (200) and readiness and detection (503 ``not_ready``), as
        Kubernetes' startup and readiness probes expect. If loading fails, the error is logged and kept in
        ``load_error``: liveness turns 500 (restart the process), and ``python -m api`` exits with status 1.
        """
        threading.Thread(target=self._load, name="load-models", daemon=True).start()

    def _load(self) -> None:
        try:
            self.start()
        except Exception as exc:  # a thread's exception would only be printed: keep it for liveness and the exit
            log.exception("loading the models failed")
            self.load_error = f"{type(exc).__name__}: {exc}"

    def _pixel_budget(self) -> PixelBudget:
        """The memory budget for decoded pixels: the setting, else sized from what is left once the models are
        loaded (``api.memory``)."""
        capacity = self.settings.max_inflight_pixels
        if capacity is None:
            limit, resident = memory_limit(), resident_memory()
            capacity = max(1, pixel_budget(limit, resident))
            log.info(
                "pixel budget",
                extra={"pixels": capacity, "memory_limit_mib": limit >> 20, "resident_mib": resident >> 20},
            )
            if capacity < self.settings.max_pixels:
                log.warning(
                    "the memory left cannot hold one image of DETECTOR_MAX_PIXELS: larger ones get 413",
                    extra={"pixels": capacity, "max_pixels": self.settings.max_pixels},
                )
        self.metrics.pixel_budget.set(capacity)
        self.metrics.inflight_pixels.set(0)
        return PixelBudget(capacity, max_waiting=self.settings.queue_size, on_change=self.metrics.inflight_pixels.set)

    def stop(self, timeout: float) -> None:
        """Refuse new work, finish queued requests, stop the worker (blocking, at most ``timeout`` seconds)."""
        self.draining = True
        with self._lifecycle:
            self._stopped = True
        if self.batcher is not None:
            self.batcher.close(timeout)
        self._freeing.shutdown()
        log.info("stopped")

    @property
    def alive(self) -> bool:
        """False only when loading failed or the inference worker died after starting: the process should be
        restarted."""
        return self.load_error is None and (self.batcher is None or self.batcher.alive)

    @property
    def loaded(self) -> bool:
        """Every model is loaded."""
        return bool(self.models)

    @property
    def ready(self) -> bool:
        """Every model loaded, worker running, not draining."""
        return self.loaded and self.batcher is not None and self.batcher.alive and not self.draining

    @property
    def default(self) -> str | None:
        """The default model's name (the first listed); None while loading."""
        return next(iter(self.models), None)

    def resolve(self, name: str | None = None) -> str:
        """The served name for ``name`` (None: the default); ``NotReady`` while loading, ``UnknownModel`` if no
        model is served under ``name``."""
        if not self.models:
            raise NotReady("the model is still loading")
        if name is None:
            return next(iter(self.models))
        if name not in self.models:
            raise UnknownModel(f"no model {name!r}; this service serves: {', '.join(self.models)}")
        return name

    def require_model(self, name: str | None = None) -> ServedModel:
        """The model served as ``name`` (None: the default); see :meth:`resolve` for the errors."""
        return self.models[self.resolve(name)]

    def info(self, name: str | None = None) -> ModelInfo:
        """What the model served as ``name`` is (None: the default)."""
        return self.infos[self.resolve(name)]

    # --- requests -----------------------------------------------------------------------------------------------

    def check_labels(self, name: str | None, labels: Sequence[str] | None) -> frozenset[str] | None:
        """The label filter as a set; ``InvalidRequest`` for a label the model ``name`` does not know."""
        model = self.require_model(name)
        if not labels:
            return None
        known = {label for label in model.labels[1:] if label}
        wanted = frozenset(label.strip() for item in labels for label in item.split(",") if label.strip())
        unknown = sorted(wanted - known)
        if unknown:
            raise InvalidRequest(f"unknown labels {unknown}; this model knows {sorted(known)}")
        return wanted or None

    async def decoding(self, func: Callable[..., T], *args: object) -> T:
        """``func(*args)`` in a decoding thread: a request's CPU work (decompressing, parsing, decoding) runs there,
        never on the event loop, at most one per CPU at a time, all requests and models together."""
        return await anyio.to_thread.run_sync(func, *args, limiter=self._decode_limiter)

    async def detect(self, name: str | None, uploads: Sequence[Upload], params: DetectParams) -> DetectOutcome:
        """Decode ``uploads`` (in a decoding thread), run them through model ``name``'s queue, filter by label; the
        pixels are given back before it returns (``arrays`` is empty). Raises as :meth:`detecting`."""
        async with self.detecting(name, uploads, params) as outcome:
            return replace(outcome, arrays=[])

    @contextlib.asynccontextmanager
    async def detecting(
        self, name: str | None, uploads: Sequence[Upload], params: DetectParams
    ) -> AsyncIterator[DetectOutcome]:
        """As :meth:`detect`, with the decoded pixels in ``outcome.arrays`` until the block ends.

        The pixels, counted from the image headers before any is decoded, are reserved from the memory budget for
        the whole time: a request waits for them until its deadline (then ``MemoryBusy``, 503), and one with more
        than the whole budget gets ``OverMemoryBudget`` (413). When the block ends the arrays are emptied (the
        batcher's job and ``outcome`` share the list) and the pixels given back; if the model is still running on
        them (past the deadline), that happens when it finishes.
        """
        # While draining, requests are still served (the balancer has not noticed yet); the batcher refuses new
        # work only once it is closing.
        model = self.resolve(name)
        batcher, pixels = self.batcher, self.pixels
        assert batcher is not None and pixels is not None
        arrived = time.monotonic()
        reserved = sum(await self.decoding(self._pixel_counts, uploads))
        await pixels.acquire(reserved, self.settings.request_timeout_s - (time.monotonic() - arrived))
        arrays: list[np.ndarray] = []
        future: Future[BatchResult] | None = None
        try:
            with batcher.arriving(model):
                started = time.monotonic()
                arrays = await self.decoding(self._decode_all, uploads)
                decode_s = time.monotonic() - started
                self.metrics.decode.labels(model).observe(decode_s)
                job = Job(
                    model=model,
                    arrays=arrays,
                    score_threshold=params.score_threshold,
                    max_detections=None if params.labels else params.max_detections,
                    deadline=time.monotonic() + self.settings.request_timeout_s,
                )
                future = batcher.submit(job)
            result = await batcher.wait(job, future)
            self.metrics.images.labels(model).inc(len(arrays))
            results = [_keep(r, params.labels, params.max_detections) for r in result.detections]
            yield DetectOutcome(model, results, arrays, decode_s, result.queue_s, result.inference_s, result.batch_size)
        finally:
            loop = asyncio.get_running_loop()
            if future is None or future.done():
                self._give_back(arrays, reserved, loop)
            else:  # the inference thread still holds them: give them back when it is done
                future.add_done_callback(lambda _: self._give_back(arrays, reserved, loop))

    def _give_back(self, arrays: list[np.ndarray], reserved: int, loop: asyncio.AbstractEventLoop) -> None:
        """Empty ``arrays`` (the batcher's worker keeps its last job until the next one, and the caller its outcome:
        the pixels must go, not the objects), free them in the freeing thread, then return their reservation."""
        held = arrays.copy()
        arrays.clear()
        try:
            self._freeing.submit(self._free, held, reserved, loop)
        except RuntimeError:  # stopped: free them here
            self._free(held, reserved, loop)

    def _free(self, arrays: list[np.ndarray], reserved: int, loop: asyncio.AbstractEventLoop) -> None:
        # Not on the event loop: unmapping a gigabyte of arrays takes 25 ms, handing the heap back 200 ms.
        arrays.clear()
        assert self.pixels is not None
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits for pixels any more
            loop.call_soon_threadsafe(self.pixels.release, reserved)
        if reserved >= TRIM_AFTER_PIXELS:
            return_free_memory()

    def _pixel_counts(self, uploads: Sequence[Upload]) -> list[int]:
        return [pixel_count(upload, max_pixels=self.settings.max_pixels) for upload in uploads]

    def _decode_all(self, uploads: Sequence[Upload]) -> list[np.ndarray]:
        arrays: list[np.ndarray] = []
        try:
            for upload in uploads:
                arrays.append(decode_upload(upload, max_pixels=self.settings.max_pixels))
        except BaseException:
            arrays.clear()  # freed here, not on the event loop with the error's traceback
            raise
        return arrays
