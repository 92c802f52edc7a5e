"""Import a TF Object Detection API ``ssdlite_mobilenet_v2`` frozen graph without TensorFlow.

The GraphDef is parsed with the protobuf definitions TensorBoard ships (``tensorboard.compat.proto``, generated from
TensorFlow's own ``.proto`` files), and its ``Const`` nodes are the variables. Every variable of the feature
extractor and the box predictors is mapped; anything missing, mis-shaped or left over refuses the graph with a
message that names it. The number of classes comes from the class predictor's shape; the input size, the NMS
settings and the order of box clipping come from the graph's own constants.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf.message import DecodeError
from tensorboard.compat.proto import graph_pb2, node_def_pb2
from tensorboard.util import tensor_util

from detector import defaults
from detector.convert.variables import SCOPES, import_variables, require_architecture
from detector.errors import GraphImportError
from detector.model import SSDLite
from detector.spec import ModelSpec, Postprocessing

NMS = "Postprocessor/BatchMultiClassNonMaxSuppression/map/while/MultiClassNonMaxSuppression"


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


def _value(consts: dict[str, node_def_pb2.NodeDef], name: str) -> np.ndarray:
    if name not in consts:
        raise GraphImportError(f"the graph has no constant {name}")
    try:
        return tensor_util.make_ndarray(consts[name].attr["value"].tensor)
    except (ValueError, TypeError) as exc:  # a dtype TF does not know, content that does not fill the shape
        raise GraphImportError(f"the graph's constant {name} is malformed: {exc}") from None


def _scalar(consts: dict[str, node_def_pb2.NodeDef], name: str) -> float:
    value = _value(consts, name)
    if value.size != 1 or not np.issubdtype(value.dtype, np.number) or not np.isfinite(value).all():
        raise GraphImportError(f"the graph's constant {name} is {value.dtype} {value.shape}, not a finite number")
    return float(value.reshape(()))


def _input(node: node_def_pb2.NodeDef, index: int) -> str:
    if index >= len(node.input):
        raise GraphImportError(f"the graph's node {node.name} has {len(node.input)} inputs, not {index + 1} or more")
    return str(node.input[index])


@dataclass(frozen=True)
class GraphSettings:
    """What a frozen graph records about its input and its post-processing."""

    image_size: int
    postprocessing: Postprocessing


def _graph_settings(graph: graph_pb2.GraphDef, consts: dict[str, node_def_pb2.NodeDef]) -> GraphSettings:
    """Input size and post-processing settings recorded in the graph itself."""
    resize = [n for n in graph.node if n.op == "ResizeBilinear" and n.name.startswith("Preprocessor/")]
    if len(resize) != 1:
        raise GraphImportError("the graph has no Preprocessor ResizeBilinear: not a fixed_shape_resizer export")
    if resize[0].attr["align_corners"].b or resize[0].attr["half_pixel_centers"].b:
        raise GraphImportError(
            "the graph's resize uses align_corners or half_pixel_centers; only TF1's legacy one is supported"
        )
    size = _value(consts, _input(resize[0], 1))
    if size.shape != (2,) or not np.issubdtype(size.dtype, np.integer) or size[0] != size[1]:
        raise GraphImportError(f"the graph resizes to {size.tolist()}; only square inputs are supported")
    nms = [n for n in graph.node if n.op.startswith("NonMaxSuppression") and n.name.startswith(NMS)]
    if not nms:
        raise GraphImportError("the graph has no MultiClassNonMaxSuppression: not a TF OD API SSD export")
    iou = _scalar(consts, _input(nms[0], 3))
    max_per_class = (
        int(_scalar(consts, f"{NMS}/Minimum/x")) if f"{NMS}/Minimum/x" in consts else defaults.MAX_DETECTIONS
    )
    # Newer exports clip to the window after NMS (``_clip_window_prune_boxes``), the 2018_05_09 zoo graphs before.
    clip = [n for n in graph.node if n.name.startswith(f"{NMS}/ClipToWindow/split") and n.op == "Split"]
    clip_after = bool(clip) and "SortByField" in _input(clip[0], 1)
    return GraphSettings(
        image_size=int(size[0]),
        postprocessing=Postprocessing(
            nms_iou_threshold=round(iou, 6),
            max_detections=max_per_class,
            clip_boxes="after_nms" if clip_after else "before_nms",
        ),
    )


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
    require_architecture(consts, path)
    settings = _graph_settings(graph, consts)
    for node in graph.node:
        if node.op.startswith("FusedBatchNorm") and abs(node.attr["epsilon"].f - defaults.BATCH_NORM_EPSILON) > 1e-7:
            raise GraphImportError(f"{path}: {node.name} uses batch-norm epsilon {node.attr['epsilon'].f}, not 1e-3")
    variables = {name: _value(consts, name) for name in consts if name.startswith(SCOPES)}
    return import_variables(
        variables,
        origin=path,
        image_size=settings.image_size,
        postprocessing=settings.postprocessing,
        labels=labels,
        name=name or f"{path.stem}-ssdlite-mobilenet-v2",
        source=source or f"TensorFlow frozen graph {path.name}",
        license=license,
    )
