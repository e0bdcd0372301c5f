"""Sweeps: several configurations × several seeds, one MLflow run each, under one parent run.

    from dla_repro.engine import Trial, TrainConfig, sweep

    trials = [Trial(f"agg={m}", {"aggregation": m}, functools.partial(build, aggregation=m))
              for m in ("none", "ida", "hda", "full")]
    result = sweep("ablation_a", trials, data, TrainConfig(epochs=4), seeds=[0, 1])
    result.runs      # one row per (trial, seed): params, n_params, final metrics, run id
    result.history   # one row per (trial, seed, epoch)

Each (trial, seed) is ``seed_everything(seed)`` → ``trial.build()`` → ``fit``, so a
seed fixes init, data order and augmentation.  Checkpoints go to
``<checkpoints_dir()>/<sweep>/<trial>/seed<k>``; with ``config.resume`` a rerun
after a crash skips nothing it already logged and continues the unfinished run.
Knows nothing of any paper: the notebooks say what is swept.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from .. import tracking
from ..paths import checkpoints_dir
from .config import TrainConfig
from .loop import FitResult, fit
from .seed import seed_everything

__all__ = ["Trial", "SweepResult", "sweep", "count_params"]


@dataclass
class Trial:
    """One configuration of a sweep.

    ``name`` labels the run and the rows of the result (unique within a sweep);
    ``params`` are the swept values (logged to MLflow and copied into each result
    row); ``build`` returns a fresh model (called after seeding); ``config`` holds
    per-trial ``TrainConfig`` overrides; ``task`` overrides the sweep's task.
    """

    name: str
    params: Mapping[str, Any]
    build: Callable[[], torch.nn.Module]
    config: Mapping[str, Any] = field(default_factory=dict)
    task: Any = None


@dataclass
class SweepResult:
    runs: pd.DataFrame  # one row per (trial, seed)
    history: pd.DataFrame  # one row per (trial, seed, epoch)
    sweep_run_id: str | None
    fits: dict[tuple[str, int], FitResult]


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_") or "trial"


def sweep(
    name: str,
    trials: Sequence[Trial],
    data: Any,
    config: TrainConfig,
    seeds: Sequence[int] = (0,),
    task: Any = None,
    *,
    params: Mapping[str, Any] | None = None,
    extra: Callable[[torch.nn.Module, FitResult], Mapping[str, Any]] | None = None,
) -> SweepResult:
    """Train every trial with every seed under a parent MLflow run called ``name``.

    ``params`` are logged on the parent run (the shared settings). ``extra(model,
    fit_result)`` may add measurements to a result row (e.g. a per-class score
    computed after training). Raises ``ValueError`` on duplicate trial names or no seeds.
    """
    names = [t.name for t in trials]
    if len(set(names)) != len(names):
        raise ValueError(f"sweep {name!r}: trial names must be unique, got {names}")
    if not seeds:
        raise ValueError(f"sweep {name!r}: needs at least one seed")
    rows, histories, fits = [], [], {}
    shared = {"sweep": name, "seeds": list(seeds), "trials": names, **config.params(), **(params or {})}
    with tracking.sweep_run(name, shared) as parent:
        for trial in trials:
            for seed in seeds:
                cfg = dataclasses.replace(
                    config,
                    **{**trial.config, "seed": seed},
                    ckpt_dir=str(checkpoints_dir() / _slug(name) / _slug(trial.name) / f"seed{seed}"),
                )
                seed_everything(seed)
                model = trial.build()
                n_params = count_params(model)
                t0 = time.perf_counter()
                result = fit(
                    model, data, cfg, trial.task if trial.task is not None else task,
                    run_name=f"{trial.name} seed={seed}",
                    params={**trial.params, "sweep": name, "trial": trial.name, "n_params": n_params},
                )
                row = {"trial": trial.name, **trial.params, "seed": seed, "n_params": n_params,
                       "train_seconds": time.perf_counter() - t0, "best": result.best,
                       "best_epoch": result.best_epoch, "run_id": result.run_id,
                       **{k: v for k, v in result.final.items() if k != "epoch"}}
                if extra is not None:
                    row.update(extra(model, result))
                rows.append(row)
                hist = result.history.copy()
                hist.insert(0, "seed", seed)
                hist.insert(0, "trial", trial.name)
                histories.append(hist)
                fits[(trial.name, seed)] = result
        parent_id = parent.info.run_id if parent is not None else None
    return SweepResult(pd.DataFrame(rows), pd.concat(histories, ignore_index=True), parent_id, fits)
