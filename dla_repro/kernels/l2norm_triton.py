"""Triton forward and backward kernels for ParseNet's L2 normalisation with scale.

Equations (ParseNet, arXiv 1506.04579, §3.3; the reference is
:func:`.l2norm.l2norm_scale_reference`).
For each position ``p = (n, h, w)`` of ``x`` (``N×C×H×W``) and channel ``c``::

    r_p   = 1 / sqrt(Σ_c x_pc² + eps)              (inverse norm; eps as in the Caffe layer)
    x̂_pc  = x_pc · r_p
    y_pc  = γ_c · x̂_pc

    ĝ_pc  = ∂l/∂y_pc · γ_c                           (∂l/∂x̂)
    ∂l/∂x_pc = r_p · (ĝ_pc − x̂_pc · Σ_c' ĝ_pc' x̂_pc')   (= ĝ · (I/‖x‖ − x xᵀ/‖x‖³), eps included)
    ∂l/∂γ_c  = Σ_p ∂l/∂y_pc · x̂_pc

Kernel design
-------------
*Blocking.*  A program owns a tile of ``BLOCK_P`` positions of one image times
``BLOCK_C`` channels.  When ``BLOCK_C >= C`` (``SINGLE``) the whole channel
vector of its positions sits in registers: the forward reads ``x`` once and
writes ``y`` once.  Otherwise the kernel loops over channel blocks twice
(sum of squares, then scale and store); the second read of the tile normally
hits L2, the DRAM traffic stays close to one read.  The forward also stores
``r`` (``N×H×W``, ``C`` times smaller than ``x``) for the backward.

*Strides.*  Each tensor is addressed as ``n·s_n + c·s_c + q·s_q`` where
``q = h·W + w`` indexes the flattened ``H×W`` plane
(:func:`.triton_utils.plane_strides`); this covers contiguous
(``s_q = 1``), ``channels_last`` (``s_c = 1``), channel slices of a larger
tensor and expanded (stride-0) gradients, without copies.  Only a tensor whose
``H`` and ``W`` cannot be merged into one stride (e.g. a spatial transpose or a
crop in ``W``) is copied with ``.contiguous()`` first.  Triton specialises
strides equal to 1, so the unit-stride axis (``q`` or ``c``) is known at compile
time and the loads are coalesced along it in either layout.

*∂γ reduction.*  The backward is persistent: ``G = min(#tiles, k·#SMs)``
programs, program ``i`` takes tiles ``i, i+G, i+2G, …``.  Each program reduces
its ``dy·x̂`` over its positions into its own row of a ``G×C`` float32/float64
buffer -- in registers when ``SINGLE``, else with ``atomic_add`` on its own
row (no contention between programs, one atomic per channel per tile) -- and
``torch.sum`` over the ``G`` rows gives ∂γ.  Each row is written by one
program in a fixed order, so the result is deterministic for a given ``G``.

*Precision.*  Accumulation in float32 (float64 for float64 inputs); ``y`` is
stored in ``promote_types(x.dtype, γ.dtype)`` like the reference.

*Interpreter.*  On CPU tensors the kernels run only under Triton's interpreter,
which must be chosen before triton is first imported; see
:mod:`.triton_utils`, whose guards turn a mismatch into a clear error.
Importing this module imports triton; the package ``dla_repro.kernels``
imports it only when the kernel is actually used.
"""

import math
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from .l2norm import check_l2norm_args
from .registry import accumulation_dtype
from .triton_utils import block_sizes, check_device, default_programs, device_context, jitted, plane_strides, tl_dtype

__all__ = ["l2norm_scale_triton", "choose_blocks"]

MAX_BLOCK_C = 1024  # widest channel block kept in registers
# BLOCK_C × BLOCK_P per program.  With 8 warps, ptxas (sm_90a) reports 64-101
# registers for the forward at 8192 elements and 80-174 for the backward at 4096
# (which holds x, dy and their products), no spills; the backward at 8192 needs
# 235-255 registers (one CTA per SM).  Untuned on hardware.
TILE_FORWARD = 8192
TILE_BACKWARD = 4096


