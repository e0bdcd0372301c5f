"""DLA classification experiments (Yu et al., CVPR 2018, §4.1 and §5.1-5.2): notebook ``dla/02_classification``.

Three ablations of the DLA classifier, each a :func:`dla_repro.engine.sweep`
(one MLflow run per configuration × seed, nested under one sweep run):

* **A -- aggregation** (``"aggregation"``): ``none`` / ``ida`` / ``hda`` / ``full``
  at matched parameter count (:func:`dla_repro.models.dla.matched_family`: one
  width multiplier per mode).  Paper: IDA and HDA together (the full DLA) give
  the best accuracy for a given size.
* **B -- residual node vs hierarchy depth** (``"residual"``): the aggregation
  node with and without the residual (``N = σ(BN(W·[x_1..x_n]) + x_1)``) in a
  shallow tree (the variant's own ``levels``, deepest hierarchy < 4) and a deep
  one (``deep_levels``, deepest hierarchy ≥ 4).  Paper (§4.1): the residual node
  helps when the deepest hierarchy has 4 or more levels and may hurt smaller ones.
* **C -- node kernel** (``"kernel"``): 1×1 vs 3×3 aggregation nodes.  Paper: 1×1
  nodes for classification (3×3 only for dense prediction) -- a design choice,
  tested here as "3×3 brings no gain beyond ``KERNEL_TOLERANCE`` top-1".

A configuration that two ablations share (A's ``full`` = B's shallow tree without
residual = C's 1×1 node) is trained once; the later ablation reuses its runs
(``reused_from`` names the run's original trial).

The claims are judged from the final-epoch validation top-1 of every seed with
:func:`dla_repro.analysis.claims.compare` -- reproduced, not reproduced, or
inconclusive at this budget.
"""

from __future__ import annotations

import functools
import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ...analysis.claims import INCONCLUSIVE, Verdict, claims_table, compare, floor_note
from ...engine import ClassificationTask, DataBundle, TrainConfig, Trial, sweep
from ...models.dla import AGGREGATION_MODES, REFERENCE, REFERENCE_SOURCE, VARIANTS, create_dla, matched_family

__all__ = [
    "ABLATIONS",
    "DATASETS",
    "METRIC",
    "ModelSpec",
    "Results",
    "load_data",
    "train_config",
    "ablation_trials",
    "run_ablation",
    "judge_claims",
    "claims_markdown",
    "paper_vs_ours",
    "summary",
    "plot_accuracy_vs_params",
    "plot_training_curves",
]

DATASETS = ("synthetic", "cifar100", "imagefolder")
ABLATIONS = ("aggregation", "residual", "kernel")
METRIC = "val_top1"  # final-epoch validation top-1: no selection on the validation set
KERNEL_TOLERANCE = 0.02  # |Δ top-1| below which the 3×3 node counts as "no gain"
MIN_EFFECT = 0.005  # smaller top-1 differences are never called a result
_LABELS = {"aggregation": "A: aggregation", "residual": "B: residual node × depth", "kernel": "C: node kernel"}


# ----------------------------------------------------------------------------- data
def _subset(ds: torch.utils.data.Dataset, n: int) -> torch.utils.data.Dataset:
    """The first ``n`` samples of a shuffled-once order (fixed seed); all when ``n`` ≤ 0."""
    if n <= 0 or n >= len(ds):
        return ds
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:n]
    return torch.utils.data.Subset(ds, order.tolist())


