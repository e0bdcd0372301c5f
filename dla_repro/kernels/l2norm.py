"""ParseNet's L2 normalisation with a learned per-channel scale: reference, bench and test specs.

ParseNet (Liu, Rabinovich, Berg, arXiv 1506.04579, §3.3) normalises each
position's feature vector before fusing features of different scales, then
rescales every channel by a learned ``γ``.  For each position ``p = (n, h, w)``
of ``x`` (``N×C×H×W``) and channel ``c``::

    x̂_pc = x_pc / sqrt(Σ_c' x_pc'² + eps)
    y_pc = γ_c · x̂_pc

``eps = 1e-10`` as in the official Caffe layer (``weiliu89/caffe``,
``src/caffe/layers/normalize_layer.cpp`` with ``across_spatial: false``;
``NormalizeParameter.eps`` defaults to 1e-10 in ``src/caffe/proto/caffe.proto``).
The gradients the Triton kernel implements (autograd of the reference gives
the same) are in :mod:`.l2norm_triton`.

This module does not import triton: the reference is what CPU and CI run.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch

from .registry import BenchSpec, CompileCase, TestCase, TestSpec, accumulation_dtype

__all__ = ["l2norm_scale_reference", "make_inputs", "bytes_moved", "BENCH", "TEST"]


def l2norm_scale_reference(x: torch.Tensor, gamma: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """ParseNet's L2 normalisation over channels with a per-channel scale.

    For every position ``(n, h, w)`` of ``x`` (``N×C×H×W``, any memory format)::

        x̂_c = x_c / sqrt(Σ_c' x_c'² + eps)
        y_c = γ_c · x̂_c

    ``gamma`` has shape ``(C,)``.  The result has dtype
    ``torch.promote_types(x.dtype, gamma.dtype)`` and the memory format of ``x``;
    the norm is accumulated in :func:`~.registry.accumulation_dtype`.
    """
    check_l2norm_args(x, gamma)
    out_dtype = torch.promote_types(x.dtype, gamma.dtype)
    acc = accumulation_dtype(out_dtype)
    xf = x.to(acc)
    inv_norm = torch.rsqrt(xf.square().sum(dim=1, keepdim=True) + eps)
    return (xf * inv_norm * gamma.to(acc).view(1, -1, 1, 1)).to(out_dtype)


def check_l2norm_args(x: torch.Tensor, gamma: torch.Tensor) -> None:
    """The shape and dtype contract shared by the reference and the kernel."""
    if x.dim() != 4:
        raise ValueError(f"l2norm_scale expects x of shape N×C×H×W, got shape {tuple(x.shape)}")
    if gamma.dim() != 1 or gamma.shape[0] != x.shape[1]:
        raise ValueError(
            f"l2norm_scale expects gamma of shape ({x.shape[1]},) for x with {x.shape[1]} channels, "
            f"got shape {tuple(gamma.shape)}"
        )
    if not (x.is_floating_point() and gamma.is_floating_point()):
        raise TypeError(f"l2norm_scale expects floating-point tensors, got {x.dtype} and {gamma.dtype}")


# --------------------------------------------------------------------------- bench spec
def make_inputs(shape, dtype: torch.dtype, device: torch.device, generator: torch.Generator):
    """``(x, γ)``: ``x ~ N(0, 1)`` of ``shape`` (``N×C×H×W``), ``γ ~ U(0.5, 1.5)`` of shape ``(C,)``."""
    x = torch.randn(shape, generator=generator).to(device, dtype)
    gamma = (torch.rand(shape[1], generator=generator) + 0.5).to(device, dtype)
    return x, gamma


def bytes_moved(inputs: Sequence[torch.Tensor], output: torch.Tensor) -> Tuple[int, int]:
    """Least DRAM traffic: forward reads ``x``, writes ``y``; backward reads ``x``, ``∂l/∂y``, writes ``∂l/∂x``.

    ``(2 · numel · bytes, 5 · numel · bytes)``.  γ, ∂γ and the kernel's saved
    ``1/‖x‖`` (``C`` times smaller than ``x``) are not counted.
    """
    x = inputs[0]
    return 2 * x.numel() * x.element_size(), 5 * x.numel() * x.element_size()


BENCH = BenchSpec(
    make_inputs=make_inputs,
    bytes_moved=bytes_moved,
    shapes=((16, 512, 64, 64), (16, 1024, 64, 64)),  # fc7-like widths at a 64×64 feature map
)


# --------------------------------------------------------------------------- test spec
def _compile_case(kernel: str, layout: str, dtype: torch.dtype, **constexprs) -> CompileCase:
    """A specialisation as at launch: the layout's unit-stride axis (q or c) is a constant 1 for every tensor."""
    acc = accumulation_dtype(dtype)
    axis = "q" if layout == "contiguous" else "c"
    return CompileCase(
        kernel=kernel,
        constexprs=dict(constexprs, ACC=acc),
        dtype=dtype,
        pointer_dtypes={"rn_ptr": acc, "dgp_ptr": acc},  # 1/‖x‖ and the ∂γ partial sums
        unit_strides=tuple(f"s{t}{axis}" for t in "xyde"),  # x, y, ∂l/∂y (d), ∂l/∂x (e)
        floats=("eps",),
        expect_ptx="ld.global.v4.b32" if dtype == torch.float32 else "",  # 128-bit loads in both layouts
    )


