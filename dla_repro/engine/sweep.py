"""Sweeps: several configurations × several seeds, one MLflow run each, under one parent run.

    from dla_repro.engine import Trial, TrainConfig, sweep

    trials = [Trial(f"agg={m}", {"aggregation": m}, functools.partial(build, aggregation=m))
              for m in ("none", "ida", "hda", "full")]
    result = sweep("ablation_a", trials, data, TrainConfig(epochs=4), seeds=[0, 1],
                   evaluate=lambda model, fit: {"miou_small": ..., "curve": pr_curve_dataframe})
    result.runs                          # one row per (trial, seed): params, n_params, final metrics, run id, scalars
    result.history                       # one row per (trial, seed, epoch)
    result.artifacts[("agg=ida", 0)]     # {"curve": DataFrame}: what ``evaluate`` returned besides scalars
    result.values("agg=ida", "val_miou") # [seed 0's, seed 1's]

Each (trial, seed) is ``seed_everything(seed)`` → ``trial.build()`` → ``fit`` →
``evaluate(model, fit_result)``, so a seed fixes init, data order and
augmentation. Checkpoints go to ``<paths.work_dir()>/<sweep>/<trial>/seed<k>``
(under a notebook execution, that execution's own folder). With ``config.resume``
a rerun after a crash reopens the same sweep run, reuses every training that
finished (not retrained), continues the unfinished one from its last checkpoint
in its own MLflow run, and logs nothing twice. Knows nothing of any paper: the notebooks say what
is swept and measured.
"""

from __future__ import annotations

import contextlib
import dataclasses
import numbers
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from .. import tracking
from ..paths import work_dir
from . import distributed, progress
from .config import TrainConfig
from .executors import import_ray, map_on_ray, resolve_executor, worker_environ
from .loop import FitResult, fit
from .seed import seed_everything
from .workers import map_in_workers, tracking_environ

__all__ = ["Trial", "SweepResult", "sweep", "count_params", "split_measurements", "resolve_workers"]

EvaluateHook = Callable[[torch.nn.Module, FitResult], Mapping[str, Any]]


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
    # (trial, seed) -> the non-scalar values the evaluate hook returned (DataFrames, arrays, …)
    artifacts: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)

    def values(self, trial: str, metric: str) -> list[Any]:
        """``metric`` of every seed of ``trial``, in increasing seed order (a column of ``runs``)."""
        rows = self.runs[self.runs["trial"] == trial]
        if rows.empty:
            raise KeyError(f"no trial {trial!r} in this sweep (trials: {list(dict.fromkeys(self.runs['trial']))})")
        if metric not in rows:
            raise KeyError(f"no column {metric!r} in the sweep's runs (columns: {list(self.runs.columns)})")
        return rows.sort_values("seed")[metric].tolist()


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_") or "trial"


def _scalar(value: Any) -> Any:
    """``value`` as a plain Python scalar if it is one (numbers, 0-d arrays/tensors, strings, None), else ``_NOT``."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return value.item() if value.ndim == 0 else _NOT
    if value is None or isinstance(value, (str, numbers.Number, np.bool_)):
        return value.item() if isinstance(value, np.generic) else value
    return _NOT


_NOT = object()


def split_measurements(values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(scalars, artifacts)`` of what an evaluate hook returned.

    Scalars are numbers, booleans, strings, ``None`` and 0-d arrays / tensors
    (made plain Python values); everything else (DataFrames, arrays, figures, …)
    is an artifact.
    """
    scalars, artifacts = {}, {}
    for key, value in values.items():
        plain = _scalar(value)
        if plain is _NOT:
            artifacts[key] = value
        else:
            scalars[key] = plain
    return scalars, artifacts