def load_data(
    dataset: str,
    data_root: str = "",
    image_size: int = 64,
    n_train: int = 3000,
    n_val: int = 1000,
    seed: int = 0,
) -> tuple[Any, int, str]:
    """``(data, num_classes, description)`` for ``fit`` / ``sweep``.

    ``synthetic``: the image-label task of :mod:`dla_repro.data.synthetic` (target
    shape × quadrant × size, 32 classes) with its frozen defaults at ``image_size``;
    ``n_train`` / ``n_val`` samples.  ``cifar100``, ``imagefolder`` (and the
    other names of :data:`~dla_repro.data.readers.CLASSIFICATION_DATASETS`): the real
    reader under ``data_root`` with its standard augmentation (timm's
    RandomResizedCrop + flip for ImageFolder sets); ``n_train`` / ``n_val`` > 0
    keep a fixed random subset, 0 keeps the whole split.
    """
    name = dataset.lower()
    if name == "synthetic":
        from ..data.synthetic import SYNTHETIC_VERSION, SyntheticConfig, make_splits

        config = SyntheticConfig(image_size=image_size)
        data = make_splits(config, n_train=n_train, n_val=n_val, seed=seed, task="classification")
        desc = (f"synthetic ({SYNTHETIC_VERSION}, digest {config.digest()}, {image_size}px, "
                f"{n_train} train / {n_val} val)")
        return data, data.train.num_classes, desc
    from ...data.readers import CLASSIFICATION_DATASETS, build_classification_dataset

    if name not in CLASSIFICATION_DATASETS:
        raise ValueError(f"dataset={dataset!r}: expected 'synthetic' or one of {CLASSIFICATION_DATASETS}")
    if not data_root:
        raise ValueError(f"dataset={dataset!r} needs data_root (the folder holding the dataset)")
    train, num_classes = build_classification_dataset(name, data_root, "train", image_size, train=True)
    val, _ = build_classification_dataset(name, data_root, "val", image_size, train=False)
    train, val = _subset(train, n_train), _subset(val, n_val)
    root = str(Path(data_root).expanduser().resolve())
    digest = hashlib.sha256(f"{name}|{root}|{len(train)}|{len(val)}|{image_size}".encode()).hexdigest()[:16]
    bundle = DataBundle(train, val, name=name, digest=digest, source=root)
    desc = f"{name} ({root}, {image_size}px, {len(train)} train / {len(val)} val, {num_classes} classes)"
    return bundle, num_classes, desc


def train_config(**overrides) -> TrainConfig:
    """A ``TrainConfig`` for the ablations (a progress bar per epoch, as every notebook's training)."""
    return TrainConfig(**overrides)


# ---------------------------------------------------------------------------- models
@dataclass(frozen=True)
class ModelSpec:
    """The DLA every ablation starts from.

    ``channels`` overrides the variant's widths (empty: the variant's own);
    ``deep_levels`` are the ``levels`` of B's deep tree (same block and widths).
    """

    variant: str = "dla34"
    num_classes: int = 1000
    channels: tuple[int, ...] = ()
    deep_levels: tuple[int, ...] = (1, 1, 1, 3, 4, 1)

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown DLA variant {self.variant!r}; expected one of {list(VARIANTS)}")
        if self.channels and len(self.channels) != 6:
            raise ValueError(f"channels needs 6 widths (or none), got {list(self.channels)}")
        if len(self.deep_levels) != 6:
            raise ValueError(f"deep_levels needs 6 entries, got {list(self.deep_levels)}")

    @property
    def base(self) -> dict[str, Any]:
        """Overrides of the variant's config shared by every trial."""
        kw: dict[str, Any] = {"num_classes": self.num_classes}
        if self.channels:
            kw["channels"] = tuple(int(c) for c in self.channels)
        return kw

    @property
    def shallow_levels(self) -> tuple[int, ...]:
        return tuple(VARIANTS[self.variant]["levels"])


def _depth(levels: Sequence[int]) -> int:
    """The deepest hierarchy of a DLA: the largest tree depth among stages 2-5."""
    return max(int(v) for v in levels[2:])


def canonical_key(variant: str, kwargs: Mapping[str, Any]) -> str:
    """A string that is equal for two trials exactly when they build the same model."""
    config = {"residual_root": False, "root_kernel": 1, "aggregation": "full", **VARIANTS[variant], **kwargs}
    norm = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in config.items()}
    return repr(sorted(norm.items()))


@dataclass
class _Planned:
    trial: Trial
    key: str


