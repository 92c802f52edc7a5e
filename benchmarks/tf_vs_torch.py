"""Our detector against TensorFlow running the same frozen graph: same images, same thread count, one run.

End to end from decoded RGB pixels to detections (resize, normalise, network, decode, NMS) on both sides. TensorFlow
is not a dependency: it runs in a side environment as a worker process that this script drives over a pipe, so the
two sides are measured in alternating rounds on the same machine at the same time of day.

    python3 -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow-cpu numpy
    .venv/bin/python benchmarks/tf_vs_torch.py --tf-python /tmp/tfenv/bin/python [--threads 2] [--rounds 5]

Prints batch-1 latency (median ms) and batch-8 throughput (images/s) per variant, the ratios to TensorFlow, and
the issue's goals (``auto`` ≥ 3.5× TF at batch 1, ≥ 3.0× at batch 8), with the CPU's model and flags. The graph is
the built-in person model's (the one TF graph at hand). Variants: ``eager`` (the imported network as is, the
reference preprocessing), ``torch`` (the ``torch`` backend: batch norm folded, channels-last), one per OpenVINO
precision (whether or not it meets the accuracy bar), and ``auto`` (the backend ``auto`` picks on this machine;
``detector backends --weights person`` measures and caches it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _timing import time_batches  # noqa: E402

from detector.builtin import builtin_path  # noqa: E402
from detector.convert.published import person_graph_path  # noqa: E402
from detector.errors import BackendUnavailable  # noqa: E402
from detector.images import load_image  # noqa: E402
from detector.inference import Detector  # noqa: E402
from detector.machine import describe_cpu_line  # noqa: E402
from detector.postprocess import postprocess  # noqa: E402
from detector.preprocess import preprocess  # noqa: E402
from detector.samples import PHOTOS, photo  # noqa: E402
from detector.weights import load_weights  # noqa: E402

# TF's graph takes one tensor per batch, so every image is brought to one size beforehand (outside the timing).
SIZE = (640, 480)

TF_WORKER = r"""
import json, sys, time
import numpy as np
import tensorflow as tf
graph_path, images_path, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
images = np.load(images_path)
graph_def = tf.compat.v1.GraphDef()
graph_def.ParseFromString(open(graph_path, "rb").read())
graph = tf.Graph()
with graph.as_default():
    tf.import_graph_def(graph_def, name="")
config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=threads, inter_op_parallelism_threads=1)
session = tf.compat.v1.Session(graph=graph, config=config)
fetches = ["detection_boxes:0", "detection_scores:0", "detection_classes:0", "num_detections:0"]
def run(batch):
    return session.run(fetches, {"image_tensor:0": batch})
for batch_size in (1, 8):  # warm-up
    run(images[:batch_size])
print(json.dumps({"ready": tf.__version__}), flush=True)
for line in sys.stdin:
    batch_size, repeats = map(int, line.split())
    times = []
    for r in range(repeats):
        start = (r * batch_size) % (len(images) - batch_size + 1)
        t0 = time.perf_counter()
        run(images[start:start + batch_size])
        times.append(time.perf_counter() - t0)
    print(json.dumps(times), flush=True)
