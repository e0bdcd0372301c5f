"""GALD's local-distribution tail: upsample the mask logits, sigmoid, gate; reference, bench and test specs.

GALD ("Global Aggregation then Local Distribution", Li et al., arXiv
1909.07229, the local-distribution module) refines the globally aggregated feature ``F_GA``
(``ga``, ``N×C×H×W``) with a per-channel spatial mask predicted at a low
resolution (``mask_logits``, ``N×C×h×w``: in the official code three 3×3
depthwise convolutions of stride 2 without padding).  The tail of that branch,
everything after the mask convolutions, is this op::

    M   = sigmoid(bilinear(mask_logits, size=(H, W), align_corners=True))
    out = 2·ga + ga ⊙ M          form="released"
    out = ga ⊙ M + feature       form="paper"

``form="released"`` is the official code (``lxtGH/GALD-DGCNet``,
``libs/models/GALDNet.py``): ``LocalAttenModule`` returns ``x + x * mask``
(``F.interpolate(..., mode="bilinear", align_corners=True)`` then
``nn.Sigmoid``) and ``GALDBlock`` adds its input ``res`` (the same upsampled
``F_GA``) once more; ``feature`` is ignored and may be ``None``.
``form="paper"`` is the paper figure's ``F_GA ⊙ M ⊕ F``, with ``feature`` the
block's input ``F`` at the same resolution.

Bilinear interpolation with ``align_corners=True`` is PyTorch's: output row
``y`` reads ``src = y · (h − 1)/(H − 1)`` (0 when ``H = 1``), rows
``y0 = ⌊src⌋`` and ``y1 = min(y0 + 1, h − 1)`` with weights ``1 − λ, λ``,
``λ = src − y0`` (same for columns); ``h = H`` is the identity.  The
gradients and the kernel's design are in :mod:`.gald_ld_tail_triton`.

This module does not import triton: the reference is what CPU and CI run.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .registry import BenchSpec, CompileCase, TestCase, TestSpec, accumulation_dtype

__all__ = [
    "FORMS",
    "gald_ld_tail_reference",
    "check_ld_tail_args",
    "released_mask_size",
    "make_inputs",
    "bytes_moved",
    "BENCH",
    "TEST",
]

FORMS = ("released", "paper")


def check_ld_tail_args(
    mask_logits: torch.Tensor, ga: torch.Tensor, feature: Optional[torch.Tensor], form: str
) -> None:
    """The shape and dtype contract shared by the reference and the kernel."""
    if form not in FORMS:
        raise ValueError(f"form={form!r}: expected one of {FORMS}")
    if ga.dim() != 4 or mask_logits.dim() != 4:
        raise ValueError(
            "gald_ld_tail expects mask_logits of shape N×C×h×w and ga of shape N×C×H×W, "
            f"got {tuple(mask_logits.shape)} and {tuple(ga.shape)}"
        )
    if mask_logits.shape[:2] != ga.shape[:2]:
        raise ValueError(
            f"gald_ld_tail: mask_logits {tuple(mask_logits.shape)} and ga {tuple(ga.shape)} differ in N or C"
        )
    tensors = [mask_logits, ga]
    if form == "paper":
        if feature is None:
            raise ValueError('gald_ld_tail(form="paper") needs feature (out = ga ⊙ M + feature)')
        if feature.shape != ga.shape:
            raise ValueError(f"gald_ld_tail: feature {tuple(feature.shape)} and ga {tuple(ga.shape)} differ")
        tensors.append(feature)
    if not all(t.is_floating_point() for t in tensors):
        raise TypeError(f"gald_ld_tail expects floating-point tensors, got {[t.dtype for t in tensors]}")
    if any(t.device != ga.device for t in tensors):
        raise ValueError(f"gald_ld_tail: tensors on {[str(t.device) for t in tensors]}")


def out_dtype(mask_logits: torch.Tensor, ga: torch.Tensor, feature: Optional[torch.Tensor], form: str) -> torch.dtype:
    """The result's dtype: promoted over the tensors the form uses."""
    dtype = torch.promote_types(mask_logits.dtype, ga.dtype)
    return torch.promote_types(dtype, feature.dtype) if form == "paper" else dtype