def _l2norm_fwd_kernel(
    x_ptr, g_ptr, y_ptr, rn_ptr,
    C, HW, n_hw_blocks,
    sxn, sxc, sxq, syn, syc, syq,
    eps,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, SINGLE: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    n = pid // n_hw_blocks
    q = (pid - n * n_hw_blocks) * BLOCK_P + tl.arange(0, BLOCK_P)
    qmask = q < HW
    n64 = n.to(tl.int64)
    q64 = q.to(tl.int64)
    x_pos = x_ptr + n64 * sxn + q64[None, :] * sxq  # [1, BLOCK_P]
    y_pos = y_ptr + n64 * syn + q64[None, :] * syq
    cols = tl.arange(0, BLOCK_C)
    if SINGLE:
        cmask = cols < C
        mask = cmask[:, None] & qmask[None, :]
        c64 = cols.to(tl.int64)[:, None]
        x = tl.load(x_pos + c64 * sxc, mask=mask, other=0.0).to(ACC)
        rn = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) + eps)
        g = tl.load(g_ptr + cols, mask=cmask, other=0.0).to(ACC)
        y = x * rn[None, :] * g[:, None]
        tl.store(y_pos + c64 * syc, y.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        ss = tl.zeros([BLOCK_P], dtype=ACC)
        for c0 in range(0, C, BLOCK_C):
            c = c0 + cols
            mask = (c < C)[:, None] & qmask[None, :]
            x = tl.load(x_pos + c.to(tl.int64)[:, None] * sxc, mask=mask, other=0.0).to(ACC)
            ss += tl.sum(x * x, axis=0)
        rn = 1.0 / tl.sqrt(ss + eps)
        for c0 in range(0, C, BLOCK_C):
            c = c0 + cols
            cmask = c < C
            mask = cmask[:, None] & qmask[None, :]
            c64 = c.to(tl.int64)[:, None]
            x = tl.load(x_pos + c64 * sxc, mask=mask, other=0.0).to(ACC)
            g = tl.load(g_ptr + c, mask=cmask, other=0.0).to(ACC)
            y = x * rn[None, :] * g[:, None]
            tl.store(y_pos + c64 * syc, y.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(rn_ptr + n64 * HW + q64, rn, mask=qmask)


def _l2norm_bwd_kernel(
    x_ptr, g_ptr, dy_ptr, rn_ptr, dx_ptr, dgp_ptr,
    C, HW, n_hw_blocks, n_blocks,
    sxn, sxc, sxq, sdn, sdc, sdq, sen, sec, seq,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, SINGLE: tl.constexpr,
    NEED_DX: tl.constexpr, NEED_DG: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    # dy strides: sd*, dx strides: se*.  dgp: G×C partial sums of ∂γ, one row per program.
    pid = tl.program_id(0)
    n_progs = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_C)
    dg_row = dgp_ptr + pid.to(tl.int64) * C
    if SINGLE:
        cmask = cols < C
        c64 = cols.to(tl.int64)[:, None]
        g = tl.load(g_ptr + cols, mask=cmask, other=0.0).to(ACC)
        dg_acc = tl.zeros([BLOCK_C], dtype=ACC)
        for b in range(pid, n_blocks, n_progs):
            n = b // n_hw_blocks
            q = (b - n * n_hw_blocks) * BLOCK_P + tl.arange(0, BLOCK_P)
            qmask = q < HW
            mask = cmask[:, None] & qmask[None, :]
            n64 = n.to(tl.int64)
            q64 = q.to(tl.int64)
            x = tl.load(x_ptr + n64 * sxn + q64[None, :] * sxq + c64 * sxc, mask=mask, other=0.0).to(ACC)
            dy = tl.load(dy_ptr + n64 * sdn + q64[None, :] * sdq + c64 * sdc, mask=mask, other=0.0).to(ACC)
            rn = tl.load(rn_ptr + n64 * HW + q64, mask=qmask, other=0.0)
            xh = x * rn[None, :]
            if NEED_DG:
                dg_acc += tl.sum(dy * xh, axis=1)
            if NEED_DX:
                gh = dy * g[:, None]
                dot = tl.sum(gh * xh, axis=0)
                dx = (gh - xh * dot[None, :]) * rn[None, :]
                dx_ptrs = dx_ptr + n64 * sen + q64[None, :] * seq + c64 * sec
                tl.store(dx_ptrs, dx.to(dx_ptr.dtype.element_ty), mask=mask)
        if NEED_DG:
            tl.store(dg_row + cols, dg_acc, mask=cmask)
    else:
        for b in range(pid, n_blocks, n_progs):
            n = b // n_hw_blocks
            q = (b - n * n_hw_blocks) * BLOCK_P + tl.arange(0, BLOCK_P)
            qmask = q < HW
            n64 = n.to(tl.int64)
            q64 = q.to(tl.int64)
            x_pos = x_ptr + n64 * sxn + q64[None, :] * sxq
            dy_pos = dy_ptr + n64 * sdn + q64[None, :] * sdq
            rn = tl.load(rn_ptr + n64 * HW + q64, mask=qmask, other=0.0)
            if NEED_DX:
                # first pass: Σ_c ĝ_c x_c (times r below gives ĝ·x̂)
                dot = tl.zeros([BLOCK_P], dtype=ACC)
                for c0 in range(0, C, BLOCK_C):
                    c = c0 + cols
                    cmask = c < C
                    mask = cmask[:, None] & qmask[None, :]
                    c64 = c.to(tl.int64)[:, None]
                    x = tl.load(x_pos + c64 * sxc, mask=mask, other=0.0).to(ACC)
                    dy = tl.load(dy_pos + c64 * sdc, mask=mask, other=0.0).to(ACC)
                    g = tl.load(g_ptr + c, mask=cmask, other=0.0).to(ACC)
                    dot += tl.sum(dy * g[:, None] * x, axis=0)
                dot = dot * rn
            for c0 in range(0, C, BLOCK_C):
                c = c0 + cols
                cmask = c < C
                mask = cmask[:, None] & qmask[None, :]
                c64 = c.to(tl.int64)[:, None]
                x = tl.load(x_pos + c64 * sxc, mask=mask, other=0.0).to(ACC)
                dy = tl.load(dy_pos + c64 * sdc, mask=mask, other=0.0).to(ACC)
                xh = x * rn[None, :]
                if NEED_DG:
                    # own row of the partial buffer: no contention, fixed order
                    tl.atomic_add(dg_row + c, tl.sum(dy * xh, axis=1), mask=cmask)
                if NEED_DX:
                    g = tl.load(g_ptr + c, mask=cmask, other=0.0).to(ACC)
                    gh = dy * g[:, None]
                    dx = (gh - xh * dot[None, :]) * rn[None, :]
                    dx_ptrs = dx_ptr + n64 * sen + q64[None, :] * seq + c64 * sec
                    tl.store(dx_ptrs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


def choose_blocks(
    C: int, HW: int, block_c: Optional[int] = None, block_p: Optional[int] = None, tile: int = TILE_FORWARD
) -> Tuple[int, int]:
    """``(BLOCK_C, BLOCK_P)``: the whole channel vector up to 1024 channels, ``tile`` elements a program.

    A heuristic, not tuned on hardware.  Explicit values must be powers of two.
    """
    return block_sizes(C, HW, block_c, block_p, max_block_c=MAX_BLOCK_C, tile=tile)


def _forward(x, gamma, eps, block_c, block_p):
    N, C, H, W = x.shape
    HW = H * W
    out_dtype = torch.promote_types(x.dtype, gamma.dtype)
    acc = accumulation_dtype(out_dtype)
    y = torch.empty_like(x, dtype=out_dtype)  # keeps the memory format of x
    rn = torch.empty((N, HW), device=x.device, dtype=acc)
    if y.numel() == 0:
        return y, rn
    x, (sxn, sxc, sxq) = plane_strides(x)
    y_k, (syn, syc, syq) = plane_strides(y)
    bc, bp = choose_blocks(C, HW, block_c, block_p)
    n_hw_blocks = triton.cdiv(HW, bp)
    jitted(_l2norm_fwd_kernel)[(N * n_hw_blocks,)](
        x, gamma.contiguous(), y_k, rn,
        C, HW, n_hw_blocks,
        sxn, sxc, sxq, syn, syc, syq,
        float(eps),
        BLOCK_C=bc, BLOCK_P=bp, SINGLE=bc >= C, ACC=tl_dtype(acc),
        num_warps=8 if bc * bp >= 4096 else 4,
    )  # fmt: skip
    if y_k is not y:
        y.copy_(y_k)
    return y, rn


def _backward(dy, x, gamma, rn, need_dx, need_dg, block_c, block_p, max_programs):
    N, C, H, W = x.shape
    HW = H * W
    acc = rn.dtype
    dx = torch.empty_like(x) if need_dx else None
    bc, bp = choose_blocks(C, HW, block_c, block_p, tile=TILE_BACKWARD)
    n_hw_blocks = triton.cdiv(HW, bp)
    n_blocks = N * n_hw_blocks
    G = max(1, min(n_blocks, max_programs or default_programs(x.device)))
    dg_part = torch.zeros((G, C), device=x.device, dtype=acc) if need_dg else None
    if x.numel() == 0:
        return dx, (torch.zeros_like(gamma) if need_dg else None)
    x, (sxn, sxc, sxq) = plane_strides(x)
    dy, (sdn, sdc, sdq) = plane_strides(dy)
    if need_dx:
        dx_k, (sen, sec, seq) = plane_strides(dx)
    else:
        dx_k, (sen, sec, seq) = x, (0, 0, 0)  # never written (NEED_DX=False)
    jitted(_l2norm_bwd_kernel)[(G,)](
        x, gamma.contiguous(), dy, rn, dx_k, dg_part if need_dg else rn,
        C, HW, n_hw_blocks, n_blocks,
        sxn, sxc, sxq, sdn, sdc, sdq, sen, sec, seq,
        BLOCK_C=bc, BLOCK_P=bp, SINGLE=bc >= C, NEED_DX=need_dx, NEED_DG=need_dg, ACC=tl_dtype(acc),
        num_warps=8 if bc * bp >= 4096 else 4,
    )  # fmt: skip
    if need_dx and dx_k is not dx:
        dx.copy_(dx_k)
    dg = dg_part.sum(0).to(gamma.dtype) if need_dg else None
    return dx, dg


class _L2NormScaleFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, gamma, eps, block_c, block_p, max_programs):
        y, rn = _forward(x, gamma, eps, block_c, block_p)
        ctx.save_for_backward(x, gamma, rn)
        ctx.blocks = (block_c, block_p, max_programs)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, gamma, rn = ctx.saved_tensors
        need_dx, need_dg = ctx.needs_input_grad[:2]
        if not (need_dx or need_dg):
            return None, None, None, None, None, None
        dx, dg = _backward(dy, x, gamma, rn, need_dx, need_dg, *ctx.blocks)
        return dx, dg, None, None, None, None


@torch.compiler.disable  # an opaque call inside torch.compile'd models (kernel tracing untested: no GPU here)
def l2norm_scale_triton(
    x: torch.Tensor,
    gamma: torch.Tensor,
    eps: float = 1e-10,
    *,
    block_c: Optional[int] = None,
    block_p: Optional[int] = None,
    max_programs: Optional[int] = None,
) -> torch.Tensor:
    """The Triton kernel, differentiable in ``x`` and ``gamma`` (once).

    Same contract as :func:`~dla_repro.kernels.l2norm.l2norm_scale_reference`.
    ``block_c``/``block_p`` override :func:`choose_blocks`; ``max_programs``
    caps the backward grid ``G`` (default ``4 × SMs``; 8 in the interpreter).
    """
    check_l2norm_args(x, gamma)
    check_device(x, "L2Norm")
    if gamma.device != x.device:
        raise ValueError(f"gamma is on {gamma.device}, x on {x.device}")
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite non-negative number, got {eps}")
    with device_context(x):
        return _L2NormScaleFunction.apply(x, gamma, eps, block_c, block_p, max_programs)

