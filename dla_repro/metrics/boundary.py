"""Boundary detection scores ODS / OIS / AP, following the BSDS500 benchmark protocol.

The protocol of the Berkeley benchmark (``evaluation_bdry_image.m`` /
``collect_eval_bdry.m``, also Dollár's ``edgesEvalImg`` / ``edgesEvalDir``), per
image with soft boundary map ``E`` ∈ [0, 1] and annotators' boolean maps ``G_a``:

* thresholds ``t_k = k / (K + 1)``, k = 1..K (K = 99 by default);
* ``B_k = thin(E ≥ t_k)``: morphological thinning to one-pixel-wide curves
  (MATLAB's ``bwmorph(·, 'thin', Inf)``, see ``thin``);
* for every annotator, a one-to-one matching of the pixels of ``B_k`` to those of
  ``G_a`` within a distance ``max_dist × image diagonal`` (see "Matching");
* counts: ``cntR = Σ_a matched(G_a)``, ``sumR = Σ_a |G_a|`` (every annotator's
  pixels count for recall), ``cntP = |pixels of B_k matched to any annotator|``,
  ``sumP = |B_k|``.

Dataset scores, with ``R = cntR / sumR``, ``P = cntP / sumP``, ``F = 2PR / (P + R)``:

* **ODS** -- counts summed over images per threshold, F at the best threshold;
  as in the benchmark, R and P are linearly interpolated between neighbouring
  thresholds (100 steps) and the best interpolated F is reported;
* **OIS** -- each image at its own best threshold (first maximum of its F), the
  counts at those thresholds summed over images, then R, P, F (not a mean of
  per-image F);
* **AP** -- precision linearly interpolated as a function of recall (the
  dataset-level curve; for equal recalls the lowest threshold's point) at
  recall 0, 0.01, …, 1; points outside the recall range the curve covers count
  as 0; AP = 0.01 × the sum (the benchmark's ``interp1`` area). A curve of a
  single distinct recall (e.g. a binary map, the same at every threshold) has
  AP 0, as in the benchmark.

Matching. The benchmark's ``correspondPixels`` solves a min-cost assignment in
which leaving a pixel unmatched costs far more than any match, so it finds a
maximum-cardinality matching (ties broken by total distance); only the
cardinality enters the scores. We compute a maximum-cardinality matching
exactly with Hopcroft-Karp (``scipy.sparse.csgraph.maximum_bipartite_matching``)
on the bipartite graph of (prediction pixel, ground-truth pixel) pairs at
Euclidean distance ≤ ``max_dist × sqrt(H² + W²)``. The candidate pairs are built
once per image and annotator for every pixel that any threshold can keep, then
filtered per threshold; a threshold that keeps the same pixels as the previous
one reuses its counts.

Tolerance. ``max_dist`` (default 0.0075, the benchmark's) is a fraction of the
diagonal: 4.3 px on a 481×321 BSDS image but under 1 px below 133 px of diagonal,
where only exact hits match -- on a 64×64 image 0.68 px, so a prediction on the
other side of the same one-pixel label change counts as a miss.  ``max_dist_px``
replaces it by a radius in pixels, the same for every image size, for small
synthetic images (``dla_repro.experiments.dla.boundaries`` uses 1 px there and
says why); it is an explicit option and ``None`` by default, so the BSDS protocol
is unchanged for real data.  A radius ``ρ`` matches a pixel to the ground-truth
pixels at Euclidean distance ≤ ``ρ`` (1 px: the pixel itself and its four
edge-neighbours).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.csgraph import maximum_bipartite_matching

_EPS = float(np.finfo(np.float64).eps)

__all__ = ["thin", "boundary_thresholds", "matching_radius", "tolerance_text", "boundary_counts", "scores_from_counts",
           "boundary_scores", "BoundaryMetrics"]

# ------------------------------------------------------------------------------- thinning
# Neighbours x1..x8 of p, counter-clockwise from east, as (dy, dx).
_NEIGHBOURS = ((0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1))


def _thinning_luts() -> tuple[np.ndarray, np.ndarray]:
    """Deletion tables of the two sub-iterations, indexed by the 8-bit code Σ x_k 2^(k-1).

    The algorithm of MATLAB's ``bwmorph(·, 'thin')`` (Lam, Lee & Suen, 1992,
    p. 879): a pixel is deleted when

    * G1: X_H(p) = 1, with X_H = Σ_{i=1..4} [x_{2i-1} = 0 and (x_{2i} = 1 or x_{2i+1} = 1)];
    * G2: 2 ≤ min(n1, n2) ≤ 3, n1 = Σ_{k=1..4} (x_{2k-1} ∨ x_{2k}), n2 = Σ_{k=1..4} (x_{2k} ∨ x_{2k+1});
    * G3 (first sub-iteration): ((x2 ∨ x3 ∨ ¬x8) ∧ x1) = 0 (an east or north boundary pixel);
      G3' (second): ((x6 ∨ x7 ∨ ¬x4) ∧ x5) = 0 (a west or south boundary pixel);

    (indices modulo 8: x9 = x1).
    """
    first, second = np.zeros(256, bool), np.zeros(256, bool)
    for code in range(256):
        x = [None] + [(code >> k) & 1 for k in range(8)] + [code & 1]  # x[1..9]
        xh = sum(1 for i in range(1, 5) if x[2 * i - 1] == 0 and (x[2 * i] or x[2 * i + 1]))
        n1 = sum(1 for k in range(1, 5) if x[2 * k - 1] or x[2 * k])
        n2 = sum(1 for k in range(1, 5) if x[2 * k] or x[2 * k + 1])
        if xh != 1 or not 2 <= min(n1, n2) <= 3:
            continue
        first[code] = not ((x[2] or x[3] or not x[8]) and x[1])
        second[code] = not ((x[6] or x[7] or not x[4]) and x[5])
    return first, second


_LUT_FIRST, _LUT_SECOND = _thinning_luts()


def _thin_flat(mask: np.ndarray) -> np.ndarray:
    """Thin ``mask``; the flat indices (in the unpadded image, ascending) of the kept pixels.

    Equivalent to applying each sub-iteration to every pixel, but a pixel is only
    re-examined by a sub-iteration when a neighbour was deleted since that
    sub-iteration last examined it (otherwise its code, hence the answer, is
    unchanged), so the work follows the peeling front instead of the whole shape.
    """
    h, w = mask.shape
    pw = w + 2
    alive = np.zeros((h + 2) * pw, dtype=bool)
    alive.reshape(h + 2, pw)[1:-1, 1:-1] = mask
    offsets = np.array([dy * pw + dx for dy, dx in _NEIGHBOURS])[:, None]
    dirty = [alive.copy(), alive.copy()]  # to examine, per sub-iteration
    luts = (_LUT_FIRST, _LUT_SECOND)
    sub, idle = 0, 0
    while idle < 2:  # stop after two consecutive sub-iterations without a deletion
        todo = np.flatnonzero(dirty[sub])
        dirty[sub][todo] = False
        todo = todo[alive[todo]]
        gone = todo[:0]
        if todo.size:
            # 8 × n neighbour bits → one byte per pixel, bit k-1 = x_k
            code = np.packbits(alive[todo + offsets], axis=0, bitorder="little")[0]
            gone = todo[luts[sub][code]]
        if gone.size:
            alive[gone] = False  # parallel: all codes were read before this
            around = (gone + offsets).ravel()
            dirty[0][around] = True
            dirty[1][around] = True
            idle = 0
        else:
            idle += 1
        sub ^= 1
    rows, cols = np.divmod(np.flatnonzero(alive), pw)
    return (rows - 1) * w + (cols - 1)


def thin(mask: np.ndarray) -> np.ndarray:
    """Morphological thinning to one-pixel-wide, 8-connected curves (``bwmorph(mask, 'thin', Inf)``).

    Repeats the two parallel sub-iterations of ``_thinning_luts`` until nothing
    changes. Pixels outside the image count as background.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"thin expects a 2-D mask, got shape {mask.shape}")
    flat = _thin_flat(mask)
    out = np.zeros(mask.size, dtype=bool)
    out[flat] = True
    return out.reshape(mask.shape)


