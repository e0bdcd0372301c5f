"""DynOPool's toy study (arXiv 2205.15254, Tables 1-2; notebook ``dynopool/06_dynopool``).

A VGG-16-BN-shaped classifier is trained with three kinds of down-sampling on
the four data variants of :mod:`dla_repro.data.variants` (``original``,
``stretch_v``, ``tile``, ``large``):

* ``hand`` -- the hand-designed schedule: four fixed 2×2 max-pools (32 px ends at 2×2);
* ``dynopool`` -- every max-pool replaced by :class:`~dla_repro.models.resizing.DynOPool`
  (``replace_resizing(kind="dynopool")``: a learned ``r = (r_h, r_w)`` per layer,
  initialised at ½, the pool it replaces);
* ``shape_adaptor`` -- every max-pool replaced by
  :class:`~dla_repro.models.resizing.ShapeAdaptor` (arXiv 2008.00892;
  ``replace_resizing(kind="shape_adaptor")``: one learned square ratio per layer, the
  official initial α, so 32 px starts as 32 → 22 → 15 → 10 → 7).

**The network** (:class:`TinyVGG`): VGG-16-BN's layout as the Shape Adaptor code's
CIFAR VGG (lorenmt/shape-adaptor ``model_list.py``, ``VGG``): 13 conv3×3-BN-ReLU in
five stages of 2, 2, 3, 3, 3 convolutions, a 2×2 max-pool between stages (four:
none after the last stage), global average pool and one linear layer.  The widths
are VGG-16's (64, 128, 256, 512, 512) divided by 8 by default (``widths``), so
that a training fits one CPU core.  The classifier starts at **zero** (as the
project's other from-scratch studies, e.g. :mod:`dla_repro.experiments.dla.classification`):
every arm's logits are 0 at initialisation, so every arm starts at the chance loss
ln(num_classes).  Parameters: DynOPool adds 2 per replaced pool (α_h, α_w), Shape
Adaptor 1 (its ``down`` branch is the parameter-free max-pool): +8 and +4 on the
default net (:func:`param_counts`).

**The objective.** Every arm trains ``task + λ·GMACs`` (:class:`ShapeTrackingTask`,
a :class:`~dla_repro.models.resizing.WithGMACsLoss`): GMACs per image at the
learned shapes (:func:`~dla_repro.models.resizing.differentiable_macs` / 1e9, the
variant's input size, batch 1).  For ``hand`` the term is a constant (no α):
λ changes its loss value, not its gradient, so not its training.  For
``shape_adaptor`` the term reaches α through the relaxed size gradient of
``differentiable_macs`` (its forward size still comes from σ(α) as a number, as
the official code); the official Shape Adaptor has no compute loss, so at λ > 0
this arm is Shape Adaptor *under DynOPool's objective*; ``-p gmacs_weight=0`` gives
the official one.  Every α is in its own optimiser group
(:func:`~dla_repro.models.resizing.alpha_param_groups`: lr × ``alpha_lr_scale``,
no weight decay).  The task also reports, at the end of every epoch, each
resizing layer's r_h, r_w and the GMACs (``train_r0_h`` …, ``train_gmacs`` in the
history): the trajectories of figure 3, at no more cost than one zero-image
forward pass per epoch.

**Evaluation** (:func:`evaluate`): top-1 on the evaluation split (``eval_top1``), and
for every resizing layer -- the max-pools of ``hand`` too -- its output size at the
variant's input size and its scale factor (``eval_l<i>_h``, ``eval_l<i>_w``,
``eval_l<i>_rh``, ``eval_l<i>_rw``; for a max-pool r = 1/stride, for a Shape
Adaptor r_h = r_w = s(α)), their means over the layers (``eval_r_h_mean``,
``eval_r_w_mean``) and the GMACs per image at those shapes (``eval_gmacs``).

**Claims** (:func:`claims`, declared before training; the shared rule of
:mod:`dla_repro.analysis.claims`, paired by seed; all on one variant,
``claim_variant``, default ``stretch_v``):

1. *the learned shape adapts to the asymmetry*: on ``stretch_v`` the content is
   stretched 2× vertically, so a row of the input carries half the information of
   a column and the network can afford stronger vertical down-sampling: DynOPool's
   r_h < r_w (mean over its four layers, per seed; the two sides are groups derived
   from the runs, :func:`runs_groups`).  Smallest effect :data:`ASPECT_EFFECT` =
   0.05 (on the 32-px input of the first layer, 1.6 output rows; about one row at
   the 16-px second layer): an asymmetry below it changes no output grid by a whole
   row.  No verdict when DynOPool did not learn (its top-1 at or below twice chance,
   :func:`post_from_runs`);
2. *DynOPool beats hand-designed pooling at equal or lower GMACs*: top-1
   ``dynopool`` > ``hand`` (smallest effect 0.005 top-1, the project's), parameters
   matched within 1 %; "equal or lower GMACs" is a condition, not a test -- the
   GMACs of a trained model are an exact count, not a noisy measurement: the mean
   over seeds of DynOPool's GMACs must not exceed ``hand``'s by more than
   ``gmacs_tolerance`` (1 %), else a *reproduced* becomes *inconclusive* with a note
   saying so (:func:`post_from_runs`);
3. *DynOPool vs Shape Adaptor*, **two-sided**: the paper (Table 2) reports DynOPool
   ahead; we test both directions, top-1 ``dynopool`` > ``shape_adaptor`` and
   ``shape_adaptor`` > ``dynopool`` (smallest effect 0.005 each), Holm-adjusted as one
   family -- the smaller one-sided p is compared with 0.025: a two-sided test at 5 %.
   Parameters matched within 1 % (they differ by one α per layer).  The two arms do
   not spend the same GMACs (Shape Adaptor starts at 7×7 final maps, DynOPool at
   2×2); the table shows both.

Paper numbers: not available (paper: n/a) -- neither Table 1 nor Table 2 is
reproduced here, nor the paper's variant factors, λ, or which VGG layers it
replaces (:mod:`dla_repro.data.variants`, :mod:`dla_repro.models.resizing`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ...analysis.claims import INCONCLUSIVE, REPRODUCED, Verdict
from ...data.variants import make_variant_splits, variant_transform
from ...engine import ClassificationTask, TrainConfig, Trial
from ...models.resizing import DynOPool, ShapeAdaptor, WithGMACsLoss, differentiable_macs, replace_resizing
from .. import study
from ..study import Claim

__all__ = [
    "ARMS",
    "VGG16_DEPTHS",
    "VGG16_WIDTHS",
    "TinyVGG",
    "build_model",
    "param_counts",
    "trial_name",
    "make_trials",
    "ShapeTrackingTask",
    "resizing_layers",
    "learned_shapes",
    "evaluate",
    "variant_data",
    "run",
    "claims",
    "claim_arms",
    "learned_floor",
    "runs_groups",
    "post_from_runs",
    "judge",
    "table1",
    "shapes_table",
    "plot_learned_shapes",
    "plot_trajectories",
    "plot_accuracy_vs_gmacs",
    "rejudge_claims",
]

#: The arms: how the network down-samples.
ARMS: dict[str, dict[str, Any]] = {
    "hand": dict(resizing="hand"),
    "dynopool": dict(resizing="dynopool"),
    "shape_adaptor": dict(resizing="shape_adaptor"),
}
VGG16_DEPTHS = (2, 2, 3, 3, 3)  # conv3×3-BN-ReLU per stage (13 in all)
VGG16_WIDTHS = (64, 128, 256, 512, 512)  # VGG-16's stage widths (the paper profile); the default is /8
METRIC = "eval_top1"
MIN_EFFECT = 0.005  # top-1, the project's smallest effect of interest for classification
ASPECT_EFFECT = 0.05  # r_w − r_h: 1.6 output rows on a 32-px side (see claim 1)
MATCHED = 0.01  # the arms' parameter counts agree within 1 % (they differ by 4 or 8 α)
GMACS_TOLERANCE = 0.01  # claim 2: DynOPool's mean GMACs ≤ hand's × (1 + this)
R_H, R_W = "r_h", "r_w"  # suffixes of the groups of claim 1: "<trial>:r_h"


def trial_name(arm: str, variant: str, gmacs_weight: float | None = None) -> str:
    """``"dynopool@stretch_v"``; with ``gmacs_weight`` (the λ sweep) ``"dynopool@stretch_v lambda=0.1"``."""
    name = f"{arm}@{variant}"
    return name if gmacs_weight is None else f"{name} lambda={gmacs_weight:g}"


# ----------------------------------------------------------------------------- model
class TinyVGG(nn.Module):
    """VGG-16-BN's layout at any widths: stages of conv3×3-BN-ReLU, a 2×2 max-pool between stages, GAP, linear.

    ``features`` is one flat ``nn.Sequential`` (the pools are its direct children,
    so :func:`~dla_repro.models.resizing.replace_resizing` swaps them in place);
    Convolutions start as torchvision's VGG (Kaiming normal, fan-out); ``head_init_scale`` multiplies the
    classifier's default init (0: a zero classifier).
    """

    def __init__(self, num_classes: int, widths: Sequence[int] = tuple(w // 8 for w in VGG16_WIDTHS),
                 depths: Sequence[int] = VGG16_DEPTHS, in_chans: int = 3, head_init_scale: float = 0.0):
        super().__init__()
        if len(widths) != len(depths) or not widths or min(widths) < 1:
            raise ValueError(f"widths {list(widths)} must be positive, one per stage of depths {list(depths)}")
        layers: list[nn.Module] = []
        c = in_chans
        for stage, (width, depth) in enumerate(zip(widths, depths)):
            if stage:
                layers.append(nn.MaxPool2d(2, 2))
            for _ in range(depth):
                layers += [nn.Conv2d(c, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
                c = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        self.num_features = c
        for m in self.features.modules():  # torchvision's VGG init (vgg.py, _initialize_weights): keeps the signal
            if isinstance(m, nn.Conv2d):     # through 13 layers, where PyTorch's default conv init shrinks it ~1e-6
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        with torch.no_grad():
            self.fc.weight.mul_(head_init_scale)
            self.fc.bias.mul_(head_init_scale)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.forward_features(x)).flatten(1))


def build_model(num_classes: int, resizing: str = "hand", widths: Sequence[int] = (8, 16, 32, 64, 64),
                input_size: int = 32, head_init_scale: float = 0.0) -> TinyVGG:
    """The arm ``resizing`` (``hand`` | ``dynopool`` | ``shape_adaptor``) of :class:`TinyVGG`.

    ``input_size``: the side the network sees (the variant's: 64 for ``large`` at 32 px),
    for Shape Adaptor's official initial α (its final side 8 before flooring).
    """
    model = TinyVGG(num_classes, tuple(widths), head_init_scale=head_init_scale)
    if resizing == "hand":
        return model
    if resizing not in ("dynopool", "shape_adaptor"):
        raise ValueError(f"resizing={resizing!r}: expected one of {', '.join(ARMS)}")
    return replace_resizing(model, kind=resizing, input_size=int(input_size))


def pilot_baseline(num_classes: int) -> TinyVGG:
    """The pilot's baseline (``python -m dla_repro.experiments.pilot --baseline
    dla_repro.experiments.dynopool.resizing:pilot_baseline``): the ``hand`` arm at the notebook's default
    widths, zero classifier -- the hand-designed network the claims compare against, never a learned resizing."""
    return build_model(num_classes, "hand")


def param_counts(num_classes: int = 16, widths: Sequence[int] = (8, 16, 32, 64, 64)) -> dict[str, int]:
    """Parameters per arm (DynOPool: +2 per pool, Shape Adaptor: +1)."""
    return {arm: sum(p.numel() for p in build_model(num_classes, **spec, widths=widths).parameters())
            for arm, spec in ARMS.items()}


# ------------------------------------------------------------------ the objective
class _ShapeMeter:
    """The wrapped task's accumulator, plus the model's current r per layer and GMACs when computed."""

    def __init__(self, inner: Any, owner: ShapeTrackingTask):
        self.inner, self.owner = inner, owner

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        self.inner.update(output, target)

    def sync(self) -> None:
        if hasattr(self.inner, "sync"):
            self.inner.sync()

    def compute(self) -> dict[str, float]:
        out = dict(self.inner.compute())
        model = self.owner._model() if self.owner._model is not None else None
        if model is not None:
            out.update(self.owner.shape_metrics(model))
        return out


class ShapeTrackingTask(WithGMACsLoss):
    """``task + λ·GMACs`` (:class:`~dla_repro.models.resizing.WithGMACsLoss`) that also reports, with each epoch's
    metrics, every resizing layer's scale factor (``r<i>_h``, ``r<i>_w``) and the GMACs per image (``gmacs``).

    The model is the one the engine hands to :meth:`loss` (a weak reference: the task never keeps it
    alive); an epoch's metrics read it when they are computed, after the epoch's last update.
    """

    _model: Any = None

    def __init__(self, task: Any, input_size: Sequence[int], gmacs_weight: float, batch_size: int = 1):
        super().__init__(task, input_size, gmacs_weight, batch_size)
        self._model = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_model": None}

    def loss(self, output: Any, target: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
        if model is not None:
            self._model = weakref.ref(model)
        return super().loss(output, target, model=model)

    def shape_metrics(self, model: nn.Module) -> dict[str, float]:
        out: dict[str, float] = {}
        for i, (_, r_h, r_w) in enumerate(_scales(model)):
            out[f"r{i}_h"], out[f"r{i}_w"] = r_h, r_w
        with torch.no_grad():
            out["gmacs"] = float(self.gmacs(model))
        return out

    def metrics(self):
        return _ShapeMeter(self.task.metrics(), self)


def make_task(input_size: int, gmacs_weight: float, label_smoothing: float = 0.0) -> ShapeTrackingTask:
    """The objective of every arm at the variant's input side."""
    return ShapeTrackingTask(ClassificationTask(label_smoothing=label_smoothing), (3, input_size, input_size),
                             gmacs_weight)


