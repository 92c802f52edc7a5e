"""Turn whatever a user hands us (path, bytes, PIL image, numpy array) into RGB uint8 pixels the way they see them.

EXIF orientation is applied (a phone photo taken in portrait is detected upright); grayscale, bilevel, palette,
CMYK and other modes are converted to RGB; transparency is composited onto white (what a viewer shows, instead of
whatever colour hides under alpha 0); 16-bit images keep their full range scaled to 8 bits (Pillow's own conversion
would clip them at 255); animated images give their first frame. Needs only numpy and Pillow; simplejpeg and
OpenCV (the ``fast`` extra) decode plain JPEGs and PNGs faster, to the same pixels.

Bad files raise :class:`~detector.errors.ImageError` and nothing else: missing, empty, not an image, truncated or
corrupt (whatever exception Pillow's decoder raises), or more than ``max_pixels`` pixels
(:class:`~detector.errors.ImageTooLarge`, refused from the header, before any pixel is decoded). Metadata never
makes pixels unreadable: a garbage EXIF, ICC or XMP block is ignored as a browser ignores it, and the picture is
turned upright as far as its orientation can be read, else shown as stored. ``tests/fuzz`` mutates real
photographs in every format to hold this.
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from detector.errors import ImageError, ImageTooLarge

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
# The most pixels an image may have by default: Pillow's own decompression-bomb limit (2 × its default
# Image.MAX_IMAGE_PIXELS, about 13 400 × 13 400), past which it refuses to open a file anyway. Decoding that many
# takes 716 MB in Pillow (4 bytes a pixel) and 537 MB more for the RGB array.
MAX_PIXELS = 178_956_970
# What Pillow's decoders raise on hostile data besides OSError (truncated, broken stream) and SyntaxError (bad
# structure): a header field past its table (IndexError, KeyError), a size of 0 or 2⁶⁴ (ZeroDivisionError,
# OverflowError), a short read (struct.error, EOFError), a value of the wrong type (TypeError, ValueError). Reading a
# file someone handed us, all of them mean the same: the file is corrupt.
_CORRUPT = (
    OSError,
    SyntaxError,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    ArithmeticError,
    EOFError,
    struct.error,
)
# EXIF orientation (1 = as stored) → the transposition that shows the picture upright.
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def open_image(source: str | Path | bytes | bytearray | memoryview, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open (lazily: only the header is read) an encoded image from a path or bytes.

    Raises:
        ImageTooLarge: the header claims more than ``max_pixels`` pixels (nothing is decoded).
        ImageError: missing, not a file, empty, not an image, or a header Pillow cannot parse.
    """
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            if len(source) == 0:
                raise ImageError("empty image data")
            image = Image.open(io.BytesIO(bytes(source)))
        else:
            path = Path(source)
            if not path.exists():
                raise ImageError(f"no such file: {path}")
            if not path.is_file():
                raise ImageError(f"not a file: {path}")
            image = Image.open(path)
    except UnidentifiedImageError:
        raise ImageError("not an image, or an image format Pillow cannot read") from None
    except Image.DecompressionBombError as exc:
        raise _too_large(exc, max_pixels) from None
    except MemoryError:
        raise ImageTooLarge("image too large to open here: its header asks for more memory than there is") from None
    except _CORRUPT as exc:
        raise ImageError(f"cannot read image: {_reason(exc)}") from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ImageTooLarge(
            f"image too large: {width}×{height} = {width * height:,} pixels; the limit is {max_pixels:,}"
        )
    if width <= 0 or height <= 0:
        image.close()
        raise ImageError(f"image has no pixels ({width}×{height})")
    return image


