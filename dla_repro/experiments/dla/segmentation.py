"""DLA §4.2 / §5.3 (arXiv 1707.06484; notebook ``dla/03_segmentation``): DLA-Up vs shallow skip aggregation.

The paper's point for dense prediction is *iterative deep* aggregation: DLA-Up
merges the levels from deep to shallow through a chain of nodes (§4.2), where
skip connections (FCN-8s, U-Net, FPN) aggregate *shallowly*, each level joining
once (§3, Fig. 2(b) vs (c)).  The fair test of that claim holds everything else
equal -- backbone, levels read, projection, upsampler, output stride and
parameter count -- and changes only how the levels are merged.

The study (:mod:`dla_repro.experiments.study`) with this paper's pieces:

* :data:`TRIALS` -- on one backbone (:func:`build_model`, :func:`make_trials`):

  - ``ida_up`` -- DLA-Up, 3×3 nodes, prediction at stride ``down_ratio`` (the paper);
  - ``skip`` -- the shallow one-step skip decoder at the same stride, its width
    chosen so that its parameter count matches ``ida_up``'s
    (:class:`~dla_repro.models.dla_up.SkipDecoder`, :func:`~dla_repro.models.dla_up.skip_width`);
  - ``ida_up_k1`` -- DLA-Up with 1×1 nodes, every step widened by one factor to
    ``ida_up``'s parameter count (``match_params=True``): the node-kernel ablation
    at matched size (a 1×1 node has a ninth of a 3×3 node's weights; unwidened,
    the 1×1 decoder is about a fifth of the 3×3 one on the tiny backbone);
  - ``fcn`` -- FCN-32s: the classifier on the deepest level, upsampled ×32 in one
    step.  It differs from DLA-Up in output stride (on 64-px inputs a 2×2 score
    map against 32×32), so it is only a labelled *reference* row, not the
    baseline of a claim;

* :func:`run` -- the study; :func:`evaluate` -- after training, the per-class IoU
  of the final model on the validation split (``iou_<class>``) and the per-class
  F-score within ``fine_tolerance`` pixels (``ftol_<class>``,
  :func:`dla_repro.metrics.segmentation.tolerant_fscore`), in one pass;
* :func:`claims` -- the paper's statements, declared before training;
  :func:`claim_arms` -- the claims' arms for ``tests/test_claim_arms.py``;
* :func:`describe`, :func:`per_class_table`, :func:`summarize`, :func:`plain_baseline` -- tables:
  the trials' decoders, widths, strides and sizes; per (trial, seed, class) IoU and
  tolerant F; mean ± sd over seeds; the plain calibration baseline's per-class IoU
  from ``results/tables/synthetic_calibration.csv``;
* :func:`plot_per_class`, :func:`plot_curves`, :func:`predict_examples` +
  :func:`plot_examples` -- the figures.

Fine structures.  The synthetic (v1) lines are one pixel wide and the dots 2–3 px:
IoU counts only exact overlaps, so a line drawn one pixel off scores 0, and at a
short budget every arm -- the plain baseline included -- scored IoU 0 on them,
which tests nothing.  The fine-structure claim is therefore judged on the
tolerant F-score (1 px by default: a predicted line pixel is a hit when a true
one is within one pixel, and vice versa), the per-class IoU is still reported.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ...analysis.claims import Verdict
from ...engine import SegmentationTask, TrainConfig, Trial
from ...labels import IGNORE_INDEX
from ...metrics.segmentation import SegmentationMetrics, TolerantFScore, dataset_metrics
from ...models.aggregation import AggregationNode
from ...models.dla_up import count_params, create_dla_up
from .. import study
from ..study import Claim

__all__ = [
    "TRIALS",
    "REFERENCE",
    "FINE_TOLERANCE",
    "MATCHED",
    "build_model",
    "make_trials",
    "describe",
    "run",
    "evaluate",
    "claims",
    "claim_arms",
    "pilot_baseline",
    "baseline_groups",
    "per_class_table",
    "summarize",
    "plain_baseline",
    "plot_per_class",
    "plot_curves",
    "predict_examples",
    "plot_examples",
    "rejudge_claims",
]

#: The experiment, by trial name: ``create_dla_up`` settings.
TRIALS: dict[str, dict[str, Any]] = {
    "ida_up": dict(decoder="ida_up", node_kernel=3),
    "skip": dict(decoder="skip", node_kernel=3),
    "ida_up_k1": dict(decoder="ida_up", node_kernel=1, match_params=True),
    "fcn": dict(decoder="fcn"),
}
REFERENCE = "fcn"  # a trial shown for reference only (another output stride): no claim's baseline
MIN_EFFECT = 0.01  # one IoU / F point: the smallest difference of interest
FINE_TOLERANCE = 1.0  # pixels: a thin-class pixel one pixel off still counts (metrics.segmentation.tolerant_fscore)
MATCHED = 0.05  # the matched claims' arms have parameter counts within ±5 % (checked by study.arm_problems)


# ----------------------------------------------------------------------------- models
def build_model(
    num_classes: int,
    backbone: str = "dlarepro_dla34",
    tiny: bool = True,
    down_ratio: int = 2,
    pretrained: bool = False,
    **settings: Any,
) -> nn.Module:
    """A DLA-Up / skip / FCN segmenter: ``settings`` are ``create_dla_up`` keywords (a :data:`TRIALS` recipe).

    ``tiny=True`` gives a ``dlarepro_*`` backbone the CPU-sized widths
    (``dla_repro.models.backbones``).  ``pretrained=True`` loads the backbone's
    ImageNet weights through timm (the paper fine-tunes from ImageNet; needs the
    weights reachable).
    """
    return create_dla_up(backbone, num_classes, down_ratio=down_ratio, pretrained=pretrained, tiny=tiny, **settings)


def pilot_baseline(num_classes: int) -> nn.Module:
    """The segmentation pilot's baseline (``python -m dla_repro.experiments.pilot --task segmentation --baseline
    dla_repro.experiments.dla.segmentation:pilot_baseline``): the claims' baseline arm, the shallow skip decoder
    on the tiny DLA-34 -- never DLA-Up, the method under test."""
    return build_model(num_classes, **TRIALS["skip"])


def make_trials(
    names: Sequence[str],
    num_classes: int,
    backbone: str = "dlarepro_dla34",
    tiny: bool = True,
    down_ratio: int = 2,
    pretrained: bool = False,
) -> list[Trial]:
    """One trial per name of :data:`TRIALS` on the shared backbone."""
    shared = dict(backbone=backbone, tiny=tiny, down_ratio=down_ratio, pretrained=pretrained)
    return study.trial_table(TRIALS, names, build_model, num_classes=num_classes, logged=shared, **shared)


def _output_stride(model: nn.Module) -> int:
    return int(model.stride if model.decoder_name == "fcn" else model.down_ratio)


def _widths(model: nn.Module) -> str:
    dec = model.decoder
    if hasattr(dec, "widths"):  # DLA-Up: one width per step, deepest first
        return "/".join(str(w) for w in dec.widths)
    return str(getattr(dec, "width", dec.out_channels))


def describe(models: Mapping[str, nn.Module], reference: str = "ida_up") -> pd.DataFrame:
    """One row per model: decoder, node kernel, decoder width(s), output stride, parameters (whole model, and
    decoder + classifier) and the gap to ``reference``'s count (the ±5 % of the matched claims)."""
    rows = []
    for name, m in models.items():
        kernels = sorted({mod.kernel_size for mod in m.decoder.modules() if isinstance(mod, AggregationNode)})
        rows.append({"trial": name, "decoder": m.decoder_name, "node kernel": "/".join(map(str, kernels)) or "-",
                     "width": _widths(m), "output stride": _output_stride(m), "params": count_params(m),
                     "decoder + classifier params": count_params(m.decoder) + count_params(m.classifier)})
    df = pd.DataFrame(rows)
    if reference in set(df["trial"]):
        ref = float(df.loc[df["trial"] == reference, "params"].iloc[0])
        df[f"params vs {reference}"] = (df["params"] / ref - 1).map(lambda x: f"{x:+.2%}")
    return df


