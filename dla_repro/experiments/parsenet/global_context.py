"""ParseNet §3 (arXiv 1506.04579; notebook ``parsenet/05_global_context``): receptive fields, feature norms, fusion ablation.

The study (:mod:`dla_repro.experiments.study`) with this paper's pieces:

* :func:`build_model` -- a ParseNet head (``dla_repro.models.parsenet``) on a
  backbone: ``dlarepro_dla34`` (``tiny``: widths 8…256) cut after level
  ``level`` (level 3: stride 8), ``vgg16`` (the FCN-32s baseline the paper builds
  on, with fc6/fc7) or any timm model name;
* :data:`TRIALS` / :func:`make_trials` + :func:`run` -- the paper's ablation: the
  FCN baseline, +global context with early / late fusion, each with and without
  L2 normalisation, and learned vs fixed γ;
* :func:`evaluate` / :func:`segmentation_scores` -- mIoU from the confusion matrix
  and, on the synthetic data, the mIoU of the context classes and the **context
  error** (among context-class pixels given the right shape, the share given the
  wrong scene: the error global context is meant to remove; the same definition
  as ``dla_repro.experiments.calibration``), plus the learned γ;
* :data:`CLAIMS` -- the paper's statements, declared before training;
* :func:`receptive_fields` / :func:`plot_receptive_field` -- theoretical and
  empirical field of the backbone's last layer (figure 1);
* :func:`feature_norms` / :func:`plot_feature_norms` -- per-layer feature norms
  (figure 2: why normalise before fusing);
* :func:`summarize`, :func:`plot_ablation` -- the table and the figure.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ...analysis.claims import Verdict
from ...analysis.receptive_field import empirical_receptive_field, extent, theoretical_receptive_field
from ...engine import SegmentationTask, TrainConfig, Trial
from ...metrics.segmentation import dataset_confusion, iou_from_confusion
from ...models.parsenet import ParseNetSegmenter, create_parsenet, vgg16_fcn
from .. import study
from ..study import Claim

__all__ = [
    "TRIALS",
    "CLAIMS",
    "METRICS",
    "build_model",
    "make_trials",
    "run",
    "evaluate",
    "segmentation_scores",
    "claims",
    "summarize",
    "receptive_fields",
    "feature_norms",
    "plot_receptive_field",
    "plot_feature_norms",
    "plot_ablation",
    "receptive_field_table",
    "sample_images",
    "rejudge_claims",
]

#: The ablation, by trial name: ParseNetHead settings.  ``fcn`` is the baseline
#: (local features only, no normalisation); the paper's ParseNet is ``early_l2``.
TRIALS: dict[str, dict[str, Any]] = {
    "fcn": dict(fusion="none", l2norm=False, learn_scale=True),
    "early": dict(fusion="early", l2norm=False, learn_scale=True),
    "late": dict(fusion="late", l2norm=False, learn_scale=True),
    "early_l2": dict(fusion="early", l2norm=True, learn_scale=True),
    "late_l2": dict(fusion="late", l2norm=True, learn_scale=True),
    "early_l2_fixed": dict(fusion="early", l2norm=True, learn_scale=False),
    "late_l2_fixed": dict(fusion="late", l2norm=True, learn_scale=False),
}
METRICS = ("eval_miou", "eval_miou_context", "eval_context_error")
MIN_EFFECT = 0.01  # one mIoU point, as in the DLA segmentation study


# ----------------------------------------------------------------------------- model
def build_model(
    num_classes: int,
    fusion: str = "early",
    l2norm: bool = True,
    learn_scale: bool = True,
    init_scale: float = 10.0,
    backbone: str = "dlarepro_dla34",
    tiny: bool = True,
    level: int = 3,
    hidden_channels: int = 0,
) -> ParseNetSegmenter:
    """A ParseNet (or, ``fusion="none", l2norm=False``, its FCN baseline) on ``backbone``.

    ``vgg16``: the FCN-32s VGG-16 with fc6/fc7 (``vgg16_fcn``).  Any other name: a
    timm model built ``features_only`` with levels 0…``level``, the last one used
    (``dlarepro_dla34``, ``tiny``: level 3 is stride 8 with 64 channels).
    """
    head = dict(fusion=fusion, l2norm=l2norm, learn_scale=learn_scale, init_scale=init_scale,
                hidden_channels=hidden_channels or None)
    if backbone == "vgg16":
        if tiny:
            raise ValueError("tiny=True applies to dlarepro_* backbones; use tiny=False with vgg16")
        return vgg16_fcn(num_classes, **head)
    return create_parsenet(backbone, num_classes, **head, tiny=tiny, out_indices=tuple(range(level + 1)))


def make_trials(names: Sequence[str], num_classes: int, **model_kwargs) -> list[Trial]:
    """One trial per name of :data:`TRIALS` (its settings are the logged parameters)."""
    return study.trial_table(TRIALS, names, build_model, num_classes=num_classes, logged={}, **model_kwargs)


# --------------------------------------------------------------------------- metrics
def segmentation_scores(cm: torch.Tensor, synthetic=None) -> dict[str, float]:
    """``miou``, ``pixel_acc`` from a confusion matrix; on synthetic data also the context scores.

    ``miou_context``: mean IoU of the context classes (``disk@scene0/1``,
    ``cross@scene0/1``).  ``context_error``: among pixels of a context shape
    predicted as *some* class of that shape, the share given the wrong scene
    (chance 1 − 1/scene types); NaN when the model finds under 1 % of those
    pixels' shape (``context_shape_recall``).
    """
    iou = iou_from_confusion(cm)
    out = {"miou": float(torch.nanmean(iou)), "pixel_acc": float(cm.diag().sum() / cm.sum().clamp(min=1))}
    if synthetic is None:
        return out
    out["miou_context"] = float(torch.nanmean(iou[synthetic.context_classes()]))
    out.update(synthetic.context_scores(cm))
    return out


def _gammas(model: nn.Module) -> dict[str, float]:
    head = getattr(model, "head", None)
    out = {}
    for part in ("local_norm", "global_norm"):
        norm = getattr(head, part, None)
        if norm is not None and hasattr(norm, "scale"):
            out[f"gamma_{part.split('_')[0]}_mean"] = float(norm.scale.detach().mean())
    return out


def evaluate(model: nn.Module, data: study.StudyData, batch_size: int = 64) -> dict[str, float]:
    """:func:`segmentation_scores` of the final model on the evaluation split (prefix ``eval_``) and its mean γ."""
    cm = dataset_confusion(model, data.val, data.num_classes, batch_size)
    scores = segmentation_scores(cm, data.synthetic)
    return {**{f"eval_{k}": v for k, v in scores.items()}, **_gammas(model)}


# ------------------------------------------------------------------------ the study
def run(
    name: str,
    trials: Sequence[str],
    data: study.StudyData,
    config: TrainConfig,
    seeds: Sequence[int],
    eval_batch_size: int = 64,
    **model_kwargs,
) -> study.StudyResult:
    """Train every trial × seed and score each final model on the evaluation split (:func:`evaluate`)."""
    return study.run(name, make_trials(trials, data.num_classes, **model_kwargs), data, config, seeds,
                     SegmentationTask(data.num_classes),
                     evaluate=functools.partial(evaluate, batch_size=eval_batch_size),
                     params={"num_classes": data.num_classes, **model_kwargs})


def summarize(runs: pd.DataFrame, metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """Mean ± std over seeds per trial, in the trial order of the runs."""
    table = study.summarize(runs, metrics, first=["fusion", "l2norm", "learn_scale"])
    if "train_seconds" in runs:
        table["train_seconds_mean"] = runs.groupby("trial", sort=False)["train_seconds"].mean().to_numpy()
    return table


def claims(equal_tolerance: float = 0.02, min_effect: float = MIN_EFFECT) -> list[Claim]:
    """The paper's statements (§3, §4) as claims, declared before training.

    Directional claims need ``min_effect`` (one mIoU point, :data:`MIN_EFFECT`) besides the noise.
    A context metric that is undefined for a model (it never found the context
    shapes) makes its claim inconclusive, saying so.

    1. global context helps: ``early_l2`` > ``fcn`` on mIoU; and on the synthetic
       data, the mechanism: lower context error, higher context-class mIoU;
    2. fusion needs normalisation: ``early_l2`` > ``early``, ``late_l2`` > ``late`` (mIoU);
    3. with normalisation early ≈ late: ``|early_l2 − late_l2| ≤ equal_tolerance`` mIoU;
    4. learning γ (the paper's choice) beats a fixed γ: ``early_l2`` > ``early_l2_fixed``.
    """
    never = "never found the shapes"
    return [
        Claim("global context helps (ParseNet > FCN baseline)", "early_l2", "fcn", "eval_miou", min_effect=min_effect),
        Claim("global context resolves context classes (lower context error)", "early_l2", "fcn",
              "eval_context_error", expect="less", min_effect=min_effect, undefined=never),
        Claim("global context helps the context classes (their mIoU)", "early_l2", "fcn", "eval_miou_context",
              min_effect=min_effect, undefined=never),
        Claim("early fusion needs normalisation", "early_l2", "early", "eval_miou", min_effect=min_effect),
        Claim("late fusion needs normalisation", "late_l2", "late", "eval_miou", min_effect=min_effect),
        Claim("with normalisation, early ≈ late fusion", "early_l2", "late_l2", "eval_miou", expect="equal",
              tolerance=equal_tolerance),
        Claim("a learned scale γ beats a fixed one", "early_l2", "early_l2_fixed", "eval_miou", min_effect=min_effect),
    ]


CLAIMS = claims()


# --------------------------------------------------------------- receptive field (fig 1)
def receptive_fields(
    model: ParseNetSegmenter,
    images: torch.Tensor,
    patch: int = 8,
    stride: int = 4,
    threshold: float = 0.05,
    large_size: int = 512,
) -> dict[str, Any]:
    """Theoretical and empirical field of the centre unit of the features the head fuses.

    That is the backbone's chosen level, or the neck's output (VGG-16's fc7) when there is one.

    ``theoretical`` at the images' size (clipped by the border when the field is
    larger than the image) and ``theoretical_full`` on a ``large_size`` canvas
    (the whole field).  ``empirical``: the noise-patch maps of each image,
    averaged (``heat``) and measured (``area``, ``fraction`` of the image,
    ``box``) at ``threshold`` of the peak.
    """
    size = tuple(images.shape[-2:])
    layer = "backbone" if isinstance(model.neck, nn.Identity) else "neck"  # the features the head sees
    theo = theoretical_receptive_field(model, layer, input_size=size)
    full = theoretical_receptive_field(model, layer, input_size=large_size)
    heats = [empirical_receptive_field(model, layer, img, patch=patch, stride=stride, threshold=threshold,
                                       seed=i).map for i, img in enumerate(images)]
    heat = torch.stack([h / h.max().clamp(min=1e-12) for h in heats]).mean(0)
    area, box = extent(heat, threshold)
    return {"theoretical": theo, "theoretical_full": full, "heat": heat, "area": area, "box": box,
            "fraction": area / (size[0] * size[1]), "threshold": threshold, "image_size": size,
            "n_images": len(images)}


def receptive_field_table(rf: Mapping[str, Any]) -> pd.DataFrame:
    """The extents as numbers: one row per field."""
    h, w = rf["image_size"]
    theo, full = rf["theoretical"], rf["theoretical_full"]
    box = rf["box"]
    emp_h = emp_w = 0
    if box is not None:
        emp_h, emp_w = box[2] - box[0] + 1, box[3] - box[1] + 1
    return pd.DataFrame([
        {"field": "theoretical (whole, large canvas)", "height": full.height, "width": full.width,
         "area_px": full.height * full.width, "fraction_of_image": full.height * full.width / (h * w),
         "clipped": full.clipped},
        {"field": f"theoretical (on the {h}x{w} image)", "height": theo.height, "width": theo.width,
         "area_px": theo.height * theo.width, "fraction_of_image": theo.height * theo.width / (h * w),
         "clipped": theo.clipped},
        {"field": f"empirical (>= {rf['threshold']:.0%} of peak, {rf['n_images']} images)", "height": emp_h,
         "width": emp_w, "area_px": rf["area"], "fraction_of_image": rf["fraction"], "clipped": False},
    ])


def plot_receptive_field(image: torch.Tensor, rf: Mapping[str, Any], mean=(0.5,) * 3, std=(0.25,) * 3):
    """Figure 1: the image with the theoretical field's box; the empirical map over it."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    rgb = (image.cpu() * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)).clamp(0, 1)
    rgb = rgb.permute(1, 2, 0).numpy()
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 4.2))
    theo, full = rf["theoretical"], rf["theoretical_full"]
    axes[0].imshow(rgb)
    axes[0].add_patch(Rectangle((theo.left - 0.5, theo.top - 0.5), theo.width, theo.height, fill=False,
                                ec="tab:red", lw=2.5))
    axes[0].set_title(f"theoretical field: {full.height}×{full.width} px\n"
                      f"({'clipped to' if theo.clipped else 'inside'} the {rgb.shape[0]}×{rgb.shape[1]} image)")
    axes[1].imshow(rgb, alpha=0.45)
    im = axes[1].imshow(rf["heat"].numpy(), cmap="magma", alpha=0.7)
    if rf["box"] is not None:
        t, l, b, r = rf["box"]
        axes[1].add_patch(Rectangle((l - 0.5, t - 0.5), r - l + 1, b - t + 1, fill=False, ec="tab:cyan", lw=2,
                                    ls="--"))
    axes[1].set_title(f"empirical field: {rf['area']} px ≥ {rf['threshold']:.0%} of peak\n"
                      f"= {rf['fraction']:.0%} of the image (≈ {math.sqrt(rf['area']):.0f} px side)")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[1], fraction=0.046, label="activation change (normalised)")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------- feature norms (fig 2)