def _too_large(exc: Image.DecompressionBombError, max_pixels: int) -> ImageTooLarge:
    # Pillow refused the header before we could see the size; its message gives the pixel count.
    claimed = re.search(r"\((\d+) pixels\)", str(exc))
    pixels = f"{int(claimed[1]):,} pixels" if claimed else "more pixels than Pillow opens"
    pillows = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else max_pixels
    return ImageTooLarge(f"image too large: {pixels}; the limit is {min(max_pixels, pillows):,}")


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """Decode ``image`` (first frame, EXIF orientation applied) into an (H, W, 3) uint8 RGB array.

    Plain JPEGs and PNGs go through faster decoders that give the same pixels (:func:`_decode_plain_jpeg`,
    :func:`_decode_plain_png`); everything else, and anything those decline, through Pillow.

    Raises:
        ImageError: the data is truncated or corrupt (:class:`ImageTooLarge` where a frame is too large).
    """
    fast = _decode_plain_jpeg(image) if image.format == "JPEG" else _decode_plain_png(image)
    if fast is not None:
        return fast
    try:
        image.seek(0)
        # Pixels first: reading the orientation must not be what decodes them (a PNG's EXIF may follow its pixels).
        image.load()
        method = _UPRIGHT.get(exif_orientation(image))
        return _convert_mode(image.transpose(method) if method is not None else image)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise _too_large(exc, MAX_PIXELS) from None
    except MemoryError:
        raise ImageTooLarge(f"image too large to decode here: {image.width}×{image.height} pixels") from None
    except _CORRUPT as exc:
        raise ImageError(f"corrupt or truncated image: {_reason(exc)}") from None


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation of ``image`` (1–8; 1 is as stored), or 1 where its EXIF block is missing, unreadable
    or holds no valid orientation: metadata never makes the pixels unreadable."""
    try:
        value = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # Pillow's EXIF parser raises whatever garbage makes it trip over; the pixels are fine
        return 1
    return value if isinstance(value, int) and value in _UPRIGHT else 1


def _convert_mode(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        # 16-bit grayscale (Pillow decodes 16-bit PNGs as "I;16" or "I"): full range 0..65535 onto 0..255, that is
        # round(x / 257) (255 · 257 = 65535; never a tie), in integers: 4 bytes a pixel where float64 took 16.
        wide = np.clip(np.asarray(image), 0, 65535).astype(np.uint32)
        wide += 128
        wide //= 257
        return np.repeat(wide.astype(np.uint8)[:, :, None], 3, axis=2)
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
    if exif_orientation(image) != 1:
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
    if data is None or b"eXIf" in data or not _intact_png(data, image):
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


def _intact_png(data: bytes, image: Image.Image) -> bool:
    """Every chunk whole with a valid CRC up to IEND, and any ICC profile plausible: a file libpng decodes without a
    word. Anything else goes to Pillow, which reports it as an error or ignores it, where libpng would print its
    complaint on stderr beside ours."""
    view = memoryview(data)
    at = 8
    while at + 12 <= len(data):
        length = int.from_bytes(view[at : at + 4], "big")
        end = at + 12 + length
        if end > len(data) or zlib.crc32(view[at + 4 : end - 4]) != int.from_bytes(view[end - 4 : end], "big"):
            return False
        kind = bytes(view[at + 4 : at + 8])
        if kind == b"iCCP" and not _plausible_icc(image.info.get("icc_profile")):
            return False
        if kind == b"IEND":
            return True
        at = end
    return False


def _plausible_icc(profile: object) -> bool:
    # An ICC profile's header: its own size, then the 'acsp' signature at byte 36 (ICC.1:2022, 7.2).
    return (
        isinstance(profile, bytes)
        and len(profile) >= 132
        and int.from_bytes(profile[:4], "big") == len(profile)
        and profile[36:40] == b"acsp"
    )


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


def load_image(source: ImageInput, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """RGB uint8 (H, W, 3) pixels of a path, encoded bytes, PIL image or numpy array.

    Raises:
        ImageError: for anything that is not a readable image, and :class:`ImageTooLarge` for an encoded image of
            more than ``max_pixels`` pixels; never another exception for a bad file.
    """
    if isinstance(source, np.ndarray):
        return array_to_rgb(source)
    if isinstance(source, Image.Image):
        return to_rgb_array(source)
    if isinstance(source, (str, Path, bytes, bytearray, memoryview)):
        with open_image(source, max_pixels=max_pixels) as image:
            return to_rgb_array(image)
    raise ImageError(f"cannot read an image from a {type(source).__name__}")
