"""Broken image files made from real photographs: seeds in every format we read, and the ways files break.

:func:`seeds` encodes a few sample photographs (``detector.samples``), shrunk, as JPEG (baseline with EXIF and ICC,
EXIF-rotated, progressive, gray, CMYK), PNG (RGB with eXIf/iCCP/XMP, RGBA, palette with transparency, 16-bit
gray), WebP (lossy; lossless with EXIF and ICC), GIF (still, animated), BMP (24-bit, 32-bit, palette) and TIFF
(raw, LZW, deflate, JPEG-compressed, 16-bit, two pages, and one with EXIF, ICC and XMP).

:func:`make_case` turns case ``i`` of a run seeded ``s`` into one file, the same on every machine and whatever the
number of cases: a seed and one to three mutations:

- anywhere in the file: bit flips, bytes overwritten, truncation, bytes inserted, deleted or repeated;
- along its structure: JPEG marker segments dropped, repeated, their lengths or the frame size changed, markers in
  the scan data, the end marker cut; PNG chunks dropped, repeated, swapped, their lengths, checksums or header fields
  changed, their data changed with a valid checksum, IEND cut; GIF, WebP, BMP and TIFF header fields, chunk sizes
  and directory entries set to edge values (0, 1, 2³¹ − 1, 2³² − 1, …);
- garbage metadata with the pixels intact (``Case.intact``): EXIF, ICC and XMP blocks of random or half-valid bytes
  in each format's own container; these must decode, to the seed's pixels in one of the eight EXIF orientations;
- a wrong file-name extension (``Case.suffix``), also with the pixels intact.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from PIL import Image, ImageCms

from detector.samples import photo

PHOTOS = ("grace_hopper.jpg", "chelsea.png", "coffee.png", "astronaut.png", "camera.png")
SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}
# The media type a client sends for a file of each extension (a renamed file's contradicts its bytes).
MEDIA_TYPES = {".jpg": "image/jpeg", ".png": "image/png", ".webp": "image/webp", ".gif": "image/gif",
               ".bmp": "image/bmp", ".tif": "image/tiff"}  # fmt: skip
# Values at the edges of the fields they are written into.
EDGES = (0, 1, 2, 3, 7, 8, 15, 16, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF)


@dataclass(frozen=True)
class Seed:
    """A well-formed file: ``name`` says what it is (``chelsea-progressive``), ``format`` is Pillow's name."""

    name: str
    format: str
    data: bytes


@dataclass(frozen=True)
class Case:
    """One mutated file. ``operations`` names the mutations applied in order; ``intact``: only metadata or the
    extension changed, so it must decode to the seed's pixels."""

    index: int
    seed: Seed
    operations: tuple[str, ...]
    data: bytes
    suffix: str
    intact: bool

    @property
    def file_name(self) -> str:
        return f"{self.index:05d}-{self.seed.name}{self.suffix}"


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _exif(orientation: int = 1) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    exif[0x010F] = "Fuzz Camera"  # Make
    exif[0x0132] = "2024:01:02 03:04:05"  # DateTime
    return exif


XMP = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="1"/></rdf:RDF></x:xmpmeta>'
)


