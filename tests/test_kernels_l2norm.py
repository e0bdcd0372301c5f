"""ParseNet's L2Norm (arXiv 1506.04579, §3.3): what the generic harness in test_kernels.py does not check.

The reference against the paper's equations, the kernel at an all-zero
feature vector (where only ``eps`` keeps the norm finite), argument errors and
the block heuristic.  ``test_interp_*`` tests run under Triton's interpreter in
the subprocess that ``test_kernels.py`` starts.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from triton_interp import forward_backward, interpret  # noqa: F401

from dla_repro.kernels import l2norm_scale, l2norm_scale_reference

TOL = dict(rtol=1e-5, atol=1e-5)


def test_reference_matches_the_paper_equations():
    """Forward and the gradient formulas of ``l2norm_triton``'s docstring, written out with a Jacobian."""
    x = torch.randn(1, 4, 1, 1, dtype=torch.float64, requires_grad=True)
    gamma = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64, requires_grad=True)
    dy = torch.randn(1, 4, 1, 1, dtype=torch.float64)
    y = l2norm_scale_reference(x, gamma, eps=0.0)
    y.backward(dy)
    v, g = x.detach().flatten(), dy.flatten()
    norm = v.norm()
    torch.testing.assert_close(y.detach().flatten(), gamma.detach() * v / norm)
    dxhat = g * gamma.detach()
    jac = torch.eye(4, dtype=torch.float64) / norm - torch.outer(v, v) / norm**3
    torch.testing.assert_close(x.grad.flatten(), dxhat @ jac)
    torch.testing.assert_close(gamma.grad, g * v / norm)


def test_interp_zero_vectors_and_eps(interpret):
    """A position whose features are all zero gives y = 0 and finite gradients (eps)."""
    from dla_repro.kernels.l2norm_triton import l2norm_scale_triton

    def inputs():
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, 5, 2, 2, generator=g)
        x[0, :, 1, 1] = 0
        return x.requires_grad_(), (torch.rand(5, generator=g) + 0.5).requires_grad_()

    dy = torch.randn(1, 5, 2, 2)
    for eps in (1e-10, 0.1):
        yk, (dxk, dgk) = forward_backward(lambda x, g: l2norm_scale_triton(x, g, eps), inputs(), lambda y: dy)
        yr, (dxr, dgr) = forward_backward(lambda x, g: l2norm_scale_reference(x, g, eps), inputs(), lambda y: dy)
        assert yk[0, :, 1, 1].abs().max() == 0 and torch.isfinite(dxk).all()
        torch.testing.assert_close(yk, yr, **TOL)
        torch.testing.assert_close(dxk, dxr, rtol=1e-5, atol=1e-3)  # |∂x| ~ 1e5 at the zero vector
        torch.testing.assert_close(dgk, dgr, **TOL)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"gamma of shape \(3,\)"):
        l2norm_scale(torch.randn(1, 3, 2, 2), torch.ones(4))
    with pytest.raises(ValueError, match="N×C×H×W"):
        l2norm_scale(torch.randn(3, 2, 2), torch.ones(3))
    with pytest.raises(TypeError, match="floating-point"):
        l2norm_scale(torch.ones(1, 3, 2, 2, dtype=torch.int64), torch.ones(3))


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_block_heuristic():
    from dla_repro.kernels.l2norm_triton import TILE_BACKWARD, choose_blocks

    assert choose_blocks(300, 12) == (512, 16)  # whole channel vector, 8192 elements a program
    assert choose_blocks(4096, 3136) == (1024, 8)  # channels beyond 1024: blocks of 1024
    assert choose_blocks(19, 30, tile=TILE_BACKWARD) == (32, 32)  # capped by the positions (next power of 2)
    with pytest.raises(ValueError, match="power of two"):
        choose_blocks(300, 12, block_c=96)
