"""What ``fit`` trains on: a train and a validation dataset, and how they become loaders.

``data`` may be a ``DataBundle``, a ``(train, val)`` pair, or any object with
``train`` / ``val`` attributes. Each split is a ``Dataset`` yielding
``(input, target)`` pairs, or a ready ``DataLoader`` (used as given: its order and
seeding are then the caller's business, and exact resume is not guaranteed).
``val`` may be ``None`` (no evaluation; ``best.pt`` is then chosen by a train metric).

If the bundle — or else the train dataset — has ``name`` and ``digest`` attributes
(and optionally ``source``), ``fit`` records it as the run's dataset in MLflow.

Datasets get a ``DistributedSampler`` always: with one replica it is simply a
shuffle drawn from ``(seed, epoch)``, which is what exact resume needs; under DDP
it also gives each rank its shard (the validation shard is padded with a few
repeated samples to equal length, as DistributedSampler does). ``cfg.batch_size``
is the global batch: each of N ranks reads ``batch_size / N`` training samples
(``distributed.per_rank_batch``; evaluation rounds up). The N shards of one update's batches then hold
exactly the samples of that update's batch in one process (rank r takes every
N-th sample of the same seeded permutation), so with a training set that N
divides, N ranks see the same batches as one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .config import TrainConfig
from .distributed import DistInfo, per_rank_batch
from .seed import epoch_seed, worker_init_fn


@dataclass
class DataBundle:
    train: Dataset | DataLoader
    val: Dataset | DataLoader | None = None
    name: str | None = None
    digest: str | None = None
    source: str | None = None


def as_bundle(data: Any) -> DataBundle:
    if isinstance(data, DataBundle):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return DataBundle(*data)
    if hasattr(data, "train"):
        return DataBundle(
            data.train,
            getattr(data, "val", None),
            getattr(data, "name", None),
            getattr(data, "digest", None),
            getattr(data, "source", None),
        )
    raise TypeError(
        f"fit(data=...) expects a DataBundle, a (train, val) pair or an object with .train/.val; "
        f"got {type(data).__name__}"
    )


def dataset_identity(bundle: DataBundle) -> tuple[str, str, str] | None:
    """``(name, digest, source)`` of the data, if the bundle or its train split declares them."""
    for obj in (bundle, bundle.train):
        name, digest = getattr(obj, "name", None), getattr(obj, "digest", None)
        if name and digest:
            return str(name), str(digest), str(getattr(obj, "source", None) or name)
    return None


def make_loader(
    data: Dataset | DataLoader | None, cfg: TrainConfig, dist: DistInfo, device: torch.device, train: bool
) -> DataLoader | None:
    if data is None or isinstance(data, DataLoader):
        return data
    sampler = DistributedSampler(
        data, num_replicas=dist.world_size, rank=dist.rank, shuffle=train, seed=cfg.seed
    )
    return DataLoader(
        data,
        # evaluation: any split will do (no update depends on it), so no error for an uneven one
        batch_size=per_rank_batch(cfg.batch_size, dist) if train else -(-cfg.batch_size // dist.world_size),
        sampler=sampler,
        drop_last=train and cfg.drop_last,
        num_workers=cfg.num_workers,
        worker_init_fn=worker_init_fn,
        generator=torch.Generator(),  # reseeded each epoch: workers' torch seeds come from it
        pin_memory=device.type == "cuda",
    )


def set_epoch(loader: DataLoader | None, seed: int, epoch: int) -> None:
    """Make ``loader``'s order and worker seeds those of epoch ``epoch``; a dataset with a
    ``set_epoch(epoch, seed)`` method (fresh samples per epoch, ``data.synthetic.SyntheticStream``)
    is moved to that epoch of the run's stream too."""
    if loader is None:
        return
    dataset_set_epoch = getattr(loader.dataset, "set_epoch", None)
    if callable(dataset_set_epoch):
        dataset_set_epoch(epoch, seed)
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
    if loader.generator is not None:
        loader.generator.manual_seed(epoch_seed(seed, epoch))