def _trial(name: str, spec: ModelSpec, kwargs: Mapping[str, Any], **params) -> _Planned:
    kwargs = {**spec.base, **kwargs}
    config = {**VARIANTS[spec.variant], **kwargs}
    levels = tuple(config["levels"])
    params = {
        "variant": spec.variant,
        "aggregation": config.get("aggregation", "full"),
        "residual_root": bool(config.get("residual_root", False)),
        "root_kernel": int(config.get("root_kernel", 1)),
        "levels": ",".join(map(str, levels)),
        "depth": _depth(levels),
        "channels": ",".join(map(str, config["channels"])),
        **params,
    }
    build = functools.partial(create_dla, spec.variant, **kwargs)
    return _Planned(Trial(name, params, build), canonical_key(spec.variant, kwargs))


def ablation_trials(ablation: str, spec: ModelSpec, modes: Sequence[str] = AGGREGATION_MODES,
                    tolerance: float = 0.05) -> list[_Planned]:
    """The configurations of one ablation (see the module docstring)."""
    if ablation == "aggregation":
        family = matched_family(spec.variant, modes=modes, tolerance=tolerance, **spec.base)
        return [
            _trial(f"agg={m.mode}", spec, m.kwargs, config=m.mode, width_mult=round(m.width_mult, 4))
            for m in family
        ]
    if ablation == "residual":
        out = []
        for depth, levels in (("shallow", spec.shallow_levels), ("deep", tuple(spec.deep_levels))):
            extra = {} if levels == spec.shallow_levels else {"levels": levels}
            for residual in (False, True):
                label = f"{depth} (depth {_depth(levels)}) {'residual' if residual else 'plain'} node"
                out.append(_trial(f"{depth}/residual={'on' if residual else 'off'}", spec,
                                  {**extra, "residual_root": residual}, config=label, tree=depth))
        return out
    if ablation == "kernel":
        return [_trial(f"kernel={k}x{k}", spec, {"root_kernel": k}, config=f"{k}×{k} node") for k in (1, 3)]
    raise ValueError(f"unknown ablation {ablation!r}; expected one of {ABLATIONS}")


# --------------------------------------------------------------------------- running
_KEY_COLUMNS = ["ablation", "trial", "config", "seed", "config_key", "reused_from"]


@dataclass
class Results:
    """Every trained configuration so far: one row per (ablation, trial, seed) / per epoch."""

    runs: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=_KEY_COLUMNS))
    history: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=[*_KEY_COLUMNS, "epoch"]))
    sweeps: dict[str, str | None] = field(default_factory=dict)

    def of(self, ablation: str) -> pd.DataFrame:
        return self.runs[self.runs["ablation"] == ablation]


def run_ablation(
    ablation: str,
    spec: ModelSpec,
    data: Any,
    config: TrainConfig,
    seeds: Sequence[int],
    results: Results | None = None,
    modes: Sequence[str] = AGGREGATION_MODES,
    params: Mapping[str, Any] | None = None,
) -> Results:
    """Train the ablation's configurations × ``seeds`` (one sweep run ``dla_<ablation>``), add them to ``results``.

    Configurations already in ``results`` (same model, same seed) are not trained
    again: their rows are copied under this ablation with ``reused_from`` set.
    """
    results = results or Results()
    planned = ablation_trials(ablation, spec, modes)
    done = results.runs
    seeds = [int(s) for s in seeds]

    def previous(key: str) -> pd.DataFrame:
        if not len(done):
            return done
        rows = done[(done["config_key"] == key) & done["reused_from"].isna()]
        return rows[rows["seed"].isin(seeds)]

    fresh = [p for p in planned if len(previous(p.key)) < len(seeds)]
    runs, hist = [], []
    if fresh:
        res = sweep(f"dla_{ablation}", [p.trial for p in fresh], data, config, seeds, ClassificationTask(),
                    params={"ablation": ablation, **(params or {})})
        results.sweeps[ablation] = res.sweep_run_id
        keys = {p.trial.name: p.key for p in fresh}
        r = res.runs.copy()
        r["config_key"], r["reused_from"] = r["trial"].map(keys), None
        h = res.history.copy()
        h["config_key"], h["reused_from"] = h["trial"].map(keys), None
        runs.append(r)
        hist.append(h)
    fresh_names = {p.trial.name for p in fresh}
    for p in planned:
        if p.trial.name in fresh_names:
            continue
        old = previous(p.key)
        r = old.drop(columns=[c for c in ("ablation",) if c in old]).copy()
        r["reused_from"] = r["trial"]
        r["trial"] = p.trial.name
        for k, v in p.trial.params.items():
            r[k] = v
        h = results.history
        h = h[(h["config_key"] == p.key) & h["reused_from"].isna() & h["seed"].isin(seeds)].copy()
        h = h.drop(columns=["ablation"])
        h["reused_from"], h["trial"] = h["trial"], p.trial.name
        runs.append(r)
        hist.append(h)
    new_runs = pd.concat(runs, ignore_index=True)
    new_runs.insert(0, "ablation", ablation)
    new_hist = pd.concat(hist, ignore_index=True)
    new_hist.insert(0, "ablation", ablation)
    new_hist["config"] = new_hist["trial"].map({p.trial.name: p.trial.params["config"] for p in planned})
    order = {p.trial.name: i for i, p in enumerate(planned)}
    new_runs = new_runs.sort_values(["trial", "seed"], key=lambda s: s.map(order) if s.name == "trial" else s)
    results.runs = pd.concat([results.runs, new_runs], ignore_index=True) if len(results.runs) else new_runs
    results.history = (pd.concat([results.history, new_hist], ignore_index=True) if len(results.history)
                       else new_hist.reset_index(drop=True))
    return results


