"""The SSDLite-MobileNetV2 recipe: every default in one place.

The numbers are those of the TF Object Detection API sample config
``samples/configs/ssdlite_mobilenet_v2_coco.config`` (tensorflow/models, research/object_detection), which the
published ``ssdlite_mobilenet_v2_coco`` export and the built-in person model were trained with. The CLI, the Python
API and the service override these; they never redefine them.
"""

from __future__ import annotations

from typing import Final

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

# --- Evaluation and training (detector/training/) -------------------------------------------
# Evaluation keeps nearly every candidate, as COCO mAP expects (the TF zoo's 0.3 under-reports mAP; the serving
# threshold above is for people).
EVAL_SCORE_THRESHOLD = 0.01
EVAL_BATCH_SIZE = 8

# Matching (argmax_matcher in the TF config): IoU >= 0.5 is a positive, below is a negative, and every ground-truth
# box is force-matched to its best anchor.
MATCH_IOU_THRESHOLD = 0.5
# hard_example_miner {max_negatives_per_positive: 3 min_negatives_per_image: 3}, loss_type CLASSIFICATION.
HARD_NEGATIVES_PER_POSITIVE = 3
MIN_NEGATIVES_PER_IMAGE = 3
# Class-head bias at initialisation: sigmoid(bias) = this prior (RetinaNet's trick; training from scratch then starts
# with small background losses instead of 0.5 on every class of every anchor).
CLASS_PRIOR = 0.01

# Optimisation: SGD with momentum, linear warm-up then cosine decay to zero (torchvision's SSDlite recipe uses
# cosine; the TF config's RMSProp with exponential decay is available as --optimizer rmsprop).
TRAIN_OPTIMIZER: Final = "sgd"
TRAIN_LEARNING_RATE = 0.05  # for TRAIN_BATCH_SIZE images per step; scale linearly with the global batch
TRAIN_MOMENTUM = 0.9
TRAIN_WEIGHT_DECAY = 4e-5  # the config's l2_regularizer weight 0.00004 (TF's l2 loss w·Σx²/2 has gradient w·x)
TRAIN_BATCH_SIZE = 16  # per process
TRAIN_EPOCHS = 30
TRAIN_WARMUP_STEPS = 200  # capped at one epoch
TRAIN_WARMUP_FACTOR = 0.001  # learning rate at step 0, as a fraction of the peak
TRAIN_AUGMENTATION: Final = "ssd"  # see detector.training.pipeline.ssd_augmentation
TRAIN_ZOOM_OUT_FILL = (123, 117, 104)  # RandomZoomOut fill: the ImageNet mean in 0..255, as torchvision
TRAIN_EVAL_EVERY = 1  # epochs between evaluations on the val split
# Batch norm running-statistics momentum while training. The config's decay 0.9997 (BATCH_NORM_MOMENTUM) suits its
# 200k steps; over a few thousand steps the running statistics would barely leave their initial values and the
# evaluated (eval-mode) network would be garbage. PyTorch's default 0.1 follows the weights within ~20 steps; the
# cosine schedule ends with small steps, so the final statistics fit the final weights (torchvision's SSDlite: 0.03).
TRAIN_BATCH_NORM_MOMENTUM = 0.1

# --- Running the product --------------------------------------------------------------------------------------------
# The built-in model used when none is named (CLI, Python API, service, image): see detector/builtin.py.
MODEL = "coco"
# Images per forward pass for the Python API and `detector detect`.
DETECT_BATCH_SIZE = 8
# ... and for `detector detect --device cuda` and `detector evaluate --device cuda` (detector/gpu): the batch the
# H100 figures were measured at (fp16 network alone 7,537 img/s at 64 against 1,081 at 8; README, "Backends and speed").
GPU_BATCH_SIZE = 64
# Image-reading worker processes of `detector evaluate` and `detector train` (per rank).
DATA_WORKERS = 2

# --- The synthetic shapes data set (detector/training/synthetic.py, `detector make-dataset`) ----------------------
SYNTHETIC_TRAIN_IMAGES = 400
SYNTHETIC_VAL_IMAGES = 100
SYNTHETIC_CLASSES = ("circle", "square", "triangle")
SYNTHETIC_MIN_SIZE = 96
SYNTHETIC_MAX_SIZE = 160
SYNTHETIC_MAX_OBJECTS = 4
