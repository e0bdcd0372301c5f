"""DLA §4.2 / §5.4 (arXiv 1707.06484; notebook ``dla/04_boundaries``): boundary detection with DLA-Up.

Boundary detection is two-class segmentation (background, edge) trained with a
heavier weight on the edge class (the official code, ucbdrive/dla: ``edge_weight
= 10``), then scored with the BSDS500 protocol (``dla_repro.metrics.boundary``:
ODS, OIS, AP from soft edge maps, several annotators per image).

The study (:mod:`dla_repro.experiments.study`, data ``task="boundary"``) with this
paper's pieces:

* :func:`parse_trials` / :func:`make_trials` -- decoder × edge weight, one trial
  per ``"decoder:edge_weight"``, each with its weighted loss (:func:`boundary_task`).
  Decoders (:mod:`dla_repro.models.dla_up`): ``ida_up`` (DLA-Up, the paper),
  ``skip`` (the shallow one-step skip decoder at the same output stride, its
  width matched to DLA-Up's parameter count: the fair test of iterative deep vs
  shallow aggregation, DLA §3, Fig. 2(b) vs (c)) and ``fcn`` (FCN-32s: stride 32,
  so only a labelled reference);
* :func:`run` -- the study; after each training :func:`evaluate` scores the
  validation edge maps (:func:`predict_edges`, :func:`score_edges`) and keeps the
  PR curve and the first maps as artifacts;
* :func:`sobel_edges` -- the no-learning baseline: image-gradient magnitude,
  scored with the same protocol;
* :func:`tolerance` -- the matching tolerance: on the synthetic data a radius of
  :data:`SYNTHETIC_TOLERANCE_PX` pixels, on real data the benchmark's
  ``max_dist`` × diagonal, unchanged;
* :func:`claims`, :func:`claim_arms`, :func:`summarize`, :func:`plot_pr_curves`, :func:`plot_edge_maps`.

The tolerance on the synthetic data.  The benchmark matches within 0.0075 × the
image diagonal: 4.3 px on a 481×321 BSDS image, 0.68 px on a 64×64 one, where only
exact hits count.  The synthetic ground truth marks, by convention, the pixel
*before* each label change (the one whose right or lower neighbour has another
class, ``dla_repro.data.synthetic.boundary_map``); the pixel after it flanks the
same change and is as valid an answer, exactly one pixel away (a 4-neighbour).
With 0.68 px a model that marks that side scores ODS 0 instead of 1 on a straight
edge (``tests/test_metrics_boundary.py``).  One pixel is the smallest radius
that accepts both sides, and nothing further: two pixels would also accept
predictions beyond the change and across a 2–3 px dot.  It is also the
whole-pixel radius nearest the benchmark's fraction (1 px is 0.011 × the 90.5 px
diagonal of a 64-px image).  Real data (BSDS500) keeps 0.0075 × diagonal; the
tolerance that ran is recorded in the runs and summary tables (``tolerance``)
and on the sweep's MLflow run (``max_dist``, ``max_dist_px``, ``tolerance``).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ...analysis.claims import Verdict
from ...engine import TrainConfig, Trial
from ...metrics.boundary import boundary_scores, tolerance_text
from ...models.dla_up import create_dla_up
from .. import study
from ..study import Claim
from .tasks import boundary_task

__all__ = [
    "REFERENCE_TRIAL",
    "SYNTHETIC_TOLERANCE_PX",
    "MATCHED",
    "tolerance",
    "boundary_task",
    "build_model",
    "parse_trials",
    "trial_name",
    "make_trials",
    "run",
    "evaluate",
    "predict_edges",
    "sobel_edges",
    "score_edges",
    "summarize",
    "claims",
    "claim_arms",
    "baseline_groups",
    "plot_pr_curves",
    "plot_edge_maps",
    "rejudge_claims",
]

REFERENCE_TRIAL = "ida_up w=10"  # the paper's configuration: compared with the baselines
MIN_EFFECT = 0.01  # one ODS point
SYNTHETIC_TOLERANCE_PX = 1.0  # matching radius on the synthetic data: both sides of a 1-px label change (docstring)
MATCHED = 0.05  # DLA-Up and the shallow skip decoder: parameter counts within ±5 % (study.arm_problems)


def tolerance(data: study.StudyData, max_dist_px: float | None = SYNTHETIC_TOLERANCE_PX) -> float | None:
    """The matching radius in pixels for ``data``: ``max_dist_px`` on the synthetic data (``None`` or ≤ 0:
    none), always ``None`` on real data, where the benchmark's ``max_dist`` × diagonal applies."""
    if data.synthetic is None or max_dist_px is None or max_dist_px <= 0:
        return None
    return float(max_dist_px)


