"""torchrun / DDP support, kept out of the loop's way.

``torchrun --nproc_per_node=N script.py`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; ``setup()`` then joins the process group (NCCL on CUDA, gloo on
CPU) and ``fit`` runs the same loop on every rank with:

* the model wrapped in ``DistributedDataParallel`` (``wrap``);
* each rank reading its own shard through a ``DistributedSampler``;
* losses and metric accumulators summed over ranks (``all_sum`` / ``all_mean``);
* MLflow logging, checkpoints and progress bars on rank 0 only (``DistInfo.is_main``).

A process group created by the caller (e.g. a single-process gloo group in a test)
is used as is. Without a process group everything here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    enabled: bool = False  # a process group is initialised

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(backend: str | None = None) -> DistInfo:
    """Join the process group described by torchrun's env vars, if any; describe the current one."""
    env_world = int(os.environ.get("WORLD_SIZE", "1"))
    if env_world > 1 and dist.is_available() and not dist.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend or ("nccl" if torch.cuda.is_available() else "gloo"))
    if dist.is_available() and dist.is_initialized():
        return DistInfo(
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            enabled=True,
        )
    return DistInfo()


def wrap(model: torch.nn.Module, info: DistInfo, device: torch.device) -> torch.nn.Module:
    """``DistributedDataParallel(model)`` when a process group exists, else ``model``."""
    if not info.enabled:
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside ``DistributedDataParallel`` (``model`` itself when not wrapped)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over ranks (in place; returned for chaining)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_mean(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= dist.get_world_size()
    return tensor
