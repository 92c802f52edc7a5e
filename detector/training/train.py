"""Training and fine-tuning on COCO-format data, in one process or many under ``torchrun``.

The recipe (defaults in :mod:`detector.defaults`): SSD augmentation from ``transforms.v2`` then the inference
preprocessing (:mod:`detector.training.pipeline`); TF's argmax matcher, sigmoid cross-entropy with hard-negative
mining and smooth L1 (:mod:`detector.training.loss`); SGD with momentum (or RMSProp), linear warm-up then cosine
decay, stepped per batch; mixed precision on CUDA; DistributedDataParallel under ``torchrun`` with optional
SyncBatchNorm. The loop is split as torchvision's detection references split theirs: :func:`train_one_epoch`,
evaluation on the val split (:func:`evaluate_model`), and checkpointing (:func:`save_training_state`).

Every epoch writes ``checkpoint.pt`` (:mod:`detector.training.checkpoint`) and ``model.safetensors`` (our weights
format, servable as is); ``--resume`` continues from the checkpoint and gives the same weights as an uninterrupted
run. Logs: a progress bar, ``train_log.csv`` (one row per epoch) and TensorBoard events under ``tensorboard/``.
"""

from __future__ import annotations

import csv
import math
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from detector.errors import DetectorError, WeightsError
from detector.inference import Detector
from detector.model import SSDLite
from detector.spec import ModelSpec
from detector.training.checkpoint import (
    CHECKPOINT_FILE,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_epoch,
    set_rng_state,
)
from detector.training.coco import CocoDataset, SkipReport, load_dataset
from detector.training.config import OPTIMIZERS, TrainConfig, TrainResult
from detector.training.distributed import World, barrier, gather_to_main, init_distributed, local_device, shutdown
from detector.training.evaluate import evaluate
from detector.training.initialization import build_training_model
from detector.training.loss import ssd_loss
from detector.training.pipeline import TrainingSet, collate_training, raise_unreadable
from detector.weights import build_model, check_state_dict, save_weights

WEIGHTS_FILE = "model.safetensors"
LOG_FILE = "train_log.csv"
METRIC_NAMES = ("AP", "AP50", "AP75")


def _log(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


def _quiet(message: str) -> None:
    pass


# --- optimisation ----------------------------------------------------------------------------------------------------


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov off, as torchvision's reference) or RMSProp; weight decay on convolution weights only (TF's
    l2 regularizer covers conv kernels, not batch norm parameters or biases)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
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


# --- logging ---------------------------------------------------------------------------------------------------------


class _Logger:
    """CSV rows and TensorBoard scalars, on rank 0 only."""

    def __init__(self, out_dir: Path, enabled: bool, append: bool) -> None:
        self.enabled = enabled
        self.path = out_dir / LOG_FILE
        self.writer: Any = None
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


# --- one run ---------------------------------------------------------------------------------------------------------


@dataclass
class TrainingRun:
    """Everything the epoch loop works with, set up once by :func:`setup_run`."""

    config: TrainConfig
    world: World
    device: torch.device
    amp: bool
    log: Callable[[str], None]
    model: SSDLite  # the module whose weights are saved
    net: nn.Module  # what the loop calls: ``model``, or its DistributedDataParallel wrapper
    spec: ModelSpec
    dataset: TrainingSet
    sampler: torch.utils.data.DistributedSampler[int]
    steps_per_epoch: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    val_data: CocoDataset | None
    start_epoch: int
    history: list[dict[str, Any]]

    @property
    def out_dir(self) -> Path:
        return Path(self.config.out_dir)


