"""Scores of small patterns: IoU by object size and accuracy near class boundaries.

GALD (Li et al., BMVC 2019, arXiv 1909.07229) argues that global aggregation
(non-local, PSP, ASPP, CGNL) oversmooths *small patterns* -- small objects and
boundaries -- and that its local-distribution mask restores them.  mIoU is
dominated by large regions, so two scores look at the small patterns directly.
Neither the paper nor its code reports scores by object size, so these are this
project's instruments with their own definitions, not the paper's.
Both work on a ground-truth label map ``gt`` and a prediction ``pred`` (labels, or
logits with a class dimension at 1); pixels whose target is the ignore label
(``dla_repro.labels.IGNORE_INDEX``, 255) are scored nowhere.

**Local object IoU by size.**  An *object* ``O`` is a connected component of one
class ``c`` in the ground truth (4-connectivity by default: pixels sharing an
edge; 8 adds the diagonals), found among the non-ignore pixels, so an ignore
region cuts an object in two.  Its *size* is its area ``|O|`` in pixels.  With
``N_r(O)`` the pixels within Euclidean distance ``r`` of ``O`` (``O`` dilated by
a disk of radius ``r``, ``radius``), the prediction *attributed* to ``O`` is

    P_O = {p ∈ N_r(O) : pred(p) = c, gt(p) ∉ {c, ignore}} ∪ {p ∈ O : pred(p) = c}

-- class-``c`` predictions on ``O`` itself or on nearby pixels of *another* class
(pixels of other class-``c`` objects are theirs, not false alarms of ``O``).  Then

    TP_O = |{p ∈ O : pred(p) = c}|,   FP_O = |P_O \\ O|
    IoU_O    = |O ∩ P_O| / |O ∪ P_O| = TP_O / (|O| + FP_O)      ("local object IoU")
    recall_O = TP_O / |O|                                         (per-object recall)

Why this definition: a dataset IoU per size bin is not defined (a false-positive
pixel has no object, hence no size), and per-object recall alone cannot see a
prediction that smears an object into its surroundings -- the blurring GALD
attributes to global context.  ``IoU_O`` charges exactly the false alarms of the
object's class within ``r`` pixels of it, and ``r = 0`` makes it the recall.  A
false-alarm pixel near two objects of its class counts for both.

Objects are grouped by size into bins ``[lo, hi)`` given by ``edges`` (objects
outside ``[edges[0], edges[-1])`` are left out).  Per bin the score is the
**mean over objects** (every object weighs the same, whatever its area), with
the number of objects beside it; a bin without objects scores NaN with count 0.
Defaults: :data:`DEFAULT_SIZE_EDGES` for the 32-128 px synthetic scenes (a
synthetic-v2 dot is 9 px, a line 2 px wide; occlusion also leaves slivers of a
few pixels of any class in the smallest bin, so restrict ``classes`` to ask about
one kind of pattern), :data:`COCO_SIZE_EDGES` (COCO's small / medium / large at
32² and 96² px) for real images such as Cityscapes.

**Boundary-band accuracy.**  The band of width ``k`` is the set of pixels that
have a pixel of another (non-ignore) class within Euclidean distance ``k``:

    B_k = {p : some q with ‖p − q‖ ≤ k, gt(q) ≠ gt(p), gt(q) ≠ ignore}

computed as "the disk of radius ``k`` around ``p`` holds ≥ 2 classes" (each
class's mask dilated by the disk, ``segmentation._disk`` / ``_dilate``).  It
covers both sides of every label change, symmetrically: along a straight edge
``B_1`` is 2 px wide and ``B_k`` is ``2k`` px wide (the synthetic ``boundary``
map marks only one side of a change, so it is not used).  The image border and
the ignore label are not boundaries.  Scores, from the confusion matrices
(``segmentation.confusion_matrix``) of the non-ignore pixels inside and outside
the band, summed over the dataset:

    band_acc@k    = correct pixels in B_k / pixels in B_k
    offband_acc@k = correct pixels outside B_k / pixels outside B_k     (the contrast)
    band_miou@k   = mIoU (``scores_from_confusion``) of the pixels in B_k
    band_share@k  = pixels in B_k / all non-ignore pixels

What to call: :func:`object_scores` (one row per object, for notebooks),
:func:`size_table` (a ``compute()`` dict as one row per bin),
:class:`ObjectSizeMetrics` and :class:`BoundaryBandMetrics` (streaming
evaluators: ``update(pred, target)`` / ``compute() -> dict[str, float]`` /
``sync()``), :func:`boundary_band` (the band itself) and :class:`MetricGroup`
(several evaluators as one, e.g. mIoU with both of these for a training task).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import ndimage

from ..labels import IGNORE_INDEX
from .segmentation import _dilate, _disk, _labels, _SummedState, confusion_matrix, scores_from_confusion

__all__ = [
    "DEFAULT_SIZE_EDGES",
    "COCO_SIZE_EDGES",
    "object_scores",
    "size_table",
    "ObjectSizeMetrics",
    "boundary_band",
    "BoundaryBandMetrics",
    "MetricGroup",
]

DEFAULT_SIZE_EDGES = (0, 16, 64, 256, 1024, math.inf)
"""Object-area bins (px) for 32-128 px synthetic scenes: dots and slivers, lines, shapes, regions."""
COCO_SIZE_EDGES = (0, 32**2, 96**2, math.inf)
"""COCO's small / medium / large object areas (px), for real images (e.g. Cityscapes)."""

