"""Seeding and random-number state.

Every random choice of a run derives from ``TrainConfig.seed``:

* **init** — call ``seed_everything(seed)`` before building the model;
* **data order** — each epoch's shuffle is drawn from ``(seed, epoch)``
  (``DistributedSampler.set_epoch``), not from a generator that has run since the
  start, so epoch e has the same order whether or not the run was resumed;
* **augmentation, dropout** — at the start of epoch e the engine reseeds torch,
  numpy and ``random`` with ``epoch_seed(seed, e)``, and each DataLoader worker
  seeds numpy and ``random`` from its torch seed (``worker_init_fn``).

The full RNG state is also saved in checkpoints (``get_rng_state``) and restored on
resume; the per-epoch reseed makes the epochs independent of anything that draws
random numbers between them (MLflow, a notebook cell).
"""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed ``random``, numpy and torch (all devices).

    ``deterministic=True`` also asks torch for deterministic kernels (slower on GPU;
    CPU training is deterministic without it).
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 32-bit seed for epoch ``epoch`` of a run seeded with ``seed``."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def worker_init_fn(worker_id: int) -> None:
    """Seed numpy and ``random`` in a DataLoader worker from the seed torch gave it."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def get_rng_state() -> dict:
    """torch / CUDA / numpy / ``random`` states as tensors and lists (``weights_only``-safe)."""
    np_state = np.random.get_state(legacy=False)
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "key": np_state["state"]["key"].tolist(),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    npst = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": np.array(npst["key"], dtype=np.uint32), "pos": npst["pos"]},
            "has_gauss": npst["has_gauss"],
            "gauss": npst["gauss"],
        }
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
