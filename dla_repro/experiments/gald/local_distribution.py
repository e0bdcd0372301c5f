"""GALD (arXiv 1909.07229; notebook ``gald/07_gald``): global aggregation, then local distribution.

The paper's statement: global aggregation (GA) modules -- non-local, PSP, ASPP,
CGNL -- are dominated by large patterns and *oversmooth small ones* (small
objects, boundaries); a local-distribution (LD) mask ``M``, learned per channel
and position, re-distributes the aggregated feature so that small patterns get
less of it (§1, §3, Fig. 1-2).  The study (:mod:`dla_repro.experiments.study`)
with this paper's pieces:

* :data:`TRIALS` -- one segmenter per row, all the released GALD head
  (:class:`~dla_repro.models.gald.GALDHead`, official code lxtGH/GALD-DGCNet
  ``libs/models/GALDNet.py``) on the same backbone, trained with the released
  loss (OHEM cross-entropy on the main output + 0.4 × cross-entropy on the
  auxiliary FCN head, :class:`~dla_repro.engine.tasks.OhemSegmentationTask`):

  - ``fcn`` -- the head without the GALD block (the paper's FCN baseline);
  - ``<ga>`` for ``ga`` in ``gap`` (ParseNet-style global pooling), ``psp``,
    ``nonlocal``, ``cgnl`` (the released GA) -- the block with GA only;
  - ``<ga>_ld`` -- GA + LD, the released combination ``2U + U ⊙ M``;
  - ``cgnl_ld_paper`` -- GA + LD in the paper figure's form ``U ⊙ M + F``.

  The claims use CGNL, the released model's GA, and the released form.

* :func:`evaluate` -- after training, on the evaluation split: mIoU, and the two
  small-pattern instruments of :mod:`dla_repro.metrics.small_patterns`: the
  **local IoU of each ground-truth object**, by object size (connected
  components of one class; every class but ``background``), and
  **boundary-band accuracy** (pixels within k px of a label change).
  ``eval_small_iou`` is the mean local IoU of the objects smaller than
  :data:`SMALL_AREA` px² (synthetic 64 px scenes: the 3-px dots (9 px²), most
  line pieces and shape slivers; Cityscapes: COCO's "small", 32²).
* :func:`claims` -- declared before training, judged by the shared rule, paired
  by seed:

  1. GA helps: ``cgnl`` > ``fcn`` on mIoU;
  2. GA alone hurts small objects: ``fcn`` > ``cgnl`` on ``eval_small_iou``;
  3. LD restores them: ``cgnl_ld`` > ``cgnl`` on ``eval_small_iou`` and on
     boundary-band accuracy at 2 px (one family, Holm-adjusted), and on mIoU.

  Smallest effect of interest: one point (0.01) everywhere, as the project's
  other segmentation claims.  LD adds ``ld_convs`` depthwise 3×3 convs and their
  batch norms to GA: the LD-vs-GA claims are declared at matched parameters
  (±5 %, checked before training); GA vs FCN is not (the GA module *is* the
  difference).

Paper numbers: the paper's ablation tables and per-size results are not
available here (paper: n/a).  The released model's Cityscapes val mIoU is not
either; the ``paper`` profile runs the released recipe on Cityscapes under
``--data-root``.
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
from ...engine import TrainConfig, Trial
from ...engine.tasks import OhemSegmentationTask
from ...metrics.segmentation import SegmentationMetrics, dataset_metrics
from ...metrics.small_patterns import COCO_SIZE_EDGES, DEFAULT_SIZE_EDGES, BoundaryBandMetrics, ObjectSizeMetrics
from ...models.gald import GALDBlock, build_gald_segmenter
from .. import study
from ..study import Claim

__all__ = [
    "GA_KINDS",
    "TRIALS",
    "PRIMARY",
    "SMALL_AREA",
    "BAND_WIDTHS",
    "METRICS",
    "build_model",
    "make_trials",
    "make_task",
    "pilot_baseline",
    "run",
    "evaluate",
    "claims",
    "claim_arms",
    "summarize",
    "size_frame",
    "band_frame",
    "predict_with_masks",
    "plot_ablation",
    "rejudge_claims",
]

GA_KINDS = ("gap", "psp", "nonlocal", "cgnl")
#: The ablation, by trial name: the GALD head's settings (``ga=None``: no block, the FCN baseline).
TRIALS: dict[str, dict[str, Any]] = {
    "fcn": dict(ga=None, ld=False, form="released"),
    **{k: dict(ga=k, ld=False, form="released") for k in GA_KINDS},
    **{f"{k}_ld": dict(ga=k, ld=True, form="released") for k in GA_KINDS},
    "cgnl_ld_paper": dict(ga="cgnl", ld=True, form="paper"),
}
PRIMARY = ("fcn", "cgnl", "cgnl_ld")  # the trials the pre-registered claims compare
MIN_EFFECT = 0.01  # one point of mIoU / local IoU / band accuracy
MATCHED = 0.05  # GA + LD vs GA alone: parameter counts within ±5 %
BAND_WIDTHS = (1, 2, 4)
CLAIM_BAND = 2  # the boundary-band width the claim reads (px)
#: Objects smaller than this (px²) are "small": synthetic data / real data (COCO's small objects).
SMALL_AREA = {"synthetic": 64, "real": 32 * 32}
METRICS = ("eval_miou", "eval_small_iou", f"eval_band_acc_{CLAIM_BAND}px")
#: The synthetic budget from which the small-object claims are judged: the pilot's ``fcn`` baseline has begun to
#: segment small objects (its small-object IoU: 0.016 at 150 updates, 0.026 at 200, 0.072 at 400, per-seed sd
#: 0.004 at 200 and 400;
#: ``results/tables/pilot/pilot_runs.csv``).  Shorter runs describe those claims without a verdict.
SMALL_BUDGET = 400


# ----------------------------------------------------------------------------- model
def build_model(
    num_classes: int,
    ga: str | None = "cgnl",
    ld: bool = True,
    form: str = "released",
    backbone: str = "dlarepro_dla34",
    tiny: bool = True,
    level: int = 2,
    mid: int = 32,
    ld_convs: int = 2,
    aux: bool = True,
    output_stride: int | None = None,
) -> nn.Module:
    """The GALD segmenter of one trial (:func:`~dla_repro.models.gald.build_gald_segmenter`).

    A ``dlarepro_*`` backbone (no dilation: ``output_stride=None``) is cut after
    level ``level`` (tiny DLA-34, level 2: stride 4, 32 channels; the head reads it,
    the auxiliary head reads level ``level - 1``); any other timm name is built at
    ``output_stride`` (the released model: a dilated ResNet at 8) with all its levels.
    ``mid``: the head's width (released 512); ``ld_convs``: LD's stride-2 depthwise
    convs (released 3; on a 16×16 feature two leave a 3×3 mask grid, three a 1×1).
    """
    kwargs: dict[str, Any] = {}
    if backbone.startswith("dlarepro_"):
        kwargs = dict(tiny=tiny, out_indices=tuple(range(level + 1)))
        output_stride = None
    return build_gald_segmenter(backbone, num_classes, ga=ga, ld=ld, form=form, mid=mid, aux=aux,
                                output_stride=output_stride, ld_convs=ld_convs, **kwargs)


def make_trials(names: Sequence[str], num_classes: int, **model_kwargs) -> list[Trial]:
    """One trial per name of :data:`TRIALS` (its settings are the logged parameters)."""
    return study.trial_table(TRIALS, names, build_model, num_classes=num_classes, logged={}, **model_kwargs)


def make_task(num_classes: int, min_kept: int = 20_000, thresh: float = 0.7, aux_weight: float = 0.4,
              aux: bool = True) -> OhemSegmentationTask:
    """The released objective: OHEM cross-entropy (keep pixels with true-class probability ≤ ``thresh``, at
    least the ``min_kept`` hardest) + ``aux_weight`` × cross-entropy on the auxiliary head."""
    return OhemSegmentationTask(num_classes, thresh=thresh, min_kept=min_kept,
                                aux_weights={"aux": aux_weight} if aux else {})


def pilot_baseline(num_classes: int) -> nn.Module:
    """The pilot's GALD baseline (``python -m dla_repro.experiments.pilot --task segmentation --image-size 64
    --baseline dla_repro.experiments.gald.local_distribution:pilot_baseline``): the ``fcn`` trial -- the
    released head without the GALD block -- trained with the released objective (:func:`make_task`, this
    function's ``task``); never a trial with GA or LD, the methods under test."""
    return build_model(num_classes, **TRIALS["fcn"])


pilot_baseline.task = make_task  # the pilot trains the baseline with its own objective (OHEM + aux)


# --------------------------------------------------------------------------- metrics
def _object_classes(class_names: Sequence[str]) -> list[int]:
    """Every class but the background / void ones: what an object can be."""
    return [i for i, n in enumerate(class_names) if n.lower() not in ("background", "void", "unlabelled")]


def evaluate(model: nn.Module, data: study.StudyData, batch_size: int = 64) -> dict[str, float]:
    """Scores of the final model on the evaluation split, prefix ``eval_``.

    ``eval_miou``, ``eval_pixel_acc``; per object-size bin (edges
    :data:`~dla_repro.metrics.small_patterns.DEFAULT_SIZE_EDGES` on synthetic
    data, COCO's on real data) the mean local IoU, recall and count of the
    ground-truth objects (``eval_size_iou_<lo>_<hi>`` …); ``eval_small_iou`` /
    ``eval_small_recall`` / ``eval_small_count`` over the objects below
    :data:`SMALL_AREA`; boundary-band accuracy, off-band accuracy and band mIoU
    at :data:`BAND_WIDTHS` (``eval_band_acc_2px`` …).
    """
    real = data.synthetic is None
    edges = COCO_SIZE_EDGES if real else DEFAULT_SIZE_EDGES
    small = SMALL_AREA["real" if real else "synthetic"]
    objects = _object_classes(data.class_names)
    seg = SegmentationMetrics(data.num_classes)
    sizes = ObjectSizeMetrics(edges, classes=objects)
    bands = BoundaryBandMetrics(data.num_classes, widths=BAND_WIDTHS)
    dataset_metrics(model, data.val, [seg, sizes, bands], batch_size)
    out = {f"eval_{k}": float(v) for k, v in seg.summary().items() if k in ("miou", "pixel_acc")}
    out.update({f"eval_{_key(k)}": float(v) for k, v in sizes.compute().items()})
    out.update({f"eval_small_{k}": float(v) for k, v in sizes.below(small).items()})  # SMALL_AREA is an edge
    out.update({f"eval_{_key(k)}": float(v) for k, v in bands.compute().items()})
    return out


def _key(name: str) -> str:
    """``size_iou@0-16`` → ``size_iou_0_16``; ``band_acc@2px`` → ``band_acc_2px`` (column and MLflow names alike)."""
    return name.replace("@", "_").replace("-", "_").replace(".", "_")


# ------------------------------------------------------------------------ the study
def run(
    name: str,
    trials: Sequence[str],
    data: study.StudyData,
    config: TrainConfig,
    seeds: Sequence[int],
    *,
    min_kept: int = 20_000,
    thresh: float = 0.7,
    aux_weight: float = 0.4,
    eval_batch_size: int = 64,
    **model_kwargs,
) -> study.StudyResult:
    """Train every trial × seed with the released objective; score each final model (:func:`evaluate`)."""
    task = make_task(data.num_classes, min_kept, thresh, aux_weight, aux=model_kwargs.get("aux", True))
    return study.run(name, make_trials(trials, data.num_classes, **model_kwargs), data, config, seeds, task,
                     evaluate=functools.partial(evaluate, batch_size=eval_batch_size),
                     params={"num_classes": data.num_classes, "min_kept": min_kept, "ohem_thresh": thresh,
                             **model_kwargs})


def summarize(runs: pd.DataFrame, metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """Mean ± std over seeds per trial, in the trial order of the runs, with the parameter count."""
    table = study.summarize(runs, metrics, first=["ga", "ld", "form", "n_params"])
    if "train_seconds" in runs:
        table["train_seconds_mean"] = runs.groupby("trial", sort=False)["train_seconds"].mean().to_numpy()
    table.insert(1, "paper", "n/a")
    return table


def size_frame(runs: pd.DataFrame, value: str = "iou") -> pd.DataFrame:
    """Long form of the per-size-bin scores: ``arm``, ``seed``, ``bin`` (``lo-hi``), ``value``, ``count``."""
    prefix = f"eval_size_{value}_"
    rows = []
    for col in [c for c in runs.columns if c.startswith(prefix)]:
        lo, hi = col[len(prefix):].split("_", 1)
        count = runs[f"eval_size_count_{lo}_{hi}"]
        rows.append(pd.DataFrame({"arm": runs["trial"], "seed": runs["seed"], "bin": f"{lo}-{hi}",
                                  "value": runs[col], "count": count}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["arm", "seed", "bin", "value",
                                                                               "count"])


def band_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """Long form of the boundary-band scores: ``trial``, ``seed``, ``width`` (px), ``band_acc``, ``offband_acc``."""
    rows = []
    for k in BAND_WIDTHS:
        col = f"eval_band_acc_{k}px"
        if col in runs:
            rows.append(pd.DataFrame({"trial": runs["trial"], "seed": runs["seed"], "width": k,
                                      "band_acc": runs[col], "offband_acc": runs[f"eval_offband_acc_{k}px"]}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


# ---------------------------------------------------------------------------- claims
def short_budget(dataset: str, iterations: int) -> str:
    """Why a run on ``dataset`` with ``iterations`` updates cannot decide the small-object claims ("" when it can).

    On the synthetic data, before :data:`SMALL_BUDGET` updates even the baseline has hardly begun to segment
    small objects, so their IoU says which arm started first, not which oversmooths them.  Real data (the
    released recipe) is judged as run.
    """
    if not study.short_of(dataset, iterations, SMALL_BUDGET):
        return ""
    return (f"{int(iterations):,} updates, short of the {SMALL_BUDGET} from which the pilot's FCN baseline segments "
            "small objects at all (its small-object IoU: 0.026 at 200 updates, 0.072 at 400): here the metric "
            f"tells which arm started first; decided by the extended profile ({SMALL_BUDGET} updates)")


def claims(min_effect: float = MIN_EFFECT, band: int = CLAIM_BAND, small_descriptive: str = "") -> list[Claim]:
    """The paper's statements as claims on CGNL (the released GA) and the released LD form, declared before
    training; see the module docstring.  ``small_descriptive`` (:func:`short_budget`): why this run cannot
    decide the two small-object claims -- then they are shown without a verdict."""
    small = "eval_small_iou"
    band_metric = f"eval_band_acc_{band}px"
    ld_family = "LD restores the small patterns GA oversmooths"
    return [
        Claim("global aggregation helps (CGNL > FCN, mIoU)", "cgnl", "fcn", "eval_miou", min_effect=min_effect),
        Claim("GA alone hurts small objects (FCN > CGNL, small-object IoU)", "fcn", "cgnl", small,
              min_effect=min_effect, label="small-object local IoU", descriptive=small_descriptive),
        Claim("LD lifts small-object IoU over GA alone", "cgnl_ld", "cgnl", small, min_effect=min_effect,
              family=ld_family, label="small-object local IoU", matched=MATCHED, descriptive=small_descriptive),
        Claim(f"LD lifts boundary-band accuracy ({band} px) over GA alone", "cgnl_ld", "cgnl", band_metric,
              min_effect=min_effect, family=ld_family, label=f"accuracy within {band} px of a boundary",
              matched=MATCHED),
        Claim("GA + LD beats GA alone (mIoU)", "cgnl_ld", "cgnl", "eval_miou", min_effect=min_effect,
              matched=MATCHED),
    ]


CLAIMS = claims()


def claim_arms(num_classes: int = 10, image_size: int = 64) -> study.ClaimArms:
    """The claims as the notebook declares them, a builder per trial (the notebook's tiny backbone and head)
    and an example batch: the input of :func:`study.arm_problems`."""
    build = {name: functools.partial(build_model, num_classes, **recipe) for name, recipe in TRIALS.items()}
    example = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    return study.ClaimArms(claims=claims(), build=build, example=example)


# ---------------------------------------------------------------------------- figures
@torch.no_grad()
def predict_with_masks(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Predicted labels and the GALD block's mask ``M`` (``N×C×h×w`` at the block's resolution; ``None`` for a
    model without LD) for ``images``, in eval mode."""
    from ...outputs import main_output

    was = model.training
    model.eval()
    try:
        pred = main_output(model(images)).argmax(1)
        head = model.head
        mask = None
        if isinstance(getattr(head, "block", None), GALDBlock):
            levels = model.backbone(images)
            feats = list(levels.values()) if isinstance(levels, dict) else list(levels)
            mask = head.mask(feats[-1])
        return pred, mask
    finally:
        model.train(was)


def plot_ablation(runs: pd.DataFrame, metrics: Sequence[str] = METRICS):
    """One panel per metric: each seed a dot, the mean a bar, per trial."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    metrics = [m for m in metrics if m in runs and runs[m].notna().any()]
    labels = {"eval_miou": "mIoU", "eval_small_iou": f"small objects (< {SMALL_AREA['synthetic']} px²): local IoU",
              f"eval_band_acc_{CLAIM_BAND}px": f"accuracy within {CLAIM_BAND} px of a boundary"}
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.4 * len(metrics), 4.0), squeeze=False)
    order = list(dict.fromkeys(runs["trial"]))
    for ax, m in zip(axes[0], metrics):
        sns.barplot(data=runs, x="trial", y=m, order=order, ax=ax, errorbar=None, alpha=0.5)
        sns.stripplot(data=runs, x="trial", y=m, order=order, ax=ax, hue="seed", palette="dark", size=5,
                      legend=m == metrics[-1])
        ax.set_title(labels.get(m, m), fontsize=10)
        ax.set_xlabel("")
        ax.set_ylabel("")
        ax.tick_params(axis="x", labelrotation=35)
        values = runs[m].dropna()
        if len(values):
            lo, hi = values.min(), values.max()
            pad = max(0.02, 0.15 * (hi - lo))
            ax.set_ylim(max(0.0, lo - pad), min(1.0, hi + pad))
    fig.tight_layout()
    return fig


# --------------------------------------------------- re-judging committed tables (scripts/rejudge.py)
def rejudge_claims(params: Mapping[str, Any], tables: Path,
                   table: pd.DataFrame) -> tuple[list[Claim], Callable[[Verdict], Verdict]]:
    """The hook of :mod:`dla_repro.experiments.rejudge`: the claims the notebook declares for the run's dataset
    and budget (:func:`short_budget`); nothing is done to a verdict after ``study.judge``."""
    from ..rejudge import unchanged

    return claims(small_descriptive=short_budget(params.get("dataset", ""), params.get("iterations", 0))), unchanged
