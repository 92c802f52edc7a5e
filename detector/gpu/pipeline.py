"""The GPU pipeline's stages, overlapped: files read and JPEG headers probed on CPU threads, JPEGs decoded on the
device in batches, TF1's resize and the normalisation there, the network (fp16 and a CUDA graph optional), NMS
there, and only the final boxes back to the host.

Three kinds of threads work at once on consecutive batches:

- reader threads (``readers``) read files, probe JPEG headers (:func:`detector.gpu.jpeg.prepare_image`) and decode
  on the CPU whatever the device does not take, up to ``prefetch`` batches ahead;
- one staging thread decodes each batch's JPEGs in one call, uploads the CPU-decoded images and resizes and
  normalises them, on its own CUDA stream, and hands the network input over with an event;
- the caller's thread runs the network and the post-processing on its stream (it waits for the event, not for the
  host), and turns the boxes into :class:`~detector.results.ImageDetections`.

So decoding batch i + 1 overlaps the network on batch i on the GPU, and reading batch i + 2 overlaps both on the
CPU. Each batch the caller gives is one forward pass, as on the CPU path, so an image's numbers do not depend on
how a run was split. On a CPU device the same code runs with no streams (slowly: it is what the tests run).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch

from detector import defaults
from detector.backends.torch_backend import TorchBackend
from detector.errors import BackendUnavailable, DetectorError
from detector.gpu.jpeg import DecoderLibrary, EncodedJpeg, JpegDecoder, Prepared, prepare_image
from detector.gpu.postprocess import postprocess
from detector.gpu.resize import preprocess_images
from detector.images import ImageInput
from detector.inference import Detector
from detector.postprocess import reported_classes, to_image_detections
from detector.prefetch import Prefetched
from detector.results import ImageDetections, ModelInfo

_log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class Outcome:
    """One input's result: its detections, or the error that kept it from them; its RGB uint8 pixels (H, W, 3)
    when asked for (to draw on)."""

    detections: ImageDetections | None = None
    error: DetectorError | None = None
    pixels: np.ndarray | None = None


@dataclass
class _Staged:
    """A batch ready for the network: the input of the images that decoded (``positions`` in the batch, their
    (height, width) in ``sizes``), the event it waits for, and what became of the others."""

    count: int
    batch: torch.Tensor | None
    ready: torch.cuda.Event | None
    positions: list[int]
    sizes: list[tuple[int, int]]
    errors: dict[int, DetectorError] = field(default_factory=dict)
    pixels: dict[int, np.ndarray] = field(default_factory=dict)


class _CapturedNetwork:
    """The network recorded as a CUDA graph for one input shape: a replay launches its ~100 kernels at once.

    The outputs live in the graph's buffers until the next replay: use them (post-process) before calling again.
    """

    def __init__(self, network: torch.nn.Module, example: torch.Tensor):
        self.input = example.clone()
        side = torch.cuda.Stream(example.device)
        side.wait_stream(torch.cuda.current_stream(example.device))
        with torch.cuda.stream(side):  # warm up (cuDNN picks its kernels) outside the capture
            for _ in range(3):
                network(self.input)
        torch.cuda.current_stream(example.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = network(self.input)

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.input.copy_(batch)
        self.graph.replay()
        return self.outputs


class GpuPipeline:
    """Detects in batches of files or encoded images with the work on ``device``; see the module docstring.

    Args:
        detector: the model: its spec, anchors and network (its torch backend's where device and dtype match, else a
            copy).
        device: where to run (default: the detector's).
        dtype: torch.float32 (equal to the CPU reference within float rounding) or torch.float16 (CUDA only;
            default: the detector's torch backend's precision, so ``auto``'s choice and ``--precision exact`` hold).
        readers: CPU threads reading files and decoding what the device does not.
        decoder: the JPEG decoder library (:class:`detector.gpu.jpeg.JpegDecoder`).
        cuda_graph: replay full batches (the first batch's size) as a CUDA graph.
        prefetch: batches read and staged ahead of the network.
        autotune: let cuDNN time its kernels per input shape (``torch.backends.cudnn.benchmark``, process-wide):
            for runs whose batches all have one size.

    Raises:
        BackendUnavailable: fp16 off CUDA, or CUDA asked for where there is none.
    """

    def __init__(
        self,
        detector: Detector,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        readers: int = defaults.DATA_WORKERS,
        decoder: DecoderLibrary = "auto",
        cuda_graph: bool = False,
        prefetch: int = 2,
        autotune: bool = False,
    ):
        self.detector = detector
        self.device = torch.device(device if device is not None else detector.device)
        backend = detector.backend
        if dtype is None:
            dtype = backend.dtype if isinstance(backend, TorchBackend) else torch.float32
        self.dtype = dtype
        self.cuda = self.device.type == "cuda"
        if self.cuda and not torch.cuda.is_available():
            raise BackendUnavailable("no CUDA device is available")
        if dtype != torch.float32 and not self.cuda:
            raise BackendUnavailable(f"the pipeline in {dtype} needs a CUDA device, got {self.device}")
        if autotune and self.cuda:
            torch.backends.cudnn.benchmark = True
        self.readers = max(1, readers)
        self.prefetch = max(1, prefetch)
        self.network = self._network(detector)
        self.anchors = torch.from_numpy(detector.anchors).to(self.device)
        self.reported = reported_classes(detector.spec.labels)
        self.cuda_graph = cuda_graph and self.cuda
        self._captured: _CapturedNetwork | None = None
        try:
            self.decoder: JpegDecoder | None = JpegDecoder(self.device, decoder)
        except BackendUnavailable as exc:
            _log.warning("%s; every image is decoded on the CPU", exc)
            self.decoder = None
        self._stream = torch.cuda.Stream(self.device) if self.cuda else None

    def _network(self, detector: Detector) -> torch.nn.Module:
        backend = detector.backend
        if isinstance(backend, TorchBackend) and backend.device == self.device and backend.dtype == self.dtype:
            return backend.model  # already there, channels-last, in eval mode
        # A copy: the detector's own network stays where and as it is.
        network = copy.deepcopy(detector.model)
        return network.to(self.device, self.dtype).to(memory_format=torch.channels_last).eval()

    @property
    def labels(self) -> tuple[str, ...]:
        return self.detector.labels

    def info(self) -> ModelInfo:
        """The detector's description, with this pipeline's device and precision as its engine."""
        info = self.detector.info()
        precision = "fp32" if self.dtype == torch.float32 else "fp16"
        engine = {**info.backend_engine, "device": str(self.device), "precision": precision, "pipeline": "gpu"}
        return dataclasses.replace(info, backend_engine=engine)

    # --- the stages, one batch at a time ------------------------------------------------------------------------

    def upload(
        self, prepared: Sequence[Prepared | DetectorError]
    ) -> tuple[dict[int, torch.Tensor], dict[int, DetectorError]]:
        """Pixels on the device: JPEGs decoded there in one call (those it fails through their CPU path), CPU-decoded
        images copied over. Returns (position → (3, H, W) uint8 image, position → error)."""
        images: dict[int, torch.Tensor] = {}
        errors: dict[int, DetectorError] = {}
        jpegs = [(i, p) for i, p in enumerate(prepared) if isinstance(p, EncodedJpeg)]
        decoded = self.decoder([p.data for _, p in jpegs]) if self.decoder else [None] * len(jpegs)
        for (position, jpeg), image in zip(jpegs, decoded, strict=True):
            if image is not None and tuple(image.shape) == (3, jpeg.height, jpeg.width):
                images[position] = image
                continue
            try:
                images[position] = self._to_device(jpeg.fallback())
            except DetectorError as exc:
                errors[position] = exc
        for position, item in enumerate(prepared):
            if isinstance(item, DetectorError):
                errors[position] = item
            elif isinstance(item, np.ndarray):
                images[position] = self._to_device(item)
        return images, errors

    def _to_device(self, pixels: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device).permute(2, 0, 1)

    def resize(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """(3, H, W) uint8 images on the device → the network input (N, 3, S, S) float32 (TF1's resize, exact)."""
        pre = self.detector.spec.preprocessing
        return preprocess_images(images, self.detector.spec.image_size, pre.pixel_scale, pre.pixel_offset)

    def preprocess(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        """RGB uint8 (H, W, 3) arrays → the network input on the device (what the service's batcher calls)."""
        return self.resize([self._to_device(array) for array in arrays])

    @torch.inference_mode()
    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The network on the device: (N, 3, S, S) float32 → box codes (N, A, 4) and logits (N, A, K) in its dtype.

        With ``cuda_graph`` the outputs of a full batch are the graph's buffers, valid until the next call.
        """
        x = batch.to(self.dtype).contiguous(memory_format=torch.channels_last)
        if self.cuda_graph:
            if self._captured is None:
                self._captured = _CapturedNetwork(self.network, x)
            if x.shape == self._captured.input.shape:
                return self._captured(x)
        codes, logits = self.network(x)
        return codes, logits

    def predict_raw(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` under the name the service's batcher calls."""
        return self.forward(batch)

    @torch.inference_mode()
    def postprocess(
        self,
        box_codes: torch.Tensor,
        class_logits: torch.Tensor,
        sizes: Sequence[tuple[int, int]],
        *,
        score_threshold: float = defaults.SCORE_THRESHOLD,
        max_detections: int | None = None,
    ) -> list[ImageDetections]:
        """Raw outputs on the device → detections in each image's pixels (``sizes``: (height, width) each), as
        :meth:`detector.inference.Detector.postprocess` gives them."""
        settings = self.detector.spec.postprocessing
        raw = postprocess(
            box_codes,
            class_logits,
            self.anchors,
            score_threshold=score_threshold,
            iou_threshold=settings.nms_iou_threshold,
            max_detections=min(max_detections or settings.max_detections, settings.max_detections),
            clip_boxes=settings.clip_boxes,
            reported=self.reported,
        )
        labels = self.detector.spec.labels
        return [to_image_detections(r, labels, height, width) for r, (height, width) in zip(raw, sizes, strict=True)]

    # --- whole batches ------------------------------------------------------------------------------------------

    def detect(
        self,
        sources: Sequence[ImageInput],
        *,
        score_threshold: float = defaults.SCORE_THRESHOLD,
        max_detections: int | None = None,
        keep_pixels: bool = False,
    ) -> list[Outcome]:
        """One batch of paths, encoded images or arrays, in the caller's thread (no read-ahead): one outcome each."""
        prepared = [_prepare_one(prepare_image, source) for source in sources]
        staged = self._stage(prepared, keep_pixels)
        return self._finish(staged, score_threshold, max_detections)

    def run(
        self,
        batches: Iterable[Sequence[T]],
        prepare: Callable[[T], Prepared],
        *,
        score_threshold: float = defaults.SCORE_THRESHOLD,
        max_detections: int | None = None,
        keep_pixels: bool = False,
    ) -> Iterator[list[Outcome]]:
        """Each batch's outcomes, in order, with reading and staging working ahead (see the module docstring).

        ``prepare`` turns an item into what the device takes (:func:`detector.gpu.jpeg.prepare_image` for paths and
        encoded images); a :class:`DetectorError` it raises becomes that item's outcome, anything else stops the run.
        """
        with ThreadPoolExecutor(self.readers, thread_name_prefix="read") as pool:

            def staged_batches() -> Iterator[_Staged]:
                # Batches are read ``prefetch`` + 1 ahead in the pool, and staged in order in the producer thread.
                pending: deque[list[Future[Prepared | DetectorError]]] = deque()
                source = iter(batches)

                def read_ahead() -> None:
                    batch = next(source, None)
                    if batch is not None:
                        pending.append([pool.submit(_prepare_one, prepare, item) for item in batch])

                for _ in range(self.prefetch + 1):
                    read_ahead()
                while pending:
                    futures = pending.popleft()
                    read_ahead()
                    yield self._stage([future.result() for future in futures], keep_pixels)

            with Prefetched(staged_batches, depth=self.prefetch, name="stage") as staged:
                for batch in staged:
                    yield self._finish(batch, score_threshold, max_detections)

    @torch.inference_mode()
    def _stage(self, prepared: Sequence[Prepared | DetectorError], keep_pixels: bool) -> _Staged:
        stream = torch.cuda.stream(self._stream) if self._stream is not None else contextlib.nullcontext()
        with stream:
            images, errors = self.upload(prepared)
            positions = sorted(images)
            batch = self.resize([images[i] for i in positions]) if positions else None
            pixels = {i: images[i].permute(1, 2, 0).cpu().numpy() for i in positions} if keep_pixels else {}
            ready = None
            if self._stream is not None:
                ready = torch.cuda.Event()
                ready.record(self._stream)
        sizes = [(int(images[i].shape[1]), int(images[i].shape[2])) for i in positions]
        return _Staged(len(prepared), batch, ready, positions, sizes, errors, pixels)

    def _finish(self, staged: _Staged, score_threshold: float, max_detections: int | None) -> list[Outcome]:
        outcomes = [Outcome(error=staged.errors.get(i), pixels=staged.pixels.get(i)) for i in range(staged.count)]
        if staged.batch is None:
            return outcomes
        if staged.ready is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(staged.ready)
            staged.batch.record_stream(current)  # made on the staging stream, used (and freed) on this one
        codes, logits = self.forward(staged.batch)
        results = self.postprocess(
            codes, logits, staged.sizes, score_threshold=score_threshold, max_detections=max_detections
        )
        for position, result in zip(staged.positions, results, strict=True):
            outcomes[position].detections = result
        return outcomes


def _prepare_one(prepare: Callable[[T], Prepared], item: T) -> Prepared | DetectorError:
    try:
        return prepare(item)
    except DetectorError as exc:
        return exc
