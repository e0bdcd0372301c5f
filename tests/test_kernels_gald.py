"""GALD's local-distribution tail (arXiv 1909.07229): what the generic harness in test_kernels.py does not check.

The reference against the equations written out with interpolation matrices
(both forms, and the released code's order of operations), gradcheck with a
real interpolation, the CPU dispatch, the kernel against the reference on
mask/feature sizes the bench-spec shapes cannot give (``h = H``, only ``h = H``,
``h, w = 1``, odd and non-divisible ratios, downsampling), every subset of
gradients, block sizes, determinism, and the tap tables against PyTorch's
interpolation.  ``test_interp_*`` tests run under Triton's interpreter in the
subprocess that ``test_kernels.py`` starts (or here with ``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from triton_interp import forward_backward, interpret  # noqa: F401

from dla_repro.kernels import ENV_VAR, gald_ld_tail, gald_ld_tail_reference, kernel_backend
from dla_repro.kernels.gald_ld_tail import BENCH, bytes_moved, make_inputs, released_mask_size

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}
FORMS = ("released", "paper")
# (N, C, h, w, H, W)
SIZES = {
    "odd": (2, 3, 3, 4, 7, 9),  # ratios 3 and 8/3: bands of unequal widths
    "mask1x1": (1, 2, 1, 1, 3, 5),
    "identity": (1, 3, 5, 4, 5, 4),  # h = H, w = W: no upsampling
    "rows-identity": (1, 2, 4, 3, 4, 7),  # h = H only
    "width1": (1, 2, 3, 1, 8, 1),
    "downsample": (1, 2, 5, 6, 3, 4),
    "released-ratio": (1, 3, 11, 11, 17, 40),  # 11 -> 40 columns as 11 -> 96 rows in GALD
}


def _tensors(size, dtype=torch.float32, layout="contiguous", seed=0):
    n, c, h, w, H, W = size
    g = torch.Generator().manual_seed(seed)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    draw = lambda *s, scale=1.0: (scale * torch.randn(s, generator=g, dtype=torch.float64)).to(dtype)  # noqa: E731
    ts = draw(n, c, h, w, scale=2.0), draw(n, c, H, W), draw(n, c, H, W)
    return tuple(t.contiguous(memory_format=fmt) for t in ts)


def _leaves(tensors, requires_grad=(True, True, True)):
    return tuple(t.detach().clone().requires_grad_(r) for t, r in zip(tensors, requires_grad))


def _interp_matrix(n_in, n_out):
    """``n_out × n_in`` weights of align_corners=True linear interpolation, in float64, from the definition."""
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for y in range(n_out):
        src = y * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        y0 = min(int(src), n_in - 1)
        y1 = min(y0 + 1, n_in - 1)
        lam = src - y0
        m[y, y0] += 1 - lam
        m[y, y1] += lam
    return m


def _kernel(**kwargs):
    from dla_repro.kernels.gald_ld_tail_triton import gald_ld_tail_triton

    return lambda form: lambda L, ga, f: gald_ld_tail_triton(L, ga, f, form, **kwargs)


def _reference(form):
    return lambda L, ga, f: gald_ld_tail_reference(L, ga, f, form)


def _dy(size, dtype=torch.float32, layout="contiguous"):
    n, c, _, _, H, W = size
    dy = torch.randn((n, c, H, W), generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    dy = dy.contiguous(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)
    return lambda y: dy


def _compare(kernel, reference, tensors, requires_grad, grad_out, tol):
    yk, gk = forward_backward(kernel, _leaves(tensors, requires_grad), grad_out)
    yr, gr = forward_backward(reference, _leaves(tensors, requires_grad), grad_out)
    assert yk.dtype == yr.dtype
    torch.testing.assert_close(yk, yr, **tol)
    for name, a, b in zip(("∂mask_logits", "∂ga", "∂feature"), gk, gr):
        assert (a is None) == (b is None), name
        if b is not None:
            assert a.dtype == b.dtype, name
            torch.testing.assert_close(a, b, **tol, msg=lambda m: f"{name}: {m}")
    return gk


# --------------------------------------------------------------------------- the reference


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("size", list(SIZES.values()), ids=list(SIZES))
def test_reference_is_the_direct_formula(size, form):
    """M = sigmoid(A_y · L · A_xᵀ) with the interpolation matrices; out = 2ga + ga⊙M or ga⊙M + F."""
    L, ga, f = _tensors(size, torch.float64)
    _, _, h, w, H, W = size
    z = _interp_matrix(h, H) @ L @ _interp_matrix(w, W).T
    m = 1 / (1 + torch.exp(-z))
    expected = 2 * ga + ga * m if form == "released" else ga * m + f
    torch.testing.assert_close(gald_ld_tail_reference(L, ga, f, form), expected, rtol=1e-12, atol=1e-12)


def test_released_form_is_the_official_blocks_order_and_ignores_feature():
    """GALDNet.py: LocalAttenModule returns res2 + res1 * sigmoid(interpolate(x)); GALDBlock adds res (= F_GA)."""
    L, ga, f = _tensors(SIZES["odd"])
    mask = torch.nn.Sigmoid()(F.interpolate(L, size=ga.shape[-2:], mode="bilinear", align_corners=True))
    official = (ga + ga * mask) + ga
    assert torch.equal(gald_ld_tail_reference(L, ga, f, "released"), official)
    assert torch.equal(gald_ld_tail_reference(L, ga, None, "released"), official)
    assert torch.equal(gald_ld_tail_reference(L, ga, None), official)  # the default form


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("size", [(1, 2, 2, 3, 4, 5), (1, 1, 3, 2, 3, 2)], ids=["2x3-to-4x5", "identity"])
def test_reference_gradcheck_through_an_interpolation(size, form):
    inputs = _leaves(_tensors(size, torch.float64))
    assert torch.autograd.gradcheck(_reference(form), inputs)
    assert torch.autograd.gradgradcheck(_reference(form), inputs)


def test_mixed_dtypes_promote_and_accumulate_in_float32():
    L, ga, f = _tensors(SIZES["odd"])
    y = gald_ld_tail_reference(L.bfloat16(), ga, f.half(), "paper")
    assert y.dtype == torch.float32
    assert gald_ld_tail_reference(L.bfloat16(), ga.bfloat16(), None).dtype == torch.bfloat16


def test_bad_arguments():
    L, ga, f = _tensors(SIZES["odd"])
    with pytest.raises(ValueError, match="form="):
        gald_ld_tail(L, ga, f, "figure")
    with pytest.raises(ValueError, match="needs feature"):
        gald_ld_tail(L, ga, None, "paper")
    with pytest.raises(ValueError, match="differ"):
        gald_ld_tail(L, ga, f[:, :, 1:], "paper")
    with pytest.raises(ValueError, match="differ in N or C"):
        gald_ld_tail(L[:, 1:], ga, f, "released")
    with pytest.raises(ValueError, match="N×C×h×w"):
        gald_ld_tail(L[0], ga, f, "released")
    with pytest.raises(TypeError, match="floating-point"):
        gald_ld_tail(L.long(), ga, f, "released")


@pytest.mark.parametrize("form", FORMS)
def test_cpu_dispatch_runs_the_reference(form, monkeypatch):
    L, ga, f = _tensors(SIZES["odd"])
    for mode in (None, "auto", "reference"):
        if mode is None:
            monkeypatch.delenv(ENV_VAR, raising=False)
        else:
            monkeypatch.setenv(ENV_VAR, mode)
        assert kernel_backend(L, gald_ld_tail) == "reference"
        assert torch.equal(gald_ld_tail(L, ga, f, form), gald_ld_tail_reference(L, ga, f, form))


def test_bench_spec_uses_the_released_mask_size():
    """Three 3×3 stride-2 convolutions without padding: 96 -> 11, 97 -> 11 (F_GA of a 769 px crop)."""
    assert [released_mask_size(s) for s in (96, 97, 24, 31, 5)] == [11, 11, 2, 3, 1]
    L, ga, f = make_inputs((2, 4, 96, 40), torch.bfloat16, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert L.shape == (2, 4, 11, 4) and ga.shape == f.shape == (2, 4, 96, 40) and L.dtype == torch.bfloat16
    fwd, total = bytes_moved((L, ga, f), ga)
    assert fwd == 2 * (L.numel() + 2 * ga.numel()) and total == 2 * (3 * L.numel() + 5 * ga.numel())
    assert all(s[1] == 512 for s in BENCH.shapes)


# --------------------------------------------------------------------------- the tap tables and the blocks


@needs_triton
@pytest.mark.parametrize("n_in,n_out", [(11, 96), (12, 96), (3, 7), (1, 5), (5, 5), (6, 4), (2, 1)])
def test_interpolation_taps_are_pytorchs(n_in, n_out):
    """The kernel's taps and weights give exactly F.interpolate's weights (float32): interpolate a one-hot basis."""
    from dla_repro.kernels.gald_ld_tail_triton import interpolation_taps

    i0, lam, start, widest = interpolation_taps(n_in, n_out, torch.float32, torch.device("cpu"))
    i0 = i0.long()
    i1 = torch.where(i0 < n_in - 1, i0 + 1, i0)
    ours = torch.zeros(n_out, n_in)
    ours[torch.arange(n_out), i0] += 1 - lam
    ours[torch.arange(n_out), i1] += lam
    basis = torch.eye(n_in).view(1, n_in, n_in, 1)  # channel r: the one-hot row r
    theirs = F.interpolate(basis, size=(n_out, 1), mode="bilinear", align_corners=True)[0, :, :, 0].T
    assert torch.equal(ours, theirs)
    assert start[0] == 0 and start[-1] == n_out and torch.equal(torch.bincount(i0, minlength=n_in), start.diff())
    assert widest == int(start.diff().max())


@needs_triton
def test_block_heuristic():
    from dla_repro.kernels.gald_ld_tail_triton import choose_blocks, interpolation_taps

    widest = interpolation_taps(11, 96, torch.float32, torch.device("cpu"))[3]
    assert widest == 10
    assert choose_blocks(512, 96, 11, widest, False) == (32, 64, 6)  # 6 + 5 bands of ≤ 10 columns
    assert choose_blocks(512, 96, 96, 1, True) == (32, 64, 48)  # identity: 48 columns a program
    assert choose_blocks(3, 5, 1, 5, False) == (4, 8, 1)  # a 1×1 mask: one band of the whole row
    assert choose_blocks(512, 300, 1, 300, False)[1:] == (512, 1)
    with pytest.raises(ValueError, match="narrower than the widest"):
        choose_blocks(512, 96, 11, widest, False, block_w=8)
    with pytest.raises(ValueError, match="power of two"):
        choose_blocks(512, 96, 11, widest, False, block_c=24)


# --------------------------------------------------------------------------- interpreted: kernel vs reference


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("size", list(SIZES.values()), ids=list(SIZES))
def test_interp_kernel_matches_the_reference(interpret, size, form, layout):
    tensors = _tensors(size, layout=layout)
    grad_out = _dy(size, layout=layout)
    _compare(_kernel()(form), _reference(form), tensors, (True, True, True), grad_out, TOL[torch.float32])


@pytest.mark.parametrize("form", FORMS)
def test_interp_bfloat16(interpret, form):
    size = SIZES["released-ratio"]
    tensors = _tensors(size, torch.bfloat16, "channels_last")
    grad_out = _dy(size, torch.bfloat16, "channels_last")
    _compare(_kernel()(form), _reference(form), tensors, (True, True, True), grad_out, TOL[torch.bfloat16])


@pytest.mark.parametrize("requires_grad", [(True, False, False), (False, True, False), (False, False, True)])
def test_interp_each_gradient_alone(interpret, requires_grad):
    size = SIZES["odd"]
    grads = _compare(
        _kernel()("paper"), _reference("paper"), _tensors(size), requires_grad, _dy(size), TOL[torch.float32]
    )
    if requires_grad[2]:
        assert torch.equal(grads[2], _dy(size)(None))  # ∂feature is ∂l/∂out


@pytest.mark.parametrize("blocks", [dict(block_c=1, block_w=4), dict(block_c=2, block_w=16)], ids=str)
def test_interp_block_sizes(interpret, blocks):
    """Narrow blocks: several channel blocks and column chunks a row; 4 columns hold a band of the 3 -> 9 ratio."""
    size = SIZES["odd"]
    for form in FORMS:
        _compare(
            _kernel(**blocks)(form), _reference(form), _tensors(size), (True, True, True), _dy(size), TOL[torch.float32]
        )


def test_interp_backward_is_deterministic(interpret):
    """No atomics: the same inputs give bit-identical gradients."""
    size = SIZES["released-ratio"]
    runs = [forward_backward(_kernel()("released"), _leaves(_tensors(size)), _dy(size))[1] for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*runs[:2]) if a is not None)


@pytest.mark.parametrize("form", FORMS)
def test_interp_kernel_gradcheck_through_an_interpolation(interpret, form):
    inputs = _leaves(_tensors((1, 1, 2, 3, 3, 4), torch.float64))
    assert torch.autograd.gradcheck(_kernel()(form), inputs)
