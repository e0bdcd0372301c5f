"""Losses beyond plain cross-entropy; the tasks (:mod:`.tasks`) call them.

:func:`ohem_cross_entropy` -- online hard example mining for dense prediction,
as the GALD code trains its main head (arXiv 1909.07229; official code
lxtGH/GALD-DGCNet ``libs/core/loss.py``, ``OhemCrossEntropy2dTensor`` inside
``CriterionOhemDSN``).  With ``p_i`` the softmax probability of pixel ``i``'s
true class, ``V`` the pixels not labelled ``ignore_index`` and ``k`` = ``min_kept``::

    t    = max(thresh, p_(k))        p_(k): the k-th smallest p_i over V
    Keep = {i ∈ V : p_i ≤ t}
    loss = (1/|Keep|) Σ_{i ∈ Keep} −log p_i

Ties at ``t`` are all kept, so ``|Keep| ≥ k``.  As released, mining happens only
when ``0 < k ≤ |V|``: with fewer valid pixels than ``min_kept`` (or
``min_kept = 0``) every valid pixel is kept -- plain cross-entropy.  The
released defaults are ``thresh = 0.7``, ``min_kept = 100000`` for one 769×769
crop per GPU (≈ 17 % of its pixels); the mining pools the pixels of the whole
batch given (the released code: one image per GPU).  A batch with no valid pixel
gives NaN, as ``F.cross_entropy`` does.  Logits of another size than the labels
are first upsampled bilinearly (``align_corners=True``, as released).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..labels import IGNORE_INDEX

__all__ = ["ohem_keep_mask", "ohem_cross_entropy"]


def _to_label_size(logits: torch.Tensor, target: torch.Tensor, align_corners: bool) -> torch.Tensor:
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=align_corners)
    return logits


@torch.no_grad()
def ohem_keep_mask(
    logits: torch.Tensor,
    target: torch.Tensor,
    thresh: float = 0.7,
    min_kept: int = 100_000,
    ignore_index: int = IGNORE_INDEX,
    align_corners: bool = True,
) -> torch.Tensor:
    """``Keep`` of the module docstring: a boolean ``N×H×W`` mask of the pixels the loss averages over.

    ``logits``: ``N×K×h×w`` (upsampled to the labels' size when it differs);
    ``target``: ``N×H×W`` class indices with ``ignore_index`` for void.
    """
    logits = _to_label_size(logits, target, align_corners)
    valid = target != ignore_index
    num_valid = int(valid.sum())
    if not 0 < min_kept <= num_valid:
        return valid
    safe = torch.where(valid, target, torch.zeros_like(target)).long()
    prob = torch.softmax(logits.float(), dim=1).gather(1, safe[:, None])[:, 0]  # N×H×W: p of the true class
    kth = prob[valid].kthvalue(min_kept).values
    return valid & (prob <= torch.clamp(kth, min=float(thresh)))


def ohem_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    thresh: float = 0.7,
    min_kept: int = 100_000,
    ignore_index: int = IGNORE_INDEX,
    align_corners: bool = True,
) -> torch.Tensor:
    """Mean cross-entropy over the pixels :func:`ohem_keep_mask` keeps (module docstring)."""
    logits = _to_label_size(logits, target, align_corners).float()
    keep = ohem_keep_mask(logits, target, thresh, min_kept, ignore_index)
    mined = torch.where(keep, target, torch.full_like(target, ignore_index)).long()
    return F.cross_entropy(logits, mined, ignore_index=ignore_index)