def gald_ld_tail_reference(
    mask_logits: torch.Tensor, ga: torch.Tensor, feature: Optional[torch.Tensor] = None, form: str = "released"
) -> torch.Tensor:
    """GALD's local distribution from the mask logits on: ``N×C×H×W``.

    ``M = sigmoid(F.interpolate(mask_logits, (H, W), "bilinear", align_corners=True))``;
    ``form="released"``: ``(ga + ga·M) + ga`` (the official code's order);
    ``form="paper"``: ``ga·M + feature``.  Computed in
    :func:`~.registry.accumulation_dtype` of the result's dtype (promoted over
    the tensors used); the result has the memory format PyTorch's
    elementwise ops give (that of ``ga`` when all inputs share it).
    Differentiable (twice) in all three tensors.
    """
    check_ld_tail_args(mask_logits, ga, feature, form)
    dtype = out_dtype(mask_logits, ga, feature, form)
    acc = accumulation_dtype(dtype)
    z = F.interpolate(mask_logits.to(acc), size=tuple(ga.shape[-2:]), mode="bilinear", align_corners=True)
    m = torch.sigmoid(z)
    g = ga.to(acc)
    out = (g + g * m) + g if form == "released" else g * m + feature.to(acc)
    return out.to(dtype)


# --------------------------------------------------------------------------- bench spec
def released_mask_size(size: int) -> int:
    """The mask's side for a side of ``F_GA`` in the official code: three 3×3 convolutions, stride 2, no padding.

    ``96 → 47 → 23 → 11``, ``97 → 48 → 23 → 11``; at least 1 (tiny test sizes).
    """
    for _ in range(3):
        size = max(1, (size - 3) // 2 + 1)
    return size


def make_inputs(shape, dtype: torch.dtype, device: torch.device, generator: torch.Generator):
    """``(mask_logits, ga, feature)`` for ``shape = (N, C, H, W)`` (``ga``'s and the result's shape).

    The mask is at :func:`released_mask_size` of ``H`` and ``W`` (the released
    ratio, about 1/8); ``mask_logits ~ N(0, 2²)`` (sigmoid neither saturated nor
    linear), ``ga``, ``feature ~ N(0, 1)``.  ``feature`` is drawn for either form
    (the released form ignores it).
    """
    n, c, H, W = shape
    h, w = released_mask_size(H), released_mask_size(W)
    logits = (2 * torch.randn((n, c, h, w), generator=generator)).to(device, dtype)
    ga = torch.randn(shape, generator=generator).to(device, dtype)
    feature = torch.randn(shape, generator=generator).to(device, dtype)
    return logits, ga, feature


def bytes_moved(inputs: Sequence[torch.Tensor], output: torch.Tensor) -> Tuple[int, int]:
    """Least DRAM traffic of the default (released) form, which the benchmark times.

    Forward reads ``ga`` and the mask logits, writes ``out``; backward reads
    ``∂l/∂out``, ``ga`` and the logits, writes ``∂ga`` and ``∂logits``:
    ``(|logits| + 2|ga|, 3|logits| + 5|ga|)`` elements times their sizes.
    (The paper form adds a read of ``feature``; its ``∂feature`` is
    ``∂l/∂out`` itself, nothing to move.)
    """
    logits, ga = inputs[0], inputs[1]
    lo = logits.numel() * logits.element_size()
    hi = ga.numel() * ga.element_size()
    fwd = lo + 2 * hi
    return fwd, fwd + 3 * hi + 2 * lo


BENCH = BenchSpec(
    make_inputs=make_inputs,
    bytes_moved=bytes_moved,
    # F_GA of a 769-px Cityscapes crop at output stride 8 (97×97, mask 11×11) and of 768 px, C = 512 as
    # in the official GALD head
    shapes=((8, 512, 97, 97), (16, 512, 96, 96)),
    dtypes=(torch.float32, torch.bfloat16),
)


# --------------------------------------------------------------------------- test spec
_F32, _F64 = torch.float32, torch.float64


def _compile_case(kernel: str, dtype: torch.dtype, unit: str, **constexprs) -> CompileCase:
    """A specialisation as at launch: every tensor has unit stride along ``unit`` (``"w"``: contiguous, ``"c"``)."""
    acc = accumulation_dtype(dtype)
    names = ("sm", "sg", "sf", "so") if kernel == "_ld_fwd_kernel" else ("sm", "sg", "sd", "se")
    return CompileCase(
        kernel=kernel,
        constexprs=dict(constexprs, ACC=acc),
        dtype=dtype,
        pointer_dtypes={"yi_ptr": torch.int32, "ys_ptr": torch.int32, "xi_ptr": torch.int32,
                        "xs_ptr": torch.int32, "yl_ptr": acc, "xl_ptr": acc, "part_ptr": acc},
        unit_strides=tuple(f"{t}{unit}" for t in names),
    )  # fmt: skip


TEST = TestSpec(
    # shapes are F_GA's; the mask is at released_mask_size (1×1 below 11, 2 at 24, 3 at 31)
    cases=(
        TestCase((2, 3, 24, 31), kernel_kwargs=dict(block_c=2)),  # 2×3 mask: ragged channel blocks
        TestCase((2, 3, 24, 31), kwargs=dict(form="paper")),
        TestCase((1, 5, 31, 24), layout="channels_last", kwargs=dict(form="paper")),
        TestCase((1, 5, 31, 24), layout="channels_last", grad_layout="contiguous"),
        TestCase((2, 3, 5, 7)),  # a 1×1 mask: one bilinear weight of 1 everywhere
        TestCase((1, 4, 24, 9), layout="channel_slice", kwargs=dict(form="paper")),  # strided, no copy
        TestCase((1, 3, 9, 24), layout="spatial_transpose", grad_layout="sum"),  # H, W strides unmerged
        TestCase((1, 4, 24, 24), torch.bfloat16, layout="channels_last", kwargs=dict(form="paper")),
        TestCase((1, 2, 24, 24), requires_grad=(True, False, False)),  # only the mask branch learns
        TestCase((1, 2, 24, 24), requires_grad=(False, True, True), kwargs=dict(form="paper")),
    ),
    tolerances={
        _F32: dict(rtol=1e-5, atol=1e-5),
        _F64: dict(rtol=1e-10, atol=1e-12),
        torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
    },
    gradcheck=(  # tiny (the interpreter runs the kernel once per perturbed input): 1×1 masks here, 2×3
        # masks in tests/test_kernels_gald.py
        TestCase((1, 1, 5, 4), _F64),
        TestCase((1, 2, 3, 2), _F64, layout="channels_last", kwargs=dict(form="paper")),
    ),
    compile_cases=(
        _compile_case("_ld_fwd_kernel", _F32, "w", PAPER=False, IDENTITY=False, BLOCK_C=32, BLOCK_W=64, BJ=6),
        _compile_case("_ld_fwd_kernel", torch.bfloat16, "c", PAPER=True, IDENTITY=False, BLOCK_C=32, BLOCK_W=64,
                      BJ=6),
        _compile_case("_ld_bwd_kernel", _F32, "w", PAPER=False, IDENTITY=False, NEED_DGA=True, NEED_DM=True,
                      BLOCK_C=32, BLOCK_W=64, BJ=6),
        _compile_case("_ld_bwd_kernel", torch.bfloat16, "c", PAPER=True, IDENTITY=True, NEED_DGA=True,
                      NEED_DM=True, BLOCK_C=32, BLOCK_W=64, BJ=64),
    ),  # fmt: skip
)