_TILES = dict(block_p=4, max_programs=3)  # several tiles per backward program, a ragged last tile
_F32, _F64 = torch.float32, torch.float64

TEST = TestSpec(
    cases=(
        TestCase((2, 3, 5, 4), kernel_kwargs=_TILES),
        TestCase((2, 37, 3, 5), layout="channels_last", kernel_kwargs=_TILES),
        TestCase((2, 37, 3, 3), layout="channels_last", grad_layout="contiguous", kernel_kwargs=_TILES),
        TestCase((2, 300, 3, 3), kernel_kwargs=dict(block_c=128, **_TILES)),  # C > block: two passes
        TestCase(
            (1, 300, 4, 3), layout="channels_last", grad_layout="contiguous", kernel_kwargs=dict(block_c=128, **_TILES)
        ),
        TestCase((2, 37, 3, 3), _F64, grad_layout="channels_last", kernel_kwargs=dict(block_c=16, **_TILES)),
        TestCase((2, 37, 2, 3), torch.bfloat16, layout="channels_last", kernel_kwargs=_TILES),
        TestCase((3, 300, 1, 1), kernel_kwargs=dict(block_c=128, **_TILES)),  # a pooled (global context) map
        TestCase((2, 19, 6, 5), grad_layout="sum"),  # default blocks; an expanded (stride-0) gradient
        TestCase((2, 30, 3, 4), layout="channel_slice", kernel_kwargs=dict(block_c=16)),  # strided, no copy
        TestCase((2, 30, 3, 4), layout="spatial_transpose", kernel_kwargs=dict(block_c=16)),  # copied first
        TestCase((1, 7, 3, 3), requires_grad=(True, False)),  # frozen γ (the fixed-scale ablation): only ∂x
        TestCase((1, 7, 3, 3), requires_grad=(True, False), kernel_kwargs=dict(block_c=4)),
        TestCase((1, 7, 3, 3), requires_grad=(False, True)),  # only γ learns
        TestCase((1, 7, 3, 3), requires_grad=(False, True), kernel_kwargs=dict(block_c=4)),
    ),
    tolerances={
        _F32: dict(rtol=1e-5, atol=1e-5),
        _F64: dict(rtol=1e-10, atol=1e-12),
        torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
    },
    gradcheck=(
        TestCase((1, 5, 2, 3), _F64, kernel_kwargs=dict(block_c=2)),
        TestCase((1, 4, 3, 2), _F64, layout="channels_last"),
    ),
    compile_cases=(
        _compile_case("_l2norm_fwd_kernel", "contiguous", _F32, BLOCK_C=512, BLOCK_P=16, SINGLE=True),
        _compile_case("_l2norm_fwd_kernel", "channels_last", torch.bfloat16, BLOCK_C=128, BLOCK_P=64, SINGLE=False),
        _compile_case(
            "_l2norm_bwd_kernel", "contiguous", _F32, BLOCK_C=512, BLOCK_P=8, SINGLE=True, NEED_DX=True, NEED_DG=True
        ),
        _compile_case(
            "_l2norm_bwd_kernel", "channels_last", torch.float16,
            BLOCK_C=128, BLOCK_P=32, SINGLE=False, NEED_DX=True, NEED_DG=True,
        ),  # fmt: skip
        _compile_case(
            "_l2norm_bwd_kernel", "contiguous", _F64, BLOCK_C=64, BLOCK_P=16, SINGLE=False, NEED_DX=False, NEED_DG=True
        ),
    ),
)
