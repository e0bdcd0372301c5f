"""DynOPool's resampling op (arXiv 2205.15254, §3): what the generic harness in test_kernels.py does not check.

The kernel against autograd through the ``F.grid_sample`` reference on the
grid of settings DynOPool meets (max and mean, r = ½ where queries sit on
pixel centres and a non-trivial r, odd and even sides), ties in the max,
DynOPool itself on the kernel, ``gradcheck`` of the reference's ∂r, argument
errors and the block heuristic.  ``test_interp_*`` tests run under Triton's
interpreter in the subprocess that ``test_kernels.py`` starts.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from triton_interp import forward_backward, interpret  # noqa: F401

from dla_repro.kernels import dynopool_resample, dynopool_resample_reference, get_op
from dla_repro.kernels.dynopool_resample import QUARTER_OFFSETS, resample_size
from dla_repro.models.resizing import DynOPool

TOL = dict(rtol=1e-4, atol=1e-5)  # ∂r sums N·C·H'·W'·K terms in another order than autograd
OFFSETS = torch.tensor(QUARTER_OFFSETS)
SCALES = {"half": (0.5, 0.5), "r37-61": (0.37, 0.61)}


def _inputs(shape, r, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    return x.requires_grad_(), torch.tensor(r, dtype=dtype).requires_grad_()


def _dy(x, r, seed=1):
    oh, ow = resample_size(x.shape[2], x.shape[3], r)
    dy = torch.randn((x.shape[0], x.shape[1], oh, ow), generator=torch.Generator().manual_seed(seed), dtype=x.dtype)
    return lambda y: dy


def _kernel(**kwargs):
    from dla_repro.kernels.dynopool_resample_triton import dynopool_resample_triton

    return lambda x, r: dynopool_resample_triton(x, r, OFFSETS, **kwargs)


def _reference(**kwargs):
    return lambda x, r: dynopool_resample_reference(x, r, OFFSETS, **kwargs)


def _compare(kernel, reference, make_inputs, grad_out):
    yk, (dxk, drk) = forward_backward(kernel, make_inputs(), grad_out)
    yr, (dxr, drr) = forward_backward(reference, make_inputs(), grad_out)
    torch.testing.assert_close(yk, yr, **TOL)
    torch.testing.assert_close(dxk, dxr, **TOL, msg=lambda m: f"∂x: {m}")
    torch.testing.assert_close(drk, drr, **TOL, msg=lambda m: f"∂r: {m}")
    return yr, drr


# --------------------------------------------------------------------------- interpreted: kernel vs autograd


@pytest.mark.parametrize("size", [(8, 8), (7, 9), (12, 11)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("scale", SCALES, ids=str)
@pytest.mark.parametrize("reduce", ["max", "mean"])
def test_interp_kernel_equals_autograd_through_the_reference(interpret, reduce, scale, size):
    """N=2, C=3; forward, ∂x and ∂r.  At r = ½ every query of an even side sits on a pixel centre."""
    r = SCALES[scale]
    make = lambda: _inputs((2, 3, *size), r)  # noqa: E731
    x, rr = make()
    yr, _ = _compare(_kernel(reduce=reduce), _reference(reduce=reduce), make, _dy(x, rr))
    assert yr.shape[-2:] == resample_size(*size, rr)


def test_interp_pixel_centres_round_as_the_vectorised_cpu_reference(interpret):
    """At r = ½ on a side of 26 some queries land a last bit either side of a pixel centre, and ∂r is the slope on
    that side.  The kernel rounds grid_sample's un-normalisation once, as PyTorch's AVX2 / AVX-512 CPU kernel (an
    FMA); with ATEN_CPU_CAPABILITY=default PyTorch rounds twice and its ∂r differs here (checked by hand)."""
    make = lambda: _inputs((1, 2, 26, 26), (0.5, 0.5))  # noqa: E731
    x, r = make()
    yk, (dxk, drk) = forward_backward(_kernel(), make(), _dy(x, r))
    yr, (dxr, drr) = forward_backward(_reference(), make(), _dy(x, r))
    torch.testing.assert_close(yk, yr, **TOL)
    torch.testing.assert_close(dxk, dxr, **TOL)
    if torch.backends.cpu.get_cpu_capability() != "DEFAULT":  # not skipped: the subprocess test allows no skips
        torch.testing.assert_close(drk, drr, **TOL)


def test_interp_ties_share_the_gradient_as_amax(interpret):
    """Post-ReLU zeros and queries clamped to the border tie exactly; each tied query gets an equal share."""
    g = torch.Generator().manual_seed(3)

    def make():
        x = torch.randn(2, 3, 9, 8, generator=g.manual_seed(3)).clamp_min(0)
        x[:, :, :4, :4] = 0  # a zero region: every query of its cells ties
        return x.requires_grad_(), torch.tensor([0.3, 0.45]).requires_grad_()

    out_size = (4, 5)  # more cells than r gives: the outer queries fall beyond the border and are clamped
    with torch.no_grad():
        x, r = make()
        q = _queries(x, r, out_size)
        ties = (q == q.amax(dim=2, keepdim=True)).sum(dim=2)
    assert (ties > 1).float().mean() > 0.2  # the case really has ties
    x, r = make()
    dy = torch.randn(2, 3, *out_size, generator=g.manual_seed(4))
    _compare(_kernel(out_size=out_size), _reference(out_size=out_size), make, lambda y: dy)


def _queries(x, r, out_size):
    """The K query values per cell (N×C×K×H'×W'), each query alone through the reference."""
    return torch.stack(
        [dynopool_resample_reference(x, r, OFFSETS[k : k + 1], out_size=out_size) for k in range(len(OFFSETS))], dim=2
    )


def test_interp_dynopool_runs_the_kernel(interpret):
    """DynOPool on the kernel (DLA_REPRO_KERNELS=triton): its output and ∂α equal the reference path's."""
    torch.manual_seed(0)
    pool = DynOPool(init_scale=(0.45, 0.6))
    x = torch.randn(2, 3, 9, 10)
    outs = {}
    for backend in ("triton", "reference"):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("DLA_REPRO_KERNELS", backend)
            pool.zero_grad()
            xx = x.clone().requires_grad_()
            y = pool(xx)
            y.backward(torch.ones_like(y))
            outs[backend] = (y.detach(), xx.grad, pool.alpha.grad.clone())
    for a, b in zip(outs["triton"], outs["reference"]):
        torch.testing.assert_close(a, b, **TOL)


