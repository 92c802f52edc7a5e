"""Running ``detector detect``: rank 0 plans, every rank detects its share, rank 0 merges and reports.

Rank 0 lists the inputs, reports arguments that name none, and prepares the output (a fresh file, or the records an
interrupted run left, cleaned); every rank receives that plan, so all agree on the inputs and on what is done, also
on several machines. Each rank then detects its units (:func:`~detector.cli.detect_inputs.deal`) and streams its
records; when all have finished, rank 0 merges them in input order and writes the COCO file or the JSON object.
A plain run is a world of one and goes the same way without the messages.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from detector.cache import write_atomic
from detector.cli.common import EXIT_FAILED, EXIT_OK, error, log
from detector.cli.detect_inputs import (
    Event,
    FrameBatch,
    ImageBatch,
    Source,
    Unit,
    VideoClosed,
    VideoOpened,
    count_images,
    deal,
    expand_arguments,
    plan_units,
    read_units,
)
from detector.cli.detect_outputs import (
    Key,
    RecordWriter,
    check_file_output,
    check_folder_output,
    coco_results,
    detections_of,
    drawing_paths,
    error_record,
    frame_record,
    image_record,
    iter_lines,
    json_document,
    rank_path,
    rank_paths,
    read_coco_images,
    read_records,
    record_key,
    remove,
    settings_differences,
    settings_path,
    sort_key,
    write_settings,
    write_sorted,
)
from detector.cli.models import installed_weights
from detector.drawing import draw_detections
from detector.errors import DetectorError
from detector.inference import Detector
from detector.results import ImageDetections
from detector.training.distributed import (
    World,
    broadcast_from_main,
    gather_to_main,
    init_distributed,
    local_device,
    shutdown,
)
from detector.video import VideoWriter

# Decoded batches kept ready ahead of the network: enough to hide decoding jitter, few enough to bound memory.
PREFETCH_BATCHES = 2


@dataclass
class Tally:
    """What a rank did: images and video frames detected, inputs failed, records written (all three kinds)."""

    images: int = 0
    frames: int = 0
    failed: int = 0
    written: int = 0

    def add(self, other: Tally) -> None:
        self.images += other.images
        self.frames += other.frames
        self.failed += other.failed
        self.written += other.written


@dataclass
class Plan:
    """What rank 0 decides and every rank follows: the inputs, how many arguments named none (already reported),
    and what an earlier run did (``done``: key → its record where redrawing a video needs it, else None)."""

    sources: list[Source]
    problems: int
    done: dict[Key, dict[str, Any] | None] = field(default_factory=dict)

    def is_done(self, source: Source) -> bool:
        return (source.path, None) in self.done


class Collected:
    """Records kept in memory, for the single JSON object of a run without ``--out``."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def write(self, records: Sequence[dict[str, Any]]) -> None:
        self.records += records


