"""DLA classification (arXiv 1707.06484, §4.1 and §5.1-5.2): notebook ``dla/02_classification``.

Three ablations of the DLA classifier, each a study (:func:`dla_repro.experiments.study.run`:
one MLflow run per configuration × seed, nested under one sweep run), on the
data of ``study.load_data("classification", ...)``:

* **A -- aggregation** (``"aggregation"``): ``none`` / ``ida`` / ``hda`` / ``full``
  at matched parameter count (:func:`dla_repro.models.dla_family.matched_family`: one
  width multiplier per mode, within :data:`MATCH_TOLERANCE` of ``full``).  Paper
  (§4.1, §5.1): IDA and HDA together (the full DLA) give the best accuracy for a
  given size.  ``full`` vs ``none`` (the same blocks, no aggregation node) is the
  primary, paper-faithful comparison.  ``full`` vs ``ida`` and vs ``hda`` are this
  project's extension: the paper defines no IDA-only or HDA-only classifier (the
  modes are ours, :mod:`dla_repro.models.dla`); their claims say so in their
  statement and stay in the same Holm family.
* **B -- residual node vs hierarchy depth** (``"residual"``): the aggregation
  node with and without the residual (``N = σ(BN(W·[x_1..x_n]) + x_1)``) in a
  shallow tree (the variant's own ``levels``, deepest hierarchy < 4) and a deep
  one (``deep_levels``, deepest hierarchy ≥ 4).  Paper (§4.1): the residual node
  helps when the deepest hierarchy has 4 or more levels and may hurt smaller ones.
  The residual term adds no parameter, so on/off in one tree have equal counts.
  The deep and the shallow tree are not matched (depth is what differs); the
  claim that compares their gains compares per-seed differences, not trials.
* **C -- node kernel** (``"kernel"``): 1×1 vs 3×3 aggregation nodes.  Paper: 1×1
  nodes for classification (3×3 only for dense prediction) -- a design choice,
  tested here as "3×3 brings no gain beyond ``KERNEL_TOLERANCE`` top-1" at matched
  parameters.  A 3×3 node has 9× the weights of a 1×1 one (+58 % parameters for
  the ``quick`` DLA-34), so the 3×3 arm is narrowed to the 1×1 arm's count by the
  rule of ablation A: one width multiplier on all six widths
  (``matched_family(..., target_params=<1×1 count>, root_kernel=3)``).  The node
  alone cannot be narrowed: its output is the stage's (or sub-tree's) feature
  map, read by the next block, tree and stage and added to the residual, so its
  width is the stage's.  The 1×1 arm stays the baseline DLA (shared with A and
  B); the comparison asks whether parameters are better spent on 3×3 nodes or on
  width.  Where no multiplier gets within the tolerance the ablation stops before
  training with ``matched_family``'s error rather than run an unfair arm: so for
  the compact ResNeXt variants at their own widths (``dla46x_c`` and ``dla60x_c``:
  their stage widths move in steps of 32 so the groups stay whole, too coarse
  for stages of 64-256 channels), and ``dla60x_c`` already in ablation A; choose ``channels`` or another
  variant.  For the other eight variants and the notebook's DLA-34 widths both
  ablations match.

**Fair start.** Every model is trained from scratch, and with the official
fan-out init of the classifier the arms started at different losses, all above
chance (on one random batch of 64 px images, the ``quick`` DLA-34 with 32
classes: about 4.3 for ``full``, 5.3 for ``none``, 5.6-5.8 with residual nodes,
against ln 32 ≈ 3.47).  Every trial is therefore built with a zero
classifier (:attr:`ModelSpec.head_init_scale` = 0, ``DLA(head_init_scale=...)``):
all logits are 0 at initialisation and every arm starts at exactly
ln(num_classes).  Zero rather than a small random head: exact for any body (a
small head's loss still depends on the body's feature scale), and the head's
gradient is not zero, so it learns at the first step.  This departs from the
official init (ucbdrive/dla ``dla.py`` initialises the classifier like every
other conv); the timm-compatible default of :func:`dla_repro.models.dla.create_dla`
is unchanged.

**Matched arms.** Every claim between two trials that holds parameters fixed
declares ``matched=`` :data:`MATCH_TOLERANCE`; ``tests/test_claim_arms.py``
checks it on the models :func:`claim_arms` builds.

A configuration that two ablations share (A's ``full`` = B's shallow tree without
residual = C's 1×1 node) is trained once; the later ablation reuses its runs
(``reused_from`` names the run's original trial).

The claims (:func:`claims`, declared before training and pre-registered on the
notebook's run by :func:`dla_repro.experiments.study.preregister`) are judged from the
final-epoch validation top-1 of every seed by :func:`dla_repro.experiments.study.judge`
-- reproduced, not reproduced, or inconclusive at this budget.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ...analysis.claims import INCONCLUSIVE, Verdict, claims_table, floor_note
from ...engine import ClassificationTask, TrainConfig, Trial
from ...models.dla import AGGREGATION_MODES, VARIANTS, create_dla
from ...models.dla_family import matched_family
from .. import study
from ..study import Claim
from .reference import REFERENCE, REFERENCE_SOURCE

__all__ = [
    "ABLATIONS",
    "DATASETS",
    "METRIC",
    "ModelSpec",
    "Results",
    "ablation_trials",
    "run_ablation",
    "learned_floor",
    "claims",
    "claim_arms",
    "PILOT_SPEC",
    "pilot_baseline",
    "judge_claims",
    "residual_floor_note",
    "claims_frame",
    "claims_markdown",
    "paper_vs_ours",
    "summary",
    "plot_accuracy_vs_params",
    "plot_training_curves",
    "rejudge_claims",
    "runs_groups",
]

DATASETS = ("synthetic", "synthetic-v2", "cifar100", "imagefolder")  # "synthetic" is synthetic-v1
ABLATIONS = ("aggregation", "residual", "kernel")
METRIC = "val_top1"  # final-epoch validation top-1: no selection on the validation set
KERNEL_TOLERANCE = 0.02  # |Δ top-1| below which the 3×3 node counts as "no gain"
MIN_EFFECT = 0.005  # smaller top-1 differences are never called a result
MATCH_TOLERANCE = 0.05  # arms compared "at matched parameters" agree within ±5 % of the larger count
#: The synthetic budget the pilot froze for these claims: the ``none`` arm converged (per-seed sd 0.009 top-1 at
#: 2,400 updates against 0.039 at 1,200; ``results/tables/pilot/pilot_summary.csv``).
FROZEN_ITERATIONS = 2400
HEAD_INIT_SCALE = 0.0  # the study's classifier starts at zero: every arm's initial loss is ln(num_classes)
_LABELS = {"aggregation": "A: aggregation", "residual": "B: residual node × depth", "kernel": "C: node kernel"}


# ---------------------------------------------------------------------------- models
@dataclass(frozen=True)
class ModelSpec:
    """The DLA every ablation starts from.

    ``channels`` overrides the variant's widths (empty: the variant's own);
    ``deep_levels`` are the ``levels`` of B's deep tree (same block and widths);
    ``head_init_scale`` the factor on the classifier's initial weights
    (:data:`HEAD_INIT_SCALE`, 0: every arm starts at chance loss; 1: the official init).
    """

    variant: str = "dla34"
    num_classes: int = 1000
    channels: tuple[int, ...] = ()
    deep_levels: tuple[int, ...] = (1, 1, 1, 3, 4, 1)
    head_init_scale: float = HEAD_INIT_SCALE

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
        kw: dict[str, Any] = {"num_classes": self.num_classes, "head_init_scale": float(self.head_init_scale)}
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
        "head_init_scale": float(config.get("head_init_scale", 1.0)),
        **params,
    }
    build = functools.partial(create_dla, spec.variant, **kwargs)
    return _Planned(Trial(name, params, build), canonical_key(spec.variant, kwargs))


def ablation_trials(ablation: str, spec: ModelSpec, modes: Sequence[str] = AGGREGATION_MODES,
                    tolerance: float = MATCH_TOLERANCE) -> list[_Planned]:
    """The configurations of one ablation (see the module docstring).

    ``tolerance``: how far (relative) a width-matched arm may be from its target
    parameter count -- A's modes from ``full``, C's 3×3 arm from the 1×1 arm
    (:func:`~dla_repro.models.dla_family.matched_family` raises beyond it).
    """
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
                                  {**extra, "residual_root": residual}, config=label, tree=depth,
                                  width_mult=1.0))
        return out
    if ablation == "kernel":
        (k1,) = matched_family(spec.variant, modes=("full",), tolerance=tolerance, **spec.base)  # the baseline
        (k3,) = matched_family(spec.variant, modes=("full",), target_params=k1.params, tolerance=tolerance,
                               **{**spec.base, "root_kernel": 3})
        return [_trial(f"kernel={k}x{k}", spec, {**m.kwargs, "root_kernel": k}, config=f"{k}×{k} node",
                       width_mult=round(m.width_mult, 4)) for k, m in ((1, k1), (3, k3))]
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
    label_smoothing: float = 0.0,
) -> Results:
    """Train the ablation's configurations × ``seeds`` (one sweep run ``dla_<ablation>``), add them to ``results``.

    ``label_smoothing``: of the cross-entropy (the synthetic-v2 recipe: 0.1; the paper: none).

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
        res = study.run(f"dla_{ablation}", [p.trial for p in fresh], data, config, seeds,
                        ClassificationTask(label_smoothing=label_smoothing),
                        params={"ablation": ablation, "label_smoothing": label_smoothing, **(params or {})})
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
    """Mean, standard deviation and seeds of ``metric`` and size per (ablation, trial); the widths
    (``channels``, ``width_mult``) where the runs record them."""
    r = results.runs
    g = r.groupby(["ablation", "trial", "config"], sort=False)
    widths = {c: (c, "first") for c in ("channels", "width_mult") if c in r}
    out = g.agg(n_params=("n_params", "first"), **widths, seeds=("seed", "count"),
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


def short_budget(dataset: str, iterations: int) -> str:
    """Why a run on ``dataset`` with ``iterations`` updates cannot decide the claims ("" when it can).

    On the synthetic data a run shorter than :data:`FROZEN_ITERATIONS` stops before its arms converge: a
    seed still on the plateau decides the verdict, and the CPU's rounding decides when a seed leaves it (a
    whole ``quick`` re-run with every kernel library capped to SSE4.1 turned ``full`` vs ``none`` from *not
    reproduced* into *inconclusive* through one such seed; README "Replication").  Such a run is
    descriptive.  Real data (the paper's recipe, in epochs) is judged as run.
    """
    if not study.short_of(dataset, iterations, FROZEN_ITERATIONS):
        return ""
    return (f"{int(iterations):,} updates, short of the {FROZEN_ITERATIONS:,} the pilot froze for these claims: the "
            "arms have not converged, so when a seed leaves the plateau -- and the verdict -- can change with the "
            f"CPU; decided by the extended profile ({FROZEN_ITERATIONS:,} updates)")


def claims(spec: ModelSpec, floor: float | None = None, metric: str = METRIC,
           descriptive: str = "") -> list[Claim]:
    """The paper's claims for the three ablations, declared before training (see the module docstring).

    Directional claims need :data:`MIN_EFFECT` top-1 besides the noise; a side at or
    below ``floor`` (:func:`learned_floor`: twice chance) has not learned and makes
    the claim inconclusive.  The residual-gain claim compares per-seed *differences*
    (groups ``"deep gain"`` / ``"shallow gain"``, see :func:`judge_claims`).  Every
    claim between two trials is at matched parameters (``matched`` =
    :data:`MATCH_TOLERANCE`).  ``full`` vs ``none`` is the paper's comparison; the
    claims against ``ida`` and ``hda`` are labelled as this project's extension in
    their statement and share the ``aggregation`` family (Holm over all three).
    ``descriptive`` (:func:`short_budget`): why this run cannot decide them -- then
    every claim is measured and shown, without a verdict.
    """
    aggregation = "IDA and HDA together give the best accuracy per parameter"
    extension = ("this project's extension (the paper defines no IDA-only / HDA-only classifier): "
                 f"{aggregation}, also against {{}} alone")
    statements = {"none": f"{aggregation} (§4.1, §5.1; the primary, paper-faithful comparison: the same blocks "
                          "without aggregation)",
                  "ida": extension.format("IDA"), "hda": extension.format("HDA")}
    residual = "the residual node helps when the deepest hierarchy has ≥ 4 levels, may hurt smaller ones"
    kernel = "1×1 aggregation nodes for classification (3×3 for dense prediction)"
    common = dict(label=metric, min_effect=MIN_EFFECT, floor=floor, descriptive=descriptive)
    matched = dict(matched=MATCH_TOLERANCE)
    out = [Claim(f"full DLA (IDA+HDA) beats {mode} at matched params", "agg=full", f"agg={mode}", metric,
                 labels=("full", mode), family="aggregation", statement=statements[mode], **common, **matched)
           for mode in ("none", "ida", "hda")]
    deep, shallow = _depth(spec.deep_levels), _depth(spec.shallow_levels)
    out += [
        Claim(f"residual node helps the deep tree (depth {deep})", "deep/residual=on", "deep/residual=off", metric,
              labels=("residual", "plain"), family="residual", statement=residual, **common, **matched),
        Claim(f"residual node does not help the shallow tree (depth {shallow})", "shallow/residual=on",
              "shallow/residual=off", metric, expect="less", labels=("residual", "plain"), family="residual",
              statement=residual, **common, **matched),
        Claim("residual gain is larger for the deep tree than for the shallow one", "deep gain", "shallow gain",
              metric, label=f"Δ{metric}", min_effect=MIN_EFFECT, family="residual", statement=residual,
              descriptive=descriptive),
        Claim(f"3×3 nodes bring no gain over 1×1 (difference within ±{KERNEL_TOLERANCE:g})", "kernel=3x3",
              "kernel=1x1", metric, expect="equal", tolerance=KERNEL_TOLERANCE, label=metric, floor=floor,
              labels=("3×3", "1×1"), family="kernel", statement=kernel, descriptive=descriptive, **matched),
    ]
    return out


#: The arms check's DLA: the ``smoke`` profile's widths and deep tree, 32 classes.
ARMS_SPEC = ModelSpec("dla34", num_classes=32, channels=(8, 8, 16, 24, 48, 96), deep_levels=(1, 1, 1, 1, 4, 1))


def claim_arms(spec: ModelSpec = ARMS_SPEC) -> study.ClaimArms:
    """The hook of ``tests/test_claim_arms.py``: :func:`claims` for ``spec`` (default: tiny), a builder for every
    trial of the three ablations, and a 2×3×32×32 batch.

    The builders are the notebook's (:func:`ablation_trials`) with the classifier at its official init
    (``head_init_scale=1``): with the study's zero classifier every arm outputs zeros at initialisation, so
    outputs could not tell two bodies apart.  The head's init changes no parameter count.
    """
    import torch

    spec = dataclasses.replace(spec, head_init_scale=1.0)
    build = {p.trial.name: p.trial.build for ablation in ABLATIONS for p in ablation_trials(ablation, spec)}
    example = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return study.ClaimArms(claims(spec, learned_floor(spec.num_classes)), build, example)


#: The notebook's default DLA (``channels``, ``deep_levels``), whose ``none`` arm the pilot trains.
PILOT_SPEC = ModelSpec("dla34", num_classes=32, channels=(8, 8, 16, 24, 48, 96), deep_levels=(1, 1, 1, 2, 4, 1))


def pilot_baseline(num_classes: int) -> Any:
    """The classification pilot's DLA baseline (``python -m dla_repro.experiments.pilot --baseline
    dla_repro.experiments.dla.classification:pilot_baseline``): ablation A's ``none`` arm -- the notebook's tiny
    DLA-34 without aggregation, widened to ``full``'s parameters, zero classifier -- the configuration the
    paper's comparison starts from, never ``full``, the method under test."""
    spec = dataclasses.replace(PILOT_SPEC, num_classes=num_classes)
    (none,) = [p for p in ablation_trials("aggregation", spec, modes=("none", "full")) if p.trial.name == "agg=none"]
    return none.trial.build()


def _residual_gains(runs: pd.DataFrame, metric: str) -> tuple[dict[str, dict[int, float]], dict[str, pd.Series]]:
    """Per-seed residual gains of the deep and the shallow tree (``{seed: gain}`` over the seeds all four
    trees share, so the two gains are paired by seed), and the four trees."""
    if metric not in runs:
        return {}, {}
    trees = {name: runs[runs["trial"] == trial].set_index("seed")[metric].sort_index()
             for name, trial in (("deep/on", "deep/residual=on"), ("deep/off", "deep/residual=off"),
                                 ("shallow/on", "shallow/residual=on"), ("shallow/off", "shallow/residual=off"))}
    seeds = sorted(set.intersection(*(set(t.index) for t in trees.values())))
    if not seeds:
        return {}, trees
    gains = {"deep gain": (trees["deep/on"] - trees["deep/off"]).loc[seeds].to_dict(),
             "shallow gain": (trees["shallow/on"] - trees["shallow/off"]).loc[seeds].to_dict()}
    return gains, trees


def residual_floor_note(runs: pd.DataFrame, metric: str, floor: float | None) -> str:
    """The floor note of the residual-gain claim: its groups are differences, so the floor applies to the four
    trees behind them ("" when every tree learned)."""
    _, trees = _residual_gains(runs, metric)
    return floor_note(floor, {name: t.tolist() for name, t in trees.items()}) if trees else ""


def judge_claims(results: Results, spec: ModelSpec, metric: str = METRIC,
                 floor: float | None = None, plan: study.ClaimsPlan | None = None,
                 descriptive: str = "") -> list[tuple[Claim, Verdict]]:
    """Each claim of :func:`claims` whose trials ran, with its verdict (Holm within each ablation).

    The residual gains are differences, so ``floor`` applies to the four trees behind them.
    ``plan`` (:func:`dla_repro.experiments.study.preregister` of :func:`claims`): the
    claims must be the pre-registered ones (else ``study.PlanError``) and each
    verdict records the plan's hash.  ``descriptive``: as declared in :func:`claims`.
    """
    declared = {c.text: c for c in claims(spec, floor, metric, descriptive)}
    gains, _ = _residual_gains(results.runs, metric)
    judged = []
    for v in study.judge(list(declared.values()), results.runs, gains, plan=plan):
        if v.a == "deep gain":
            note = residual_floor_note(results.runs, metric, floor)
            if note:
                v = dataclasses.replace(v, verdict=INCONCLUSIVE, note=note)
        judged.append((declared[v.claim], v))
    return judged


def claims_frame(judged: Sequence[tuple[Claim, Verdict]]) -> pd.DataFrame:
    """The verdicts as a table, the ablation and the paper's statement first (``dla_classification_claims.csv``)."""
    table = claims_table([v for _, v in judged])
    if len(table):
        table.insert(0, "paper", [c.statement for c, _ in judged])
        table.insert(0, "ablation", [c.family for c, _ in judged])
    return table


def claims_markdown(judged: Sequence[tuple[Claim, Verdict]], context: str = "") -> str:
    """The closing cell: the shared claims table with the paper's statements, and how to read it."""
    if not judged:
        return "No ablation ran, so no claim was tested."
    head = f"**What this run shows** ({context})" if context else "**What this run shows**"
    counts = pd.Series([v.verdict for _, v in judged]).value_counts()
    footer = "Verdicts: " + ", ".join(f"{n} {v}" for v, n in counts.items()) + ". " + VERDICT_RULE
    table = study.claims_markdown([v for _, v in judged], [f"{_LABELS[c.family]}: {c.statement}" for c, _ in judged],
                                  footer=footer)
    return head + "\n\n" + table


VERDICT_RULE = (f"Here the smallest effect of interest is {MIN_EFFECT:g} top-1, the ≈ margin ±{KERNEL_TOLERANCE:g}, "
                "the families are the three ablations, and a side at or below twice chance has not learned (no "
                "verdict); *inconclusive at this budget* means more seeds, data or epochs would be needed to tell.")


def paper_vs_ours(results: Results, spec: ModelSpec, dataset: str, metric: str = METRIC) -> pd.DataFrame:
    """The reference numbers (:mod:`.reference`: timm's evaluation of the authors' weights) beside ours.

    One row per configuration we trained.

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


# --------------------------------------------------- re-judging committed tables (scripts/rejudge.py)
def rejudge_claims(params: Mapping[str, Any], tables: Path,
                   table: pd.DataFrame) -> tuple[list[Claim], Callable[[Verdict], Verdict]]:
    """The hook of :mod:`dla_repro.experiments.rejudge`: the claims of a run with the notebook's ``params``
    (:func:`claims` with the run's model and :func:`learned_floor`), and what the notebook does to a verdict
    after ``study.judge`` -- as :func:`judge_claims`, the residual gains' floor applies to the four trees
    (:func:`residual_floor_note`, from ``dla_classification_runs.csv`` in ``tables``)."""
    from ..rejudge import synthetic_config

    config = synthetic_config(params)
    if config is None:
        raise ValueError("dla_classification on real data: its number of classes (the floor) is not recorded")
    num_classes = len(config.label_names)
    spec = ModelSpec(params["variant"], num_classes, tuple(params["channels"]), tuple(params["deep_levels"]))
    floor = learned_floor(num_classes)
    runs_path = Path(tables) / "dla_classification_runs.csv"
    runs = pd.read_csv(runs_path) if runs_path.is_file() else pd.DataFrame()

    def post(v: Verdict) -> Verdict:  # as judge_claims: the residual gains' floor applies to the four trees
        if v.a != "deep gain":
            return v
        if runs.empty:
            raise FileNotFoundError(f"{runs_path}: needed for the floor of the residual-gain claim")
        note = residual_floor_note(runs, METRIC, floor)
        return dataclasses.replace(v, verdict=INCONCLUSIVE, note=note) if note else v

    return claims(spec, floor, descriptive=short_budget(params.get("dataset", ""), params.get("iterations", 0))), post


def runs_groups(runs: pd.DataFrame) -> dict[str, dict[int, float]]:
    """The hook of :mod:`dla_repro.experiments.rejudge`: the groups (sides that are not trials) the notebook
    derives from its runs table for ``study.judge`` -- as :func:`judge_claims`, the per-seed residual gains
    (``{seed: gain}``)."""
    gains, _ = _residual_gains(runs, METRIC)
    return gains
