"""Parameters and multiply-accumulates (MACs) of a model, at any input size.

Counted with ``torch.utils.flop_counter.FlopCounterMode``, which sees every
convolution and matrix product the forward pass dispatches.  It reports FLOPs
with one multiply-add = 2 FLOPs, so for conv/linear layers

    MACs = FLOPs / 2

Batch normalisation is counted too, as in inference: y = γ̂·x + β̂ is one
multiply-add per output element (``norm_macs``).  Conv/linear alone
(``conv_macs``) is 0.3-1.5 % below the timm GMACs that PAPERS.md quotes -- most
for the thin ``*_c`` nets, whose full-resolution stem has many BN elements per
MAC; with BN at one MAC per element all ten DLA variants are within 0.5 %.
(timm's figures match conv + *two* per BN element to the printed digit:
fvcore's convention, which counts normalise and affine separately.)
Activations, pooling and additions are not counted.

By default the count runs on a copy of the model on the ``meta`` device: shapes
only, no arithmetic, so even DLA-169 at 224x224 takes a fraction of a second.
"""

from __future__ import annotations

import copy
from typing import Dict, Sequence, Union

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_params", "count_macs", "count_complexity"]

aten = torch.ops.aten
_NORM_OPS = tuple(
    getattr(aten, name)
    for name in (
        "native_batch_norm",
        "_native_batch_norm_legit",
        "_native_batch_norm_legit_no_training",
        "cudnn_batch_norm",
        "miopen_batch_norm",
    )
    if hasattr(aten, name)
)


def _norm_flops(input_shape, *args, out_shape=None, **kwargs) -> int:
    """Inference BN: one multiply-add (2 FLOPs) per element of the input."""
    n = 1
    for d in input_shape:
        n *= d
    return 2 * n


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared tensors counted once)."""
    seen = {}
    for p in model.parameters():
        if not trainable_only or p.requires_grad:
            seen[id(p)] = p.numel()
    return sum(seen.values())


def _meta_copy(model: nn.Module) -> nn.Module:
    """A shape-only copy of ``model`` (its weights are not copied)."""
    memo = {}
    for t in list(model.parameters()) + list(model.buffers()):
        meta = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
    return copy.deepcopy(model, memo)


def _count(model: nn.Module, input_size: Sequence[int], batch_size: int, meta: bool) -> Dict[str, int]:
    already_meta = any(p.is_meta for p in model.parameters())
    target = _meta_copy(model) if meta and not already_meta else model
    ref = next(target.parameters(), None)
    device = ref.device if ref is not None else torch.device("meta" if meta else "cpu")
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    x = torch.zeros((batch_size, *input_size), device=device, dtype=dtype)
    was_training = target.training
    target.eval()
    counter = FlopCounterMode(display=False, custom_mapping={op: _norm_flops for op in _NORM_OPS})
    try:
        with torch.no_grad(), counter:
            target(x)
    finally:
        target.train(was_training)
    per_op = counter.get_flop_counts().get("Global", {})
    norm = sum(v for op, v in per_op.items() if op in _NORM_OPS) // 2
    total = counter.get_total_flops() // 2
    return {"macs": int(total), "conv_macs": int(total - norm), "norm_macs": int(norm)}


def count_macs(
    model: nn.Module,
    input_size: Sequence[int] = (3, 224, 224),
    batch_size: int = 1,
    meta: bool = True,
) -> int:
    """MACs (conv + linear + BN, see the module docstring) of one forward pass of
    ``batch_size`` inputs shaped ``input_size`` (C, H, W).

    ``meta=True`` counts on a meta-device copy (fast, no memory); ``False`` runs
    the model where it is.  The model is counted in eval mode and left in the
    mode it was in.
    """
    return _count(model, input_size, batch_size, meta)["macs"]


def count_complexity(
    model: nn.Module,
    input_size: Sequence[int] = (3, 224, 224),
    batch_size: int = 1,
    meta: bool = True,
) -> Dict[str, Union[int, float]]:
    """``{"params", "macs", "gmacs", "conv_macs", "norm_macs"}`` of one forward pass.

    ``macs`` = ``conv_macs`` (convolutions, linear layers: FLOPs/2) + ``norm_macs``
    (BN, one per element); ``gmacs`` = macs / 1e9, per batch of ``batch_size``
    (default one image).
    """
    counts = _count(model, input_size, batch_size, meta)
    return {"params": count_params(model), **counts, "gmacs": counts["macs"] / 1e9}
