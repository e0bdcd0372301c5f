"""Triton forward and backward kernels for DynOPool's resampling (K bilinear queries per cell, max or mean).

Equations (the reference is :func:`.dynopool_resample.dynopool_resample_reference`).
For output cell ``(i, j)`` and query ``k`` with offset ``δ_k = (δ_y, δ_x)``, in
input pixel coordinates::

    t_i   = i − (H' − 1)/2                      (same for j with W')
    q_y   = ((H − 1)/2 + t_i / r_h) + δ_y / r_h
    u_y   = clip(unnormalise(normalise(q_y)))   grid_sample's coordinate (= q_y up to rounding),
                                                clipped to [0, H − 1] for padding "border"
    y0    = ⌊u_y⌋,  f_y = u_y − y0              (same for x: u_x, x0, f_x)
    v_k   = Σ_corners w_corner · x[y0 + a, x0 + b]   w = (1 − f_y or f_y)·(1 − f_x or f_x), a, b ∈ {0, 1}
    out   = max_k v_k   or   (1/K) Σ_k v_k

Backward, with ``g = ∂l/∂out``::

    g_k      = g · [v_k = out] / #{k' : v_k' = out}       (max: ties share equally, as torch.amax)
             = g / K                                       (mean)
    ∂l/∂x   += g_k · w_corner       at each of the query's four corners (scatter)
    ∂v_k/∂u_y = m_y · ((x_sw − x_nw)(1 − f_x) + (x_se − x_ne) f_x)   m_y = 1 strictly inside (0, H − 1)
                                                                     for "border", else 0 (grid_sample's rule)
    ∂l/∂r_h  = Σ_{n,c,i,j,k} g_k · ∂v_k/∂u_y · (−(t_i + δ_y) / r_h²)          (same for r_w)

Ties in max are exact equalities of the recomputed query values: the
gradient of a cell is split equally among its tied queries (``torch.amax``'s
rule, so the kernel equals autograd through the reference there too; a tie
happens wherever queries are clamped to the same border point, or read a
constant region such as post-ReLU zeros).  The backward recomputes the K
values with the forward's instructions, so forward and backward agree on which
queries tie.

Kernel design
-------------
*Tiles.*  A program owns ``BLOCK_C`` channels × ``BLOCK_P`` output cells of
one image.  Query coordinates depend only on the cell, so they are computed
once per cell (a ``BLOCK_P`` vector) and shared by the channels; each query
is four gathers from ``x`` addressed with all four strides (any layout,
channels_last included, without a copy).  The output is written contiguous.

*Coordinates.*  They are computed as the reference computes them on the CPU,
operation for operation in the input's dtype (IEEE divisions via
``tl.div_rn``), and grid_sample's un-normalisation ``(g + 1)·size/2 − ½`` is
rounded once (as an FMA): this matters only where a query falls exactly on a
pixel centre (``r = ½`` on even sides), where ∂v/∂u is a one-sided derivative
and the side is decided by the last bit of ``u``.  PyTorch's AVX2 CPU kernel
contracts that expression into an FMA (measured here: it and this kernel take
the same side at every pixel-centre query tried); with
``ATEN_CPU_CAPABILITY=default`` PyTorch rounds twice, and at ``r = ½`` on sides
26, 38, 50, … some queries then fall on the other side, so ∂r there differs
from that reference by the difference of two one-sided slopes.  On CUDA the
reference's rounding (nvcc's FMA contraction, PyTorch's division by a Python
number) was not checked: no GPU here.
float32 coordinates are un-normalised in float64 and rounded to float32 (one
rounding on the GPU and in the interpreter alike); float64 ones with
``tl.fma`` (fused on the GPU; the interpreter rounds twice).  Half-precision
inputs get float32 coordinates and accumulation (the reference computes its
grid in the input dtype; not compared).

*∂x.*  A scatter: the queries of different cells can read the same pixel
(``r > ½``, or clamped to a border), so contributions are added with
``atomic_add`` into a zeroed float32/float64 buffer, only for the queries
that carry gradient (the tied maxima, or all K for mean).  On a GPU the
order of those float additions varies between runs (PyTorch's CUDA
``grid_sample`` backward is non-deterministic for the same reason); ∂r is
deterministic.

*∂r reduction.*  The backward is persistent: ``G = min(#tiles, 4·#SMs)``
programs, each accumulates its tiles' ``∂l/∂r`` terms in registers and writes
one row of a ``G×2`` buffer; ``torch.sum`` over the rows gives ∂r, the same
for a given ``G``.

*Interpreter.*  On CPU tensors the kernels run only under Triton's
interpreter (see :mod:`.triton_utils`).  The two helpers below are
``triton.jit``-ed at import, which happens after triton has fixed its mode.
"""

