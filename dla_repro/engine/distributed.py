"""torchrun / DDP support, kept out of the loop's way.

``torchrun --nproc_per_node=N script.py`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; ``setup()`` then joins the process group (NCCL on CUDA, gloo on
CPU) and ``fit`` runs the same loop on every rank with:

* the model wrapped in ``DistributedDataParallel`` (``wrap``);
* each rank reading its own shard through a ``DistributedSampler``;
* losses and metric accumulators summed over ranks (``all_sum`` / ``all_mean``);
* MLflow logging, checkpoints and progress bars on rank 0 only (``DistInfo.is_main``);
* ``TrainConfig.batch_size`` the global batch: ``per_rank_batch`` samples per rank and update;
* optionally ``nn.SyncBatchNorm`` (``sync_batchnorm``, ``TrainConfig.sync_bn``);
* on resume, rank 0's checkpoint handed to every rank (``broadcast_object``), so
  the other ranks need no access to rank 0's checkpoint folder (another node).

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


def per_rank_batch(batch_size: int, info: DistInfo) -> int:
    """Samples each rank reads per update when ``batch_size`` is the global batch (``ValueError`` if uneven)."""
    if batch_size % info.world_size:
        raise ValueError(
            f"batch_size={batch_size} is the global batch and must split evenly over the {info.world_size} "
            f"processes (each would read {batch_size / info.world_size:g}); choose a multiple of {info.world_size}"
        )
    return batch_size // info.world_size


def sync_batchnorm(model: torch.nn.Module, info: DistInfo, device: torch.device) -> torch.nn.Module:
    """``model`` with its BatchNorms as ``nn.SyncBatchNorm`` when a process group exists (else unchanged).

    The conversion keeps parameters and buffers (and the ``state_dict`` keys), so
    checkpoints load either way. PyTorch's SyncBatchNorm trains on GPUs only: on a
    CPU process group this is a ``ValueError`` before anything trains.
    """
    if not info.enabled:
        return model
    if device.type == "cpu":
        raise ValueError("sync_bn=True: PyTorch's SyncBatchNorm needs GPUs (it refuses CPU tensors); "
                         "train on CPU with sync_bn=False (per-process BatchNorm statistics)")
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def broadcast_object(obj, info: DistInfo):
    """Rank 0's ``obj`` on every rank (picklable; under NCCL it travels through the current GPU)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