def _log_measurements(run_id: str | None, step: int, scalars: Mapping[str, Any], artifacts: Mapping[str, Any]) -> None:
    """Numbers as metrics of the training run (at its last epoch), DataFrames as CSV artifacts."""
    if run_id is None:
        return
    numeric = {k: float(v) for k, v in scalars.items() if isinstance(v, numbers.Number)}
    if numeric:
        tracking.log_metrics(run_id, numeric, step=step)
    for key, value in artifacts.items():
        if isinstance(value, pd.DataFrame):
            tracking.log_table_artifact(run_id, value, _slug(key), artifact_path="evaluate")


def sweep(
    name: str,
    trials: Sequence[Trial],
    data: Any,
    config: TrainConfig,
    seeds: Sequence[int] = (0,),
    task: Any = None,
    *,
    params: Mapping[str, Any] | None = None,
    evaluate: EvaluateHook | None = None,
    extra: EvaluateHook | None = None,
    workers: int | None = None,
    executor: str | None = None,
) -> SweepResult:
    """Train every trial with every seed under a parent MLflow run called ``name``.

    ``params`` are logged on the parent run (the shared settings).
    ``evaluate(model, fit_result) -> dict`` measures each trained model (in the
    state training left it): scalar values join the result row and are logged as
    metrics of that training's MLflow run (at its last epoch's step); other values
    are kept in ``result.artifacts[(trial, seed)]``, and DataFrames among them are
    also attached to the run as ``evaluate/<key>.csv``. ``extra`` is the former
    name of ``evaluate`` (same behaviour; not both). Raises ``ValueError`` on
    duplicate trial names, no seeds, or both hooks.

    ``workers`` (default: ``config.sweep_workers``) trainings run at once (0: one
    per CPU core, one on a GPU): each in
    its own spawned process with one thread, so ``build``, ``task``, ``data`` and
    ``evaluate`` must pickle (module-level functions, ``functools.partial``).  The
    result is the same rows in the same order as a serial sweep, and a training
    gives the same numbers in any worker (one thread each); a serial sweep uses
    this process's threads, so its numbers may differ in the last bits.  A failure
    or Ctrl-C in any training stops them all.

    ``executor`` (default: ``config.sweep_executor``, else ``$DLA_REPRO_EXECUTOR``, else ``"local"``):
    ``"local"`` is the above; ``"ray"`` makes every (trial, seed) a Ray task with one CPU (and on ``cuda`` one
    GPU, or 1/``workers`` of one when ``workers`` > 1 share it) and one thread, on the cluster of ``$DLA_REPRO_RAY_ADDRESS`` or on a local Ray instance with
    ``workers`` CPUs -- the same rows, numbers and MLflow runs as the local workers give
    (:mod:`dla_repro.engine.executors`).

    Under ``torchrun`` (several ranks) the sweep is always serial and local (no
    worker processes, no Ray): every rank trains the same (trial, seed) together,
    and only rank 0 opens the sweep's MLflow run.
    """
    names = [t.name for t in trials]
    if len(set(names)) != len(names):
        raise ValueError(f"sweep {name!r}: trial names must be unique, got {names}")
    if not seeds:
        raise ValueError(f"sweep {name!r}: needs at least one seed")
    if evaluate is not None and extra is not None:
        raise ValueError(f"sweep {name!r}: pass evaluate= (or its old name extra=), not both")
    workers = config.sweep_workers if workers is None else workers
    if workers < 0:
        raise ValueError(f"sweep {name!r}: workers={workers}: expected 0 (one per CPU core) or a positive count")
    evaluate = evaluate or extra
    dist = distributed.setup()  # under torchrun: train each (trial, seed) together, here; rank 0 records
    executor = "local" if dist.enabled else resolve_executor(executor or config.sweep_executor or None)
    if executor == "ray":
        import_ray()  # missing: say so before any run is opened
    jobs = [(trial, seed) for trial in trials for seed in seeds]
    gpu_share = 1.0 / workers if workers > 1 else 1.0  # several trainings side by side on one GPU, as locally
    workers = resolve_workers(workers, config.device, len(jobs))
    shared = {"sweep": name, "seeds": list(seeds), "trials": names, **config.params(), **(params or {})}
    # Under torchrun rank 0 alone records the sweep (as ``fit`` its trainings); the other ranks train alongside.
    with tracking.sweep_run(name, shared, resume=config.resume) if dist.is_main else contextlib.nullcontext() as parent:
        parent_id = parent.info.run_id if parent is not None else None
        context = _Context(name, data, config, task, evaluate)
        if executor == "ray":  # one Ray task per training; its runs nest under this one (see engine.executors)
            done = map_on_ray(_train_job, jobs, shared=context, environ=worker_environ(parent_id), label=name,
                              names=[f"{trial.name} seed={seed}" for trial, seed in jobs],
                              devices=[str(trial.config.get("device", config.device)) for trial, _ in jobs],
                              gpu_share=gpu_share, local_cpus=workers)
        elif workers > 1:  # spawned one-thread workers; their runs nest under this one (see engine.workers)
            done = map_in_workers(_train_job, jobs, workers, shared=context, environ=tracking_environ(parent_id),
                                  label=name)
        else:
            done = []
            for k, (trial, seed) in enumerate(jobs, 1):
                progress.report(f"{name}: training {k}/{len(jobs)} ({trial.name} seed={seed})")
                done.append(context.train(trial, seed))
    rows, histories, fits, artifacts = [], [], {}, {}
    for (trial, seed), (row, hist, result, kept) in zip(jobs, done):
        rows.append(row)
        histories.append(hist)
        fits[(trial.name, seed)] = result
        artifacts[(trial.name, seed)] = kept
    return SweepResult(pd.DataFrame(rows), pd.concat(histories, ignore_index=True), parent_id, fits, artifacts)


