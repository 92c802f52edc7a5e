"""Sub-commands for data and training: ``evaluate``, ``train`` and ``make-dataset``.

The heavy imports (torch, pycocotools) stay inside the run functions, so ``detector --help`` is quick. Under
``torchrun`` only rank 0 prints results and writes files.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

from detector import defaults
from detector.cli.common import (
    EXIT_OK,
    add_backend_option,
    add_weights_option,
    log,
    non_negative_int,
    positive_float,
    positive_int,
    score,
)
from detector.cli.models import installed_weights
from detector.errors import DetectorError

if TYPE_CHECKING:
    from detector.cli.common import Subparsers


def add_commands(subparsers: Subparsers) -> None:
    """Register this module's sub-commands."""
    _add_evaluate(subparsers)
    _add_train(subparsers)
    _add_make_dataset(subparsers)


# --- evaluate -----------------------------------------------------------------------------------------------------


def _add_evaluate(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="COCO mAP of a model on a COCO-format data set (pycocotools)",
        description="Detect on every image of a COCO-format data set and score with pycocotools' COCOeval (bbox). "
        "Categories are matched to the model's classes by id where the file uses the model's ids and names (a COCO "
        "file and the COCO model), else by name (--category-map for names that differ). Prints COCOeval's summary "
        "and a per-category table; with --out also writes detections.json (COCO results), metrics.json and "
        "summary.txt. Under `torchrun --nproc_per_node N` the images are split across the processes.",
    )
    parser.add_argument("--images", type=Path, required=True, help="folder holding the images (file_name paths)")
    parser.add_argument("--annotations", type=Path, required=True, help="COCO instances JSON")
    add_weights_option(parser)
    parser.add_argument("--out", type=Path, help="folder for detections.json, metrics.json and summary.txt")
    parser.add_argument(
        "--category-map",
        type=Path,
        metavar="FILE.json",
        help='data set category names → model labels, for names that differ (e.g. {"sofa": "couch"})',
    )
    parser.add_argument(
        "--score-threshold",
        type=score,
        default=defaults.EVAL_SCORE_THRESHOLD,
        help="keep detections above this score (default: %(default)s; mAP wants nearly all of them)",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        help=f"images per pass (default: {defaults.EVAL_BATCH_SIZE}; {defaults.GPU_BATCH_SIZE} on CUDA)",
    )
    parser.add_argument(
        "--workers",
        type=non_negative_int,
        default=defaults.DATA_WORKERS,
        help="image-reading processes (threads on CUDA) (default: %(default)s)",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="cpu, cuda, cuda:1, ...; on CUDA, JPEGs are decoded, resized and post-processed on the GPU "
        "(detector/gpu) (default: %(default)s)",
    )
    add_backend_option(parser, default="torch")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from detector.inference import Detector
    from detector.training.coco import load_dataset
    from detector.training.distributed import broadcast_from_main, init_distributed, local_device, shutdown
    from detector.training.evaluate import evaluate, format_category_table, read_category_map, write_results

    world = init_distributed(args.device)
    try:
        say = log if world.is_main else (lambda message: None)
        # Rank 0 installs a missing built-in model; the others wait for its path.
        weights = installed_weights(args.weights) if world.is_main else None
        device = str(local_device(args.device, world))
        detector = Detector.from_weights(
            broadcast_from_main(weights, world), device=device, backend=args.backend, precision=args.precision
        )
        aliases = read_category_map(args.category_map) if args.category_map else None
        dataset = load_dataset(args.images, args.annotations, for_training=False, log=say)
        say(f"engine: {detector.backend.name} ({detector.choice.precision}); {detector.backend_reason[:160]}")
        result = evaluate(
            detector,
            dataset,
            score_threshold=args.score_threshold,
            batch_size=args.batch_size
            or (defaults.GPU_BATCH_SIZE if device.startswith("cuda") else defaults.EVAL_BATCH_SIZE),
            workers=args.workers,
            world=world,
            progress=not args.no_progress,
            log=say,
            category_aliases=aliases,
        )
        if result is None:
            return EXIT_OK
        print(result.summary.rstrip())
        print()
        print(format_category_table(result.per_category))
        print(json.dumps(result.stats))
        if args.out:
            extra = {
                "weights": args.weights or f"built-in {defaults.MODEL} model",
                "weights_sha256": detector.digest,
                "annotations": str(args.annotations),
                "score_threshold": args.score_threshold,
                "processes": world.size,
                "engine": detector.backend.name,
                "precision": detector.choice.precision,
            }
            paths = write_results(result, args.out, extra)
            say("wrote " + ", ".join(str(p) for p in paths))
        return EXIT_OK
    finally:
        shutdown(world)


