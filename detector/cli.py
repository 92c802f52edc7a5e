"""The ``detector`` command line.

Each sub-command has an ``_add_<name>`` function declaring its arguments and a ``_run_<name>`` function doing the
work and returning the exit status. User errors (bad files, bad weights, bad arguments) print one line and exit
non-zero; they never print a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from detector import cli_training, defaults
from detector.errors import DetectorError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _error(message: str) -> None:
    print(f"detector: error: {message}", file=sys.stderr)


def _score(value: str) -> float:
    try:
        score = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not 0.0 <= score <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return score


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return number


# --- detect -------------------------------------------------------------------------------------------------------


def _add_detect(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "detect",
        help="detect objects in images and print JSON",
        description="Detect objects in images. Prints {file: {width, height, detections}} as JSON.",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, WebP, BMP, GIF, TIFF, ...)")
    parser.add_argument("--weights", type=Path, help="weights file (default: the built-in person model)")
    parser.add_argument(
        "--score-threshold", type=_score, default=defaults.SCORE_THRESHOLD, help="minimum score (default: %(default)s)"
    )
    parser.add_argument("--max-detections", type=_positive_int, help="at most this many detections per image")
    parser.add_argument("--batch-size", type=_positive_int, default=8, help="images per forward pass (default: 8)")
    parser.add_argument("--json", type=Path, dest="json_out", metavar="OUT", help="also write the JSON to this file")
    parser.add_argument("--draw", type=Path, metavar="DIR", help="write each image with its detections drawn here")
    _add_backend_option(parser)


def _add_backend_option(parser: argparse.ArgumentParser) -> None:
    from detector.backends import BACKEND_NAMES

    parser.add_argument(
        "--backend",
        choices=("auto", *BACKEND_NAMES),
        default="torch",
        help="engine running the network; auto: the fastest that meets the accuracy bar here (default: %(default)s)",
    )


def _drawing_path(directory: Path, image: str, used: set[Path]) -> Path:
    name = Path(image).name
    path = directory / name
    stem, suffix = Path(name).stem, Path(name).suffix.lower()
    if suffix not in (".jpg", ".jpeg", ".png", ".webp", ".bmp"):
        path, suffix = directory / f"{stem}.png", ".png"
    index = 1
    while path in used:
        path = directory / f"{stem}-{index}{suffix}"
        index += 1
    used.add(path)
    return path


def _run_detect(args: argparse.Namespace) -> int:
    from detector.images import load_image
    from detector.inference import Detector

    detector = Detector.from_weights(args.weights, backend=args.backend)
    if args.draw:
        args.draw.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    failures = 0
    drawn: set[Path] = set()
    for start in range(0, len(args.images), args.batch_size):
        names, arrays = [], []
        for name in args.images[start : start + args.batch_size]:
            try:
                arrays.append(load_image(name))
                names.append(name)
            except DetectorError as exc:
                _error(f"{name}: {exc}")
                failures += 1
        detections = detector.detect_arrays(
            arrays, score_threshold=args.score_threshold, max_detections=args.max_detections
        )
        for name, array, result in zip(names, arrays, detections, strict=True):
            results[name] = result.to_dict()
            if args.draw:
                from detector.drawing import draw_detections

                draw_detections(array, result).save(_drawing_path(args.draw, name, drawn))
    text = json.dumps(results, indent=2)
    print(text)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(text + "\n")
    return EXIT_FAILED if failures else EXIT_OK


# --- info ---------------------------------------------------------------------------------------------------------


def _add_info(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "info",
        help="describe a model: architecture, parameters, multiply-adds, labels, provenance",
        description="Describe a model. Without --weights or --num-classes: the built-in person model.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--weights", type=Path, help="weights file")
    source.add_argument(
        "--num-classes", type=_positive_int, help="describe an untrained model with this many classes (with background)"
    )
    parser.add_argument(
        "--size", type=_positive_int, help="input size for the multiply-add count (default: the model's)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON")


def _run_info(args: argparse.Namespace) -> int:
    from detector.complexity import count_multiply_adds, count_parameters
    from detector.labels import default_labels
    from detector.model import ssdlite_mobilenet_v2
    from detector.weights import ModelSpec, load_weights

    if args.num_classes:
        if args.num_classes < 2:
            raise DetectorError("--num-classes counts the background and must be at least 2")
        spec = ModelSpec(num_classes=args.num_classes, labels=default_labels(args.num_classes))
        digest, path = None, None
    else:
        if args.weights is None:
            from detector.builtin import builtin_weights

            args.weights = builtin_weights()
        loaded = load_weights(args.weights)
        spec, digest, path = loaded.spec, loaded.digest, str(loaded.path)
    size = args.size or spec.image_size
    model = ssdlite_mobilenet_v2(num_classes=spec.num_classes, image_size=size, width_mult=spec.width_mult)
    info = {
        "name": spec.name,
        "architecture": spec.architecture,
        "input_size": size,
        "width_mult": spec.width_mult,
        "num_classes": spec.num_classes,
        "anchors": int(model.anchors.shape[0]),
        "parameters": count_parameters(model),
        "multiply_adds": count_multiply_adds(model, size),
        "labels": list(spec.labels[1:]),
        "score_mode": spec.score_mode,
        "postprocessing": spec.postprocessing,
        "weights": path,
        "weights_sha256": digest,
        "source": spec.source,
        "license": spec.license,
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    labels = ", ".join(info["labels"][:10]) + (
        f", … ({len(info['labels'])} in all)" if len(info["labels"]) > 10 else ""
    )
    print(f"{info['name']}: {info['architecture']} at {size}×{size}, width {spec.width_mult}")
    print(f"  parameters     {info['parameters']:,} ({info['parameters'] / 1e6:.2f} M)")
    print(f"  multiply-adds  {info['multiply_adds']:,} ({info['multiply_adds'] / 1e9:.2f} B)")
    print(f"  anchors        {info['anchors']}")
    print(f"  classes        {spec.num_classes} with background: {labels}")
    print(f"  weights        {path or '(untrained)'}")
    print(f"  sha256         {digest or '-'}")
    print(f"  source         {spec.source}")
    print(f"  license        {spec.license}")
    return EXIT_OK


# --- convert-tf ---------------------------------------------------------------------------------------------------


def _add_convert_tf(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert-tf",
        help="import a TF Object Detection API ssdlite_mobilenet_v2 frozen graph",
        description="Convert a frozen_inference_graph.pb (TF OD API ssdlite_mobilenet_v2 export, any number of "
        "classes) into our weights format. TensorFlow is not needed.",
    )
    parser.add_argument("graph", type=Path, metavar="GRAPH.pb")
    parser.add_argument("out", type=Path, metavar="OUT", help="weights file to write (.safetensors)")
    parser.add_argument("--labels", type=Path, help="text file: one class name per line, background excluded")
    parser.add_argument("--name", help="model name recorded in the weights")
    parser.add_argument("--license", default="unspecified", help="licence of the weights, recorded in the file")
    parser.add_argument("--source", help="where the graph came from, recorded in the file")


def _run_convert_tf(args: argparse.Namespace) -> int:
    from detector.labels import read_label_file
    from detector.tf_import import import_tf_graph
    from detector.weights import save_weights

    label_text = None
    if args.labels:
        try:
            label_text = args.labels.read_text()
        except OSError as exc:
            raise DetectorError(f"cannot read label file {args.labels}: {exc.strerror}") from None
    model, spec = import_tf_graph(args.graph, name=args.name, source=args.source, license=args.license)
    if label_text is not None:  # the class count is only known once the graph is read
        try:
            spec = dataclasses.replace(spec, labels=read_label_file(label_text, spec.num_classes))
        except ValueError as exc:
            raise DetectorError(f"{args.labels}: {exc}") from None
    digest = save_weights(args.out, model, spec)
    shown = ", ".join(spec.labels[1:6]) + (", …" if spec.num_classes > 6 else "")
    print(
        f"wrote {args.out}: {spec.num_classes} classes ({shown}), "
        f"input {spec.image_size}×{spec.image_size}, sha256 {digest}"
    )
    return EXIT_OK


# --- export / backends --------------------------------------------------------------------------------------------


def _add_export(subparsers: argparse._SubParsersAction) -> None:
    from detector.export import FORMATS

    parser = subparsers.add_parser(
        "export",
        help="export the network to ONNX or OpenVINO IR, checked against eager PyTorch",
        description="Write the network (preprocessed batch in, raw box codes and class logits out, dynamic batch) "
        "and check the written file against eager PyTorch (max abs diff <= 1e-3).",
    )
    parser.add_argument("out", type=Path, metavar="OUT", help="file to write (.onnx, or .xml + .bin for openvino)")
    parser.add_argument("--format", choices=FORMATS, required=True)
    parser.add_argument("--weights", type=Path, help="weights file (default: the built-in person model)")


def _run_export(args: argparse.Namespace) -> int:
    from detector.export import export
    from detector.inference import Detector

    report = export(Detector.from_weights(args.weights).model, args.out, format=args.format)
    print(f"wrote {report.path} ({report.format}); max abs diff to eager PyTorch {report.max_abs_diff:.1e}")
    return EXIT_OK


def _add_backends(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "backends",
        help="measure every backend here (accuracy, speed) and remember the one auto picks",
        description="Check each backend against eager PyTorch and time it at batch 8; reduced-precision backends "
        "are judged on the photographs given. The choice is cached for --backend auto.",
    )
    parser.add_argument("check_images", nargs="*", metavar="PHOTO", help="photographs for the reduced-precision bar")
    parser.add_argument("--weights", type=Path, help="weights file (default: the built-in person model)")


def _run_backends(args: argparse.Namespace) -> int:
    from detector.backends.selection import select_backend
    from detector.images import load_image
    from detector.inference import Detector

    photos = [load_image(path) for path in args.check_images]
    _, choice = select_backend(Detector.from_weights(args.weights), photos, use_cache=False)
    for candidate in choice.candidates:
        speed = f"{candidate.ms_per_image:7.1f} ms/image" if candidate.ms_per_image is not None else "      -        "
        mark = "*" if candidate.name == choice.name else " "
        print(f"{mark} {candidate.name:14} {speed}  {'ok ' if candidate.eligible else 'no '} {candidate.accuracy}")
    print(f"auto: {choice.name}")
    return EXIT_OK


# --- main ---------------------------------------------------------------------------------------------------------

COMMANDS = {
    "detect": (_add_detect, _run_detect),
    "info": (_add_info, _run_info),
    "convert-tf": (_add_convert_tf, _run_convert_tf),
    "export": (_add_export, _run_export),
    "backends": (_add_backends, _run_backends),
    # COCO evaluation, training and the synthetic data set: detector/cli_training.py
    "evaluate": (cli_training._add_evaluate, cli_training._run_evaluate),
    "train": (cli_training._add_train, cli_training._run_train),
    "make-dataset": (cli_training._add_make_dataset, cli_training._run_make_dataset),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detector", description="SSDLite-MobileNetV2 object detection.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add, _ in COMMANDS.values():
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command][1](args)
    except DetectorError as exc:
        _error(str(exc))
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
