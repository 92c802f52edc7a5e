"""Running under ``torchrun``: process group set-up, rank queries and gathering Python objects on rank 0.

``torchrun --nproc_per_node N`` starts N copies of the command with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT`` set; :func:`init_distributed` joins them with NCCL on GPUs and gloo on CPUs. A
plain run (no ``WORLD_SIZE``, or 1) is a world of one and needs no process group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place among its peers."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init_distributed(device: str | torch.device = "cpu") -> World:
    """Join the ``torchrun`` process group if there is one (idempotent); returns this process's :class:`World`.

    On CUDA each process uses GPU ``LOCAL_RANK``; the caller should place its model on :func:`local_device`.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        cuda = torch.device(device).type == "cuda"
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return World(rank=rank, size=size, local_rank=local_rank)


def local_device(device: str | torch.device, world: World) -> torch.device:
    """``cuda:LOCAL_RANK`` for a CUDA run under torchrun, else ``device`` as given."""
    device = torch.device(device)
    if device.type == "cuda" and world.distributed:
        return torch.device("cuda", world.local_rank)
    return device


def gather_to_main(obj: Any, world: World) -> list[Any] | None:
    """Every rank's ``obj`` in rank order on rank 0, None on the others (a world of one gets ``[obj]``)."""
    if not world.distributed:
        return [obj]
    gathered: list[Any] | None = [None] * world.size if world.is_main else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


def broadcast_from_main(obj: Any, world: World) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(world: World) -> None:
    """Wait for every rank (no-op in a world of one)."""
    if world.distributed:
        dist.barrier()


def shutdown(world: World) -> None:
    """Leave the process group."""
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