# --- train --------------------------------------------------------------------------------------------------------


def _add_train(subparsers: Subparsers) -> None:
    from detector.training.config import AUGMENTATIONS, OPTIMIZERS

    parser = subparsers.add_parser(
        "train",
        help="train or fine-tune on COCO-format data (one process or torchrun)",
        description="Train SSDLite-MobileNetV2 on a COCO-format data set: from scratch, from torchvision's ImageNet "
        "MobileNetV2 checkpoint (--imagenet), or from any of our weights (--weights; the class head is "
        "re-initialised for labels the weights lack). Writes OUT/checkpoint.pt every epoch (resume with --resume) "
        "and OUT/model.safetensors (our weights format), logs OUT/train_log.csv and TensorBoard events. Under "
        "`torchrun --nproc_per_node N` trains with DistributedDataParallel; --batch-size is per process.",
    )
    # Every dest is the name of the TrainConfig field it fills (see _run_train).
    parser.add_argument("--train-images", type=Path, required=True, help="folder of the training images")
    parser.add_argument("--train-annotations", type=Path, required=True, help="COCO instances JSON for training")
    parser.add_argument("--val-images", type=Path, help="folder of the validation images")
    parser.add_argument("--val-annotations", type=Path, help="COCO instances JSON for validation (evaluated)")
    parser.add_argument("--out", dest="out_dir", type=Path, required=True, help="output folder")
    init = parser.add_mutually_exclusive_group()
    init.add_argument(
        "--weights",
        metavar="NAME|FILE",
        help="start from a built-in model ('builtin': the default one) or a weights file; default: from scratch",
    )
    init.add_argument("--imagenet", type=Path, help="torchvision mobilenet_v2 ImageNet state_dict file (.pth)")
    init.add_argument("--resume", type=Path, help="continue from a checkpoint.pt written by a previous run")
    parser.add_argument(
        "--image-size", type=positive_int, default=defaults.IMAGE_SIZE, help="network input (default: %(default)s)"
    )
    parser.add_argument("--width-mult", type=positive_float, default=1.0, help="MobileNetV2 width (from scratch)")
    parser.add_argument("--epochs", type=positive_int, default=defaults.TRAIN_EPOCHS, help="(default: %(default)s)")
    parser.add_argument(
        "--batch-size", type=positive_int, default=defaults.TRAIN_BATCH_SIZE, help="per process (default: %(default)s)"
    )
    parser.add_argument(
        "--lr", type=positive_float, default=defaults.TRAIN_LEARNING_RATE, help="peak rate (default: %(default)s)"
    )
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default=defaults.TRAIN_OPTIMIZER)
    parser.add_argument("--momentum", type=float, default=defaults.TRAIN_MOMENTUM, help="(default: %(default)s)")
    parser.add_argument(
        "--weight-decay", type=float, default=defaults.TRAIN_WEIGHT_DECAY, help="(default: %(default)s)"
    )
    parser.add_argument(
        "--warmup-steps", type=int, default=defaults.TRAIN_WARMUP_STEPS, help="(default: %(default)s, ≤ 1 epoch)"
    )
    parser.add_argument(
        "--augmentation",
        choices=AUGMENTATIONS,
        default=defaults.TRAIN_AUGMENTATION,
        help="ssd: photometric + zoom out + IoU crop + flip; ssdlite: IoU crop + flip (default: %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=non_negative_int,
        default=defaults.DATA_WORKERS,
        help="data-loading processes per rank (default: %(default)s)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    parser.add_argument(
        "--amp", action=argparse.BooleanOptionalAction, default=None, help="mixed precision (default: on for CUDA)"
    )
    parser.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across processes (CUDA)")
    parser.add_argument(
        "--eval-every", type=positive_int, default=defaults.TRAIN_EVAL_EVERY, help="epochs between evaluations"
    )
    parser.add_argument("--eval-at-start", action="store_true", help="also evaluate the initial model")
    parser.add_argument("--eval-score-threshold", type=score, default=defaults.EVAL_SCORE_THRESHOLD)
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    parser.add_argument(
        "--stop-after", type=positive_int, help="end this run after N epochs (time-sliced jobs); --resume continues"
    )
    parser.add_argument("--name", default="ssdlite-mobilenet-v2", help="model name recorded in the weights")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    parser.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from detector.training.config import TrainConfig
    from detector.training.train import train

    if (args.val_images is None) != (args.val_annotations is None):
        raise DetectorError("--val-images and --val-annotations go together")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    options = {name: value for name, value in vars(args).items() if name in fields}
    if args.imagenet:
        options.update(init="imagenet", init_path=args.imagenet)
    elif args.weights:
        weights = None if args.weights == "builtin" else args.weights
        options.update(init="weights", init_path=installed_weights(weights))
    result = train(TrainConfig(**options))
    if result.metrics:
        print(json.dumps({"weights": str(result.weights), **result.metrics}))
    return EXIT_OK