_STRUCTURE = {4: ndimage.generate_binary_structure(2, 1), 8: ndimage.generate_binary_structure(2, 2)}
"""Pixel neighbourhoods of 4- and 8-connectivity."""


def _check_edges(edges: Sequence[float]) -> tuple[float, ...]:
    e = tuple(float(v) for v in edges)
    if len(e) < 2 or e[0] < 0 or any(not b > a for a, b in zip(e, e[1:])) or any(math.isnan(v) for v in e):
        raise ValueError(f"size edges must be ≥ 2 increasing areas ≥ 0 (the last may be inf), got {tuple(edges)!r}")
    return e


def _check_shape_options(connectivity: int, radius: float) -> None:
    if connectivity not in _STRUCTURE:
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity!r}")
    if not (radius >= 0 and radius < float("inf")):
        raise ValueError(f"radius must be a finite distance ≥ 0 in pixels, got {radius!r}")


def _edge_text(v: float) -> str:
    return "inf" if math.isinf(v) else (str(int(v)) if float(v).is_integer() else f"{v:g}")


def _bin_names(edges: Sequence[float]) -> list[str]:
    return [f"{_edge_text(lo)}-{_edge_text(hi)}" for lo, hi in zip(edges, edges[1:])]


def _batched(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(labels, target)`` as long ``N×H×W`` tensors on ``pred``'s device (an ``H×W`` pair becomes N = 1)."""
    labels = _labels(torch.as_tensor(pred), torch.as_tensor(target))
    target = torch.as_tensor(target, device=labels.device).long()
    labels = labels.long()
    if target.ndim == 2:
        labels, target = labels[None], target[None]
    if target.ndim != 3:
        raise ValueError(f"targets must be N×H×W or H×W label maps, got shape {tuple(target.shape)}")
    return labels, target


# ----------------------------------------------------------------------------- objects
def _components(target: np.ndarray, classes: Sequence[int], connectivity: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, object_class)``: ``ids`` N×H×W with the object index of each pixel (−1: none), batched over N."""
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = _STRUCTURE[connectivity]  # no connection across images
    ids = np.full(target.shape, -1, dtype=np.int64)
    object_class: list[np.ndarray] = []
    for c in classes:
        found, n = ndimage.label(target == c, structure=structure)
        if n:
            on = found > 0
            ids[on] = found[on] - 1 + sum(len(k) for k in object_class)
            object_class.append(np.full(n, c, dtype=np.int64))
    return ids, (np.concatenate(object_class) if object_class else np.zeros(0, dtype=np.int64))


def _object_counts(labels: torch.Tensor, target: torch.Tensor, classes: Sequence[int] | None, connectivity: int,
                   radius: float, ignore_index: int | None) -> dict[str, np.ndarray]:
    """Per ground-truth object: ``image``, ``class``, ``area``, ``tp``, ``fp``, ``recall``, ``iou`` (module
    docstring)."""
    _check_shape_options(connectivity, radius)
    gt, pred = target.cpu().numpy(), labels.cpu().numpy()
    valid = gt != ignore_index if ignore_index is not None else np.ones(gt.shape, dtype=bool)
    present = np.unique(gt[valid])
    keep = present if classes is None else present[np.isin(present, np.asarray(list(classes)))]
    ids, object_class = _components(np.where(valid, gt, -1), keep.tolist(), connectivity)
    k = object_class.size
    on = ids >= 0
    area = np.bincount(ids[on], minlength=k)
    tp = np.bincount(ids[on & (pred == gt)], minlength=k)
    image = np.zeros(k, dtype=np.int64)
    image[ids[on]] = np.nonzero(on)[0]

    # FP_O: class-c predictions on pixels of another valid class within `radius` of a class-c object O
    n, y, x = np.nonzero(valid & (pred != gt))
    wrong = pred[n, y, x]
    hits = []
    for dy, dx in (torch.nonzero(_disk(radius)) - int(radius)).tolist():
        yy, xx = y + dy, x + dx
        inside = (yy >= 0) & (yy < gt.shape[1]) & (xx >= 0) & (xx < gt.shape[2])
        obj = np.full(y.shape, -1, dtype=np.int64)
        obj[inside] = ids[n[inside], yy[inside], xx[inside]]
        mine = obj >= 0
        mine[mine] = object_class[obj[mine]] == wrong[mine]
        hits.append(np.flatnonzero(mine) * max(k, 1) + obj[mine])
    pairs = np.unique(np.concatenate(hits)) if hits else np.zeros(0, dtype=np.int64)  # (pixel, object), once
    fp = np.bincount(pairs % max(k, 1), minlength=k)
    return {"image": image, "class": object_class, "area": area, "tp": tp, "fp": fp,
            "recall": tp / np.maximum(area, 1), "iou": tp / np.maximum(area + fp, 1)}


def object_scores(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    classes: Sequence[int] | None = None,
    connectivity: int = 4,
    radius: float = 2.0,
    ignore_index: int | None = IGNORE_INDEX,
) -> pd.DataFrame:
    """One row per ground-truth object of ``target`` (``N×H×W`` or ``H×W``): ``image`` (index in the batch),
    ``class``, ``area``, ``tp``, ``fp``, ``recall`` and ``iou`` (the local object IoU, module docstring).

    ``pred``: labels shaped like ``target`` or logits with a class dimension at 1.
    ``classes``: the classes whose objects are scored (default: every class present);
    the prediction of any class still counts.  Rows are ordered by class, then by
    position of the object's first pixel (image, row, column).
    """
    labels, target = _batched(pred, target)
    return pd.DataFrame(_object_counts(labels, target, classes, connectivity, radius, ignore_index))


class ObjectSizeMetrics(_SummedState):
    """Streaming local object IoU and recall per size bin: ``update(pred, target)`` per batch, ``compute()``.

    ``compute()`` gives, for every bin ``[lo, hi)`` of ``edges``, ``size_iou@<lo>-<hi>``
    and ``size_recall@<lo>-<hi>`` (means over the bin's objects, NaN without one)
    and ``size_count@<lo>-<hi>`` (its number of objects), e.g. ``size_iou@0-16``,
    ``size_count@1024-inf``.  The sums live on the device of the first batch;
    ``sync()`` adds them over DDP ranks.
    """

    def __init__(
        self,
        edges: Sequence[float] = DEFAULT_SIZE_EDGES,
        *,
        classes: Sequence[int] | None = None,
        connectivity: int = 4,
        radius: float = 2.0,
        ignore_index: int | None = IGNORE_INDEX,
    ):
        _check_shape_options(connectivity, radius)
        self.edges = _check_edges(edges)
        self.classes = None if classes is None else [int(c) for c in classes]
        self.connectivity, self.radius, self.ignore_index = int(connectivity), float(radius), ignore_index
        # total: bins × (objects, Σ IoU, Σ recall), float64

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        labels, target = _batched(pred, target)
        c = _object_counts(labels, target, self.classes, self.connectivity, self.radius, self.ignore_index)
        which = np.searchsorted(np.asarray(self.edges), c["area"], side="right") - 1
        inside = (which >= 0) & (which < len(self.edges) - 1)
        which, bins = which[inside], len(self.edges) - 1
        sums = np.stack([np.bincount(which, minlength=bins).astype(np.float64),
                         np.bincount(which, c["iou"][inside], minlength=bins),
                         np.bincount(which, c["recall"][inside], minlength=bins)], 1)
        self._add(torch.from_numpy(sums).to(labels.device))

    def compute(self) -> dict[str, float]:
        sums = self.total.cpu() if self.total is not None else torch.zeros(len(self.edges) - 1, 3, dtype=torch.float64)
        out: dict[str, float] = {}
        for name, (count, iou, recall) in zip(_bin_names(self.edges), sums.tolist()):
            out[f"size_iou@{name}"] = iou / count if count else math.nan
            out[f"size_recall@{name}"] = recall / count if count else math.nan
            out[f"size_count@{name}"] = count
        return out


    def below(self, area: float) -> dict[str, float]:
        """``iou``, ``recall`` (means) and ``count`` over the objects smaller than ``area`` px² -- one of
        ``edges``, so the bins below it hold exactly those objects: no second pass over the data."""
        if area not in self.edges[1:] or self.edges[0] != 0:
            raise ValueError(f"below({area!r}): needs bins from 0 with {area!r} as an upper edge, got {self.edges}")
        sums = self.total.cpu() if self.total is not None else torch.zeros(len(self.edges) - 1, 3, dtype=torch.float64)
        count, iou, recall = sums[: self.edges.index(area)].sum(0).tolist()
        return {"iou": iou / count if count else math.nan, "recall": recall / count if count else math.nan,
                "count": count}


def size_table(scores: dict[str, float]) -> pd.DataFrame:
    """The ``size_*`` entries of a ``compute()`` dict as one row per bin: ``bin`` (``"0-16"``), ``lo``, ``hi``,
    ``count``, ``iou``, ``recall`` -- in the order of the dict (ascending size for :class:`ObjectSizeMetrics`)."""
    rows = []
    for key, count in scores.items():
        if key.startswith("size_count@"):
            name = key.split("@", 1)[1]
            lo, hi = (float(v) for v in name.split("-"))
            rows.append({"bin": name, "lo": lo, "hi": hi, "count": int(count),
                         "iou": scores[f"size_iou@{name}"], "recall": scores[f"size_recall@{name}"]})
    return pd.DataFrame(rows, columns=["bin", "lo", "hi", "count", "iou", "recall"])


# ------------------------------------------------------------------------------ boundary band
def _check_width(width: float) -> None:
    if not (width >= 1 and width < float("inf")):
        raise ValueError(f"a band width must be a finite distance ≥ 1 in pixels, got {width!r}")


def boundary_band(target: torch.Tensor, width: float, ignore_index: int | None = IGNORE_INDEX) -> torch.Tensor:
    """``B_width`` (module docstring): boolean, shaped like ``target``; True where a pixel of another non-ignore
    class lies within Euclidean distance ``width`` (ignore pixels themselves may be True; they are never scored)."""
    _check_width(width)
    target = torch.as_tensor(target).long()
    flat = target[None] if target.ndim == 2 else target
    valid = flat != ignore_index if ignore_index is not None else torch.ones_like(flat, dtype=torch.bool)
    present = torch.unique(flat[valid])
    masks = (flat[:, None] == present.view(1, -1, 1, 1)) & valid[:, None]  # N×C'×H×W, one channel per class
    band = _dilate(masks, _disk(float(width))).sum(1) >= 2
    return band.view(target.shape)


class BoundaryBandMetrics(_SummedState):
    """Streaming boundary-band scores for band widths ``widths`` (pixels): ``update(pred, target)``, ``compute()``.

    ``compute()`` gives per width ``k`` ``band_acc@<k>px``, ``offband_acc@<k>px``,
    ``band_miou@<k>px`` and ``band_share@<k>px`` (module docstring; NaN where there
    is no pixel to score), e.g. ``band_acc@2px``.  It keeps, per width, the
    confusion matrices inside and outside the band, on the device of the first
    batch; ``sync()`` adds them over DDP ranks.
    """

    def __init__(self, num_classes: int, widths: Sequence[float] = (1, 2, 4), ignore_index: int | None = IGNORE_INDEX):
        self.widths = tuple(float(k) for k in widths)
        if not self.widths:
            raise ValueError("need at least one band width")
        for k in self.widths:
            _check_width(k)
        self.num_classes, self.ignore_index = int(num_classes), ignore_index
        # total: confusion matrices, widths × (in band, off band) × C × C

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        labels, target = _batched(pred, target)
        valid = target != self.ignore_index if self.ignore_index is not None else torch.ones_like(target, dtype=bool)
        c = self.num_classes
        parts = []
        for k in self.widths:
            band = boundary_band(target, k, self.ignore_index)
            for where in (band & valid, ~band & valid):
                parts.append(confusion_matrix(labels[where], target[where], c, ignore_index=None))
        self._add(torch.stack(parts).view(len(self.widths), 2, c, c))

    def compute(self) -> dict[str, float]:
        c = self.num_classes
        confusion = (self.total.cpu() if self.total is not None
                     else torch.zeros(len(self.widths), 2, c, c, dtype=torch.long))
        out: dict[str, float] = {}
        for k, (inside, outside) in zip(self.widths, confusion):
            name = f"{k:g}px"
            scored = int(inside.sum() + outside.sum())
            band = scores_from_confusion(inside)
            out[f"band_acc@{name}"] = band["pixel_acc"]
            out[f"offband_acc@{name}"] = scores_from_confusion(outside)["pixel_acc"]
            out[f"band_miou@{name}"] = band["miou"]
            out[f"band_share@{name}"] = int(inside.sum()) / scored if scored else math.nan
        return out


# ------------------------------------------------------------------------------ several at once
class MetricGroup:
    """Several evaluators as one: ``update`` feeds each, ``compute`` merges their dicts, ``sync`` syncs each.

    Built from factories (zero-argument callables, e.g. ``functools.partial``), so a
    partial of the group is itself a picklable evaluator factory for a task::

        SegmentationTask(C, evaluator=functools.partial(MetricGroup,
            functools.partial(SegmentationMetrics, C), ObjectSizeMetrics,
            functools.partial(BoundaryBandMetrics, C)))

    Every member must have ``sync()`` (otherwise DDP would report one rank's state)
    and the members' keys must differ.
    """

    def __init__(self, *factories: Callable[[], Any]):
        if not factories:
            raise ValueError("a metric group needs at least one evaluator factory")
        self.members = [make() for make in factories]
        for m in self.members:
            if not callable(getattr(m, "sync", None)):
                raise ValueError(f"{type(m).__name__} has no sync(); a group sums every member over DDP ranks")

    def reset(self) -> None:
        for m in self.members:
            m.reset()

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        for m in self.members:
            m.update(pred, target)

    def sync(self) -> None:
        for m in self.members:
            m.sync()

    def compute(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for m in self.members:
            values = m.compute()
            clash = sorted(set(values) & set(out))
            if clash:
                raise ValueError(f"two evaluators in a group report {clash}")
            out.update(values)
        return out

