"""Triton forward and backward kernels for GALD's local-distribution tail (upsample, sigmoid, gate in one pass).

Equations (GALD, arXiv 1909.07229, the local-distribution module; the official code
``lxtGH/GALD-DGCNet``, ``libs/models/GALDNet.py``; the reference is
:func:`.gald_ld_tail.gald_ld_tail_reference`).  With ``L`` the mask logits
(``N×C×h×w``), per output row ``y`` the taps ``y0(y)``, ``y1(y) = min(y0 + 1,
h − 1)`` and weight ``λ_y`` of PyTorch's ``align_corners=True`` bilinear
interpolation (same for columns ``x``)::

    T_r(x) = (1 − λ_x)·L[r, x0] + λ_x·L[r, x1]             (columns first, as PyTorch's kernels)
    z      = (1 − λ_y)·T_{y0}(x) + λ_y·T_{y1}(x)
    M      = sigmoid(z)
    out    = (ga + ga·M) + ga       released          out = ga·M + feature       paper

Backward, with ``g = ∂l/∂out``::

    ∂ga      = g·M + 2g (released),  g·M (paper)
    ∂feature = g                                            (paper; returned as is, no copy)
    G        = g·ga·M·(1 − M)                               (∂l/∂z)
    ∂L[r, j] = Σ_{y, x} G(y, x) · w_y(y, r) · w_x(x, j)      w_y(y, r) = (1 − λ_y)[y0 = r] + λ_y[y1 = r]

Kernel design
-------------
*Bands.*  Rows ``y`` with the same ``y0`` form a band (``y0`` is monotone in
``y``); the bands of the columns likewise.  A program owns ``BLOCK_C``
channels of one image, one row band ``b`` and ``BJ`` consecutive column bands
(at most ``BLOCK_W`` columns).  It gathers and column-interpolates the two
logit rows ``b`` and ``y1`` once -- ``T_b`` and ``T_{y1}`` as
``BLOCK_C×BLOCK_W`` tiles -- and then streams the band's rows: per row one
multiply-add gives ``z``, then sigmoid and the gate, reading ``ga`` (and
``feature``) and writing ``out`` once.  At the released ratio (``H = 96``,
``h = 11``) a band has 8-9 rows, so the gathers are amortised over them.  The
tap tables (``y0``, ``λ_y``, band starts; the same for columns) are computed
on the host in the reference's dtype and formula (``src = dst · ((h − 1)/(H −
1))`` in float32, float64 for float64) and cached per size and device.
``h = H`` and ``w = W`` is a specialisation (``IDENTITY``) that reads the
logits directly.  Every tensor is addressed with its four strides, so
contiguous, ``channels_last``, channel slices, spatial transposes and
expanded gradients run without copies.

*∂L without atomics (deterministic).*  ``∂L`` is a reduction of ``G`` over the
high-resolution grid onto the low one.  Instead of scattering with atomics
(PyTorch's CUDA ``upsample_bilinear2d`` backward does, and is therefore
non-deterministic), each program reduces in registers: over the rows of its
band into two ``BLOCK_C×BLOCK_W`` accumulators (weights ``1 − λ_y`` for row
``b``, ``λ_y`` for row ``y1``), then over the columns of each of its column
bands ``j`` (weights ``1 − λ_x`` for column ``j``, ``λ_x`` for ``x1``).  That
gives four partial sums per (image, channel, row band, column band) -- to the
corners ``(b, j)``, ``(b, x1)``, ``(y1, j)``, ``(y1, x1)`` -- each written by
exactly one program to its own slot of a ``4×N×C×h×w`` float32 (float64)
buffer, and a few PyTorch ops on the low-resolution grid add the four shifted
buffers in a fixed order.  No atomics, no races: the result is bit-for-bit
the same run to run (for the same block sizes).  In the ``IDENTITY`` case
``G`` is ``∂L`` and is written directly.

*Precision.*  Accumulation in float32 (float64 for float64 inputs), loads of
half-precision inputs upcast; results stored in the inputs' dtypes.

*Interpreter.*  On CPU tensors the kernels run only under Triton's
interpreter (see :mod:`.triton_utils`).
"""

import functools
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from .gald_ld_tail import check_ld_tail_args, out_dtype
from .registry import accumulation_dtype
from .triton_utils import block_sizes, check_device, device_context, jitted, tl_dtype

__all__ = ["gald_ld_tail_triton", "choose_blocks", "interpolation_taps"]