# ------------------------------------------------------------------------------- counting
def boundary_thresholds(thresholds: int | Sequence[float] = 99) -> np.ndarray:
    """``K`` evenly spaced thresholds ``k / (K + 1)`` in (0, 1), or the given values sorted."""
    if isinstance(thresholds, (int, np.integer)):
        if thresholds < 1:
            raise ValueError(f"need at least one threshold, got {thresholds}")
        return np.linspace(1 / (thresholds + 1), 1 - 1 / (thresholds + 1), int(thresholds))
    t = np.sort(np.asarray(thresholds, dtype=np.float64).ravel())
    if t.size == 0:
        raise ValueError("need at least one threshold")
    return t


def _as_annotators(gt: Any, shape: tuple[int, int]) -> list[np.ndarray]:
    if isinstance(gt, np.ndarray) or hasattr(gt, "numpy"):
        arr = np.asarray(gt)
        maps = [arr] if arr.ndim == 2 else list(arr)
    else:
        maps = [np.asarray(g) for g in gt]
    if not maps:
        raise ValueError("no ground-truth annotator")
    out = []
    for a, g in enumerate(maps):
        if g.shape != shape:
            raise ValueError(f"annotator {a} map is {g.shape}, prediction is {shape}")
        out.append(g.astype(bool))
    return out