# ---------------------------------------------------------------------------- tables
def summary(results: Results, metric: str = METRIC) -> pd.DataFrame:
    """Mean, standard deviation and seeds of ``metric`` and size per (ablation, trial)."""
    r = results.runs
    g = r.groupby(["ablation", "trial", "config"], sort=False)
    out = g.agg(n_params=("n_params", "first"), seeds=("seed", "count"),
                mean=(metric, "mean"), std=(metric, "std"), min=(metric, "min"), max=(metric, "max"),
                train_seconds=("train_seconds", "mean")).reset_index()
    out.insert(3, "metric", metric)
    return out


def learned_floor(num_classes: int) -> float:
    """Top-1 a model must exceed for its comparisons to count: twice chance.

    Below it the model has not learned the task at this budget, and a difference
    between two such models says nothing about aggregation (``compare(floor=...)``).
    """
    return 2.0 / num_classes


def _compare(claim: str, a: Sequence[float], b: Sequence[float], **kwargs) -> Verdict:
    """``compare`` with ``MIN_EFFECT`` -- except with a single seed on either side, where there is
    no spread to judge the noise by: then no difference is large enough (inconclusive)."""
    enough = len(a) >= 2 and len(b) >= 2
    if kwargs.get("expect") != "equal":
        kwargs["min_effect"] = MIN_EFFECT if enough else 0.0
    return compare(claim, a, b, **kwargs)


def _values(runs: pd.DataFrame, trial: str, metric: str) -> pd.Series:
    return runs[runs["trial"] == trial].set_index("seed")[metric].sort_index()


