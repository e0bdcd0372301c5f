"""Mean intersection-over-union from a dataset-level confusion matrix -- the one copy.

Definitions of FCN (Long, Shelhamer, Darrell, arXiv 1411.4038, §5 "Results",
the metrics paragraph), as evaluated by the Cityscapes benchmark and
mmsegmentation: accumulate one C×C confusion matrix ``M`` over the whole dataset
(rows: ground truth, columns: prediction), skipping pixels whose target is the
ignore label (``dla_repro.labels.IGNORE_INDEX``, 255); then per class

    IoU_c = M_cc / (Σ_j M_cj + Σ_i M_ic − M_cc)        (TP / (TP + FN + FP))

and mIoU is the mean of IoU_c over the classes with a non-empty union (classes
present in the ground truth or the prediction; mmsegmentation's ``nanmean``). A
class that appears in neither has no IoU (NaN in ``iou_per_class``) and is left
out of the mean. Pixel accuracy is ``trace(M) / ΣM``; mean class accuracy
averages ``M_cc / Σ_j M_cj`` over the classes present in the ground truth.

Per-class IoU and macro mIoU agree with torchmetrics' ``MulticlassJaccardIndex``
(``ignore_index=255``), which also drops classes with an empty union from its
macro average but reports their per-class IoU as 0 instead of NaN.

What to call:

* ``confusion_matrix(pred_or_logits, target, C)`` -- one batch's counts;
* ``iou_from_confusion(M)`` -- IoU per class (NaN where undefined);
* ``scores_from_confusion(M)`` -- ``miou``, ``iou_per_class``, ``pixel_acc``, ``mean_acc``;
* ``SegmentationMetrics(C)`` -- the streaming evaluator (``update`` / ``compute`` /
  ``sync``) the engine's ``SegmentationTask`` uses;
* ``dataset_confusion(model, dataset, C)`` -- run a model over a dataset and
  return its confusion matrix (eval mode, fixed order, counts on the CPU);
  ``dataset_metrics(model, dataset, metrics)`` feeds one pass of predictions to
  several streaming metrics.

**Thin structures within a tolerance.** IoU counts a pixel only where prediction
and truth coincide, so a one-pixel line drawn one pixel off scores 0 however
well its shape is found -- and on small images every thin class can sit at 0 for
every model.  ``tolerant_counts`` / ``tolerant_fscore`` / ``TolerantFScore``
score class ``c`` the way boundary benchmarks score edges (BSDS500: a predicted
edge pixel is correct when a true one lies within a tolerance; here without the
one-to-one matching and the thinning, since a class region is not a curve):

    P_c = |{p : pred(p) = c, some q with gt(q) = c and ‖p − q‖ ≤ ρ}| / |{p : pred(p) = c}|
    R_c = |{q : gt(q) = c, some p with pred(p) = c and ‖p − q‖ ≤ ρ}| / |{q : gt(q) = c}|
    F_c = 2 P_c R_c / (P_c + R_c)

with counts summed over the dataset (as the confusion matrix), ``ρ`` the
tolerance in pixels (Euclidean; 1 px: the pixel and its four edge-neighbours)
and pixels whose target is the ignore label left out of both sides.  ``ρ = 0`` is
the exact per-class F1 (Dice), ``2 IoU / (1 + IoU)``.  ``F_c`` is NaN when
class ``c`` is neither predicted nor present, 0 when only one of the two is.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..labels import IGNORE_INDEX
from ..outputs import main_output

__all__ = [
    "IGNORE_INDEX",
    "confusion_matrix",
    "iou_from_confusion",
    "scores_from_confusion",
    "SegmentationMetrics",
    "tolerant_counts",
    "tolerant_fscore",
    "TolerantFScore",
    "dataset_metrics",
    "dataset_confusion",
]


def _labels(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Class indices from logits/scores ``N×C×H×W`` (argmax over C) or labels ``N×H×W``."""
    if pred.ndim == target.ndim + 1:
        return pred.argmax(1)
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} do not match")
    if pred.is_floating_point():
        raise ValueError("label predictions must be integers; pass logits with a class dimension instead")
    return pred


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int | None = IGNORE_INDEX
) -> torch.Tensor:
    """``num_classes × num_classes`` int64 counts, rows = target class, columns = predicted class.

    ``pred``: labels shaped like ``target`` or logits with a class dimension at 1.
    Target pixels equal to ``ignore_index`` are skipped (``None``: nothing is);
    any other target or prediction outside ``0..num_classes-1`` is an error.
    The counts live on ``pred``'s device.
    """
    pred = _labels(torch.as_tensor(pred), torch.as_tensor(target))
    target = torch.as_tensor(target, device=pred.device)
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    if ignore_index is not None:
        keep = target != ignore_index
        pred, target = pred[keep], target[keep]
    c = num_classes
    if target.numel():
        lo = torch.minimum(pred.min(), target.min())
        hi = torch.maximum(pred.max(), target.max())
        if bool(lo < 0) or bool(hi >= c):
            raise ValueError(
                f"labels must be in 0..{c - 1} (or ignore_index={ignore_index}); got values in {int(lo)}..{int(hi)}"
            )
    return torch.bincount(target * c + pred, minlength=c * c).view(c, c)


