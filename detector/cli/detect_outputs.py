"""What ``detector detect`` writes: JSON-lines records, resuming from them, merging ranks, COCO results, drawings.

One record per image, per video frame and per input that failed, one JSON object a line::

    {"file": "a.jpg", "width": 640, "height": 480, "detections": [...]}
    {"file": "v.mp4", "frame": 12, "timestamp": 0.48, "width": 640, "height": 480, "detections": [...]}
    {"file": "bad.jpg", "error": "corrupt or truncated image: ..."}

Each batch's lines go out in one write and are flushed, so a killed run leaves whole lines plus at most one cut
off; reading skips lines that are cut off or are not records this program writes (:func:`check_record`: a field
missing or of the wrong type), and ``--resume`` says how many and where. ``--resume`` keeps every detection record
and drops the error records and the malformed lines (those inputs are tried again). Under torchrun each rank
appends to ``<out stem>.rank-K<suffix>``; rank 0 merges them in input order into the output at the end, through a
temporary file renamed into place, so the output is never half-written. Beside the records,
``<out>.settings.json`` notes what they depend on (the weights' digest, the score threshold, the detection limit,
the video frame rate), so that ``--resume`` with other settings is refused rather than mixing two runs' records in
one file. Output paths are checked before any work (:func:`check_file_output`, :func:`check_folder_output`).
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, TextIO

from detector.cache import atomic_path, write_atomic
from detector.errors import DetectorError
from detector.results import Detection, ImageDetections

DRAWABLE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
# Where a video's error record sorts: after all of its frames.
_AFTER_FRAMES = 1 << 62

# (file, frame): frame is None for an image, "error" for an error record.
Key = tuple[str, int | str | None]


def image_record(file: str, result: ImageDetections) -> dict[str, Any]:
    """The record of an image."""
    return {"file": file, **result.to_dict()}


def frame_record(file: str, frame: int, timestamp: float, result: ImageDetections) -> dict[str, Any]:
    """The record of a video frame (``frame`` counts the video's frames from 0, ``timestamp`` is in seconds)."""
    return {"file": file, "frame": frame, "timestamp": timestamp, **result.to_dict()}


def error_record(file: str, reason: str) -> dict[str, Any]:
    """The record of an input that failed (a video that broke off midway keeps the records of its frames before)."""
    return {"file": file, "error": reason}


def record_key(record: Mapping[str, Any]) -> Key:
    """What identifies a record: its file, and its frame for a video frame or "error" for an error record."""
    return (record["file"], "error" if "error" in record else record.get("frame"))


def check_record(record: object) -> Key:
    """The key of a record read back from a file, after checking it is one this program writes: an object whose
    ``file`` is a string, with a string ``error``, or ``width`` and ``height`` ≥ 1, a list of ``detections`` (label,
    class id, score, four-number box) and, for a video frame, a ``frame`` ≥ 0 and a ``timestamp``.

    Raises:
        ValueError: naming the first field missing or of the wrong type.
    """
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    if not isinstance(record.get("file"), str) or not record["file"]:
        raise ValueError("'file' is not a file name")
    if "error" in record:
        if not isinstance(record["error"], str):
            raise ValueError("'error' is not a string")
        return record_key(record)
    for name in ("width", "height"):
        if not _is_int(record.get(name)) or record[name] < 1:
            raise ValueError(f"{name!r} is not a size in pixels")
    if "frame" in record and not (
        _is_int(record["frame"]) and record["frame"] >= 0 and _is_number(record.get("timestamp"))
    ):
        raise ValueError("'frame' and 'timestamp' are not a frame number and a time")
    detections = record.get("detections")
    if not isinstance(detections, list):
        raise ValueError("no 'detections' list")
    for det in detections:
        if not (
            isinstance(det, dict)
            and isinstance(det.get("label"), str)
            and _is_int(det.get("class_id"))
            and _is_number(det.get("score"))
            and isinstance(det.get("box"), list)
            and len(det["box"]) == 4
            and all(_is_number(value) for value in det["box"])
        ):
            raise ValueError(f"a detection is not {{label, class_id, score, box}}: {json.dumps(det)[:80]}")
    return record_key(record)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def detections_of(record: Mapping[str, Any]) -> ImageDetections:
    """A detection record back as :class:`ImageDetections` (for drawing what an earlier run detected)."""
    return ImageDetections(
        width=record["width"],
        height=record["height"],
        detections=[
            Detection(d["label"], d["class_id"], d["score"], (d["box"][0], d["box"][1], d["box"][2], d["box"][3]))
            for d in record["detections"]
        ],
    )


def rank_path(out: Path, rank: int) -> Path:
    """Where rank ``rank`` streams its records: ``results.jsonl`` → ``results.rank-3.jsonl``."""
    return out.with_name(f"{out.stem}.rank-{rank}{out.suffix}")


def rank_paths(out: Path) -> list[Path]:
    """Every rank file of ``out`` present (from this run or an interrupted one with any number of ranks)."""
    return sorted(out.parent.glob(f"{out.stem}.rank-*{out.suffix}"))


@dataclass
class ReadRecords:
    """Records read from files: ``lines`` by key (the raw line, first occurrence kept), how many lines were
    skipped as cut off or malformed, and where and why each malformed one was (``results.jsonl:7: no 'detections'
    list``)."""

    lines: dict[Key, str]
    skipped: int = 0
    malformed: list[str] = field(default_factory=list)

    def describe(self, what: Path) -> str:
        """One line for the log: how many lines of ``what`` were left out, and the first few malformed ones."""
        cut = self.skipped - len(self.malformed)
        parts = ([f"{cut} cut-off"] if cut else []) + ([f"{len(self.malformed)} malformed"] if self.malformed else [])
        shown = "; ".join(self.malformed[:3]) + ("; …" if len(self.malformed) > 3 else "")
        return f"left out {' and '.join(parts)} line(s) of {what}" + (f" ({shown})" if shown else "")


def read_records(paths: Iterable[Path]) -> ReadRecords:
    """Every well-formed record line of ``paths`` that exist, by key (first occurrence wins); a line cut off, not
    JSON or not a record (:func:`check_record`) is counted and left out."""
    found = ReadRecords({})
    for path in paths:
        if not path.is_file():
            continue
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if not raw.endswith(b"\n"):
                    found.skipped += 1
                    continue
                try:
                    key = check_record(json.loads(raw))
                except ValueError as exc:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors too
                    found.skipped += 1
                    found.malformed.append(f"{path.name}:{number}: {exc}")
                    continue
                found.lines.setdefault(key, raw.decode().rstrip("\n"))
    return found


def sort_key(key: Key, positions: Mapping[str, int]) -> tuple[int, int]:
    """Input order: the file's place in the input list (unknown files last), then frame order, errors last."""
    file, frame = key
    place = positions.get(file, len(positions))
    if frame is None:
        return (place, -1)
    return (place, _AFTER_FRAMES if frame == "error" else int(frame))


def write_sorted(out: Path, lines: Mapping[Key, str], positions: Mapping[str, int]) -> None:
    """Write ``lines`` in input order to ``out``, atomically (a temporary file renamed into place)."""
    with atomic_path(out) as staged, staged.open("w") as handle:
        for key in sorted(lines, key=lambda key: sort_key(key, positions)):
            handle.write(lines[key] + "\n")


def settings_path(records: Path) -> Path:
    """Where a run notes the settings its records depend on: ``results.jsonl`` → ``results.jsonl.settings.json``."""
    return records.with_name(f"{records.name}.settings.json")


def write_settings(records: Path, settings: Mapping[str, Any]) -> None:
    """Note ``settings`` beside ``records`` (atomically: a temporary file renamed into place)."""
    write_atomic(settings_path(records), json.dumps(dict(settings), indent=2, sort_keys=True) + "\n")


def settings_differences(records: Path, settings: Mapping[str, Any]) -> list[str] | None:
    """How ``settings`` differ from those noted beside ``records``, as "name: noted → now" lines; None when no
    settings were noted (records from before they were, or from elsewhere) or the note does not parse."""
    try:
        noted = json.loads(settings_path(records).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(noted, dict):
        return None
    return [
        f"{name}: {json.dumps(noted.get(name))} → {json.dumps(settings.get(name))}"
        for name in sorted(set(noted) | set(settings))
        if noted.get(name) != settings.get(name)
    ]


def remove(paths: Iterable[Path]) -> None:
    """Delete files, missing ones included."""
    for path in paths:
        path.unlink(missing_ok=True)


class RecordWriter:
    """Appends records to a JSON-lines file, one write and a flush per batch, so lines are whole and visible.

    A write that fails (a full disk) raises :class:`DetectorError` naming the file; the lines before it stay, and
    ``--resume`` continues from them.
    """

    def __init__(self, path: Path, *, append: bool):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._handle: TextIO = path.open("a" if append else "w")
        except OSError as exc:
            raise DetectorError(f"{path}: cannot write: {exc.strerror or exc}") from None
        self.path = path

    def write(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Append ``records``, each one line."""
        if records:
            try:
                self._handle.write("".join(json.dumps(record) + "\n" for record in records))
                self._handle.flush()
            except OSError as exc:
                raise DetectorError(f"{self.path}: cannot write: {exc.strerror or exc}") from None

    def close(self) -> None:
        """Close the file."""
        self._handle.close()


def check_file_output(path: Path, option: str) -> None:
    """Refuse, before any work, an output file that cannot be written: a folder, something else than a file, or
    a place where no file can be made (a missing folder is fine: it is made).

    Raises:
        DetectorError: ``<path>: <reason>``.
    """
    if path.is_dir():
        raise DetectorError(f"{path}: is a folder; {option} takes a file name")
    if path.exists() and not path.is_file():
        raise DetectorError(f"{path}: is not a regular file; {option} takes a file name")
    _check_can_create(path, path.parent, option)


def check_folder_output(path: Path, option: str) -> None:
    """Refuse, before any work, an output folder that is a file or in which no file can be made."""
    if path.exists() and not path.is_dir():
        raise DetectorError(f"{path}: is a file; {option} takes a folder")
    _check_can_create(path, path, option)


def _check_can_create(path: Path, folder: Path, option: str) -> None:
    """Make a file in ``folder``'s nearest existing ancestor and remove it: the one test that also holds for root
    and for read-only filesystems."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise DetectorError(f"{path}: {existing} is not a folder ({option})")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise DetectorError(f"{path}: cannot write in {existing}: {exc.strerror or exc} ({option})") from None


def drawing_paths(files: Sequence[str], videos: set[str], directory: Path) -> dict[str, Path]:
    """Where each input's drawing goes in ``directory``: its own name (PNG where its format cannot be written,
    MP4 for videos), numbered where two inputs share one. Computed from the whole input list, so every rank and
    every resumed run agrees."""
    used: set[Path] = set()
    paths = {}
    for file in files:
        stem, suffix = Path(file).stem, Path(file).suffix.lower()
        if file in videos:
            suffix = ".mp4"
        elif suffix not in DRAWABLE_SUFFIXES:
            suffix = ".png"
        path, index = directory / f"{stem}{suffix}", 1
        while path in used:
            path = directory / f"{stem}-{index}{suffix}"
            index += 1
        used.add(path)
        paths[file] = path
    return paths


def json_document(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The single JSON object of a run without ``--out``: ``{file: {width, height, detections}}``, a video as
    ``{file: {"frames": [{frame, timestamp, width, height, detections}, ...]}}``; errors are left out (they went
    to stderr)."""
    document: dict[str, Any] = {}
    for record in records:
        if "error" in record:
            continue
        entry = {k: v for k, v in record.items() if k != "file"}
        if "frame" in record:
            document.setdefault(record["file"], {"frames": []})["frames"].append(entry)
        else:
            document[record["file"]] = entry
    return document


def read_coco_images(path: Path) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """A COCO annotation (or image-info) file's ``file_name`` → image id, and its categories."""
    try:
        document = json.loads(path.read_text())
    except OSError as exc:
        raise DetectorError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DetectorError(f"{path} is not JSON: {exc}") from None
    images = document.get("images") if isinstance(document, dict) else None
    categories = document.get("categories") if isinstance(document, dict) else None
    if not isinstance(images, list) or not all(isinstance(i, dict) and {"file_name", "id"} <= set(i) for i in images):
        raise DetectorError(f"{path} is not a COCO annotation file: no 'images' list with file_name and id")
    if not isinstance(categories, list) or not all(
        isinstance(c, dict) and {"id", "name"} <= set(c) for c in categories
    ):
        raise DetectorError(f"{path} is not a COCO annotation file: no 'categories' list with id and name")
    return {str(PurePath(image["file_name"])): int(image["id"]) for image in images}, categories


def match_image_id(file: str, ids: Mapping[str, int]) -> int | None:
    """The image id of an input path: the longest tail of its path that is a ``file_name`` of the annotation file
    (``val2017/000000000139.jpg`` and ``/data/coco/val2017/000000000139.jpg`` both match ``000000000139.jpg``)."""
    parts = PurePath(file).parts
    for start in range(len(parts)):
        tail = str(PurePath(*parts[start:]))
        if tail in ids:
            return ids[tail]
    return None


@dataclass
class CocoResults:
    """A COCO results list, and the inputs that had no image id (or were video frames)."""

    detections: list[dict[str, Any]]
    unmatched: list[str]


def coco_results(lines: Iterable[str], ids: Mapping[str, int], class_to_category: Mapping[int, int]) -> CocoResults:
    """COCO results (``image_id``, ``category_id``, ``bbox`` as xywh in pixels, ``score``) of detection record
    lines, in their order; detections of classes without a category are left out, as ``detector evaluate`` does."""
    results = CocoResults([], [])
    for line in lines:
        record = json.loads(line)
        if "error" in record:
            continue
        image_id = None if "frame" in record else match_image_id(record["file"], ids)
        if image_id is None:
            if "frame" not in record or record["frame"] == 0:
                results.unmatched.append(record["file"])
            continue
        for det in record["detections"]:
            if det["class_id"] not in class_to_category:
                continue
            x1, y1, x2, y2 = det["box"]
            results.detections.append(
                {
                    "image_id": image_id,
                    "category_id": class_to_category[det["class_id"]],
                    "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                    "score": round(det["score"], 6),
                }
            )
    return results


def iter_lines(path: Path) -> Iterator[str]:
    """The lines of a records file, without their newlines."""
    with path.open() as handle:
        for line in handle:
            yield line.rstrip("\n")
