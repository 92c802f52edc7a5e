"""``detector detect --device cuda``: the detection loop on :mod:`detector.gpu`'s pipeline.

The same records, resume, drawings and tally as :class:`~detector.cli.detect_run.DetectionLoop`; what differs is
where images are decoded. Runs of image units go through :meth:`GpuPipeline.run`, which reads files on CPU threads,
decodes JPEGs on the GPU and overlaps the stages across units (each unit is still one forward pass, so its numbers
are those of any other run of it). Video frames are decoded by PyAV on the CPU as before (FFmpeg's threads, ahead of
the network) and resized, detected and post-processed on the GPU.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from detector.cli.detect_inputs import Unit, read_units
from detector.cli.detect_outputs import Key, RecordWriter, image_record
from detector.cli.detect_run import PREFETCH_BATCHES, Collected, DetectionLoop, Tally
from detector.drawing import draw_detections
from detector.gpu.jpeg import prepare_image
from detector.gpu.pipeline import GpuPipeline
from detector.inference import Detector
from detector.results import ImageDetections


def gpu_detection_loop(
    detector: Detector,
    args: argparse.Namespace,
    sink: RecordWriter | Collected,
    done: Mapping[Key, dict[str, Any] | None],
    drawings: Mapping[str, Path],
    bar: tqdm,
) -> GpuDetectionLoop:
    """The loop for ``--device cuda`` (:data:`detector.cli.detect_run.LoopFactory`): a pipeline on the detector's
    device, ``--workers`` reader threads, cuDNN autotuning (every batch but a run's last has one size)."""
    pipeline = GpuPipeline(detector, readers=args.workers, autotune=True)
    return GpuDetectionLoop(pipeline, args, sink, done, drawings, bar)


class GpuDetectionLoop(DetectionLoop):
    """:class:`DetectionLoop` with images decoded, resized, detected and post-processed by ``pipeline``."""

    def __init__(
        self,
        pipeline: GpuPipeline,
        args: argparse.Namespace,
        sink: RecordWriter | Collected,
        done: Mapping[Key, dict[str, Any] | None],
        drawings: Mapping[str, Path],
        bar: tqdm,
    ):
        super().__init__(pipeline.detector, args, sink, done, drawings, bar)
        self.pipeline = pipeline

    def run(self, units: Sequence[Unit]) -> Tally:
        """Detect in every unit of ``units``; returns what was done."""
        for kind, group in itertools.groupby(units, key=lambda unit: unit.kind):
            if kind == "image":
                self._image_units(list(group))
                continue
            # Videos as DetectionLoop reads them: frames decoded by a producer thread ahead of the network.
            for event in read_units(
                group, fps=self.args.fps, batch_size=self.args.batch_size, workers=1, prefetch=PREFETCH_BATCHES
            ):
                self._handle(event)
        return self.tally

    def _detect(self, arrays: Sequence[np.ndarray]) -> list[ImageDetections]:
        outcomes = self.pipeline.detect(
            arrays, score_threshold=self.args.score_threshold, max_detections=self.args.max_detections
        )
        results = []
        for outcome in outcomes:
            if outcome.detections is None:  # decoded frames always convert; anything else is a bug to report
                raise outcome.error or RuntimeError("a video frame went missing in the pipeline")
            results.append(outcome.detections)
        return results

    def _image_units(self, units: list[Unit]) -> None:
        batches = ([source.path for source in unit.sources] for unit in units)
        outcomes = self.pipeline.run(
            batches,
            prepare_image,
            score_threshold=self.args.score_threshold,
            max_detections=self.args.max_detections,
            keep_pixels=bool(self.args.draw),
        )
        for unit, results in zip(units, outcomes, strict=True):
            records = []
            for source, outcome in zip(unit.sources, results, strict=True):
                if (source.path, None) in self.done:
                    continue
                if outcome.detections is None:
                    records.append(self._fail(source.path, str(outcome.error or "could not be read")))
                    continue
                if self.args.draw and outcome.pixels is not None:
                    draw_detections(outcome.pixels, outcome.detections).save(self.drawings[source.path])
                records.append(image_record(source.path, outcome.detections))
            self.tally.images += len(records) - sum(1 for record in records if "error" in record)
            self._emit(records, len(records))
