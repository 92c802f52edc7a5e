"""``detector detect``: detect objects in images, folders, globs and videos, on one process or many under torchrun.

Without ``--out`` the results print as one JSON object once all are done (what small runs want). With
``--out FILE.jsonl`` every image's and video frame's record is appended as soon as its batch is done, ``--resume``
continues a run that stopped, and ``--format coco`` turns the records into a COCO results file at the end. This
module declares the command; :mod:`~detector.cli.detect_run` runs it, :mod:`~detector.cli.detect_inputs` reads the
inputs ahead of the network, and :mod:`~detector.cli.detect_outputs` writes, resumes and merges the records. The
engine is ``auto`` by default: the service's choice, measured once per machine and cached.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import TYPE_CHECKING

from detector import defaults
from detector.cli.common import (
    add_backend_option,
    add_weights_option,
    non_negative_int,
    positive_float,
    positive_int,
    score,
)

if TYPE_CHECKING:
    from detector.cli.common import Subparsers


def add_commands(subparsers: Subparsers) -> None:
    """Register ``detect``."""
    parser = subparsers.add_parser(
        "detect",
        help="detect objects in images, folders, globs and videos",
        description="Detect objects in images and videos. Without --out, prints {file: {width, height, detections}} "
        "as one JSON object. With --out FILE.jsonl, streams one JSON line per image or video frame as it is done "
        "(--resume continues an interrupted run). Under `torchrun --nproc_per_node N` the inputs are shared out "
        "among the processes and merged in input order.",
    )
    parser.add_argument(
        "images",
        nargs="+",
        metavar="INPUT",
        help="image or video files, folders (searched recursively, sorted), globs ('photos/**/*.jpg'), "
        "or - to read paths from standard input, one a line",
    )
    add_weights_option(parser)
    parser.add_argument(
        "--score-threshold", type=score, default=defaults.SCORE_THRESHOLD, help="minimum score (default: %(default)s)"
    )
    parser.add_argument("--max-detections", type=positive_int, help="at most this many detections per image")
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        help=f"images per forward pass (default: {defaults.DETECT_BATCH_SIZE}; {defaults.GPU_BATCH_SIZE} on CUDA)",
    )
    parser.add_argument(
        "--out", type=Path, metavar="FILE", help="stream one JSON line per image or frame here (JSON lines)"
    )
    parser.add_argument(
        "--format",
        choices=("jsonl", "coco"),
        default="jsonl",
        help="--out's format: jsonl, or coco: a COCO results file for the images of --annotations (default: jsonl)",
    )
    parser.add_argument(
        "--annotations", type=Path, metavar="FILE.json", help="with --format coco: the COCO file giving image ids"
    )
    parser.add_argument(
        "--category-map",
        type=Path,
        metavar="FILE.json",
        help='with --format coco: category names → model labels where they differ (e.g. {"sofa": "couch"})',
    )
    parser.add_argument("--resume", action="store_true", help="skip what --out already holds, and append the rest")
    parser.add_argument(
        "--json", type=Path, dest="json_out", metavar="OUT", help="without --out: also write the JSON object here"
    )
    parser.add_argument(
        "--draw", type=Path, metavar="DIR", help="write each image, and each video, with its detections drawn here"
    )
    parser.add_argument("--fps", type=positive_float, help="video frames per second to detect (default: every frame)")
    parser.add_argument(
        "--workers",
        type=non_negative_int,
        default=defaults.DATA_WORKERS,
        help="image-decoding threads working ahead of the network; 0: decode in turn (default: %(default)s)",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar (there is none where stderr is not a terminal)"
    )
    add_backend_option(parser, default="auto")
    parser.add_argument(
        "--device",
        type=_device,
        default="cpu",
        help="cpu, or cuda / cuda:N: JPEGs decoded, resized, detected and post-processed on the GPU (detector/gpu; "
        "under torchrun each process takes GPU LOCAL_RANK) (default: %(default)s)",
    )
    parser.set_defaults(run=run_detect, usage_error=parser.error)


def _device(text: str) -> str:
    if not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: cpu, cuda, cuda:1, ...")
    return text


def _check_arguments(args: argparse.Namespace) -> None:
    problem = None
    if args.resume and not args.out:
        problem = "--resume needs --out (the JSON-lines file to continue)"
    elif args.format == "coco" and not (args.out and args.annotations):
        problem = "--format coco needs --out and --annotations (the COCO file giving the image ids)"
    elif (args.annotations or args.category_map) and args.format != "coco":
        problem = "--annotations and --category-map are for --format coco"
    elif args.json_out and args.out:
        problem = "--json writes the single JSON object of a run without --out; with --out the results are there"
    if problem:
        args.usage_error(problem)


def run_detect(args: argparse.Namespace) -> int:
    from detector.cli.detect_run import run

    _check_arguments(args)
    on_gpu = args.device.startswith("cuda")
    if args.batch_size is None:
        args.batch_size = defaults.GPU_BATCH_SIZE if on_gpu else defaults.DETECT_BATCH_SIZE
    if on_gpu:
        import torch

        from detector.cli.detect_gpu import gpu_detection_loop
        from detector.errors import BackendUnavailable

        if not torch.cuda.is_available():
            raise BackendUnavailable(f"--device {args.device}: no CUDA device is available here")
        return run(args, gpu_detection_loop)
    return run(args)
