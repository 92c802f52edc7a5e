"""What ``detector detect`` reads: its arguments expanded into sources, the work plan, and decoding ahead.

Arguments are files, folders (walked recursively, image and video files by suffix, sorted), globs (``**`` too) and
``-`` (paths on standard input, one a line); each file once, in the order given. The work is cut into *units* from
that list alone: runs of consecutive images in batches of ``--batch-size``, and each video whole (its frames in
batches of ``--batch-size``). Every image is therefore detected in the same batch whatever the number of processes
and wherever a run was resumed, and so gets the same numbers to the last bit (engines' results depend on the batch
in the last bits). Under torchrun the units are dealt out to the ranks in turn.

Decoding runs ahead of the network in worker threads (JPEG and PNG decoders release the GIL; so do FFmpeg's), a
bounded number of batches ahead, and hands batches over in order.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TextIO

import numpy as np

from detector.errors import DetectorError
from detector.images import load_image
from detector.prefetch import Prefetched
from detector.video import VIDEO_SUFFIXES, VideoFrame, VideoInfo, VideoReader, is_video

# What a folder's walk picks up besides videos: what Pillow reads and photographs come as.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
_WALKED_SUFFIXES = IMAGE_SUFFIXES | VIDEO_SUFFIXES
_GLOB_CHARACTERS = frozenset("*?[")

Kind = Literal["image", "video"]


@dataclass(frozen=True)
class Source:
    """One input file: ``position`` is its place in the input list (the order of the output)."""

    position: int
    path: str
    kind: Kind


@dataclass(frozen=True)
class Unit:
    """The grain of work dealt to a rank: a batch of consecutive images, or one video."""

    sources: tuple[Source, ...]

    @property
    def kind(self) -> Kind:
        return self.sources[0].kind


def _walk(folder: str) -> list[str]:
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs.sort()
        found += [
            os.path.join(root, name)
            for name in sorted(files)
            if Path(name).suffix.lower() in _WALKED_SUFFIXES and not name.startswith(".")
        ]
    return found


def expand_arguments(arguments: Sequence[str], stdin: TextIO) -> tuple[list[Source], list[str]]:
    """The sources the arguments name, each file once in the order given, and one problem line per argument that
    names none (an empty folder, a glob matching nothing).

    A path that does not exist and is no glob stays a source: reading it fails and is reported like any unreadable
    file. Lines read from ``-`` are expanded like arguments.
    """
    names: list[str] = []
    problems: list[str] = []
    for argument in arguments:
        if argument == "-":
            names += [line.rstrip("\r\n") for line in stdin if line.strip()]
        else:
            names.append(argument)
    paths: list[str] = []
    for name in names:
        if os.path.isdir(name):
            found = _walk(name)
            if not found:
                problems.append(f"{name}: no image or video files in this folder")
            paths += found
        elif not os.path.exists(name) and _GLOB_CHARACTERS & set(name):
            matches = sorted(
                match
                for match in glob.glob(name, recursive=True)
                if os.path.isfile(match) or (os.path.isdir(match) and _walk(match))
            )
            if not matches:
                problems.append(f"{name}: no files match")
            for match in matches:
                paths += _walk(match) if os.path.isdir(match) else [match]
        else:
            paths.append(name)
    unique = list(dict.fromkeys(paths))
    sources = [Source(i, path, "video" if is_video(path) else "image") for i, path in enumerate(unique)]
    return sources, problems


def plan_units(sources: Sequence[Source], batch_size: int) -> list[Unit]:
    """Cut the input list into units: runs of consecutive images in batches of ``batch_size``, each video alone."""
    units: list[Unit] = []
    run: list[Source] = []
    for source in sources:
        if source.kind == "video":
            if run:
                units.append(Unit(tuple(run)))
                run = []
            units.append(Unit((source,)))
            continue
        run.append(source)
        if len(run) == batch_size:
            units.append(Unit(tuple(run)))
            run = []
    if run:
        units.append(Unit(tuple(run)))
    return units


def deal(units: Sequence[Unit], rank: int, world_size: int) -> list[Unit]:
    """This rank's share: every ``world_size``-th unit starting at ``rank``."""
    return list(units[rank::world_size])


@dataclass
class Decoded:
    """An image read (``pixels``) or not (``error``, the reason)."""

    source: Source
    pixels: np.ndarray | None = None
    error: str | None = None


@dataclass
class ImageBatch:
    """An image unit, decoded: one entry per source, failures included, in order."""

    images: list[Decoded]


@dataclass
class VideoOpened:
    """A video's first event: its size and rate (``info``), or why it could not be opened (``error``)."""

    source: Source
    info: VideoInfo | None = None
    error: str | None = None


@dataclass
class FrameBatch:
    """``--batch-size`` consecutive kept frames of a video (fewer at its end), cut from its start: the same batches
    in every run."""

    source: Source
    frames: list[VideoFrame]


@dataclass
class VideoClosed:
    """A video's last event: ``error`` says why it broke off, None where it was read to the end."""

    source: Source
    error: str | None = None


Event = ImageBatch | VideoOpened | FrameBatch | VideoClosed


def _decode_image(source: Source) -> Decoded:
    try:
        return Decoded(source, pixels=load_image(source.path))
    except DetectorError as exc:
        return Decoded(source, error=str(exc))


def _video_events(source: Source, fps: float | None, batch_size: int) -> Iterator[Event]:
    try:
        reader = VideoReader(source.path, fps)
    except DetectorError as exc:
        yield VideoOpened(source, error=str(exc))
        return
    with reader:
        yield VideoOpened(source, info=reader.info)
        batch: list[VideoFrame] = []
        try:
            for frame in reader.frames():
                batch.append(frame)
                if len(batch) == batch_size:
                    yield FrameBatch(source, batch)
                    batch = []
        except DetectorError as exc:
            if batch:
                yield FrameBatch(source, batch)
            yield VideoClosed(source, error=str(exc))
            return
        if batch:
            yield FrameBatch(source, batch)
        yield VideoClosed(source)


def read_units(
    units: Iterable[Unit], *, fps: float | None, batch_size: int, workers: int, prefetch: int
) -> Iterator[Event]:
    """The units' decoded images and video frames, as events in order.

    With ``workers`` ≥ 1, images decode in that many threads and a producer thread stays at most ``prefetch`` events
    ahead of the caller (videos decode in the producer, with FFmpeg's own threads); with 0 everything decodes in
    the caller's thread when asked for.
    """
    if workers == 0:
        for unit in units:
            if unit.kind == "video":
                yield from _video_events(unit.sources[0], fps, batch_size)
            else:
                yield ImageBatch([_decode_image(source) for source in unit.sources])
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:

        def ahead() -> Iterator[Event | list[Future[Decoded]]]:
            # Image batches travel as futures (decoding in the pool) and are resolved when consumed, so the queue's
            # bound also bounds the decoded pixels held in memory.
            for unit in units:
                if unit.kind == "video":
                    yield from _video_events(unit.sources[0], fps, batch_size)
                else:
                    yield [pool.submit(_decode_image, source) for source in unit.sources]

        with Prefetched(ahead, depth=prefetch, name="prefetch") as events:
            for event in events:
                yield ImageBatch([future.result() for future in event]) if isinstance(event, list) else event


def count_images(units: Iterable[Unit], skip: Callable[[Source], bool]) -> int:
    """How many images of ``units`` are not skipped (for the progress bar's total)."""
    return sum(1 for unit in units if unit.kind == "image" for source in unit.sources if not skip(source))