"""


class TensorFlowWorker:
    def __init__(self, python: str, images: np.ndarray, threads: int) -> None:
        self._dir = tempfile.TemporaryDirectory()
        images_path = Path(self._dir.name) / "images.npy"
        np.save(images_path, images)
        script = Path(self._dir.name) / "tf_worker.py"
        script.write_text(TF_WORKER)
        self.process = subprocess.Popen(
            [python, str(script), str(person_graph_path()), str(images_path), str(threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={"TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""},
        )
        self.version = json.loads(self.process.stdout.readline())["ready"]

    def measure(self, batch_size: int, repeats: int) -> list[float]:
        self.process.stdin.write(f"{batch_size} {repeats}\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)
        self._dir.cleanup()


def torch_variant(name: str, threshold: float):
    """A callable running our pipeline on a list of arrays, in one of the measured configurations."""
    if name == "eager":  # the imported model as is: BN as separate ops, no autograd, the reference resize
        loaded = load_weights(builtin_path("person"))
        model = loaded.model.eval()
        post = loaded.spec.postprocessing
        anchors = model.anchors.numpy()

        @torch.inference_mode()
        def run(arrays):
            codes, logits = model(torch.from_numpy(preprocess(arrays, exact=True)))
            return postprocess(
                codes.numpy(), logits.numpy(), anchors, score_threshold=threshold, clip_boxes=post.clip_boxes
            )

        return run
    if name == "auto-exact":  # auto restricted to fp32 engines: TF's answers
        detector = Detector.from_weights("person", backend="auto", precision="exact")
    else:
        detector = Detector.from_weights("person", backend=name)  # type: ignore[arg-type]
    return lambda arrays: detector.detect_arrays(arrays, score_threshold=threshold)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tf-python", default="/tmp/tfenv/bin/python", help="python of an env with tensorflow-cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (TF, then each of ours)")
    parser.add_argument("--repeats", type=int, default=10, help="batches per measurement")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    images = [np.asarray(Image.fromarray(load_image(photo(name))).resize(SIZE)) for name in PHOTOS]
    images = images * 2  # 14 images: batches of 8 slide over different ones
    tf_worker = TensorFlowWorker(args.tf_python, np.stack(images), args.threads)
    # TF's graph keeps every candidate above 1e-8 through NMS; ours does the same work at the same threshold.
    names = ["eager", "torch", "openvino", "litert", "auto-exact", "openvino-fp16", "openvino-bf16", "auto"]
    variants = {}
    for name in names:
        try:
            variants[name] = torch_variant(name, 1e-8)
        except BackendUnavailable as exc:
            print(f"{name}: unavailable here ({exc})")
    for run in variants.values():
        run(images[:1])
        run(images[:8])

    results: dict[str, dict[int, list[float]]] = {"tensorflow": {1: [], 8: []}}
    results.update({name: {1: [], 8: []} for name in variants})
    for _ in range(args.rounds):
        for batch_size in (1, 8):
            results["tensorflow"][batch_size] += tf_worker.measure(batch_size, args.repeats)
            for name, run in variants.items():
                results[name][batch_size] += time_batches(run, images, batch_size, args.repeats)
    tf_worker.close()

    print(describe_cpu_line())
    print(
        f"TensorFlow {tf_worker.version} vs torch {torch.__version__}, {args.threads} threads, {SIZE[0]}×{SIZE[1]} "
        f"RGB in, detections out; {args.rounds} alternating rounds × {args.repeats} batches"
    )
    auto = variants.get("auto")
    if auto is not None:
        print("auto runs:", Detector.from_weights("person", backend="auto").backend.name)
    if "auto-exact" in variants:
        print("auto-exact runs:", Detector.from_weights("person", backend="auto", precision="exact").backend.name)
    print(f"{'variant':<16}{'b1 median ms':>14}{'b1 vs TF':>10}{'b8 img/s':>12}{'b8 vs TF':>10}")
    tf_b1 = statistics.median(results["tensorflow"][1]) * 1000
    tf_b8 = 8 / statistics.median(results["tensorflow"][8])
    for name, timings in results.items():
        b1 = statistics.median(timings[1]) * 1000
        b8 = 8 / statistics.median(timings[8])
        print(f"{name:<16}{b1:>14.1f}{tf_b1 / b1:>9.2f}×{b8:>12.1f}{b8 / tf_b8:>9.2f}×")
    if "auto" in results:
        b1 = tf_b1 / (statistics.median(results["auto"][1]) * 1000)
        b8 = 8 / statistics.median(results["auto"][8]) / tf_b8
        print(
            f"goals: auto at batch 1 {b1:.2f}× TF (≥ 3.5×: {'met' if b1 >= 3.5 else 'not met'}), at batch 8 "
            f"{b8:.2f}× (≥ 3.0×: {'met' if b8 >= 3.0 else 'not met'})"
        )


if __name__ == "__main__":
    main()
