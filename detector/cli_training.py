"""The ``evaluate``, ``train`` and ``make-dataset`` sub-commands, registered in :mod:`detector.cli`.

They follow the CLI's pattern (``_add_<name>`` declares the arguments, ``_run_<name>`` does the work and returns the
exit status) and keep the heavy imports (torch, pycocotools) inside the run functions. Under ``torchrun`` only rank
0 prints results and writes files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from detector import defaults
from detector.errors import DetectorError

EXIT_OK = 0


def _validators():
    from detector.cli import _positive_int, _score

    return _positive_int, _score


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return number


def _log(message: str) -> None:
    print(message, file=sys.stderr)


# --- evaluate -----------------------------------------------------------------------------------------------------


def _add_evaluate(subparsers: argparse._SubParsersAction) -> None:
    positive_int, score = _validators()
    parser = subparsers.add_parser(
        "evaluate",
        help="COCO mAP of a model on a COCO-format data set (pycocotools)",
        description="Detect on every image of a COCO-format data set and score with pycocotools' COCOeval (bbox). "
        "Model labels are matched to the data set's categories by name. Prints COCOeval's summary and a "
        "per-category table; with --out also writes detections.json (COCO results), metrics.json and summary.txt. "
        "Under `torchrun --nproc_per_node N` the images are split across the processes.",
    )
    parser.add_argument("--images", type=Path, required=True, help="folder holding the images (file_name paths)")
    parser.add_argument("--annotations", type=Path, required=True, help="COCO instances JSON")
    parser.add_argument("--weights", type=Path, help="weights file (default: the built-in person model)")
    parser.add_argument("--out", type=Path, help="folder for detections.json, metrics.json and summary.txt")
    parser.add_argument(
        "--score-threshold",
        type=score,
        default=defaults.EVAL_SCORE_THRESHOLD,
        help="keep detections above this score (default: %(default)s; mAP wants nearly all of them)",
    )
    parser.add_argument("--batch-size", type=positive_int, default=defaults.EVAL_BATCH_SIZE, help="images per pass")
    parser.add_argument("--workers", type=int, default=2, help="image-reading processes (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_evaluate(args: argparse.Namespace) -> int:
    from detector.data import load_dataset
    from detector.distributed import init_distributed, local_device, shutdown
    from detector.evaluate import evaluate, format_category_table, write_results
    from detector.inference import Detector

    world = init_distributed(args.device)
    try:
        log = _log if world.is_main else (lambda message: None)
        detector = Detector.from_weights(args.weights, device=local_device(args.device, world))
        dataset = load_dataset(args.images, args.annotations, for_training=False, log=log)
        result = evaluate(
            detector,
            dataset,
            score_threshold=args.score_threshold,
            batch_size=args.batch_size,
            workers=max(0, args.workers),
            world=world,
            progress=not args.no_progress,
            log=log,
        )
        if result is None:
            return EXIT_OK
        print(result.summary.rstrip())
        print()
        print(format_category_table(result.per_category))
        print(json.dumps(result.stats))
        if args.out:
            extra = {
                "weights": str(args.weights) if args.weights else "built-in person model",
                "weights_sha256": detector.digest,
                "annotations": str(args.annotations),
                "score_threshold": args.score_threshold,
                "processes": world.size,
            }
            paths = write_results(result, args.out, extra)
            log("wrote " + ", ".join(str(p) for p in paths))
        return EXIT_OK
    finally:
        shutdown(world)


# --- train --------------------------------------------------------------------------------------------------------


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    positive_int, score = _validators()
    parser = subparsers.add_parser(
        "train",
        help="train or fine-tune on COCO-format data (one process or torchrun)",
        description="Train SSDLite-MobileNetV2 on a COCO-format data set: from scratch, from torchvision's ImageNet "
        "MobileNetV2 checkpoint (--imagenet), or from any of our weights (--weights; the class head is "
        "re-initialised for labels the weights lack). Writes OUT/checkpoint.pt every epoch (resume with --resume) "
        "and OUT/model.safetensors (our weights format), logs OUT/train_log.csv and TensorBoard events. Under "
        "`torchrun --nproc_per_node N` trains with DistributedDataParallel; --batch-size is per process.",
    )
    parser.add_argument("--train-images", type=Path, required=True, help="folder of the training images")
    parser.add_argument("--train-annotations", type=Path, required=True, help="COCO instances JSON for training")
    parser.add_argument("--val-images", type=Path, help="folder of the validation images")
    parser.add_argument("--val-annotations", type=Path, help="COCO instances JSON for validation (evaluated)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    init = parser.add_mutually_exclusive_group()
    init.add_argument(
        "--weights", help="start from these weights ('builtin': the built-in person model); default: from scratch"
    )
    init.add_argument("--imagenet", type=Path, help="torchvision mobilenet_v2 ImageNet state_dict file (.pth)")
    init.add_argument("--resume", type=Path, help="continue from a checkpoint.pt written by a previous run")
    parser.add_argument(
        "--image-size", type=positive_int, default=defaults.IMAGE_SIZE, help="network input (default: %(default)s)"
    )
    parser.add_argument("--width-mult", type=_positive_float, default=1.0, help="MobileNetV2 width (from scratch)")
    parser.add_argument("--epochs", type=positive_int, default=defaults.TRAIN_EPOCHS, help="(default: %(default)s)")
    parser.add_argument(
        "--batch-size", type=positive_int, default=defaults.TRAIN_BATCH_SIZE, help="per process (default: %(default)s)"
    )
    parser.add_argument(
        "--lr", type=_positive_float, default=defaults.TRAIN_LEARNING_RATE, help="peak rate (default: %(default)s)"
    )
    parser.add_argument("--optimizer", choices=("sgd", "rmsprop"), default=defaults.TRAIN_OPTIMIZER)
    parser.add_argument("--momentum", type=float, default=defaults.TRAIN_MOMENTUM, help="(default: %(default)s)")
    parser.add_argument(
        "--weight-decay", type=float, default=defaults.TRAIN_WEIGHT_DECAY, help="(default: %(default)s)"
    )
    parser.add_argument(
        "--warmup-steps", type=int, default=defaults.TRAIN_WARMUP_STEPS, help="(default: %(default)s, ≤ 1 epoch)"
    )
    parser.add_argument(
        "--augmentation",
        choices=("ssd", "ssdlite", "flip", "none"),
        default=defaults.TRAIN_AUGMENTATION,
        help="ssd: photometric + zoom out + IoU crop + flip; ssdlite: IoU crop + flip (default: %(default)s)",
    )
    parser.add_argument("--workers", type=int, default=2, help="data-loading processes per rank (default: 2)")
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
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _run_train(args: argparse.Namespace) -> int:
    from detector.train import TrainConfig, train

    if (args.val_images is None) != (args.val_annotations is None):
        raise DetectorError("--val-images and --val-annotations go together")
    init, init_path = "scratch", None
    if args.imagenet:
        init, init_path = "imagenet", args.imagenet
    elif args.weights:
        init, init_path = "weights", None if args.weights == "builtin" else Path(args.weights)
    config = TrainConfig(
        train_images=args.train_images,
        train_annotations=args.train_annotations,
        val_images=args.val_images,
        val_annotations=args.val_annotations,
        out_dir=args.out,
        init=init,
        init_path=init_path,
        image_size=args.image_size,
        width_mult=args.width_mult,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        optimizer=args.optimizer,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        augmentation=args.augmentation,
        workers=max(0, args.workers),
        device=args.device,
        amp=args.amp,
        sync_bn=args.sync_bn,
        eval_every=args.eval_every,
        eval_at_start=args.eval_at_start,
        eval_score_threshold=args.eval_score_threshold,
        seed=args.seed,
        resume=args.resume,
        stop_after=args.stop_after,
        name=args.name,
        progress=not args.no_progress,
    )
    result = train(config)
    if result.metrics:
        print(json.dumps({"weights": str(result.weights), **result.metrics}))
    return EXIT_OK


# --- make-dataset -------------------------------------------------------------------------------------------------


def _add_make_dataset(subparsers: argparse._SubParsersAction) -> None:
    positive_int, score = _validators()
    parser = subparsers.add_parser(
        "make-dataset",
        help="write the deterministic synthetic shapes data set (COCO format)",
        description="Write OUT/train/, OUT/val/ and OUT/annotations/instances_{train,val}.json: coloured shapes on "
        "cluttered backgrounds. The same arguments always give the same files.",
    )
    parser.add_argument("out", type=Path, metavar="OUT")
    parser.add_argument("--train", type=int, default=400, help="training images (default: %(default)s)")
    parser.add_argument("--val", type=int, default=100, help="validation images (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    parser.add_argument(
        "--classes",
        default="circle,square,triangle",
        help="comma-separated, from circle, square, triangle, cross, ring",
    )
    parser.add_argument("--min-size", type=positive_int, default=96, help="smallest image side (default: 96)")
    parser.add_argument("--max-size", type=positive_int, default=160, help="largest image side (default: 160)")
    parser.add_argument("--max-objects", type=positive_int, default=4, help="objects per image, at most")
    parser.add_argument("--gray-fraction", type=score, default=0.0, help="share of images saved as grayscale")


def _run_make_dataset(args: argparse.Namespace) -> int:
    from detector.synthetic import SceneSettings, make_dataset

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