def run(data: study.StudyData, trials: Sequence[Trial], config: TrainConfig, seeds: Sequence[int],
        eval_batch_size: int = 64, name: str = "dla_segmentation",
        fine_tolerance: float = FINE_TOLERANCE) -> study.StudyResult:
    """The study: every trial × seed, per-pixel cross-entropy, then :func:`evaluate` on each final model.

    The tolerance of the fine-structure F-score is logged on the sweep run
    (``fine_tolerance_px``) and kept in each row (``fine_tolerance``).
    """
    return study.run(name, trials, data, config, seeds, SegmentationTask(data.num_classes),
                     evaluate=functools.partial(evaluate, batch_size=eval_batch_size, fine_tolerance=fine_tolerance),
                     params={"fine_tolerance_px": fine_tolerance})


def evaluate(model: nn.Module, data: study.StudyData, batch_size: int = 64,
             fine_tolerance: float = FINE_TOLERANCE) -> dict[str, Any]:
    """``iou_<class>`` and ``ftol_<class>`` (F-score within ``fine_tolerance`` px) of the final model on the
    evaluation split, one pass (NaN: class in neither prediction nor truth), and the tolerance as text."""
    seg, tol = dataset_metrics(model, data.val, [SegmentationMetrics(data.num_classes),
                                                 TolerantFScore(data.num_classes, fine_tolerance)], batch_size)
    iou, f = seg.compute(per_class=True)["iou_per_class"], tol.compute()["f"]
    return {**dict(zip(_iou_columns(data.class_names), iou.float().tolist())),
            **dict(zip(_ftol_columns(data.class_names), f.float().tolist())),
            "fine_tolerance": f"{fine_tolerance:g} px"}


