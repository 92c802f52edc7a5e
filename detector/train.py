"""Training and fine-tuning on COCO-format data, in one process or many under ``torchrun``.

The recipe (defaults in :mod:`detector.defaults`): SSD augmentation from ``transforms.v2`` then the inference
preprocessing (:mod:`detector.data`); TF's argmax matcher, sigmoid cross-entropy with hard-negative mining and
smooth L1 (:mod:`detector.loss`); SGD with momentum (or RMSProp), linear warm-up then cosine decay, stepped per
batch; mixed precision on CUDA; DistributedDataParallel under ``torchrun`` with optional SyncBatchNorm.

Every epoch writes ``checkpoint.pt`` (model, optimizer, scheduler, gradient scaler, RNG states, epoch) and
``model.safetensors`` (our weights format, servable as is); ``--resume`` continues from the checkpoint and gives the
same weights as an uninterrupted run (each epoch's shuffling and augmentation are seeded from (seed, epoch, rank)).
Logs: a progress bar, ``train_log.csv`` (one row per epoch) and TensorBoard events under ``tensorboard/``.

The service never imports this module.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from detector import defaults
from detector.data import SkipReport, TrainingSet, collate_training, load_dataset
from detector.distributed import World, barrier, init_distributed, local_device, shutdown
from detector.errors import DetectorError, WeightsError
from detector.loss import ssd_loss
from detector.model import SSDLite
from detector.weights import ModelSpec, build_model, check_state_dict, load_weights, save_weights

CHECKPOINT_FILE = "checkpoint.pt"
WEIGHTS_FILE = "model.safetensors"
LOG_FILE = "train_log.csv"
OPTIMIZERS = ("sgd", "rmsprop")


@dataclass
class TrainConfig:
    """Everything a training run depends on; the CLI fills it, :mod:`detector.defaults` holds the defaults.

    ``init`` is "scratch", "imagenet" (``init_path``: torchvision's ImageNet MobileNetV2 checkpoint file) or
    "weights" (``init_path``: any of our weights files; the class head is re-initialised for labels it lacks).
    """

    train_images: Path
    train_annotations: Path
    out_dir: Path
    val_images: Path | None = None
    val_annotations: Path | None = None
    init: str = "scratch"
    init_path: Path | None = None
    image_size: int = defaults.IMAGE_SIZE
    width_mult: float = 1.0
    epochs: int = defaults.TRAIN_EPOCHS
    batch_size: int = defaults.TRAIN_BATCH_SIZE
    lr: float = defaults.TRAIN_LEARNING_RATE
    optimizer: str = defaults.TRAIN_OPTIMIZER
    momentum: float = defaults.TRAIN_MOMENTUM
    weight_decay: float = defaults.TRAIN_WEIGHT_DECAY
    warmup_steps: int = defaults.TRAIN_WARMUP_STEPS
    warmup_factor: float = defaults.TRAIN_WARMUP_FACTOR
    augmentation: str = defaults.TRAIN_AUGMENTATION
    workers: int = 2
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


def _log(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


def _quiet(message: str) -> None:
    pass


# --- initialisation --------------------------------------------------------------------------------------------------


def class_logit_layers(model: SSDLite) -> list[nn.Conv2d]:
    """The final 1×1 convolutions of the classification head, one per feature map; outputs (A_i · K) channels
    ordered anchor-major: channel a · K + k is class k of anchor a."""
    return [block[-1] for block in model.head.classification_head.module_list]


def init_class_prior(model: SSDLite, prior: float = defaults.CLASS_PRIOR, classes: list[int] | None = None) -> None:
    """Set the class-head biases so that sigmoid gives ``prior`` for foreground classes and 1 − prior for the
    background column, for all classes or only ``classes`` (indices)."""
    k = model.num_classes
    logit = math.log(prior / (1 - prior))
    with torch.no_grad():
        for conv in class_logit_layers(model):
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
            state = state[key]
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
            new_b, old_b = new_conv.bias.view(-1, k_new), old_conv.bias.view(-1, k_old)
            for j, name in enumerate(labels):
                if name in source_index:
                    new_w[:, j] = old_w[:, source_index[name]]
                    new_b[:, j] = old_b[:, source_index[name]]
    return [labels[i] for i in fresh]


def build_training_model(config: TrainConfig, labels: tuple[str, ...], log=_log) -> tuple[SSDLite, ModelSpec]:
    """The model to train and its spec, initialised as ``config.init`` says."""
    source = f"detector train on {config.train_annotations}"
    if config.init == "weights":
        if config.init_path is None:
            from detector.builtin import builtin_weights

            config.init_path = builtin_weights()
        loaded = load_weights(config.init_path)
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
            log(
                f"initialised from {config.init_path}; class head re-initialised for labels it lacks: "
                + ", ".join(fresh)
            )
        else:
            log(f"initialised from {config.init_path} (same labels: nothing re-initialised)")
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


# --- optimisation ----------------------------------------------------------------------------------------------------


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov off, as torchvision's reference) or RMSProp; weight decay on convolution weights only (TF's
    l2 regularizer covers conv kernels, not batch norm parameters or biases)."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            (decay if isinstance(module, nn.Conv2d) and name == "weight" else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    if config.optimizer == "rmsprop":
        # The TF config's decay 0.9 and momentum 0.9. TF puts epsilon inside the square root and starts the mean
        # square at 1 (its epsilon 1.0 relies on that); PyTorch's RMSprop does neither, so we keep its small eps.
        return torch.optim.RMSprop(groups, lr=config.lr, alpha=0.9, momentum=config.momentum, eps=1e-3)
    raise DetectorError(f"unknown optimizer {config.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, warmup_factor: float) -> float:
    """Learning-rate multiplier: linear from ``warmup_factor`` to 1 over ``warmup_steps``, then cosine to 0."""
    if step < warmup_steps:
        return warmup_factor + (1 - warmup_factor) * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# --- checkpoints -----------------------------------------------------------------------------------------------------


def _rng_state() -> dict[str, Any]:
    """Every generator's state as plain Python data (lists of ints), which pickles across ranks and into
    ``weights_only`` checkpoints alike."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (kind, keys.tolist(), position, has_gauss, cached),
        "torch": torch.get_rng_state().tolist(),
        "cuda": [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def _seed_epoch(seed: int, epoch: int, rank: int) -> torch.Generator:
    """Seed every generator from (seed, epoch, rank); returns a generator for the DataLoader's worker seeds."""
    value = (seed * 1_000_003 + epoch + 1) * 1009 + rank
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)
    return torch.Generator().manual_seed(value)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint intact."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors and plain data only: no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"{path} is not a readable training checkpoint: {exc}") from None


# --- the loop --------------------------------------------------------------------------------------------------------


class _Logger:
    """CSV rows and TensorBoard scalars, on rank 0 only."""

    def __init__(self, out_dir: Path, enabled: bool, append: bool) -> None:
        self.enabled = enabled
        self.path = out_dir / LOG_FILE
        self.writer = None
        if not enabled:
            return
        if not append and self.path.exists():
            self.path.unlink()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out_dir / "tensorboard"))
        except ImportError:  # tensorboard is a dependency, but a CSV is enough
            self.writer = None

    def row(self, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        new = not self.path.exists()
        with self.path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(values))
            if new:
                writer.writeheader()
            writer.writerow(values)
        if self.writer is not None:
            for key, value in values.items():
                if key != "epoch" and isinstance(value, (int, float)) and not math.isnan(value):
                    self.writer.add_scalar(key, value, values["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _evaluate(model, spec, device, val_set, config: TrainConfig, world: World) -> dict[str, float] | None:
    from detector.evaluate import evaluate
    from detector.inference import Detector

    was_training = model.training
    detector = Detector(model, spec, device=device)
    result = evaluate(
        detector,
        val_set,
        score_threshold=config.eval_score_threshold,
        batch_size=config.eval_batch_size,
        world=world,
        progress=config.progress,
        log=_log if world.is_main else _quiet,
    )
    model.train(was_training)
    if result is None:
        return None
    if config.progress:
        _log(result.summary.rstrip())
    return result.stats


def _reduce_mean(values: list[float], world: World, device: torch.device) -> list[float]:
    if not world.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor)
    return (tensor / world.size).tolist()


def train(config: TrainConfig) -> TrainResult:
    """Run training as ``config`` says; under ``torchrun`` every rank calls this. Returns rank 0's result."""
    world = init_distributed(config.device)
    try:
        return _train(config, world)
    finally:
        shutdown(world)


def _train(config: TrainConfig, world: World) -> TrainResult:
    device = local_device(config.device, world)
    log = _log if world.is_main else _quiet
    amp = device.type == "cuda" if config.amp is None else config.amp
    if amp and device.type != "cuda":
        raise DetectorError("--amp needs a CUDA device")
    if config.optimizer not in OPTIMIZERS:
        raise DetectorError(f"unknown optimizer {config.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = load_checkpoint(config.resume) if config.resume else None
    _seed_epoch(config.seed, -1, 0)  # the initialisation: the same weights on every rank and in every run

    train_data = load_dataset(config.train_images, config.train_annotations, log=log)
    val_data = None
    if config.val_annotations is not None:
        val_data = load_dataset(config.val_images, config.val_annotations, for_training=False, log=log)
    labels = train_data.labels()
    if checkpoint is not None:
        spec = ModelSpec.from_json(checkpoint["spec"])
        if spec.labels != labels:
            raise DetectorError(
                f"cannot resume: the checkpoint's labels {spec.labels[1:]} differ from the data set's {labels[1:]}"
            )
        model = build_model(spec)
        model.load_state_dict(checkpoint["model"])
        log(f"resuming from {config.resume} after epoch {checkpoint['epoch']}")
    else:
        model, spec = build_training_model(config, labels, log)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = config.bn_momentum
    model.to(device).train()
    net: nn.Module = model
    if world.distributed:
        if config.sync_bn and device.type == "cuda":
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        elif config.sync_bn:
            log("--sync-bn ignored: SyncBatchNorm needs CUDA")
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    anchors = model.anchors.to(device)

    dataset = TrainingSet(train_data, labels, spec.image_size, config.augmentation)
    sampler = torch.utils.data.DistributedSampler(
        dataset, num_replicas=world.size, rank=world.rank, shuffle=True, seed=config.seed, drop_last=False
    )
    per_rank = math.ceil(len(dataset) / world.size)
    steps_per_epoch = per_rank // config.batch_size
    if steps_per_epoch < 1:
        raise DetectorError(
            f"{len(dataset)} training images give {per_rank} per process: fewer than one batch of "
            f"{config.batch_size}; lower --batch-size"
        )
    total_steps = steps_per_epoch * config.epochs
    warmup = min(config.warmup_steps, steps_per_epoch)
    optimizer = make_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, total_steps, warmup, config.warmup_factor)
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    start_epoch, history = 0, []
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        _set_rng_state(checkpoint["rng"][world.rank] if world.rank < len(checkpoint["rng"]) else checkpoint["rng"][0])
        start_epoch, history = checkpoint["epoch"], list(checkpoint["history"])
    logger = _Logger(out_dir, world.is_main, append=checkpoint is not None)
    log(
        f"training {spec.num_classes - 1} classes ({', '.join(labels[1:])}) at {spec.image_size}×{spec.image_size}"
        f" on {device}{' with AMP' if amp else ''}, {world.size} process(es): {len(dataset)} images, "
        f"{steps_per_epoch} steps of {config.batch_size}×{world.size} per epoch, epochs {start_epoch + 1}.."
        f"{config.epochs}"
    )
    metrics: dict[str, float] = {}
    if config.eval_at_start and val_data is not None and start_epoch == 0:
        metrics = _evaluate(model, spec, device, val_data, config, world) or {}
        if world.is_main:
            row = {"epoch": 0, "lr": 0.0, "loss": math.nan, "classification": math.nan, "localization": math.nan}
            row.update({k: metrics[k] for k in ("AP", "AP50", "AP75")}, seconds=0.0)
            history.append(row)
            logger.row(row)
    read_notes = Counter()
    end_epoch = config.epochs if config.stop_after is None else min(config.epochs, start_epoch + config.stop_after)
    for epoch in range(start_epoch, end_epoch):
        started = time.monotonic()
        generator = _seed_epoch(config.seed, epoch, world.rank)
        sampler.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=config.batch_size,
            sampler=sampler,
            num_workers=config.workers,
            collate_fn=collate_training,
            drop_last=True,
            generator=generator,
            pin_memory=device.type == "cuda",
        )
        net.train()
        sums = [0.0, 0.0, 0.0]
        bar = tqdm(
            loader,
            total=steps_per_epoch,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            unit="batch",
            disable=not (config.progress and world.is_main),
            file=sys.stderr,
        )
        for step, (images, targets, notes) in enumerate(bar):
            if epoch == start_epoch:
                read_notes.update(notes)
            images = images.to(device, non_blocking=True)
            targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                box_codes, class_logits = net(images)
            parts = ssd_loss(box_codes, class_logits, targets, anchors)
            if not torch.isfinite(parts.total):
                raise DetectorError(
                    f"the loss became {parts.total.item()} at epoch {epoch + 1} step {step + 1}: "
                    "lower the learning rate (--lr) or lengthen the warm-up (--warmup-steps)"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(parts.total).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            sums[0] += parts.total.item()
            sums[1] += parts.classification.item()
            sums[2] += parts.localization.item()
            bar.set_postfix(loss=f"{sums[0] / (step + 1):.3f}", lr=f"{scheduler.get_last_lr()[0]:.4f}")
        bar.close()
        if epoch == start_epoch and read_notes:
            report = SkipReport()
            for note, count in read_notes.items():
                report.add(note, count=count)
            report.log(log, prefix="while reading training images: ")
        loss, cls_loss, loc_loss = _reduce_mean([s / steps_per_epoch for s in sums], world, device)
        row = {
            "epoch": epoch + 1,
            "lr": scheduler.get_last_lr()[0],
            "loss": loss,
            "classification": cls_loss,
            "localization": loc_loss,
        }
        evaluate_now = val_data is not None and ((epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs)
        if evaluate_now:
            metrics = _evaluate(model, spec, device, val_data, config, world) or {}
        row.update({k: metrics.get(k, math.nan) if evaluate_now else math.nan for k in ("AP", "AP50", "AP75")})
        row["seconds"] = round(time.monotonic() - started, 1)
        history.append(row)
        log(
            f"epoch {epoch + 1}/{config.epochs}: loss {loss:.4f} (classification {cls_loss:.4f}, "
            f"localization {loc_loss:.4f})"
            + (f", val mAP {row['AP']:.4f}, mAP@0.5 {row['AP50']:.4f}" if evaluate_now else "")
            + f", {row['seconds']} s"
        )
        logger.row(row)
        rng_states = _gather_rng(world)
        if world.is_main:
            save_weights(out_dir / WEIGHTS_FILE, model, spec)
            save_checkpoint(
                out_dir / CHECKPOINT_FILE,
                {
                    "epoch": epoch + 1,
                    "spec": spec.to_json(),
                    "config": config.to_dict(),
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "rng": rng_states,
                    "history": history,
                },
            )
        barrier(world)
    logger.close()
    if world.is_main:
        log(f"wrote {out_dir / WEIGHTS_FILE} and {out_dir / CHECKPOINT_FILE}")
    return TrainResult(out_dir / WEIGHTS_FILE, out_dir / CHECKPOINT_FILE, metrics, history)


def _gather_rng(world: World) -> list[dict[str, Any]]:
    from detector.distributed import gather_to_main

    return gather_to_main(_rng_state(), world) or []
