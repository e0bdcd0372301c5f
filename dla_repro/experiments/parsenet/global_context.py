"""ParseNet §3 (arXiv 1506.04579; notebook ``parsenet/05_global_context``): receptive fields, feature norms, fusion ablation.

The study (:mod:`dla_repro.experiments.study`) with this paper's pieces:

* :func:`build_model` -- a ParseNet head (``dla_repro.models.parsenet``) on a
  backbone: ``dlarepro_dla34`` (``tiny``: widths 8…256) cut after level
  ``level`` (level 3: stride 8), ``vgg16`` (the FCN-32s baseline the paper builds
  on, with fc6/fc7) or any timm model name.  Every classifier is a small MLP of
  1×1 convolutions (``hidden_channels``; the paper's fc layers, which fusion
  comes before or after, §3.2), so early and late fusion are different
  functions; late fusion's per-branch width makes its head as large as early's;
* :data:`TRIALS` / :func:`make_trials` + :func:`run` -- the paper's ablation: the
  FCN baseline, +global context with early / late fusion, each with and without
  L2 normalisation, learned vs fixed γ, and the normalisation ablation where
  scales really differ: **multi-layer fusion** (a shallower level + the head's
  level + global context, the paper's conv4_3 + fc7 + pool6) on the backbone
  **without batch norm** (as VGG-16) -- the ``*_multi`` trials;
* :func:`evaluate` / :func:`segmentation_scores` -- mIoU from the confusion matrix
  and, on the synthetic data, the mIoU of the context classes and the **context
  error** (among context-class pixels given the right shape, the share given the
  wrong scene: the error global context is meant to remove; the same definition
  as ``dla_repro.experiments.calibration``), plus the learned γ;
* :func:`claims` / :data:`CLAIMS` -- the paper's statements, declared before
  training; :func:`claim_arms` -- their arms for ``tests/test_claim_arms.py``;
* :func:`receptive_fields` / :func:`plot_receptive_field` -- theoretical field and
  the gradient ERF of the backbone's last level on a canvas larger than the
  theoretical field (figure 1);
* :func:`feature_norms` / :func:`fusion_norms` / :func:`norm_mismatch` /
  :func:`plot_feature_norms` -- the per-position norms of every level and of
  every fused feature, before and after the L2 layer (figure 2: the mismatch
  normalisation repairs);
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
from ...analysis.receptive_field import (
    canvas,
    empirical_receptive_field,
    extent,
    gradient_receptive_field,
    theoretical_receptive_field,
)
from ...engine import SegmentationTask, TrainConfig, Trial, seed_everything
from ...metrics.segmentation import dataset_confusion, iou_from_confusion
from ...models.backbones import create_backbone
from ...models.parsenet import ParseNetSegmenter, create_parsenet, late_hidden_channels, vgg16_fcn
from ...models.segmentation import level_info, select_levels
from .. import study
from ..study import Claim

__all__ = [
    "TRIALS",
    "CLAIMS",
    "METRICS",
    "build_model",
    "make_trials",
    "pilot_baseline",
    "run",
    "evaluate",
    "segmentation_scores",
    "claims",
    "claim_arms",
    "summarize",
    "receptive_fields",
    "feature_norms",
    "fusion_norms",
    "norm_mismatch",
    "norm_trials",
    "plot_receptive_field",
    "plot_feature_norms",
    "plot_ablation",
    "receptive_field_table",
    "sample_images",
    "rejudge_claims",
]

#: The ablation, by trial name: ParseNetHead settings and the configuration.  ``fcn`` is the
#: baseline (local features only, no normalisation); the paper's ParseNet is ``early_l2``.
#: ``*_multi``: multi-layer fusion (level ``shallow_level`` + level ``level`` + global
#: context) on the backbone without batch norm -- where the fused features' scales differ
#: by a large factor (the notebook's figure 2), so "fusion needs normalisation" can be tested.
_ONE = dict(multi_layer=False, batchnorm=True)
_MULTI = dict(multi_layer=True, batchnorm=False)
TRIALS: dict[str, dict[str, Any]] = {
    "fcn": dict(fusion="none", l2norm=False, learn_scale=True, **_ONE),
    "early": dict(fusion="early", l2norm=False, learn_scale=True, **_ONE),
    "late": dict(fusion="late", l2norm=False, learn_scale=True, **_ONE),
    "early_l2": dict(fusion="early", l2norm=True, learn_scale=True, **_ONE),
    "late_l2": dict(fusion="late", l2norm=True, learn_scale=True, **_ONE),
    "early_l2_fixed": dict(fusion="early", l2norm=True, learn_scale=False, **_ONE),
    "late_l2_fixed": dict(fusion="late", l2norm=True, learn_scale=False, **_ONE),
    "early_multi": dict(fusion="early", l2norm=False, learn_scale=True, **_MULTI),
    "late_multi": dict(fusion="late", l2norm=False, learn_scale=True, **_MULTI),
    "early_multi_l2": dict(fusion="early", l2norm=True, learn_scale=True, **_MULTI),
    "late_multi_l2": dict(fusion="late", l2norm=True, learn_scale=True, **_MULTI),
}
METRICS = ("eval_miou", "eval_miou_context", "eval_context_error")
MIN_EFFECT = 0.01  # one mIoU point, as in the DLA segmentation study
HIDDEN = 64  # width of early fusion's (and the baseline's) hidden 1×1 conv
MATCHED = 0.05  # early vs late: parameter counts within ±5 %


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
    hidden_channels: int = HIDDEN,
    multi_layer: bool = False,
    batchnorm: bool = True,
    shallow_level: int | None = None,
) -> ParseNetSegmenter:
    """A ParseNet (or, ``fusion="none", l2norm=False``, its FCN baseline) on ``backbone``.

    ``vgg16``: the FCN-32s VGG-16 with fc6/fc7 (``vgg16_fcn``).  Any other name: a
    timm model built ``features_only`` with levels 0…``level``, the last one used
    (``dlarepro_dla34``, ``tiny``: level 3 is stride 8 with 64 channels).

    Classifiers: ``conv 1×1 → ReLU → conv 1×1`` with ``hidden_channels`` (0: one
    linear 1×1 conv, with which early and late fusion are the same function);
    late fusion's per-branch width is :func:`~dla_repro.models.parsenet.late_hidden_channels`,
    so its head has early's parameter count.  ``multi_layer``: fuse level
    ``shallow_level`` (default ``level - 1``; VGG-16: 3, conv4_3) with the head's
    level (resized to the shallower grid) and the global context.
    ``batchnorm=False``: the backbone without its batch norms.
    """
    if backbone == "vgg16":
        if tiny:
            raise ValueError("tiny=True applies to dlarepro_* backbones; use tiny=False with vgg16")
        fc = 4096
        shallow = ((3 if shallow_level is None else shallow_level),) if multi_layer else ()
        widths = [512] * len(shallow) + [fc]
        head = _head_kwargs(widths, num_classes, fusion, l2norm, learn_scale, init_scale, hidden_channels)
        return vgg16_fcn(num_classes, fc_channels=fc, shallow_levels=shallow, **head)
    net = create_backbone(backbone, tiny=tiny, out_indices=tuple(range(level + 1)))
    index: int | tuple[int, ...] = -1
    if multi_layer:
        shallow = level - 1 if shallow_level is None else shallow_level
        if not 0 <= shallow < level:
            raise ValueError(f"shallow_level={shallow} must be a level below level={level}")
        index = (shallow, level)
    channels = level_info(net)[0]
    widths = [channels[i] for i in index] if isinstance(index, tuple) else [channels[index]]
    head = _head_kwargs(widths, num_classes, fusion, l2norm, learn_scale, init_scale, hidden_channels)
    return create_parsenet(net, num_classes, **head, feature_index=index, batchnorm=batchnorm)


def _head_kwargs(widths, num_classes, fusion, l2norm, learn_scale, init_scale, hidden) -> dict[str, Any]:
    late = late_hidden_channels(widths, num_classes, hidden) if fusion == "late" and hidden else None
    return dict(fusion=fusion, l2norm=l2norm, learn_scale=learn_scale, init_scale=init_scale,
                hidden_channels=hidden or None, late_hidden_channels=late)


def make_trials(names: Sequence[str], num_classes: int, **model_kwargs) -> list[Trial]:
    """One trial per name of :data:`TRIALS` (its settings are the logged parameters)."""
    return study.trial_table(TRIALS, names, build_model, num_classes=num_classes, logged={}, **model_kwargs)


def pilot_baseline(num_classes: int) -> ParseNetSegmenter:
    """The pilot's ParseNet baseline (``python -m dla_repro.experiments.pilot --task segmentation --image-size 64
    --baseline dla_repro.experiments.parsenet.global_context:pilot_baseline``): the ``fcn`` trial -- local
    features only, no normalisation -- on the notebook's backbone (tiny DLA-34, level 3), never a trial with
    global context, the method under test."""
    return build_model(num_classes, **TRIALS["fcn"], tiny=True, level=3)


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
    shallow = [n.scale.detach() for n in getattr(head, "shallow_norms", ()) if hasattr(n, "scale")]
    if shallow:
        out["gamma_shallow_mean"] = float(torch.cat(shallow).mean())
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
    table = study.summarize(runs, metrics, first=["fusion", "l2norm", "learn_scale", "multi_layer", "batchnorm"])
    if "train_seconds" in runs:
        table["train_seconds_mean"] = runs.groupby("trial", sort=False)["train_seconds"].mean().to_numpy()
    return table


def claims(equal_tolerance: float = 0.02, min_effect: float = MIN_EFFECT, *,
           normalisation: str = "multi") -> list[Claim]:
    """The paper's statements (§3, §4) as claims, declared before training.

    Directional claims need ``min_effect`` (one mIoU point, :data:`MIN_EFFECT`) besides the noise.
    A context metric that is undefined for a model (it never found the context
    shapes) makes its claim inconclusive, saying so.

    1. global context helps: ``early_l2`` > ``fcn`` on mIoU; and on the synthetic
       data, the mechanism: lower context error, higher context-class mIoU;
    2. fusion needs normalisation, tested where the fused features' scales differ by
       a large factor: multi-layer fusion on the backbone without batch norm,
       ``early_multi_l2`` > ``early_multi``, ``late_multi_l2`` > ``late_multi`` (mIoU);
    3. with normalisation early ≈ late: ``|early_l2 − late_l2| ≤ equal_tolerance`` mIoU,
       non-linear heads with matched parameter counts (``matched``: ±5 %);
    4. learning γ (the paper's choice) beats a fixed γ: ``early_l2`` > ``early_l2_fixed``.

    ``normalisation="single"``: the claims as runs made before the multi-layer
    trials declared them (2. on ``early_l2``/``early``, ``late_l2``/``late``, on
    the batch-normalised backbone, and 3. without ``matched``) -- for
    re-judging such runs (:func:`rejudge_claims`), not for new ones: there the
    fused features' norms were alike and the linear heads made early and late
    fusion one function.
    """
    if normalisation not in ("multi", "single"):
        raise ValueError(f"normalisation={normalisation!r}: expected 'multi' or 'single'")
    never = "never found the shapes"
    if normalisation == "multi":
        norm_claims = [
            Claim("early fusion needs normalisation (multi-layer, no batch norm)", "early_multi_l2", "early_multi",
                  "eval_miou", min_effect=min_effect),
            Claim("late fusion needs normalisation (multi-layer, no batch norm)", "late_multi_l2", "late_multi",
                  "eval_miou", min_effect=min_effect),
        ]
        matched = MATCHED
    else:
        norm_claims = [
            Claim("early fusion needs normalisation", "early_l2", "early", "eval_miou", min_effect=min_effect),
            Claim("late fusion needs normalisation", "late_l2", "late", "eval_miou", min_effect=min_effect),
        ]
        matched = None
    return [
        Claim("global context helps (ParseNet > FCN baseline)", "early_l2", "fcn", "eval_miou", min_effect=min_effect),
        Claim("global context resolves context classes (lower context error)", "early_l2", "fcn",
              "eval_context_error", expect="less", min_effect=min_effect, undefined=never),
        Claim("global context helps the context classes (their mIoU)", "early_l2", "fcn", "eval_miou_context",
              min_effect=min_effect, undefined=never),
        *norm_claims,
        Claim("with normalisation, early ≈ late fusion", "early_l2", "late_l2", "eval_miou", expect="equal",
              tolerance=equal_tolerance, matched=matched),
        Claim("a learned scale γ beats a fixed one", "early_l2", "early_l2_fixed", "eval_miou", min_effect=min_effect),
    ]


CLAIMS = claims()


def claim_arms(num_classes: int = 10, image_size: int = 32, equal_tolerance: float = 0.02) -> study.ClaimArms:
    """The claims as the notebook declares them, a builder per trial (tiny backbone, the notebook's
    level and hidden width) and a small example batch: the input of :func:`study.arm_problems`.
    (Learned vs fixed γ start as the same function; they differ in what they train, which the check
    accepts.)"""
    build = {name: functools.partial(build_model, num_classes, **recipe, tiny=True, level=3)
             for name, recipe in TRIALS.items()}
    example = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    return study.ClaimArms(claims=claims(equal_tolerance), build=build, example=example)


# --------------------------------------------------------------- receptive field (fig 1)
def _fused_layer(model: ParseNetSegmenter) -> str:
    """The module whose output the head fuses: the backbone's chosen level, or the neck (VGG-16's fc7)."""
    return "backbone" if isinstance(model.neck, nn.Identity) else "neck"


def _canvas_side(model: nn.Module, layer: str, side: int, start: int, step: int = 32) -> tuple[int, Any]:
    """The smallest multiple of ``step`` ≥ ``start`` on which the centre unit's theoretical field is whole."""
    size = max(step, -(-start // step) * step)
    while True:
        theo = theoretical_receptive_field(model, layer, input_size=size)
        if not theo.clipped or size >= 8 * side:
            return size, theo
        size += step


def receptive_fields(
    model: ParseNetSegmenter,
    images: torch.Tensor,
    threshold: float = 0.05,
    large_size: int = 512,
    legacy: bool = True,
) -> dict[str, Any]:
    """Theoretical and empirical field of the centre unit of the features the head fuses.

    That is the backbone's chosen level, or the neck's output (VGG-16's fc7) when there is one.

    ``theoretical_full``: the whole field, on a ``large_size`` canvas;
    ``theoretical``: at the images' size (clipped by the border when the field
    is larger than the image).  ``empirical``: the gradient ERF
    (:func:`~dla_repro.analysis.receptive_field.gradient_receptive_field`)
    averaged over the images, each mirror-tiled onto a canvas larger than the
    theoretical field (``canvas`` px; ``theoretical_canvas`` is the field there,
    unclipped), measured at ``threshold`` of the peak (``area``, ``box``, ``side``,
    ``fraction`` of the theoretical field's area) -- so "empirical ≪
    theoretical" cannot come from the image's border.  ``legacy``: also the
    measurement as first made here (8-px noise patch every 4 px, its change
    spread over the patch, on the image itself), which the probe inflates and
    the border clips (``legacy_area``, ``legacy_box``).
    """
    size = tuple(images.shape[-2:])
    layer = _fused_layer(model)
    theo = theoretical_receptive_field(model, layer, input_size=size)
    full = theoretical_receptive_field(model, layer, input_size=large_size)
    side = max(full.height, full.width)
    stride = int(getattr(model, "stride", 1) or 1)
    side_canvas, on_canvas = _canvas_side(model, layer, side, max(side + 4 * stride, *size))
    erf = gradient_receptive_field(model, layer, images, threshold=threshold, canvas_size=side_canvas)
    emp_h = emp_w = 0
    if erf.box is not None:
        emp_h, emp_w = erf.box.height, erf.box.width
    out = {"theoretical": theo, "theoretical_full": full, "theoretical_canvas": on_canvas, "canvas": side_canvas,
           "canvas_image": canvas(images[0], side_canvas), "heat": erf.map, "area": erf.area,
           "box": None if erf.box is None else (erf.box.top, erf.box.left, erf.box.bottom, erf.box.right),
           "empirical_size": (emp_h, emp_w), "side": math.sqrt(erf.area),
           "fraction": erf.area / (on_canvas.height * on_canvas.width), "threshold": threshold,
           "image_size": size, "n_images": len(images)}
    if legacy:
        heats = [empirical_receptive_field(model, layer, img, patch=8, stride=4, threshold=threshold, seed=i,
                                           attribution="spread").map for i, img in enumerate(images)]
        heat = torch.stack([h / h.max().clamp(min=1e-12) for h in heats]).mean(0)
        out["legacy_area"], out["legacy_box"] = extent(heat, threshold)
    return out


def receptive_field_table(rf: Mapping[str, Any]) -> pd.DataFrame:
    """The extents as numbers: one row per field (``fraction_of_theoretical``: of the whole theoretical field)."""
    h, w = rf["image_size"]
    theo, full, whole = rf["theoretical"], rf["theoretical_full"], rf["theoretical_canvas"]
    full_area = full.height * full.width
    c = rf["canvas"]
    rows = [
        {"field": f"theoretical (whole, on the {c}x{c} canvas)", "height": whole.height, "width": whole.width,
         "area_px": whole.height * whole.width, "fraction_of_theoretical": 1.0, "clipped": whole.clipped},
        {"field": f"theoretical (on the {h}x{w} image)", "height": theo.height, "width": theo.width,
         "area_px": theo.height * theo.width, "fraction_of_theoretical": theo.height * theo.width / full_area,
         "clipped": theo.clipped},
        {"field": f"empirical: gradient ERF (>= {rf['threshold']:.0%} of peak, {rf['n_images']} images, "
                  f"{c}x{c} mirrored canvas)", "height": rf["empirical_size"][0], "width": rf["empirical_size"][1],
         "area_px": rf["area"], "fraction_of_theoretical": rf["fraction"], "clipped": _touches(rf["box"], (c, c))},
    ]
    if "legacy_area" in rf:
        box = rf["legacy_box"]
        lh, lw = (box[2] - box[0] + 1, box[3] - box[1] + 1) if box is not None else (0, 0)
        rows.append({"field": f"empirical as first measured (8-px patch every 4 px, spread, on the {h}x{w} image)",
                     "height": lh, "width": lw, "area_px": rf["legacy_area"],
                     "fraction_of_theoretical": rf["legacy_area"] / full_area, "clipped": _touches(box, (h, w))})
    return pd.DataFrame(rows)


def _touches(box, size) -> bool:
    return box is not None and (box[0] == 0 or box[1] == 0 or box[2] == size[0] - 1 or box[3] == size[1] - 1)


def plot_receptive_field(image: torch.Tensor, rf: Mapping[str, Any], mean=(0.5,) * 3, std=(0.25,) * 3):
    """Figure 1: the mirrored canvas with the image outlined and the theoretical field's box; the gradient
    ERF over it with its extent.  ``image`` is the first image the fields were measured on."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    def rgb(x: torch.Tensor):
        x = (x.cpu() * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)).clamp(0, 1)
        return x.permute(1, 2, 0).numpy()

    c = rf["canvas"]
    board = rgb(rf["canvas_image"])
    h, w = image.shape[-2:]
    top, left = (c - h) // 2, (c - w) // 2
    whole = rf["theoretical_canvas"]
    fig, axes = plt.subplots(1, 2, figsize=(10.4, 4.8))
    axes[0].imshow(board)
    axes[0].add_patch(Rectangle((left - 0.5, top - 0.5), w, h, fill=False, ec="white", lw=1.5, ls=":"))
    axes[0].add_patch(Rectangle((whole.left - 0.5, whole.top - 0.5), whole.width, whole.height, fill=False,
                                ec="tab:red", lw=2.5))
    axes[0].set_title(f"theoretical field: {whole.height}×{whole.width} px (whole)\n"
                      f"on a {c}×{c} mirrored canvas; dotted: the {h}×{w} image", fontsize=9)
    axes[1].imshow(board, alpha=0.45)
    im = axes[1].imshow((rf["heat"] / rf["heat"].max().clamp(min=1e-12)).numpy(), cmap="magma", alpha=0.7)
    if rf["box"] is not None:
        t, l, b, r = rf["box"]
        axes[1].add_patch(Rectangle((l - 0.5, t - 0.5), r - l + 1, b - t + 1, fill=False, ec="tab:cyan", lw=2,
                                    ls="--"))
    eh, ew = rf["empirical_size"]
    axes[1].set_title(f"gradient ERF: {eh}×{ew} px box, {rf['area']} px ≥ {rf['threshold']:.0%} of peak\n"
                      f"= {rf['fraction']:.1%} of the theoretical field's area", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[1], fraction=0.046, label="|∂y_centre/∂x| (normalised)")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------- feature norms (fig 2)
FUSED, AFTER_L2, LEVEL = "fused", "fused, after L2", "level"


@torch.no_grad()
def feature_norms(model: ParseNetSegmenter, images: torch.Tensor, max_positions: int = 4000, seed: int = 0,
                  batch_stats: bool = False) -> pd.DataFrame:
    """L2 norm over channels at each position of every backbone level and of every feature the head fuses.

    Long form: ``layer``, ``kind``, ``norm``.  ``kind`` ``level``: the backbone's
    levels (``level<i> (stride s, C ch)``); ``fused``: what the head fuses,
    before its L2 layer -- each level on the head's grid and the global vector
    (one per image: the norm it has at every position once unpooled);
    ``fused, after L2``: the same after the L2 layer (models with one).  At most
    ``max_positions`` sampled positions per layer.

    The model runs in eval mode; ``batch_stats=True`` runs its batch norms on the
    batch's own statistics instead (on a copy): what training sees.  For an
    untrained model that is the measurement to make -- in eval mode its batch
    norms hold their initial running statistics (mean 0, variance 1) and do
    nothing, so it would measure the network without them.
    """
    if batch_stats:
        import copy

        model = copy.deepcopy(model).eval()
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train()
        return _feature_norms(model, images, max_positions, seed)
    was_training = model.training
    model.eval()
    try:
        return _feature_norms(model, images, max_positions, seed)
    finally:
        model.train(was_training)


def _level_names(feats: Sequence[torch.Tensor], size: int) -> list[str]:
    return [f"level{i} (stride {size // f.shape[-1]}, {f.shape[1]} ch)" for i, f in enumerate(feats)]


def _feature_norms(model: ParseNetSegmenter, images: torch.Tensor, max_positions: int, seed: int) -> pd.DataFrame:
    levels = model.backbone(images)
    feats = list(levels.values()) if isinstance(levels, dict) else [levels] if isinstance(levels, torch.Tensor) \
        else list(levels)
    size = images.shape[-1]
    names = _level_names(feats, size)
    gen = torch.Generator().manual_seed(seed)
    rows: list[dict[str, Any]] = []

    def add(label: str, kind: str, f: torch.Tensor) -> None:
        n = f.norm(dim=1).flatten()
        if n.numel() > max_positions:
            n = n[torch.randperm(n.numel(), generator=gen)[:max_positions]]
        rows.extend({"layer": label, "kind": kind, "norm": float(v)} for v in n)

    for label, f in zip(names, feats):
        add(label, LEVEL, f)
    head = model.head
    picked = model.neck(select_levels(levels, model.in_index))
    fused = head.fused_features(picked)
    index = model.in_index if isinstance(model.in_index, tuple) else (model.in_index,)
    grid = size // fused[0].shape[-1]
    labels = []
    for k, i in enumerate(index):
        base = names[i]
        if k == len(index) - 1 and not isinstance(model.neck, nn.Identity):
            base = f"neck ({fused[k].shape[1]} ch)"
        resized = f" → stride {grid}" if feats[i].shape[-1] != fused[k].shape[-1] and base.startswith("level") else ""
        labels.append(base + resized)
    if head.fusion != "none":
        labels.append(f"global (GAP of {labels[-1].split(' (')[0]})")
    for label, f in zip(labels, fused):
        add(label, FUSED, f)
    if any(not isinstance(n, nn.Identity) for n in head.fused_norms):
        for label, n, f in zip(labels, head.fused_norms, fused):
            add(label, AFTER_L2, n(f))
    return pd.DataFrame(rows)


def norm_trials(trials: Sequence[str]) -> list[str]:
    """The trials whose norms figure 2 shows: the multi-layer ones that ran (the configuration the
    normalisation claims run on; unnormalised first), then the single-layer ParseNet if it ran."""
    order = ["early_multi", "early_multi_l2", "late_multi", "late_multi_l2", "early_l2", "early"]
    picked = [t for t in order if t in trials]
    return picked or [t for t in trials if TRIALS[t]["fusion"] != "none"][:1] or list(trials[:1])


def fusion_norms(result: study.StudyResult, trials: Sequence[str], seed: int, images: torch.Tensor) -> pd.DataFrame:
    """:func:`feature_norms` of each trial at initialisation (built after ``seed_everything(seed)``, as its
    training started; batch statistics) and trained (final weights, eval mode); column ``model``.

    At initialisation one model per configuration (``multi_layer``, ``batchnorm``): the features
    before the head do not depend on the head's settings.
    """
    frames, seen = [], set()
    for t in trials:
        recipe = TRIALS[t]
        config = (recipe["multi_layer"], recipe["batchnorm"])
        if config not in seen:
            seen.add(config)
            seed_everything(seed)
            untrained = result.trials[t].build()
            frames.append(feature_norms(untrained, images, batch_stats=True).assign(model=f"`{t}` at initialisation"))
        frames.append(feature_norms(result.model(t, seed), images).assign(model=f"`{t}` trained"))
    return pd.concat(frames, ignore_index=True)


def norm_mismatch(norms: pd.DataFrame) -> pd.DataFrame:
    """Per model and stage (before / after the L2 layer): the mean per-position norm of each fused feature and
    ``ratio``, the largest of those means over the smallest -- the scale mismatch the head fuses."""
    fused = norms[norms["kind"] != LEVEL]
    means = fused.groupby(["model", "kind", "layer"], sort=False)["norm"].mean().rename("mean_norm").reset_index()
    ratio = means.groupby(["model", "kind"], sort=False)["mean_norm"].agg(lambda v: v.max() / max(v.min(), 1e-12))
    return means.merge(ratio.rename("ratio").reset_index(), on=["model", "kind"])


def plot_feature_norms(norms: pd.DataFrame, hue: str | None = "model"):
    """Figure 2: per-position feature norms (log scale) -- left every backbone level, right every fused
    feature before (and, where the model has it, after) the L2 layer."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    levels = norms[norms["kind"] == LEVEL]
    fused = norms[norms["kind"] != LEVEL].copy()
    if hue and hue in fused:
        fused[hue] = fused[hue] + fused["kind"].map({FUSED: "", AFTER_L2: ", after L2"})
    fig, axes = plt.subplots(1, 2, figsize=(14.0, 4.8), gridspec_kw={"width_ratios": [1, 1.2]})
    for ax, data, title in ((axes[0], levels, "backbone levels"), (axes[1], fused, "fused features")):
        if len(data):
            sns.boxplot(data=data, x="layer", y="norm", hue=hue if hue in data else None, ax=ax, showfliers=False)
        ax.set_yscale("log")
        ax.set_xlabel("")
        ax.set_title(title)
        ax.set_ylabel("‖x‖₂ over channels, per position")
        ax.tick_params(axis="x", labelrotation=20)
        if ax.get_legend() is not None:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
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
    (:func:`claims` with its ``equal_tolerance``; a run whose notebook had no ``shallow_level``
    parameter predates the multi-layer trials and declared ``normalisation="single"``); nothing is
    done to a verdict after ``study.judge``."""
    from ..rejudge import unchanged

    normalisation = "multi" if "shallow_level" in params else "single"
    return claims(float(params["equal_tolerance"]), normalisation=normalisation), unchanged
