"""Tasks: what a model's output is scored against, so the loop can stay generic.

A task is any object with

* ``loss(output, target) -> Tensor`` — the scalar the optimiser minimises;
* ``metrics() -> Evaluator`` — a fresh accumulator with ``update(output, target)``
  and ``compute() -> dict[str, float]`` (optionally ``sync()``, which sums its
  state over DDP ranks; without it the engine averages the computed values);
* ``monitor`` / ``mode`` — the default metric (without the ``val_`` prefix) that
  picks ``best.pt``, and whether higher (``"max"``) or lower is better;
* ``params() -> dict`` — what to log about the task.

The engine prefixes the metrics with ``train_`` / ``val_``. A paper-specific loss
(e.g. an extra budget term read from the model) is a subclass of one of these.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from .distributed import all_sum


class Evaluator(Protocol):
    def update(self, output: torch.Tensor, target: torch.Tensor) -> None: ...
    def compute(self) -> dict[str, float]: ...


class Task(Protocol):
    monitor: str
    mode: str

    def loss(self, output: Any, target: torch.Tensor) -> torch.Tensor: ...
    def metrics(self) -> Evaluator: ...


# ------------------------------------------------------------------ classification
class TopKAccuracy:
    """Top-k accuracy over a stream of ``(logits N×C, labels N)`` batches (k ≤ C only)."""

    def __init__(self, topk: Sequence[int] = (1, 5)):
        self.topk = tuple(topk)
        self.correct: torch.Tensor | None = None  # one count per k, kept on the logits' device
        self.count: torch.Tensor | None = None

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        if self.correct is None:
            self.topk = tuple(k for k in self.topk if k <= logits.shape[1]) or (1,)
            self.correct = torch.zeros(len(self.topk), dtype=torch.long, device=logits.device)
            self.count = torch.zeros((), dtype=torch.long, device=logits.device)
        hit = logits.topk(max(self.topk), dim=1).indices == target[:, None]  # N × kmax
        self.correct += torch.stack([hit[:, :k].any(1).sum() for k in self.topk])
        self.count += target.numel()

    def sync(self) -> None:
        if self.correct is not None:
            all_sum(self.correct)
            all_sum(self.count)

    def compute(self) -> dict[str, float]:
        if self.correct is None:
            return {}
        n = max(int(self.count), 1)
        return {f"top{k}": c / n for k, c in zip(self.topk, self.correct.tolist())}


class ClassificationTask:
    """Cross-entropy on logits; top-1 / top-5 accuracy (top-5 with ≥ 5 classes); best by ``val_top1``."""

    monitor, mode = "top1", "max"

    def __init__(self, label_smoothing: float = 0.0, topk: Sequence[int] = (1, 5)):
        self.label_smoothing = label_smoothing
        self.topk = tuple(topk)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output, target, label_smoothing=self.label_smoothing)

    def metrics(self) -> TopKAccuracy:
        return TopKAccuracy(self.topk)

    def params(self) -> dict[str, Any]:
        return {"name": "classification", "label_smoothing": self.label_smoothing}


# -------------------------------------------------------------------- segmentation
class ConfusionMatrix:
    """Pixel accuracy and mean IoU from a C×C confusion matrix, ignoring ``ignore_index``.

    IoU_c = TP_c / (TP_c + FP_c + FN_c); mIoU averages the classes that occur in the
    target or the prediction (the others have no defined IoU).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix: torch.Tensor | None = None  # rows: target, columns: prediction

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        pred = output.argmax(1) if output.ndim == target.ndim + 1 else output
        keep = target != self.ignore_index
        c = self.num_classes
        counts = torch.bincount(target[keep].long() * c + pred[keep].long(), minlength=c * c)
        if self.matrix is None:
            self.matrix = torch.zeros(c, c, dtype=torch.long, device=counts.device)
        self.matrix += counts.view(c, c)

    def sync(self) -> None:
        if self.matrix is not None:
            all_sum(self.matrix)

    def compute(self) -> dict[str, float]:
        if self.matrix is None:
            return {}
        m = self.matrix.double()
        tp = m.diag()
        union = m.sum(0) + m.sum(1) - tp
        present = union > 0
        return {
            "pixel_acc": (tp.sum() / m.sum().clamp(min=1)).item(),
            "miou": (tp[present] / union[present]).mean().item() if present.any() else 0.0,
        }


def default_evaluator(num_classes: int, ignore_index: int) -> Evaluator:
    """The project's segmentation evaluator if ``dla_repro.metrics.segmentation`` provides
    ``SegmentationMetrics``, else the minimal ``ConfusionMatrix`` above."""
    try:
        from dla_repro.metrics.segmentation import SegmentationMetrics
    except ImportError:
        return ConfusionMatrix(num_classes, ignore_index)
    return SegmentationMetrics(num_classes, ignore_index=ignore_index)


class SegmentationTask:
    """Per-pixel cross-entropy (``ignore_index`` pixels excluded, optional class weights).

    ``output`` is ``N×C×h×w`` logits and ``target`` ``N×H×W`` labels; logits of a
    different size are bilinearly resized to the target first. Boundary detection is
    the two-class case with a heavier positive weight, e.g. ``class_weights=(1, 10)``.
    ``evaluator`` builds a fresh accumulator (default: ``default_evaluator``).
    """

    monitor, mode = "miou", "max"

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        class_weights: Sequence[float] | None = None,
        evaluator: Callable[[], Evaluator] | None = None,
    ):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        self.evaluator = evaluator or (lambda: default_evaluator(num_classes, ignore_index))

    def resize(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if output.shape[-2:] != target.shape[-2:]:
            output = F.interpolate(output, size=target.shape[-2:], mode="bilinear", align_corners=False)
        return output

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        output = self.resize(output, target).float()
        weight = None
        if self.class_weights is not None:
            weight = torch.tensor(self.class_weights, device=output.device)
        return F.cross_entropy(output, target.long(), weight=weight, ignore_index=self.ignore_index)

    def metrics(self) -> Evaluator:
        return _AtTargetSize(self.evaluator(), self.resize)

    def params(self) -> dict[str, Any]:
        return {
            "name": "segmentation",
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "class_weights": self.class_weights,
        }


class _AtTargetSize:
    """Hands an evaluator logits resized to the target's size; forwards everything else (``sync``)."""

    def __init__(self, inner: Evaluator, resize: Callable):
        self.inner, self.resize = inner, resize

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        self.inner.update(self.resize(output, target), target)

    def compute(self) -> dict[str, float]:
        return self.inner.compute()

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not yet set (copy / unpickle): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)