# ----------------------------------------------------------------------------- model
def build_model(decoder: str = "ida_up", backbone: str = "dlarepro_dla34", tiny: bool = True,
                down_ratio: int = 2) -> nn.Module:
    """DLA-Up (or the shallow ``skip`` / the ``fcn`` decoder) with the boundary head (2 classes) on ``backbone``.

    ``tiny``: a ``dlarepro_*`` backbone with the CPU-sized widths 8…256;
    ``backbone="dlarepro_dla34", tiny=False`` is the paper's DLA-34.
    """
    return create_dla_up(backbone, head="boundary", decoder=decoder, down_ratio=down_ratio, tiny=tiny)


def parse_trials(specs: Sequence[str]) -> list[tuple[str, float]]:
    """``["ida_up:10", "skip:10", "ida_up:1"]`` → ``[("ida_up", 10.0), ...]`` (decoder:edge_weight)."""
    out = []
    for spec in specs:
        decoder, sep, weight = str(spec).partition(":")
        if not sep:
            raise ValueError(f"trial {spec!r}: expected 'decoder:edge_weight', e.g. 'ida_up:10'")
        try:
            w = float(weight)
        except ValueError:
            raise ValueError(f"trial {spec!r}: edge weight {weight!r} is not a number") from None
        out.append((decoder, w))
    return out


def trial_name(decoder: str, edge_weight: float) -> str:
    return f"{decoder} w={edge_weight:g}"


def make_trials(specs: Sequence[str], backbone: str = "dlarepro_dla34", tiny: bool = True,
                down_ratio: int = 2) -> list[Trial]:
    """One trial per ``decoder:edge_weight``: the model and its weighted two-class loss."""
    trials = []
    for decoder, w in parse_trials(specs):
        build = functools.partial(build_model, decoder, backbone, tiny, down_ratio)
        build()  # fail early on a wrong decoder / backbone, before any training
        trials.append(Trial(trial_name(decoder, w), {"decoder": decoder, "edge_weight": w, "backbone": backbone,
                                                     "tiny": tiny, "down_ratio": down_ratio}, build,
                            task=boundary_task(w)))
    return trials


def run(name: str, trials: Sequence[Trial], data: study.StudyData, config: TrainConfig, seeds: Sequence[int],
        thresholds: int = 99, max_dist: float = 0.0075, n_keep: int = 4,
        max_dist_px: float | None = None) -> study.StudyResult:
    """Train every trial × seed, then score each final model's validation edge maps (:func:`evaluate`).

    Each result row gains ``ods``, ``ois``, ``ap``, ``eval_seconds`` (also the
    training run's metrics) and ``tolerance``; ``result.artifacts[(trial, seed)]``
    holds the PR ``curve`` and the first ``n_keep`` ``edge_maps``.  Matching within
    ``max_dist_px`` pixels when given (:func:`tolerance`), else ``max_dist`` × the
    diagonal; both, and the tolerance in words, are logged on the sweep run.
    """
    hook = functools.partial(evaluate, thresholds=thresholds, max_dist=max_dist, n_keep=n_keep,
                             max_dist_px=max_dist_px)
    return study.run(name, trials, data, config, seeds, evaluate=hook,
                     params={"thresholds": thresholds, "max_dist": max_dist,
                             "max_dist_px": "none" if max_dist_px is None else max_dist_px,
                             "tolerance": tolerance_text(max_dist, max_dist_px)})


def evaluate(model: nn.Module, data: study.StudyData, thresholds: int = 99, max_dist: float = 0.0075,
             n_keep: int = 4, max_dist_px: float | None = None) -> dict[str, Any]:
    """ODS / OIS / AP of the model's soft edge maps on the evaluation split, the tolerance they were scored
    with, the PR curve, the first maps."""
    t0 = time.perf_counter()
    preds = predict_edges(model, data.val)
    s = score_edges(preds, data.gts, thresholds, max_dist, max_dist_px)
    return {"ods": float(s["ods"]), "ois": float(s["ois"]), "ap": float(s["ap"]), "tolerance": s["tolerance"],
            "eval_seconds": time.perf_counter() - t0, "curve": s["curve"], "edge_maps": preds[:n_keep]}