# ------------------------------------------------------------------------- trials
def make_trials(arms: Sequence[str], variant: str, num_classes: int, input_size: int, gmacs_weight: float, *,
                widths: Sequence[int], label_smoothing: float = 0.0, name_lambda: bool = False) -> list[Trial]:
    """One trial per arm on ``variant``: ``"<arm>@<variant>"`` (``name_lambda``: ``"… lambda=<gmacs_weight>"``), each
    with its own task (:func:`make_task` at the variant's ``input_size``); ``hand`` without the config's
    parameter groups (it has no α)."""
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise ValueError(f"unknown arms {unknown}; known: {', '.join(ARMS)}")
    table = {trial_name(a, variant, gmacs_weight if name_lambda else None): {**ARMS[a]} for a in arms}
    logged = {"variant": variant, "input_size": input_size, "gmacs_weight": gmacs_weight, "widths": list(widths)}
    trials = study.trial_table(table, list(table), build_model, logged=logged, num_classes=num_classes,
                               widths=tuple(widths), input_size=input_size)
    task = make_task(input_size, gmacs_weight, label_smoothing)
    # hand has no α: it trains without the α group (TrainConfig refuses a group that matches nothing)
    return [dataclasses.replace(t, params={**t.params, "arm": t.params["resizing"]}, task=task,
                                config={"param_groups": {}} if t.params["resizing"] == "hand" else {})
            for t in trials]


