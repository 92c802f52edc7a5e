"""Which JPEGs the device decodes, decoding them in batches, and the CPU path for every other image.

The device takes what nvJPEG decodes as libjpeg-turbo does, in one batched call: a sequential Huffman JPEG (SOF0
baseline, the hardware decoder's kind, or SOF1) of YCbCr or gray samples, upright (EXIF orientation 1) and whole
(ending in EOI). Everything else — PNG and other formats, progressive, arithmetic-coded, CMYK or Adobe-RGB JPEGs,
EXIF-rotated photographs, truncated or unreadable files — goes through :func:`detector.images.load_image` on the
CPU, one image at a time, with the pixels and the errors it gives today. So does a JPEG the device refuses after
all: a failed batch is decoded again image by image, and only the images that fail alone take the CPU path.

The header is read with Pillow (about 20 µs; it stops at the first scan) plus a walk over the marker segments for
the frame type, which Pillow does not keep.

Decoders (``library``): TorchCodec's ``decode_jpeg`` (≥ 0.16; torchvision 0.29 deprecates its own decoders in its
favour; its PyPI wheel, 10 MB, bundles nvJPEG and needs no FFmpeg for images) where installed and working, else
torchvision's ``decode_jpeg`` (bundled nvJPEG too). Both take a list and decode it in one nvJPEG call on CUDA, and
both give libjpeg-turbo's pixels on the CPU (the tests compare them with Pillow's). nvJPEG's pixels differ from
libjpeg-turbo's by a few grey levels (its own IDCT and chroma upsampling): ``benchmarks/gpu_pipeline.py`` prints by
how much.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

import numpy as np
import torch
from PIL import ExifTags, Image

from detector.errors import BackendUnavailable
from detector.images import ImageInput, load_image

_log = logging.getLogger(__name__)

DecoderLibrary = Literal["auto", "torchcodec", "torchvision"]
# Frame types the device decodes: SOF0 (baseline) and SOF1 (extended sequential), Huffman-coded.
_SEQUENTIAL_FRAMES = (0xC0, 0xC1)
_START_OF_FRAME = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # not DHT, JPG, DAC
_START_OF_SCAN = 0xDA
# Above this many pixels a JPEG takes the CPU path: a batch of 64 of them is already ~5 GB of decoded pixels.
MAX_DEVICE_PIXELS = 25_000_000


@dataclass(frozen=True)
class EncodedJpeg:
    """A JPEG for the device: its bytes (1-D uint8 CPU tensor), its size, whether it is gray (``mode`` "L") or
    colour ("RGB"), and the CPU path (``fallback()``: RGB uint8 pixels, or today's error) if the device fails it."""

    data: torch.Tensor
    height: int
    width: int
    mode: Literal["RGB", "L"]
    fallback: Callable[[], np.ndarray]


# What a reader thread hands the device: a JPEG to decode there, or pixels decoded on the CPU.
Prepared = EncodedJpeg | np.ndarray


def _frame_marker(data: bytes | bytearray) -> int | None:
    """The start-of-frame marker of a JPEG stream (0xC0 baseline, 0xC2 progressive, ...), None before a scan or on
    malformed segments."""
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in _START_OF_FRAME:
            return marker
        if marker == _START_OF_SCAN:
            return None
        position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")
    return None


def device_jpeg(data: bytes | bytearray, fallback: Callable[[], np.ndarray]) -> EncodedJpeg | None:
    """``data`` as an :class:`EncodedJpeg` when the device decodes it as the CPU would, else None."""
    if data[:2] != b"\xff\xd8" or data[-2:] != b"\xff\xd9" or _frame_marker(data) not in _SEQUENTIAL_FRAMES:
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            upright = image.getexif().get(ExifTags.Base.Orientation, 1) == 1
            adobe_rgb = "adobe" in image.info and image.info.get("adobe_transform") != 1 and image.mode == "RGB"
            mode = image.mode
            width, height = image.size
    except Exception:  # anything Pillow cannot even open is the CPU path's to report
        return None
    if image.format != "JPEG" or mode not in ("RGB", "L") or not upright or adobe_rgb:
        return None
    if width * height > MAX_DEVICE_PIXELS:
        return None
    buffer = data if isinstance(data, bytearray) else bytearray(data)  # writable: torch.frombuffer warns otherwise
    gray = mode == "L"
    return EncodedJpeg(torch.frombuffer(buffer, dtype=torch.uint8), height, width, "L" if gray else "RGB", fallback)


def prepare_image(source: ImageInput) -> Prepared:
    """What the device needs of an image: a JPEG it decodes, or else the pixels :func:`load_image` gives (with its
    errors, :class:`detector.errors.ImageError`, for a file it cannot read)."""
    data: bytes | bytearray
    if isinstance(source, (str, Path)):
        try:
            data = bytearray(Path(source).read_bytes())
        except OSError:
            return load_image(source)  # missing, a folder, unreadable: its error, in its words
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = bytearray(source)
    else:
        return load_image(source)
    encoded = device_jpeg(data, lambda: load_image(source))
    return encoded if encoded is not None else load_image(source)


class JpegDecoder:
    """Decodes lists of JPEGs on ``device`` in one call; ``None`` for each image the decoder fails.

    Args:
        device: where the pixels go (nvJPEG on CUDA; libjpeg-turbo on the CPU).
        library: "auto" (TorchCodec, else torchvision: the first that decodes a test image here), or one of them.

    Raises:
        BackendUnavailable: no decoder works on ``device`` (or the one asked for does not).
    """

    def __init__(self, device: str | torch.device, library: DecoderLibrary = "auto"):
        self.device = torch.device(device)
        candidates = ("torchcodec", "torchvision") if library == "auto" else (library,)
        problems = []
        for name in candidates:
            try:
                self._decode = _decoder(name, self.device)
                _self_check(self._decode)
            except Exception as exc:  # not installed, no nvJPEG, a driver problem: try the next
                problems.append(f"{name}: {exc}")
                continue
            self.library = name
            return
        raise BackendUnavailable(f"no JPEG decoder works on {self.device}: {'; '.join(problems)}")

    def __call__(self, encoded: Sequence[torch.Tensor]) -> list[torch.Tensor | None]:
        """(3, H, W) uint8 RGB images on the device, in order; None where decoding failed.

        One bad image fails the whole call, so a failed call is split in halves until the bad ones are alone:
        k bad images in a batch of n cost about 2k·log2(n) more calls, not n.
        """
        if not encoded:
            return []
        try:
            return list(self._decode(list(encoded)))
        except Exception:
            if len(encoded) == 1:
                return [None]
        _log.debug("a batch of %d JPEGs failed to decode; splitting it", len(encoded))
        half = len(encoded) // 2
        return self(encoded[:half]) + self(encoded[half:])


def _decoder(name: str, device: torch.device) -> Callable[[list[torch.Tensor]], list[torch.Tensor]]:
    if name == "torchcodec":
        from torchcodec.decoders import decode_jpeg as torchcodec_decode

        return lambda batch: cast(list[torch.Tensor], torchcodec_decode(batch, mode="RGB", device=device))
    if name == "torchvision":
        from torchvision.io import ImageReadMode
        from torchvision.io import decode_jpeg as torchvision_decode

        return lambda batch: torchvision_decode(batch, mode=ImageReadMode.RGB, device=device)
    raise ValueError(f"unknown JPEG decoder {name!r}")


def _self_check(decode: Callable[[list[torch.Tensor]], list[torch.Tensor]]) -> None:
    """Decode a small JPEG; raise unless its size comes back."""
    pixels = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    (image,) = decode([torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)])
    if tuple(image.shape) != (3, 24, 40):
        raise RuntimeError(f"decoded a 40×24 test JPEG to shape {tuple(image.shape)}")