def matching_radius(shape: Sequence[int], max_dist: float = 0.0075, max_dist_px: float | None = None) -> float:
    """The matching radius in pixels on an image of ``shape`` (H, W): ``max_dist_px`` when given, else
    ``max_dist × sqrt(H² + W²)`` (the benchmark's)."""
    if max_dist_px is not None:
        if not (np.isfinite(max_dist_px) and max_dist_px >= 0):
            raise ValueError(f"max_dist_px must be a finite radius ≥ 0 in pixels, got {max_dist_px!r}")
        return float(max_dist_px)
    if not (np.isfinite(max_dist) and max_dist >= 0):
        raise ValueError(f"max_dist must be a finite fraction ≥ 0 of the diagonal, got {max_dist!r}")
    h, w = shape[-2:]
    return float(max_dist * np.hypot(h, w))


def tolerance_text(max_dist: float = 0.0075, max_dist_px: float | None = None) -> str:
    """The tolerance in words for tables and captions: ``"1 px"`` or ``"0.0075 × diagonal"``."""
    return f"{max_dist_px:g} px" if max_dist_px is not None else f"{max_dist:g} × diagonal"


def _disk_offsets(radius: float) -> np.ndarray:
    r = int(np.ceil(radius))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    keep = dy * dy + dx * dx <= radius * radius + 1e-9
    return np.stack([dy[keep], dx[keep]], axis=1)


def _candidate_pairs(cand_y, cand_x, gt: np.ndarray, offsets: np.ndarray):
    """(pixel flat index, gt id) for candidate pixels and gt pixels within the disk of offsets."""
    h, w = gt.shape
    gt_id = np.full(gt.shape, -1, dtype=np.int64)
    gt_id[gt] = np.arange(int(gt.sum()))
    pix, ids = [], []
    for dy, dx in offsets:
        yy, xx = cand_y + dy, cand_x + dx
        inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        g = np.full(cand_y.shape, -1, dtype=np.int64)
        g[inside] = gt_id[yy[inside], xx[inside]]
        hit = g >= 0
        pix.append(cand_y[hit] * w + cand_x[hit])
        ids.append(g[hit])
    pix, ids = np.concatenate(pix), np.concatenate(ids)
    order = np.argsort(pix, kind="stable")
    return pix[order], ids[order]