def _iou_columns(class_names: Sequence[str]) -> list[str]:
    return [f"iou_{n}" for n in class_names]


def _ftol_columns(class_names: Sequence[str]) -> list[str]:
    return [f"ftol_{n}" for n in class_names]


# ----------------------------------------------------------------------------- claims
def claims(fine_classes: Sequence[str] = (), class_names: Sequence[str] | None = None,
           baseline: pd.DataFrame | None = None, *, fine_tolerance: float = FINE_TOLERANCE,
           down_ratio: int = 2) -> list[Claim]:
    """The paper's statements (§3, §4.2, §5.3), declared before training.

    1. DLA-Up (iterative deep aggregation) has a higher mIoU than the shallow
       one-step skip decoder at the same output stride and parameter count
       (``matched``: :data:`MATCHED`) -- the paper's point, tested alone;
    2. … and recovers fine structures better: the F-score within
       ``fine_tolerance`` px of the ``fine_classes`` that are among
       ``class_names``, averaged per seed (same arms, ``matched``);
    3. 3×3 nodes beat 1×1 nodes in the dense decoder (§3.3: 3×3 for dense
       prediction), the 1×1 arm widened to the same parameter count (``matched``);
    4. reference: DLA-Up vs FCN-32s (output stride ``down_ratio`` vs 32): stride
       and aggregation change together, so this row is context, not a test of
       aggregation;
    5. reference: DLA-Up's fine-structure IoU vs the plain calibration
       ``baseline`` (a different network *and* budget; judged against the group
       ``"plain"``, see :func:`baseline_groups`; the calibration table has IoU
       only).

    Every directional claim needs one point (:data:`MIN_EFFECT`) besides the
    noise: two models that both score ≈ 0 on a class are not told apart.
    """
    fine_classes = [c for c in fine_classes if class_names is None or c in class_names]
    fine_f = tuple(f"ftol_{c}" for c in fine_classes)
    fine_iou = tuple(f"iou_{c}" for c in fine_classes)
    f_label = f"F ±{fine_tolerance:g} px({', '.join(fine_classes)})"
    skip_labels = ("ida_up (deep)", "skip (shallow)")
    out = [Claim("DLA-Up (iterative deep aggregation) beats a shallow one-step skip decoder at the same output stride",
                 "ida_up", "skip", "val_miou", label="mIoU", min_effect=MIN_EFFECT, labels=skip_labels,
                 matched=MATCHED)]
    if fine_f:
        out.append(Claim("DLA-Up recovers fine structures better than the shallow skip decoder", "ida_up", "skip",
                         fine_f, label=f_label, min_effect=MIN_EFFECT, labels=skip_labels, matched=MATCHED))
    out.append(Claim("3×3 aggregation nodes beat 1×1 nodes at matched parameters for dense prediction", "ida_up",
                     "ida_up_k1", "val_miou", label="mIoU", min_effect=MIN_EFFECT,
                     labels=("ida_up (3×3)", "ida_up_k1 (1×1, widened)"), matched=MATCHED))
    out.append(Claim(f"Reference: DLA-Up vs the FCN-32s decoder (output stride {down_ratio} vs 32)", "ida_up",
                     REFERENCE, "val_miou", label="mIoU", min_effect=MIN_EFFECT,
                     labels=(f"ida_up (stride {down_ratio})", "fcn (stride 32)")))
    if fine_iou and baseline is not None and not baseline.empty:
        out.append(_plain_claim(fine_classes, baseline))
    return out