@torch.no_grad()
def feature_norms(model: ParseNetSegmenter, images: torch.Tensor, max_positions: int = 4000,
                  seed: int = 0) -> pd.DataFrame:
    """L2 norm over channels at each position of every backbone level and of the pooled global vector.

    Long form: ``layer`` (``level<i> (stride s, C ch)``, ``global (GAP of last)``), ``norm``;
    at most ``max_positions`` sampled positions per layer.
    """
    was_training = model.training
    model.eval()
    try:
        return _feature_norms(model, images, max_positions, seed)
    finally:
        model.train(was_training)


def _feature_norms(model: ParseNetSegmenter, images: torch.Tensor, max_positions: int, seed: int) -> pd.DataFrame:
    feats = model.backbone(images)
    if isinstance(feats, dict):
        feats = list(feats.values())
    elif isinstance(feats, torch.Tensor):
        feats = [feats]
    size = images.shape[-1]
    named = [(f"level{i} (stride {size // f.shape[-1]}, {f.shape[1]} ch)", f) for i, f in enumerate(feats)]
    if not isinstance(model.neck, nn.Identity):
        f = model.neck(feats[model.feature_index])
        named.append((f"neck (stride {size // f.shape[-1]}, {f.shape[1]} ch)", f))
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for label, f in named:
        n = f.norm(dim=1).flatten()
        if n.numel() > max_positions:
            n = n[torch.randperm(n.numel(), generator=gen)[:max_positions]]
        rows += [{"layer": label, "norm": float(v)} for v in n]
    last = named[-1][1]
    g = last.mean(dim=(2, 3)).norm(dim=1)
    rows += [{"layer": "global (GAP of the fused layer)", "norm": float(v)} for v in g]
    return pd.DataFrame(rows)