# Each flavour is made from one photograph (flavour k from photograph k mod 5): (name, format, encoder).
FLAVOURS: tuple[tuple[str, str, Callable[[Image.Image, Image.Image, bytes], bytes]], ...] = (
    ("rotated", "JPEG", lambda rgb, rgba, icc: _encode(rgb, "JPEG", quality=85, exif=_exif(6))),
    ("progressive", "JPEG", lambda rgb, rgba, icc: _encode(rgb, "JPEG", quality=80, progressive=True, optimize=True)),
    ("gray", "JPEG", lambda rgb, rgba, icc: _encode(rgb.convert("L"), "JPEG", quality=90)),
    ("cmyk", "JPEG", lambda rgb, rgba, icc: _encode(rgb.convert("CMYK"), "JPEG", quality=90)),
    ("rgba", "PNG", lambda rgb, rgba, icc: _encode(rgba, "PNG")),
    ("palette", "PNG", lambda rgb, rgba, icc: _encode(rgb.quantize(64), "PNG", transparency=0)),
    ("gray16", "PNG", lambda rgb, rgba, icc: _encode(_gray16(rgb), "PNG")),
    ("lossy", "WEBP", lambda rgb, rgba, icc: _encode(rgb, "WEBP", quality=80)),
    ("lossless", "WEBP", lambda rgb, rgba, icc: _encode(rgb, "WEBP", lossless=True, exif=_exif(), icc_profile=icc)),
    ("still", "GIF", lambda rgb, rgba, icc: _encode(rgb, "GIF")),
    ("animated", "GIF", lambda rgb, rgba, icc: _animated_gif(rgb)),
    ("rgb", "BMP", lambda rgb, rgba, icc: _encode(rgb, "BMP")),
    ("rgba", "BMP", lambda rgb, rgba, icc: _encode(rgba, "BMP")),
    ("palette", "BMP", lambda rgb, rgba, icc: _encode(rgb.quantize(16), "BMP")),
    ("raw", "TIFF", lambda rgb, rgba, icc: _encode(rgb, "TIFF")),
    ("lzw", "TIFF", lambda rgb, rgba, icc: _encode(rgb, "TIFF", compression="tiff_lzw")),
    ("deflate", "TIFF", lambda rgb, rgba, icc: _encode(rgb, "TIFF", compression="tiff_adobe_deflate")),
    ("jpeg", "TIFF", lambda rgb, rgba, icc: _encode(rgb, "TIFF", compression="jpeg")),
    ("gray16", "TIFF", lambda rgb, rgba, icc: _encode(_gray16(rgb), "TIFF")),
    ("pages", "TIFF", lambda rgb, rgba, icc: _encode(rgb, "TIFF", save_all=True, append_images=[rgb.rotate(90)])),
    ("meta", "TIFF", lambda rgb, rgba, icc: _encode(rgb, "TIFF", exif=_exif(), icc_profile=icc, xmp=XMP)),
)


@cache
def seeds(size: int = 96) -> tuple[Seed, ...]:
    """The well-formed files mutations start from: sample photographs shrunk to ``size`` pixels on their long side,
    in every format and flavour the module docstring lists."""
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    found: list[Seed] = []

    def add(name: str, fmt: str, data: bytes) -> None:
        found.append(Seed(name, fmt, data))

    for index, name in enumerate(PHOTOS):
        with Image.open(photo(name)) as original:
            rgb = original.convert("RGB")
        rgb.thumbnail((size, size))
        stem = name.rsplit(".", 1)[0]
        alpha = Image.linear_gradient("L").resize(rgb.size)
        rgba = rgb.copy()
        rgba.putalpha(alpha)
        # Every photograph as a plain JPEG and PNG; the flavours spread over them so that each is a real photo.
        add(f"{stem}", "JPEG", _encode(rgb, "JPEG", quality=90, exif=_exif(), icc_profile=icc))
        add(f"{stem}", "PNG", _encode(rgb, "PNG", exif=_exif(), icc_profile=icc, pnginfo=_png_xmp()))
        for flavour, fmt, encode in FLAVOURS[index :: len(PHOTOS)]:
            add(f"{stem}-{flavour}", fmt, encode(rgb, rgba, icc))
    return tuple(found)


def _png_xmp():
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_itxt("XML:com.adobe.xmp", XMP.decode())
    return info


def _gray16(rgb: Image.Image) -> Image.Image:
    gray = rgb.convert("L")
    return Image.frombytes("I;16", gray.size, bytes(b for v in gray.tobytes() for b in (v, v)))


def _animated_gif(rgb: Image.Image) -> bytes:
    return _encode(rgb, "GIF", save_all=True, append_images=[rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)])


# --- mutations anywhere in the file -------------------------------------------------------------------------------


def _edge(rng: random.Random, bits: int) -> int:
    value = rng.choice(EDGES) if rng.random() < 0.8 else rng.getrandbits(bits)
    return value & ((1 << bits) - 1)


