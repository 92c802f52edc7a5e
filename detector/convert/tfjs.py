"""Import a TF Object Detection API ``ssdlite_mobilenet_v2`` exported as a TensorFlow.js graph model, without TF.js.

The graph is the frozen GraphDef after tfjs-converter's optimisations, so its tensors are not the slim variables the
mapping of :mod:`detector.convert.variables` names; this module turns them back into those variables and hands them
to the same mapping and refusals as ``convert-tf``:

- pointwise convolutions had batch norm folded in: ``S/Conv2D/merged_input`` holds ``weights · γ/√(σ² + ε)`` and
  ``S/BatchNorm/batchnorm/sub`` the shift ``β − μ · γ/√(σ² + ε)``. They become the conv weights and a batch norm that
  is the identity plus that shift (γ = 1, β = shift, μ = 0, σ² = 1 − ε, so √(σ² + ε) is exactly 1 in float32);
- depthwise convolutions keep their weights and the two constants ``batchnorm/mul`` (γ/√(σ² + ε)) and ``/sub``:
  γ = mul, β = sub, μ = 0, σ² = 1 − ε;
- the box predictors' depthwise layers keep a ``FusedBatchNorm`` with γ, β, μ, σ² under their slim names.

The graph is also checked against what our model computes, so an export of anything else is refused: its anchors
(the constant ``Postprocessor/ExpandDims``) must equal ours bit for bit, its box decoder must scale by 1/10, 1/10,
1/5, 1/5, its resize must be TF1's legacy bilinear one, its scores a sigmoid, its batch norms' ε 1e-3. The graph
has no NMS (coco-ssd runs one in JavaScript), so the post-processing is the one the TF OD API exported these
weights with: the ``ssdlite_mobilenet_v2_coco_2018_05_09`` zoo config (sigmoid, per-class NMS at IoU 0.6, 100 per
class and in all) with the 2018 code's order, which clips boxes to the image *before* NMS
(``core/post_processing.py``, ``multiclass_non_max_suppression``: ``clip_window`` "to clip and normalize boxes to
before performing non-max suppression").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from detector import defaults
from detector.convert.tfjs_graph import TfjsGraph, read_tfjs_graph
from detector.convert.variables import EXTRACTOR, SCOPES, import_variables, require_architecture, variable_map
from detector.errors import GraphImportError
from detector.model import SSDLite, ssdlite_mobilenet_v2
from detector.spec import ModelSpec, Postprocessing, Preprocessing

STEM_SCOPE = f"{EXTRACTOR}/Conv"
RESIZE = "Preprocessor/map/while/ResizeImage/ResizeBilinear"
PIXEL_SCALE = "Preprocessor/mul/x"  # x · scale
PIXEL_SHIFT = "Preprocessor/sub/y"  # − shift
ANCHORS = "Postprocessor/ExpandDims"  # (1, A, 4) [ymin, xmin, ymax, xmax]
SCORE_CONVERTER = "Postprocessor/convert_scores"
# tfjs-converter's constant folding turns the decoder's divisions by the coder's scales into multiplications.
BOX_SCALE_RECIPROCALS = {
    "ConstantFolding/Postprocessor/Decode/div_recip": defaults.BOX_CODER_WEIGHTS[0],  # ty / 10, tx / 10
    "ConstantFolding/Postprocessor/Decode/div_2_recip": defaults.BOX_CODER_WEIGHTS[2],  # th / 5, tw / 5
}
# The zoo export these weights come from (ssdlite_mobilenet_v2_coco_2018_05_09's pipeline.config).
ZOO_POSTPROCESSING = Postprocessing(
    nms_iou_threshold=defaults.NMS_IOU_THRESHOLD, max_detections=defaults.MAX_DETECTIONS, clip_boxes="before_nms"
)
# The variance that makes a batch norm with mean 0 the identity: √(1 − ε + ε) rounds to exactly 1 in float32.
IDENTITY_VARIANCE = np.float32(1.0 - defaults.BATCH_NORM_EPSILON)


def _scope(name: str) -> str:
    return name.rsplit("/", 1)[0]


FOLDED = "/Conv2D/merged_input"


def slim_variables(graph: TfjsGraph, model: SSDLite) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The slim variables ``model``'s mapping needs, rebuilt from the graph's tensors (batch norms unfolded as the
    module docstring says), and for each the graph tensor it came from (for error messages).

    Raises :class:`GraphImportError` naming the first tensor the graph lacks, and the first trained-looking tensor
    (float, not a scalar, under the feature extractor's or predictors' scopes) that no variable comes from.
    """
    weights = graph.weights
    variables: dict[str, np.ndarray] = {}
    sources: dict[str, str] = {}

    def take(slim: str, tensor: str) -> None:
        if tensor not in weights:
            raise GraphImportError(f"{graph.path}: missing tensor {tensor}")
        variables[slim], sources[slim] = weights[tensor], tensor

    for var in variable_map(model):
        name, scope = var.tf_name, _scope(var.tf_name)
        if var.kind not in ("bn_gamma", "bn_beta", "bn_mean", "bn_var"):  # a conv's weights or biases
            if name not in weights and var.kind in ("conv", "box_conv") and scope + FOLDED not in weights:
                raise GraphImportError(f"{graph.path}: missing tensor {scope}{FOLDED} (or {name})")
            take(name, scope + FOLDED if name not in weights and scope + FOLDED in weights else name)
            continue
        if name in weights:  # a batch norm kept whole (FusedBatchNorm)
            take(name, name)
            continue
        conv = _scope(scope)  # ".../BatchNorm/gamma" belongs to the convolution ".../"
        shift, scale = f"{conv}/BatchNorm/batchnorm/sub", f"{conv}/BatchNorm/batchnorm/mul"
        if var.kind == "bn_beta":
            take(name, shift)
        elif var.kind == "bn_gamma" and conv + FOLDED not in weights:
            take(name, scale)  # the scale the graph applies after the (unfolded) convolution
        else:  # γ = 1 where folded into the weights; μ = 0, σ² = 1 − ε: the identity around the shift
            take(name, shift)
            value = {"bn_gamma": 1.0, "bn_mean": 0.0, "bn_var": IDENTITY_VARIANCE}[var.kind]
            variables[name] = np.full(weights[shift].shape, value, np.float32)
            sources[name] = f"{conv}{FOLDED} (batch norm folded)" if var.kind == "bn_gamma" else f"{shift} (folded)"
    used = {tensor.split(" ")[0] for tensor in sources.values()}
    leftover = sorted(
        tensor
        for tensor, value in weights.items()
        if tensor.startswith(SCOPES) and tensor not in used and value.dtype == np.float32 and value.ndim > 0
    )
    if leftover:
        raise GraphImportError(
            f"{graph.path}: tensor {leftover[0]} is not part of ssdlite_mobilenet_v2 ({len(leftover)} unmapped)"
        )
    return variables, sources