class DetectionLoop:
    """Runs this rank's units through the detector, writing records (and drawings) as batches finish.

    A batch some of whose inputs an earlier run did is run whole all the same, so that the others get the numbers
    an uninterrupted run gives them; only the missing records are written. Drawings are saved before their record
    is written, so a record means its drawing is there.
    """

    def __init__(
        self,
        detector: Detector,
        args: argparse.Namespace,
        sink: RecordWriter | Collected,
        done: Mapping[Key, dict[str, Any] | None],
        drawings: Mapping[str, Path],
        bar: tqdm,
    ):
        self.detector = detector
        self.args = args
        self.sink = sink
        self.done = done
        self.drawings = drawings
        self.bar = bar
        self.tally = Tally()
        self.done_frames = Counter(file for file, frame in done if isinstance(frame, int))
        self._video: VideoWriter | None = None

    def run(self, units: Sequence[Unit]) -> Tally:
        """Detect in every unit of ``units``; returns what was done."""
        events = read_units(
            units,
            fps=self.args.fps,
            batch_size=self.args.batch_size,
            workers=self.args.workers,
            prefetch=PREFETCH_BATCHES,
        )
        for event in events:
            self._handle(event)
        return self.tally

    def _handle(self, event: Event) -> None:
        if isinstance(event, ImageBatch):
            self._images(event)
        elif isinstance(event, VideoOpened):
            self._open_video(event)
        elif isinstance(event, FrameBatch):
            self._frames(event)
        elif isinstance(event, VideoClosed):
            self._close_video(event)

    def _detect(self, arrays: Sequence[np.ndarray]) -> list[ImageDetections]:
        return self.detector.detect_arrays(
            arrays, score_threshold=self.args.score_threshold, max_detections=self.args.max_detections
        )

    def _fail(self, file: str, reason: str) -> dict[str, Any]:
        tqdm.write(f"detector: error: {file}: {reason}", file=sys.stderr)
        self.tally.failed += 1
        return error_record(file, reason)

    def _emit(self, records: list[dict[str, Any]], progressed: int) -> None:
        self.sink.write(records)
        self.tally.written += len(records)
        self.bar.update(progressed)

    def _images(self, batch: ImageBatch) -> None:
        decoded = [(item.source.path, item.pixels) for item in batch.images if item.pixels is not None]
        results: dict[str, ImageDetections] = {}
        if any((file, None) not in self.done for file, _ in decoded):
            outputs = self._detect([pixels for _, pixels in decoded])
            results = {file: result for (file, _), result in zip(decoded, outputs, strict=True)}
        records = []
        for item in batch.images:
            file = item.source.path
            if (file, None) in self.done:
                continue
            if item.pixels is None:
                records.append(self._fail(file, item.error or "could not be read"))
                continue
            if self.args.draw:
                try:
                    draw_detections(item.pixels, results[file]).save(self.drawings[file])
                except OSError as exc:  # its record waits for its drawing: the input is tried again on --resume
                    records.append(self._fail(file, f"cannot write its drawing {self.drawings[file]}: {exc}"))
                    continue
            records.append(image_record(file, results[file]))
        self.tally.images += len(records) - sum(1 for record in records if "error" in record)
        self._emit(records, len(records))

    def _open_video(self, event: VideoOpened) -> None:
        file = event.source.path
        if event.info is None:
            self._emit([self._fail(file, event.error or "could not be opened")], 0)
            return
        expected = event.info.frames_at(self.args.fps)
        if expected is not None and self.bar.total is not None:
            self.bar.total += max(0, expected - self.done_frames[file])
            self.bar.refresh()
        if self.args.draw:
            rate = event.info.rate
            if self.args.fps and self.args.fps < rate:
                rate = Fraction(self.args.fps).limit_denominator(1001)
            self._video = VideoWriter(self.drawings[file], rate)

    def _frames(self, batch: FrameBatch) -> None:
        file = batch.source.path
        new = [(file, frame.index) not in self.done for frame in batch.frames]
        if any(new):
            results = self._detect([frame.pixels for frame in batch.frames])
        elif self._video is not None:  # done before: redrawn from the records
            results = [detections_of(self.done[(file, frame.index)] or {}) for frame in batch.frames]
        else:
            return
        if self._video is not None:
            for frame, result in zip(batch.frames, results, strict=True):
                self._video.write(np.asarray(draw_detections(frame.pixels, result)))
        records = [
            frame_record(file, frame.index, frame.timestamp, result)
            for frame, result, is_new in zip(batch.frames, results, new, strict=True)
            if is_new
        ]
        self.tally.frames += len(records)
        self._emit(records, len(records))

    def _close_video(self, event: VideoClosed) -> None:
        if self._video is not None:
            self._video.close()
            self._video = None
        if event.error is not None:
            self._emit([self._fail(event.source.path, event.error)], 0)


def _records_path(args: argparse.Namespace) -> Path:
    """The JSON-lines file a run streams into: ``--out`` itself, or beside a COCO ``--out`` while it runs."""
    out: Path = args.out
    return out if args.format == "jsonl" else out.with_name(out.name + ".partial.jsonl")


def _positions(sources: Sequence[Source]) -> dict[str, int]:
    return {source.path: source.position for source in sources}


def _settings(args: argparse.Namespace, detector: Detector) -> dict[str, Any]:
    """What a run's records depend on: not the batch size or workers (no result changes), nor the engine (the bar)."""
    return {
        "weights_sha256": detector.digest,
        "score_threshold": args.score_threshold,
        "max_detections": args.max_detections,
        "fps": args.fps,
    }


