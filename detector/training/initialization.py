"""How a training run's network starts: from scratch, from an ImageNet backbone, or from our weights.

From our weights (a file or a built-in model), everything is kept but the class head's outputs for labels the
weights lack, which are re-initialised at the class prior; labels are matched by name.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from detector import defaults
from detector.builtin import resolve_weights
from detector.errors import DetectorError, WeightsError
from detector.model import SSDLite
from detector.spec import ModelSpec
from detector.training.config import TrainConfig
from detector.weights import build_model, check_state_dict, load_weights


def class_logit_layers(model: SSDLite) -> list[nn.Conv2d]:
    """The final 1×1 convolutions of the classification head, one per feature map; outputs (A_i · K) channels
    ordered anchor-major: channel a · K + k is class k of anchor a."""
    layers = [block[-1] for block in model.head.classification_head.module_list]  # type: ignore[union-attr]
    assert all(isinstance(layer, nn.Conv2d) for layer in layers)
    return layers


def init_class_prior(model: SSDLite, prior: float = defaults.CLASS_PRIOR, classes: list[int] | None = None) -> None:
    """Set the class-head biases so that sigmoid gives ``prior`` for foreground classes and 1 − prior for the
    background column, for all classes or only ``classes`` (indices)."""
    k = model.num_classes
    logit = math.log(prior / (1 - prior))
    with torch.no_grad():
        for conv in class_logit_layers(model):
            assert conv.bias is not None
            bias = conv.bias.view(-1, k)
            for c in range(k) if classes is None else classes:
                bias[:, c] = -logit if c == 0 else logit


def load_imagenet_backbone(model: SSDLite, path: str | Path) -> None:
    """Load torchvision's ImageNet ``mobilenet_v2`` checkpoint (a ``state_dict`` file) into ``model.backbone``.

    Its ``features.*`` tensors are our ``backbone.features``; the classifier is ignored. The checkpoint's batch norm
    statistics were gathered with eps 1e-5, ours uses 1e-3 (TF's); fine-tuning absorbs the difference.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"ImageNet checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many kinds (pickle, zip, unpickler refusals)
        raise WeightsError(f"{path} is not a readable PyTorch checkpoint: {exc}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]  # type: ignore[assignment]
    if not isinstance(state, dict):
        raise WeightsError(f"{path} does not hold a state dict")
    features = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    if not features:
        raise WeightsError(f"{path} has no 'features.*' tensors: not a torchvision MobileNetV2 checkpoint")
    check_state_dict(model.backbone.features, features, source=str(path))
    model.backbone.features.load_state_dict(features)


def transfer_weights(
    model: SSDLite, labels: tuple[str, ...], source: SSDLite, source_labels: tuple[str, ...]
) -> list[str]:
    """Copy ``source`` into ``model``; class-head outputs are copied for the labels both share (by name) and
    re-initialised (bias at the class prior) for the others. Returns the labels that were re-initialised."""
    target_state = model.state_dict()
    source_state = source.state_dict()
    logit_keys = set()
    for i, _ in enumerate(class_logit_layers(model)):
        logit_keys |= {
            f"head.classification_head.module_list.{i}.1.weight",
            f"head.classification_head.module_list.{i}.1.bias",
        }
    shared = {k: v for k, v in source_state.items() if k not in logit_keys}
    for key, value in shared.items():
        if key not in target_state or target_state[key].shape != value.shape:
            raise WeightsError(
                f"the initial weights do not fit this model at {key}: {tuple(value.shape)} vs "
                f"{tuple(target_state[key].shape) if key in target_state else 'absent'} (different width?)"
            )
    model.load_state_dict(shared, strict=False)
    source_index = {name: i for i, name in enumerate(source_labels)}
    fresh = [i for i, name in enumerate(labels) if name not in source_index]
    init_class_prior(model, classes=fresh)
    k_new, k_old = len(labels), len(source_labels)
    with torch.no_grad():
        for new_conv, old_conv in zip(class_logit_layers(model), class_logit_layers(source), strict=True):
            new_w = new_conv.weight.view(-1, k_new, *new_conv.weight.shape[1:])
            old_w = old_conv.weight.view(-1, k_old, *old_conv.weight.shape[1:])
            assert new_conv.bias is not None and old_conv.bias is not None
            new_b, old_b = new_conv.bias.view(-1, k_new), old_conv.bias.view(-1, k_old)
            for j, name in enumerate(labels):
                if name in source_index:
                    new_w[:, j] = old_w[:, source_index[name]]
                    new_b[:, j] = old_b[:, source_index[name]]
    return [labels[i] for i in fresh]


def build_training_model(
    config: TrainConfig, labels: tuple[str, ...], log: Callable[[str], None]
) -> tuple[SSDLite, ModelSpec]:
    """The model to train and its spec, initialised as ``config.init`` says."""
    source = f"detector train on {config.train_annotations}"
    if config.init == "weights":
        loaded = load_weights(resolve_weights(config.init_path))
        spec = dataclasses.replace(
            loaded.spec,
            name=config.name,
            num_classes=len(labels),
            labels=labels,
            image_size=config.image_size,
            source=f"{source}, initialised from {loaded.path.name} ({loaded.spec.name}, sha256 {loaded.digest[:12]})",
        )
        model = build_model(spec)
        fresh = transfer_weights(model, labels, loaded.model, loaded.spec.labels)
        if fresh:
            log(f"initialised from {loaded.path}; class head re-initialised for labels it lacks: " + ", ".join(fresh))
        else:
            log(f"initialised from {loaded.path} (same labels: nothing re-initialised)")
        return model, spec
    spec = ModelSpec(
        num_classes=len(labels),
        labels=labels,
        name=config.name,
        image_size=config.image_size,
        width_mult=config.width_mult,
        source=source,
    )
    model = build_model(spec)
    init_class_prior(model)
    if config.init == "imagenet":
        if config.init_path is None:
            raise DetectorError("--imagenet needs the path of torchvision's mobilenet_v2 ImageNet checkpoint")
        load_imagenet_backbone(model, config.init_path)
        log(f"backbone initialised from ImageNet checkpoint {config.init_path}")
    elif config.init != "scratch":
        raise DetectorError(f"unknown initialisation {config.init!r}")
    else:
        log("initialised from scratch")
    return model, spec