def setup_run(config: TrainConfig, world: World) -> TrainingRun:
    """Read the data, build (or resume) the model, the optimizer and its schedule, for this rank."""
    device = local_device(config.device, world)
    log = _log if world.is_main else _quiet
    amp = device.type == "cuda" if config.amp is None else config.amp
    if amp and device.type != "cuda":
        raise DetectorError("--amp needs a CUDA device")
    if config.optimizer not in OPTIMIZERS:
        raise DetectorError(f"unknown optimizer {config.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
    Path(config.out_dir).mkdir(parents=True, exist_ok=True)
    checkpoint = load_checkpoint(config.resume) if config.resume else None
    seed_epoch(config.seed, -1, 0)  # the initialisation: the same weights on every rank and in every run

    train_data = load_dataset(config.train_images, config.train_annotations, log=log)
    val_data = None
    if config.val_annotations is not None:
        if config.val_images is None:
            raise DetectorError("--val-images and --val-annotations go together")
        val_data = load_dataset(config.val_images, config.val_annotations, for_training=False, log=log)
    labels = train_data.labels()
    if checkpoint is not None:
        try:
            spec = ModelSpec.from_json(checkpoint["spec"])
        except WeightsError as exc:
            raise WeightsError(f"{config.resume}: {exc}") from None
        if spec.labels != labels:
            raise DetectorError(
                f"cannot resume: the checkpoint's labels {spec.labels[1:]} differ from the data set's {labels[1:]}"
            )
        model = build_model(spec)
        check_state_dict(model, checkpoint["model"], source=str(config.resume))
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

    dataset = TrainingSet(train_data, labels, spec.image_size, config.augmentation)
    sampler: torch.utils.data.DistributedSampler[int] = torch.utils.data.DistributedSampler(
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
        try:
            optimizer.load_state_dict(checkpoint["optimizer"])
            scheduler.load_state_dict(checkpoint["scheduler"])
            scaler.load_state_dict(checkpoint["scaler"])
            rng = checkpoint["rng"]
            set_rng_state(rng[world.rank] if world.rank < len(rng) else rng[0])
        except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as exc:
            # torch's load_state_dict methods refuse a state of another optimizer or shape in these words.
            raise WeightsError(
                f"{config.resume}: cannot resume from this checkpoint (another --optimizer, or damaged): {exc}"
            ) from None
        start_epoch, history = checkpoint["epoch"], list(checkpoint["history"])
    return TrainingRun(
        config=config,
        world=world,
        device=device,
        amp=amp,
        log=log,
        model=model,
        net=net,
        spec=spec,
        dataset=dataset,
        sampler=sampler,
        steps_per_epoch=steps_per_epoch,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        val_data=val_data,
        start_epoch=start_epoch,
        history=history,
    )


def train_one_epoch(run: TrainingRun, epoch: int) -> tuple[list[float], Counter]:
    """One pass over this rank's share of the training set; returns the mean (total, classification,
    localization) losses over all ranks and what reading the images took (notes counted on this rank)."""
    config, device = run.config, run.device
    generator = seed_epoch(config.seed, epoch, run.world.rank)
    run.sampler.set_epoch(epoch)
    loader = torch.utils.data.DataLoader(
        run.dataset,
        batch_size=config.batch_size,
        sampler=run.sampler,
        num_workers=config.workers,
        collate_fn=collate_training,
        drop_last=True,
        generator=generator,
        pin_memory=device.type == "cuda",
    )
    run.net.train()
    sums = [0.0, 0.0, 0.0]
    read_notes: Counter = Counter()
    anchors = run.model.anchors.to(device)
    bar = tqdm(
        raise_unreadable(loader),
        total=run.steps_per_epoch,
        desc=f"epoch {epoch + 1}/{config.epochs}",
        unit="batch",
        disable=not (config.progress and run.world.is_main),
        file=sys.stderr,
    )
    for step, (images, targets, notes) in enumerate(bar):
        read_notes.update(notes)
        images = images.to(device, non_blocking=True)
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        with torch.autocast(device.type, dtype=torch.float16, enabled=run.amp):
            box_codes, class_logits = run.net(images)
        parts = ssd_loss(box_codes, class_logits, targets, anchors)
        if not torch.isfinite(parts.total):
            raise DetectorError(
                f"the loss became {parts.total.item()} at epoch {epoch + 1} step {step + 1}: "
                "lower the learning rate (--lr) or lengthen the warm-up (--warmup-steps)"
            )
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(parts.total).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.scheduler.step()
        sums[0] += parts.total.item()
        sums[1] += parts.classification.item()
        sums[2] += parts.localization.item()
        bar.set_postfix(loss=f"{sums[0] / (step + 1):.3f}", lr=f"{run.scheduler.get_last_lr()[0]:.4f}")
    bar.close()
    return _reduce_mean([s / run.steps_per_epoch for s in sums], run.world, device), read_notes


def evaluate_model(run: TrainingRun) -> dict[str, float]:
    """COCO metrics of the current weights on the val split (all ranks take part; the numbers on rank 0)."""
    assert run.val_data is not None
    model, config = run.model, run.config
    was_training = model.training
    result = evaluate(
        Detector.from_model(model, run.spec, device=str(run.device)),
        run.val_data,
        score_threshold=config.eval_score_threshold,
        batch_size=config.eval_batch_size,
        world=run.world,
        progress=config.progress,
        log=run.log,
    )
    model.train(was_training)
    if result is None:
        return {}
    if config.progress:
        run.log(result.summary.rstrip())
    return result.stats


def save_training_state(run: TrainingRun, epoch: int) -> None:
    """``model.safetensors`` and ``checkpoint.pt`` after ``epoch`` (0-based) on rank 0; every rank hands over its
    RNG states and waits."""
    rng_states = gather_to_main(rng_state(), run.world) or []
    if run.world.is_main:
        save_weights(run.out_dir / WEIGHTS_FILE, run.model, run.spec)
        save_checkpoint(
            run.out_dir / CHECKPOINT_FILE,
            {
                "epoch": epoch + 1,
                "spec": run.spec.to_json(),
                "config": run.config.to_dict(),
                "model": run.model.state_dict(),
                "optimizer": run.optimizer.state_dict(),
                "scheduler": run.scheduler.state_dict(),
                "scaler": run.scaler.state_dict(),
                "rng": rng_states,
                "history": run.history,
            },
        )
    barrier(run.world)


def _reduce_mean(values: list[float], world: World, device: torch.device) -> list[float]:
    if not world.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor)
    return (tensor / world.size).tolist()


def _log_read_notes(notes: Counter, log: Callable[[str], None]) -> None:
    report = SkipReport()
    for note, count in notes.items():
        report.add(note, count=count)
    report.log(log, prefix="while reading training images: ")


def train(config: TrainConfig) -> TrainResult:
    """Run training as ``config`` says; under ``torchrun`` every rank calls this. Returns rank 0's result."""
    world = init_distributed(config.device)
    try:
        return _train(setup_run(config, world))
    finally:
        shutdown(world)


def _train(run: TrainingRun) -> TrainResult:
    config, log = run.config, run.log
    logger = _Logger(run.out_dir, run.world.is_main, append=run.start_epoch > 0)
    log(
        f"training {run.spec.num_classes - 1} classes ({', '.join(run.spec.labels[1:])}) at "
        f"{run.spec.image_size}×{run.spec.image_size} on {run.device}{' with AMP' if run.amp else ''}, "
        f"{run.world.size} process(es): {len(run.dataset)} images, {run.steps_per_epoch} steps of "
        f"{config.batch_size}×{run.world.size} per epoch, epochs {run.start_epoch + 1}..{config.epochs}"
    )
    metrics: dict[str, float] = {}
    if config.eval_at_start and run.val_data is not None and run.start_epoch == 0:
        metrics = evaluate_model(run)
        if run.world.is_main:
            first: dict[str, Any] = {"epoch": 0, "lr": 0.0, "loss": math.nan, "classification": math.nan}
            first.update(localization=math.nan, **{k: metrics[k] for k in METRIC_NAMES}, seconds=0.0)
            run.history.append(first)
            logger.row(first)
    end_epoch = config.epochs if config.stop_after is None else min(config.epochs, run.start_epoch + config.stop_after)
    for epoch in range(run.start_epoch, end_epoch):
        started = time.monotonic()
        (loss, cls_loss, loc_loss), notes = train_one_epoch(run, epoch)
        if epoch == run.start_epoch and notes:
            _log_read_notes(notes, log)
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "lr": float(run.scheduler.get_last_lr()[0]),
            "loss": loss,
            "classification": cls_loss,
            "localization": loc_loss,
        }
        evaluate_now = run.val_data is not None and ((epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs)
        if evaluate_now:
            metrics = evaluate_model(run)
        row.update({k: metrics.get(k, math.nan) if evaluate_now else math.nan for k in METRIC_NAMES})
        row["seconds"] = round(time.monotonic() - started, 1)
        run.history.append(row)
        log(
            f"epoch {epoch + 1}/{config.epochs}: loss {loss:.4f} (classification {cls_loss:.4f}, "
            f"localization {loc_loss:.4f})"
            + (f", val mAP {row['AP']:.4f}, mAP@0.5 {row['AP50']:.4f}" if evaluate_now else "")
            + f", {row['seconds']} s"
        )
        logger.row(row)
        save_training_state(run, epoch)
    logger.close()
    if run.world.is_main:
        log(f"wrote {run.out_dir / WEIGHTS_FILE} and {run.out_dir / CHECKPOINT_FILE}")
    return TrainResult(run.out_dir / WEIGHTS_FILE, run.out_dir / CHECKPOINT_FILE, metrics, run.history)
