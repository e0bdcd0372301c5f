"""One harness over every op of the kernel table: the Triton implementation against the PyTorch reference.

Each op's :class:`~dla_repro.kernels.TestSpec` supplies the cases (odd shapes,
layouts, dtypes, block sizes, which inputs need gradients), tolerances,
``gradcheck`` cases and ahead-of-time GPU compilations; a new row of the table
is tested here without a new test.  Kernel runs on CPU need Triton's
interpreter from process start (:mod:`triton_interp`): ``test_interp_*`` tests
run in a fresh subprocess.  Shapes are tiny: the interpreter runs every
program in Python.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from triton_interp import can_interpret, compiles_natively, forward_backward, interpret, triton_mode  # noqa: F401

from dla_repro.kernels import (
    ENV_VAR,
    LAYOUTS,
    OPS,
    BenchSpec,
    KernelOp,
    TestSpec,
    get_op,
    kernel_backend,
    register_op,
    to_layout,
)

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
WITH_TRITON = [op for op in OPS.values() if op.triton is not None]


def _params(attr):
    return [pytest.param(op, case, id=f"{op.name}-{case.id}") for op in OPS.values() for case in getattr(op.test, attr)]


def _inputs(op, case, requires_grad=True, seed=0):
    """The case's inputs, drawn afresh (same values and strides on every call with the same seed)."""
    flags = case.requires_grad if case.requires_grad is not None else requires_grad
    return op.inputs(case.shape, case.dtype, "cpu", case.layout, torch.Generator().manual_seed(seed), flags)


def _grad_out(layout):
    """``∂l/∂y`` in ``layout``; ``"sum"`` is the gradient of ``y.sum()`` (all strides 0)."""
    if layout == "sum":
        return lambda y: torch.ones((), dtype=y.dtype).expand(y.shape)
    return lambda y: to_layout(torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y.dtype), layout)


def _formats(t):
    return (t.is_contiguous(), t.is_contiguous(memory_format=torch.channels_last)) if t.dim() == 4 else ()


def _kernel(op, case):
    impl = op.triton_impl()
    return lambda *args: impl(*args, **case.kwargs, **case.kernel_kwargs)


def _reference(op, case):
    return lambda *args: op.reference(*args, **case.kwargs)


# --------------------------------------------------------------------------- interpreted: kernel vs reference


def test_interpreted_tests_in_a_fresh_process():
    if can_interpret():
        pytest.skip("this process runs the interpreted tests itself")
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    here = Path(__file__).parent
    files = sorted(str(p) for p in here.glob("test_kernels*.py"))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "test_interp_", *files]
    out = subprocess.run(cmd, cwd=here.parent, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-3000:]
    assert " passed" in out.stdout and " skipped" not in out.stdout, out.stdout[-3000:]


@pytest.mark.parametrize("op,case", _params("cases"))
def test_interp_kernel_matches_reference(interpret, op, case):
    grad_out = _grad_out(case.grad_layout or case.layout)
    yk, gk = forward_backward(_kernel(op, case), _inputs(op, case), grad_out)
    yr, gr = forward_backward(_reference(op, case), _inputs(op, case), grad_out)
    tol = op.test.tolerances[case.dtype]
    assert yk.dtype == yr.dtype and _formats(yk) == _formats(yr)
    torch.testing.assert_close(yk, yr, **tol)
    for i in op.grad_inputs:
        assert (gk[i] is None) == (gr[i] is None), f"input {i}: gradient where none is required, or missing"
        if gr[i] is not None:
            assert gk[i].dtype == gr[i].dtype and _formats(gk[i]) == _formats(gr[i]), f"input {i}"
            torch.testing.assert_close(gk[i], gr[i], **tol, msg=lambda m: f"∂l/∂input {i}: {m}")


@pytest.mark.parametrize("op,case", _params("gradcheck"))
def test_interp_kernel_gradcheck(interpret, op, case):
    assert torch.autograd.gradcheck(_kernel(op, case), _inputs(op, case))


@pytest.mark.parametrize("op", WITH_TRITON, ids=lambda op: op.name)
def test_interp_dispatch_uses_the_kernel_when_forced(interpret, op, monkeypatch):
    module, name = importlib.import_module(op.triton_module), op.triton.partition(":")[2]
    real, calls = getattr(module, name), []
    monkeypatch.setattr(module, name, lambda *a, **k: calls.append(1) or real(*a, **k))
    case = op.test.cases[0]
    inputs = _inputs(op, case, requires_grad=False)
    assert kernel_backend(inputs[0], op) == "triton"
    torch.testing.assert_close(op(*inputs), op.reference(*inputs), **op.test.tolerances[case.dtype])
    assert calls == [1]


# --------------------------------------------------------------------------- references and dispatch (no triton)


@pytest.mark.parametrize("op,case", _params("gradcheck"))
def test_reference_gradcheck(op, case):
    inputs = _inputs(op, case)
    assert torch.autograd.gradcheck(_reference(op, case), inputs)
    if op.test.gradgradcheck:
        assert torch.autograd.gradgradcheck(_reference(op, case), inputs)


