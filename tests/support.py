"""What several test modules share: stand-in detectors for the service, and hand-made image files.

The fakes implement the service's ``ServedModel`` protocol (``api.service``): the real batcher, decoding and limits
run around them, without a network where the network is not the point.
"""

from __future__ import annotations

import io
import struct
import threading
import zlib

import numpy as np
from PIL import Image

from detector.results import Detection, ImageDetections, ModelInfo


def fake_info(name: str, labels: list[str]) -> ModelInfo:
    """A :class:`ModelInfo` for a fake model with 8×8 input."""
    return ModelInfo(
        name=name,
        version="0",
        architecture="fake",
        input_size=(8, 8),
        num_classes=len(labels) + 1,
        labels=labels,
        score_mode="sigmoid",
        weights_sha256="",
        source="tests",
        license="MIT",
        backend="pytorch",
        backend_engine={"engine": "pytorch"},
        backend_reason="tests",
    )


class FakeDetector:
    """Two detections per image, in the image's own pixels: ``labels[0]`` (0.9) top-left and ``labels[1]`` (0.6)
    bottom-right; by default a person and a cat. Batches and raw outputs are numpy arrays."""

    def __init__(self, name: str = "fake", labels: tuple[str, str] = ("person", "cat")) -> None:
        self.name = name
        self.labels = ("background", *labels)
        self.batch_sizes: list[int] = []
        self.fail = False

    def info(self) -> ModelInfo:
        return fake_info(self.name, list(self.labels[1:]))

    def preprocess(self, arrays):
        return np.zeros((len(arrays), 1), np.float32)

    def predict_raw(self, batch):
        self.batch_sizes.append(batch.shape[0])
        return batch, batch

    def postprocess(self, box_codes, class_logits, sizes, *, score_threshold, max_detections=None):
        if self.fail:
            raise RuntimeError("boom")
        first, second = self.labels[1], self.labels[2]
        results = []
        for height, width in sizes:
            detections = [
                Detection(first, 1, 0.9, (0.0, 0.0, width / 2, height / 2)),
                Detection(second, 2, 0.6, (width / 2, height / 2, float(width), float(height))),
            ]
            detections = [d for d in detections if d.score >= score_threshold][:max_detections]
            results.append(ImageDetections(width=width, height=height, detections=detections))
        return results


class GatedModel(FakeDetector):
    """Blocks each forward pass until ``gate`` is set; records batch sizes; detects nothing."""

    def __init__(self, name: str = "gated") -> None:
        super().__init__(name)
        self.gate = threading.Event()
        self.entered = threading.Event()

    def predict_raw(self, batch):
        self.batch_sizes.append(batch.shape[0])
        self.entered.set()
        self.gate.wait(10)
        return batch, batch

    def postprocess(self, box_codes, class_logits, sizes, *, score_threshold, max_detections=None):
        return [ImageDetections(width=w, height=h, detections=[]) for h, w in sizes]


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    """``image`` encoded as ``fmt``."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_header_only(width: int, height: int, filler: int = 64) -> bytes:
    """A PNG whose header claims ``width`` × ``height`` (a decompression bomb's signature) and no real pixels: only
    ``filler`` compressed zero bytes of image data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * filler)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def random_rgb(width: int = 8, height: int = 6, seed: int = 0) -> Image.Image:
    """A reproducible noise image."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8))


TWO_MODELS = {"DETECTOR_MODELS": "coco,person", "DETECTOR_MAX_WAIT_MS": "0"}


def two_model_service(**env: str):
    """A live ``python -m api`` serving the built-in ``coco`` (the default) and ``person`` models (a context)."""
    from tests.harness.live import running_service

    return running_service({**TWO_MODELS, **env})
