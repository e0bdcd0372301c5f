"""The study protocol: what every experiment of every paper does, written once.

A *study* is one ablation of one paper: a trial table (name → how to build the
model), trained for several seeds on one dataset, evaluated after training,
summarised over seeds and judged against the paper's pre-declared claims.  A
paper's module declares only what is its own -- the trials, the evaluation, the
claims, the figures -- and calls these functions::

    data = study.load_data("segmentation", dataset, data_root, image_size=64, n_train=1000, n_val=300)
    trials = study.trial_table(TRIALS, ["fcn", "ida_up"], build_model, num_classes=data.num_classes)
    plan = study.preregister(CLAIMS, seeds, experiment="dla_segmentation")  # logged before any training
    result = study.run("dla_segmentation", trials, data, config, seeds, task, evaluate=per_class_iou)
    result.model("ida_up", 0)                    # rebuilt from its recipe, final weights loaded
    study.summarize(result.runs, ["val_miou"])   # mean / sd over seeds per trial
    verdicts = study.judge_plan(plan, result.runs)  # the shared verdict rule, per-seed values kept
    study.claims_markdown(verdicts)              # the notebook's closing table

Pieces:

* :class:`StudyData` / :func:`load_data` -- one type for every study's data: the
  built-in synthetic task (``classification``, ``segmentation`` or ``boundary``)
  or a real dataset read from ``data_root`` in its on-disk format;
* :func:`trial_table` -- :class:`~dla_repro.engine.Trial` objects from a table of
  recipes; the recipe is the trial's ``build``, so it travels with the result;
* :func:`run` -- trials × seeds through :func:`dla_repro.engine.sweep` (one MLflow
  run each, nested under one sweep run), with an ``evaluate(model, data)`` hook
  whose scalars join the result row (and the run's metrics) and whose other values
  (curves, maps) are kept per ``(trial, seed)`` in :attr:`StudyResult.artifacts`;
* :func:`summarize` -- mean / standard deviation / seeds per trial;
* :class:`Claim` + :func:`judge` + :func:`claims_markdown` -- claims declared as
  data before training, judged by :func:`dla_repro.analysis.claims.compare` from
  per-seed values (one-sided Welch or paired t-test, TOST for "no difference",
  Holm within a family: see :mod:`dla_repro.analysis.claims`), shown as one
  Markdown table;
* :func:`preregister` + :class:`ClaimsPlan` + :func:`judge_plan` -- the claims
  *pre-registered*: validated (metric, ``expect`` in greater / less / equal, a
  tolerance for "≈", ``min_effect`` ≥ 0, seeds; one seed is allowed but the
  plan says no verdict is possible), then logged on the notebook's MLflow run
  before any training -- params ``claims.*``, artifacts ``claims_plan.json`` /
  ``claims_plan.csv``, the tag ``claims_plan_sha256`` (the plan's hash) and
  ``results/tables/<profile>/<experiment>_claims_plan.csv``.  It is refused once
  a training exists under the run (unless the run already holds the same plan:
  a resumed execution).  Judging under the plan (``judge(..., plan=plan)`` or
  :func:`judge_plan`) accepts only the plan's claims, as declared, and writes
  the hash into every verdict (``plan_sha256``).  A plan changes only by editing
  the paper module's claims in a commit that gives the reason.

Knows no paper: the paper modules under ``experiments/<paper>/`` say what is run.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from .. import interrupts
from ..analysis.claims import ALPHA, DESCRIPTIVE, INCONCLUSIVE, RULE, Verdict, compare, holm
from ..engine import DataBundle, TrainConfig, Trial, sweep
from ..metrics.complexity import count_params

__all__ = [
    "TASKS",
    "StudyData",
    "load_data",
    "trial_table",
    "StudyResult",
    "run",
    "summarize",
    "Claim",
    "ClaimsPlan",
    "PlanError",
    "PLAN_TAG",
    "preregister",
    "judge",
    "judge_plan",
    "undefined_verdict",
    "claims_markdown",
    "ClaimArms",
    "arm_problems",
    "check_arms",
]

TASKS = ("classification", "segmentation", "boundary")


# ------------------------------------------------------------------------------ data
@dataclass
class StudyData:
    """What a study trains on and is evaluated against.

    ``splits`` is what ``fit`` accepts (``train`` / ``val``); ``val`` the evaluation
    split, one ``(image, target)`` at a time.  ``synthetic`` is the
    ``SyntheticConfig`` of the built-in data (``None`` on real data).  Boundary
    data adds ``gts`` (per validation image, every annotator's boolean map) and
    ``positive_fraction`` (the share of edge pixels).  ``mean`` / ``std``: the
    input normalisation, to draw images.
    """

    task: str
    splits: Any
    num_classes: int
    class_names: list[str]
    description: str  # one line for captions and the sweep's parameters
    synthetic: Any = None
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    gts: list[list[np.ndarray]] | None = None
    positive_fraction: float = float("nan")
    eval_split: str = "val"
    eval_set: Any = None  # the evaluation dataset when ``splits.val`` is a loader (BSDS: one image per batch)

    @property
    def val(self):
        """The evaluation dataset."""
        if self.eval_set is not None:
            return self.eval_set
        return self.splits.val if hasattr(self.splits, "val") else self.splits[1]

    @property
    def context_classes(self) -> tuple[int, ...]:
        """Synthetic data: the classes only the scene colour tells apart (none on real data)."""
        return tuple(self.synthetic.context_classes()) if self.synthetic is not None else ()

    def image(self, x: torch.Tensor) -> np.ndarray:
        """A normalised ``C×H×W`` tensor back to an ``H×W×3`` array in [0, 1] for ``imshow``."""
        m = torch.as_tensor(self.mean, dtype=x.dtype)[:, None, None]
        s = torch.as_tensor(self.std, dtype=x.dtype)[:, None, None]
        return (x * s + m).clamp(0, 1).permute(1, 2, 0).numpy()

    def images(self, n: int) -> list[np.ndarray]:
        """The first ``n`` evaluation images as ``H×W×3`` arrays in [0, 1]."""
        val = self.val
        return [self.image(val[i][0]) for i in range(min(n, len(val)))]


def _subset(ds: torch.utils.data.Dataset, n: int) -> torch.utils.data.Dataset:
    """The first ``n`` samples of a shuffled-once order (fixed seed); all when ``n`` ≤ 0."""
    if n <= 0 or n >= len(ds):
        return ds
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:n]
    return torch.utils.data.Subset(ds, order.tolist())


def load_data(
    task: str,
    dataset: str = "synthetic",
    data_root: str = "",
    *,
    image_size: int = 64,
    n_train: int = 1000,
    n_val: int = 300,
    seed: int = 0,
    crop_size: int = 0,
    scale: float = 2.0,
    rotate: float = 0.0,
) -> StudyData:
    """The study's data: the synthetic ``task`` or a real dataset under ``data_root``.

    ``synthetic`` (default, = ``synthetic-v1``) or ``synthetic-v2``:
    :func:`dla_repro.data.synthetic.make_splits` with that version's frozen generator
    at ``image_size``, ``n_train`` / ``n_val`` samples from ``seed``; a version whose
    design trains on fresh samples (v2) gets ``n_train`` new ones every epoch, from
    the training run's seed (:class:`~dla_repro.data.synthetic.SyntheticStream`).
    Real data, by task:

    * ``classification`` -- CIFAR-100 / ImageFolder readers with their standard
      augmentation; ``n_train`` / ``n_val`` > 0 keep a fixed random subset, 0 all;
    * ``segmentation`` -- the training split with the DLA augmentation (random
      scale in ``[1/scale, scale]``, rotation in ``±rotate``°, a ``crop_size`` crop
      (0: ``image_size``), flip); the evaluation split read whole (``test`` for
      SiftFlow, ``val`` otherwise);
    * ``boundary`` -- BSDS500: the same training augmentation; ``val`` at full size
      (one image per batch: portrait and landscape differ), every annotator's map.
    """
    if task not in TASKS:
        raise ValueError(f"task={task!r}: expected one of {', '.join(TASKS)}")
    from ..data.synthetic import dataset_version

    version = dataset_version(dataset)
    if version is not None:
        return _synthetic(task, image_size, n_train, n_val, seed, version)
    if not data_root:
        raise ValueError(f"dataset={dataset!r} needs data_root (the folder that holds it)")
    if task == "classification":
        return _real_classification(dataset.lower(), data_root, image_size, n_train, n_val)
    return _real_dense(task, dataset, data_root, crop_size or image_size, scale, rotate)


def _synthetic(task: str, image_size: int, n_train: int, n_val: int, seed: int,
               version: str = "synthetic-v1") -> StudyData:
    from ..data.synthetic import FRESH_BY_DEFAULT, SyntheticConfig, make_splits

    config = SyntheticConfig.preset(version, image_size=image_size)
    fresh = FRESH_BY_DEFAULT[version]
    splits = make_splits(config, n_train, n_val, seed, task=task, fresh=fresh)
    per = " fresh per epoch" if fresh else ""
    desc = (f"synthetic ({version}, digest {config.digest()}, {image_size}px, "
            f"{n_train}{per} train / {n_val} val)")
    data = StudyData(task, splits, splits.train.num_classes, list(splits.train.class_names), desc, config,
                     tuple(config.mean), tuple(config.std))
    if task == "boundary":
        data.gts = [[b.numpy().astype(bool)] for b in splits.val.boundaries]  # one annotator
        data.positive_fraction = float(splits.train.boundaries.float().mean())
    return data


def _real_classification(name: str, data_root: str, image_size: int, n_train: int, n_val: int) -> StudyData:
    from ..data.readers import CLASSIFICATION_DATASETS, build_classification_dataset

    if name not in CLASSIFICATION_DATASETS:
        raise ValueError(f"dataset={name!r}: expected 'synthetic' or one of {CLASSIFICATION_DATASETS}")
    train, num_classes = build_classification_dataset(name, data_root, "train", image_size, train=True)
    val, _ = build_classification_dataset(name, data_root, "val", image_size, train=False)
    train, val = _subset(train, n_train), _subset(val, n_val)
    root = str(Path(data_root).expanduser().resolve())
    digest = hashlib.sha256(f"{name}|{root}|{len(train)}|{len(val)}|{image_size}".encode()).hexdigest()[:16]
    desc = f"{name} ({root}, {image_size}px, {len(train)} train / {len(val)} val, {num_classes} classes)"
    names = list(getattr(train, "classes", None) or [str(k) for k in range(num_classes)])
    return StudyData("classification", DataBundle(train, val, name=name, digest=digest, source=root), num_classes,
                     names, desc)


def _real_dense(task: str, dataset: str, data_root: str, crop: int, scale: float, rotate: float) -> StudyData:
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from torch.utils.data import DataLoader

    from ..data.readers import build_segmentation_dataset

    train, num_classes = build_segmentation_dataset(dataset, data_root, "train", train=True, crop_size=crop,
                                                    scale=scale, rotate=rotate)
    eval_split = "test" if dataset.lower() == "siftflow" else "val"
    val, _ = build_segmentation_dataset(dataset, data_root, eval_split, train=False)
    names = list(getattr(train, "classes", [str(k) for k in range(num_classes)]))
    desc = (f"{dataset} ({data_root}; {len(train)} train / {len(val)} {eval_split}; crop {crop}, "
            f"rotate ±{rotate:g}°, scale {scale:g})")
    name, digest = getattr(train, "name", dataset), getattr(train, "digest", None)
    source = getattr(train, "source", None) or str(data_root)
    if task == "segmentation":
        return StudyData(task, DataBundle(train, val, name, digest, source), num_classes, names, desc,
                         mean=tuple(IMAGENET_DEFAULT_MEAN), std=tuple(IMAGENET_DEFAULT_STD), eval_split=eval_split)
    if not hasattr(val, "annotator_boundaries"):
        raise ValueError(f"dataset {dataset!r} has no boundary annotators; use bsds500")
    gts = [[np.asarray(b, bool) for b in val.annotator_boundaries(i)] for i in range(len(val))]
    pos = float(np.mean([np.mean(np.mean(g, axis=0) >= 0.5) for g in gts]))
    bundle = DataBundle(train, DataLoader(val, batch_size=1, shuffle=False), name, digest, source)
    return StudyData(task, bundle, num_classes, names, desc, mean=tuple(IMAGENET_DEFAULT_MEAN),
                     std=tuple(IMAGENET_DEFAULT_STD), gts=gts, positive_fraction=pos, eval_split=eval_split,
                     eval_set=val)


# ---------------------------------------------------------------------------- trials
def trial_table(
    table: Mapping[str, Mapping[str, Any]],
    names: Sequence[str],
    build: Callable[..., nn.Module],
    *,
    logged: Mapping[str, Any] | None = None,
    **shared: Any,
) -> list[Trial]:
    """One :class:`~dla_repro.engine.Trial` per name of ``table`` (a ``name → recipe`` mapping).

    Trial ``n`` builds ``build(**table[n], **shared)`` (a ``functools.partial``: the
    recipe is the trial's ``build`` and travels with the result, see
    :meth:`StudyResult.model`).  Its MLflow parameters and result columns are the
    recipe plus ``logged`` (default: ``shared``).  Unknown names: a ``ValueError``
    listing the known ones, before anything trains.
    """
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"unknown trials {unknown}; known: {', '.join(table)}")
    logged = dict(shared) if logged is None else dict(logged)
    return [Trial(n, {**table[n], **logged}, functools.partial(build, **table[n], **shared)) for n in names]


# ----------------------------------------------------------------------------- running
@dataclass
class StudyResult:
    """One row per ``(trial, seed)`` (``runs``) and per epoch (``history``), plus what rebuilds the models."""

    runs: pd.DataFrame
    history: pd.DataFrame
    trials: dict[str, Trial]
    fits: dict[tuple[str, int], Any]
    artifacts: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    sweep_run_id: str | None = None

    def model(self, trial: str, seed: int) -> nn.Module:
        """The final model of ``(trial, seed)``: rebuilt from the trial's recipe, weights loaded (CPU, eval mode)."""
        if (trial, seed) not in self.fits:
            raise KeyError(f"no run for trial {trial!r} with seed {seed}; ran {sorted(self.fits)}")
        model = self.trials[trial].build()
        state = torch.load(self.fits[(trial, seed)].weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        return model.eval()

    def values(self, trial: str, metric: str) -> list[float]:
        """Per-seed values of ``metric`` for ``trial``, in seed order (the input of a claim)."""
        return _values(self.runs, trial, metric)


def run(
    name: str,
    trials: Sequence[Trial],
    data: StudyData | Any,
    config: TrainConfig,
    seeds: Sequence[int],
    task: Any = None,
    *,
    evaluate: Callable[[nn.Module, Any], Mapping[str, Any]] | None = None,
    params: Mapping[str, Any] | None = None,
) -> StudyResult:
    """Train every trial with every seed (:func:`dla_repro.engine.sweep` under the sweep run ``name``).

    ``evaluate(model, data)`` runs on each final model: its scalar values join the
    result row and are logged as metrics of that training run; any other value (a
    PR curve, edge maps) is kept in ``result.artifacts[(trial, seed)]``.  ``params``
    are logged on the sweep run; the data's description is added as ``data``.
    """
    splits = data.splits if isinstance(data, StudyData) else data
    shared = dict(params or {})
    if isinstance(data, StudyData):
        shared = {"data": data.description, **shared}
    hook = None if evaluate is None else functools.partial(_call_evaluate, evaluate, data)
    res = sweep(name, trials, splits, config, seeds, task, params=shared, evaluate=hook)
    return StudyResult(res.runs, res.history, {t.name: t for t in trials}, res.fits, res.artifacts,
                       res.sweep_run_id)


def _call_evaluate(evaluate: Callable, data: Any, model: nn.Module, _fit_result: Any) -> Mapping[str, Any]:
    return evaluate(model, data)


# ---------------------------------------------------------------------------- tables
def summarize(
    runs: pd.DataFrame,
    metrics: Sequence[str],
    *,
    by: str | Sequence[str] = "trial",
    first: Sequence[str] = (),
    stats: Sequence[str] = ("mean", "std"),
) -> pd.DataFrame:
    """Per group (default: per trial, in the order of the runs): ``<metric>_<stat>`` over seeds.

    ``first`` columns are copied from the group's first row (settings such as
    ``n_params`` or ``fusion``); ``seeds`` counts the rows.  Metrics absent from
    ``runs`` are skipped; the standard deviation of one seed is NaN.
    """
    keys = [by] if isinstance(by, str) else list(by)
    present = [m for m in metrics if m in runs]
    g = runs.groupby(keys, sort=False)
    out = g.size().rename("seeds").to_frame()
    for col in first:
        if col in runs:
            out[col] = g[col].first()
    for m in present:
        for s in stats:
            out[f"{m}_{s}"] = g[m].agg(s)
    return out.reset_index()


# ---------------------------------------------------------------------------- claims
@dataclass(frozen=True)
class Claim:
    """A paper's statement as a test, declared before training.

    ``a`` is ``expect``-ed to be ``greater`` / ``less`` than / ``equal`` (within
    ``tolerance``) to ``b`` on ``metric`` -- one column of the runs, or several
    columns averaged per seed (e.g. the IoU of the fine classes).  ``a`` and ``b``
    name trials (or groups handed to :func:`judge`).  ``min_effect`` is the
    smallest difference of interest; ``floor`` the value at or below which a side
    has not learned (no verdict then).  ``family`` / ``statement`` group claims
    under the paper's sentence they test; the p-values of one family are
    Holm-adjusted together.  ``labels`` name the sides in the table;
    ``undefined`` says why a metric can be undefined for a model.

    ``paired`` (the default): compare seed by seed -- a paired t-test on the
    per-seed differences -- because that is the study's design: every trial of a
    sweep trains seed *k* on the same data stream, in the same order, with the
    same augmentation, after ``seed_everything(k)`` (so modules built in the same
    order, e.g. a shared backbone, start from the same weights; see
    :func:`dla_repro.engine.sweep.sweep`).  Set ``paired=False`` for a side
    measured outside the sweep (a calibration baseline, a fixed reference map):
    two independent groups, Welch's test.  :func:`judge` falls back to Welch,
    saying so in ``note``, when a paired claim's sides do not carry the same seeds.

    ``matched``: the claim compares its arms *at matched parameters*, within this
    relative tolerance of the larger count (``0.05``: ±5 %); :func:`arm_problems`
    checks it on the models the trials build, before anything trains.

    ``descriptive``: why this run cannot decide the claim (e.g. a budget short of
    the one its pilot froze), said before training.  Such a claim is measured and
    shown with its interval and MDE, but its verdict is
    :data:`~dla_repro.analysis.claims.DESCRIPTIVE` whatever the data, and it does
    not count in its family's Holm adjustment.  Empty (the default): judged.
    """

    text: str
    a: str
    b: str
    metric: str | tuple[str, ...]
    expect: str = "greater"
    min_effect: float = 0.0
    tolerance: float | None = None
    floor: float | None = None
    label: str = ""  # the metric as shown in the table (default: the column name)
    labels: tuple[str, str] | None = None
    family: str = ""
    statement: str = ""
    undefined: str = ""  # why a side can have no value, shown when it has none
    paired: bool = True
    matched: float | None = None  # the two arms' parameter counts agree within this fraction (0.05: ±5 %)
    descriptive: str = ""  # why this run cannot decide the claim (declared before training): no verdict


def _seeded(runs: pd.DataFrame, trial: str, metric: str | Sequence[str]) -> list[tuple[Any, float]]:
    """``(seed, value)`` of the finite per-seed values of ``metric`` (a column, or columns averaged per seed)."""
    df = runs[runs["trial"] == trial]
    if "seed" in df:
        df = df.sort_values("seed", kind="stable")
    if isinstance(metric, str):
        if metric not in df:
            return []
        vals = df[metric]
    else:
        vals = df[list(metric)].mean(axis=1, skipna=True)
    seeds = df["seed"].tolist() if "seed" in df else [None] * len(df)
    return [(s, float(v)) for s, v in zip(seeds, vals) if v is not None and math.isfinite(float(v))]


def _group_values(group: Sequence[float] | Mapping[Any, float] | pd.Series) -> list[tuple[Any, float]]:
    """``(seed, value)`` of a group handed to :func:`judge`: a mapping or Series is keyed by seed
    (in increasing seed order), a plain sequence has no seeds."""
    if isinstance(group, pd.Series):
        group = group.to_dict()
    if isinstance(group, Mapping):
        return [(s, float(group[s])) for s in sorted(group)]
    return [(None, float(v)) for v in group]


def _values(runs: pd.DataFrame, trial: str, metric: str | Sequence[str]) -> list[float]:
    """Finite per-seed values of ``metric`` (a column, or columns averaged per seed) for ``trial``, in seed order."""
    return [v for _, v in _seeded(runs, trial, metric)]


def _has(runs: pd.DataFrame, metric: str | Sequence[str]) -> bool:
    cols = [metric] if isinstance(metric, str) else list(metric)
    return bool(cols) and all(c in runs for c in cols)


def short_of(dataset: str, iterations: int, budget: int) -> bool:
    """Whether a run on ``dataset`` with ``iterations`` updates stops short of ``budget`` -- the budget a pilot
    froze for some claims on the synthetic data.  Real data and runs counted in epochs (``iterations`` 0) are
    never short: their budget is the paper's recipe.  A paper module turns it into its claims' ``descriptive``
    reason."""
    from ..data.synthetic import dataset_version

    return dataset_version(dataset) is not None and 0 < int(iterations) < int(budget)


def described(c: Claim, v: Verdict) -> Verdict:
    """``v`` as the verdict of a claim declared descriptive (``c.descriptive``): the numbers kept, the verdict
    :data:`~dla_repro.analysis.claims.DESCRIPTIVE`, the declared reason as note and reading; else ``v``."""
    if not c.descriptive:
        return v
    return dataclasses.replace(v, verdict=DESCRIPTIVE, note="; ".join(n for n in (c.descriptive, v.note) if n),
                               reading=f"declared descriptive before training: {c.descriptive}")


def undefined_verdict(c: Claim, xa: Sequence[float], xb: Sequence[float], names: tuple[str, str],
                      label: str) -> Verdict:
    """The verdict of a claim whose metric is undefined for a side (no finite value): inconclusive, saying so."""
    nan = float("nan")
    undefined = " and ".join(n for n, x in zip(names, (xa, xb)) if not len(x))
    why = f" ({c.undefined})" if c.undefined else ""
    return Verdict(c.text, label, names[0], names[1], float(np.mean(xa)) if len(xa) else nan,
                   float(np.mean(xb)) if len(xb) else nan, nan, nan, len(xa), len(xb), c.expect, INCONCLUSIVE,
                   note=f"{label} undefined for {undefined}{why}", values_a=tuple(xa), values_b=tuple(xb),
                   min_effect=c.min_effect, tolerance=c.tolerance, family=c.family)


# ------------------------------------------------------------------ the arms of a claim
@dataclass(frozen=True)
class ClaimArms:
    """What a paper module hands to the arms check (its ``claim_arms()`` hook).

    ``claims``: the claims its notebook declares (with small, fast settings);
    ``build``: trial name → a zero-argument function building that trial's
    model, as the notebook's trials build it (small widths are fine: the check
    is about structure); ``example``: an input batch the models accept.
    Sides that are not in ``build`` (groups, reference maps) are not checked.
    """

    claims: Sequence[Claim]
    build: Mapping[str, Callable[[], nn.Module]]
    example: torch.Tensor


def arm_problems(arms: ClaimArms, seed: int = 0) -> list[str]:
    """What makes a claim's two arms unfit to compare, one line each (empty: fit).

    For every claim whose sides are both trials: the two models, built after the
    same ``seed``, must not be the same function -- their outputs on
    ``arms.example`` differ, in eval mode, or they train different parameters (a
    learned vs a frozen scale starts as the same function; only training tells
    them apart) -- and, for a claim declared ``matched``, their parameter counts
    must agree within that fraction of the larger one.
    """
    problems = []
    for c in arms.claims:
        if c.a not in arms.build or c.b not in arms.build:
            continue
        models = []
        for side in (c.a, c.b):
            torch.manual_seed(seed)
            models.append(arms.build[side]().eval())
        with torch.no_grad():
            out_a, out_b = (m(arms.example) for m in models)
        if isinstance(out_a, Mapping):
            out_a, out_b = next(iter(out_a.values())), next(iter(out_b.values()))
        trainable = [sorted((n, tuple(p.shape)) for n, p in m.named_parameters() if p.requires_grad)
                     for m in models]
        same_output = out_a.shape == out_b.shape and torch.allclose(out_a, out_b, rtol=1e-5, atol=1e-6)
        if same_output and trainable[0] == trainable[1]:
            problems.append(f"{c.text!r}: {c.a} and {c.b} compute the same function (outputs equal, "
                            "same trainable parameters)")
        if c.matched is not None:
            na, nb = (count_params(m) for m in models)
            gap = abs(na - nb) / max(na, nb)
            if gap > c.matched:
                problems.append(f"{c.text!r}: {c.a} has {na:,} parameters, {c.b} {nb:,}: {gap:.1%} apart, "
                                f"more than the declared ±{c.matched:.0%}")
    return problems


def check_arms(claims: Sequence[Claim], trials: Sequence[Trial], example: torch.Tensor) -> None:
    """Before training: the claims' arms, as ``trials`` build them, must pass :func:`arm_problems`;
    else a ``ValueError`` listing every problem."""
    problems = arm_problems(ClaimArms(claims, {t.name: t.build for t in trials}, example))
    if problems:
        raise ValueError("the claims' arms are unfit to compare:\n" + "\n".join(problems))


# ------------------------------------------------------------------ pre-registration
PLAN_TAG = "claims_plan_sha256"  # tag of the notebook run: the hash of its pre-registered plan
PLAN_TIME_TAG = "claims_plan_logged_at"  # tag: when the plan was logged (ms since the epoch, as MLflow's times)
EXPECTS = ("greater", "less", "equal")
ONE_SEED_NOTE = "one seed: no verdict possible (every claim will be inconclusive)"
_PLAN_COLUMNS = ("id", "text", "a", "b", "metric", "expect", "min_effect", "tolerance", "floor", "family", "paired",
                 "matched",
                 "seeds", "alpha", "test", "multiplicity", "descriptive")
_PARAM_FIELDS = ("text", "a", "b", "metric", "expect", "min_effect", "tolerance", "floor", "family", "paired", "matched",
                 "test")
_PARAM_LIMIT = 500  # characters of a parameter value every MLflow version accepts


class PlanError(ValueError):
    """A claims plan that is invalid, changed after training started, or not the one a claim is judged under."""


def _metric_text(metric: str | Sequence[str]) -> str:
    return metric if isinstance(metric, str) else ", ".join(metric)


def _test_name(c: Claim) -> str:
    kind = "paired t by seed" if c.paired else "Welch t"
    return f"TOST ±{c.tolerance:g}, {kind}" if c.expect == "equal" else f"one-sided {kind}"


def _plan_problems(claims: Sequence[Claim], seeds: Sequence[int], alpha: float) -> list[str]:
    """What makes a plan invalid, one line each (empty: valid)."""
    problems = []
    if not 0 < alpha < 1:
        problems.append(f"alpha={alpha!r}: expected a level in (0, 1)")
    if not len(seeds):
        problems.append("no seeds: the plan must say which seeds will run")
    if len(set(seeds)) != len(seeds):
        problems.append(f"seeds {list(seeds)} repeat a seed")
    texts = [c.text for c in claims]
    for t in sorted({t for t in texts if texts.count(t) > 1}):
        problems.append(f"claim {t!r} is declared twice (claims are told apart by their text)")
    for c in claims:
        where = f"claim {c.text!r}" if c.text else "a claim without text"
        if not c.text:
            problems.append(f"{where}: no text")
        if not c.a or not c.b or c.a == c.b:
            problems.append(f"{where}: sides a={c.a!r}, b={c.b!r} must be two different names")
        cols = [c.metric] if isinstance(c.metric, str) else list(c.metric)
        if not cols or not all(isinstance(m, str) and m for m in cols):
            problems.append(f"{where}: no metric")
        if c.expect not in EXPECTS:
            problems.append(f"{where}: expect={c.expect!r}, expected one of {', '.join(EXPECTS)}")
        if c.expect == "equal" and not (c.tolerance is not None and math.isfinite(c.tolerance) and c.tolerance > 0):
            problems.append(f"{where}: expect='equal' needs a tolerance > 0 (the ≈ margin), got {c.tolerance!r}")
        if not (math.isfinite(c.min_effect) and c.min_effect >= 0):
            problems.append(f"{where}: min_effect={c.min_effect!r} must be ≥ 0")
        if c.floor is not None and not math.isfinite(c.floor):
            problems.append(f"{where}: floor={c.floor!r} must be finite (or None)")
    return problems


@dataclass(frozen=True)
class ClaimsPlan:
    """The claims of one notebook execution, fixed before training (:func:`preregister`).

    ``claims`` in declaration order with their ``ids`` (``c1``, ``c2``, …);
    ``seeds`` the seeds that will run; ``alpha`` the level of every test;
    ``sha256`` the hash of all of it (the run's tag :data:`PLAN_TAG` and every
    verdict's ``plan_sha256``); ``notes`` what the plan already says about its
    verdicts (one seed: none).
    """

    experiment: str
    claims: tuple[Claim, ...]
    seeds: tuple[int, ...]
    alpha: float = ALPHA
    design: str = ""
    notes: tuple[str, ...] = ()
    run_id: str | None = None  # the run it was logged to (None: not logged)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(f"c{i}" for i in range(1, len(self.claims) + 1))

    def _row(self, cid: str, c: Claim) -> dict[str, Any]:
        family = [x for x in self.claims if c.family and x.family == c.family]
        multiplicity = f"Holm over the {len(family)} claims of '{c.family}'" if len(family) > 1 else ""
        return {"id": cid, "text": c.text, "a": c.a, "b": c.b, "metric": _metric_text(c.metric), "expect": c.expect,
                "min_effect": c.min_effect, "tolerance": c.tolerance, "floor": c.floor, "family": c.family,
                "paired": c.paired, "matched": c.matched, "seeds": list(self.seeds), "alpha": self.alpha,
                "test": _test_name(c), "multiplicity": multiplicity, "descriptive": c.descriptive}

    @property
    def table(self) -> pd.DataFrame:
        """One row per claim: id, text, sides, metric, direction or margin, smallest effect, floor, family,
        pairing, seeds, level, test."""
        return pd.DataFrame([self._row(i, c) for i, c in zip(self.ids, self.claims)], columns=list(_PLAN_COLUMNS))

    def content(self) -> dict[str, Any]:
        """What the plan fixes (and its hash covers): every field of every claim, the seeds, the level, the design."""
        claims = [{"id": i, **_fields(c), "test": _test_name(c)} for i, c in zip(self.ids, self.claims)]
        return {"experiment": self.experiment, "seeds": list(self.seeds), "alpha": self.alpha,
                "design": self.design, "claims": claims}

    @property
    def sha256(self) -> str:
        text = json.dumps(self.content(), sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def to_json(self) -> dict[str, Any]:
        """``claims_plan.json``: the content, its hash, the notes and the verdict rule."""
        return {**self.content(), "sha256": self.sha256, "notes": list(self.notes), "rule": RULE}

    def params(self) -> dict[str, str]:
        """The plan as MLflow parameters: ``claims.n`` / ``.alpha`` / ``.seeds`` / ``.sha256`` and
        ``claims.<id>.<field>`` per claim (values cut at 500 characters)."""
        out = {"claims.n": str(len(self.claims)), "claims.alpha": str(self.alpha),
               "claims.seeds": json.dumps(list(self.seeds)), "claims.sha256": self.sha256}
        for i, c in zip(self.ids, self.claims):
            row = self._row(i, c)
            for f in _PARAM_FIELDS:
                value = row[f]
                out[f"claims.{i}.{f}"] = (value if isinstance(value, str) else json.dumps(value))[:_PARAM_LIMIT]
            if c.descriptive:
                out[f"claims.{i}.descriptive"] = c.descriptive[:_PARAM_LIMIT]
        return out

    def summary(self) -> str:
        """One line for the notebook: how many claims, which seeds, the level, the hash, where it was logged."""
        where = f"; logged to MLflow run {self.run_id}" if self.run_id else ""
        notes = "".join(f"; {n}" for n in self.notes)
        return (f"pre-registered {len(self.claims)} claims for {self.experiment} (seeds {list(self.seeds)}, "
                f"α = {self.alpha:g}), plan sha256 {self.sha256[:12]}…{where}{notes}")

    def check(self, claims: Sequence[Claim]) -> None:
        """A :class:`PlanError` naming every claim of ``claims`` that is not in this plan as declared."""
        known = set(self.claims)
        missing = [c for c in claims if c not in known]
        if missing:
            texts = {c.text for c in self.claims}
            why = [f"{c.text!r} ({'declared differently in the plan' if c.text in texts else 'not in the plan'})"
                   for c in missing]
            raise PlanError(f"{self.experiment}: judged claims were not pre-registered in plan sha256 "
                            f"{self.sha256[:12]}…: {'; '.join(why)}. Change a plan by editing the paper module's "
                            "claims and committing the change with its reason, then run again.")


def _fields(c: Claim) -> dict[str, Any]:
    """A claim's fields for the plan's hash: ``descriptive`` only when set, so plans that declare no
    descriptive claim keep the hash they had before the field existed."""
    fields = dataclasses.asdict(c)
    if not fields["descriptive"]:
        del fields["descriptive"]
    return fields


def _active_plan_tag() -> str:
    import mlflow

    active = mlflow.active_run()
    if active is None:
        return ""
    return mlflow.get_run(active.info.run_id).data.tags.get(PLAN_TAG, "")


def preregister(
    claims: Sequence[Claim],
    seeds: Sequence[int],
    *,
    experiment: str,
    alpha: float = ALPHA,
    design: str = "",
    log: bool = True,
) -> ClaimsPlan:
    """Validate ``claims``, fix them with ``seeds`` as the execution's plan and log it before any training.

    Refused (:class:`PlanError`, every problem listed): a claim without text,
    sides or metric; ``expect`` not ``greater`` / ``less`` / ``equal``; an
    ``equal`` claim without a ``tolerance`` > 0; a negative ``min_effect``; two
    claims with one text; no seeds.  One seed is allowed, and the plan says so
    (``notes``: no verdict possible).

    ``log`` (default): onto the active MLflow run (the notebook's,
    ``notebook.start``) -- params ``claims.*`` (:meth:`ClaimsPlan.params`), the
    artifacts ``claims_plan.json`` and ``claims_plan.csv``, the tags
    :data:`PLAN_TAG` (the hash) and ``claims_plan_logged_at``; and the table
    ``results/tables/<profile>/<experiment>_claims_plan.csv``
    (``tracking.log_table``).  Refused when a training (any run nested under the
    active run) already exists -- unless the run already holds this very plan (a
    resumed execution) -- and when the run holds another plan.  ``design``: one
    line on how the trials are compared (logged with the plan).
    """
    seeds = tuple(int(s) for s in seeds)
    claims = tuple(claims)
    problems = _plan_problems(claims, seeds, alpha)
    if problems:
        raise PlanError(f"{experiment}: invalid claims plan:\n  " + "\n  ".join(problems))
    notes = (ONE_SEED_NOTE,) if len(seeds) < 2 else ()
    if not claims:
        notes += ("no claims declared",)
    described = sum(1 for c in claims if c.descriptive)
    if described:
        notes += (f"{described} of them descriptive in this run (shown with their interval, no verdict)",)
    plan = ClaimsPlan(experiment, claims, seeds, float(alpha), design, notes)
    if not log:
        return plan
    return dataclasses.replace(plan, run_id=_log_plan(plan))


def _log_plan(plan: ClaimsPlan) -> str:
    """Log ``plan`` to the active run (see :func:`preregister`); its id."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from .. import tracking

    active = mlflow.active_run()
    if active is None:
        raise PlanError(f"{plan.experiment}: no active MLflow run to pre-register the claims on; call "
                        "notebook.start(...) first")
    run_id = active.info.run_id
    client = MlflowClient(tracking.configure())
    tags = client.get_run(run_id).data.tags
    logged = tags.get(PLAN_TAG, "")
    if logged and logged != plan.sha256:
        raise PlanError(f"{plan.experiment}: run {run_id} already holds another claims plan (sha256 {logged[:12]}…, "
                        f"now {plan.sha256[:12]}…): a plan does not change within a run; start a new run")
    if not logged:
        children = client.search_runs([active.info.experiment_id],
                                      filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'", max_results=1)
        if children:
            raise PlanError(f"{plan.experiment}: run {run_id} already has trainings (e.g. "
                            f"{children[0].info.run_name!r}); pre-register the claims before training starts")
    new_tags = {PLAN_TAG: plan.sha256}
    if PLAN_TIME_TAG not in tags:
        new_tags[PLAN_TIME_TAG] = str(int(time.time() * 1000))
    with interrupts.deferred():
        tracking._log_params_once(plan.params())
        mlflow.log_dict(plan.to_json(), "claims_plan.json")
        mlflow.log_text(plan.table.to_csv(index=False), "claims_plan.csv")
        tracking.log_table(plan.table, f"{plan.experiment}_claims_plan.csv")
        mlflow.set_tags(new_tags)
    return run_id


def judge(
    claims: Sequence[Claim],
    runs: pd.DataFrame,
    groups: Mapping[str, Sequence[float] | Mapping[Any, float] | pd.Series] | None = None,
    *,
    plan: ClaimsPlan | None = None,
) -> list[Verdict]:
    """Each claim whose two sides ran, judged by :func:`~dla_repro.analysis.claims.compare`, Holm within families.

    A side is a trial of ``runs`` or a named group of values in ``groups`` (e.g. a
    baseline measured outside the sweep: a sequence; or values derived per seed
    from the runs: a mapping or Series keyed by seed, which can be paired).  Claims whose sides or metric are absent
    are skipped (the trial was not run in this profile).  A side with no finite
    value (a metric undefined for that model) gives an inconclusive verdict that
    says so.  With a single seed on either side there is no verdict: the spread
    cannot be judged.  A ``paired`` claim is paired by seed when both sides carry
    the same seeds, else judged by Welch's test with a ``note``.  The
    p-values of each ``family`` are adjusted together
    (:func:`~dla_repro.analysis.claims.holm`).  The per-seed values are kept in
    the verdict's ``values_a`` / ``values_b``.

    With ``plan`` (a :class:`ClaimsPlan` from :func:`preregister`) every claim
    must be one of the plan's, unchanged -- else a :class:`PlanError` before
    anything is judged -- the plan's ``alpha`` is the level, and each verdict
    records the plan's hash (``plan_sha256``).  :func:`judge_plan` judges exactly
    the plan's claims.
    """
    groups = dict(groups or {})
    alpha = ALPHA
    if plan is not None:
        plan.check(claims)
        alpha = plan.alpha
    trials = set(runs["trial"]) if "trial" in runs else set()
    out: list[Verdict] = []
    for c in claims:
        sides: list[list[tuple[Any, float]] | None] = []
        for side in (c.a, c.b):
            if side in groups:
                sides.append(_group_values(groups[side]))
            elif side in trials and _has(runs, c.metric):
                sides.append(_seeded(runs, side, c.metric))
            else:
                sides.append(None)
        if None in sides:
            continue
        xa, xb = ([v for _, v in side] for side in sides)
        names = c.labels or (c.a, c.b)
        label = c.label or (c.metric if isinstance(c.metric, str) else ", ".join(c.metric))
        if not xa or not xb:
            out.append(described(c, undefined_verdict(c, xa, xb, names, label)))
            continue
        paired, note = False, ""
        if c.paired:
            seeds_a, seeds_b = ([s for s, _ in side] for side in sides)
            if None in seeds_a or None in seeds_b:
                note = "not paired: a side has no seeds (Welch instead)"
            elif seeds_a != seeds_b:
                note = f"not paired: seeds differ ({seeds_a} vs {seeds_b}; Welch instead)"
            else:
                paired = True
        v = compare(c.text, xa, xb, metric=label, names=names, expect=c.expect, min_effect=c.min_effect,
                    tolerance=c.tolerance, floor=c.floor, paired=paired, alpha=alpha, family=c.family)
        if note:
            v = dataclasses.replace(v, note="; ".join(n for n in (v.note, note) if n))
        out.append(described(c, v))
    out = holm(out, alpha)
    if plan is not None:
        out = [dataclasses.replace(v, plan_sha256=plan.sha256) for v in out]
    return out


def judge_plan(
    plan: ClaimsPlan,
    runs: pd.DataFrame,
    groups: Mapping[str, Sequence[float] | Mapping[Any, float] | pd.Series] | None = None,
) -> list[Verdict]:
    """The pre-registered claims of ``plan`` judged (:func:`judge` with ``plan``), each verdict with the plan's hash.

    When the active MLflow run carries a plan (tag :data:`PLAN_TAG`), it must be
    this one: a different plan is a :class:`PlanError`.
    """
    logged = _active_plan_tag()
    if logged and logged != plan.sha256:
        raise PlanError(f"{plan.experiment}: this plan (sha256 {plan.sha256[:12]}…) is not the one pre-registered "
                        f"on the active run (sha256 {logged[:12]}…); judge with the plan preregister() returned")
    return judge(plan.claims, runs, groups, plan=plan)


def _num(x: float | None, fmt: str = ".3f") -> str:
    return "n/a" if x is None or math.isnan(x) else format(x, fmt)


def _p_cell(v: Verdict) -> str:
    if math.isnan(v.p):
        return "n/a"
    p = "< 0.001" if v.p < 0.001 else f"{v.p:.3f}"
    if math.isnan(v.p_adjusted) or math.isclose(v.p_adjusted, v.p):
        return p
    adjusted = "< 0.001" if v.p_adjusted < 0.001 else f"{v.p_adjusted:.3f}"
    return f"{adjusted} (Holm; alone {p})"


def _test_cell(v: Verdict) -> str:
    if not v.test:
        return "n/a"
    kind = "paired" if v.paired else "Welch"
    return f"TOST ±{v.tolerance:g}, {kind}" if v.expect == "equal" else kind


def claims_markdown(verdicts: Sequence[Verdict], statements: Sequence[str] | None = None, *,
                    footer: str = "", empty: str = "_No claim could be tested with the trials that ran._",
                    rule: bool = True) -> str:
    """The verdicts as one Markdown table (for ``IPython.display.Markdown``); ``statements`` adds the
    paper's sentence each claim tests as a first column; ``rule`` adds how to read it
    (:data:`~dla_repro.analysis.claims.RULE`) below the table, before ``footer``."""
    if not verdicts:
        return empty

    head = ("| claim | metric | A | B | mean A | mean B | Δ (A−B) [95 % CI] | p | seeds | test | MDE (80 %) "
            "| verdict |")
    rule_line = "|---|---|---|---|---|---|---|---|---|---|---|---|"
    if statements is not None:
        head, rule_line = "| paper | " + head[2:], "|---" + rule_line
    lines = [head, rule_line]
    for i, v in enumerate(verdicts):
        why = "; ".join(x for x in (v.note, v.reading) if x)
        why = f" ({why})" if why else ""
        ci = f" [{_num(v.ci_low, '+.3f')}, {_num(v.ci_high, '+.3f')}]" if not math.isnan(v.ci_low) else ""
        row = (f"| {v.claim} | {v.metric} | {v.a} | {v.b} | {_num(v.mean_a)} | {_num(v.mean_b)} | "
               f"{_num(v.delta, '+.3f')}{ci} | {_p_cell(v)} | {v.n_a}/{v.n_b} | {_test_cell(v)} | "
               f"{_num(v.mde, '.3g')} | **{v.verdict}**{why} |")
        lines.append(f"| {statements[i]} " + row if statements is not None else row)
    if rule:
        lines += ["", RULE]
    if footer:
        lines += ["", footer]
    return "\n".join(lines)