# ------------------------------------------------------------------- measurements
def resizing_layers(model: nn.Module) -> list[nn.Module]:
    """The network's down-sampling layers in order: its max-pools, DynOPools or Shape Adaptors (a Shape Adaptor's
    own ``down`` pool is part of it, not another layer)."""
    inside = {id(m) for sa in model.modules() if isinstance(sa, ShapeAdaptor) for m in sa.modules() if m is not sa}
    return [m for m in model.modules()
            if isinstance(m, (nn.MaxPool2d, DynOPool, ShapeAdaptor)) and id(m) not in inside]


def _scales(model: nn.Module) -> list[tuple[nn.Module, float, float]]:
    out = []
    for m in resizing_layers(model):
        if isinstance(m, nn.MaxPool2d):
            s = m.stride if m.stride is not None else m.kernel_size
            s_h, s_w = (s, s) if isinstance(s, int) else s
            out.append((m, 1.0 / s_h, 1.0 / s_w))
        else:
            r_h, r_w = m.scale().detach().double().tolist()
            out.append((m, r_h, r_w))
    return out


@torch.no_grad()
def learned_shapes(model: nn.Module, input_size: int) -> pd.DataFrame:
    """One row per resizing layer: ``layer``, ``kind``, input and output ``H×W`` at ``input_size``, ``r_h``, ``r_w``.

    Per *module*, also when modules share one α (``replace_resizing``'s tied groups: the parallel branches of a
    ResNet / DLA stage): every module of a group gets its own row with the group's r, so the rows stay the
    network's layers (as the ``hand`` arm's max-pools) and means over layers weight a group by its module count;
    :func:`~dla_repro.models.resizing.resizing_groups` gives the groups. A layer that the forward pass never runs
    (the unused ``downsample`` of a DLA sub-tree) has no size and no row (``layer`` keeps
    its index among :func:`resizing_layers`, the index of the task's ``r<i>_h``)."""
    sizes: dict[int, tuple] = {}
    scales = _scales(model)
    handles = [m.register_forward_hook(lambda mod, args, out, i=i: sizes.__setitem__(
        i, (tuple(args[0].shape[-2:]), tuple(out.shape[-2:])))) for i, (m, _, _) in enumerate(scales)]
    ref = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, 3, input_size, input_size, device=ref.device, dtype=ref.dtype))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    rows = []
    for i, (m, r_h, r_w) in enumerate(scales):
        if i not in sizes:
            continue
        (in_h, in_w), (h, w) = sizes[i]
        rows.append({"layer": i, "kind": type(m).__name__, "in_h": in_h, "in_w": in_w, "h": h, "w": w,
                     "r_h": r_h, "r_w": r_w})
    return pd.DataFrame(rows)