def _slim_names(graph: TfjsGraph) -> set[str]:
    """The slim variable names the graph holds, a folded convolution counting as its ``weights``."""
    return set(graph.weights) | {_scope(_scope(n)) + "/weights" for n in graph.weights if n.endswith(FOLDED)}


def _scalar(graph: TfjsGraph, name: str) -> np.ndarray:
    if name not in graph.weights:
        raise GraphImportError(f"{graph.path}: no constant {name}: not a TF OD API SSD export")
    return graph.weights[name]


def _number(graph: TfjsGraph, name: str) -> float:
    value = _scalar(graph, name)
    if value.size != 1 or not np.isfinite(value).all():
        raise GraphImportError(f"{graph.path}: constant {name} is {value.dtype} {value.shape}, not a finite number")
    return float(value.reshape(()))


def check_graph(graph: TfjsGraph) -> tuple[int, Preprocessing]:
    """Refuse a graph whose input handling or output decoding differs from our model's; returns the input size and
    the preprocessing the graph records."""
    resize = graph.nodes.get(RESIZE)
    if resize is None or resize.op != "ResizeBilinear":
        raise GraphImportError(f"{graph.path}: no {RESIZE}: not a fixed_shape_resizer export")
    if resize.attr.get("align_corners") or resize.attr.get("half_pixel_centers"):
        raise GraphImportError(
            f"{graph.path}: the graph's resize uses align_corners or half_pixel_centers; only TF1's legacy one is "
            "supported"
        )
    if len(resize.inputs) < 2:
        raise GraphImportError(f"{graph.path}: {RESIZE} has no size input")
    size = _scalar(graph, resize.inputs[1])
    if size.shape != (2,) or size.dtype != np.int32 or size[0] != size[1]:
        raise GraphImportError(f"{graph.path}: the graph resizes to {size.tolist()}; only square inputs are supported")
    scale, shift = _number(graph, PIXEL_SCALE), _number(graph, PIXEL_SHIFT)
    if np.float32(scale) != np.float32(defaults.PIXEL_SCALE) or shift != -defaults.PIXEL_OFFSET:
        raise GraphImportError(
            f"{graph.path}: the graph scales pixels as x · {scale} − {shift}, not MobileNetV2's x · 2/255 − 1"
        )
    for name, coder_scale in BOX_SCALE_RECIPROCALS.items():
        value = _number(graph, name)
        if np.float32(value) != np.float32(1.0 / coder_scale):
            raise GraphImportError(f"{graph.path}: {name} is {value}, not 1/{coder_scale:g}: box coder scales differ")
    converter = graph.nodes.get(SCORE_CONVERTER)
    if converter is None or converter.op != "Sigmoid":
        raise GraphImportError(f"{graph.path}: {SCORE_CONVERTER} is not a Sigmoid: only sigmoid scores are supported")
    for node in graph.nodes.values():
        epsilon = node.attr.get("epsilon", defaults.BATCH_NORM_EPSILON)
        if not isinstance(epsilon, (int, float)):
            raise GraphImportError(f"{graph.path}: {node.name}'s epsilon is {epsilon!r}, not a number")
        if node.op.startswith("FusedBatchNorm") and abs(epsilon - defaults.BATCH_NORM_EPSILON) > 1e-7:
            raise GraphImportError(f"{graph.path}: {node.name} uses batch-norm epsilon {epsilon}, not 1e-3")
    return int(size[0]), Preprocessing(pixel_scale=defaults.PIXEL_SCALE, pixel_offset=defaults.PIXEL_OFFSET)