def bit_flips(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 4, 16))):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def overwrite(data: bytes, rng: random.Random) -> bytes:
    start = rng.randrange(len(data))
    length = rng.choice((1, 2, 4, 16, 256))
    fill = rng.choice((b"\x00", b"\xff", None))
    block = fill * length if fill else rng.randbytes(length)
    return data[:start] + block + data[start + length :]


def truncate(data: bytes, rng: random.Random) -> bytes:
    # Half the cuts near the end, where a download or a copy breaks off.
    cut = rng.randrange(len(data)) if rng.random() < 0.5 else len(data) - 1 - rng.randrange(min(len(data), 64))
    return data[: max(cut, 0)]


def insert(data: bytes, rng: random.Random) -> bytes:
    at = rng.randrange(len(data) + 1)
    return data[:at] + rng.randbytes(rng.choice((1, 3, 64, 1024))) + data[at:]


def delete(data: bytes, rng: random.Random) -> bytes:
    at = rng.randrange(len(data))
    return data[:at] + data[at + rng.choice((1, 2, 16, 512)) :]


def repeat(data: bytes, rng: random.Random) -> bytes:
    at = rng.randrange(len(data))
    span = data[at : at + rng.choice((2, 16, 256, 4096))]
    return data[:at] + span * rng.choice((2, 3, 50)) + data[at:]


GENERIC = {
    "bit_flips": bit_flips,
    "overwrite": overwrite,
    "truncate": truncate,
    "insert": insert,
    "delete": delete,
    "repeat": repeat,
}


# --- JPEG marker segments -----------------------------------------------------------------------------------------


def jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(offset, marker, size in bytes with the marker) of each segment from SOI to SOS included."""
    segments = [(0, 0xD8, 2)]
    at = 2
    while at + 4 <= len(data) and data[at] == 0xFF:
        marker = data[at + 1]
        size = 2 + struct.unpack(">H", data[at + 2 : at + 4])[0]
        segments.append((at, marker, size))
        at += size
        if marker == 0xDA:
            break
    return segments


def jpeg_drop_segment(data: bytes, rng: random.Random) -> bytes | None:
    segments = jpeg_segments(data)[1:]
    if not segments:
        return None
    at, _, size = rng.choice(segments)
    return data[:at] + data[at + size :]


def jpeg_repeat_segment(data: bytes, rng: random.Random) -> bytes | None:
    segments = jpeg_segments(data)[1:]
    if not segments:
        return None
    at, _, size = rng.choice(segments)
    return data[: at + size] + data[at : at + size] + data[at + size :]


def jpeg_segment_length(data: bytes, rng: random.Random) -> bytes | None:
    segments = jpeg_segments(data)[1:]
    if not segments:
        return None
    at, _, size = rng.choice(segments)
    length = rng.choice((0, 1, 2, size - 3, size - 1, size + 1, 0xFFFF, rng.getrandbits(16)))
    return data[: at + 2] + struct.pack(">H", length & 0xFFFF) + data[at + 4 :]


def jpeg_frame(data: bytes, rng: random.Random) -> bytes | None:
    """Change a field of the start-of-frame header: precision, height, width, components or a sampling factor."""
    frames = [s for s in jpeg_segments(data) if s[1] in (0xC0, 0xC1, 0xC2)]
    if not frames:
        return None
    at = frames[0][0] + 4
    out = bytearray(data)
    field = rng.choice(("precision", "height", "width", "components", "sampling", "table"))
    if field in ("height", "width"):
        offset = at + (1 if field == "height" else 3)
        out[offset : offset + 2] = struct.pack(">H", _edge(rng, 16))
    elif field == "precision":
        out[at] = _edge(rng, 8)
    elif field == "components":
        out[at + 5] = _edge(rng, 8)
    else:  # a component's sampling factors or quantisation table
        component = at + 6 + 3 * rng.randrange(max(1, min(3, data[at + 5])))
        if component + 2 < len(out):
            out[component + (1 if field == "sampling" else 2)] = _edge(rng, 8)
    return bytes(out)


def jpeg_scan_markers(data: bytes, rng: random.Random) -> bytes | None:
    """Put a marker (restart, end of image, start of scan, …) into the entropy-coded data."""
    segments = jpeg_segments(data)
    if segments[-1][1] != 0xDA:
        return None
    start = segments[-1][0] + segments[-1][2]
    if start >= len(data) - 2:
        return None
    at = rng.randrange(start, len(data) - 2)
    marker = bytes((0xFF, rng.choice((0xD0, 0xD3, 0xD7, 0xD9, 0xDA, 0xC4, 0xDB, 0xFE, 0x00, 0xFF))))
    return data[:at] + marker + data[at:]


def jpeg_cut_end(data: bytes, rng: random.Random) -> bytes | None:
    return data[:-2] if data.endswith(b"\xff\xd9") else None


# --- PNG chunks -----------------------------------------------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_chunks(data: bytes) -> list[tuple[int, bytes, int]]:
    """(offset, type, size in bytes with length, type and CRC) of each chunk whose header is in the file."""
    chunks = []
    at = len(PNG_SIGNATURE)
    while at + 8 <= len(data):
        length = struct.unpack(">I", data[at : at + 4])[0]
        chunks.append((at, data[at + 4 : at + 8], 12 + length))
        at += 12 + length
    return chunks


def png_drop_chunk(data: bytes, rng: random.Random) -> bytes | None:
    chunks = png_chunks(data)
    if not chunks:
        return None
    at, _, size = rng.choice(chunks)
    return data[:at] + data[at + size :]


def png_repeat_chunk(data: bytes, rng: random.Random) -> bytes | None:
    chunks = png_chunks(data)
    if not chunks:
        return None
    at, _, size = rng.choice(chunks)
    return data[: at + size] + data[at : at + size] + data[at + size :]


def png_swap_chunks(data: bytes, rng: random.Random) -> bytes | None:
    chunks = png_chunks(data)
    if len(chunks) < 2:
        return None
    (a, _, a_size), (b, _, b_size) = sorted(rng.sample(chunks, 2))
    return data[:a] + data[b : b + b_size] + data[a + a_size : b] + data[a : a + a_size] + data[b + b_size :]


def png_chunk_length(data: bytes, rng: random.Random) -> bytes | None:
    chunks = png_chunks(data)
    if not chunks:
        return None
    at, _, size = rng.choice(chunks)
    length = rng.choice((_edge(rng, 32), size - 13, size - 11))
    return data[:at] + struct.pack(">I", length & 0xFFFFFFFF) + data[at + 4 :]


def png_chunk_crc(data: bytes, rng: random.Random) -> bytes | None:
    chunks = [c for c in png_chunks(data) if c[0] + c[2] <= len(data)]
    if not chunks:
        return None
    at, _, size = rng.choice(chunks)
    out = bytearray(data)
    out[at + size - 1 - rng.randrange(4)] ^= 1 << rng.randrange(8)
    return bytes(out)


def png_chunk_data(data: bytes, rng: random.Random) -> bytes | None:
    """Flip bits inside one chunk's data and give it a valid CRC: the damage reaches the chunk's own parser."""
    chunks = [c for c in png_chunks(data) if c[2] > 12 and c[0] + c[2] <= len(data)]
    if not chunks:
        return None
    at, kind, size = rng.choice(chunks)
    payload = bit_flips(data[at + 8 : at + size - 4], rng)
    return data[:at] + png_chunk(kind, payload) + data[at + size :]


def png_header(data: bytes, rng: random.Random) -> bytes | None:
    """A field of IHDR (width, height, bit depth, colour type, compression, filter, interlace) with a valid CRC."""
    if not data.startswith(PNG_SIGNATURE + b"\x00\x00\x00\x0dIHDR") or len(data) < 33:
        return None
    fields = list(struct.unpack(">IIBBBBB", data[16:29]))
    which = rng.randrange(7)
    fields[which] = _edge(rng, 32 if which < 2 else 8)
    return data[:8] + png_chunk(b"IHDR", struct.pack(">IIBBBBB", *fields)) + data[33:]


def png_cut_end(data: bytes, rng: random.Random) -> bytes | None:
    chunks = png_chunks(data)
    return data[: chunks[-1][0]] if chunks and chunks[-1][1] == b"IEND" else None


# --- GIF, WebP, BMP and TIFF headers ------------------------------------------------------------------------------


def _set(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    size = struct.calcsize(fmt)
    if offset + size > len(data):
        return data
    mask = (1 << (8 * size)) - 1
    packed = struct.pack(fmt, value & mask) if fmt[-1].isupper() else struct.pack(fmt, _signed(value & mask, size))
    return data[:offset] + packed + data[offset + size :]


def _signed(value: int, size: int) -> int:
    return value - (1 << (8 * size)) if value >= 1 << (8 * size - 1) else value


def gif_field(data: bytes, rng: random.Random) -> bytes | None:
    if not data.startswith((b"GIF87a", b"GIF89a")):
        return None
    descriptor = data.find(b"\x2c", 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 13))
    choices = [(6, "<H"), (8, "<H"), (10, "<B"), (11, "<B")]
    if descriptor > 0:
        choices += [(descriptor + 1, "<H"), (descriptor + 3, "<H"), (descriptor + 5, "<H"), (descriptor + 7, "<H")]
        choices += [(descriptor + 9, "<B"), (descriptor + 10, "<B")]  # flags, LZW minimum code size
    offset, fmt = rng.choice(choices)
    return _set(data, offset, fmt, _edge(rng, 8 * struct.calcsize(fmt)))


def gif_cut_end(data: bytes, rng: random.Random) -> bytes | None:
    return data[:-1] if data.startswith(b"GIF") and data.endswith(b"\x3b") else None


def webp_chunks(data: bytes) -> list[tuple[int, bytes, int]]:
    """(offset, FourCC, size in bytes with the header and padding) of each chunk after the RIFF header."""
    chunks = []
    at = 12
    while at + 8 <= len(data):
        size = struct.unpack("<I", data[at + 4 : at + 8])[0]
        chunks.append((at, data[at : at + 4], 8 + size + (size & 1)))
        at += 8 + size + (size & 1)
    return chunks


def webp_field(data: bytes, rng: random.Random) -> bytes | None:
    """The RIFF size, a chunk's size, or a size field of the VP8 / VP8L / VP8X header."""
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    chunks = webp_chunks(data)
    choices = [(4, "<I")] + [(at + 4, "<I") for at, _, _ in chunks]
    for at, kind, _ in chunks:
        if kind == b"VP8 ":
            choices += [(at + 14, "<H"), (at + 16, "<H"), (at + 8, "<I")]
        elif kind == b"VP8L":
            choices += [(at + 9, "<I")]
        elif kind == b"VP8X":
            choices += [(at + 8, "<B"), (at + 12, "<I"), (at + 15, "<I")]
    offset, fmt = rng.choice(choices)
    return _set(data, offset, fmt, _edge(rng, 8 * struct.calcsize(fmt)))