from typing import Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from .dynopool_resample import PADDING_MODES, check_resample_args, resample_size
from .registry import accumulation_dtype
from .triton_utils import block_sizes, check_device, default_programs, device_context, jitted, tl_dtype

__all__ = ["dynopool_resample_triton", "choose_blocks"]

MAX_BLOCK_C = 32
TILE = 1024  # BLOCK_C × BLOCK_P per program (16 gathers an element in the forward); untuned on hardware


@triton.jit
def _source_coord(idx, n_out, n_in, r, off, CLAMP: tl.constexpr, VIA_F64: tl.constexpr):
    """grid_sample's input coordinate of query ``off`` of cells ``idx`` (clipped for "border"), and ∂u/∂q's mask."""
    # VIA_F64: float32 coordinates -- IEEE divisions (tl.div_rn; "/" may be approximate on the GPU) and the
    # un-normalisation in float64, rounded once to float32.  Otherwise float64: "/" is IEEE, FMA for the last step.
    t = idx.to(r.dtype) - (n_out - 1) * 0.5
    if VIA_F64:
        q = (tl.div_rn(t, r) + (n_in - 1) * 0.5) + tl.div_rn(off, r)
        g = tl.div_rn(2.0 * q + 1.0, n_in.to(r.dtype)) - 1.0
        u = ((g + 1.0).to(tl.float64) * (n_in * 0.5).to(tl.float64) - 0.5).to(r.dtype)
    else:
        q = (t / r + (n_in - 1) * 0.5) + off / r
        g = (2.0 * q + 1.0) / n_in.to(r.dtype) - 1.0
        u = tl.fma(g + 1.0, (n_in * 0.5).to(r.dtype), -0.5)
    hi = (n_in - 1).to(r.dtype)
    if CLAMP:
        inside = (u > 0.0) & (u < hi)
        u = tl.minimum(tl.maximum(u, 0.0), hi)
    else:
        inside = u == u
    return u, inside, t


@triton.jit
def _gather4(base, u_y, u_x, H, W, sxh, sxw, mask, ACC: tl.constexpr):
    """The four corners of the query ``(u_y, u_x)`` (zero outside the input), the fractions and corner indices."""
    y0f = tl.floor(u_y)
    x0f = tl.floor(u_x)
    fy = u_y - y0f
    fx = u_x - x0f
    y0 = y0f.to(tl.int32)
    x0 = x0f.to(tl.int32)
    y1 = y0 + 1
    x1 = x0 + 1
    iny0 = (y0 >= 0) & (y0 < H)
    iny1 = (y1 >= 0) & (y1 < H)
    inx0 = (x0 >= 0) & (x0 < W)
    inx1 = (x1 >= 0) & (x1 < W)
    oy0 = y0.to(tl.int64) * sxh
    oy1 = y1.to(tl.int64) * sxh
    ox0 = x0.to(tl.int64) * sxw
    ox1 = x1.to(tl.int64) * sxw
    v_nw = tl.load(base + (oy0 + ox0)[None, :], mask=mask & (iny0 & inx0)[None, :], other=0.0).to(ACC)
    v_ne = tl.load(base + (oy0 + ox1)[None, :], mask=mask & (iny0 & inx1)[None, :], other=0.0).to(ACC)
    v_sw = tl.load(base + (oy1 + ox0)[None, :], mask=mask & (iny1 & inx0)[None, :], other=0.0).to(ACC)
    v_se = tl.load(base + (oy1 + ox1)[None, :], mask=mask & (iny1 & inx1)[None, :], other=0.0).to(ACC)
    return v_nw, v_ne, v_sw, v_se, fy, fx, y0, x0