def plot_feature_norms(norms: pd.DataFrame, hue: str | None = None):
    """Figure 2: distribution of per-position feature norms per layer (log scale)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(8.4, 4.2))
    sns.boxplot(data=norms, x="layer", y="norm", hue=hue, ax=ax, showfliers=False)
    ax.set_yscale("log")
    ax.set_xlabel("")
    ax.set_ylabel("‖x‖₂ over channels, per position")
    ax.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------- ablation figure
def plot_ablation(runs: pd.DataFrame, metrics: Sequence[str] = METRICS):
    """One panel per metric: each seed a dot, the mean a bar, per trial."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    metrics = [m for m in metrics if m in runs and runs[m].notna().any()]
    labels = {"eval_miou": "mIoU (all classes)", "eval_miou_context": "mIoU, context classes",
              "eval_context_error": "context error (↓; chance 0.5)"}
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 4.0), squeeze=False)
    order = list(dict.fromkeys(runs["trial"]))
    for ax, m in zip(axes[0], metrics):
        sns.barplot(data=runs, x="trial", y=m, order=order, ax=ax, errorbar=None, alpha=0.5)
        sns.stripplot(data=runs, x="trial", y=m, order=order, ax=ax, hue="seed", palette="dark", size=6,
                      legend=m == metrics[-1])
        ax.set_title(labels.get(m, m))
        ax.set_xlabel("")
        ax.set_ylabel("")
        ax.tick_params(axis="x", labelrotation=35)
        for i, trial in enumerate(order):  # say why a bar is missing instead of drawing nothing
            if not runs.loc[runs["trial"] == trial, m].notna().any():
                ax.text(i, 0.02, "undefined" if m == "eval_context_error" else "n/a", rotation=90, ha="center",
                        va="bottom", fontsize=8, color="0.35", transform=ax.get_xaxis_transform())
    fig.tight_layout()
    return fig


def sample_images(dataset, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` images of ``dataset`` picked with ``seed`` (for the field and norm figures)."""
    idx = np.random.default_rng(seed).choice(len(dataset), size=min(n, len(dataset)), replace=False)
    return torch.stack([dataset[int(i)][0] for i in sorted(idx)])


# --------------------------------------------------- re-judging committed tables (scripts/rejudge.py)
def rejudge_claims(params: Mapping[str, Any], tables: Path,
                   table: pd.DataFrame) -> tuple[list[Claim], Callable[[Verdict], Verdict]]:
    """The hook of :mod:`dla_repro.experiments.rejudge`: the claims of a run with the notebook's ``params``
    (:func:`claims` with its ``equal_tolerance``); nothing is done to a verdict after ``study.judge``."""
    from ..rejudge import unchanged

    return claims(float(params["equal_tolerance"])), unchanged
