"""The Triton L2Norm kernel against its PyTorch reference, on CPU under Triton's interpreter.

Triton fixes interpreted-or-compiled per process when ``triton.language`` is
first imported, and in a pytest session some other test file has usually
imported it already (importing timm does).  So the ``test_interp_*`` tests run
here only when this process started with ``TRITON_INTERPRET=1`` and triton came
up interpreted; otherwise ``test_interpreted_tests_in_a_fresh_process`` reruns
them in a subprocess that sets the variable before anything is imported.  The
sm_90 compile tests need the opposite (compiled mode) and skip under the
interpreter.  Shapes are tiny: the interpreter runs every program in Python.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dla_repro.kernels import ENV_VAR, kernel_backend, l2norm_scale, l2norm_scale_reference

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")


def _triton_mode() -> str:
    """``"interpreted"``, ``"compiled"`` or ``"unimported"`` (what triton.language came up as)."""
    if "triton.language" not in sys.modules:
        return "unimported"
    tl_sum = sys.modules["triton.language"].standard.sum
    return "interpreted" if type(tl_sum).__name__ == "InterpretedFunction" else "compiled"


def _can_interpret() -> bool:
    mode = _triton_mode()
    return os.environ.get("TRITON_INTERPRET") == "1" and mode in ("interpreted", "unimported")


needs_interpreter = pytest.mark.skipif(
    not _can_interpret(), reason="needs TRITON_INTERPRET=1 from process start (run by the subprocess test)"
)


@pytest.fixture
def interpret(monkeypatch):
    if not _can_interpret():
        pytest.skip("needs TRITON_INTERPRET=1 from process start (run by the subprocess test)")
    monkeypatch.setenv(ENV_VAR, "triton")


def test_interpreted_tests_in_a_fresh_process():
    if _can_interpret():
        pytest.skip("this process runs the interpreted tests itself")
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    here = Path(__file__)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "test_interp_", str(here)]
    out = subprocess.run(cmd, cwd=here.parent.parent, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-3000:]
    assert " passed" in out.stdout and " skipped" not in out.stdout, out.stdout[-3000:]


def _kernel(x, gamma, eps=1e-10, **blocks):
    from dla_repro.kernels.l2norm import l2norm_scale_triton

    return l2norm_scale_triton(x, gamma, eps, **blocks)


def _layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)


def _both(x, gamma, dy, eps=1e-10, **blocks):
    """(y, dx, dγ) of the kernel and of the reference for the same inputs."""
    out = []
    for fn in (lambda a, b: _kernel(a, b, eps, **blocks), lambda a, b: l2norm_scale_reference(a, b, eps)):
        xi = x.detach().clone().requires_grad_(x.requires_grad)
        xi = x.detach().clone(memory_format=torch.preserve_format).requires_grad_(x.requires_grad)
        gi = gamma.detach().clone().requires_grad_(gamma.requires_grad)
        y = fn(xi, gi)
        y.backward(dy)
        out.append((y.detach(), xi.grad, gi.grad))
    return out


TOL = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
}

CASES = [
    # N, C, H, W, block_c, x layout, dy layout, dtype
    pytest.param(2, 3, 5, 4, None, "contiguous", "contiguous", torch.float32, id="C3"),
    pytest.param(2, 37, 3, 5, None, "channels_last", "channels_last", torch.float32, id="C37-cl"),
    pytest.param(2, 37, 3, 3, None, "channels_last", "contiguous", torch.float32, id="C37-cl-dy-contig"),
    pytest.param(2, 300, 3, 3, 128, "contiguous", "contiguous", torch.float32, id="C300-block128"),
    pytest.param(1, 300, 4, 3, 128, "channels_last", "contiguous", torch.float32, id="C300-block128-cl"),
    pytest.param(2, 37, 3, 3, 16, "contiguous", "channels_last", torch.float64, id="C37-block16-f64"),
    pytest.param(2, 37, 2, 3, None, "channels_last", "channels_last", torch.bfloat16, id="C37-bf16"),
    pytest.param(3, 300, 1, 1, 128, "contiguous", "contiguous", torch.float32, id="C300-pooled-1x1"),
]


@pytest.mark.parametrize("N,C,H,W,block_c,x_layout,dy_layout,dtype", CASES)
def test_interp_kernel_matches_reference(interpret, N, C, H, W, block_c, x_layout, dy_layout, dtype):
    g = torch.Generator().manual_seed(C)
    x = _layout(torch.randn(N, C, H, W, generator=g).to(dtype), x_layout).requires_grad_()
    gamma = (torch.rand(C, generator=g) + 0.5).to(dtype).requires_grad_()
    dy = _layout(torch.randn(N, C, H, W, generator=g).to(dtype), dy_layout)
    # block_p=4 and 3 programs: several tiles per backward program, ragged last tile
    (yk, dxk, dgk), (yr, dxr, dgr) = _both(x, gamma, dy, block_c=block_c, block_p=4, max_programs=3)
    assert yk.dtype == yr.dtype == dtype and dxk.dtype == dtype and dgk.dtype == dtype
    memory_format = torch.channels_last if x_layout == "channels_last" else torch.contiguous_format
    assert yk.is_contiguous(memory_format=memory_format)
    assert dxk.is_contiguous(memory_format=memory_format)
    torch.testing.assert_close(yk, yr, **TOL[dtype])
    torch.testing.assert_close(dxk, dxr, **TOL[dtype])
    torch.testing.assert_close(dgk, dgr, **TOL[dtype])


def test_interp_default_blocks_and_gradient_of_a_sum(interpret):
    """Default blocking; ``y.sum()`` sends an expanded (all strides 0) gradient."""
    x = torch.randn(2, 19, 6, 5, requires_grad=True)
    gamma = torch.full((19,), 10.0, requires_grad=True)
    _kernel(x, gamma).sum().backward()
    dx, dg = x.grad, gamma.grad
    x.grad = gamma.grad = None
    l2norm_scale_reference(x, gamma).sum().backward()
    torch.testing.assert_close(dx, x.grad, **TOL[torch.float32])
    torch.testing.assert_close(dg, gamma.grad, **TOL[torch.float32])


def test_interp_strided_inputs(interpret):
    """A channel slice of a wider tensor (no copy) and a spatial transpose (copied) both work."""
    wide = torch.randn(2, 40, 3, 4)
    gamma = torch.rand(30) + 0.5
    for x in (wide[:, 5:35], wide[:, 5:35].transpose(2, 3)):
        dy = torch.randn(x.shape)
        (yk, dxk, dgk), (yr, dxr, dgr) = _both(x.requires_grad_(), gamma.requires_grad_(), dy, block_c=16)
        torch.testing.assert_close(yk, yr, **TOL[torch.float32])
        torch.testing.assert_close(dxk, dxr, **TOL[torch.float32])
        torch.testing.assert_close(dgk, dgr, **TOL[torch.float32])


@pytest.mark.parametrize("block_c", [None, 4])
def test_interp_one_input_requires_grad(interpret, block_c):
    x = torch.randn(1, 7, 3, 3)
    gamma = torch.rand(7) + 0.5
    dy = torch.randn(1, 7, 3, 3)
    # frozen γ (the fixed-scale ablation): only ∂x
    (_, dxk, dgk), (_, dxr, _) = _both(x.requires_grad_(), gamma, dy, block_c=block_c)
    assert dgk is None
    torch.testing.assert_close(dxk, dxr, **TOL[torch.float32])
    # only γ learns
    (_, dxk, dgk), (_, _, dgr) = _both(x.detach(), gamma.requires_grad_(), dy, block_c=block_c)
    assert dxk is None
    torch.testing.assert_close(dgk, dgr, **TOL[torch.float32])


def test_interp_zero_vectors_and_eps(interpret):
    """A position whose features are all zero gives y = 0 and finite gradients (eps)."""
    x = torch.randn(1, 5, 2, 2)
    x[0, :, 1, 1] = 0
    gamma = torch.rand(5) + 0.5
    dy = torch.randn(1, 5, 2, 2)
    for eps in (1e-10, 0.1):
        (yk, dxk, dgk), (yr, dxr, dgr) = _both(x.requires_grad_(), gamma.requires_grad_(), dy, eps=eps)
        assert yk[0, :, 1, 1].abs().max() == 0 and torch.isfinite(dxk).all()
        torch.testing.assert_close(yk, yr, **TOL[torch.float32])
        torch.testing.assert_close(dxk, dxr, rtol=1e-5, atol=1e-3)  # |∂x| ~ 1e5 at the zero vector
        torch.testing.assert_close(dgk, dgr, **TOL[torch.float32])


def test_interp_dispatch_uses_the_kernel_when_forced(interpret):
    x = torch.randn(1, 6, 2, 3, dtype=torch.float64)
    assert kernel_backend(x) == "triton"
    gamma = torch.ones(6, dtype=torch.float64)
    torch.testing.assert_close(l2norm_scale(x, gamma), l2norm_scale_reference(x, gamma))


def test_interp_kernel_gradcheck_float64(interpret):
    x = torch.randn(1, 5, 2, 3, dtype=torch.float64, requires_grad=True)
    gamma = (torch.rand(5, dtype=torch.float64) + 0.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: _kernel(a, b, block_c=2), (x, gamma))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_reference_gradcheck_float64(layout):
    x = _layout(torch.randn(2, 4, 3, 2, dtype=torch.float64), layout).requires_grad_()
    gamma = (torch.rand(4, dtype=torch.float64) + 0.5).requires_grad_()
    assert torch.autograd.gradcheck(l2norm_scale_reference, (x, gamma))
    assert torch.autograd.gradgradcheck(l2norm_scale_reference, (x, gamma))


def test_reference_matches_the_paper_equations():
    """Forward and the docstring's gradient formulas, written out with a Jacobian."""
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


