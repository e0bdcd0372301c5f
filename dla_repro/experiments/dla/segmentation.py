"""DLA §4.2 / §5.3 (arXiv 1707.06484; notebook ``dla/03_segmentation``): DLA-Up vs an FCN-style decoder.

The study (:mod:`dla_repro.experiments.study`) with this paper's pieces:

* :data:`TRIALS` -- ``fcn`` (classifier on the deepest level, upsampled ×32 in one
  step), ``ida_up`` (DLA-Up, 3×3 nodes: the paper) and ``ida_up_k1`` (DLA-Up with
  1×1 nodes), all on one backbone (:func:`build_model`, :func:`make_trials`);
* :func:`run` -- the study; :func:`evaluate` -- after training, the per-class IoU of the final model on the
  validation split (``iou_<class>`` columns);
* :func:`claims` -- the paper's statements, declared before training;
* :func:`per_class_table`, :func:`summarize`, :func:`plain_baseline` -- tables:
  per (trial, seed, class) IoU; mean ± sd over seeds; the plain calibration
  baseline's per-class IoU from ``results/tables/synthetic_calibration.csv``;
* :func:`plot_per_class`, :func:`plot_curves`, :func:`predict_examples` +
  :func:`plot_examples` -- the figures.
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
from ...metrics.segmentation import dataset_confusion, scores_from_confusion
from ...models.dla_up import create_dla_up
from .. import study
from ..study import Claim

__all__ = [
    "TRIALS",
    "build_model",
    "make_trials",
    "run",
    "evaluate",
    "claims",
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
    "fcn": dict(decoder="fcn"),
    "ida_up": dict(decoder="ida_up", node_kernel=3),
    "ida_up_k1": dict(decoder="ida_up", node_kernel=1),
}
MIN_EFFECT = 0.01  # one IoU point: the smallest difference of interest


# ----------------------------------------------------------------------------- models
def build_model(
    num_classes: int,
    backbone: str = "dlarepro_dla34",
    tiny: bool = True,
    down_ratio: int = 2,
    pretrained: bool = False,
    **settings: Any,
) -> nn.Module:
    """A DLA-Up / FCN segmenter: ``settings`` are ``create_dla_up`` keywords (a :data:`TRIALS` recipe).

    ``tiny=True`` gives a ``dlarepro_*`` backbone the CPU-sized widths
    (``dla_repro.models.backbones``).  ``pretrained=True`` loads the backbone's
    ImageNet weights through timm (the paper fine-tunes from ImageNet; needs the
    weights reachable).
    """
    return create_dla_up(backbone, num_classes, down_ratio=down_ratio, pretrained=pretrained, tiny=tiny, **settings)


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


def run(data: study.StudyData, trials: Sequence[Trial], config: TrainConfig, seeds: Sequence[int],
        eval_batch_size: int = 64, name: str = "dla_segmentation") -> study.StudyResult:
    """The study: every trial × seed, per-pixel cross-entropy, then :func:`evaluate` on each final model."""
    return study.run(name, trials, data, config, seeds, SegmentationTask(data.num_classes),
                     evaluate=functools.partial(evaluate, batch_size=eval_batch_size))


def evaluate(model: nn.Module, data: study.StudyData, batch_size: int = 64) -> dict[str, float]:
    """``iou_<class>`` of the final model on the evaluation split (NaN: class in neither prediction nor truth)."""
    iou = scores_from_confusion(dataset_confusion(model, data.val, data.num_classes, batch_size))["iou_per_class"]
    return dict(zip(_iou_columns(data.class_names), iou.float().tolist()))


def _iou_columns(class_names: Sequence[str]) -> list[str]:
    return [f"iou_{n}" for n in class_names]


# ----------------------------------------------------------------------------- claims
def claims(fine_classes: Sequence[str] = (), class_names: Sequence[str] | None = None,
           baseline: pd.DataFrame | None = None) -> list[Claim]:
    """The paper's statements (§4.2, §5.3), declared before training.

    1. DLA-Up (IDA-up, 3×3 nodes) has a higher mIoU than the FCN-style decoder;
    2. … and a higher IoU on the fine structures (``fine_classes`` that are among
       ``class_names``, averaged per seed);
    3. 3×3 nodes beat 1×1 nodes in the dense decoder (§3.3: 3×3 for dense prediction);
    4. reference: DLA-Up's fine-structure IoU vs the plain calibration ``baseline``
       (a different network *and* budget -- context, not an ablation; judged
       against the group ``"plain"``, see :func:`baseline_groups`).

    Every directional claim needs one IoU point (:data:`MIN_EFFECT`) besides the noise:
    two models that both score ≈ 0 on a class are not told apart.
    """
    fine_classes = [c for c in fine_classes if class_names is None or c in class_names]
    fine = tuple(f"iou_{c}" for c in fine_classes)
    fine_label = f"IoU({', '.join(fine_classes)})"
    out = [Claim("DLA-Up segments better than the FCN-style decoder", "ida_up", "fcn", "val_miou", label="mIoU",
                 min_effect=MIN_EFFECT)]
    if fine:
        out.append(Claim("DLA-Up recovers fine structures the FCN-style decoder misses", "ida_up", "fcn", fine,
                         label=fine_label, min_effect=MIN_EFFECT))
    out.append(Claim("3×3 aggregation nodes beat 1×1 for dense prediction", "ida_up", "ida_up_k1", "val_miou",
                     label="mIoU", min_effect=MIN_EFFECT, labels=("ida_up (3×3)", "ida_up_k1 (1×1)")))
    if fine and baseline is not None and not baseline.empty:
        budget = f"{int(baseline['n_train'].iloc[0])} images × {int(baseline['epochs'].iloc[0])} epochs"
        out.append(Claim("Reference: DLA-Up's fine-structure IoU vs the plain calibration baseline", "ida_up", "plain",
                         fine, label=fine_label, min_effect=MIN_EFFECT, labels=("ida_up", f"plain ({budget})"),
                         paired=False))  # another network, budget and run: two independent groups
    return out


def baseline_groups(baseline: pd.DataFrame | None, fine_classes: Sequence[str]) -> dict[str, list[float]]:
    """``{"plain": per-seed mean IoU of the fine classes}`` of the calibration baseline (for :func:`study.judge`)."""
    if baseline is None or baseline.empty:
        return {}
    return {"plain": baseline[baseline["class"].isin(list(fine_classes))].groupby("seed")["iou"].mean().tolist()}


# ----------------------------------------------------------------------------- tables
def per_class_table(runs: pd.DataFrame, class_names: Sequence[str]) -> pd.DataFrame:
    """Long table: one row per (trial, seed, class) with its IoU."""
    cols = _iou_columns(class_names)
    long = runs.melt(id_vars=["trial", "seed"], value_vars=cols, var_name="class", value_name="iou")
    long["class"] = long["class"].str.removeprefix("iou_")
    return long


def summarize(runs: pd.DataFrame, class_names: Sequence[str], fine_classes: Sequence[str] = ()) -> pd.DataFrame:
    """Per trial: mean and sd over seeds of mIoU, pixel accuracy, fine-structure IoU; params, training time."""
    df = runs.assign(miou=runs["val_miou"])
    metrics = ["miou", "val_pixel_acc"]
    fine = [f"iou_{c}" for c in fine_classes if c in class_names]
    if fine:
        df["iou_fine"] = df[fine].mean(axis=1, skipna=True)
        metrics.append("iou_fine")
    table = study.summarize(df, metrics, first=["n_params"])
    table["train_seconds_mean"] = df.groupby("trial", sort=False)["train_seconds"].mean().to_numpy()
    return table


def plain_baseline(calibration: pd.DataFrame, image_size: int = 64) -> pd.DataFrame:
    """The plain baseline's segmentation rows of the calibration table: ``seed, class, iou`` (+ mIoU)."""
    if calibration is None or calibration.empty:
        return pd.DataFrame(columns=["seed", "class", "iou", "n_train", "epochs"])
    seg = calibration[(calibration["task"] == "segmentation") & (calibration["image_size"] == image_size)]
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
def plot_per_class(long: pd.DataFrame, baseline: pd.DataFrame | None = None, ax=None):
    """IoU per class, one bar per trial (mean over seeds, seeds as dots); the plain baseline as markers."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    if ax is None:
        fig, ax = plt.subplots(figsize=(max(7.0, 0.75 * long["class"].nunique() + 2), 4.2))
    else:
        fig = ax.figure
    order = list(dict.fromkeys(long["class"]))
    sns.barplot(data=long, x="class", y="iou", hue="trial", order=order, errorbar=None, ax=ax, alpha=0.85)
    sns.stripplot(data=long, x="class", y="iou", hue="trial", order=order, dodge=True, size=3, legend=False,
                  palette=dict.fromkeys(long["trial"].unique(), "0.15"), ax=ax)
    if baseline is not None and not baseline.empty:
        base = baseline[baseline["class"].isin(order)].groupby("class")["iou"].mean().reindex(order)
        ax.scatter(range(len(order)), base.values, marker="_", s=400, color="crimson", zorder=5,
                   label="plain baseline (calibration)")
    ax.set_ylim(0, 1)
    ax.set_xlabel("")
    ax.set_ylabel("IoU (validation)")
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
def rejudge_claims(params: Mapping[str, Any], tables: Path,
                   table: pd.DataFrame) -> tuple[list[Claim], Callable[[Verdict], Verdict]]:
    """The hook of :mod:`dla_repro.experiments.rejudge`: the claims of a run with the notebook's ``params``
    (:func:`claims` with its ``fine_classes``, the synthetic data's class names and the plain baseline the
    notebook wrote beside its claims, ``dla_segmentation_plain_baseline.csv`` in ``tables``); nothing is done
    to a verdict after ``study.judge``."""
    from ..rejudge import synthetic_config, unchanged

    config = synthetic_config(params)
    baseline_path = Path(tables) / "dla_segmentation_plain_baseline.csv"
    baseline = pd.read_csv(baseline_path) if baseline_path.is_file() else None
    names = config.mask_names if config is not None else None
    return claims(params["fine_classes"], names, baseline), unchanged