@torch.no_grad()
def top1(model: nn.Module, dataset, batch_size: int = 256) -> float:
    """Top-1 of ``model`` (eval mode) over ``dataset``."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    ref = next(model.parameters())
    was_training = model.training
    model.eval()
    correct = count = 0
    try:
        for x, y in loader:
            pred = model(x.to(ref.device)).argmax(1).cpu()
            correct += int((pred == y).sum())
            count += len(y)
    finally:
        model.train(was_training)
    return correct / max(count, 1)


def evaluate(model: nn.Module, data: study.StudyData, input_size: int, batch_size: int = 256) -> dict[str, Any]:
    """``eval_top1`` on the evaluation split; per resizing layer its output size and r at ``input_size``, their
    means and the GMACs per image at those shapes (``eval_gmacs``); ``shapes``, the table of
    :func:`learned_shapes` (an artifact)."""
    shapes = learned_shapes(model, input_size)
    out: dict[str, Any] = {METRIC: top1(model, data.val, batch_size)}
    for row in shapes.itertuples():
        i = row.layer
        out.update({f"eval_l{i}_h": row.h, f"eval_l{i}_w": row.w, f"eval_l{i}_rh": row.r_h, f"eval_l{i}_rw": row.r_w})
    out["eval_r_h_mean"] = float(shapes["r_h"].mean()) if len(shapes) else math.nan
    out["eval_r_w_mean"] = float(shapes["r_w"].mean()) if len(shapes) else math.nan
    with torch.no_grad():
        out["eval_gmacs"] = float(differentiable_macs(model, (3, input_size, input_size))) / 1e9
    out["shapes"] = shapes
    return out


# ------------------------------------------------------------------------ the study
def variant_data(data: study.StudyData, variant: str, seed: int = 0, **factors: Any) -> tuple[study.StudyData, int]:
    """``data`` as variant ``variant`` (:func:`~dla_repro.data.variants.make_variant_splits`) and the side a model
    sees (``large``: twice the base side)."""
    splits = make_variant_splits(data.splits, variant, seed=seed, **factors)
    base = data.val[0][0].shape[-1]
    side = variant_transform(variant, **factors).output_size(base)[0]
    return dataclasses.replace(data, splits=splits, description=f"{data.description}; variant {splits.source}",
                               eval_set=None), side


def run(name: str, arms: Sequence[str], variant: str, data: study.StudyData, config: TrainConfig,
        seeds: Sequence[int], gmacs_weight: float | Sequence[float], *, widths: Sequence[int],
        label_smoothing: float = 0.0, eval_batch_size: int = 256) -> study.StudyResult:
    """Train ``arms`` × ``seeds`` on ``variant`` of ``data`` (one sweep run ``name``), each scored by :func:`evaluate`.

    ``gmacs_weight``: λ; a sequence of λ (the λ sweep) trains every arm at each, its trials named
    ``"<arm>@<variant> lambda=<λ>"``.
    """
    vdata, side = variant_data(data, variant)
    sweep = not isinstance(gmacs_weight, (int, float))
    lambdas = [float(v) for v in gmacs_weight] if sweep else [float(gmacs_weight)]
    trials = [t for lam in lambdas
              for t in make_trials(arms, variant, data.num_classes, side, lam, widths=widths,
                                   label_smoothing=label_smoothing, name_lambda=sweep)]
    return study.run(name, trials, vdata, config, seeds, None,
                     evaluate=functools.partial(evaluate, input_size=side, batch_size=eval_batch_size),
                     params={"num_classes": data.num_classes, "variant": variant, "input_size": side,
                             "gmacs_weights": lambdas, "widths": list(widths), "label_smoothing": label_smoothing})


# ----------------------------------------------------------------------------- claims
def learned_floor(num_classes: int) -> float:
    """Top-1 a side must exceed for its comparison to count: twice chance."""
    return 2.0 / num_classes


def claims(variant: str = "stretch_v", floor: float | None = None, *, aspect_effect: float = ASPECT_EFFECT,
           min_effect: float = MIN_EFFECT) -> list[Claim]:
    """The claims on ``variant`` (see the module docstring), declared before training; ``floor``: twice chance."""
    dyn, hand, sa = (trial_name(a, variant) for a in ("dynopool", "hand", "shape_adaptor"))
    return [
        Claim(f"on {variant} DynOPool's learned shape adapts: r_h < r_w (mean over its resizing layers)",
              f"{dyn}:{R_H}", f"{dyn}:{R_W}", "eval_r_mean", expect="less", min_effect=aspect_effect,
              label="learned scale r (mean over layers)", labels=(f"{dyn} r_h", f"{dyn} r_w"),
              statement="the receptive field adapts to the data (Table 1's toy variants)"),
        Claim(f"DynOPool beats hand-designed pooling on {variant} (top-1) at equal or lower GMACs", dyn, hand,
              METRIC, min_effect=min_effect, floor=floor, matched=MATCHED,
              statement="DynOPool improves on the hand-designed pooling at no more compute (Table 1)"),
        Claim(f"DynOPool beats Shape Adaptor on {variant} (top-1)", dyn, sa, METRIC, min_effect=min_effect,
              floor=floor, matched=MATCHED, family="dynopool vs shape adaptor (two-sided)",
              statement="DynOPool vs Shape Adaptor (Table 2; tested two-sided)"),
        Claim(f"Shape Adaptor beats DynOPool on {variant} (top-1)", sa, dyn, METRIC, min_effect=min_effect,
              floor=floor, matched=MATCHED, family="dynopool vs shape adaptor (two-sided)",
              statement="DynOPool vs Shape Adaptor (Table 2; tested two-sided)"),
    ]


def claim_arms() -> study.ClaimArms:
    """The hook of ``tests/test_claim_arms.py``: the claims, a builder per trial (a random classifier, not the
    study's zero one -- with it every arm outputs zeros at initialisation), a 2×3×32×32 batch.

    ``hand`` and ``dynopool`` compute the same function at initialisation up to ~1e-5 (DynOPool starts as the
    2×2 max-pool it replaces, by design); they differ in what they train (the α) -- as a learned vs a fixed
    scale in ParseNet's study."""
    build = {trial_name(a, "stretch_v"): functools.partial(build_model, 16, **spec, head_init_scale=1.0)
             for a, spec in ARMS.items()}
    example = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return study.ClaimArms(claims("stretch_v", learned_floor(16)), build, example)


def runs_groups(runs: pd.DataFrame) -> dict[str, dict[int, float]]:
    """The groups (sides that are not trials) of claim 1, from the runs: for every DynOPool trial, its per-seed
    mean r_h and r_w over the resizing layers (``"<trial>:r_h"`` / ``":r_w"``, ``{seed: value}``)."""
    groups: dict[str, dict[int, float]] = {}
    if runs.empty or "eval_r_h_mean" not in runs:
        return groups
    for trial, rows in runs.groupby("trial", sort=False):
        if not str(trial).startswith("dynopool@"):
            continue
        rows = rows.sort_values("seed")
        groups[f"{trial}:{R_H}"] = {int(s): float(v) for s, v in zip(rows["seed"], rows["eval_r_h_mean"])}
        groups[f"{trial}:{R_W}"] = {int(s): float(v) for s, v in zip(rows["seed"], rows["eval_r_w_mean"])}
    return groups


def post_from_runs(runs: pd.DataFrame, floor: float | None,
                   gmacs_tolerance: float = GMACS_TOLERANCE) -> Callable[[Verdict], Verdict]:
    """What the notebook does to each verdict after ``study.judge`` (claims 1 and 2; nothing to the others):

    * claim 1 (sides ``<dynopool trial>:r_h`` / ``:r_w``): inconclusive when that DynOPool trial's mean top-1 is at
      or below ``floor`` -- a network that did not learn says nothing about the shape the data want;
    * claim 2 (DynOPool vs hand): a *reproduced* becomes inconclusive when DynOPool's mean GMACs over seeds exceed
      hand's by more than ``gmacs_tolerance`` -- then the gain was not at equal or lower compute.
    """

    def mean(trial: str, col: str) -> float:
        vals = runs.loc[runs["trial"] == trial, col] if col in runs else pd.Series(dtype=float)
        return float(vals.mean()) if len(vals) else math.nan

    def post(v: Verdict) -> Verdict:
        if v.a.endswith(f" {R_H}") and v.b.endswith(f" {R_W}"):
            trial = v.a[: -len(f" {R_H}")]
            acc = mean(trial, METRIC)
            if floor is not None and not acc > floor:
                note = f"{trial} did not learn (mean top-1 {acc:.3f} ≤ twice chance {floor:.3f}): no verdict"
                return dataclasses.replace(v, verdict=INCONCLUSIVE, note="; ".join(n for n in (v.note, note) if n))
            return v
        if v.a.startswith("dynopool@") and v.b.startswith("hand@"):
            g_dyn, g_hand = mean(v.a, "eval_gmacs"), mean(v.b, "eval_gmacs")
            over = not g_dyn <= g_hand * (1 + gmacs_tolerance)
            note = (f"GMACs: {v.a} {g_dyn:.5f}, {v.b} {g_hand:.5f} per image (mean over seeds; condition ≤ "
                    f"hand × {1 + gmacs_tolerance:g}: {'not met' if over else 'met'})")
            verdict = INCONCLUSIVE if over and v.verdict == REPRODUCED else v.verdict
            if over and v.verdict == REPRODUCED:
                note += "; the gain was not at equal or lower GMACs"
            return dataclasses.replace(v, verdict=verdict, note="; ".join(n for n in (v.note, note) if n))
        return v

    return post


def judge(plan: study.ClaimsPlan, runs: pd.DataFrame, floor: float | None,
          gmacs_tolerance: float = GMACS_TOLERANCE) -> list[Verdict]:
    """The plan's claims judged under it (:func:`study.judge_plan` with :func:`runs_groups`), then
    :func:`post_from_runs`."""
    post = post_from_runs(runs, floor, gmacs_tolerance)
    return [post(v) for v in study.judge_plan(plan, runs, runs_groups(runs))]


# ----------------------------------------------------------------------------- tables
def _interval(values: pd.Series) -> float:
    """Half-width of the 95 % t-interval of the mean (NaN for one value)."""
    from scipy import stats

    v = values.dropna().to_numpy(float)
    if len(v) < 2:
        return math.nan
    return float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))