def test_auto_and_reference_dispatch_on_cpu(monkeypatch):
    x = torch.randn(1, 3, 2, 2)
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert kernel_backend(x) == "reference"
    monkeypatch.setenv(ENV_VAR, "reference")
    assert kernel_backend(x) == "reference"
    monkeypatch.setenv(ENV_VAR, "cuda")
    with pytest.raises(ValueError, match="auto, triton, reference"):
        l2norm_scale(x, torch.ones(3))


def test_forcing_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    if _triton_mode() == "interpreted":
        pytest.skip("triton runs interpreted in this process")
    x = torch.randn(1, 3, 2, 2)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv(ENV_VAR, "triton")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        l2norm_scale(x, torch.ones(3))
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        _kernel(x, torch.ones(3))


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"gamma of shape \(3,\)"):
        l2norm_scale(torch.randn(1, 3, 2, 2), torch.ones(4))
    with pytest.raises(ValueError, match="N×C×H×W"):
        l2norm_scale(torch.randn(3, 2, 2), torch.ones(3))


def test_importing_the_package_does_not_import_triton():
    code = (
        "import sys, torch, dla_repro, dla_repro.kernels as k\n"
        "k.l2norm_scale(torch.randn(1, 3, 2, 2), torch.ones(3))\n"
        "print('triton' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- the kernels compile for a real GPU (Hopper) without one -------------------------------


def _compile_sm90(fn_name: str, layout: str, constexprs: dict, ptr_type: str = "*fp32"):
    import inspect

    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from dla_repro.kernels import l2norm as K

    fn = getattr(K, fn_name)
    names = list(inspect.signature(fn).parameters)
    unit = {"x", "y", "d", "e"}  # stride names are s<tensor><axis>; the unit-stride axis is specialised
    axis = "q" if layout == "contiguous" else "c"
    const = dict(constexprs, ACC=tl.float64 if ptr_type == "*fp64" else tl.float32)
    sig = {}
    for n in names:
        if n in const or (len(n) == 3 and n[0] == "s" and n[1] in unit and n[2] == axis):
            sig[n] = "constexpr"
            const.setdefault(n, 1)
        elif n.endswith("_ptr"):
            sig[n] = "*fp32" if n in ("rn_ptr", "dgp_ptr") and ptr_type != "*fp64" else ptr_type
        else:
            sig[n] = "fp32" if n == "eps" else "i32"
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names) if sig[n] not in ("constexpr", "fp32")}
    src = ASTSource(triton.jit(fn), signature=sig, constexprs=const, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 8})