@pytest.mark.parametrize("op", OPS.values(), ids=lambda op: op.name)
def test_cpu_runs_the_reference_bit_for_bit(op, monkeypatch):
    inputs = _inputs(op, op.test.cases[0], requires_grad=False)
    for mode in (None, "auto", "reference"):
        if mode is None:
            monkeypatch.delenv(ENV_VAR, raising=False)
        else:
            monkeypatch.setenv(ENV_VAR, mode)
        assert kernel_backend(inputs[0], op) == "reference"
        assert torch.equal(op(*inputs), op.reference(*inputs))
    monkeypatch.setenv(ENV_VAR, "cuda")
    with pytest.raises(ValueError, match="auto, triton, reference"):
        op(*inputs)


@needs_triton
@pytest.mark.parametrize("op", WITH_TRITON, ids=lambda op: op.name)
def test_forcing_triton_on_cpu_without_interpreter_is_a_clear_error(op, monkeypatch):
    if triton_mode() == "interpreted":
        pytest.skip("triton runs interpreted in this process")
    inputs = _inputs(op, op.test.cases[0], requires_grad=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv(ENV_VAR, "triton")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        op(*inputs)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        op.triton_impl()(*inputs)


def test_an_op_without_a_triton_implementation_always_runs_its_reference(monkeypatch):
    row = get_op("l2norm_scale")
    plain = KernelOp(name="plain", reference=row.reference, bench=row.bench, test=row.test, grad_inputs=row.grad_inputs)
    inputs = plain.inputs((1, 3, 2, 2), requires_grad=False)
    monkeypatch.setenv(ENV_VAR, "triton")
    assert kernel_backend(inputs[0], plain) == "reference"
    assert torch.equal(plain(*inputs), row.reference(*inputs))
    with pytest.raises(LookupError, match="no Triton implementation"):
        plain.triton_impl()


def test_importing_the_package_does_not_import_triton():
    code = (
        "import sys, torch, dla_repro, dla_repro.bench, dla_repro.kernels as k\n"
        "for op in k.OPS.values():\n"
        "    op(*op.inputs(op.test.cases[0].shape))\n"
        "print('triton' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- the table and its specs


@pytest.mark.parametrize("op", OPS.values(), ids=lambda op: op.name)
def test_each_row_is_complete(op):
    assert OPS[op.name] is op and callable(op.reference) and op.source
    assert isinstance(op.bench, BenchSpec) and isinstance(op.test, TestSpec) and op.test.cases
    if op.triton is not None:
        assert importlib.util.find_spec(op.triton_module) is not None
    assert {c.dtype for c in op.test.cases} <= set(op.test.tolerances)
    assert {c.layout for c in op.test.cases} | set(op.bench.layouts) <= set(LAYOUTS)
    for shape in op.bench.shapes:
        inputs = op.inputs(shape[:-2] + (3, 2), requires_grad=False)  # bench spec at a tiny H×W
        assert any(t.shape == shape[:-2] + (3, 2) for t in inputs)  # the shape of one input (GALD's: not the first)
        fwd, fwd_bwd = op.bench.bytes_moved(inputs, op.reference(*inputs))
        assert 0 < fwd < fwd_bwd


def test_registering_a_name_twice_and_an_unknown_name_are_errors():
    with pytest.raises(ValueError, match="already registered"):
        register_op(get_op("l2norm_scale"))
    with pytest.raises(ValueError, match="the ops are: .*l2norm_scale"):
        get_op("l2_norm")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts_keep_values_and_set_strides(layout):
    t = torch.arange(2 * 5 * 3 * 4, dtype=torch.float32).view(2, 5, 3, 4)
    u = to_layout(t, layout)
    assert torch.equal(u, t)
    expected = {
        "contiguous": (60, 12, 4, 1),
        "channels_last": (60, 1, 20, 5),
        "channel_slice": (84, 12, 4, 1),  # channels 1..5 of a 7-channel tensor
        "spatial_transpose": (60, 12, 1, 3),
    }
    assert u.stride() == expected[layout]
    gamma = torch.ones(5)
    assert to_layout(gamma, layout) is gamma


def test_inputs_mark_the_differentiable_inputs():
    op = get_op("l2norm_scale")
    x, gamma = op.inputs((1, 4, 2, 2), layout="channel_slice", requires_grad=(False, True))
    assert x.is_leaf and not x.requires_grad and gamma.requires_grad and x.stride()[1] == 4
    with pytest.raises(ValueError, match="2 requires_grad flags"):
        op.inputs((1, 4, 2, 2), requires_grad=(True,))
    with pytest.raises(ValueError, match="unknown layout"):
        op.inputs((1, 4, 2, 2), layout="nhwc")


# --------------------------------------------------------------------------- the kernels compile for Hopper without one


@needs_triton
@pytest.mark.parametrize("op,case", _params("compile_cases"))
def test_kernels_compile_for_sm90(op, case):
    """Catches what the interpreter accepts but the compiler rejects; checks the PTX where the case asks."""
    if not compiles_natively():
        pytest.skip("triton runs interpreted in this process")
    from dla_repro.kernels.triton_utils import compile_for_gpu

    fn = getattr(importlib.import_module(op.triton_module), case.kernel)
    try:
        kernel = compile_for_gpu(fn, case, arch=90)
    except (ImportError, AttributeError) as exc:  # a Triton without this compile API
        pytest.skip(f"cannot compile ahead of time with this Triton: {exc}")
    assert kernel.asm.get("cubin")
    assert case.expect_ptx in kernel.asm["ptx"]
