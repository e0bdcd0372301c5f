"""Tasks: what a model's output is scored against, so the loop can stay generic.

A task is any object with

* ``loss(output, target, model=None) -> Tensor`` -- the scalar the optimiser
  minimises. ``output`` is whatever the model returned: a tensor, or a main
  output with auxiliary outputs (``dla_repro.outputs.ModelOutput``). ``model`` is
  the trained module itself (unwrapped from DDP), for loss terms read from the
  model, e.g. DynOPool's GMACs budget loss on its learned scale factors (arXiv
  2205.15254, abstract and Fig. 2). A task whose ``loss`` takes no ``model``
  argument still works;
* ``metrics() -> Evaluator`` -- a fresh accumulator with ``update(output, target)``
  and ``compute() -> dict[str, float]`` (optionally ``sync()``, which sums its
  state over DDP ranks; without it the engine averages the computed values). The
  engine hands it the **main** output only;
* ``monitor`` / ``mode`` -- the default metric (without the ``val_`` prefix) that
  picks ``best.pt``, and whether higher (``"max"``) or lower is better;
* ``params() -> dict`` -- what to log about the task.

The engine prefixes the metrics with ``train_`` / ``val_``. The two tasks here
share ``SupervisedTask``: ``loss = criterion(main) + Σ_k aux_weights[k] ·
aux_criterion(k, aux_k)``, e.g. GALD's ``aux_weights={"aux": 0.4}`` (arXiv
1909.07229; the weight is the official code's, lxtGH/GALD-DGCNet
``libs/core/loss.py``). A paper-specific loss is a subclass that
overrides ``criterion`` / ``aux_criterion`` (e.g. OHEM on the main head only) or
``loss`` (an extra term read from ``model``): :class:`OhemSegmentationTask` puts
OHEM on the main head and plain cross-entropy on the auxiliary outputs (GALD's
objective with ``aux_weights={"aux": 0.4}``, set by its experiment module).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from ..labels import IGNORE_INDEX
from ..metrics.segmentation import SegmentationMetrics
from ..outputs import split_output
from .distributed import all_sum
from .losses import ohem_cross_entropy


class Evaluator(Protocol):
    def update(self, output: torch.Tensor, target: torch.Tensor) -> None: ...
    def compute(self) -> dict[str, float]: ...


class Task(Protocol):
    monitor: str
    mode: str

    def loss(self, output: Any, target: torch.Tensor, model: torch.nn.Module | None = None) -> torch.Tensor: ...
    def metrics(self) -> Evaluator: ...


class SupervisedTask:
    """A criterion on the main output plus weighted criteria on named auxiliary outputs.

    ``aux_weights`` maps each auxiliary output's name to its weight in the loss.
    A model that returns an auxiliary output the task has no weight for is an
    error (a weight of 0 ignores it on purpose). Without auxiliary outputs the
    loss is ``criterion(output, target)`` exactly.
    """

    monitor: str
    mode: str

    def __init__(self, aux_weights: Mapping[str, float] | None = None):
        self.aux_weights = {str(k): float(w) for k, w in (aux_weights or {}).items()}

    def criterion(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def aux_criterion(self, name: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of auxiliary output ``name`` (default: the main criterion)."""
        return self.criterion(output, target)

    def loss(self, output: Any, target: torch.Tensor, model: torch.nn.Module | None = None) -> torch.Tensor:
        main, aux = split_output(output)
        loss = self.criterion(main, target)
        unknown = sorted(set(aux) - set(self.aux_weights))
        if unknown:
            raise ValueError(
                f"the model returned auxiliary outputs {unknown} that the task has no weight for "
                f"(aux_weights={self.aux_weights}); pass e.g. aux_weights={{{unknown[0]!r}: 0.4}}"
            )
        for name, value in aux.items():
            weight = self.aux_weights[name]
            if weight:
                loss = loss + weight * self.aux_criterion(name, value, target)
        return loss

    def metrics(self) -> Evaluator:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        # An empty mapping flattens to no MLflow param: runs without aux outputs log what they always did.
        return {"aux_weights": dict(self.aux_weights)}


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