def webp_drop_chunk(data: bytes, rng: random.Random) -> bytes | None:
    chunks = webp_chunks(data) if data[:4] == b"RIFF" else []
    if not chunks:
        return None
    at, _, size = rng.choice(chunks)
    return data[:at] + data[at + size :]


BMP_FIELDS = ((2, "<I"), (10, "<I"), (14, "<I"), (18, "<i"), (22, "<i"), (26, "<H"), (28, "<H"), (30, "<I"),
              (34, "<I"), (46, "<I"), (54, "<I"), (58, "<I"))  # fmt: skip


def bmp_field(data: bytes, rng: random.Random) -> bytes | None:
    """A field of the BMP file or DIB header: sizes, offset, width, height, planes, bit count, compression, …"""
    if not data.startswith(b"BM"):
        return None
    offset, fmt = rng.choice(BMP_FIELDS)
    return _set(data, offset, fmt, _edge(rng, 8 * struct.calcsize(fmt)))


def tiff_entries(data: bytes) -> tuple[str, list[int]]:
    """The byte order ("<" or ">") and the offsets of the first directory's 12-byte entries."""
    order = "<" if data[:2] == b"II" else ">"
    if len(data) < 8:
        return order, []
    ifd = struct.unpack(order + "I", data[4:8])[0]
    if ifd + 2 > len(data):
        return order, []
    count = struct.unpack(order + "H", data[ifd : ifd + 2])[0]
    return order, [ifd + 2 + 12 * i for i in range(count) if ifd + 14 + 12 * i <= len(data)]