def _resample_fwd_kernel(
    x_ptr, r_ptr, off_ptr, y_ptr,
    C, H, W, OH, OW, n_p_blocks, n_c_blocks,
    sxn, sxc, sxh, sxw,
    K: tl.constexpr, MEAN: tl.constexpr, CLAMP: tl.constexpr, VIA_F64: tl.constexpr, ACC: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    cb = pid % n_c_blocks
    rest = pid // n_c_blocks
    pb = rest % n_p_blocks
    n = rest // n_p_blocks
    OHW = OH * OW
    p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = p < OHW
    i = p // OW
    j = p - i * OW
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    mask = cmask[:, None] & pmask[None, :]
    base = x_ptr + n.to(tl.int64) * sxn + c.to(tl.int64)[:, None] * sxc
    rh = tl.load(r_ptr).to(ACC)
    rw = tl.load(r_ptr + 1).to(ACC)
    if MEAN:
        out = tl.zeros([BLOCK_C, BLOCK_P], dtype=ACC)
    else:
        out = tl.full([BLOCK_C, BLOCK_P], float("-inf"), ACC)
    for k in tl.static_range(K):
        u_y, _m_y, _t_i = _source_coord(i, OH, H, rh, tl.load(off_ptr + 2 * k).to(ACC), CLAMP, VIA_F64)
        u_x, _m_x, _t_j = _source_coord(j, OW, W, rw, tl.load(off_ptr + 2 * k + 1).to(ACC), CLAMP, VIA_F64)
        v_nw, v_ne, v_sw, v_se, fy, fx, _y0, _x0 = _gather4(base, u_y, u_x, H, W, sxh, sxw, mask, ACC)
        v = ((1.0 - fy) * (1.0 - fx))[None, :] * v_nw + ((1.0 - fy) * fx)[None, :] * v_ne
        v += (fy * (1.0 - fx))[None, :] * v_sw + (fy * fx)[None, :] * v_se
        if MEAN:
            out += v
        else:
            out = tl.maximum(out, v)
    if MEAN:
        out = out / K
    y_off = (n.to(tl.int64) * C + c.to(tl.int64)[:, None]) * OHW + p[None, :]
    tl.store(y_ptr + y_off, out.to(y_ptr.dtype.element_ty), mask=mask)


def _resample_bwd_kernel(
    x_ptr, r_ptr, off_ptr, dy_ptr, dx_ptr, drp_ptr,
    C, H, W, OH, OW, n_p_blocks, n_c_blocks, n_tiles,
    sxn, sxc, sxh, sxw, sdn, sdc, sdh, sdw, sen, sec, seh, sew,
    K: tl.constexpr, MEAN: tl.constexpr, CLAMP: tl.constexpr, VIA_F64: tl.constexpr, ACC: tl.constexpr,
    NEED_DX: tl.constexpr, NEED_DR: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    # dy strides: sd*, dx strides: se*.  drp: G×2 partial sums of ∂r, one row per program.
    pid = tl.program_id(0)
    n_progs = tl.num_programs(0)
    rh = tl.load(r_ptr).to(ACC)
    rw = tl.load(r_ptr + 1).to(ACC)
    OHW = OH * OW
    acc_h = tl.zeros([BLOCK_C, BLOCK_P], dtype=ACC)
    acc_w = tl.zeros([BLOCK_C, BLOCK_P], dtype=ACC)
    for b in range(pid, n_tiles, n_progs):
        cb = b % n_c_blocks
        rest = b // n_c_blocks
        pb = rest % n_p_blocks
        n = rest // n_p_blocks
        p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
        pmask = p < OHW
        i = p // OW
        j = p - i * OW
        c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = c < C
        mask = cmask[:, None] & pmask[None, :]
        n64 = n.to(tl.int64)
        c64 = c.to(tl.int64)[:, None]
        base = x_ptr + n64 * sxn + c64 * sxc
        dx_base = dx_ptr + n64 * sen + c64 * sec
        dy_off = n64 * sdn + c64 * sdc + (i.to(tl.int64) * sdh + j.to(tl.int64) * sdw)[None, :]
        g = tl.load(dy_ptr + dy_off, mask=mask, other=0.0).to(ACC)
        if MEAN:
            share = g / K
            best = g  # unused
        else:
            # first pass: the maximum and how many queries reach it
            best = tl.full([BLOCK_C, BLOCK_P], float("-inf"), ACC)
            count = tl.zeros([BLOCK_C, BLOCK_P], dtype=ACC)
            for k in tl.static_range(K):
                u_y, _m_y, _t_i = _source_coord(i, OH, H, rh, tl.load(off_ptr + 2 * k).to(ACC), CLAMP, VIA_F64)
                u_x, _m_x, _t_j = _source_coord(j, OW, W, rw, tl.load(off_ptr + 2 * k + 1).to(ACC), CLAMP, VIA_F64)
                v_nw, v_ne, v_sw, v_se, fy, fx, _y0, _x0 = _gather4(base, u_y, u_x, H, W, sxh, sxw, mask, ACC)
                v = ((1.0 - fy) * (1.0 - fx))[None, :] * v_nw + ((1.0 - fy) * fx)[None, :] * v_ne
                v += (fy * (1.0 - fx))[None, :] * v_sw + (fy * fx)[None, :] * v_se
                count = tl.where(v > best, 1.0, tl.where(v == best, count + 1.0, count))
                best = tl.maximum(best, v)
            share = g / tl.maximum(count, 1.0)
        # second pass: each query's share of the gradient, to x (scatter) and to r (reduction)
        for k in tl.static_range(K):
            oy = tl.load(off_ptr + 2 * k).to(ACC)
            ox = tl.load(off_ptr + 2 * k + 1).to(ACC)
            u_y, m_y, t_i = _source_coord(i, OH, H, rh, oy, CLAMP, VIA_F64)
            u_x, m_x, t_j = _source_coord(j, OW, W, rw, ox, CLAMP, VIA_F64)
            v_nw, v_ne, v_sw, v_se, fy, fx, y0, x0 = _gather4(base, u_y, u_x, H, W, sxh, sxw, mask, ACC)
            if MEAN:
                gk = share
                sel = mask
            else:
                v = ((1.0 - fy) * (1.0 - fx))[None, :] * v_nw + ((1.0 - fy) * fx)[None, :] * v_ne
                v += (fy * (1.0 - fx))[None, :] * v_sw + (fy * fx)[None, :] * v_se
                sel = mask & (v == best)
                gk = tl.where(sel, share, 0.0)
            if NEED_DR:
                dv_dy = (v_sw - v_nw) * (1.0 - fx)[None, :] + (v_se - v_ne) * fx[None, :]
                dv_dx = (v_ne - v_nw) * (1.0 - fy)[None, :] + (v_se - v_sw) * fy[None, :]
                du_drh = tl.where(m_y, -(t_i + oy) / (rh * rh), 0.0)
                du_drw = tl.where(m_x, -(t_j + ox) / (rw * rw), 0.0)
                acc_h += gk * dv_dy * du_drh[None, :]
                acc_w += gk * dv_dx * du_drw[None, :]
            if NEED_DX:
                y1 = y0 + 1
                x1 = x0 + 1
                iny0 = sel & ((y0 >= 0) & (y0 < H))[None, :]
                iny1 = sel & ((y1 >= 0) & (y1 < H))[None, :]
                inx0 = ((x0 >= 0) & (x0 < W))[None, :]
                inx1 = ((x1 >= 0) & (x1 < W))[None, :]
                py0 = dx_base + (y0.to(tl.int64) * seh)[None, :]
                py1 = dx_base + (y1.to(tl.int64) * seh)[None, :]
                ox0 = (x0.to(tl.int64) * sew)[None, :]
                ox1 = (x1.to(tl.int64) * sew)[None, :]
                wy0 = gk * (1.0 - fy)[None, :]
                wy1 = gk * fy[None, :]
                tl.atomic_add(py0 + ox0, wy0 * (1.0 - fx)[None, :], mask=iny0 & inx0)
                tl.atomic_add(py0 + ox1, wy0 * fx[None, :], mask=iny0 & inx1)
                tl.atomic_add(py1 + ox0, wy1 * (1.0 - fx)[None, :], mask=iny1 & inx0)
                tl.atomic_add(py1 + ox1, wy1 * fx[None, :], mask=iny1 & inx1)
    if NEED_DR:
        tl.store(drp_ptr + pid.to(tl.int64) * 2, tl.sum(tl.sum(acc_h, axis=1), axis=0))
        tl.store(drp_ptr + pid.to(tl.int64) * 2 + 1, tl.sum(tl.sum(acc_w, axis=1), axis=0))


def choose_blocks(
    C: int, n_cells: int, block_c: Optional[int] = None, block_p: Optional[int] = None
) -> Tuple[int, int]:
    """``(BLOCK_C, BLOCK_P)``: up to 32 channels, :data:`TILE` elements a program.

    A heuristic, not tuned on hardware.  Explicit values must be powers of two.
    """
    return block_sizes(C, n_cells, block_c, block_p, max_block_c=MAX_BLOCK_C, tile=TILE)


def _constexprs(x: torch.Tensor, offsets: torch.Tensor, reduce: str, padding_mode: str) -> dict:
    acc = accumulation_dtype(x.dtype)
    return dict(
        K=offsets.shape[0], MEAN=reduce == "mean", CLAMP=padding_mode == "border",
        VIA_F64=acc == torch.float32, ACC=tl_dtype(acc),
    )  # fmt: skip


def _forward(x, r_acc, off_acc, out_size, reduce, padding_mode, block_c, block_p):
    N, C, H, W = x.shape
    OH, OW = out_size
    y = torch.empty((N, C, OH, OW), device=x.device, dtype=x.dtype)
    if y.numel() == 0:
        return y
    bc, bp = choose_blocks(C, OH * OW, block_c, block_p)
    n_p_blocks, n_c_blocks = triton.cdiv(OH * OW, bp), triton.cdiv(C, bc)
    jitted(_resample_fwd_kernel)[(N * n_p_blocks * n_c_blocks,)](
        x, r_acc, off_acc, y,
        C, H, W, OH, OW, n_p_blocks, n_c_blocks,
        *x.stride(),
        **_constexprs(x, off_acc, reduce, padding_mode), BLOCK_C=bc, BLOCK_P=bp,
        num_warps=4,
    )  # fmt: skip
    return y


def _channels_last(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _backward(dy, x, r_acc, off_acc, need_dx, need_dr, reduce, padding_mode, block_c, block_p, max_programs):
    N, C, H, W = x.shape
    OH, OW = dy.shape[-2:]
    acc = accumulation_dtype(x.dtype)
    fmt = torch.channels_last if _channels_last(x) else torch.contiguous_format  # as grid_sample's ∂x
    dx = torch.zeros(x.shape, device=x.device, dtype=acc).contiguous(memory_format=fmt) if need_dx else None
    bc, bp = choose_blocks(C, OH * OW, block_c, block_p)
    n_p_blocks, n_c_blocks = triton.cdiv(OH * OW, bp), triton.cdiv(C, bc)
    n_tiles = N * n_p_blocks * n_c_blocks
    G = max(1, min(n_tiles, max_programs or default_programs(x.device)))
    dr_part = torch.zeros((G, 2), device=x.device, dtype=acc) if need_dr else None
    if dy.numel() > 0 and x.numel() > 0:
        jitted(_resample_bwd_kernel)[(G,)](
            x, r_acc, off_acc, dy, dx if need_dx else x, dr_part if need_dr else r_acc,
            C, H, W, OH, OW, n_p_blocks, n_c_blocks, n_tiles,
            *x.stride(), *dy.stride(), *(dx.stride() if need_dx else (0, 0, 0, 0)),
            **_constexprs(x, off_acc, reduce, padding_mode), NEED_DX=need_dx, NEED_DR=need_dr,
            BLOCK_C=bc, BLOCK_P=bp, num_warps=4,
        )  # fmt: skip
    if need_dx and dx.dtype != x.dtype:
        dx = dx.to(x.dtype)
    dr = dr_part.sum(0) if need_dr else None
    return dx, dr


class _ResampleFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, r, offsets, out_size, reduce, padding_mode, block_c, block_p, max_programs):
        acc = accumulation_dtype(x.dtype)
        # coordinates in x's dtype, as the reference (r.to(x.dtype), offsets.to(x)) -- in float32 for half inputs
        r_acc = r.detach().to(x.dtype).to(acc).contiguous()
        off_acc = offsets.detach().to(x.dtype).to(acc).contiguous()
        y = _forward(x, r_acc, off_acc, out_size, reduce, padding_mode, block_c, block_p)
        ctx.save_for_backward(x, r_acc, off_acc)
        ctx.args = (reduce, padding_mode, block_c, block_p, max_programs)
        ctx.r_dtype = r.dtype
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, r_acc, off_acc = ctx.saved_tensors
        need_dx, need_dr = ctx.needs_input_grad[:2]
        none = (None,) * 7
        if not (need_dx or need_dr):
            return (None, None, *none)
        dx, dr = _backward(dy, x, r_acc, off_acc, need_dx, need_dr, *ctx.args)
        return dx, (dr.to(ctx.r_dtype) if need_dr else None), *none


@torch.compiler.disable  # an opaque call inside torch.compile'd models (kernel tracing untested: no GPU here)
def dynopool_resample_triton(
    x: torch.Tensor,
    r: torch.Tensor,
    offsets: torch.Tensor,
    out_size: Optional[Sequence[int]] = None,
    reduce: str = "max",
    padding_mode: str = "border",
    *,
    block_c: Optional[int] = None,
    block_p: Optional[int] = None,
    max_programs: Optional[int] = None,
) -> torch.Tensor:
    """The Triton kernel, differentiable (once) in ``x`` and ``r``.

    Same contract as :func:`~dla_repro.kernels.dynopool_resample.dynopool_resample_reference`,
    for ``padding_mode`` ``"border"`` or ``"zeros"``.  ``block_c``/``block_p``
    override :func:`choose_blocks`; ``max_programs`` caps the backward grid
    ``G`` (default ``4 × SMs``; 8 in the interpreter).
    """
    check_resample_args(x, r, offsets, reduce)
    check_device(x, "DynOPool resampling")
    if padding_mode not in PADDING_MODES:
        raise ValueError(
            f"padding_mode={padding_mode!r}: the Triton kernel implements {PADDING_MODES}; "
            "use DLA_REPRO_KERNELS=reference for the others"
        )
    if r.device != x.device or offsets.device != x.device:
        raise ValueError(f"r is on {r.device}, offsets on {offsets.device}, x on {x.device}")
    _, _, h, w = x.shape
    oh, ow = resample_size(h, w, r) if out_size is None else (int(out_size[0]), int(out_size[1]))
    if oh < 1 or ow < 1:
        raise ValueError(f"out_size must be at least 1×1, got {(oh, ow)}")
    with device_context(x):
        return _ResampleFunction.apply(x, r, offsets, (oh, ow), reduce, padding_mode, block_c, block_p, max_programs)
