"""DynOPool's resampling: K bilinear queries per output cell, then max (or mean); reference, bench and test specs.

DynOPool ("Pooling Revisited", Jang et al., CVPR 2022, arXiv 2205.15254, §3,
Fig. 2) resizes a feature map by a learned scale factor ``r = (r_h, r_w)``.
The layout of the cells is this project's choice (the paper's equations are
not available; see :class:`dla_repro.models.resizing.DynOPool`).  For an input
``x`` (``N×C×H×W``) and an output of ``H'×W'`` cells, in input pixel
coordinates (pixel ``j``'s centre at ``j``)::

    p_i   = (H − 1)/2 + (i − (H' − 1)/2) / r_h            cell centres (same for x with W, W', r_w)
    q_ik  = p_i + δ_k / r_h                                the K queries of a cell, δ_k ∈ offsets
    v_k   = bilinear(x, q_ik, q_jk)                        F.grid_sample, align_corners=False,
                                                           padding_mode="border" (coordinates clamped)
    y_ij  = max_k v_k      (reduce="max")   or   (1/K) Σ_k v_k   (reduce="mean")

The output is a smooth function of ``r`` between two jumps of ``(H', W')``,
and ``∂y/∂r`` goes through the query coordinates:
``∂q_ik/∂r_h = −(i − (H' − 1)/2 + δ_k,row) / r_h²``.  The reference below is
that computation with ``F.grid_sample``, exactly as ``DynOPool.forward``
(which calls the op); its gradients are autograd's.  The Triton kernel and its
gradient formulas are in :mod:`.dynopool_resample_triton`.

This module does not import triton: the reference is what CPU and CI run.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .registry import BenchSpec, CompileCase, TestCase, TestSpec, accumulation_dtype

__all__ = [
    "QUARTER_OFFSETS",
    "REDUCTIONS",
    "PADDING_MODES",
    "TIE_TOLERANCE",
    "resample_size",
    "dynopool_resample_reference",
    "check_resample_args",
    "make_inputs",
    "bytes_moved",
    "BENCH",
    "TEST",
]

#: Four query points per output cell, as fractions of the cell (row, column) from its centre:
#: the centres of the cell's four quadrants.
QUARTER_OFFSETS = ((-0.25, -0.25), (-0.25, 0.25), (0.25, -0.25), (0.25, 0.25))
REDUCTIONS = ("max", "mean")
PADDING_MODES = ("border", "zeros")  # the two the Triton kernel implements
TIE_TOLERANCE = 1e-4  # pixels: r·H this close to a half-integer rounds down


def resample_size(h: int, w: int, r: torch.Tensor) -> Tuple[int, int]:
    """``(H', W')``: ``max(1, ⌈r·H − ½ − 10⁻⁴⌉)`` per axis, the nearest integer with ties going down.

    DynOPool's output size rule (see its docstring); reads ``r`` on the host.
    """
    r_h, r_w = r.detach().tolist()
    return max(1, math.ceil(r_h * h - 0.5 - TIE_TOLERANCE)), max(1, math.ceil(r_w * w - 0.5 - TIE_TOLERANCE))


def check_resample_args(x: torch.Tensor, r: torch.Tensor, offsets: torch.Tensor, reduce: str) -> None:
    """The shape and dtype contract shared by the reference and the kernel."""
    if x.dim() != 4:
        raise ValueError(f"dynopool_resample expects x of shape N×C×H×W, got shape {tuple(x.shape)}")
    if r.shape != (2,):
        raise ValueError(f"dynopool_resample expects r of shape (2,) = (r_h, r_w), got shape {tuple(r.shape)}")
    if offsets.dim() != 2 or offsets.shape[1] != 2 or offsets.shape[0] < 1:
        raise ValueError(f"dynopool_resample expects offsets of shape K×2 (row, column), got {tuple(offsets.shape)}")
    if not (x.is_floating_point() and r.is_floating_point() and offsets.is_floating_point()):
        raise TypeError(f"dynopool_resample expects floating-point tensors, got {x.dtype}, {r.dtype}, {offsets.dtype}")
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce={reduce!r}: expected one of {REDUCTIONS}")


def dynopool_resample_reference(
    x: torch.Tensor,
    r: torch.Tensor,
    offsets: torch.Tensor,
    out_size: Optional[Sequence[int]] = None,
    reduce: str = "max",
    padding_mode: str = "border",
) -> torch.Tensor:
    """DynOPool's resampling of ``x`` (``N×C×H×W``) by ``r = (r_h, r_w)``: ``N×C×H'×W'``.

    ``offsets``: ``K×2`` query offsets (row, column) as fractions of a cell.
    ``out_size``: ``(H', W')``; default :func:`resample_size` of ``r``.
    ``reduce``: ``"max"`` or ``"mean"`` over the K queries; ``padding_mode``
    as ``F.grid_sample`` (DynOPool's default ``"border"`` clamps coordinates).
    Differentiable in ``x`` and ``r``; coordinates are computed in ``x.dtype``
    (``r`` and ``offsets`` are cast to it).  ``torch.amax`` shares the gradient
    of a max equally among tied queries.
    """
    check_resample_args(x, r, offsets, reduce)
    n, c, h, w = x.shape
    oh, ow = resample_size(h, w, r) if out_size is None else (int(out_size[0]), int(out_size[1]))
    r = r.to(x.dtype)
    offsets = offsets.to(x)  # K×2
    k = offsets.shape[0]
    # cell centres, then the K query points of each cell, in input pixel coordinates
    cy = (h - 1) / 2 + (torch.arange(oh, device=x.device, dtype=x.dtype) - (oh - 1) / 2) / r[0]
    cx = (w - 1) / 2 + (torch.arange(ow, device=x.device, dtype=x.dtype) - (ow - 1) / 2) / r[1]
    qy = cy[None, :] + offsets[:, :1] / r[0]  # K×H'
    qx = cx[None, :] + offsets[:, 1:] / r[1]  # K×W'
    gy = (2 * qy + 1) / h - 1  # align_corners=False normalisation
    gx = (2 * qx + 1) / w - 1
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)  # K×H'×W'×2 (x, y)
    grid = grid.reshape(1, k * oh, ow, 2).expand(n, -1, -1, -1)
    q = F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)
    q = q.view(n, c, k, oh, ow)
    return q.amax(dim=2) if reduce == "max" else q.mean(dim=2)


# --------------------------------------------------------------------------- bench spec
def make_inputs(shape, dtype: torch.dtype, device: torch.device, generator: torch.Generator):
    """``(x, r, offsets)``: ``x ~ N(0, 1)`` of ``shape``, ``r ~ U(0.3, 0.9)`` per axis, the four quadrant offsets.

    ``r`` is drawn (not ½) so that queries fall between pixels, as they do for
    a learned ``r``; it is float32 like DynOPool's scale (float64 for float64 ``x``).
    """
    x = torch.randn(shape, generator=generator).to(device, dtype)
    r = 0.3 + 0.6 * torch.rand(2, generator=generator, dtype=torch.float64)
    r = r.to(device, accumulation_dtype(dtype))
    return x, r, torch.tensor(QUARTER_OFFSETS, device=device)


def bytes_moved(inputs: Sequence[torch.Tensor], output: torch.Tensor) -> Tuple[int, int]:
    """Least DRAM traffic: forward reads ``x``, writes ``y``; backward reads ``x`` and ``∂l/∂y``, writes ``∂l/∂x``.

    ``((|x| + |y|) · bytes, (3|x| + 2|y|) · bytes)``.  At ``r < 1`` the
    queries need not touch every pixel, so reading all of ``x`` is a round
    upper bound of the least; ``r``, ``offsets``, ``∂r`` and the zeroing of
    ``∂l/∂x`` are not counted.
    """
    x = inputs[0]
    b = x.element_size()
    return (x.numel() + output.numel()) * b, (3 * x.numel() + 2 * output.numel()) * b


BENCH = BenchSpec(
    make_inputs=make_inputs,
    bytes_moved=bytes_moved,
    # the pooling positions of a VGG-like network at 224 px and at 64 px, batch 128
    shapes=((128, 64, 112, 112), (128, 128, 56, 56), (128, 256, 32, 32), (128, 512, 32, 32)),
)


# --------------------------------------------------------------------------- test spec
_F32, _F64 = torch.float32, torch.float64


def _compile_case(kernel: str, dtype: torch.dtype, **constexprs) -> CompileCase:
    """A specialisation as at launch for a contiguous ``x`` (``s_w = 1``) and the four quadrant offsets."""
    acc = accumulation_dtype(dtype)
    unit = ("sxw",) if kernel.startswith("_resample_fwd") else ("sxw", "sdw", "sew")
    return CompileCase(
        kernel=kernel,
        constexprs=dict(constexprs, K=4, VIA_F64=acc == torch.float32, ACC=acc),
        dtype=dtype,
        pointer_dtypes={"r_ptr": acc, "off_ptr": acc, "drp_ptr": acc, "dx_ptr": acc},  # ∂x is accumulated in acc
        unit_strides=unit,
        expect_ptx="div.rn.f32" if acc == torch.float32 else "",  # IEEE divisions, as the reference's coordinates
        num_warps=4,
    )


_SMALL = dict(block_c=2, block_p=4, max_programs=3)  # several tiles a program, ragged channel and position tiles

TEST = TestSpec(
    cases=(
        TestCase((2, 3, 7, 6), kernel_kwargs=_SMALL),
        TestCase((2, 3, 7, 6), kwargs=dict(reduce="mean"), kernel_kwargs=dict(block_c=2)),
        TestCase((2, 3, 6, 5), layout="channels_last", kernel_kwargs=dict(block_p=8)),
        TestCase((2, 3, 5, 6), layout="channels_last", grad_layout="contiguous"),
        TestCase((2, 5, 4, 5), layout="channel_slice", kernel_kwargs=_SMALL),  # strided, no copy
        TestCase((2, 3, 5, 4), layout="spatial_transpose"),
        TestCase((2, 3, 6, 6), grad_layout="sum"),  # an expanded (stride-0) gradient
        TestCase((2, 3, 5, 7), _F64, kernel_kwargs=dict(max_programs=2)),
        TestCase((2, 3, 6, 5), kwargs=dict(out_size=(4, 2))),  # more rows than r gives: queries beyond the border
        TestCase((2, 3, 6, 5), kwargs=dict(padding_mode="zeros", out_size=(4, 2))),
        TestCase((1, 3, 5, 5), requires_grad=(True, False)),  # a frozen r: only ∂x
        TestCase((1, 3, 5, 5), requires_grad=(False, True), kernel_kwargs=_SMALL),  # only r learns
        TestCase((1, 2, 1, 1)),  # a 1×1 input: every coordinate clamped
    ),
    tolerances={
        _F32: dict(rtol=1e-4, atol=1e-5),
        _F64: dict(rtol=1e-10, atol=1e-12),
    },
    gradcheck=(
        TestCase((1, 2, 3, 3), _F64, kernel_kwargs=dict(max_programs=2)),
        TestCase((1, 1, 4, 3), _F64, kwargs=dict(reduce="mean")),
    ),
    gradgradcheck=False,  # the kernel is once differentiable; the reference's max has kinks at ties anyway
    compile_cases=(
        _compile_case("_resample_fwd_kernel", _F32, MEAN=False, CLAMP=True, BLOCK_C=32, BLOCK_P=32),
        _compile_case("_resample_fwd_kernel", torch.bfloat16, MEAN=True, CLAMP=False, BLOCK_C=16, BLOCK_P=64),
        _compile_case(
            "_resample_bwd_kernel", _F32, MEAN=False, CLAMP=True, NEED_DX=True, NEED_DR=True, BLOCK_C=32, BLOCK_P=32
        ),
        _compile_case(
            "_resample_bwd_kernel", _F64, MEAN=True, CLAMP=True, NEED_DX=False, NEED_DR=True, BLOCK_C=8, BLOCK_P=32
        ),
    ),
)