def tiff_entry(data: bytes, rng: random.Random) -> bytes | None:
    """A directory entry's type, count or value/offset (width, strips, compression, bits per sample, …)."""
    if data[:4] not in (b"II*\x00", b"MM\x00*"):
        return None
    order, entries = tiff_entries(data)
    if not entries or rng.random() < 0.1:
        return _set(data, 4, order + "I", _edge(rng, 32))  # the first directory's offset
    entry = rng.choice(entries)
    offset, fmt = rng.choice(((entry + 2, "H"), (entry + 4, "I"), (entry + 8, "I"), (entry + 8, "H")))
    return _set(data, offset, order + fmt, _edge(rng, 8 * struct.calcsize(fmt)))


STRUCTURAL: dict[str, dict[str, Callable[[bytes, random.Random], bytes | None]]] = {
    "JPEG": {
        "jpeg_drop_segment": jpeg_drop_segment,
        "jpeg_repeat_segment": jpeg_repeat_segment,
        "jpeg_segment_length": jpeg_segment_length,
        "jpeg_frame": jpeg_frame,
        "jpeg_scan_markers": jpeg_scan_markers,
        "jpeg_cut_end": jpeg_cut_end,
    },
    "PNG": {
        "png_drop_chunk": png_drop_chunk,
        "png_repeat_chunk": png_repeat_chunk,
        "png_swap_chunks": png_swap_chunks,
        "png_chunk_length": png_chunk_length,
        "png_chunk_crc": png_chunk_crc,
        "png_chunk_data": png_chunk_data,
        "png_header": png_header,
        "png_cut_end": png_cut_end,
    },
    "GIF": {"gif_field": gif_field, "gif_cut_end": gif_cut_end},
    "WEBP": {"webp_field": webp_field, "webp_drop_chunk": webp_drop_chunk},
    "BMP": {"bmp_field": bmp_field},
    "TIFF": {"tiff_entry": tiff_entry},
}


# --- garbage metadata, pixels intact --------------------------------------------------------------------------------


def garbage_exif(rng: random.Random) -> bytes:
    """An EXIF block (a TIFF structure) that is random bytes, or a valid header over broken entries: an orientation
    of the wrong type or count, offsets past the end, loops."""
    kind = rng.randrange(4)
    if kind == 0:
        return rng.randbytes(rng.choice((0, 1, 7, 64, 700)))
    order = rng.choice((b"II*\x00", b"MM\x00*"))
    endian = "<" if order[:2] == b"II" else ">"
    if kind == 1:  # a header whose first directory is past the end or inside itself
        return order + struct.pack(endian + "I", rng.choice((0, 4, 0xFFFFFFF0, 100_000))) + rng.randbytes(20)
    entries = []
    for _ in range(rng.choice((1, 3, 40))):
        tag = rng.choice((0x0112, 0x0112, 0x8769, 0x8825, 0x010F, rng.getrandbits(16)))
        field_type = rng.choice((3, 3, 1, 2, 4, 5, 7, 12, 0, 13, 0xFFFF))
        count = rng.choice((1, 1, 0, 2, 0xFFFFFFFF, 1 << 20))
        value = rng.choice((6, 3, 8, 9, 0, 0xFFFF, 8, 0xFFFFFFFF))
        entries.append(struct.pack(endian + "HHII", tag, field_type, count, value))
    count = len(entries) if kind == 2 else rng.choice((0xFFFF, len(entries) + 5))
    return order + struct.pack(endian + "I", 8) + struct.pack(endian + "H", count) + b"".join(entries)


