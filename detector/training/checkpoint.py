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


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors and plain data only: no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"{path} is not a readable training checkpoint: {exc}") from None
