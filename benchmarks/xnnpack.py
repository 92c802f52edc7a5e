"""XNNPACK engines beside OpenVINO and ONNX Runtime on the network alone: fp32 and int8, batch 1 and 8 (issue 16).

The network as every backend runs it: the preprocessed batch (N, 3, 300, 300) float32 in [-1, 1] in, the raw box
codes and class logits out (:mod:`detector.backends.onnx`'s layout; decoding and NMS are shared and not timed).
Engines, each with the same thread count, measured in alternating rounds in one run:

- ours, in this process: ``onnxruntime`` fp32, ``openvino`` fp32 (the ratios' base), ``litert`` fp32 (LiteRT on the
  ``.tflite`` our own exporter writes, image by image, as the backend runs it), ``openvino-bf16`` and
  ``openvino-int8`` (NNCF's default post-training quantization, calibrated on the check photographs);
- **LiteRT** (``ai-edge-litert``, TFLite's runtime; XNNPACK is its default CPU delegate) on a ``.tflite`` converted
  from our own weights by ``litert-torch`` (torch.export → StableHLO → LiteRT, no TensorFlow), fp32 and int8
  (PT2E static quantization: int8 weights per channel, int8 activations, calibrated on the check photographs);
- **LiteRT** on a ``.tflite`` that TensorFlow's converter makes from the published person frozen graph, cut to the
  network (``Preprocessor/sub`` in, ``Squeeze`` and ``concat_1`` out: TF's box codes are yx-ordered and its input
  NHWC, so each call transposes in and permutes out, inside the timing), fp32 and int8 (TFLite post-training
  quantization on the same photographs); the issue's earlier measurement used this one;
- **ExecuTorch**'s XNNPACK backend on a ``.pte`` exported from our weights, fp32 and int8 (XNNPACKQuantizer,
  symmetric per-channel, same calibration).

Per engine: ms per image at batch 1 and 8 (medians over the rounds), the speed ratio to OpenVINO fp32 in the same
run (> 1: faster), the largest difference of its raw outputs from eager PyTorch fp32 on a photograph, and the
accuracy bar's figures (:mod:`detector.backends.accuracy`: agreement AP with fp32's detections and confident fp32
detections lost) on the check photographs. Converted files are cached per weights, engine, precision, batch and
calibration set under the cache directory's ``xnnpack/``; the first run converts (about 20 minutes on 2 cores).

None of these engines is a dependency of this project: they run in side environments, as worker processes this
script drives over a pipe (as ``benchmarks/tf_vs_torch.py`` does with TensorFlow). ExecuTorch 1.5.1 and
litert-torch 0.10.0 run on the project's own torch (2.14.1, shared through a ``.pth`` file; ExecuTorch's wheel does
not declare torch, and its native extension loads against 2.14.1):

    python3 -m venv /tmp/xnnenv
    .venv/bin/python -c 'import site; print(site.getsitepackages()[0])' \\
        > /tmp/xnnenv/lib/python3.11/site-packages/project-venv.pth
    /tmp/xnnenv/bin/pip install --no-deps executorch==1.5.1 litert-torch==0.10.0 litert-converter==0.5.0 \\
        ai-edge-litert==2.3.0 ai-edge-quantizer==0.10.0 'torchao>=0.18,<0.19'
    /tmp/xnnenv/bin/pip install flatbuffers ruamel.yaml pyyaml tabulate absl-py multipledispatch xdsl==0.28.0 \\
        lark ml_dtypes backports.strenum immutabledict tqdm protobuf jax && \\
        /tmp/xnnenv/bin/pip install -U 'typing-extensions>=4.15'
    python3 -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow-cpu ai-edge-litert numpy   # optional

    .venv/bin/python benchmarks/xnnpack.py --xnn-python /tmp/xnnenv/bin/python --tf-python /tmp/tfenv/bin/python \\
        [--weights person] [--threads 2] [--rounds 5] [--repeats 8]

Without ``--tf-python`` the TF-graph rows are left out (LiteRT then runs in the ``--xnn-python`` environment);
without ``--xnn-python`` the litert-torch and ExecuTorch rows are. The TF graph exists for the person model only.
PyTorch's own XNNPACK path (``torch.utils.mobile_optimizer``) is not measured: the torch wheels are built without
XNNPACK ("Mobile optimization only available with XNNPACK ... Please build with USE_XNNPACK=1").
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _timing import time_batches  # noqa: E402

from detector.anchors import anchors_for  # noqa: E402
from detector.backends import accuracy  # noqa: E402
from detector.backends.litert_backend import LiteRtBackend  # noqa: E402
from detector.backends.onnx import weights_key  # noqa: E402
from detector.backends.onnxruntime_backend import OnnxRuntimeBackend  # noqa: E402
from detector.backends.openvino_backend import OpenVinoBackend  # noqa: E402
from detector.builtin import resolve_weights  # noqa: E402
from detector.cache import cache_dir  # noqa: E402
from detector.errors import BackendUnavailable  # noqa: E402
from detector.images import load_image  # noqa: E402
from detector.machine import describe_cpu_line  # noqa: E402
from detector.postprocess import detections_in_pixels  # noqa: E402
from detector.preprocess import preprocess  # noqa: E402
from detector.samples import check_images, photo  # noqa: E402
from detector.weights import load_weights  # noqa: E402

BATCHES = (1, 8)
DIFF_PHOTO = "grace_hopper.jpg"

# Conversions in the side environment with torch: our weights → ExecuTorch .pte or LiteRT .tflite, fp32 or int8.
TORCH_EXPORT = r"""
import sys, numpy as np, torch
sys.path.insert(0, sys.argv[1])
from detector.weights import load_weights
engine, precision, batch, weights, calibration, out = sys.argv[2], sys.argv[3], int(sys.argv[4]), *sys.argv[5:8]
model = load_weights(weights).model.eval()
example = (torch.zeros(batch, 3, model.image_size, model.image_size),)
if precision == "int8":
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    if engine == "executorch":
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer, get_symmetric_quantization_config)
        quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    else:
        from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
        quantizer = PT2EQuantizer().set_global(
            get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    prepared = prepare_pt2e(torch.export.export(model, example).module(), quantizer)
    images = np.load(calibration)
    with torch.no_grad():
        for i in range(0, len(images) - batch + 1, batch):
            prepared(torch.from_numpy(images[i:i + batch]))
    model = convert_pt2e(prepared, fold_quantize=engine == "executorch")
if engine == "executorch":
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    lowered = to_edge_transform_and_lower(torch.export.export(model, example), partitioner=[XnnpackPartitioner()])
    open(out, "wb").write(lowered.to_executorch().buffer)
else:
    import litert_torch
    kwargs = {}
    if precision == "int8":
        from litert_torch.quantize.quant_config import QuantConfig
        kwargs["quant_config"] = QuantConfig(pt2e_quantizer=quantizer)
    litert_torch.convert(model, example, **kwargs).export(out)
"""

# TensorFlow's converter on the published frozen graph, cut to the network (NHWC in; yx-ordered codes out).
TF_GRAPH_CONVERT = r"""
import sys, numpy as np, tensorflow as tf
graph, precision, batch, calibration, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), *sys.argv[4:6]
converter = tf.compat.v1.lite.TFLiteConverter.from_frozen_graph(
    graph, input_arrays=["Preprocessor/sub"], output_arrays=["Squeeze", "concat_1"],
    input_shapes={"Preprocessor/sub": [batch, 300, 300, 3]})