# --- make-dataset -------------------------------------------------------------------------------------------------


def _add_make_dataset(subparsers: Subparsers) -> None:
    from detector.training.synthetic import SHAPES

    parser = subparsers.add_parser(
        "make-dataset",
        help="write the deterministic synthetic shapes data set (COCO format)",
        description="Write OUT/train/, OUT/val/ and OUT/annotations/instances_{train,val}.json: coloured shapes on "
        "cluttered backgrounds. The same arguments always give the same files.",
    )
    parser.add_argument("out", type=Path, metavar="OUT")
    parser.add_argument(
        "--train", type=non_negative_int, default=defaults.SYNTHETIC_TRAIN_IMAGES, help="training images (%(default)s)"
    )
    parser.add_argument(
        "--val", type=non_negative_int, default=defaults.SYNTHETIC_VAL_IMAGES, help="validation images (%(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    parser.add_argument(
        "--classes",
        default=",".join(defaults.SYNTHETIC_CLASSES),
        help=f"comma-separated, from {', '.join(SHAPES)} (default: %(default)s)",
    )
    parser.add_argument(
        "--min-size", type=positive_int, default=defaults.SYNTHETIC_MIN_SIZE, help="smallest image side (%(default)s)"
    )
    parser.add_argument(
        "--max-size", type=positive_int, default=defaults.SYNTHETIC_MAX_SIZE, help="largest image side (%(default)s)"
    )
    parser.add_argument(
        "--max-objects", type=positive_int, default=defaults.SYNTHETIC_MAX_OBJECTS, help="objects per image, at most"
    )
    parser.add_argument("--gray-fraction", type=score, default=0.0, help="share of images saved as grayscale")
    parser.set_defaults(run=_run_make_dataset)


def _run_make_dataset(args: argparse.Namespace) -> int:
    from detector.training.synthetic import SceneSettings, make_dataset

    if args.min_size > args.max_size:
        raise DetectorError(f"--min-size {args.min_size} is larger than --max-size {args.max_size}")
    settings = SceneSettings(
        min_size=args.min_size,
        max_size=args.max_size,
        max_objects=args.max_objects,
        gray_fraction=args.gray_fraction,
    )
    classes = tuple(c.strip() for c in args.classes.split(",") if c.strip())
    try:
        paths = make_dataset(
            args.out, num_train=args.train, num_val=args.val, seed=args.seed, classes=classes, settings=settings
        )
    except ValueError as exc:
        raise DetectorError(str(exc)) from None
    for split, path in paths.items():
        print(f"{split}: {args.out / split}/ and {path}")
    return EXIT_OK