def _plain_claim(fine_classes: Sequence[str], baseline: pd.DataFrame) -> Claim:
    fine = tuple(f"iou_{c}" for c in fine_classes)
    budget = f"{int(baseline['n_train'].iloc[0])} images × {int(baseline['epochs'].iloc[0])} epochs"
    return Claim("Reference: DLA-Up's fine-structure IoU vs the plain calibration baseline", "ida_up", "plain",
                 fine, label=f"IoU({', '.join(fine_classes)})", min_effect=MIN_EFFECT,
                 labels=("ida_up", f"plain ({budget})"),
                 paired=False)  # another network, budget and run: two independent groups


def baseline_groups(baseline: pd.DataFrame | None, fine_classes: Sequence[str]) -> dict[str, list[float]]:
    """``{"plain": per-seed mean IoU of the fine classes}`` of the calibration baseline (for :func:`study.judge`)."""
    if baseline is None or baseline.empty:
        return {}
    return {"plain": baseline[baseline["class"].isin(list(fine_classes))].groupby("seed")["iou"].mean().tolist()}


def claim_arms() -> study.ClaimArms:
    """The claims' arms for ``tests/test_claim_arms.py`` (:func:`study.arm_problems`).

    The claims as the notebook declares them on the synthetic data (its class
    names, fine classes ``line`` and ``dot``; the plain baseline is a group, not
    checked), a builder for every trial of :data:`TRIALS` with the notebook's
    ``quick`` settings (tiny DLA-34, stride 2), and a 1×3×32×32 batch.
    """
    from ...data.synthetic import SyntheticConfig

    names = SyntheticConfig(image_size=32).mask_names
    build = {t: functools.partial(build_model, len(names), **TRIALS[t]) for t in TRIALS}
    return study.ClaimArms(claims(["line", "dot"], names), build, torch.randn(1, 3, 32, 32))


# ----------------------------------------------------------------------------- tables
def per_class_table(runs: pd.DataFrame, class_names: Sequence[str]) -> pd.DataFrame:
    """Long table: one row per (trial, seed, class) with its IoU and, when measured, its tolerant F (``ftol``)."""
    cols = _iou_columns(class_names)
    ids = ["trial", "seed"] + (["fine_tolerance"] if "fine_tolerance" in runs else [])
    long = runs.melt(id_vars=ids, value_vars=cols, var_name="class", value_name="iou")
    long["class"] = long["class"].str.removeprefix("iou_")
    ftol = _ftol_columns(class_names)
    if all(c in runs for c in ftol):  # the same melt order: class by class, the runs' rows within each
        long["ftol"] = runs.melt(id_vars=ids, value_vars=ftol, value_name="ftol")["ftol"].to_numpy()
    return long


def summarize(runs: pd.DataFrame, class_names: Sequence[str], fine_classes: Sequence[str] = ()) -> pd.DataFrame:
    """Per trial: mean and sd over seeds of mIoU, pixel accuracy, the fine structures' IoU and tolerant F
    (``iou_fine``, ``ftol_fine``: means over the fine classes per seed); params, training time."""
    df = runs.assign(miou=runs["val_miou"])
    metrics = ["miou", "val_pixel_acc"]
    for kind in ("iou", "ftol"):
        fine = [f"{kind}_{c}" for c in fine_classes if c in class_names and f"{kind}_{c}" in runs]
        if fine:
            df[f"{kind}_fine"] = df[fine].mean(axis=1, skipna=True)
            metrics.append(f"{kind}_fine")
    table = study.summarize(df, metrics, first=["n_params", "fine_tolerance"])
    table["train_seconds_mean"] = df.groupby("trial", sort=False)["train_seconds"].mean().to_numpy()
    return table