def resolve_workers(workers: int, device: str = "auto", jobs: int | None = None) -> int:
    """How many trainings a sweep runs at once: ``workers``, or with 0 one per CPU core this process may
    use -- on a CPU only (a GPU sweep trains one at a time) -- and never more than ``jobs``; one under
    torchrun (``WORLD_SIZE`` > 1: the ranks train each configuration together, in DDP)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or (
            torch.distributed.is_available() and torch.distributed.is_initialized()):
        return 1
    if workers == 0:
        on_gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        workers = 1 if on_gpu else len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1)
    return max(1, min(workers, jobs)) if jobs else max(1, workers)


@dataclass
class _Context:
    """What every training of a sweep shares; ``train(trial, seed)`` is one (trial, seed), in any process."""

    name: str
    data: Any
    config: TrainConfig
    task: Any
    evaluate: EvaluateHook | None

    def train(self, trial: Trial, seed: int) -> tuple[dict, pd.DataFrame, FitResult, dict[str, Any]]:
        cfg = dataclasses.replace(
            self.config,
            **{**trial.config, "seed": seed},
            ckpt_dir=str(work_dir() / _slug(self.name) / _slug(trial.name) / f"seed{seed}"),
        )
        seed_everything(seed)
        model = trial.build()
        n_params = count_params(model)
        t0 = time.perf_counter()
        result = fit(
            model, self.data, cfg, trial.task if trial.task is not None else self.task,
            run_name=f"{trial.name} seed={seed}",
            params={**trial.params, "sweep": self.name, "trial": trial.name, "n_params": n_params},
        )
        row = {"trial": trial.name, **trial.params, "seed": seed, "n_params": n_params,
               "train_seconds": time.perf_counter() - t0, "best": result.best,
               "best_epoch": result.best_epoch, "run_id": result.run_id,
               **{k: v for k, v in result.final.items() if k != "epoch"}}
        kept: dict[str, Any] = {}
        if self.evaluate is not None:
            scalars, kept = split_measurements(self.evaluate(model, result))
            row.update(scalars)
            _log_measurements(result.run_id, int(result.final["epoch"]), scalars, kept)
        hist = result.history.copy()
        hist.insert(0, "seed", seed)
        hist.insert(0, "trial", trial.name)
        return row, hist, result, kept


# ------------------------------------------------------------------ parallel trainings
def _train_job(context: _Context, trial: Trial, seed: int):
    return context.train(trial, seed)