def _plan(args: argparse.Namespace, detector: Detector) -> Plan:
    """Rank 0: expand the inputs, report arguments naming none, and set the output up (fresh, or resumed)."""
    sources, problems = expand_arguments(args.images, sys.stdin)
    for problem in problems:
        error(problem)
    plan = Plan(sources, len(problems))
    if not args.out:
        return plan
    records = _records_path(args)
    records.parent.mkdir(parents=True, exist_ok=True)
    settings = _settings(args, detector)
    if args.resume and records.is_file():
        differences = settings_differences(records, settings)
        if differences:
            raise DetectorError(
                f"--resume: {records} holds the records of a run with other settings ({'; '.join(differences)}); "
                "resume with that run's settings, or leave --resume out to start over"
            )
        if differences is None:
            log(f"--resume: no settings noted beside {records}; assuming they were this run's")
    write_settings(records, settings)
    if args.resume:
        # The records of the last run, from its output and the rank files an interrupted torchrun run left, without
        # the cut-off last line and the error records (those inputs are tried again), in input order.
        found = read_records([records, *rank_paths(records)])
        kept = {key: line for key, line in found.lines.items() if key[1] != "error"}
        if found.skipped:
            log(f"--resume: {found.describe(records)}; their inputs are detected again")
        positions = _positions(sources)
        write_sorted(records, kept, positions)
        videos = {source.path for source in sources if source.kind == "video"}
        for key, line in kept.items():
            redraw = args.draw and key[0] in videos and isinstance(key[1], int)
            plan.done[key] = json.loads(line) if redraw else None
        strangers = sum(1 for file, _ in kept if file not in positions)
        if strangers:
            log(f"--resume: {records} holds {strangers} record(s) of files that are not inputs of this run; kept last")
    else:
        remove([records])
    remove(rank_paths(records))
    return plan


def _check_outputs(args: argparse.Namespace) -> None:
    """Every rank, before any work: each output can be written (so no run fails at its end for want of a file)."""
    if args.out:
        check_file_output(args.out, "--out")
        check_file_output(_records_path(args), "--out")
    if args.json_out:
        check_file_output(args.json_out, "--json")
    if args.draw:
        check_folder_output(args.draw, "--draw")


def _check_coco(args: argparse.Namespace, detector: Detector) -> None:
    """Rank 0, before any detection: the annotation file reads and shares categories with the model."""
    from detector.training.evaluate import match_categories, read_category_map

    _, categories = read_coco_images(args.annotations)
    aliases = read_category_map(args.category_map) if args.category_map else None
    if not match_categories(detector.labels, categories, aliases).class_to_category:
        raise DetectorError(f"none of the model's labels is a category of {args.annotations}")


def _finish_output(
    args: argparse.Namespace, plan: Plan, detector: Detector, world: World, tallies: Sequence[Tally]
) -> None:
    """Rank 0, once every rank is done: merge the rank files into the output in input order; write COCO."""
    records = _records_path(args)
    for rank, tally in enumerate(tallies):
        if world.distributed and tally.written and not rank_path(records, rank).is_file():
            raise DetectorError(
                f"rank {rank} wrote its records to {rank_path(records, rank)}, which rank 0 cannot see: on several "
                "machines --out must be on a filesystem they all share"
            )
    if world.distributed or args.resume:
        write_sorted(records, read_records([records, *rank_paths(records)]).lines, _positions(plan.sources))
        remove(rank_paths(records))
    if args.format != "coco":
        return
    from detector.training.evaluate import match_categories, read_category_map

    ids, categories = read_coco_images(args.annotations)
    aliases = read_category_map(args.category_map) if args.category_map else None
    match = match_categories(detector.labels, categories, aliases)
    coco = coco_results(iter_lines(records), ids, match.class_to_category)
    write_atomic(args.out, json.dumps(coco.detections) + "\n")
    records.unlink()
    settings_path(records).unlink(missing_ok=True)
    log(match.describe(categories))
    if coco.unmatched:
        shown = ", ".join(coco.unmatched[:3]) + (", …" if len(coco.unmatched) > 3 else "")
        log(f"{len(coco.unmatched)} input(s) are not images of {args.annotations}, left out: {shown}")