def iou_from_confusion(confusion: torch.Tensor) -> torch.Tensor:
    """IoU per class as float64, ``TP / (TP + FP + FN)``; NaN for a class with an empty union."""
    m = confusion.double()
    tp = m.diagonal()
    union = m.sum(1) + m.sum(0) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))


def scores_from_confusion(confusion: torch.Tensor) -> dict[str, Any]:
    """``miou``, ``iou_per_class`` (float64 tensor, NaN where the union is empty), ``pixel_acc``, ``mean_acc``.

    ``miou`` averages the classes with a defined IoU; every score is NaN when
    ``confusion`` holds no pixel.
    """
    m = confusion.double()
    tp = m.diagonal()
    gt = m.sum(1)
    iou = iou_from_confusion(confusion)
    present = ~torch.isnan(iou)
    total = m.sum()
    return {
        "miou": float(iou[present].mean()) if bool(present.any()) else float("nan"),
        "iou_per_class": iou,
        "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan"),
        "mean_acc": float((tp[gt > 0] / gt[gt > 0]).mean()) if bool((gt > 0).any()) else float("nan"),
    }


class _SummedState:
    """An accumulator whose state is one tensor (``total``) summed over batches and, by ``sync()``, over DDP
    ranks; ``None`` before the first batch, then on the device of the first batch's counts."""

    total: torch.Tensor | None = None

    def reset(self) -> None:
        self.total = None

    def _add(self, counts: torch.Tensor) -> None:
        if self.total is None:
            self.total = torch.zeros_like(counts)
        self.total += counts.to(self.total.device)

    def sync(self) -> None:
        import torch.distributed as dist

        if self.total is not None and dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.total)


