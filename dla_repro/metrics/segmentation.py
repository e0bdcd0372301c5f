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
  return its confusion matrix (eval mode, fixed order, counts on the CPU).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
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


class SegmentationMetrics:
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
        self.confusion: torch.Tensor | None = None

    def reset(self) -> None:
        self.confusion = None

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        counts = confusion_matrix(pred, target, self.num_classes, self.ignore_index)
        if self.confusion is None:
            self.confusion = torch.zeros_like(counts)
        self.confusion += counts.to(self.confusion.device)

    def sync(self) -> None:
        import torch.distributed as dist

        if self.confusion is not None and dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.confusion)

    def _matrix(self) -> torch.Tensor:
        if self.confusion is None:
            return torch.zeros(self.num_classes, self.num_classes, dtype=torch.long)
        return self.confusion

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
    and the counts are accumulated on the CPU. The model is put in eval mode and
    returned to the mode it was in, also when an error interrupts the pass.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    cm = torch.zeros(num_classes, num_classes, dtype=torch.long)
    try:
        for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            pred = main_output(model(x.to(device))).argmax(1).cpu()
            cm += confusion_matrix(pred, y, num_classes, ignore_index)
    finally:
        model.train(was_training)
    return cm
