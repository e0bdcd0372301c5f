"""The pilot: how much a baseline's result varies from seed to seed, and what budget that implies.

A claim can only be decided by an instrument that can see the paper's effect.
Before an ablation is trusted, a baseline is trained with several seeds on the
frozen data and recipe, and the per-seed spread of the metric is measured; from it
follow the minimum detectable effect (MDE) of a comparison at ``n`` seeds and the
seeds a target MDE needs.  The baseline is never a method under test -- the plain
conv net (``dla_repro.models.plain``, ``--baseline plain``) or a paper's baseline
arm named ``package.module:function`` (the segmentation claims' shallow skip
decoder, not DLA-Up) -- so neither data nor recipe can have been tuned until a
method wins.

What a pilot records per budget (``pilot``; one row per seed in ``runs``, the
summary in ``summary``):

* ``sd`` -- the per-seed standard deviation of the final validation metric;
* ``mde_at_n`` -- the smallest true difference a one-sided 5 % paired t-test on
  ``n`` seeds detects with 80 % power, taking the two arms' per-seed results as
  independent (correlation 0: conservative when, as in a sweep, both arms of a
  seed share its data stream and so correlate positively):
  ``MDE = (t_{0.95, n−1} + t_{0.80, n−1}) · sd · √(2/n)``;
* ``seeds_for_target`` -- the smallest ``n`` whose MDE reaches the target;
* ``late_gain`` -- how much the mean metric still rose over the last quarter of
  training: a baseline that is still climbing when its learning rate reaches zero
  has not converged, and its spread is the spread of *when* it learned, not of what.

Run (one process per seed, one thread each; writes ``results/tables/pilot/``)::

    python -m dla_repro.experiments.pilot --task classification --steps 300 600 900
    python -m dla_repro.experiments.pilot --task segmentation --steps 100 200 --n-val 1000 \
        --baseline dla_repro.experiments.dla.segmentation:pilot_baseline
    python -m dla_repro.experiments.pilot --task segmentation --image-size 64 --steps 400 800 --n-val 500 \
        --baseline dla_repro.experiments.parsenet.global_context:pilot_baseline \
        --scores dla_repro.experiments.parsenet.global_context:evaluate
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats

from ..paths import results_dir

__all__ = ["RECIPES", "recipe", "mde", "seeds_for", "pilot", "summarize", "write", "load_summary", "main"]

ALPHA, POWER = 0.05, 0.8

# The frozen training recipes of the v2 instruments, set on the plain baseline only (see the module docstring):
# AdamW, label smoothing, a short linear warmup then a cosine decay to zero stepped after every update; the
# final weights are evaluated.  An EMA of the weights (decay 0.995) was tried first and dropped: on the plain
# baseline it lagged the trained weights by 0.2-0.4 top-1 at 600 updates (0.48 vs 0.85, seed 0) -- the cosine
# decay to zero already averages the last updates' noise.  ``iterations`` is the budget: the pilot chooses it.
RECIPES: dict[tuple[str, str], dict] = {
    ("synthetic-v2", "classification"): dict(
        optimizer="adamw", lr=2e-3, weight_decay=0.05, batch_size=128, schedule="cosine", step_on_epochs=False,
        warmup_epochs=1, warmup_lr=1e-5, min_lr=0.0, label_smoothing=0.1,
    ),
    ("synthetic-v2", "segmentation"): dict(
        optimizer="adamw", lr=2e-3, weight_decay=0.05, batch_size=32, schedule="cosine", step_on_epochs=False,
        warmup_epochs=1, warmup_lr=1e-5, min_lr=0.0, label_smoothing=0.0,
    ),
}
METRICS = {"classification": "val_top1", "segmentation": "val_miou"}
KEY = ["task", "version", "baseline", "image_size", "steps"]  # one pilot budget (a row of pilot_summary.csv)
STEPS_PER_EPOCH = 50  # an "epoch" of the fresh stream is this many updates: the evaluation (and warmup) interval


def recipe(version: str, task: str) -> dict:
    """The frozen recipe of ``task`` on synthetic ``version`` (``TrainConfig`` fields + ``label_smoothing``)."""
    if (version, task) not in RECIPES:
        raise KeyError(f"no frozen recipe for {task} on {version}; known: {sorted(RECIPES)}")
    return dict(RECIPES[(version, task)])


def mde(sd: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """Minimum detectable effect of a one-sided paired t-test on ``n`` seeds, arms independent with spread ``sd``."""
    if n < 2 or not math.isfinite(sd):
        return math.nan
    t = stats.t(n - 1)
    return float((t.ppf(1 - alpha) + t.ppf(power)) * sd * math.sqrt(2.0 / n))


def seeds_for(sd: float, target: float, most: int = 200) -> int | None:
    """The fewest seeds (≥ 2) whose :func:`mde` is at most ``target``; ``None`` beyond ``most``."""
    for n in range(2, most + 1):
        if mde(sd, n) <= target:
            return n
    return None


# ------------------------------------------------------------------------------ training
def _zero_head(model: torch.nn.Module) -> None:
    """Zero the classifier: every class equally likely at the start (the chance loss), for every seed."""
    head = model.fc if hasattr(model, "fc") else model.get_classifier()
    torch.nn.init.zeros_(head.weight)
    if head.bias is not None:
        torch.nn.init.zeros_(head.bias)


def baseline_builder(name: str):
    """``"plain"`` (:class:`~dla_repro.models.plain.PlainNet`, zero classifier), or ``"package.module:function"``:
    a paper module's baseline arm, ``function(num_classes)`` -- e.g. the segmentation claims' shallow skip
    decoder, ``dla_repro.experiments.dla.segmentation:pilot_baseline``.  Never a method under test.

    A baseline whose paper trains it with another objective than the task's plain one names it as the
    function's ``task`` attribute, ``function.task(num_classes)`` (GALD: OHEM + an auxiliary head,
    ``dla_repro.experiments.gald.local_distribution:pilot_baseline``); the pilot then trains with it."""
    if name == "plain":
        return None
    if ":" not in name:
        raise ValueError(f"baseline {name!r}: expected 'plain' or 'package.module:function'")
    return _resolve(name)


def _seed_job(named: tuple[str, str | None], *job) -> dict:
    """One pilot training in a worker (one thread; its MLflow run nests under the pilot's)."""
    baseline, scores = named
    return _one_seed(*job, threads=1, baseline=baseline, scores=scores)


def _resolve(name: str):
    module, _, function = name.partition(":")
    if not function:
        raise ValueError(f"{name!r}: expected 'package.module:function'")
    import importlib

    return getattr(importlib.import_module(module), function)


def _one_seed(task: str, version: str, image_size: int, steps: int, seed: int, n_val: int, threads: int,
              baseline: str = "plain", scores: str | None = None) -> dict:
    """Train the baseline for ``steps`` updates with ``seed``; its final metric and curve, and ``scores``'s
    numbers for the final model (``score.<name>``) when given."""
    torch.set_num_threads(threads)
    from ..engine import ClassificationTask, SegmentationTask, TrainConfig, fit, seed_everything
    from ..models.plain import PlainNet
    from . import study

    settings = recipe(version, task)
    smoothing = settings.pop("label_smoothing")
    per_epoch = STEPS_PER_EPOCH * settings["batch_size"]
    data = study.load_data(task, version, image_size=image_size, n_train=per_epoch, n_val=n_val)
    build = baseline_builder(baseline)
    if getattr(build, "task", None) is not None:
        job = build.task(data.num_classes)
    elif task == "classification":
        job = ClassificationTask(topk=(1,), label_smoothing=smoothing)
    else:
        job = SegmentationTask(data.num_classes)
    config = TrainConfig(iterations=steps, seed=seed, device="cpu", progress=False, **settings)
    seed_everything(seed)
    if build is None:
        model = PlainNet(data.num_classes, task)
        _zero_head(model)
    else:
        model = build(data.num_classes)
    start = time.perf_counter()
    label = "plain" if build is None else baseline.rpartition(":")[2]
    result = fit(model, data.splits, config, job, run_name=f"pilot {label} {task} {steps} steps seed={seed}",
                 params={"model": baseline, "pilot": True, "data": data.description})
    seconds = time.perf_counter() - start
    metric = METRICS[task]
    curve = result.history[["epoch", metric]].assign(step=lambda h: np.minimum((h["epoch"] + 1) * STEPS_PER_EPOCH,
                                                                               steps))
    extra = {f"score.{k}": float(v) for k, v in _resolve(scores)(model, data).items()} if scores else {}
    return {"task": task, "version": version, "baseline": baseline, "image_size": image_size, "steps": steps,
            "seed": seed,
            "metric": metric, "value": float(result.final[metric]), "seconds": seconds, "threads": threads,
            "run_id": result.run_id, "curve": curve[["step", metric]].values.tolist(), **extra}


def pilot(task: str, version: str = "synthetic-v2", image_size: int = 32, steps: Sequence[int] = (600,),
          seeds: Sequence[int] = (0, 1, 2, 3, 4), n_val: int = 5000, workers: int = 1,
          baseline: str = "plain", scores: str | None = None) -> pd.DataFrame:
    """Every (budget, seed) of the plain baseline, one row each (``curve``: ``[step, metric]`` per evaluation).

    ``workers`` > 1 trains that many seeds at once, each in its own process with one thread.  ``scores``,
    ``"package.module:function"``, is called as ``function(model, data)`` on each final baseline and its
    numbers are added to the row as ``score.<name>`` -- what else a budget must give *the baseline* before a
    claim can be judged at it (e.g. ParseNet's context classes found at all), never a method's result.
    """
    baseline_builder(baseline)  # a wrong name fails here, not in every worker
    if scores:
        _resolve(scores)
    jobs = [(task, version, image_size, s, seed, n_val) for s in steps for seed in seeds]
    if workers > 1:
        import mlflow

        from ..engine.workers import map_in_workers, tracking_environ

        active = mlflow.active_run()
        rows = map_in_workers(_seed_job, jobs, workers, shared=(baseline, scores),
                              environ=tracking_environ(active.info.run_id if active else None), label="pilot")
    else:
        rows = [_one_seed(*job, threads=torch.get_num_threads(), baseline=baseline, scores=scores) for job in jobs]
    return pd.DataFrame(rows)


def _late_gain(curves: Sequence[Sequence[Sequence[float]]]) -> float:
    """Mean over seeds of (final metric − metric at three quarters of the budget)."""
    gains = []
    for curve in curves:
        c = np.asarray(curve, dtype=float)
        if len(c) < 2:
            continue
        at = np.interp(0.75 * c[-1, 0], c[:, 0], c[:, 1])
        gains.append(c[-1, 1] - at)
    return float(np.mean(gains)) if gains else math.nan


def summarize(runs: pd.DataFrame, target: float, n: int = 5) -> pd.DataFrame:
    """Per budget: mean, sd, MDE at ``n`` seeds, seeds for an MDE of ``target``, late gain, seconds per run."""
    rows = []
    for (task, version, baseline, size, steps), g in runs.groupby(KEY, sort=True):
        sd = float(g["value"].std(ddof=1)) if len(g) > 1 else math.nan
        rows.append({"task": task, "version": version, "baseline": baseline, "image_size": size, "steps": steps,
                     "metric": g["metric"].iloc[0], "seeds": len(g), "mean": float(g["value"].mean()), "sd": sd, "n": n, "mde_at_n": mde(sd, n),
                     "target_mde": target, "seeds_for_target": seeds_for(sd, target),
                     "late_gain": _late_gain(g["curve"]), "seconds_per_run": float(g["seconds"].median()),
                     **{col: float(g[col].mean()) for col in g if col.startswith("score.")}})
    return pd.DataFrame(rows)


def write(runs: pd.DataFrame, summary: pd.DataFrame, folder: Path | None = None) -> Path:
    """``pilot_runs.csv`` (without curves), ``pilot_curves.csv`` and ``pilot_summary.csv`` (rows of the same
    task, version, size and budget replaced) under ``results/tables/pilot/``."""
    folder = Path(folder or results_dir() / "tables" / "pilot")
    folder.mkdir(parents=True, exist_ok=True)
    key = KEY
    curves = pd.DataFrame([{**{k: r[k] for k in (*key, "seed", "metric")}, "step": s, "value": v}
                           for r in runs.to_dict("records") for s, v in r["curve"]])
    from .. import tracking

    tables = {"pilot_runs.csv": runs.drop(columns="curve").assign(hardware=tracking.hardware_label()),
              "pilot_curves.csv": curves, "pilot_summary.csv": summary.assign(hardware=tracking.hardware_label())}
    for name, df in tables.items():
        path = folder / name
        if path.exists():
            old = pd.read_csv(path)
            if "baseline" not in old:  # written before pilots named their baseline: all of the plain one
                old.insert(old.columns.get_loc("version") + 1, "baseline", "plain")
            new_keys = set(map(tuple, df[key].astype(str).values))
            old = old[[tuple(r) not in new_keys for r in old[key].astype(str).values]]
            df = pd.concat([old, df], ignore_index=True)
        df.to_csv(path, index=False, float_format="%.5g")
    return folder


def load_summary(task: str | None = None, version: str = "synthetic-v2") -> pd.DataFrame:
    """The committed pilot's ``pilot_summary.csv`` (under ``results_dir()``, else the repository's ``results/``),
    rows of ``task`` on ``version``; empty if there is none -- for a notebook to show the spread its budget
    rests on."""
    from ..paths import repo_root

    for folder in (results_dir(), repo_root() / "results"):
        path = folder / "tables" / "pilot" / "pilot_summary.csv"
        if path.exists():
            table = pd.read_csv(path)
            keep = table["version"] == version
            if task is not None:
                keep &= table["task"] == task
            return table[keep].reset_index(drop=True)
    return pd.DataFrame(columns=[*KEY, "metric", "seeds", "mean", "sd", "n", "mde_at_n", "late_gain"])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dla_repro.experiments.pilot",
                                     description="Per-seed spread of the plain baseline and the budget it implies.")
    parser.add_argument("--task", choices=sorted({t for _, t in RECIPES}), default="classification")
    parser.add_argument("--version", default="synthetic-v2")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--steps", type=int, nargs="+", default=[600])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--n-val", type=int, default=5000)
    parser.add_argument("--baseline", default="plain",
                        help="plain (PlainNet), or package.module:function building a paper's baseline arm")
    parser.add_argument("--scores", default=None, metavar="package.module:function",
                        help="also score each final baseline with function(model, data) (columns score.<name>)")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1)))
    parser.add_argument("--target", type=float, default=None,
                        help="target MDE (default: 0.03 top-1 for classification, 0.02 mIoU for segmentation)")
    parser.add_argument("--no-write", action="store_true", help="print only; do not touch results/")
    args = parser.parse_args(argv)
    from .. import tracking

    tracking.configure()
    target = args.target if args.target is not None else {"classification": 0.03, "segmentation": 0.02}[args.task]
    with tracking.child_run("pilot", {"task": args.task, "version": args.version, "baseline": args.baseline,
                                      "image_size": args.image_size,
                                      "steps": list(args.steps), "seeds": list(args.seeds)}, experiment="pilot"):
        runs = pilot(args.task, args.version, args.image_size, args.steps, args.seeds, args.n_val, args.workers,
                     args.baseline, args.scores)
    summary = summarize(runs, target)
    print(summary.drop(columns=["task", "version", "baseline"]).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if not args.no_write:
        print(f"written to {write(runs, summary)}")


if __name__ == "__main__":
    main()
