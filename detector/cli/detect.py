"""``detector detect``: detect objects in image files and print (or write) JSON, optionally drawing the results."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detector import defaults
from detector.cli.common import EXIT_FAILED, EXIT_OK, add_backend_option, add_weights_option, error, positive_int, score
from detector.cli.models import installed_weights
from detector.errors import DetectorError

if TYPE_CHECKING:
    from detector.cli.common import Subparsers

DRAWABLE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def add_commands(subparsers: Subparsers) -> None:
    """Register ``detect``."""
    parser = subparsers.add_parser(
        "detect",
        help="detect objects in images and print JSON",
        description="Detect objects in images. Prints {file: {width, height, detections}} as JSON.",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, WebP, BMP, GIF, TIFF, ...)")
    add_weights_option(parser)
    parser.add_argument(
        "--score-threshold", type=score, default=defaults.SCORE_THRESHOLD, help="minimum score (default: %(default)s)"
    )
    parser.add_argument("--max-detections", type=positive_int, help="at most this many detections per image")
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=defaults.DETECT_BATCH_SIZE,
        help="images per forward pass (default: %(default)s)",
    )
    parser.add_argument("--json", type=Path, dest="json_out", metavar="OUT", help="also write the JSON to this file")
    parser.add_argument("--draw", type=Path, metavar="DIR", help="write each image with its detections drawn here")
    add_backend_option(parser, default="torch")
    parser.set_defaults(run=run_detect)


def drawing_path(directory: Path, image: str, used: set[Path]) -> Path:
    """Where the drawing of ``image`` goes in ``directory``: its own name (PNG when its format cannot be written),
    numbered when two inputs share a name."""
    name = Path(image).name
    path = directory / name
    stem, suffix = Path(name).stem, Path(name).suffix.lower()
    if suffix not in DRAWABLE_SUFFIXES:
        path, suffix = directory / f"{stem}.png", ".png"
    index = 1
    while path in used:
        path = directory / f"{stem}-{index}{suffix}"
        index += 1
    used.add(path)
    return path


def run_detect(args: argparse.Namespace) -> int:
    from detector.drawing import draw_detections
    from detector.images import load_image
    from detector.inference import Detector

    detector = Detector.from_weights(installed_weights(args.weights), backend=args.backend)
    if args.draw:
        args.draw.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    failures = 0
    drawn: set[Path] = set()
    for start in range(0, len(args.images), args.batch_size):
        names, arrays = [], []
        for name in args.images[start : start + args.batch_size]:
            try:
                arrays.append(load_image(name))
                names.append(name)
            except DetectorError as exc:
                error(f"{name}: {exc}")
                failures += 1
        detections = detector.detect_arrays(
            arrays, score_threshold=args.score_threshold, max_detections=args.max_detections
        )
        for name, array, result in zip(names, arrays, detections, strict=True):
            results[name] = result.to_dict()
            if args.draw:
                draw_detections(array, result).save(drawing_path(args.draw, name, drawn))
    text = json.dumps(results, indent=2)
    print(text)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(text + "\n")
    return EXIT_FAILED if failures else EXIT_OK