class ClassificationTask(SupervisedTask):
    """Cross-entropy on logits; top-1 / top-5 accuracy (top-5 with ≥ 5 classes); best by ``val_top1``."""

    monitor, mode = "top1", "max"

    def __init__(
        self,
        label_smoothing: float = 0.0,
        topk: Sequence[int] = (1, 5),
        aux_weights: Mapping[str, float] | None = None,
    ):
        super().__init__(aux_weights)
        self.label_smoothing = label_smoothing
        self.topk = tuple(topk)

    def criterion(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output, target, label_smoothing=self.label_smoothing)

    def metrics(self) -> TopKAccuracy:
        return TopKAccuracy(self.topk)

    def params(self) -> dict[str, Any]:
        return {"name": "classification", "label_smoothing": self.label_smoothing, **super().params()}


# -------------------------------------------------------------------- segmentation
class SegmentationTask(SupervisedTask):
    """Per-pixel cross-entropy (``ignore_index`` pixels excluded, optional class weights).

    ``output`` is ``N×C×h×w`` logits and ``target`` ``N×H×W`` labels; logits of a
    different size are bilinearly resized to the target first (auxiliary outputs
    too). Boundary detection is the two-class case with a heavier positive weight,
    e.g. ``class_weights=(1, 10)``. ``evaluator`` builds a fresh accumulator
    (default: ``dla_repro.metrics.segmentation.SegmentationMetrics``), which is
    handed the logits at the target's size.
    """

    monitor, mode = "miou", "max"

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = IGNORE_INDEX,
        class_weights: Sequence[float] | None = None,
        evaluator: Callable[[], Evaluator] | None = None,
        aux_weights: Mapping[str, float] | None = None,
    ):
        super().__init__(aux_weights)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        # a partial, not a lambda: a task travels to a sweep's worker processes by pickling
        self.evaluator = evaluator or functools.partial(SegmentationMetrics, num_classes, ignore_index=ignore_index)

    def resize(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if output.shape[-2:] != target.shape[-2:]:
            output = F.interpolate(output, size=target.shape[-2:], mode="bilinear", align_corners=False)
        return output

    def criterion(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
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
            **super().params(),
        }


class OhemSegmentationTask(SegmentationTask):
    """OHEM cross-entropy on the main output + weighted plain cross-entropy on the auxiliary outputs.

    ``loss = OHEM(main) + Σ_k aux_weights[k] · CE(aux_k)``; like every task here it
    expects no auxiliary output unless ``aux_weights`` names it.  GALD's objective
    (arXiv 1909.07229; official code lxtGH/GALD-DGCNet ``libs/core/loss.py``,
    ``CriterionOhemDSN``) is ``thresh = 0.7``, ``min_kept = 100000`` and
    ``aux_weights={"aux": 0.4}`` (``dla_repro.experiments.gald.local_distribution.make_task``).  OHEM is
    :func:`~.losses.ohem_cross_entropy`: with fewer valid pixels in the batch
    than ``min_kept`` it keeps them all, so at CPU sizes (a batch of 8 at 64×64
    is 32,768 pixels) ``min_kept`` must be scaled down for any mining to
    happen (released: ≈ 17 % of one crop's pixels).  Logits of another size
    than the labels are upsampled with ``align_corners=True``, as released, for
    both criteria and the metrics (``align_corners=False`` gives
    :class:`SegmentationTask`'s resizing).  No class weights (the released
    ``use_weight`` is off).
    """

    def __init__(
        self,
        num_classes: int,
        thresh: float = 0.7,
        min_kept: int = 100_000,
        ignore_index: int = IGNORE_INDEX,
        evaluator: Callable[[], Evaluator] | None = None,
        aux_weights: Mapping[str, float] | None = None,
        align_corners: bool = True,
    ):
        super().__init__(num_classes, ignore_index, evaluator=evaluator, aux_weights=aux_weights)
        self.thresh, self.min_kept, self.align_corners = float(thresh), int(min_kept), bool(align_corners)

    def resize(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if output.shape[-2:] != target.shape[-2:]:
            output = F.interpolate(output, size=target.shape[-2:], mode="bilinear", align_corners=self.align_corners)
        return output

    def criterion(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ohem_cross_entropy(self.resize(output, target), target, self.thresh, self.min_kept, self.ignore_index)

    def aux_criterion(self, name: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return super().criterion(output, target)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "name": "segmentation_ohem", "ohem_thresh": self.thresh,
                "ohem_min_kept": self.min_kept, "align_corners": self.align_corners}


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