def test_interp_padding_mode_the_kernel_lacks_is_a_clear_error(interpret):
    x, r = _inputs((1, 2, 4, 4), (0.5, 0.5))
    with pytest.raises(ValueError, match="DLA_REPRO_KERNELS=reference"):
        _kernel(padding_mode="reflection")(x, r)


# --------------------------------------------------------------------------- the reference (no triton)


@pytest.mark.parametrize("reduce", ["max", "mean"])
def test_reference_gradcheck_in_r_float64(reduce):
    """∂r of the reference against finite differences (x fixed, then x and r together), float64, r off the kinks."""
    x, r = _inputs((2, 3, 7, 6), (0.37, 0.61), dtype=torch.float64)
    f = lambda x, r: dynopool_resample_reference(x, r, OFFSETS, out_size=(3, 4), reduce=reduce)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x.detach(), r))
    assert torch.autograd.gradcheck(f, (x, r))


def test_the_op_is_dynopools_forward_and_size_rule():
    """DynOPool calls the op: on CPU its output is the reference's, bit for bit, at the op's default size."""
    torch.manual_seed(0)
    for init in (0.5, (0.37, 0.61), 0.9):
        pool = DynOPool(init_scale=init)
        x = torch.randn(2, 3, 11, 8)
        ref = dynopool_resample_reference(x, pool.scale().detach(), OFFSETS)
        assert torch.equal(pool(x).detach(), ref)
        assert pool.output_size(11, 8) == resample_size(11, 8, pool.scale()) == tuple(ref.shape[-2:])


def test_bad_arguments():
    x = torch.randn(1, 2, 4, 4)
    with pytest.raises(ValueError, match=r"r of shape \(2,\)"):
        dynopool_resample(x, torch.tensor([0.5]), OFFSETS)
    with pytest.raises(ValueError, match="K×2"):
        dynopool_resample(x, torch.tensor([0.5, 0.5]), OFFSETS.view(2, 4))
    with pytest.raises(ValueError, match="N×C×H×W"):
        dynopool_resample(x[0], torch.tensor([0.5, 0.5]), OFFSETS)
    with pytest.raises(ValueError, match="reduce='sum'"):
        dynopool_resample(x, torch.tensor([0.5, 0.5]), OFFSETS, reduce="sum")
    with pytest.raises(TypeError, match="floating-point"):
        dynopool_resample(x.long(), torch.tensor([0.5, 0.5]), OFFSETS)


def test_bench_spec_shapes():
    op = get_op("dynopool_resample")
    assert {s[0] for s in op.bench.shapes} == {128}
    assert {s[1] for s in op.bench.shapes} == {64, 128, 256, 512}
    assert min(s[-1] for s in op.bench.shapes) == 32 and max(s[-1] for s in op.bench.shapes) == 112


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_block_heuristic():
    from dla_repro.kernels.dynopool_resample_triton import choose_blocks

    assert choose_blocks(512, 56 * 56) == (32, 32)  # 32 channels, 1024 elements a program
    assert choose_blocks(3, 4) == (4, 4)  # capped by the cells (next power of 2)
    with pytest.raises(ValueError, match="power of two"):
        choose_blocks(64, 100, block_p=12)