if precision == "int8":
    images = np.ascontiguousarray(np.load(calibration).transpose(0, 2, 3, 1))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([images[i:i + batch]] for i in range(0, len(images) - batch + 1, batch))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
open(out, "wb").write(converter.convert())
"""

# Runs .tflite (LiteRT, default XNNPACK delegate) and .pte (ExecuTorch) files; answers JSON lines on stdout.
WORKER = r"""
import json, sys, time
import numpy as np
spec, threads = json.load(open(sys.argv[1])), int(sys.argv[2])
timing = np.load(sys.argv[3])

def litert(path, tf_graph):
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_path=path, num_threads=threads)
    interpreter.allocate_tensors()
    source = interpreter.get_input_details()[0]
    outputs = {d["shape"][-1]: d for d in interpreter.get_output_details()}
    codes_out, logits_out = outputs.pop(4), outputs.popitem()[1]
    def read(detail):  # litert-torch's int8 models take and give int8 tensors: (de)quantized here, in the timing
        value = interpreter.get_tensor(detail["index"])
        if value.dtype == np.int8:
            scale, zero = detail["quantization"]
            value = (value.astype(np.float32) - zero) * np.float32(scale)
        return value
    def run(batch):
        if tf_graph:
            batch = batch.transpose(0, 2, 3, 1)
        if source["dtype"] == np.int8:
            scale, zero = source["quantization"]
            batch = np.clip(np.rint(batch * np.float32(1 / scale)) + zero, -128, 127).astype(np.int8)
        interpreter.set_tensor(source["index"], np.ascontiguousarray(batch))
        interpreter.invoke()
        codes = read(codes_out)
        return (codes[..., [1, 0, 3, 2]] if tf_graph else codes), read(logits_out)
    return run