class SegmentationMetrics(_SummedState):
    """Streaming mIoU: ``update(pred, target)`` per batch, ``compute()`` at the end.

    ``compute()`` returns plain floats (``miou``, ``pixel_acc``, ``mean_acc``), the
    engine's evaluator contract; ``compute(per_class=True)`` adds
    ``iou_per_class`` (a float64 tensor of C values, NaN for classes with an empty
    union) and ``confusion`` (the C×C int64 matrix); ``summary()`` is the same as
    a dict with named classes when ``class_names`` is given. ``sync()`` sums the
    matrix over DDP ranks. The matrix lives on the device of the first batch.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = IGNORE_INDEX,
        class_names: Sequence[str] | None = None,
    ):
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.num_classes, self.ignore_index = int(num_classes), ignore_index
        self.class_names = list(class_names) if class_names is not None else None

    @property
    def confusion(self) -> torch.Tensor | None:
        """The summed C×C matrix (``None`` before the first batch)."""
        return self.total

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self._add(confusion_matrix(pred, target, self.num_classes, self.ignore_index))

    def _matrix(self) -> torch.Tensor:
        if self.total is None:
            return torch.zeros(self.num_classes, self.num_classes, dtype=torch.long)
        return self.total

    def compute(self, per_class: bool = False) -> dict[str, Any]:
        scores = scores_from_confusion(self._matrix())
        if not per_class:
            scores.pop("iou_per_class")
            return scores
        scores["iou_per_class"] = scores["iou_per_class"].cpu()
        scores["confusion"] = self._matrix().cpu()
        return scores

    def summary(self) -> dict[str, Any]:
        """``compute(per_class=True)`` with ``iou_per_class`` as ``{class name: IoU}``."""
        scores = self.compute(per_class=True)
        names = self.class_names or [str(c) for c in range(self.num_classes)]
        scores["iou_per_class"] = dict(zip(names, scores["iou_per_class"].tolist()))
        return scores


# ------------------------------------------------------------------ thin structures within a tolerance
def _disk(radius: float) -> torch.Tensor:
    """The ``k×k`` 0/1 kernel of the offsets at Euclidean distance ≤ ``radius`` (``k = 2⌊radius⌋ + 1``)."""
    r = int(radius)
    d = torch.arange(-r, r + 1, dtype=torch.float64)
    return ((d[:, None] ** 2 + d[None, :] ** 2) <= radius * radius + 1e-9).float()


def _dilate(masks: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """``N×C×H×W`` boolean masks grown by ``kernel`` (a pixel is set when any set pixel lies under the kernel)."""
    c, r = masks.shape[1], kernel.shape[-1] // 2
    if r == 0:
        return masks
    weight = kernel.to(masks.device).expand(c, 1, *kernel.shape)
    return F.conv2d(masks.float(), weight, padding=r, groups=c) > 0.5


def tolerant_counts(
    pred: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    tolerance: float = 1.0,
    ignore_index: int | None = IGNORE_INDEX,
) -> torch.Tensor:
    """Per class, the counts of the tolerant F-score (module docstring): a ``C × 4`` int64 tensor
    ``[hits_pred, n_pred, hits_true, n_true]``.

    ``pred``: labels shaped like ``target`` (``N×H×W`` or ``H×W``) or logits with a
    class dimension at 1.  ``hits_pred``: predicted pixels of the class with a true
    pixel of the class within ``tolerance`` pixels (precision's numerator);
    ``hits_true``: true pixels with a predicted one within ``tolerance`` (recall's).
    Pixels whose target is ``ignore_index`` count on neither side.
    """
    if not (tolerance >= 0 and tolerance < float("inf")):
        raise ValueError(f"tolerance must be a finite radius ≥ 0 in pixels, got {tolerance!r}")
    labels = _labels(torch.as_tensor(pred), torch.as_tensor(target))
    target = torch.as_tensor(target, device=labels.device).long()
    labels = labels.long()
    if target.ndim == 2:
        labels, target = labels[None], target[None]
    valid = target != ignore_index if ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
    classes = torch.arange(num_classes, device=labels.device).view(1, -1, 1, 1)
    truth = (target[:, None] == classes) & valid[:, None]  # N×C×H×W
    predicted = (labels[:, None] == classes) & valid[:, None]
    kernel = _disk(float(tolerance))
    near_truth, near_pred = _dilate(truth, kernel), _dilate(predicted, kernel)
    dims = (0, 2, 3)
    return torch.stack([(predicted & near_truth).sum(dims), predicted.sum(dims), (truth & near_pred).sum(dims),
                        truth.sum(dims)], 1).long().cpu()


def tolerant_fscore(counts: torch.Tensor) -> dict[str, torch.Tensor]:
    """``precision``, ``recall`` and ``f`` per class (float64) from :func:`tolerant_counts` (summed over batches).

    Precision is NaN for a class never predicted, recall for a class never present;
    ``f`` is NaN when both are absent, 0 when only one is (nothing found, or only
    false alarms) or when nothing is within the tolerance.
    """
    c = counts.double()
    hits_p, n_p, hits_t, n_t = c.unbind(1)
    nan = torch.full_like(hits_p, float("nan"))
    precision = torch.where(n_p > 0, hits_p / n_p.clamp(min=1), nan)
    recall = torch.where(n_t > 0, hits_t / n_t.clamp(min=1), nan)
    p0, r0 = precision.nan_to_num(0.0), recall.nan_to_num(0.0)
    f = torch.where(p0 + r0 > 0, 2 * p0 * r0 / (p0 + r0).clamp(min=1e-12), torch.zeros_like(p0))
    f = torch.where((n_p == 0) & (n_t == 0), nan, f)
    return {"precision": precision, "recall": recall, "f": f}


class TolerantFScore:
    """Streaming tolerant F-score per class: ``update(pred, target)`` per batch, ``compute()`` at the end.

    ``compute()`` returns :func:`tolerant_fscore` of the summed counts (``f``,
    ``precision``, ``recall``: float64 tensors of C values) and ``counts``.
    """

    def __init__(self, num_classes: int, tolerance: float = 1.0, ignore_index: int | None = IGNORE_INDEX):
        if not (tolerance >= 0 and tolerance < float("inf")):
            raise ValueError(f"tolerance must be a finite radius ≥ 0 in pixels, got {tolerance!r}")
        self.num_classes, self.tolerance, self.ignore_index = int(num_classes), float(tolerance), ignore_index
        self.counts = torch.zeros(self.num_classes, 4, dtype=torch.long)

    def reset(self) -> None:
        self.counts.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self.counts += tolerant_counts(pred, target, self.num_classes, self.tolerance, self.ignore_index)

    def compute(self) -> dict[str, torch.Tensor]:
        return {**tolerant_fscore(self.counts), "counts": self.counts.clone()}


# ----------------------------------------------------------------------------- datasets
@torch.no_grad()
def dataset_metrics(model: nn.Module, dataset: Dataset, metrics: Sequence[Any], batch_size: int = 64) -> Sequence[Any]:
    """One pass of ``model`` over ``dataset``: each batch's predicted labels (CPU) and targets go to every
    metric's ``update(pred, target)``; returns ``metrics``.

    The dataset yields ``(image, mask)`` pairs and is read in order (no shuffle);
    the prediction is the argmax of the main output's logits
    (``dla_repro.outputs``).  The model is put in eval mode and returned to the
    mode it was in, also when an error interrupts the pass.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            pred = main_output(model(x.to(device))).argmax(1).cpu()
            for metric in metrics:
                metric.update(pred, y)
    finally:
        model.train(was_training)
    return metrics


@torch.no_grad()
def dataset_confusion(
    model: nn.Module,
    dataset: Dataset,
    num_classes: int,
    batch_size: int = 64,
    ignore_index: int | None = IGNORE_INDEX,
) -> torch.Tensor:
    """The C×C confusion matrix (int64, on the CPU) of ``model``'s predictions over ``dataset``.

    The dataset yields ``(image, mask)`` pairs and is read in order (no shuffle)
    in batches of ``batch_size``; each batch runs on the model's device, the
    prediction is the argmax of the main output's logits (``dla_repro.outputs``),
    and the counts are accumulated on the CPU (:func:`dataset_metrics` with a
    :class:`SegmentationMetrics`). The model is put in eval mode and returned to
    the mode it was in, also when an error interrupts the pass.
    """
    metric = SegmentationMetrics(num_classes, ignore_index)
    dataset_metrics(model, dataset, [metric], batch_size)
    return metric._matrix().cpu()