# ------------------------------------------------------------------------ prediction
@torch.no_grad()
def predict_edges(model: nn.Module, dataset: Dataset, batch_size: int = 32) -> list[np.ndarray]:
    """Soft edge maps (softmax probability of the edge class, H×W in [0, 1]) for every image of ``dataset``."""
    model.eval()
    device = next(model.parameters()).device
    out: list[np.ndarray] = []
    bs = batch_size if _same_size(dataset) else 1
    for x, _ in DataLoader(dataset, batch_size=bs, shuffle=False):
        prob = model(x.to(device)).float().softmax(1)[:, 1]
        out.extend(p.cpu().numpy() for p in prob)
    return out


def _same_size(dataset: Dataset) -> bool:
    return hasattr(dataset, "boundaries")  # the synthetic dataset: every image has one size


def sobel_edges(images: torch.Tensor | Sequence[torch.Tensor]) -> list[np.ndarray]:
    """The no-learning baseline: Sobel gradient magnitude, maximum over colour channels, scaled to [0, 1] per image.

    ``|∇I| = sqrt((S_x ∗ I)² + (S_y ∗ I)²)`` with the 3×3 Sobel kernels
    ``S_x = [1 0 −1; 2 0 −2; 1 0 −1]``, ``S_y = S_xᵀ`` and replicated borders,
    divided by its maximum in the image (a flat image gives zeros).
    """
    sx = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
    kernel = torch.stack([sx, sx.T])[:, None]  # 2×1×3×3
    out = []
    for img in images:
        img = torch.as_tensor(img, dtype=torch.float32)
        if img.ndim == 2:
            img = img[None]
        x = F.pad(img[:, None], (1, 1, 1, 1), mode="replicate")  # C×1×(H+2)×(W+2)
        g = F.conv2d(x, kernel)  # C×2×H×W
        mag = g.pow(2).sum(1).sqrt().amax(0)
        peak = float(mag.max())
        out.append((mag / peak if peak > 0 else mag).numpy())
    return out


def score_edges(preds: Sequence[np.ndarray], gts: Sequence[Sequence[np.ndarray]], thresholds: int = 99,
                max_dist: float = 0.0075, max_dist_px: float | None = None) -> dict[str, Any]:
    """``boundary_scores`` of soft maps against the annotators (BSDS500 protocol; a radius of ``max_dist_px``
    pixels instead of ``max_dist`` × diagonal when given)."""
    return boundary_scores(list(preds), [list(g) for g in gts], thresholds=thresholds, max_dist=max_dist,
                           max_dist_px=max_dist_px)


# ---------------------------------------------------------------------------- tables
def summarize(runs: pd.DataFrame, baselines: Mapping[str, Mapping[str, float]] | None = None) -> pd.DataFrame:
    """Mean and standard deviation over seeds of ODS / OIS / AP per trial, with the matching ``tolerance``; a
    baseline is one row without spread."""
    table = study.summarize(runs, ["ods", "ois", "ap", "train_seconds"],
                            first=["decoder", "edge_weight", "n_params", "tolerance"])
    rows = [{"trial": label, "seeds": 0, "decoder": "none", "edge_weight": float("nan"), "n_params": 0,
             **({"tolerance": s["tolerance"]} if "tolerance" in s else {}),
             **{f"{m}_mean": float(s[m]) for m in ("ods", "ois", "ap")}, "train_seconds_mean": 0.0}
            for label, s in (baselines or {}).items()]
    return pd.concat([table, pd.DataFrame(rows)], ignore_index=True) if rows else table