def plain_baseline(calibration: pd.DataFrame, image_size: int = 64, version: str = "synthetic-v1") -> pd.DataFrame:
    """The plain baseline's segmentation rows of the calibration table for this data (``version`` at
    ``image_size``): ``seed, class, iou`` (+ mIoU); empty when the table has none (e.g. synthetic-v2, which the
    calibration never measured)."""
    if calibration is None or calibration.empty:
        return pd.DataFrame(columns=["seed", "class", "iou", "n_train", "epochs"])
    seg = calibration[(calibration["task"] == "segmentation") & (calibration["image_size"] == image_size)
                      & (calibration["synthetic_version"] == version)]
    rows = []
    for _, r in seg.iterrows():
        if r["metric"].startswith("iou_"):
            rows.append({"seed": int(r["seed"]), "class": r["metric"][4:], "iou": float(r["value"]),
                         "n_train": int(r["n_train"]), "epochs": int(r["epochs"])})
        elif r["metric"] == "miou":
            rows.append({"seed": int(r["seed"]), "class": "mIoU", "iou": float(r["value"]),
                         "n_train": int(r["n_train"]), "epochs": int(r["epochs"])})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------ plots
def plot_per_class(long: pd.DataFrame, baseline: pd.DataFrame | None = None, ax=None, value: str = "iou"):
    """``value`` (``iou``, or ``ftol``: the tolerant F) per class, one bar per trial (mean over seeds, seeds as
    dots); the plain baseline's IoU as markers (on the IoU figure only: it has no tolerant F)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    if ax is None:
        fig, ax = plt.subplots(figsize=(max(7.0, 0.75 * long["class"].nunique() + 2), 4.2))
    else:
        fig = ax.figure
    order = list(dict.fromkeys(long["class"]))
    sns.barplot(data=long, x="class", y=value, hue="trial", order=order, errorbar=None, ax=ax, alpha=0.85)
    sns.stripplot(data=long, x="class", y=value, hue="trial", order=order, dodge=True, size=3, legend=False,
                  palette=dict.fromkeys(long["trial"].unique(), "0.15"), ax=ax)
    if value == "iou" and baseline is not None and not baseline.empty:
        base = baseline[baseline["class"].isin(order)].groupby("class")["iou"].mean().reindex(order)
        ax.scatter(range(len(order)), base.values, marker="_", s=400, color="crimson", zorder=5,
                   label="plain baseline (calibration)")
    ax.set_ylim(0, 1)
    ax.set_xlabel("")
    tolerance = long["fine_tolerance"].iloc[0] if "fine_tolerance" in long else "the tolerance"
    ax.set_ylabel("IoU (validation)" if value == "iou" else f"F-score within {tolerance} (validation)")
    plt.setp(ax.get_xticklabels(), rotation=35, ha="right", rotation_mode="anchor")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return fig


def plot_curves(history: pd.DataFrame, metric: str = "val_miou", ax=None):
    """Validation mIoU per epoch, mean over seeds with the seed range."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    if ax is None:
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
    else:
        fig = ax.figure
    from matplotlib.ticker import MaxNLocator

    h = history.assign(epoch=history["epoch"] + 1)  # the engine counts from 0
    sns.lineplot(data=h, x="epoch", y=metric, hue="trial", errorbar=("pi", 100), marker="o", ax=ax)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(metric.replace("val_", "validation ").replace("miou", "mIoU"))
    fig.tight_layout()
    return fig


@torch.no_grad()
def predict_examples(models: Mapping[str, nn.Module], dataset, n: int = 4):
    """The first ``n`` samples of ``dataset``: images, ground truths, and each model's label maps."""
    xs, ys = zip(*(dataset[i] for i in range(min(n, len(dataset)))))
    preds = {}
    for name, model in models.items():
        model.eval()
        preds[name] = [model(x[None]).argmax(1)[0] for x in xs]
    return list(xs), list(ys), preds