def judge_claims(results: Results, metric: str = METRIC, k: float = 2.0, floor: float | None = None) -> pd.DataFrame:
    """The paper's claims for every ablation that ran, as a verdict table (``claims_table``).

    ``floor`` (``learned_floor(num_classes)``): a comparison involving a
    configuration whose mean top-1 is at or below it is inconclusive.
    """
    verdicts: list[tuple[str, str, Verdict]] = []
    a = results.of("aggregation")
    if len(a):
        full = _values(a, "agg=full", metric) if "agg=full" in set(a["trial"]) else None
        for mode in ("none", "ida", "hda"):
            trial = f"agg={mode}"
            if full is None or trial not in set(a["trial"]):
                continue
            v = _compare(f"full DLA (IDA+HDA) beats {mode} at matched params", full, _values(a, trial, metric),
                        metric=metric, names=("full", mode), expect="greater", k=k, floor=floor)
            verdicts.append(("aggregation", "IDA and HDA together give the best accuracy per parameter", v))
    b = results.of("residual")
    if len(b):
        so, sn = _values(b, "shallow/residual=on", metric), _values(b, "shallow/residual=off", metric)
        do, dn = _values(b, "deep/residual=on", metric), _values(b, "deep/residual=off", metric)
        d_depth = int(b[b["tree"] == "deep"]["depth"].iloc[0])
        s_depth = int(b[b["tree"] == "shallow"]["depth"].iloc[0])
        paper = "the residual node helps when the deepest hierarchy has ≥ 4 levels, may hurt smaller ones"
        verdicts.append(("residual", paper, _compare(
            f"residual node helps the deep tree (depth {d_depth})", do, dn, metric=metric,
            names=("residual", "plain"), expect="greater", k=k, floor=floor)))
        verdicts.append(("residual", paper, _compare(
            f"residual node does not help the shallow tree (depth {s_depth})", so, sn, metric=metric,
            names=("residual", "plain"), expect="less", k=k, floor=floor)))
        seeds = sorted(set(do.index) & set(dn.index) & set(so.index) & set(sn.index))
        if seeds:
            gain_deep, gain_shallow = (do - dn).loc[seeds], (so - sn).loc[seeds]
            v = _compare("residual gain is larger for the deep tree than for the shallow one", gain_deep,
                         gain_shallow, metric=f"Δ{metric}", names=("deep gain", "shallow gain"), expect="greater", k=k)
            # the gains are differences, so the floor applies to the four trees behind them
            note = floor_note(floor, {"deep/on": do, "deep/off": dn, "shallow/on": so, "shallow/off": sn})
            if note:
                v = dataclasses.replace(v, verdict=INCONCLUSIVE, note=note)
            verdicts.append(("residual", paper, v))
    c = results.of("kernel")
    if len(c):
        v = _compare(f"3×3 nodes bring no gain over 1×1 (difference within ±{KERNEL_TOLERANCE:g})",
                    _values(c, "kernel=3x3", metric), _values(c, "kernel=1x1", metric), metric=metric,
                    names=("3×3", "1×1"), expect="equal", k=k, tolerance=KERNEL_TOLERANCE, floor=floor)
        verdicts.append(("kernel", "1×1 aggregation nodes for classification (3×3 for dense prediction)", v))
    table = claims_table([v for _, _, v in verdicts])
    if len(table):
        table.insert(0, "paper", [p for _, p, _ in verdicts])
        table.insert(0, "ablation", [a for a, _, _ in verdicts])
    return table


def claims_markdown(claims: pd.DataFrame, context: str = "") -> str:
    """The closing cell: one line per claim, generated from the measured verdicts."""
    if not len(claims):
        return "No ablation ran, so no claim was tested."
    lines = [f"**What this run shows** ({context})" if context else "**What this run shows**", "",
             "| ablation | paper | tested here | ours (mean over seeds) | Δ ± SE | seeds | verdict |",
             "|---|---|---|---|---|---|---|"]
    for row in claims.itertuples():
        se = "n/a" if np.isnan(row.se) else f"{row.se:.3f}"
        ours = f"{row.a} {row.mean_a:.3f} vs {row.b} {row.mean_b:.3f}"
        note = f" ({row.note})" if getattr(row, "note", "") else ""
        lines.append(f"| {_LABELS.get(row.ablation, row.ablation)} | {row.paper} | {row.claim} | {ours} | "
                     f"{row.delta:+.3f} ± {se} | {row.n_a}/{row.n_b} | **{row.verdict}**{note} |")
    counts = claims["verdict"].value_counts()
    lines += ["", "Verdicts: " + ", ".join(f"{n} {v}" for v, n in counts.items()) + ". "
              "A claim is *reproduced* only when the mean difference has the claimed sign and exceeds twice its "
              "seed standard error (and 0.005 top-1), and both sides learned (top-1 above twice chance); "
              "*inconclusive at this budget* means the seed spreads overlap or a side did not learn -- more "
              "seeds, data or epochs would be needed to tell."]
    return "\n".join(lines)