def executorch(path):
    import torch
    from executorch.extension.pybindings import portable_lib
    portable_lib._unsafe_reset_threadpool(threads)
    module = portable_lib._load_for_executorch(path)
    def run(batch):
        codes, logits = module.forward((torch.from_numpy(np.ascontiguousarray(batch)),))
        return codes.numpy(), logits.numpy()
    return run

engines = {}
for name, entry in spec.items():
    make = (lambda p: executorch(p)) if entry["kind"] == "pte" else (lambda p: litert(p, entry["kind"] == "tf-graph"))
    engines[name] = {int(b): make(p) for b, p in entry["paths"].items()}
for runs in engines.values():
    for b, run in runs.items():
        run(timing[:b])
from importlib.metadata import version
kinds = {entry["kind"] for entry in spec.values()}
packages = (["executorch"] if "pte" in kinds else []) + (["ai-edge-litert"] if kinds - {"pte"} else [])
print(json.dumps({package: version(package) for package in packages}), flush=True)
for line in sys.stdin:
    command = json.loads(line)
    runs = engines[command["engine"]]
    if command["op"] == "time":
        b, times = command["batch"], []
        for r in range(command["repeats"]):
            start = (r * b) % (len(timing) - b + 1)
            t0 = time.perf_counter()
            runs[b](timing[start:start + b])
            times.append(time.perf_counter() - t0)
        print(json.dumps(times), flush=True)
    else:  # "run": every image of the input file, batches of the largest size, the rest one by one
        images, large = np.load(command["input"]), max(runs)
        outputs, i = [], 0
        while i < len(images):
            b = large if len(images) - i >= large else 1
            outputs.append(runs[b](images[i:i + b]))
            i += b
        np.save(command["output"] + "-codes.npy", np.concatenate([o[0] for o in outputs]))
        np.save(command["output"] + "-logits.npy", np.concatenate([o[1] for o in outputs]))
        print(json.dumps("done"), flush=True)
