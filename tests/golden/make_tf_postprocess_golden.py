"""Run TensorFlow's own ops for the TF OD API's post-processing on TF.js's outputs of the COCO graph, and record the
detections as the golden file of tests/test_tf_postprocess.py.

TensorFlow is not a dependency of this project: run this in a side environment, e.g.

    python3 -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow-cpu numpy safetensors
    /tmp/tfenv/bin/python tests/golden/make_tf_postprocess_golden.py

The published TF.js graph model ends where the zoo's TF graph went on into ``BatchMultiClassNonMaxSuppression``
(coco-ssd runs its own NMS in JavaScript): its outputs ``Postprocessor/Slice`` (sigmoid scores of classes 1..90, the
background sliced off) and ``Postprocessor/ExpandDims_1`` (boxes decoded with the anchors and the 10/10/5/5 scale
factors, not clipped), as TF.js itself computed them, are in ``tests/golden/tfjs_coco_ssdlite.safetensors``
(tests/golden/make_tfjs_golden.py). This script reads nothing of ours but that file, and runs on those tensors what
the TF OD API runs next in the 2018 zoo export: ``SSDMetaArch.postprocess`` with the clip window [0, 0, 1, 1] (an
unpadded image) into ``core/post_processing.py``'s ``batch_multiclass_non_max_suppression`` →
``multiclass_non_max_suppression`` of that year, which clipped before NMS (later versions clip after it). The OD
API is no pip package, so its steps are written out here with the TensorFlow ops it calls, per image:

1. per class: ``filter_greater_than`` (scores > threshold, ``tf.where`` + ``tf.gather``);
   ``clip_to_window`` (``tf.minimum``/``tf.maximum`` per coordinate, then boxes of zero area dropped);
   ``tf.image.non_max_suppression`` at IoU 0.6, at most 100 per class;
2. all classes concatenated in class order, ``sort_by_field`` (``tf.nn.top_k``), the first 100.

At two score thresholds: 1e-8, the exported graph's (every box a candidate: the per-class and total caps of 100 are
reached), and 0.3. The file ``tests/golden/tf_postprocess_coco.safetensors`` holds per image and threshold
``{image}@{threshold}/boxes`` (D, 4) [ymin, xmin, ymax, xmax] normalized, ``/scores`` (D,) and ``/classes`` (D,)
int32, the class index 1..90 (the COCO category id, as the exporter's ``label_id_offset`` makes it); the metadata
records the settings, the TensorFlow version and the SHA-256 of the TF.js golden file it read.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TFJS_GOLDEN = HERE / "tfjs_coco_ssdlite.safetensors"
OUT = HERE / "tf_postprocess_coco.safetensors"

# The zoo's pipeline.config for ssdlite_mobilenet_v2_coco: batch_non_max_suppression { iou_threshold: 0.6
# max_detections_per_class: 100 max_total_detections: 100 }, score_converter: SIGMOID.
IOU_THRESHOLD = 0.6
MAX_PER_CLASS = 100
MAX_TOTAL = 100
SCORE_THRESHOLDS = (1e-8, 0.3)
CLIP_WINDOW = (0.0, 0.0, 1.0, 1.0)  # [y_min, x_min, y_max, x_max]: the whole (unpadded) image, normalized


def multiclass_nms(boxes, scores, score_threshold: float):
    """The OD API's ``multiclass_non_max_suppression`` (2018) with ``clip_window`` [0, 0, 1, 1], in TF ops.

    Args:
        boxes: (A, 4) float32 [ymin, xmin, ymax, xmax], one box per anchor for every class (q = 1).
        scores: (A, C) float32 class scores, class index ``c + 1`` in column ``c``.

    Returns:
        boxes (D, 4), scores (D,), classes (D,) int32 (1..C) as numpy arrays, highest score first.
    """
    import tensorflow as tf

    boxes = tf.convert_to_tensor(boxes, tf.float32)
    scores = tf.convert_to_tensor(scores, tf.float32)
    win_y_min, win_x_min, win_y_max, win_x_max = (tf.constant(v, tf.float32) for v in CLIP_WINDOW)
    selected_boxes, selected_scores, selected_classes = [], [], []
    for class_index in range(scores.shape[1]):
        class_scores = scores[:, class_index]
        # box_list_ops.filter_greater_than
        keep = tf.cast(tf.reshape(tf.where(tf.greater(class_scores, score_threshold)), [-1]), tf.int32)
        class_boxes, class_scores = tf.gather(boxes, keep), tf.gather(class_scores, keep)
        # box_list_ops.clip_to_window(filter_nonoverlapping=True)
        y_min, x_min, y_max, x_max = tf.split(value=class_boxes, num_or_size_splits=4, axis=1)
        y_min = tf.maximum(tf.minimum(y_min, win_y_max), win_y_min)
        y_max = tf.maximum(tf.minimum(y_max, win_y_max), win_y_min)
        x_min = tf.maximum(tf.minimum(x_min, win_x_max), win_x_min)
        x_max = tf.maximum(tf.minimum(x_max, win_x_max), win_x_min)
        class_boxes = tf.concat([y_min, x_min, y_max, x_max], 1)
        areas = tf.squeeze((y_max - y_min) * (x_max - x_min), [1])  # box_list_ops.area
        nonzero = tf.cast(tf.reshape(tf.where(tf.greater(areas, 0.0)), [-1]), tf.int32)
        class_boxes, class_scores = tf.gather(class_boxes, nonzero), tf.gather(class_scores, nonzero)
        # tf.image.non_max_suppression, at most max_size_per_class
        max_selection_size = tf.minimum(MAX_PER_CLASS, tf.shape(class_boxes)[0])
        chosen = tf.image.non_max_suppression(
            class_boxes, class_scores, max_selection_size, iou_threshold=IOU_THRESHOLD
        )
        selected_boxes.append(tf.gather(class_boxes, chosen))
        selected_scores.append(tf.gather(class_scores, chosen))
        selected_classes.append(tf.fill(tf.shape(chosen), class_index + 1))  # + label_id_offset
    # box_list_ops.concatenate, sort_by_field (tf.nn.top_k), then the first max_total_size
    all_boxes, all_scores = tf.concat(selected_boxes, 0), tf.concat(selected_scores, 0)
    all_classes = tf.concat(selected_classes, 0)
    _, order = tf.nn.top_k(all_scores, tf.shape(all_scores)[0], sorted=True)
    order = order[: tf.minimum(MAX_TOTAL, tf.shape(order)[0])]
    return (
        tf.gather(all_boxes, order).numpy(),
        tf.gather(all_scores, order).numpy(),
        tf.gather(all_classes, order).numpy().astype(np.int32),
    )


def main() -> None:
    import tensorflow as tf
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"where to write (default {OUT.name} beside this)")
    args = parser.parse_args()

    with safe_open(str(TFJS_GOLDEN), "np") as handle:
        images = sorted(json.loads(handle.metadata()["images"]))
    tfjs = load_file(str(TFJS_GOLDEN))
    tensors: dict[str, np.ndarray] = {}
    for name in images:
        for threshold in SCORE_THRESHOLDS:
            boxes, scores, classes = multiclass_nms(tfjs[f"{name}/boxes"], tfjs[f"{name}/scores"], threshold)
            tensors[f"{name}@{threshold:g}/boxes"] = np.ascontiguousarray(boxes.reshape(-1, 4), np.float32)
            tensors[f"{name}@{threshold:g}/scores"] = np.ascontiguousarray(scores, np.float32)
            tensors[f"{name}@{threshold:g}/classes"] = np.ascontiguousarray(classes, np.int32)
            print(f"{name} > {threshold:g}: {len(scores)} detections")
    metadata = {
        "tensorflow": tf.__version__,
        "tfjs_golden_sha256": hashlib.sha256(TFJS_GOLDEN.read_bytes()).hexdigest(),
        "images": json.dumps(images),
        "score_thresholds": json.dumps([f"{t:g}" for t in SCORE_THRESHOLDS]),
        "iou_threshold": f"{IOU_THRESHOLD:g}",
        "max_detections_per_class": str(MAX_PER_CLASS),
        "max_total_detections": str(MAX_TOTAL),
        "clip_window": json.dumps(CLIP_WINDOW),
        "layout": (
            "{image}@{threshold}/boxes [D, 4] [ymin, xmin, ymax, xmax] normalized, clipped to the window before NMS; "
            "/scores [D]; /classes [D] int32 class index 1..90; highest score first"
        ),
    }
    save_file(tensors, str(args.out), metadata=metadata)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, {len(images)} images, TF {tf.__version__})")


if __name__ == "__main__":
    main()
