"""A training run's settings (:class:`TrainConfig`) and outcome (:class:`TrainResult`); the choices are ``Literal``s.

The CLI builds a ``TrainConfig`` from its parsed arguments by field name; :mod:`detector.defaults` holds the recipe.
Standard library only: the CLI reads the choices from here without importing torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from detector import defaults

# "scratch"; "imagenet": torchvision's ImageNet MobileNetV2 checkpoint file; "weights": any of our weights files or a
# built-in model (the class head is re-initialised for the labels it lacks).
InitFrom = Literal["scratch", "imagenet", "weights"]
INIT_FROM: tuple[InitFrom, ...] = get_args(InitFrom)
OptimizerName = Literal["sgd", "rmsprop"]
OPTIMIZERS: tuple[OptimizerName, ...] = get_args(OptimizerName)
# "ssd": photometric + zoom out + IoU crop + flip; "ssdlite": IoU crop + flip; "flip"; "none" (training.pipeline).
Augmentation = Literal["ssd", "ssdlite", "flip", "none"]
AUGMENTATIONS: tuple[Augmentation, ...] = get_args(Augmentation)


@dataclass
class TrainConfig:
    """Everything a training run depends on; the CLI fills it, :mod:`detector.defaults` holds the defaults.

    ``init`` is "scratch", "imagenet" (``init_path``: torchvision's ImageNet MobileNetV2 checkpoint file) or
    "weights" (``init_path``: any of our weights files or a built-in model's name; the class head is re-initialised
    for labels it lacks).
    """

    train_images: Path
    train_annotations: Path
    out_dir: Path
    val_images: Path | None = None
    val_annotations: Path | None = None
    init: InitFrom = "scratch"
    init_path: Path | str | None = None  # a file, or a built-in model's name for init="weights" (None: the default)
    image_size: int = defaults.IMAGE_SIZE
    width_mult: float = 1.0
    epochs: int = defaults.TRAIN_EPOCHS
    batch_size: int = defaults.TRAIN_BATCH_SIZE
    lr: float = defaults.TRAIN_LEARNING_RATE
    optimizer: OptimizerName = defaults.TRAIN_OPTIMIZER
    momentum: float = defaults.TRAIN_MOMENTUM
    weight_decay: float = defaults.TRAIN_WEIGHT_DECAY
    warmup_steps: int = defaults.TRAIN_WARMUP_STEPS
    warmup_factor: float = defaults.TRAIN_WARMUP_FACTOR
    augmentation: Augmentation = defaults.TRAIN_AUGMENTATION
    workers: int = defaults.DATA_WORKERS
    device: str = "cpu"
    amp: bool | None = None  # None: on for CUDA
    sync_bn: bool = False
    eval_every: int = defaults.TRAIN_EVAL_EVERY
    bn_momentum: float = defaults.TRAIN_BATCH_NORM_MOMENTUM
    eval_at_start: bool = False
    eval_batch_size: int = defaults.EVAL_BATCH_SIZE
    eval_score_threshold: float = defaults.EVAL_SCORE_THRESHOLD
    seed: int = 0
    resume: Path | None = None
    stop_after: int | None = None  # end this run after that many epochs (time-sliced jobs); --resume continues
    name: str = "ssdlite-mobilenet-v2"
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}


@dataclass
class TrainResult:
    """Where the run left its files and the last evaluation's numbers (rank 0; empty elsewhere)."""

    weights: Path
    checkpoint: Path
    metrics: dict[str, float]
    history: list[dict[str, Any]]