@pytest.mark.parametrize(
    "fn_name,layout,constexprs,ptr_type",
    [
        ("_l2norm_fwd_kernel", "contiguous", dict(BLOCK_C=512, BLOCK_P=16, SINGLE=True), "*fp32"),
        ("_l2norm_fwd_kernel", "channels_last", dict(BLOCK_C=128, BLOCK_P=64, SINGLE=False), "*bf16"),
        ("_l2norm_bwd_kernel", "contiguous", dict(BLOCK_C=512, BLOCK_P=8, SINGLE=True, NEED_DX=True, NEED_DG=True), "*fp32"),
        ("_l2norm_bwd_kernel", "channels_last", dict(BLOCK_C=128, BLOCK_P=32, SINGLE=False, NEED_DX=True, NEED_DG=True), "*fp16"),
        ("_l2norm_bwd_kernel", "contiguous", dict(BLOCK_C=64, BLOCK_P=16, SINGLE=False, NEED_DX=False, NEED_DG=True), "*fp64"),
    ],
)
def test_kernels_compile_for_sm90(fn_name, layout, constexprs, ptr_type):
    """Catches what the interpreter accepts but the compiler rejects; checks 128-bit loads in both layouts."""
    if _triton_mode() == "interpreted" or (_triton_mode() == "unimported" and os.environ.get("TRITON_INTERPRET") == "1"):
        pytest.skip("triton runs interpreted in this process")
    try:
        kernel = _compile_sm90(fn_name, layout, constexprs, ptr_type)
    except (ImportError, AttributeError) as exc:  # a Triton without this compile API
        pytest.skip(f"cannot compile ahead of time with this Triton: {exc}")
    assert kernel.asm.get("cubin")
    if ptr_type == "*fp32":
        assert "ld.global.v4.b32" in kernel.asm["ptx"]