def garbage_icc(rng: random.Random) -> bytes:
    """An ICC profile that is random bytes, too short, or a header claiming another size or a bad signature."""
    kind = rng.randrange(3)
    if kind == 0:
        return rng.randbytes(rng.choice((0, 3, 100, 2000)))
    header = bytearray(rng.randbytes(132))
    header[0:4] = struct.pack(">I", rng.choice((0, 132, 1 << 30, 0xFFFFFFFF)))
    header[36:40] = b"acsp" if kind == 1 else b"xxxx"
    header[128:132] = struct.pack(">I", rng.choice((0, 5, 0xFFFFFFFF)))  # tag count
    return bytes(header)


def garbage_xmp(rng: random.Random) -> bytes:
    """XMP that is not XML, is cut off, or is XML with a nonsense orientation."""
    return rng.choice(
        (
            rng.randbytes(200),
            XMP[: rng.randrange(len(XMP))],
            XMP.replace(b'tiff:Orientation="1"', b'tiff:Orientation="' + rng.choice((b"9", b"-1", b"x", b"")) + b'"'),
            b"<x:xmpmeta>" + b"<a>" * 500 + b"\x00\xff\xfe",
        )
    )


def _app(marker: int, payload: bytes) -> bytes:
    payload = payload[: 0xFFFF - 2]
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload


def jpeg_metadata(data: bytes, rng: random.Random) -> bytes | None:
    """An APP1 EXIF, APP2 ICC or APP1 XMP segment of garbage after SOI (replacing the file's own EXIF, if any)."""
    if not data.startswith(b"\xff\xd8"):
        return None
    kind = rng.randrange(3)
    if kind == 0:
        segment = _app(0xE1, b"Exif\x00\x00" + garbage_exif(rng))
        own = [
            (at, size)
            for at, marker, size in jpeg_segments(data)
            if marker == 0xE1 and data[at + 4 : at + 8] == b"Exif"
        ]
        for at, size in reversed(own):
            data = data[:at] + data[at + size :]
    elif kind == 1:
        sequence, total = rng.choice(((1, 1), (1, 2), (2, 1), (0, 0), (3, 2)))
        segment = _app(0xE2, b"ICC_PROFILE\x00" + bytes((sequence, total)) + garbage_icc(rng))
    else:
        segment = _app(0xE1, b"http://ns.adobe.com/xap/1.0/\x00" + garbage_xmp(rng))
    return data[:2] + segment + data[2:]


def png_metadata(data: bytes, rng: random.Random) -> bytes | None:
    """An eXIf, iCCP, iTXt XMP, tEXt or zTXt chunk of garbage after IHDR (replacing the file's own of that kind)."""
    if not data.startswith(PNG_SIGNATURE):
        return None
    kind = rng.randrange(5)
    if kind == 0:
        chunk_type, chunk = b"eXIf", png_chunk(b"eXIf", garbage_exif(rng))
    elif kind == 1:
        profile = garbage_icc(rng)
        body = zlib.compress(profile) if rng.random() < 0.7 else profile  # garbage, or not even zlib
        chunk_type, chunk = b"iCCP", png_chunk(b"iCCP", b"icc\x00\x00" + body)
    elif kind == 2:
        chunk_type, chunk = b"iTXt", png_chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + garbage_xmp(rng))
    elif kind == 3:
        chunk_type, chunk = b"tEXt", png_chunk(b"tEXt", rng.randbytes(rng.choice((0, 5, 80))))
    else:
        chunk_type, chunk = b"zTXt", png_chunk(b"zTXt", b"Comment\x00\x00" + rng.randbytes(40))
    kept = b"".join(data[at : at + size] for at, kind_, size in png_chunks(data) if kind_ != chunk_type)
    ihdr_end = len(PNG_SIGNATURE) + 25
    return data[:ihdr_end] + chunk + kept[25:]


