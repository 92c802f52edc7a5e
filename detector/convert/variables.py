"""The TF Object Detection API's ``ssdlite_mobilenet_v2`` variables and where each goes in our model.

One mapping for every file format: a reader (frozen GraphDef, TF.js graph model) turns its file into slim variable
names and arrays in TF's layouts, then :func:`assemble` converts the layouts, checks every shape and refuses the
first variable that is missing, mis-shaped or left over, naming it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from detector.anchors import num_anchors_per_location, ssd_box_specs
from detector.box_coding import TF_TO_XYWH_CODE_ORDER
from detector.errors import GraphImportError
from detector.labels import default_labels
from detector.model import SSDLite
from detector.spec import ModelSpec, Postprocessing, Preprocessing
from detector.weights import build_model

EXTRACTOR = "FeatureExtractor/MobilenetV2"
# Scopes of torchvision's ``mobilenet_v2().features`` blocks 1..17 in slim's MobileNetV2 (``mobilenet_v2.py``).
NUM_INVERTED_RESIDUALS = 17
# The last name part of every trained slim variable: a leftover of these kinds means another architecture.
VARIABLE_KINDS = ("weights", "depthwise_weights", "biases", "gamma", "beta", "moving_mean", "moving_variance")
# The scopes the variables live under.
SCOPES = (f"{EXTRACTOR}/", "BoxPredictor_")

# How a variable's layout changes on the way in.
Kind = Literal["conv", "depthwise", "bn_gamma", "bn_beta", "bn_mean", "bn_var", "bias", "box_conv", "box_bias"]


@dataclass(frozen=True)
class Variable:
    """One TF variable and where it goes: ``kind`` says how the layout changes."""

    tf_name: str
    torch_key: str
    kind: Kind


def _conv_bn(tf_scope: str, conv_key: str, bn_key: str, depthwise: bool = False) -> Iterator[Variable]:
    if depthwise:
        yield Variable(f"{tf_scope}/depthwise_weights", f"{conv_key}.weight", "depthwise")
    else:
        yield Variable(f"{tf_scope}/weights", f"{conv_key}.weight", "conv")
    bn_fields: tuple[tuple[str, str, Kind], ...] = (
        ("gamma", "weight", "bn_gamma"),
        ("beta", "bias", "bn_beta"),
        ("moving_mean", "running_mean", "bn_mean"),
        ("moving_variance", "running_var", "bn_var"),
    )
    for tf_field, torch_field, kind in bn_fields:
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
    for k in range(len(model.backbone.extras)):
        index, depth = k + 2, model.backbone.out_channels[k + 2]
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


def to_torch_layout(array: np.ndarray, kind: Kind) -> np.ndarray:
    """A TF variable's array in our layout: kernels [kh, kw, in, out] → [out, in, kh, kw] (depthwise
    [kh, kw, in, 1] → [in, 1, kh, kw]); box predictor outputs per anchor [ty, tx, th, tw] → [tx, ty, tw, th]."""
    if kind in ("conv", "box_conv"):
        array = array.transpose(3, 2, 0, 1)
    elif kind == "depthwise":
        array = array.transpose(2, 3, 0, 1)
    if kind in ("box_conv", "box_bias"):
        codes = array.reshape(-1, 4, *array.shape[1:])
        array = codes[:, list(TF_TO_XYWH_CODE_ORDER)].reshape(array.shape)
    return np.ascontiguousarray(array)


def _trained_names(names: Iterable[str]) -> Iterator[str]:
    return (name for name in names if name.startswith(SCOPES) and name.rsplit("/", 1)[-1] in VARIABLE_KINDS)


STEM = f"{EXTRACTOR}/Conv/weights"
CLASS_PREDICTOR = "BoxPredictor_0/ClassPredictor/weights"


def require_architecture(names: Iterable[str], origin: str | Path) -> None:
    """Refuse a graph early, before reading anything else, when its stem or first class predictor is missing."""
    present = set(names)
    for required, what in (
        (STEM, "an ssd_mobilenet_v2 feature extractor"),
        (CLASS_PREDICTOR, "a TF OD API SSD box predictor"),
    ):
        if required not in present:
            raise GraphImportError(f"{origin}: no {required}: not {what}")


def import_variables(
    variables: Mapping[str, np.ndarray],
    *,
    origin: str | Path,
    image_size: int,
    postprocessing: Postprocessing,
    preprocessing: Preprocessing | None = None,
    labels: tuple[str, ...] | None = None,
    name: str,
    source: str,
    license: str,
    sources: Mapping[str, str] | None = None,
) -> tuple[SSDLite, ModelSpec]:
    """Our model (eval mode) and its spec from a graph's slim variables (name → array in TF layout).

    The width multiplier comes from the stem's output channels (32 at width 1), the number of classes (background
    included) from the first class predictor's outputs over its 3 anchors per location; ``labels`` default to the
    label map that count implies (:func:`detector.labels.default_labels`). ``sources`` names, for error messages,
    the tensor of the file each variable came from where that is not the variable's own name.
    """
    require_architecture(variables, origin)
    for kernel in (STEM, CLASS_PREDICTOR):
        if np.ndim(variables[kernel]) != 4:
            shape = np.shape(variables[kernel])
            raise GraphImportError(f"{origin}: {kernel} has shape {shape}, not a convolution kernel's 4 dimensions")
    width_mult = np.shape(variables[STEM])[-1] / 32
    anchors_per_location = num_anchors_per_location(ssd_box_specs())[0]
    class_outputs = np.shape(variables[CLASS_PREDICTOR])[-1]
    if class_outputs % anchors_per_location:
        raise GraphImportError(
            f"{origin}: {CLASS_PREDICTOR} has {class_outputs} outputs, not a multiple of "
            f"{anchors_per_location} anchors per location"
        )
    num_classes = class_outputs // anchors_per_location
    spec = ModelSpec(
        num_classes=num_classes,
        labels=tuple(labels or default_labels(num_classes)),
        name=name,
        image_size=image_size,
        width_mult=width_mult,
        preprocessing=preprocessing or Preprocessing(),
        postprocessing=postprocessing,
        source=source,
        license=license,
    )
    model = build_model(spec)
    state = assemble(model, variables, origin, sources)
    refuse_leftovers(model, variables, origin)
    model.load_state_dict(state, strict=False)
    return model.eval(), spec


def assemble(
    model: SSDLite,
    variables: Mapping[str, np.ndarray],
    origin: str | Path,
    sources: Mapping[str, str] | None = None,
) -> dict[str, torch.Tensor]:
    """``model``'s state dict from slim variables in TF layouts (name → array), every shape checked.

    Raises :class:`GraphImportError` naming the first variable missing from ``variables``, the first one whose shape
    does not fit (by the file's tensor name in ``sources``, where given), or the first state-dict entry nothing maps
    to.
    """
    sources = sources or {}
    state = model.state_dict()
    loaded = {}
    for var in variable_map(model):
        if var.tf_name not in variables:
            raise GraphImportError(f"{origin}: missing variable {var.tf_name}")
        array = np.asarray(variables[var.tf_name])
        target = tuple(state[var.torch_key].shape)
        if array.ndim != len(target) or (var.kind in ("box_conv", "box_bias") and array.shape[-1] % 4):
            raise GraphImportError(
                f"{origin}: variable {sources.get(var.tf_name, var.tf_name)} has shape {array.shape}, which no "
                f"layout conversion makes {target}"
            )
        array = to_torch_layout(array, var.kind)
        if array.shape != target:
            raise GraphImportError(
                f"{origin}: variable {sources.get(var.tf_name, var.tf_name)} has shape {array.shape} after layout "
                f"conversion, expected {target}"
            )
        loaded[var.torch_key] = torch.from_numpy(array.astype(np.float32))
    missing = sorted(set(state) - set(loaded) - {k for k in state if k.endswith("num_batches_tracked")})
    if missing:
        raise GraphImportError(f"{origin}: no TF variable for {missing[0]}")
    return loaded


def refuse_leftovers(model: SSDLite, variables: Mapping[str, np.ndarray], origin: str | Path) -> None:
    """Refuse a graph holding trained variables (non-scalar, by their slim names) that the mapping does not use:
    they belong to layers our architecture does not have."""
    mapped = {var.tf_name for var in variable_map(model)}
    leftover = sorted(name for name in _trained_names(variables) if name not in mapped and np.ndim(variables[name]) > 0)
    if leftover:
        raise GraphImportError(
            f"{origin}: variable {leftover[0]} is not part of ssdlite_mobilenet_v2 ({len(leftover)} unmapped)"
        )