TILE = 2048  # BLOCK_C × BLOCK_W per program; untuned on hardware
MAX_BLOCK_W = 4096  # the widest column band the kernel takes (an upsampling ratio up to 4096)
MAX_BJ = 16  # column bands a program reduces (one masked row sum each, four partials)


def _ld_fwd_kernel(
    m_ptr, g_ptr, f_ptr, o_ptr,
    yi_ptr, yl_ptr, ys_ptr, xi_ptr, xl_ptr, xs_ptr,
    C, h, w, n_cb, n_k,
    smn, smc, smh, smw, sgn, sgc, sgh, sgw, sfn, sfc, sfh, sfw, son, soc, soh, sow,
    PAPER: tl.constexpr, IDENTITY: tl.constexpr, ACC: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_W: tl.constexpr, BJ: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    k = pid % n_k
    rest = pid // n_k
    b = rest % h
    rest = rest // h
    cb = rest % n_cb
    n = rest // n_cb
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    x_lo = tl.load(xs_ptr + k * BJ)
    x_hi = tl.load(xs_ptr + tl.minimum(k * BJ + BJ, w))
    x = x_lo + tl.arange(0, BLOCK_W)
    xmask = x < x_hi
    mask = cmask[:, None] & xmask[None, :]
    n64 = n.to(tl.int64)
    c64 = c.to(tl.int64)[:, None]
    x64 = x.to(tl.int64)[None, :]
    m_base = m_ptr + n64 * smn + c64 * smc
    g_base = g_ptr + n64 * sgn + c64 * sgc + x64 * sgw
    f_base = f_ptr + n64 * sfn + c64 * sfc + x64 * sfw
    o_base = o_ptr + n64 * son + c64 * soc + x64 * sow
    if not IDENTITY:
        x0 = tl.load(xi_ptr + x, mask=xmask, other=0)
        lx = tl.load(xl_ptr + x, mask=xmask, other=0.0).to(ACC)[None, :]
        x1 = tl.where(x0 < w - 1, x0 + 1, x0)
        y1 = tl.where(b < h - 1, b + 1, b)
        ox0 = (x0.to(tl.int64) * smw)[None, :]
        ox1 = (x1.to(tl.int64) * smw)[None, :]
        row0 = m_base + b.to(tl.int64) * smh
        row1 = m_base + y1.to(tl.int64) * smh
        t0 = (1.0 - lx) * tl.load(row0 + ox0, mask=mask, other=0.0).to(ACC)
        t0 += lx * tl.load(row0 + ox1, mask=mask, other=0.0).to(ACC)
        t1 = (1.0 - lx) * tl.load(row1 + ox0, mask=mask, other=0.0).to(ACC)
        t1 += lx * tl.load(row1 + ox1, mask=mask, other=0.0).to(ACC)
    y_lo = tl.load(ys_ptr + b).to(tl.int64)
    y_hi = tl.load(ys_ptr + b + 1).to(tl.int64)
    for y64 in range(y_lo, y_hi):  # int64 offsets on the GPU (a plain int in the interpreter)
        if IDENTITY:
            z = tl.load(m_base + y64 * smh + x64 * smw, mask=mask, other=0.0).to(ACC)
        else:
            ly = tl.load(yl_ptr + y64).to(ACC)
            z = (1.0 - ly) * t0 + ly * t1
        mk = 1.0 / (1.0 + tl.exp(-z))
        ga = tl.load(g_base + y64 * sgh, mask=mask, other=0.0).to(ACC)
        if PAPER:
            out = ga * mk + tl.load(f_base + y64 * sfh, mask=mask, other=0.0).to(ACC)
        else:
            out = (ga + ga * mk) + ga
        tl.store(o_base + y64 * soh, out.to(o_ptr.dtype.element_ty), mask=mask)


def _ld_bwd_kernel(
    m_ptr, g_ptr, d_ptr, e_ptr, part_ptr,
    yi_ptr, yl_ptr, ys_ptr, xi_ptr, xl_ptr, xs_ptr,
    plane, C, h, w, n_cb, n_k,
    smn, smc, smh, smw, sgn, sgc, sgh, sgw, sdn, sdc, sdh, sdw, sen, sec, seh, sew,
    PAPER: tl.constexpr, IDENTITY: tl.constexpr, NEED_DGA: tl.constexpr, NEED_DM: tl.constexpr,
    ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_W: tl.constexpr, BJ: tl.constexpr,
):  # fmt: skip
    # ∂l/∂out strides: sd*, ∂ga: se*.  part: 4×N×C×h×w partials of ∂L (IDENTITY: ∂L itself, 1×N×C×h×w).
    pid = tl.program_id(0)
    k = pid % n_k
    rest = pid // n_k
    b = rest % h
    rest = rest // h
    cb = rest % n_cb
    n = rest // n_cb
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    x_lo = tl.load(xs_ptr + k * BJ)
    x_hi = tl.load(xs_ptr + tl.minimum(k * BJ + BJ, w))
    x = x_lo + tl.arange(0, BLOCK_W)
    xmask = x < x_hi
    mask = cmask[:, None] & xmask[None, :]
    n64 = n.to(tl.int64)
    c64 = c.to(tl.int64)[:, None]
    x64 = x.to(tl.int64)[None, :]
    m_base = m_ptr + n64 * smn + c64 * smc
    g_base = g_ptr + n64 * sgn + c64 * sgc + x64 * sgw
    d_base = d_ptr + n64 * sdn + c64 * sdc + x64 * sdw
    e_base = e_ptr + n64 * sen + c64 * sec + x64 * sew
    p_row = part_ptr + (n64 * C + c64) * h * w  # [BLOCK_C, 1]: this image's and channels' low-res planes
    if not IDENTITY:
        x0 = tl.load(xi_ptr + x, mask=xmask, other=0)
        lx = tl.load(xl_ptr + x, mask=xmask, other=0.0).to(ACC)[None, :]
        x1 = tl.where(x0 < w - 1, x0 + 1, x0)
        y1 = tl.where(b < h - 1, b + 1, b)
        ox0 = (x0.to(tl.int64) * smw)[None, :]
        ox1 = (x1.to(tl.int64) * smw)[None, :]
        row0 = m_base + b.to(tl.int64) * smh
        row1 = m_base + y1.to(tl.int64) * smh
        t0 = (1.0 - lx) * tl.load(row0 + ox0, mask=mask, other=0.0).to(ACC)
        t0 += lx * tl.load(row0 + ox1, mask=mask, other=0.0).to(ACC)
        t1 = (1.0 - lx) * tl.load(row1 + ox0, mask=mask, other=0.0).to(ACC)
        t1 += lx * tl.load(row1 + ox1, mask=mask, other=0.0).to(ACC)
        acc0 = tl.zeros([BLOCK_C, BLOCK_W], dtype=ACC)  # Σ_y (1 − λ_y)·G   (to row b)
        acc1 = tl.zeros([BLOCK_C, BLOCK_W], dtype=ACC)  # Σ_y λ_y·G         (to row y1)
    y_lo = tl.load(ys_ptr + b).to(tl.int64)
    y_hi = tl.load(ys_ptr + b + 1).to(tl.int64)
    for y64 in range(y_lo, y_hi):  # int64 offsets on the GPU (a plain int in the interpreter)
        if IDENTITY:
            z = tl.load(m_base + y64 * smh + x64 * smw, mask=mask, other=0.0).to(ACC)
        else:
            ly = tl.load(yl_ptr + y64).to(ACC)
            z = (1.0 - ly) * t0 + ly * t1
        mk = 1.0 / (1.0 + tl.exp(-z))
        dy = tl.load(d_base + y64 * sdh, mask=mask, other=0.0).to(ACC)
        if NEED_DGA:
            if PAPER:
                dga = dy * mk
            else:
                dga = dy * mk + 2.0 * dy
            tl.store(e_base + y64 * seh, dga.to(e_ptr.dtype.element_ty), mask=mask)
        if NEED_DM:
            ga = tl.load(g_base + y64 * sgh, mask=mask, other=0.0).to(ACC)
            dz = dy * ga * (mk * (1.0 - mk))
            if IDENTITY:
                tl.store(p_row + y64 * w + x64, dz, mask=mask)
            else:
                acc0 += (1.0 - ly) * dz
                acc1 += ly * dz
    if NEED_DM and not IDENTITY:
        # column bands j0 .. j0 + BJ - 1: a masked row sum each, four corners; one writer per slot
        j0 = k * BJ
        bw = b.to(tl.int64) * w
        for jj in tl.static_range(BJ):
            j = j0 + jj
            sel = xmask[None, :] & (x0 == j)[None, :]
            w0 = tl.where(sel, 1.0 - lx, 0.0)
            w1 = tl.where(sel, lx, 0.0)
            jmask = cmask[:, None] & (j < w)
            slot = p_row + bw + j
            tl.store(slot, tl.sum(acc0 * w0, axis=1)[:, None], mask=jmask)
            tl.store(slot + plane, tl.sum(acc0 * w1, axis=1)[:, None], mask=jmask)
            tl.store(slot + 2 * plane, tl.sum(acc1 * w0, axis=1)[:, None], mask=jmask)
            tl.store(slot + 3 * plane, tl.sum(acc1 * w1, axis=1)[:, None], mask=jmask)


@functools.lru_cache(maxsize=64)
def interpolation_taps(n_in: int, n_out: int, acc: torch.dtype, device: torch.device):
    """``(i0, λ, band_start, widest)`` of ``align_corners=True`` linear interpolation from ``n_in`` to ``n_out``.

    ``i0`` (int32, ``n_out``): the first tap, ``λ`` (``acc``): the second tap's
    weight, computed as PyTorch does (``scale = (n_in − 1)/(n_out − 1)`` and
    ``src = scale · dst`` in ``acc``; ``i0 = ⌊src⌋``).  ``band_start`` (int32,
    ``n_in + 1``): the first output index of each band (outputs with ``i0 =
    r``), ``widest``: the most outputs in one band.  Cached per sizes, dtype
    and device.
    """
    scale = torch.tensor(n_in - 1, dtype=acc) / (n_out - 1) if n_out > 1 else torch.zeros((), dtype=acc)
    src = torch.arange(n_out, dtype=acc) * scale
    i0 = src.to(torch.int64).clamp_(0, n_in - 1)  # truncation is ⌊·⌋ here: src ≥ 0
    lam = src - i0.to(acc)
    start = torch.searchsorted(i0, torch.arange(n_in + 1))
    widest = int((start[1:] - start[:-1]).max())
    return i0.to(torch.int32).to(device), lam.to(device), start.to(torch.int32).to(device), widest


def choose_blocks(
    C: int, W: int, w: int, widest: int, identity: bool,
    block_c: Optional[int] = None, block_w: Optional[int] = None,
) -> Tuple[int, int, int]:  # fmt: skip
    """``(BLOCK_C, BLOCK_W, BJ)``: a program's channels, columns and column bands.

    ``BLOCK_W`` holds whole column bands (``widest`` columns; one in the
    ``identity`` case): 64 or the next power of two of ``W`` if smaller, more
    for wider bands; ``BLOCK_C`` fills :data:`TILE` elements (at most the next
    power of two of ``C``); ``BJ``: as many bands as fit, at most
    :data:`MAX_BJ`, balanced over the ``w`` column bands.  A heuristic, not
    tuned on hardware.  Explicit values must be powers of two.
    """
    need = 1 if identity else max(widest, 1)
    default_w = max(triton.next_power_of_2(need), min(64, triton.next_power_of_2(max(W, 1))))
    bw, bc = block_sizes(W, C, block_w or default_w, block_c, max_block_c=MAX_BLOCK_W, tile=TILE)
    if bw < need:
        raise ValueError(f"block_w={bw} is narrower than the widest column band ({need} columns)")
    if bw > MAX_BLOCK_W:
        raise ValueError(
            f"column bands of {need} columns (an upsampling ratio above {MAX_BLOCK_W}) are not supported by the "
            "Triton kernel; use DLA_REPRO_KERNELS=reference"
        )
    most = bw if identity else max(1, min(bw // need, MAX_BJ))
    bj = triton.cdiv(w, triton.cdiv(w, most))  # the same number of chunks, balanced
    return bc, bw, bj


def _plan(mask_logits, ga, acc, block_c, block_w):
    """Tap tables, block sizes, grid and constexprs shared by the forward and the backward."""
    N, C, H, W = ga.shape
    h, w = mask_logits.shape[-2:]
    identity = (h, w) == (H, W)
    yi, yl, ys, _ = interpolation_taps(h, H, acc, ga.device)
    xi, xl, xs, widest = interpolation_taps(w, W, acc, ga.device)
    bc, bw, bj = choose_blocks(C, W, w, widest, identity, block_c, block_w)
    n_cb, n_k = triton.cdiv(C, bc), triton.cdiv(w, bj)
    return dict(
        tables=(yi, yl, ys, xi, xl, xs),
        sizes=(C, h, w, n_cb, n_k),
        grid=(N * n_cb * h * n_k,),
        const=dict(IDENTITY=identity, ACC=tl_dtype(acc), BLOCK_C=bc, BLOCK_W=bw, BJ=bj),
        num_warps=8 if bc * bw >= 2048 else 4 if bc * bw >= 512 else 2,  # 8: ≤ 128 registers in the backward
        identity=identity,
    )


def _forward(mask_logits, ga, feature, paper, block_c, block_w):
    dtype = out_dtype(mask_logits, ga, feature, "paper" if paper else "released")
    acc = accumulation_dtype(dtype)
    out = torch.empty_like(ga, dtype=dtype)  # ga's strides when dense (as the reference's elementwise ops)
    if out.numel() == 0:
        return out
    plan = _plan(mask_logits, ga, acc, block_c, block_w)
    f = feature if paper else ga  # not read by the released form
    jitted(_ld_fwd_kernel)[plan["grid"]](
        mask_logits, ga, f, out, *plan["tables"], *plan["sizes"],
        *mask_logits.stride(), *ga.stride(), *f.stride(), *out.stride(),
        PAPER=paper, **plan["const"], num_warps=plan["num_warps"],
    )  # fmt: skip
    return out


def _to_next(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Move index ``i`` of ``dim`` to ``min(i + 1, n − 1)`` (the second tap), adding at the clamped end."""
    n = t.shape[dim]
    s = torch.zeros_like(t)
    if n > 1:
        s.narrow(dim, 1, n - 1).copy_(t.narrow(dim, 0, n - 1))
    s.narrow(dim, n - 1, 1).add_(t.narrow(dim, n - 1, 1))
    return s


def _backward(dy, mask_logits, ga, paper, need_dm, need_dga, block_c, block_w):
    N, C, H, W = ga.shape
    h, w = mask_logits.shape[-2:]
    acc = accumulation_dtype(dy.dtype)  # ∂l/∂out has the result's dtype
    dga = torch.empty_like(ga) if need_dga else None
    if ga.numel() == 0:
        return (torch.zeros_like(mask_logits) if need_dm else None), dga
    plan = _plan(mask_logits, ga, acc, block_c, block_w)
    part = torch.empty((1 if plan["identity"] else 4, N, C, h, w), device=ga.device, dtype=acc) if need_dm else None
    e = dga if need_dga else ga  # not written when NEED_DGA is False
    jitted(_ld_bwd_kernel)[plan["grid"]](
        mask_logits, ga, dy, e, part if need_dm else ga, *plan["tables"], N * C * h * w, *plan["sizes"],
        *mask_logits.stride(), *ga.stride(), *dy.stride(), *e.stride(),
        PAPER=paper, NEED_DGA=need_dga, NEED_DM=need_dm, **plan["const"], num_warps=plan["num_warps"],
    )  # fmt: skip
    dm = None
    if need_dm:
        if plan["identity"]:
            dm = part[0]
        else:  # to (b, j), (b, x1), (y1, j), (y1, x1): a fixed order of additions
            dm = part[0] + _to_next(part[1], 3) + _to_next(part[2] + _to_next(part[3], 3), 2)
        dm = dm.to(mask_logits.dtype)
    return dm, dga


class _LDTailFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mask_logits, ga, feature, form, block_c, block_w):
        paper = form == "paper"
        out = _forward(mask_logits, ga, feature, paper, block_c, block_w)
        ctx.save_for_backward(mask_logits, ga)
        ctx.conf = (paper, block_c, block_w, feature.dtype if paper else None)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        mask_logits, ga = ctx.saved_tensors
        paper, block_c, block_w, feature_dtype = ctx.conf
        need_dm, need_dga, need_df = ctx.needs_input_grad[:3]
        dm = dga = None
        if need_dm or need_dga:
            dm, dga = _backward(dy, mask_logits, ga, paper, need_dm, need_dga, block_c, block_w)
        df = dy.to(feature_dtype) if (paper and need_df) else None  # ∂l/∂feature = ∂l/∂out
        return dm, dga, df, None, None, None


@torch.compiler.disable  # an opaque call inside torch.compile'd models (kernel tracing untested: no GPU here)
def gald_ld_tail_triton(
    mask_logits: torch.Tensor,
    ga: torch.Tensor,
    feature: Optional[torch.Tensor] = None,
    form: str = "released",
    *,
    block_c: Optional[int] = None,
    block_w: Optional[int] = None,
) -> torch.Tensor:
    """The Triton kernel, differentiable (once) in ``mask_logits``, ``ga`` and (paper form) ``feature``.

    Same contract as :func:`~dla_repro.kernels.gald_ld_tail.gald_ld_tail_reference`.
    ``block_c``/``block_w`` override :func:`choose_blocks` (powers of two;
    ``block_w`` at least the widest column band).
    """
    check_ld_tail_args(mask_logits, ga, feature, form)
    for t in (mask_logits, ga, feature) if form == "paper" else (mask_logits, ga):
        check_device(t, "GALD local-distribution")
    with device_context(ga):
        return _LDTailFunction.apply(mask_logits, ga, feature, form, block_c, block_w)