def check_anchors(graph: TfjsGraph, model: SSDLite) -> None:
    """Refuse a graph whose anchors are not our anchors, bit for bit (TF stores [ymin, xmin, ymax, xmax])."""
    theirs = torch.from_numpy(np.ascontiguousarray(_scalar(graph, ANCHORS).reshape(-1, 4)[:, [1, 0, 3, 2]]))
    ours = model.anchors
    if theirs.shape != ours.shape:
        raise GraphImportError(f"{graph.path}: the graph has {theirs.shape[0]} anchors, the model {ours.shape[0]}")
    differ = torch.nonzero(theirs != ours)
    if differ.numel():
        index = int(differ[0, 0])
        raise GraphImportError(
            f"{graph.path}: anchor {index} is {theirs[index].tolist()}, ours is {ours[index].tolist()} (xyxy)"
        )


def import_tfjs_graph(
    path: str | Path,
    *,
    labels: tuple[str, ...] | None = None,
    name: str | None = None,
    source: str | None = None,
    license: str = "unspecified",
) -> tuple[SSDLite, ModelSpec]:
    """Build our model from a TF.js ``ssdlite_mobilenet_v2`` graph model (``model.json`` beside its shards); returns
    the model (eval mode) and its spec."""
    path = Path(path)
    graph = read_tfjs_graph(path)
    require_architecture(_slim_names(graph), path)
    image_size, preprocessing = check_graph(graph)
    stem = graph.weights.get(f"{STEM_SCOPE}{FOLDED}", graph.weights.get(f"{STEM_SCOPE}/weights"))
    assert stem is not None  # require_architecture found one of them
    # A model of the graph's width names the variables to read and has the anchors to compare; the class count
    # comes from the class predictor's shape in import_variables.
    probe = ssdlite_mobilenet_v2(num_classes=2, image_size=image_size, width_mult=stem.shape[-1] / 32)
    check_anchors(graph, probe)
    variables, sources = slim_variables(graph, probe)
    return import_variables(
        variables,
        origin=path,
        image_size=image_size,
        preprocessing=preprocessing,
        postprocessing=ZOO_POSTPROCESSING,
        labels=labels,
        name=name or f"{path.parent.name}-ssdlite-mobilenet-v2",
        source=source or f"TensorFlow.js graph model {path}",
        license=license,
        sources=sources,
    )