# --------------------------------------------------------------------------- figures
def _mean_curve(curves: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Seeds aggregated at equal thresholds: the mean precision and recall."""
    both = pd.concat([c[["threshold", "precision", "recall"]] for c in curves])
    return both.groupby("threshold", sort=True).mean().reset_index()


def plot_pr_curves(curves: Mapping[tuple[str, int], pd.DataFrame], summary: pd.DataFrame,
                   baselines: Mapping[str, pd.DataFrame] | None = None, ax=None):
    """Precision-recall per configuration: thin lines per seed, a thick line for the seed mean,
    ODS / OIS / AP (seed means) in the legend, iso-F contours in grey; baselines dashed."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 5.6))
    fig = ax.figure
    r = np.linspace(0.01, 1, 200)
    for f in np.arange(0.1, 1.0, 0.1):
        p = f * r / (2 * r - f)
        ok = (p > 0) & (p <= 1)
        ax.plot(r[ok], p[ok], color="0.85", lw=0.7, zorder=0)
        ax.annotate(f"F={f:.1f}", (r[ok][-1], p[ok][-1]), fontsize=6, color="0.6")
    by = summary.set_index("trial")
    configs = list(dict.fromkeys(k[0] for k in curves))
    colors = sns.color_palette("colorblind", len(configs) + len(baselines or {}))
    for color, cfg in zip(colors, configs):
        seeds = [c for (t, _), c in curves.items() if t == cfg]
        for c in seeds:
            ax.plot(c["recall"], c["precision"], color=color, lw=0.6, alpha=0.45)
        mean = _mean_curve(seeds)
        s = by.loc[cfg]
        ax.plot(mean["recall"], mean["precision"], color=color, lw=2,
                label=f"{cfg}  ODS {s['ods_mean']:.3f} OIS {s['ois_mean']:.3f} AP {s['ap_mean']:.3f}")
    for color, (label, c) in zip(colors[len(configs):], (baselines or {}).items()):
        s = by.loc[label]
        ax.plot(c["recall"], c["precision"], color=color, lw=1.6, ls="--",
                label=f"{label}  ODS {s['ods_mean']:.3f} OIS {s['ois_mean']:.3f} AP {s['ap_mean']:.3f}")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall", ylabel="precision", aspect="equal")
    ax.legend(loc="lower left", fontsize=7.5, frameon=True)
    return fig


def plot_edge_maps(images: Sequence[np.ndarray], gts: Sequence[Sequence[np.ndarray]],
                   preds: Mapping[str, Sequence[np.ndarray]], n: int = 4):
    """Rows: validation images; columns: image, ground truth (annotators' mean), one edge map per configuration."""
    import matplotlib.pyplot as plt

    n = min(n, len(images), *(len(p) for p in preds.values())) if preds else min(n, len(images))
    cols = 2 + len(preds)
    fig, axes = plt.subplots(n, cols, figsize=(1.9 * cols, 1.9 * n + 0.3), squeeze=False)
    for i in range(n):
        panels = [("image", images[i], None), ("ground truth", np.mean(np.asarray(gts[i], float), axis=0), "gray_r")]
        panels += [(label, p[i], "gray_r") for label, p in preds.items()]
        for ax, (title, img, cmap) in zip(axes[i], panels):
            ax.imshow(img, cmap=cmap, vmin=0 if cmap else None, vmax=1 if cmap else None, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            if i == 0:
                ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------- claims
def claims(specs: Sequence[str], baselines: Sequence[str] = (), down_ratio: int = 2) -> list[Claim]:
    """The claims the configurations ``specs`` can test (ODS, one value per seed), declared before training.

    1. DLA-Up (``ida_up``) beats the shallow one-step skip decoder (``skip``) at the
       same edge weight, output stride and parameter count (``matched``:
       :data:`MATCHED`) -- the paper's point that merging shallow, fine levels with
       deep ones *iteratively* localises boundaries better than merging them once;
    2. reference: DLA-Up vs FCN-32s (``fcn``; output stride ``down_ratio`` vs 32) at
       the same edge weight -- stride and aggregation change together, so this
       row is context, not a test of aggregation;
    3. the official ``edge_weight = 10`` beats an unweighted loss (1) with DLA-Up -- a setting of the
       official code, not a claim of the paper;
    4. the learned DLA-Up (:data:`REFERENCE_TRIAL`, else the first configuration) beats each
       no-learning ``baselines`` edge map (two ODS points; its groups: :func:`baseline_groups`).
    """
    names = sorted(trial_name(d, w) for d, w in parse_trials(specs))
    out = []
    for t in names:
        decoder, _, w = t.partition(" w=")
        if decoder == "ida_up" and trial_name("skip", float(w)) in names:
            out.append(Claim("DLA-Up (iterative deep aggregation) gives better boundaries than a shallow one-step "
                             f"skip decoder at the same output stride (edge weight {w})", t,
                             trial_name("skip", float(w)), "ods", label="ODS", min_effect=MIN_EFFECT,
                             matched=MATCHED))
    for t in names:
        decoder, _, w = t.partition(" w=")
        if decoder == "ida_up" and trial_name("fcn", float(w)) in names:
            out.append(Claim(f"Reference: DLA-Up vs the FCN-32s decoder (output stride {down_ratio} vs 32, edge "
                             f"weight {w})", t, trial_name("fcn", float(w)), "ods", label="ODS",
                             min_effect=MIN_EFFECT))
    if trial_name("ida_up", 10) in names and trial_name("ida_up", 1) in names:
        out.append(Claim("edge weight 10 (official setting) beats an unweighted loss (DLA-Up)", trial_name("ida_up", 10),
                         trial_name("ida_up", 1), "ods", label="ODS", min_effect=MIN_EFFECT))
    ref = REFERENCE_TRIAL if REFERENCE_TRIAL in names else (names[0] if names else None)
    for label in baselines if ref is not None else ():
        out.append(Claim(f"learned DLA-Up beats the no-learning {label} edge map", ref, label, "ods", label="ODS",
                         min_effect=max(MIN_EFFECT, 0.02), paired=False))  # a fixed map: no seeds to pair
    return out


def baseline_groups(baselines: Mapping[str, Mapping[str, Any]], n_seeds: int) -> dict[str, list[float]]:
    """A deterministic baseline's ODS once per seed, so the standard error comes from the learned side alone."""
    return {label: [float(s["ods"])] * n_seeds for label, s in baselines.items()}


def claim_arms() -> study.ClaimArms:
    """The claims' arms for ``tests/test_claim_arms.py`` (:func:`study.arm_problems`).

    The claims the notebook declares for its ``quick`` configurations
    (``ida_up:10``, ``skip:10``, ``fcn:10``, ``ida_up:1``, the Sobel map), the
    tiny-backbone models of the configurations that differ in their *model*, and
    a 1×3×32×32 batch.  ``ida_up w=1`` has no builder here: it is ``ida_up w=10``'s
    model trained with another loss weight (:func:`boundary_task`), so the edge
    weight claim compares two trainings of one function -- what the check is meant
    to refuse for an architecture claim -- and is left out of it, as the Sobel
    map (a fixed group) is.
    """
    specs = ["ida_up:10", "skip:10", "fcn:10", "ida_up:1"]
    build = {trial_name(d, w): functools.partial(build_model, d) for d, w in parse_trials(specs) if w == 10}
    return study.ClaimArms(claims(specs, ["Sobel"]), build, torch.randn(1, 3, 32, 32))


# --------------------------------------------------- re-judging committed tables (scripts/rejudge.py)
def _superseded_claims(specs: Sequence[str]) -> list[Claim]:
    """The claims of the plan before the shallow skip decoder, which compared DLA-Up with the FCN-32s decoder
    (another output stride).  No notebook declares them any more; they are kept, exactly as they were
    declared, only so that claims tables judged under that plan can still be re-judged."""
    names = sorted(trial_name(d, w) for d, w in parse_trials(specs))
    out = []
    for t in names:
        decoder, _, w = t.partition(" w=")
        if decoder == "ida_up" and trial_name("fcn", float(w)) in names:
            out.append(Claim(f"DLA-Up (IDA-up decoder) gives better boundaries than the FCN decoder (edge weight {w})",
                             t, trial_name("fcn", float(w)), "ods", label="ODS", min_effect=MIN_EFFECT))
    return out


def rejudge_claims(params: Mapping[str, Any], tables: Path,
                   table: pd.DataFrame) -> tuple[list[Claim], Callable[[Verdict], Verdict]]:
    """The hook of :mod:`dla_repro.experiments.rejudge`: the claims of a run with the notebook's ``params``
    (:func:`claims` of its ``trials`` and ``down_ratio``, against the no-learning edge maps the claims ``table``
    compared with: its ``b`` sides that are no trial), plus the superseded plan's claims (DLA-Up vs FCN-32s)
    for tables judged under it; nothing is done to a verdict after ``study.judge``."""
    from ..rejudge import unchanged

    trials = {trial_name(d, w) for d, w in parse_trials(params["trials"])}
    baselines = sorted({b for b in table["b"] if b not in trials})
    current = claims(params["trials"], baselines, int(params.get("down_ratio", 2)))
    texts = {c.text for c in current}
    return current + [c for c in _superseded_claims(params["trials"]) if c.text not in texts], unchanged