def table1(runs: pd.DataFrame) -> pd.DataFrame:
    """Table 1's analogue: per variant and arm, top-1 mean and 95 % interval over seeds, GMACs per image at the
    learned shapes, parameters, seeds; ``paper`` n/a (the paper's numbers are not available)."""
    rows = []
    for trial, g in runs.groupby("trial", sort=False):
        rows.append({"variant": g["variant"].iloc[0], "arm": g["arm"].iloc[0], "trial": trial,
                     "gmacs_weight": g["gmacs_weight"].iloc[0], "seeds": len(g),
                     "top1_mean": g[METRIC].mean(), "top1_ci95": _interval(g[METRIC]),
                     "gmacs_mean": g["eval_gmacs"].mean(), "gmacs_min": g["eval_gmacs"].min(),
                     "gmacs_max": g["eval_gmacs"].max(), "n_params": int(g["n_params"].iloc[0]),
                     "r_h_mean": g["eval_r_h_mean"].mean(), "r_w_mean": g["eval_r_w_mean"].mean(),
                     "paper_top1": "n/a", "paper_gmacs": "n/a"})
    return pd.DataFrame(rows)


def shapes_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per trial and resizing layer: mean output ``h``, ``w`` and ``r_h``, ``r_w`` over seeds (long form)."""
    rows = []
    layers = sorted({int(c[len("eval_l"):-2]) for c in runs if c.startswith("eval_l") and c.endswith("_h")})
    for trial, g in runs.groupby("trial", sort=False):
        for i in layers:
            if f"eval_l{i}_h" not in g or g[f"eval_l{i}_h"].isna().all():
                continue
            rows.append({"trial": trial, "variant": g["variant"].iloc[0], "arm": g["arm"].iloc[0], "layer": i,
                         "h": g[f"eval_l{i}_h"].mean(), "w": g[f"eval_l{i}_w"].mean(),
                         "r_h": g[f"eval_l{i}_rh"].mean(), "r_w": g[f"eval_l{i}_rw"].mean(), "seeds": len(g)})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- figures
_COLORS = {"hand": "0.45", "dynopool": "tab:blue", "shape_adaptor": "tab:orange"}


def plot_learned_shapes(shapes: pd.DataFrame):
    """Figure 2: the output side of every resizing layer, per variant (one panel each) and arm; solid H, dashed W
    (mean over seeds), log₂ scale."""
    import matplotlib.pyplot as plt

    variants = list(dict.fromkeys(shapes["variant"]))
    fig, axes = plt.subplots(1, len(variants), figsize=(3.4 * len(variants), 3.4), squeeze=False, sharey=True)
    for ax, variant in zip(axes[0], variants):
        for arm, g in shapes[shapes["variant"] == variant].groupby("arm", sort=False):
            x = g["layer"].to_numpy() + 1
            color = _COLORS.get(arm)
            ax.plot(x, g["h"], "-o", color=color, label=f"{arm} H")
            ax.plot(x, g["w"], "--s", color=color, label=f"{arm} W", mfc="none")
        ax.set_yscale("log", base=2)
        ax.set_title(variant)
        ax.set_xlabel("resizing layer")
        ax.set_xticks(sorted(set(shapes["layer"] + 1)))
    axes[0][0].set_ylabel("output side (px, mean over seeds)")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    return fig


def plot_trajectories(history: pd.DataFrame, runs: pd.DataFrame, prefix: str = "val_"):
    """Figure 3: r_h and r_w (mean over the resizing layers) at the end of every epoch, for every DynOPool trial;
    one line per seed (from the history's ``<prefix>r<i>_h`` / ``_w``).  Returns ``None`` without such columns."""
    import matplotlib.pyplot as plt

    cols_h = sorted(c for c in history if c.startswith(f"{prefix}r") and c.endswith("_h") and c[len(prefix) + 1:-2].isdigit())
    if not cols_h:
        return None
    cols_w = [c[:-2] + "_w" for c in cols_h]
    trials = [t for t in dict.fromkeys(history["trial"]) if str(t).startswith("dynopool@")]
    if not trials:
        return None
    fig, axes = plt.subplots(1, len(trials), figsize=(3.4 * len(trials), 3.2), squeeze=False, sharey=True)
    for ax, trial in zip(axes[0], trials):
        h = history[history["trial"] == trial]
        for seed, g in h.groupby("seed"):
            ax.plot(g["epoch"] + 1, g[cols_h].mean(axis=1), "-", color="tab:blue", alpha=0.7,
                    label="r_h" if seed == h["seed"].min() else None)
            ax.plot(g["epoch"] + 1, g[cols_w].mean(axis=1), "--", color="tab:red", alpha=0.7,
                    label="r_w" if seed == h["seed"].min() else None)
        ax.set_title(trial, fontsize=9)
        ax.set_xlabel("epoch")
    axes[0][0].set_ylabel("r, mean over layers (one line per seed)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_accuracy_vs_gmacs(runs: pd.DataFrame):
    """Figure 4: top-1 vs GMACs per image, every run (small) and each trial's mean (large), coloured by arm,
    labelled by λ -- descriptive."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    for trial, g in runs.groupby("trial", sort=False):
        arm = g["arm"].iloc[0]
        color = _COLORS.get(arm)
        ax.scatter(g["eval_gmacs"], g[METRIC], s=12, color=color, alpha=0.5)
        ax.scatter(g["eval_gmacs"].mean(), g[METRIC].mean(), s=60, color=color, edgecolor="k")
        ax.annotate(f"{arm} λ={g['gmacs_weight'].iloc[0]:g}", (g["eval_gmacs"].mean(), g[METRIC].mean()),
                    fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("GMACs per image at the learned shapes")
    ax.set_ylabel("top-1 (evaluation split)")
    fig.tight_layout()
    return fig


# --------------------------------------------------- re-judging committed tables (scripts/rejudge.py)
def rejudge_claims(params: Mapping[str, Any], tables: Path,
                   table: pd.DataFrame) -> tuple[list[Claim], Callable[[Verdict], Verdict]]:
    """The hook of :mod:`dla_repro.experiments.rejudge`: the claims of a run with the notebook's ``params``
    (:func:`claims` on ``claim_variant`` with the floor of its data) and what the notebook does to each verdict
    after ``study.judge`` (:func:`post_from_runs`, from ``dynopool_runs.csv`` in ``tables``)."""
    from ..rejudge import synthetic_config

    config = synthetic_config(params)
    if config is not None:
        num_classes = len(config.label_names)
    elif str(params.get("dataset", "")).lower() == "cifar100":
        num_classes = 100
    else:
        raise ValueError(f"dynopool on {params.get('dataset')!r}: its number of classes (the floor) is not recorded")
    floor = learned_floor(num_classes)
    runs_path = Path(tables) / "dynopool_runs.csv"
    runs = pd.read_csv(runs_path) if runs_path.is_file() else pd.DataFrame(columns=["trial"])
    return (claims(str(params["claim_variant"]), floor),
            post_from_runs(runs, floor, float(params.get("gmacs_tolerance", GMACS_TOLERANCE))))
