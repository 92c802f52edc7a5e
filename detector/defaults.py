"""The SSDLite-MobileNetV2 recipe: every default in one place.

The numbers are those of the TF Object Detection API sample config
``samples/configs/ssdlite_mobilenet_v2_coco.config`` (tensorflow/models, research/object_detection), which the
published ``ssdlite_mobilenet_v2_coco`` export and the built-in person model were trained with. The CLI, the Python
API and the service override these; they never redefine them.
"""

from __future__ import annotations

ARCHITECTURE = "ssdlite_mobilenet_v2"

# fixed_shape_resizer {height: 300 width: 300}; the MobileNetV2 paper (§6.2) quotes 320, the zoo export uses 300.
IMAGE_SIZE = 300

# ssd_anchor_generator {num_layers: 6 min_scale: 0.2 max_scale: 0.95 aspect_ratios: 1.0 2.0 0.5 3.0 0.3333}.
# The protos hold float32, so these are the float32 values as Python floats see them.
ANCHOR_MIN_SCALE = 0.20000000298023224
ANCHOR_MAX_SCALE = 0.949999988079071
ANCHOR_ASPECT_RATIOS = (1.0, 2.0, 0.5, 3.0, 0.33329999446868896)
ANCHOR_INTERPOLATED_ASPECT_RATIO = 1.0

# faster_rcnn_box_coder {y_scale: 10 x_scale: 10 height_scale: 5 width_scale: 5}, in (x, y, w, h) order.
BOX_CODER_WEIGHTS = (10.0, 10.0, 5.0, 5.0)

# batch_non_max_suppression {iou_threshold: 0.6 max_detections_per_class: 100 max_total_detections: 100}
NMS_IOU_THRESHOLD = 0.6
MAX_DETECTIONS = 100
# score_threshold in the exported graph (1e-8): everything is a candidate; callers pick their own threshold.
NMS_SCORE_THRESHOLD = 1e-8

# The threshold for showing detections to a person (CLI, service). Evaluation uses its own, lower one.
SCORE_THRESHOLD = 0.5

# Batch norm: slim's default epsilon; momentum 1 - decay (decay 0.9997 in the config).
BATCH_NORM_EPSILON = 1e-3
BATCH_NORM_MOMENTUM = 0.0003

# SSDMobileNetV2FeatureExtractor.preprocess: (2 / 255) * x - 1, applied after the resize.
PIXEL_SCALE = 2.0 / 255.0
PIXEL_OFFSET = -1.0

# Extra feature layers after Conv_1 (feature_map_layout layer_depth [-1, -1, 512, 256, 256, 128]).
EXTRA_LAYER_DEPTHS = (512, 256, 256, 128)