# --- benchmark table (CPU: eager reference only, tiny) --------------------------------------


def test_bench_l2norm_table_on_cpu():
    from dla_repro.bench_kernels import COLUMNS, bench_l2norm, write_benchmark
    from dla_repro.paths import results_dir

    df = bench_l2norm("cpu", N=1, channels=(5, 8), size=4, iters=1, rounds=2, warmup=0, impls=("eager",))
    assert list(df.columns) == COLUMNS and len(df) == 4
    assert sorted(set(zip(df["C"], df["memory_format"]))) == [
        (5, "channels_last"), (5, "contiguous"), (8, "channels_last"), (8, "contiguous")
    ]  # fmt: skip
    assert (df["fwd_ms"] > 0).all() and (df["fwd_bwd_ms"] > 0).all() and (df["max_abs_err"] == 0).all()
    row = df.iloc[0]
    assert row["fwd_GBps"] == pytest.approx(2 * 1 * 5 * 16 * 4 / (row["fwd_ms"] / 1e3) / 1e9)
    assert df["peak_GBps"].isna().all() and df["hardware"].str.len().min() > 0
    path = write_benchmark(df)
    assert path == results_dir() / "benchmarks" / "kernels_cpu.csv" and path.exists()


def test_bench_peak_bandwidth_table_and_bad_arguments():
    from dla_repro.bench_kernels import bench_l2norm, peak_bandwidth_gbps

    assert peak_bandwidth_gbps("NVIDIA H100 80GB HBM3") == 3350
    assert peak_bandwidth_gbps("NVIDIA H100 PCIe") == 2000
    assert peak_bandwidth_gbps("NVIDIA H200") == 4800
    assert peak_bandwidth_gbps("NVIDIA A100-SXM4-80GB") == 2039
    assert peak_bandwidth_gbps("Some Future GPU") != peak_bandwidth_gbps("Some Future GPU")  # NaN
    with pytest.raises(ValueError, match="impls"):
        bench_l2norm("cpu", impls=("cuda",))
    with pytest.raises(ValueError, match="memory formats"):
        bench_l2norm("cpu", memory_formats=("nhwc",), impls=("eager",))
