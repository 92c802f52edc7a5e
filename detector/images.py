"""Turn whatever a user hands us (path, bytes, PIL image, numpy array) into RGB uint8 pixels the way they see them.

EXIF orientation is applied (a phone photo taken in portrait is detected upright); grayscale, bilevel, palette,
CMYK and other modes are converted to RGB; transparency is composited onto white (what a viewer shows, instead of
whatever colour hides under alpha 0); 16-bit images keep their full range scaled to 8 bits (Pillow's own conversion
would clip them at 255); animated images give their first frame. Needs only numpy and Pillow; simplejpeg and
OpenCV (the ``fast`` extra) decode plain JPEGs and PNGs faster, to the same pixels.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from detector.errors import ImageError

try:  # libjpeg-turbo without Pillow's per-image overhead; optional (the "fast" extra)
    import simplejpeg
except ImportError:  # pragma: no cover - depends on the environment
    simplejpeg = None
try:  # a faster PNG decoder; optional (the "fast" extra)
    import cv2
except ImportError:  # pragma: no cover - depends on the environment
    cv2 = None  # type: ignore[assignment]

ImageInput = str | Path | bytes | bytearray | memoryview | Image.Image | np.ndarray

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def open_image(source: str | Path | bytes | bytearray | memoryview) -> Image.Image:
    """Open (lazily: only the header is read) an encoded image from a path or bytes."""
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            if len(source) == 0:
                raise ImageError("empty image data")
            return Image.open(io.BytesIO(bytes(source)))
        path = Path(source)
        if not path.exists():
            raise ImageError(f"no such file: {path}")
        if not path.is_file():
            raise ImageError(f"not a file: {path}")
        return Image.open(path)
    except UnidentifiedImageError:
        raise ImageError("not an image, or an image format Pillow cannot read") from None
    except (OSError, ValueError) as exc:
        raise ImageError(f"cannot read image: {exc}") from None


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """Decode ``image`` (first frame, EXIF orientation applied) into an (H, W, 3) uint8 RGB array.

    Plain JPEGs and PNGs go through faster decoders that give the same pixels (:func:`_decode_plain_jpeg`,
    :func:`_decode_plain_png`); everything else, and anything those decline, through Pillow.
    """
    fast = _decode_plain_jpeg(image) if image.format == "JPEG" else _decode_plain_png(image)
    if fast is not None:
        return fast
    try:
        image.seek(0)
        image = ImageOps.exif_transpose(image)
        return _convert_mode(image)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image too large: {exc}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        # Pillow reports truncated and corrupt data as OSError/ValueError/SyntaxError from the decoder.
        raise ImageError(f"corrupt or truncated image: {exc}") from None


def _convert_mode(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        # 16-bit grayscale (Pillow decodes 16-bit PNGs as "I;16" or "I"): full range 0..65535 onto 0..255.
        array = np.asarray(image, dtype=np.float64)
        gray = np.clip(np.rint(array * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "F":
        gray = np.clip(np.rint(np.asarray(image, dtype=np.float64)), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8).copy()


def _whole_file(image: Image.Image) -> bytes | None:
    """The encoded bytes of the file Pillow read ``image``'s header from, leaving its position where it was (Pillow
    reads on from there if the fast path declines)."""
    source = getattr(image, "fp", None)
    try:
        position = source.tell()  # type: ignore[union-attr]
        source.seek(0)  # type: ignore[union-attr]
        data = source.read()  # type: ignore[union-attr]
        source.seek(position)  # type: ignore[union-attr]
    except (OSError, ValueError, AttributeError):
        return None
    return data if isinstance(data, bytes) else None


def _decode_plain_jpeg(image: Image.Image) -> np.ndarray | None:
    """Pixels of an upright RGB or gray JPEG through simplejpeg; None where Pillow's path must decide.

    Both libraries run libjpeg-turbo with the same settings (accurate integer IDCT, fancy upsampling), so the pixels
    are the same (tests check it) in about half the time. Anything unusual (CMYK, EXIF rotation, a warning from the
    decoder such as a truncated file) goes through Pillow, which keeps its behaviour and error messages.
    """
    if simplejpeg is None or image.format != "JPEG" or image.mode not in ("RGB", "L"):
        return None
    if image.getexif().get(0x0112, 1) != 1:
        return None
    data = _whole_file(image)
    if data is None:
        return None
    try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB")
    except (OSError, ValueError):
        return None


def _decode_plain_png(image: Image.Image) -> np.ndarray | None:
    """Pixels of an upright 8-bit RGB or gray PNG without transparency, gamma or animation through OpenCV's decoder
    (libpng or libspng); None where Pillow's path must decide.

    PNG is lossless, so both give the same pixels (tests check it), OpenCV in 40–70 % of the time. A decoder error
    (a truncated or corrupt file) also goes back to Pillow, for its behaviour and its error messages.
    """
    if cv2 is None or image.format != "PNG" or image.mode not in ("RGB", "L"):
        return None
    if "transparency" in image.info or "gamma" in image.info or getattr(image, "is_animated", False):
        return None
    data = _whole_file(image)
    # An eXIf chunk may rotate the image (Pillow's getexif would decode the whole file to find it: look for it).
    if data is None or b"eXIf" in data:
        return None
    try:
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        return None
    if pixels is None or pixels.dtype != np.uint8 or pixels.shape[:2] != (image.height, image.width):
        return None
    if pixels.ndim == 2:
        return np.repeat(pixels[:, :, None], 3, axis=2)
    if pixels.shape[2] != 3:
        return None
    return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)


def array_to_rgb(array: np.ndarray) -> np.ndarray:
    """Normalise a pixel array: (H, W) gray, (H, W, 1|3|4) channels; uint8, uint16 or float in [0, 1]."""
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ImageError(f"image array must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageError(f"image array is empty: {array.shape}")
    if array.dtype == np.uint16:
        array = np.rint(array.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        array = np.clip(np.rint(array.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ImageError(f"unsupported image array dtype {array.dtype}")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    elif array.shape[2] == 4:
        alpha = array[:, :, 3:].astype(np.float32) / 255.0
        array = np.rint(array[:, :, :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    return np.ascontiguousarray(array)


def load_image(source: ImageInput) -> np.ndarray:
    """RGB uint8 (H, W, 3) pixels of a path, encoded bytes, PIL image or numpy array."""
    if isinstance(source, np.ndarray):
        return array_to_rgb(source)
    if isinstance(source, Image.Image):
        return to_rgb_array(source)
    if isinstance(source, (str, Path, bytes, bytearray, memoryview)):
        with open_image(source) as image:
            return to_rgb_array(image)
    raise ImageError(f"cannot read an image from a {type(source).__name__}")