def webp_metadata(data: bytes, rng: random.Random) -> bytes | None:
    """The EXIF or ICCP chunk of an extended (VP8X) WebP replaced by garbage, sizes kept consistent."""
    chunks = webp_chunks(data) if data[:4] == b"RIFF" else []
    targets = [c for c in chunks if c[1] in (b"EXIF", b"ICCP")]
    if not targets:
        return None
    at, kind, size = rng.choice(targets)
    payload = garbage_exif(rng) if kind == b"EXIF" else garbage_icc(rng)
    chunk = kind + struct.pack("<I", len(payload)) + payload + b"\x00" * (len(payload) & 1)
    out = data[:at] + chunk + data[at + size :]
    return out[:4] + struct.pack("<I", len(out) - 8) + out[8:]


def gif_metadata(data: bytes, rng: random.Random) -> bytes | None:
    """An XMP application extension or a comment extension of garbage after the global colour table."""
    if not data.startswith((b"GIF87a", b"GIF89a")):
        return None
    at = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
    body = garbage_xmp(rng)
    blocks = b"".join(bytes((len(body[i : i + 255]),)) + body[i : i + 255] for i in range(0, len(body), 255))
    extension = (b"\x21\xff\x0bXMP DataXMP" if rng.random() < 0.5 else b"\x21\xfe") + blocks + b"\x00"
    return b"GIF89a" + data[6:at] + extension + data[at:]


def tiff_metadata(data: bytes, rng: random.Random) -> bytes | None:
    """The ICC profile or XMP packet of a TIFF overwritten with garbage, or its EXIF directory pointer broken."""
    if data[:4] not in (b"II*\x00", b"MM\x00*"):
        return None
    order, entries = tiff_entries(data)
    found = {struct.unpack(order + "H", data[e : e + 2])[0]: e for e in entries}
    choices = [tag for tag in (34675, 700, 34665) if tag in found]
    if not choices:
        return None
    tag = rng.choice(choices)
    entry = found[tag]
    if tag == 34665:  # the EXIF IFD's offset
        return _set(data, entry + 8, order + "I", rng.choice((0, 1, 0xFFFFFFFF, len(data) - 3, 8)))
    count = struct.unpack(order + "I", data[entry + 4 : entry + 8])[0]
    offset = struct.unpack(order + "I", data[entry + 8 : entry + 12])[0]
    if count <= 4 or offset + count > len(data):
        return None
    garbage = garbage_icc(rng) if tag == 34675 else garbage_xmp(rng)
    garbage = (garbage + b"\x00" * count)[:count]
    return data[:offset] + garbage + data[offset + count :]


METADATA: dict[str, Callable[[bytes, random.Random], bytes | None]] = {
    "JPEG": jpeg_metadata,
    "PNG": png_metadata,
    "WEBP": webp_metadata,
    "GIF": gif_metadata,
    "TIFF": tiff_metadata,
}


def make_case(run_seed: int, index: int, pool: tuple[Seed, ...] | None = None) -> Case:
    """Case ``index`` of the run seeded ``run_seed``: the same file whatever the number of cases.

    A fifth of the cases change metadata or the extension only (``intact``); the others apply one to three
    mutations, half of them along the format's structure.
    """
    pool = pool or seeds()
    rng = random.Random(run_seed * 1_000_003 + index)
    seed = rng.choice(pool)
    data, operations = seed.data, []
    suffix = SUFFIXES[seed.format]
    if rng.random() < 0.2:
        metadata = METADATA.get(seed.format)
        changed = metadata(data, rng) if metadata and rng.random() < 0.75 else None
        if changed is not None:
            data, operations = changed, [f"{seed.format.lower()}_metadata"]
        if not operations or rng.random() < 0.3:
            suffix = rng.choice([s for s in SUFFIXES.values() if s != suffix])
            operations.append("wrong_extension")
        return Case(index, seed, tuple(operations), data, suffix, intact=True)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        structural = STRUCTURAL[seed.format]
        name = rng.choice(list(structural if rng.random() < 0.5 else GENERIC))
        mutate = structural.get(name) or GENERIC[name]
        changed = mutate(data, rng) if data else None
        if changed is None:
            name, changed = "truncate", truncate(data, rng) if data else data
        data = changed
        operations.append(name)
    return Case(index, seed, tuple(operations), data, suffix, intact=False)