def boundary_counts(
    pred: np.ndarray,
    gts: Sequence[np.ndarray] | np.ndarray,
    thresholds: int | Sequence[float] = 99,
    max_dist: float = 0.0075,
    thin_pred: bool = True,
    max_dist_px: float | None = None,
) -> np.ndarray:
    """Per-threshold counts of one image: a ``K × 4`` int64 array ``cntR, sumR, cntP, sumP``.

    Pixels match within :func:`matching_radius` (``max_dist_px`` pixels when given,
    else ``max_dist`` × the diagonal)."""
    pred = np.asarray(pred, dtype=np.float64)
    if pred.ndim != 2:
        raise ValueError(f"a prediction must be an H×W map, got shape {pred.shape}")
    if np.isnan(pred).any() or pred.min(initial=0) < 0 or pred.max(initial=0) > 1 + 1e-6:
        raise ValueError("predictions must be probabilities in [0, 1] (apply a sigmoid to logits)")
    annotators = _as_annotators(gts, pred.shape)
    thr = boundary_thresholds(thresholds)
    h, w = pred.shape
    offsets = _disk_offsets(matching_radius((h, w), max_dist, max_dist_px))

    cand_y, cand_x = np.nonzero(pred >= max(thr[0], _EPS))
    pairs = [_candidate_pairs(cand_y, cand_x, g, offsets) for g in annotators]
    n_gt = [int(g.sum()) for g in annotators]
    sum_r = sum(n_gt)

    out = np.zeros((thr.size, 4), dtype=np.int64)
    out[:, 1] = sum_r
    rank = np.full(h * w, -1, dtype=np.int64)
    previous_size, previous_row = -1, None
    for k, t in enumerate(thr):
        above = pred >= max(t, _EPS)
        size = int(above.sum())
        if size == previous_size:  # the thresholded sets are nested: same size, same set
            out[k] = previous_row
            continue
        kept = _thin_flat(above) if thin_pred else np.flatnonzero(above)
        rank[:] = -1
        rank[kept] = np.arange(kept.size)
        matched_pred = np.zeros(kept.size, dtype=bool)
        cnt_r = 0
        for (pix, gid), n in zip(pairs, n_gt):
            rows = rank[pix]
            use = rows >= 0
            if not use.any():
                continue
            rows = rows[use]  # ascending: pairs are sorted by pixel and rank is monotone
            indptr = np.zeros(kept.size + 1, dtype=np.int64)
            np.cumsum(np.bincount(rows, minlength=kept.size), out=indptr[1:])
            graph = sp.csr_array((np.ones(rows.size, dtype=np.int8), gid[use], indptr), shape=(kept.size, n))
            match = maximum_bipartite_matching(graph, perm_type="column")
            hit = match >= 0
            cnt_r += int(hit.sum())
            matched_pred |= hit
        out[k] = (cnt_r, sum_r, int(matched_pred.sum()), kept.size)
        previous_size, previous_row = size, out[k].copy()
    return out


