"""Checkpoints that resume exactly: model, optimizer, scheduler, scaler, every RNG's state, epoch and history.

Each epoch's shuffling and augmentation are seeded from (seed, epoch, rank), and the generators' states travel in
the checkpoint, so a resumed run gives the same weights as an uninterrupted one. Checkpoints hold tensors and plain
Python data only and load with ``weights_only=True``: reading one runs no code.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detector.cache import atomic_path
from detector.errors import WeightsError

CHECKPOINT_FILE = "checkpoint.pt"


def rng_state() -> dict[str, Any]:
    """Every generator's state as plain Python data (lists of ints), which pickles across ranks and into
    ``weights_only`` checkpoints alike."""
    kind, keys, position, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "python": random.getstate(),
        "numpy": (kind, np.asarray(keys).tolist(), position, has_gauss, cached),
        "torch": torch.get_rng_state().tolist(),
        "cuda": [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def seed_epoch(seed: int, epoch: int, rank: int) -> torch.Generator:
    """Seed every generator from (seed, epoch, rank); returns a generator for the DataLoader's worker seeds."""
    value = (seed * 1_000_003 + epoch + 1) * 1009 + rank
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)
    return torch.Generator().manual_seed(value)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint intact."""
    with atomic_path(path) as staged:
        torch.save(state, staged)


# What a checkpoint of ``detector train`` holds, and the type of each entry.
CHECKPOINT_FIELDS: dict[str, type] = {
    "epoch": int,
    "spec": str,
    "config": dict,
    "model": dict,
    "optimizer": dict,
    "scheduler": dict,
    "scaler": dict,
    "rng": list,
    "history": list,
}


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors and plain data only: no code runs).

    Raises:
        WeightsError: the file is missing or unreadable, or holds something else than a checkpoint of
            ``detector train`` (a bare state dict, another program's checkpoint), naming what it lacks.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"{path} is not a readable training checkpoint: {exc}") from None
    if isinstance(state, dict) and state and all(isinstance(value, torch.Tensor) for value in state.values()):
        raise WeightsError(
            f"{path}: a bare state dict (tensors only), not a checkpoint of `detector train`; --resume continues "
            f"from the {CHECKPOINT_FILE} a training run writes in its --out folder"
        )
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: not a checkpoint of `detector train` (it holds a {type(state).__name__})")
    missing = [name for name in CHECKPOINT_FIELDS if name not in state]
    if missing:
        raise WeightsError(f"{path}: not a checkpoint of `detector train`: no {', '.join(map(repr, missing))}")
    for name, kind in CHECKPOINT_FIELDS.items():
        if not isinstance(state[name], kind) or isinstance(state[name], bool):
            raise WeightsError(
                f"{path}: checkpoint entry {name!r} is a {type(state[name]).__name__}, not a {kind.__name__}"
            )
    if not all(isinstance(value, torch.Tensor) for value in state["model"].values()) or not state["rng"]:
        raise WeightsError(f"{path}: checkpoint entries 'model' and 'rng' are not a state dict and RNG states")
    return state
