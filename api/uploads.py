"""Uploaded images, checked at the edge: media type, format allow-list, pixel count (before decoding), then pixels.

The order matters for hostile input: the format is sniffed from the magic bytes and checked against the declared
content type; the header alone gives the size, so a decompression bomb is refused (413) before any pixel is
decoded; only then does ``detector.images`` decode the first frame with EXIF orientation into RGB.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from fastapi import Request
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.errors import InvalidImage, InvalidRequest, TooManyImages, TooManyPixels, UnsupportedMediaType
from detector.errors import ImageError, ImageTooLarge
from detector.images import open_image, to_rgb_array

log = logging.getLogger("api.uploads")

# Formats we decode, by media type. Anything else is refused with 415 instead of reaching a rarely used decoder.
MEDIA_TYPES = {
    "image/jpeg": "JPEG",
    "image/jpg": "JPEG",
    "image/pjpeg": "JPEG",
    "image/png": "PNG",
    "image/webp": "WEBP",
    "image/gif": "GIF",
    "image/bmp": "BMP",
    "image/x-ms-bmp": "BMP",
    "image/tiff": "TIFF",
}
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
# Pillow names some variants differently: MPO is a multi-picture JPEG.
_PILLOW_FORMATS = {**{name: name for name in FORMATS}, "MPO": "JPEG"}
# Part types that say nothing about the format: the bytes decide.
GENERIC_TYPES = ("", "application/octet-stream")


@dataclass(frozen=True)
class Upload:
    """One uploaded image as received: its bytes and the media type the client declared (lower case, no params)."""

    data: bytes
    content_type: str


def media_type(header: str | None) -> str:
    """``"Image/PNG; q=1"`` → ``"image/png"``."""
    return (header or "").split(";", 1)[0].strip().lower()


def sniff_format(data: bytes) -> str | None:
    """The format named by ``data``'s magic bytes, among ``FORMATS``; None for anything else."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data.startswith(b"BM"):
        return "BMP"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    return None


def check_media_type(content_type: str) -> None:
    """Refuse (415) a declared type that is neither generic nor one of ``MEDIA_TYPES``."""
    if content_type not in GENERIC_TYPES and content_type not in MEDIA_TYPES:
        raise UnsupportedMediaType(
            f"unsupported image type {content_type!r}; send one of: {', '.join(sorted(set(MEDIA_TYPES)))}"
        )


async def read_multipart(request: Request, *, max_files: int, max_fields: int) -> list[tuple[str, Upload | str]]:
    """A multipart body's parts in order: files as ``Upload`` (read), text fields as ``str``.

    Starlette bounds the parts (``max_files`` files, ``max_fields`` text fields of at most 64 KiB); more files than
    ``max_files`` is ``TooManyImages`` (413), a malformed body ``InvalidRequest``.
    """
    try:
        form = await request.form(max_files=max_files, max_fields=max_fields, max_part_size=64 * 1024)
    except StarletteHTTPException as exc:  # Starlette reports malformed or oversized forms as 400
        if str(exc.detail).startswith("Too many files"):
            raise TooManyImages(f"at most {max_files} images per request") from None
        raise InvalidRequest(f"malformed multipart body: {exc.detail}") from None
    try:
        parts: list[tuple[str, Upload | str]] = []
        for name, value in form.multi_items():
            if isinstance(value, str):
                parts.append((name, value))
            else:
                parts.append((name, Upload(await value.read(), media_type(value.content_type))))
        return parts
    finally:
        await form.close()


def pixel_count(upload: Upload, *, max_pixels: int) -> int:
    """Check ``upload`` as :func:`decode_upload` does, from its header alone, and give its width × height: what
    decoding it will hold (``api.memory``). Raises what :func:`decode_upload` raises for its header."""
    with _open_checked(upload, max_pixels=max_pixels) as image:
        return image.width * image.height


def decode_upload(upload: Upload, *, max_pixels: int) -> np.ndarray:
    """Check and decode one upload into RGB uint8 (H, W, 3) pixels, upright.

    Raises ``UnsupportedMediaType`` (415) for a type outside the allow-list or one that contradicts the bytes,
    ``TooManyPixels`` (413) past ``max_pixels``, and ``InvalidImage`` (422) for empty, corrupt or truncated data.
    """
    with _open_checked(upload, max_pixels=max_pixels) as image:
        try:
            return to_rgb_array(image)
        except ImageError as exc:
            raise InvalidImage(str(exc)) from None
        except Exception as exc:
            # Pillow's decoders raise many exception types on hostile data (struct.error, IndexError, ...);
            # no upload may produce a 500, so any failure to decode is the upload's fault.
            log.warning("image decoder failed: %r", exc)
            raise InvalidImage(f"corrupt image: {type(exc).__name__}") from None


def _open_checked(upload: Upload, *, max_pixels: int) -> Image.Image:
    """The upload opened (its header read, no pixel decoded) once type, format and size pass; see decode_upload."""
    check_media_type(upload.content_type)
    if not upload.data:
        raise InvalidImage("empty image")
    sniffed = sniff_format(upload.data)
    declared = MEDIA_TYPES.get(upload.content_type)
    if sniffed is None:
        expected = declared or " / ".join(FORMATS)
        raise InvalidImage(f"not a valid {expected} image (unrecognised data)")
    if declared is not None and declared != sniffed:
        raise UnsupportedMediaType(f"content type {upload.content_type!r} does not match the data, which is {sniffed}")
    try:
        image = open_image(upload.data)
    except ImageTooLarge as exc:
        raise TooManyPixels(str(exc)) from None
    except ImageError as exc:
        raise InvalidImage(str(exc)) from None
    try:
        if _PILLOW_FORMATS.get(image.format or "") != sniffed:
            raise InvalidImage(f"not a valid {sniffed} image")
        width, height = image.size
        if width <= 0 or height <= 0:
            raise InvalidImage(f"image has no pixels ({width}×{height})")
        if width * height > max_pixels:
            raise TooManyPixels(f"image has {width}×{height} = {width * height} pixels; the limit is {max_pixels}")
    except BaseException:
        image.close()
        raise
    return image