# ------------------------------------------------------------------------------- scores
def _rpf(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cnt_r, sum_r, cnt_p, sum_p = (counts[..., i].astype(np.float64) for i in range(4))
    r = cnt_r / np.maximum(_EPS, sum_r)
    p = cnt_p / np.maximum(_EPS, sum_p)
    f = 2 * p * r / np.maximum(_EPS, p + r)
    return r, p, f


def _best_interpolated(t: np.ndarray, r: np.ndarray, p: np.ndarray) -> tuple[float, float, float, float]:
    """Best F along the curve with R, P, T linearly interpolated between neighbouring thresholds."""
    if t.size == 1:
        return float(t[0]), float(r[0]), float(p[0]), float(2 * p[0] * r[0] / max(_EPS, p[0] + r[0]))
    a = np.linspace(0, 1, 100)[None, :]
    rj = r[1:, None] * a + r[:-1, None] * (1 - a)
    pj = p[1:, None] * a + p[:-1, None] * (1 - a)
    tj = t[1:, None] * a + t[:-1, None] * (1 - a)
    fj = 2 * pj * rj / np.maximum(_EPS, pj + rj)
    j, i = np.unravel_index(np.argmax(fj), fj.shape)
    return float(tj[j, i]), float(rj[j, i]), float(pj[j, i]), float(fj[j, i])


def _average_precision(r: np.ndarray, p: np.ndarray) -> float:
    recalls, first = np.unique(r, return_index=True)  # first occurrence = lowest threshold
    if recalls.size < 2:
        return 0.0
    grid = np.linspace(0, 1, 101)
    interp = np.interp(grid, recalls, p[first], left=np.nan, right=np.nan)
    return float(np.nansum(interp) * 0.01)


def scores_from_counts(counts: np.ndarray, thresholds: int | Sequence[float] = 99) -> dict[str, Any]:
    """ODS / OIS / AP and the dataset curve from per-image counts ``N × K × 4`` (``boundary_counts``)."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim == 2:
        counts = counts[None]
    thr = boundary_thresholds(thresholds)
    if counts.shape[1:] != (thr.size, 4):
        raise ValueError(f"counts have shape {counts.shape}, expected N × {thr.size} × 4")
    total = counts.sum(0)
    r, p, f = _rpf(total)
    ods_t, ods_r, ods_p, ods = _best_interpolated(thr, r, p)

    _, _, f_img = _rpf(counts)  # N × K
    best = np.argmax(f_img, axis=1)  # first maximum per image
    ois_counts = counts[np.arange(counts.shape[0]), best].sum(0)
    ois_r, ois_p, ois = (float(v) for v in _rpf(ois_counts))

    curve = pd.DataFrame(
        {
            "threshold": thr,
            "precision": p,
            "recall": r,
            "f": f,
            "cnt_r": total[:, 0],
            "sum_r": total[:, 1],
            "cnt_p": total[:, 2],
            "sum_p": total[:, 3],
        }
    )
    return {
        "ods": ods,
        "ois": ois,
        "ap": _average_precision(r, p),
        "curve": curve,
        "ods_threshold": ods_t,
        "ods_precision": ods_p,
        "ods_recall": ods_r,
        "ois_precision": ois_p,
        "ois_recall": ois_r,
        "num_images": int(counts.shape[0]),
    }


def _as_list(preds) -> list[np.ndarray]:
    if isinstance(preds, np.ndarray) or hasattr(preds, "numpy"):
        arr = np.asarray(preds.detach().cpu() if hasattr(preds, "detach") else preds)
        return [arr] if arr.ndim == 2 else list(arr)
    return [np.asarray(p.detach().cpu() if hasattr(p, "detach") else p) for p in preds]


def boundary_scores(
    preds: Sequence[np.ndarray],
    gts: Sequence[Sequence[np.ndarray]],
    thresholds: int | Sequence[float] = 99,
    max_dist: float = 0.0075,
    thin_pred: bool = True,
    max_dist_px: float | None = None,
) -> dict[str, Any]:
    """BSDS500 ODS / OIS / AP of soft boundary maps.

    ``preds``: H×W maps in [0, 1], one per image; ``gts``: per image, a list of
    H×W boolean maps, one per annotator (a single H×W map = one annotator).
    Returns ``ods``, ``ois``, ``ap`` (floats), ``curve`` (a DataFrame of
    threshold, precision, recall, f and the summed counts), the threshold,
    precision and recall at ODS / OIS, and ``tolerance`` (:func:`tolerance_text`).
    The matching tolerance is ``max_dist`` × the diagonal (the benchmark's
    0.0075 by default) unless ``max_dist_px`` gives a radius in pixels.
    """
    preds = _as_list(preds)
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} predictions but ground truth for {len(gts)} images")
    if not preds:
        raise ValueError("no images to score")
    metrics = BoundaryMetrics(thresholds, max_dist, thin_pred, max_dist_px)
    metrics.update(preds, gts)
    return metrics.summary()


class BoundaryMetrics:
    """Streaming ODS / OIS / AP: ``update(preds, gts)`` per batch, ``compute()`` at the end.

    ``compute()`` gives floats (``ods``, ``ois``, ``ap``); ``summary()`` the full
    dict of ``boundary_scores`` (with the curve). Only the per-image counts are
    kept (K × 4 integers per image).  ``max_dist_px``: a matching radius in pixels
    instead of ``max_dist`` × the diagonal (see :func:`boundary_scores`).
    """

    def __init__(self, thresholds: int | Sequence[float] = 99, max_dist: float = 0.0075, thin_pred: bool = True,
                 max_dist_px: float | None = None):
        matching_radius((1, 1), max_dist, max_dist_px)  # a bad tolerance fails here, before any image
        self.thresholds, self.max_dist, self.thin_pred = thresholds, max_dist, thin_pred
        self.max_dist_px = max_dist_px
        self.counts: list[np.ndarray] = []

    def reset(self) -> None:
        self.counts = []

    def update(self, preds, gts) -> None:
        preds = _as_list(preds)
        if len(preds) != len(gts):
            raise ValueError(f"{len(preds)} predictions but ground truth for {len(gts)} images")
        for pred, gt in zip(preds, gts):
            try:
                self.counts.append(boundary_counts(pred, gt, self.thresholds, self.max_dist, self.thin_pred,
                                                   self.max_dist_px))
            except ValueError as e:
                raise ValueError(f"image {len(self.counts)}: {e}") from e

    def summary(self) -> dict[str, Any]:
        if not self.counts:
            raise ValueError("no images scored yet")
        return {**scores_from_counts(np.stack(self.counts), self.thresholds),
                "tolerance": tolerance_text(self.max_dist, self.max_dist_px)}

    def compute(self) -> dict[str, float]:
        s = self.summary()
        return {"ods": s["ods"], "ois": s["ois"], "ap": s["ap"]}
