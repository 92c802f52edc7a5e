"""Import a TF Object Detection API ``ssdlite_mobilenet_v2`` frozen graph without TensorFlow.

The GraphDef is parsed with the protobuf definitions TensorBoard ships (``tensorboard.compat.proto``, generated from
TensorFlow's own ``.proto`` files), and its ``Const`` nodes are the variables. Every variable of the feature
extractor and the box predictors is mapped; anything missing, mis-shaped or left over refuses the graph with a
message that names it. The number of classes comes from the class predictor's shape; the input size, the NMS
settings and the order of box clipping come from the graph's own constants.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from google.protobuf.message import DecodeError
from tensorboard.compat.proto import graph_pb2, node_def_pb2
from tensorboard.util import tensor_util

from detector import defaults
from detector.anchors import num_anchors_per_location, ssd_box_specs
from detector.box_coding import TF_TO_XYWH_CODE_ORDER
from detector.errors import GraphImportError
from detector.labels import default_labels
from detector.model import SSDLite
from detector.weights import ModelSpec, build_model

EXTRACTOR = "FeatureExtractor/MobilenetV2"
# Scopes of torchvision's ``mobilenet_v2().features`` blocks 1..17 in slim's MobileNetV2 (``mobilenet_v2.py``).
NUM_INVERTED_RESIDUALS = 17
NMS = "Postprocessor/BatchMultiClassNonMaxSuppression/map/while/MultiClassNonMaxSuppression"


@dataclass(frozen=True)
class Variable:
    """One TF variable and where it goes: ``kind`` says how the layout changes."""

    tf_name: str
    torch_key: str
    kind: str  # "conv", "depthwise", "bn_gamma", "bn_beta", "bn_mean", "bn_var", "bias", "box_conv", "box_bias"


def _conv_bn(tf_scope: str, conv_key: str, bn_key: str, depthwise: bool = False) -> Iterator[Variable]:
    if depthwise:
        yield Variable(f"{tf_scope}/depthwise_weights", f"{conv_key}.weight", "depthwise")
    else:
        yield Variable(f"{tf_scope}/weights", f"{conv_key}.weight", "conv")
    for tf_field, torch_field, kind in (
        ("gamma", "weight", "bn_gamma"),
        ("beta", "bias", "bn_beta"),
        ("moving_mean", "running_mean", "bn_mean"),
        ("moving_variance", "running_var", "bn_var"),
    ):
        yield Variable(f"{tf_scope}/BatchNorm/{tf_field}", f"{bn_key}.{torch_field}", kind)


def variable_map(model: SSDLite) -> list[Variable]:
    """Every TF variable of the model's graph and its state-dict key, for this model's extra-layer depths."""
    out: list[Variable] = []
    out += _conv_bn(f"{EXTRACTOR}/Conv", "backbone.features.0.0", "backbone.features.0.1")
    # The first block has no expansion (t = 1): depthwise, then project.
    out += _conv_bn(
        f"{EXTRACTOR}/expanded_conv/depthwise", "backbone.features.1.conv.0.0", "backbone.features.1.conv.0.1", True
    )
    out += _conv_bn(f"{EXTRACTOR}/expanded_conv/project", "backbone.features.1.conv.1", "backbone.features.1.conv.2")
    for i in range(1, NUM_INVERTED_RESIDUALS):
        scope, key = f"{EXTRACTOR}/expanded_conv_{i}", f"backbone.features.{i + 1}.conv"
        out += _conv_bn(f"{scope}/expand", f"{key}.0.0", f"{key}.0.1")
        out += _conv_bn(f"{scope}/depthwise", f"{key}.1.0", f"{key}.1.1", depthwise=True)
        out += _conv_bn(f"{scope}/project", f"{key}.2", f"{key}.3")
    out += _conv_bn(f"{EXTRACTOR}/Conv_1", "backbone.features.18.0", "backbone.features.18.1")
    # feature_map_generators.multi_resolution_feature_maps names the extras after their base layer and depth.
    for k, extra in enumerate(model.backbone.extras):
        index, depth = k + 2, extra[2].out_channels
        scope = f"{EXTRACTOR}/layer_19"
        key = f"backbone.extras.{k}"
        out += _conv_bn(f"{scope}_1_Conv2d_{index}_1x1_{depth // 2}", f"{key}.0.0", f"{key}.0.1")
        out += _conv_bn(f"{scope}_2_Conv2d_{index}_3x3_s2_{depth}_depthwise", f"{key}.1.0", f"{key}.1.1", True)
        out += _conv_bn(f"{scope}_2_Conv2d_{index}_3x3_s2_{depth}", f"{key}.2.0", f"{key}.2.1")
    for i in range(len(model.backbone.out_channels)):
        for tf_head, torch_head, box in (
            ("BoxEncodingPredictor", "regression_head", True),
            ("ClassPredictor", "classification_head", False),
        ):
            scope, key = f"BoxPredictor_{i}/{tf_head}", f"head.{torch_head}.module_list.{i}"
            out += _conv_bn(f"{scope}_depthwise", f"{key}.0.0", f"{key}.0.1", depthwise=True)
            out.append(Variable(f"{scope}/weights", f"{key}.1.weight", "box_conv" if box else "conv"))
            out.append(Variable(f"{scope}/biases", f"{key}.1.bias", "box_bias" if box else "bias"))
    return out


def _to_torch_layout(array: np.ndarray, kind: str) -> np.ndarray:
    if kind in ("conv", "box_conv"):  # [kh, kw, in, out] -> [out, in, kh, kw]
        array = array.transpose(3, 2, 0, 1)
    elif kind == "depthwise":  # [kh, kw, in, multiplier=1] -> [in, 1, kh, kw]
        array = array.transpose(2, 3, 0, 1)
    if kind in ("box_conv", "box_bias"):  # per anchor [ty, tx, th, tw] -> [tx, ty, tw, th]
        codes = array.reshape(-1, 4, *array.shape[1:])
        array = codes[:, list(TF_TO_XYWH_CODE_ORDER)].reshape(array.shape)
    return np.ascontiguousarray(array)


def read_graph(path: str | Path) -> graph_pb2.GraphDef:
    """Parse a binary GraphDef, refusing files that are not one."""
    path = Path(path)
    if not path.is_file():
        raise GraphImportError(f"graph file not found: {path}")
    graph = graph_pb2.GraphDef()
    try:
        graph.ParseFromString(path.read_bytes())
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise GraphImportError(f"{path} is not a TensorFlow GraphDef (protobuf parse failed: {exc})") from None
    if not graph.node:
        raise GraphImportError(f"{path} is not a TensorFlow GraphDef (no nodes)")
    return graph


def _constants(graph: graph_pb2.GraphDef) -> dict[str, node_def_pb2.NodeDef]:
    return {node.name: node for node in graph.node if node.op == "Const"}


def _value(consts: dict, name: str) -> np.ndarray:
    try:
        return tensor_util.make_ndarray(consts[name].attr["value"].tensor)
    except KeyError:
        raise GraphImportError(f"the graph has no constant {name}") from None


def _graph_settings(graph: graph_pb2.GraphDef, consts: dict) -> dict:
    """Input size and post-processing settings recorded in the graph itself."""
    resize = [n for n in graph.node if n.op == "ResizeBilinear" and n.name.startswith("Preprocessor/")]
    if len(resize) != 1:
        raise GraphImportError("the graph has no Preprocessor ResizeBilinear: not a fixed_shape_resizer export")
    if resize[0].attr["align_corners"].b or resize[0].attr["half_pixel_centers"].b:
        raise GraphImportError(
            "the graph's resize uses align_corners or half_pixel_centers; only TF1's legacy one is supported"
        )
    size = _value(consts, resize[0].input[1]).tolist()
    if len(size) != 2 or size[0] != size[1]:
        raise GraphImportError(f"the graph resizes to {size}; only square inputs are supported")
    nms = [n for n in graph.node if n.op.startswith("NonMaxSuppression") and n.name.startswith(NMS)]
    if not nms:
        raise GraphImportError("the graph has no MultiClassNonMaxSuppression: not a TF OD API SSD export")
    iou = float(_value(consts, nms[0].input[3]))
    max_per_class = int(_value(consts, f"{NMS}/Minimum/x")) if f"{NMS}/Minimum/x" in consts else defaults.MAX_DETECTIONS
    # Newer exports clip to the window after NMS (``_clip_window_prune_boxes``), the 2018_05_09 zoo graphs before.
    clip = [n for n in graph.node if n.name.startswith(f"{NMS}/ClipToWindow/split") and n.op == "Split"]
    clip_after = bool(clip) and "SortByField" in clip[0].input[1]
    return {
        "image_size": int(size[0]),
        "nms_iou_threshold": round(iou, 6),
        "max_detections": max_per_class,
        "clip_boxes": "after_nms" if clip_after else "before_nms",
    }


def import_tf_graph(
    path: str | Path,
    *,
    labels: tuple[str, ...] | None = None,
    name: str | None = None,
    source: str | None = None,
    license: str = "unspecified",
) -> tuple[SSDLite, ModelSpec]:
    """Build our model from a frozen ``ssdlite_mobilenet_v2`` graph; returns the model (eval mode) and its spec."""
    path = Path(path)
    graph = read_graph(path)
    consts = _constants(graph)
    first = f"{EXTRACTOR}/Conv/weights"
    if first not in consts:
        raise GraphImportError(f"{path}: no {first}: not an ssd_mobilenet_v2 feature extractor")
    class_weights = "BoxPredictor_0/ClassPredictor/weights"
    if class_weights not in consts:
        raise GraphImportError(f"{path}: no {class_weights}: not a TF OD API SSD box predictor")
    stem_channels = _value(consts, first).shape[-1]
    width_mult = stem_channels / 32
    anchors_per_location = num_anchors_per_location(ssd_box_specs())
    class_outputs = _value(consts, class_weights).shape[-1]
    if class_outputs % anchors_per_location[0]:
        raise GraphImportError(
            f"{path}: {class_weights} has {class_outputs} outputs, not a multiple of "
            f"{anchors_per_location[0]} anchors per location"
        )
    num_classes = class_outputs // anchors_per_location[0]
    settings = _graph_settings(graph, consts)
    for node in graph.node:
        if node.op.startswith("FusedBatchNorm") and abs(node.attr["epsilon"].f - defaults.BATCH_NORM_EPSILON) > 1e-7:
            raise GraphImportError(f"{path}: {node.name} uses batch-norm epsilon {node.attr['epsilon'].f}, not 1e-3")

    labels = labels or default_labels(num_classes)
    spec = ModelSpec(
        num_classes=num_classes,
        labels=tuple(labels),
        name=name or f"{path.stem}-ssdlite-mobilenet-v2",
        image_size=settings["image_size"],
        width_mult=width_mult,
        postprocessing={k: settings[k] for k in ("nms_iou_threshold", "max_detections", "clip_boxes")},
        source=source or f"TensorFlow frozen graph {path.name}",
        license=license,
    )
    model = build_model(spec)
    state = model.state_dict()
    mapping = variable_map(model)
    loaded = {}
    for var in mapping:
        if var.tf_name not in consts:
            raise GraphImportError(f"{path}: missing variable {var.tf_name}")
        array = _to_torch_layout(_value(consts, var.tf_name), var.kind)
        target = tuple(state[var.torch_key].shape)
        if array.shape != target:
            raise GraphImportError(
                f"{path}: variable {var.tf_name} has shape {array.shape} after layout conversion, expected {target}"
            )
        loaded[var.torch_key] = torch.from_numpy(array.astype(np.float32))
    missing = sorted(set(state) - set(loaded) - {k for k in state if k.endswith("num_batches_tracked")})
    if missing:
        raise GraphImportError(f"{path}: no TF variable for {missing[0]}")
    mapped = {var.tf_name for var in mapping}
    leftover = sorted(
        name
        for name, node in consts.items()
        if name.startswith((f"{EXTRACTOR}/", "BoxPredictor_"))
        and name not in mapped
        and tensor_util.make_ndarray(node.attr["value"].tensor).ndim > 0
        and name.rsplit("/", 1)[-1]
        in ("weights", "depthwise_weights", "biases", "gamma", "beta", "moving_mean", "moving_variance")
    )
    if leftover:
        raise GraphImportError(
            f"{path}: variable {leftover[0]} is not part of ssdlite_mobilenet_v2 ({len(leftover)} unmapped)"
        )
    model.load_state_dict(loaded, strict=False)
    return model.eval(), spec