def paper_vs_ours(results: Results, spec: ModelSpec, dataset: str, metric: str = METRIC) -> pd.DataFrame:
    """The paper's reference numbers (PAPERS.md §1) beside ours, one row per configuration we trained.

    The paper's models are ImageNet-size (``params_m``, top-1 of the authors'
    weights as evaluated by timm); ours are whatever this run trained -- on
    synthetic data the numbers are not comparable, which the ``comparable`` column says.
    """
    ref = REFERENCE[spec.variant]
    rows = []
    for s in summary(results, metric).itertuples():
        rows.append({
            "ablation": s.ablation, "configuration": s.config, "paper_model": spec.variant,
            "paper_params_m": ref["params_m"], "paper_top1_imagenet_timm": ref["top1_timm"],
            "paper_top1_own_table": ref["top1_paper"], "ours_dataset": dataset,
            "ours_params_m": round(s.n_params / 1e6, 4), "ours_top1_mean": round(s.mean, 4),
            "ours_top1_std": round(s.std, 4) if not np.isnan(s.std) else np.nan, "ours_seeds": s.seeds,
            "comparable": dataset.startswith("imagenet") and not spec.channels,
        })
    out = pd.DataFrame(rows)
    out.attrs["source"] = REFERENCE_SOURCE
    return out


# ---------------------------------------------------------------------------- figures
def plot_accuracy_vs_params(results: Results, metric: str = METRIC, num_classes: int | None = None):
    """One panel per ablation: top-1 vs parameters; small points per seed, mean ± std per configuration.

    With ``num_classes``: dotted lines at chance and at ``learned_floor`` (twice
    chance), below which a configuration counts as not having learned.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    ablations = list(dict.fromkeys(results.runs["ablation"]))
    fig, axes = plt.subplots(1, len(ablations), figsize=(4.6 * len(ablations), 3.9), squeeze=False)
    stats = summary(results, metric)
    for ax, ablation in zip(axes[0], ablations):
        runs = results.of(ablation)
        s = stats[stats["ablation"] == ablation]
        palette = dict(zip(s["config"], sns.color_palette("colorblind", len(s))))
        sns.scatterplot(data=runs, x="n_params", y=metric, hue="config", palette=palette, alpha=0.45, s=28,
                        ax=ax, legend=False)
        for row in s.itertuples():
            ax.errorbar(row.n_params, row.mean, yerr=0 if np.isnan(row.std) else row.std, fmt="D", ms=7,
                        capsize=4, color=palette[row.config], label=row.config, mec="black", mew=0.6)
        if num_classes:
            for level, text in ((1.0 / num_classes, "chance"), (learned_floor(num_classes), "2 × chance")):
                ax.axhline(level, color="0.5", ls=":", lw=1)
                ax.annotate(text, (0.0, level), xycoords=("axes fraction", "data"), xytext=(2, 2),
                            textcoords="offset points", fontsize=7, color="0.4")
        ax.set_title(_LABELS.get(ablation, ablation))
        ax.set_xlabel("parameters")
        ax.set_ylabel(f"{metric} (final epoch)")
        ax.ticklabel_format(axis="x", style="sci", scilimits=(3, 3))
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def plot_training_curves(results: Results, metric: str = METRIC):
    """Validation ``metric`` and training loss per epoch; line = mean over seeds, band = min-max."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    ablations = list(dict.fromkeys(results.history["ablation"]))
    fig, axes = plt.subplots(2, len(ablations), figsize=(4.6 * len(ablations), 6.4), squeeze=False, sharex=True)
    hist = results.history.copy()
    hist["epoch"] = hist["epoch"] + 1
    stats = summary(results, metric)
    for j, ablation in enumerate(ablations):
        h = hist[hist["ablation"] == ablation]
        order = list(stats[stats["ablation"] == ablation]["config"])
        palette = dict(zip(order, sns.color_palette("colorblind", len(order))))
        for i, (col, label) in enumerate(((metric, f"{metric}"), ("train_loss", "train loss"))):
            ax = axes[i, j]
            sns.lineplot(data=h, x="epoch", y=col, hue="config", hue_order=order, palette=palette,
                         errorbar=("pi", 100), marker="o", ms=4, ax=ax, legend=i == 0)
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.set_ylabel(label)
            if i == 0:
                ax.set_title(_LABELS.get(ablation, ablation))
                if ax.get_legend() is not None:
                    ax.legend(fontsize=7, title=None)
    fig.tight_layout()
    return fig