def _palette(num_classes: int) -> np.ndarray:
    import seaborn as sns

    colours = np.array(sns.color_palette("tab10" if num_classes <= 10 else "tab20", num_classes))
    return colours


def _colour(mask: torch.Tensor, palette: np.ndarray) -> np.ndarray:
    m = mask.numpy()
    out = np.zeros((*m.shape, 3))
    valid = m != IGNORE_INDEX
    out[valid] = palette[m[valid]]
    return out


def plot_examples(images, truths, preds: Mapping[str, Sequence[torch.Tensor]], class_names: Sequence[str],
                  mean: Sequence[float], std: Sequence[float]):
    """Grid: one row per sample; columns image, ground truth, then each model's prediction."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    palette = _palette(len(class_names))
    cols = 2 + len(preds)
    fig, axes = plt.subplots(len(images), cols, figsize=(1.9 * cols, 1.9 * len(images) + 0.6), squeeze=False)
    m = torch.tensor(mean).view(3, 1, 1)
    s = torch.tensor(std).view(3, 1, 1)
    for r, (x, y) in enumerate(zip(images, truths)):
        panels = [(x * s + m).clamp(0, 1).permute(1, 2, 0).numpy(), _colour(y, palette)]
        panels += [_colour(p[r], palette) for p in preds.values()]
        titles = ["image", "ground truth", *preds]
        for c, (img, title) in enumerate(zip(panels, titles)):
            ax = axes[r, c]
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=9)
    handles = [Patch(color=palette[k], label=name) for k, name in enumerate(class_names)]
    fig.tight_layout()
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, frameon=False)
    return fig


# --------------------------------------------------- re-judging committed tables (scripts/rejudge.py)
def _superseded_claims(fine_classes: Sequence[str], class_names: Sequence[str] | None) -> list[Claim]:
    """The claims of the plan before the shallow skip decoder, which compared DLA-Up with FCN-32s (another
    output stride) and unwidened 1×1 nodes.  No notebook declares them any more; they are kept, exactly as
    they were declared, only so that claims tables judged under that plan can still be re-judged."""
    fine_classes = [c for c in fine_classes if class_names is None or c in class_names]
    fine = tuple(f"iou_{c}" for c in fine_classes)
    out = [Claim("DLA-Up segments better than the FCN-style decoder", "ida_up", "fcn", "val_miou", label="mIoU",
                 min_effect=MIN_EFFECT)]
    if fine:
        out.append(Claim("DLA-Up recovers fine structures the FCN-style decoder misses", "ida_up", "fcn", fine,
                         label=f"IoU({', '.join(fine_classes)})", min_effect=MIN_EFFECT))
    out.append(Claim("3×3 aggregation nodes beat 1×1 for dense prediction", "ida_up", "ida_up_k1", "val_miou",
                     label="mIoU", min_effect=MIN_EFFECT, labels=("ida_up (3×3)", "ida_up_k1 (1×1)")))
    return out


def rejudge_claims(params: Mapping[str, Any], tables: Path,
                   table: pd.DataFrame) -> tuple[list[Claim], Callable[[Verdict], Verdict]]:
    """The hook of :mod:`dla_repro.experiments.rejudge`: the claims of a run with the notebook's ``params``
    (:func:`claims` with its ``fine_classes``, ``fine_tolerance_px`` and ``down_ratio``, the synthetic data's
    class names and the plain baseline the notebook wrote beside its claims,
    ``dla_segmentation_plain_baseline.csv`` in ``tables``), plus the superseded plan's claims (DLA-Up vs
    FCN-32s) for tables judged under it; nothing is done to a verdict after ``study.judge``."""
    from ..rejudge import synthetic_config, unchanged

    config = synthetic_config(params)
    baseline_path = Path(tables) / "dla_segmentation_plain_baseline.csv"
    baseline = pd.read_csv(baseline_path) if baseline_path.is_file() else None
    names = config.mask_names if config is not None else None
    current = claims(params["fine_classes"], names, baseline, fine_tolerance=float(params.get("fine_tolerance_px",
                     FINE_TOLERANCE)), down_ratio=int(params.get("down_ratio", 2)))
    texts = {c.text for c in current}
    return current + [c for c in _superseded_claims(params["fine_classes"], names) if c.text not in texts], unchanged