"""


@dataclass(frozen=True)
class SideEngine:
    """An engine run by a worker: ``kind`` "tflite" (from our weights), "tf-graph" (from TF's graph) or "pte"."""

    name: str
    engine: str
    precision: str
    kind: str
    source: str


SIDE_ENGINES = (
    SideEngine("litert-xnnpack", "LiteRT XNNPACK", "fp32", "tflite", "our weights, litert-torch"),
    SideEngine("litert-xnnpack-int8", "LiteRT XNNPACK", "int8", "tflite", "our weights, litert-torch PT2E"),
    SideEngine("litert-xnnpack (TF graph)", "LiteRT XNNPACK", "fp32", "tf-graph", "TF frozen graph, TFLiteConverter"),
    SideEngine("litert-xnnpack-int8 (TF graph)", "LiteRT XNNPACK", "int8", "tf-graph", "TF frozen graph, TFLite PTQ"),
    SideEngine("executorch-xnnpack", "ExecuTorch XNNPACK", "fp32", "pte", "our weights, torch.export"),
    SideEngine("executorch-xnnpack-int8", "ExecuTorch XNNPACK", "int8", "pte", "our weights, XNNPACKQuantizer"),
)


class Worker:
    """A side-environment process running some :data:`SIDE_ENGINES` over a pipe."""

    def __init__(self, python: str, spec: dict[str, dict], timing: Path, threads: int, scratch: Path) -> None:
        spec_path = scratch / f"spec-{len(list(scratch.iterdir()))}.json"
        spec_path.write_text(json.dumps(spec))
        script = scratch / "xnnpack_worker.py"
        script.write_text(WORKER)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TF_CPP_MIN_LOG_LEVEL": "3"}
        self.process = subprocess.Popen(
            [python, str(script), str(spec_path), str(threads), str(timing)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self.versions: dict[str, str] = self._ask_line()  # type: ignore[assignment]

    def _ask_line(self) -> object:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the worker exited (run it by hand to see why)")
        return json.loads(line)

    def ask(self, **command: object) -> object:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self._ask_line()

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


def convert(python: str, args: list[str], target: Path, what: str) -> Path | None:
    """Run a conversion script in a side environment unless ``target`` is cached; None (and why) when it fails."""
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    started = time.perf_counter()
    done = subprocess.run(
        [python, "-c", args[0], *args[1:], str(partial)],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    if done.returncode != 0 or not partial.is_file():
        print(f"{what}: conversion failed: {done.stderr.strip().splitlines()[-1:]}")
        return None
    partial.replace(target)
    print(f"{what}: converted in {time.perf_counter() - started:.0f} s → {target}")
    return target


def median_ms_per_image(times: list[float], batch: int) -> float:
    return statistics.median(times) * 1000 / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="person")
    parser.add_argument("--xnn-python", help="python of an env with executorch, litert-torch and ai-edge-litert")
    parser.add_argument("--tf-python", help="python of an env with tensorflow-cpu and ai-edge-litert")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds over every engine")
    parser.add_argument("--repeats", type=int, default=8, help="calls per engine, batch size and round")
    args = parser.parse_args()
    print(describe_cpu_line())

    loaded = load_weights(resolve_weights(args.weights))
    spec, model, key = loaded.spec, loaded.model, weights_key(loaded.digest)
    pre, post = spec.preprocessing, spec.postprocessing
    anchors = anchors_for(spec.image_size)

    def prepared(arrays: list[np.ndarray]) -> np.ndarray:
        return preprocess(arrays, spec.image_size, pre.pixel_scale, pre.pixel_offset, exact=True)

    judged = check_images()
    names, arrays = list(judged), list(judged.values())
    sizes = [a.shape[:2] for a in arrays]
    check = np.concatenate([prepared(arrays[i : i + 8]) for i in range(0, len(arrays), 8)])
    timing = check[:8]
    diff_photo = prepared([load_image(photo(DIFF_PHOTO))])

    import torch

    torch.set_num_threads(args.threads)

    def reference(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            codes, logits = model(torch.from_numpy(batch))
        return codes.numpy(), logits.numpy()

    def detections(codes: np.ndarray, logits: np.ndarray):
        return detections_in_pixels(
            codes, logits, anchors, post, spec.labels, sizes, score_threshold=accuracy.CANDIDATE_SCORE
        )

    def run_all(run: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        outputs = [run(check[i : i + 8]) for i in range(0, len(check), 8)]
        return np.concatenate([o[0] for o in outputs]), np.concatenate([o[1] for o in outputs])

    ref_photo = reference(diff_photo)
    ref_dets = detections(*run_all(reference))

    rows: dict[str, dict[str, object]] = {}
    local: dict[str, Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]] = {}
    calibration = [check[i : i + 8] for i in range(0, len(check), 8)]
    for name, precision, build in (
        ("onnxruntime", "fp32", lambda: OnnxRuntimeBackend.for_model(model, key=key, threads=args.threads)),
        ("openvino", "fp32", lambda: OpenVinoBackend.for_model(model, key=key, threads=args.threads)),
        ("litert", "fp32", lambda: LiteRtBackend.for_model(model, key=key, threads=args.threads)),
        ("openvino-bf16", "bf16", lambda: OpenVinoBackend.for_model(model, precision="bf16", key=key,
                                                                     threads=args.threads)),
        ("openvino-int8", "int8", lambda: OpenVinoBackend.for_model(model, precision="int8", key=key,
                                                                     calibration=calibration, threads=args.threads)),
    ):  # fmt: skip
        try:
            local[name] = build()
        except BackendUnavailable as exc:
            print(f"{name}: unavailable ({exc})")
            continue
        engine = {"onnxruntime": "ONNX Runtime", "litert": "LiteRT XNNPACK"}.get(name, "OpenVINO")
        source = "our weights, our TFLite exporter" if name == "litert" else "our weights, ONNX export"
        rows[name] = {"engine": engine, "precision": precision, "source": source}

    # Side engines: convert (cached), then one worker per environment.
    store = cache_dir() / "xnnpack"
    calib_key = hashlib.sha256(check.tobytes()).hexdigest()[:12]
    litert_python = args.xnn_python or args.tf_python
    versions: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        calib_path, timing_path, photo_path = scratch / "check.npy", scratch / "timing.npy", scratch / "photo.npy"
        np.save(calib_path, check)
        np.save(timing_path, timing)
        np.save(photo_path, diff_photo)
        by_python: dict[str, dict[str, dict[str, object]]] = {}
        for item in SIDE_ENGINES:
            if item.kind == "tf-graph" and args.tf_python and args.weights == "person":
                from detector.convert.published import person_graph_path

                python, runner = args.tf_python, litert_python
                script = [TF_GRAPH_CONVERT, str(person_graph_path()), item.precision]
            elif item.kind != "tf-graph" and args.xnn_python:
                python = runner = args.xnn_python
                engine = "executorch" if item.kind == "pte" else "litert"
                script = [TORCH_EXPORT, str(ROOT), engine, item.precision]
            else:
                continue
            paths = {}
            for batch in BATCHES:
                target = store / artifact_name(key, item, batch, calib_key)
                if item.kind == "tf-graph":
                    args_here = [*script, str(batch), str(calib_path)]
                else:
                    args_here = [*script, str(batch), str(loaded.path), str(calib_path)]
                path = convert(python, args_here, target, f"{item.name} batch {batch}")
                if path is not None:
                    paths[str(batch)] = str(path)
            if len(paths) == len(BATCHES):
                by_python.setdefault(runner, {})[item.name] = {"kind": item.kind, "paths": paths}

        workers: dict[str, Worker] = {}
        for python, spec_here in by_python.items():
            worker = Worker(python, spec_here, timing_path, args.threads, scratch)
            versions.update(worker.versions)
            for name in spec_here:
                item = next(i for i in SIDE_ENGINES if i.name == name)
                workers[name] = worker
                rows[name] = {"engine": item.engine, "precision": item.precision, "source": item.source}

        # Accuracy: raw outputs on a photograph and the bar's figures on the check set, against eager fp32.
        for name, row in rows.items():
            if name in local:
                photo_out, outputs = local[name](diff_photo), run_all(local[name])
            else:
                workers[name].ask(op="run", engine=name, input=str(photo_path), output=str(scratch / "p"))
                photo_out = (np.load(scratch / "p-codes.npy"), np.load(scratch / "p-logits.npy"))
                workers[name].ask(op="run", engine=name, input=str(calib_path), output=str(scratch / "c"))
                outputs = (np.load(scratch / "c-codes.npy"), np.load(scratch / "c-logits.npy"))
            row["diff"] = max(float(np.abs(r - o).max()) for r, o in zip(ref_photo, photo_out, strict=True))
            row["verdict"] = accuracy.judge(ref_dets, detections(*outputs), names)

        # Speed: alternating rounds, every engine at each batch size in turn.
        times: dict[str, dict[int, list[float]]] = {name: {b: [] for b in BATCHES} for name in rows}
        for run in local.values():
            run(timing[:1])
            run(timing)
        for _ in range(args.rounds):
            for batch in BATCHES:
                for name in rows:
                    if name in local:
                        times[name][batch] += time_batches(local[name], timing, batch, args.repeats)
                    else:
                        times[name][batch] += workers[name].ask(
                            op="time", engine=name, batch=batch, repeats=args.repeats
                        )
        for worker in set(workers.values()):
            worker.close()

    import onnxruntime
    import openvino

    versions = {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                "openvino": openvino.get_version().split("-")[0], **versions}  # fmt: skip
    print(", ".join(f"{k} {v}" for k, v in versions.items()))
    print(
        f"{args.weights} model, the network alone ({spec.image_size}² normalized in, raw outputs out), "
        f"{args.threads} threads; medians of {args.rounds} alternating rounds × {args.repeats} calls; "
        f"accuracy on {len(names)} check images against eager PyTorch fp32\n"
    )
    base = {b: median_ms_per_image(times["openvino"][b], b) for b in BATCHES} if "openvino" in times else None
    print("| engine | precision | converted from | batch 1 ms/img | batch 8 ms/img | vs OpenVINO fp32 (b1 / b8) "
          "| raw max diff vs torch | agreement AP | confident lost |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        ms = {b: median_ms_per_image(times[name][b], b) for b in BATCHES}
        ratio = f"{base[1] / ms[1]:.2f}× / {base[8] / ms[8]:.2f}×" if base else "–"
        verdict = row["verdict"]
        print(
            f"| {name} | {row['precision']} | {row['source']} | {ms[1]:.2f} | {ms[8]:.2f} | {ratio} | "
            f"{row['diff']:.1e} | {verdict.agreement_ap:.4f} | {len(verdict.lost)} |"
        )
    for name, row in rows.items():
        for lost in row["verdict"].lost:
            print(f"- {name} loses {lost}")


def artifact_name(key: str, item: SideEngine, batch: int, calib_key: str) -> str:
    """The cached file of a side engine: per weights, kind, precision, batch and (int8) calibration set."""
    suffix = f"-{calib_key}" if item.precision == "int8" else ""
    kind = {"tflite": "litert", "tf-graph": "tfgraph", "pte": "executorch"}[item.kind]
    return f"{key}-{kind}-{item.precision}-b{batch}{suffix}.{'pte' if item.kind == 'pte' else 'tflite'}"


if __name__ == "__main__":
    main()
