"""The detection service: its models, the batcher they share and its lifecycle (loading → ready → draining → stopped).

One service serves one or several models (``api.models``); each has its own batching queue, and all share the one
inference thread and its CPU thread budget (``api.batching``). It is ready once every model is loaded.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import anyio
import numpy as np

from api.batching import Batcher, Job
from api.errors import InvalidRequest, NotReady, UnknownModel
from api.metrics import Metrics
from api.models import ServedModel
from api.settings import Settings
from api.uploads import Upload, decode_upload
from detector import defaults
from detector.results import Detection, ImageDetections, ModelInfo

log = logging.getLogger("api.service")

# The engines size their thread pools from these when they start (torch's intra-op pool, which OpenVINO and ONNX
# Runtime follow; OpenMP; MKL; OpenBLAS).
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


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
    """Detections per image (in upload order) by ``model``, the decoded pixels, and timings in seconds."""

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
        self.draining = False
        # Decoding is CPU work in threads beside the inference worker: at most one per CPU at a time, all models.
        self._decode_limiter = anyio.CapacityLimiter(settings.threads)

    # --- lifecycle ----------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Load the models and start the inference worker (blocking)."""
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
        batcher.start()
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
        self.batcher = batcher
        self.models = models  # last: from now on the service is ready
        log.info(
            "models loaded",
            extra={"models": list(models), "default": self.default, "seconds": round(time.monotonic() - started, 2)},
        )

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

    async def detect(self, name: str | None, uploads: Sequence[Upload], params: DetectParams) -> DetectOutcome:
        """Decode ``uploads`` (in a worker thread), run them through model ``name``'s queue, filter by label."""
        # While draining, requests are still served (the balancer has not noticed yet); the batcher refuses new
        # work only once it is closing.
        model = self.resolve(name)
        batcher = self.batcher
        assert batcher is not None
        with batcher.arriving(model):
            started = time.monotonic()
            arrays = await anyio.to_thread.run_sync(self._decode_all, uploads, limiter=self._decode_limiter)
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
        return DetectOutcome(model, results, arrays, decode_s, result.queue_s, result.inference_s, result.batch_size)

    def _decode_all(self, uploads: Sequence[Upload]) -> list[np.ndarray]:
        return [decode_upload(upload, max_pixels=self.settings.max_pixels) for upload in uploads]