def _summary(args: argparse.Namespace, plan: Plan, total: Tally, seconds: float) -> str:
    parts = [f"{total.images} image(s)"] + ([f"{total.frames} video frame(s)"] if total.frames else [])
    rate = (total.images + total.frames) / seconds if seconds > 0 else 0.0
    text = f"detected {' and '.join(parts)} in {seconds:.1f} s ({rate:.1f}/s)"
    if plan.done:
        text += f", {len(plan.done)} record(s) kept from before"
    if total.failed:
        text += f", {total.failed} failed"
    return f"{text}; wrote {args.out}"


# Builds the loop that runs a rank's units: (detector, args, sink, done, drawings, progress bar) → DetectionLoop.
LoopFactory = Callable[..., DetectionLoop]


def run(args: argparse.Namespace, make_loop: LoopFactory = DetectionLoop) -> int:
    """Run ``detector detect`` with parsed (and checked) arguments; returns the exit status.

    ``make_loop``: builds the detection loop (:func:`detector.cli.detect_gpu.gpu_detection_loop` for ``--device cuda``).
    """
    _check_outputs(args)
    world = init_distributed("cpu")
    try:
        # Rank 0 installs a missing built-in model, lists the inputs and prepares the output; the others follow.
        weights = broadcast_from_main(installed_weights(args.weights) if world.is_main else None, world)
        device = str(local_device(args.device, world))
        detector = Detector.from_weights(weights, backend=args.backend, precision=args.precision, device=device)
        if world.is_main and args.format == "coco":
            _check_coco(args, detector)
        plan: Plan = broadcast_from_main(_plan(args, detector) if world.is_main else None, world)
        drawings: dict[str, Path] = {}
        if args.draw:
            args.draw.mkdir(parents=True, exist_ok=True)
            videos = {source.path for source in plan.sources if source.kind == "video"}
            drawings = drawing_paths([source.path for source in plan.sources], videos, args.draw)
        units = [
            unit
            for unit in plan_units(plan.sources, args.batch_size)
            if unit.kind == "video" or not all(plan.is_done(source) for source in unit.sources)
        ]
        mine = deal(units, world.rank, world.size)
        sink: RecordWriter | Collected = Collected()
        if args.out:
            records = _records_path(args)
            sink = RecordWriter(rank_path(records, world.rank) if world.distributed else records, append=args.resume)
        show = world.is_main and not args.no_progress and sys.stderr.isatty()
        description = f"detect (rank 0 of {world.size}, its share)" if world.distributed else "detect"
        bar = tqdm(total=count_images(mine, plan.is_done), desc=description, unit="img", disable=not show)
        started = time.perf_counter()
        try:
            with bar:
                tally = make_loop(detector, args, sink, plan.done, drawings, bar).run(mine)
        finally:
            if isinstance(sink, RecordWriter):
                sink.close()
        seconds = time.perf_counter() - started
        gathered = gather_to_main((tally, sink.records if isinstance(sink, Collected) else []), world)
        status: int = EXIT_OK
        if gathered is not None:
            total = Tally(failed=plan.problems)
            for part, _ in gathered:
                total.add(part)
            if args.out:
                _finish_output(args, plan, detector, world, [part for part, _ in gathered])
                log(_summary(args, plan, total, time.perf_counter() - started if world.distributed else seconds))
            else:
                positions = _positions(plan.sources)
                records_in_order = sorted(
                    (record for _, part in gathered for record in part),
                    key=lambda record: sort_key(record_key(record), positions),
                )
                text = json.dumps(json_document(records_in_order), indent=2)
                print(text)
                if args.json_out:
                    try:
                        args.json_out.parent.mkdir(parents=True, exist_ok=True)
                        args.json_out.write_text(text + "\n")
                    except OSError as exc:  # checked before the work; the results are on stdout all the same
                        raise DetectorError(f"{args.json_out}: cannot write: {exc.strerror or exc}") from None
            status = EXIT_FAILED if total.failed else EXIT_OK
        exit_status: int = broadcast_from_main(status, world)
        return exit_status
    finally:
        shutdown(world)
