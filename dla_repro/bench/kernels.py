"""Speed of every kernel op: its Triton implementation vs the eager PyTorch reference vs ``torch.compile`` of it.

For each op of the table :data:`dla_repro.kernels.OPS` and each (shape, dtype,
layout) of its :class:`~dla_repro.kernels.BenchSpec`, per implementation: the
time of a forward (``no_grad``) and of a forward + backward
(``torch.autograd.grad`` with respect to the op's differentiable inputs), the
median over ``rounds`` interleaved rounds of ``iters`` calls
(:func:`.timing.time_interleaved`), and the achieved memory bandwidth from the
op's ``bytes_moved`` -- the least traffic *any* implementation must move::

    GBps      = bytes_moved / seconds / 1e9
    frac_peak = GBps / peak_GBps          (peak from :data:`.hardware.PEAK_BANDWIDTH_GBPS`;
                                           NaN for a GPU not in the table and on CPU)

``speedup_vs_eager`` / ``speedup_vs_compile`` compare forward + backward times
with the eager reference's / the compiled reference's (``fwd_speedup_vs_*``:
forward times); ``max_abs_err`` is the largest forward difference from the
eager reference; ``goal`` / ``goal_met``: the GPU goals of :mod:`.goals`.  On a CPU the Triton
kernel is left out by default (it would run in Triton's interpreter).
"""

from __future__ import annotations

import importlib.metadata
import itertools
import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from ..kernels import LAYOUTS, OPS, KernelOp, get_op, to_layout
from .goals import GOAL_COLUMNS, judge
from .hardware import bench_device, hardware_string, peak_bandwidth_gbps
from .timing import check_repeats, time_interleaved

__all__ = ["IMPLS", "COLUMNS", "bench_kernels", "bench_shapes", "selection"]

IMPLS = ("triton", "eager", "compile")
PHASES = ("fwd", "fwd_bwd")
COLUMNS = [
    "op",
    "impl",
    "device",
    "hardware",
    "dtype",
    "layout",
    "shape",
    "fwd_ms",
    "fwd_bwd_ms",
    "fwd_GBps",
    "fwd_bwd_GBps",
    "peak_GBps",
    "fwd_frac_peak",
    "fwd_bwd_frac_peak",
    "speedup_vs_eager",
    "fwd_speedup_vs_eager",
    "speedup_vs_compile",
    "fwd_speedup_vs_compile",
    "max_abs_err",
    "iters",
    "rounds",
    "torch",
    "triton",
    *GOAL_COLUMNS,
]


def bench_shapes(op: KernelOp, image_size: Optional[int] = None) -> List[Tuple[int, ...]]:
    """The op's default shapes, with ``H = W = image_size`` (the last two axes) when given."""
    return [tuple(s[:-2]) + (image_size, image_size) if image_size else tuple(s) for s in op.bench.shapes]


def selection(
    ops: Optional[Sequence[str]] = None, impls: Optional[Sequence[str]] = None, device: Union[str, torch.device] = "cpu"
) -> Tuple[List[KernelOp], Tuple[str, ...]]:
    """The ops (default: all, by name) and implementations (default: per device) to benchmark.

    An unknown op or implementation is a ``ValueError`` that lists the known ones.
    """
    selected = [get_op(name) for name in (ops if ops is not None else sorted(OPS))]
    if impls is None:
        impls = IMPLS if torch.device(device).type == "cuda" else ("eager", "compile")
    unknown = [i for i in impls if i not in IMPLS]
    if unknown:
        raise ValueError(f"unknown impls {unknown}; expected some of {IMPLS}")
    return selected, tuple(impls)


def _implementation(op: KernelOp, impl: str) -> Callable:
    if impl == "eager":
        return op.reference
    if impl == "compile":
        return torch.compile(op.reference, dynamic=False)
    return op.triton_impl()


def _phases(fn: Callable, inputs: Sequence[torch.Tensor], grad_inputs: Sequence[torch.Tensor], dy: torch.Tensor):
    """``(forward, forward + backward)`` of ``fn`` on ``inputs`` as no-argument callables."""

    def forward() -> None:
        with torch.no_grad():
            fn(*inputs)

    def forward_backward() -> None:
        # allow_unused: an input the default arguments do not read (GALD's feature in the released form)
        torch.autograd.grad(fn(*inputs), grad_inputs, dy, allow_unused=True)

    return forward, forward_backward


def _measure(op, fns, shape, dtype, layout, device, generator, iters, rounds, warmup) -> Dict[str, Dict]:
    """Per implementation: forward and forward + backward median times, bandwidths, error vs the reference."""
    inputs = op.inputs(shape, dtype, device, layout, generator)
    grad_inputs = [inputs[i] for i in op.grad_inputs]
    with torch.no_grad():
        expected = op.reference(*inputs)
        errors = {impl: float((fn(*inputs) - expected).abs().max()) for impl, fn in fns.items()}
    dy = to_layout(torch.randn(expected.shape, generator=generator).to(device, expected.dtype), layout)
    steps = {
        (impl, phase): step
        for impl, fn in fns.items()
        for phase, step in zip(PHASES, _phases(fn, inputs, grad_inputs, dy))
    }
    timings = time_interleaved(steps, iters=iters, rounds=rounds, warmup=warmup, device=device)
    moved = dict(zip(PHASES, op.bench.bytes_moved(inputs, expected)))
    results = {}
    for impl in fns:
        seconds = {phase: timings[impl, phase].median for phase in PHASES}
        results[impl] = dict(
            fwd_ms=seconds["fwd"] * 1e3,
            fwd_bwd_ms=seconds["fwd_bwd"] * 1e3,
            fwd_GBps=moved["fwd"] / seconds["fwd"] / 1e9,
            fwd_bwd_GBps=moved["fwd_bwd"] / seconds["fwd_bwd"] / 1e9,
            max_abs_err=errors[impl],
        )
    return results


def _triton_version() -> str:
    try:
        return importlib.metadata.version("triton")  # without importing triton
    except importlib.metadata.PackageNotFoundError:
        return ""


def bench_kernels(
    ops: Optional[Sequence[str]] = None,
    device: Union[str, torch.device] = "cuda",
    shapes: Optional[Sequence[Tuple[int, ...]]] = None,
    image_size: Optional[int] = None,
    dtypes: Optional[Sequence[torch.dtype]] = None,
    layouts: Optional[Sequence[str]] = None,
    impls: Optional[Sequence[str]] = None,
    iters: int = 20,
    rounds: int = 5,
    warmup: int = 3,
    seed: int = 0,
):
    """A ``pandas.DataFrame`` (columns :data:`COLUMNS`), one row per (op, shape, dtype, layout, impl).

    ``ops``: names in the op table (default: all).  ``shapes``, ``dtypes``,
    ``layouts`` override each op's bench spec; ``image_size`` sets ``H = W`` of
    its default shapes.  ``impls``: default all of :data:`IMPLS` on CUDA,
    ``eager`` and ``compile`` on CPU; ``triton`` is skipped for an op without a
    Triton implementation.
    """
    import pandas as pd

    device = bench_device(device, "bench_kernels")
    selected, impls = selection(ops, impls, device)
    bad = [layout for layout in layouts or () if layout not in LAYOUTS]
    if bad:
        raise ValueError(f"unknown layouts {bad}; expected some of {LAYOUTS}")
    check_repeats(iters, rounds, warmup)
    hardware = hardware_string(device)
    peak = peak_bandwidth_gbps(torch.cuda.get_device_name(device)) if device.type == "cuda" else math.nan
    generator = torch.Generator().manual_seed(seed)
    rows: List[Dict] = []
    for op in selected:
        fns = {impl: _implementation(op, impl) for impl in impls if impl != "triton" or op.triton is not None}
        configs = itertools.product(
            shapes or bench_shapes(op, image_size), dtypes or op.bench.dtypes, layouts or op.bench.layouts
        )
        for shape, dtype, layout in configs:
            results = _measure(op, fns, shape, dtype, layout, device, generator, iters, rounds, warmup)
            for impl, r in results.items():
                interpreted = impl == "triton" and device.type != "cuda"
                eager, compiled = results.get("eager"), results.get("compile")
                rows.append(dict(
                    r,
                    op=op.name,
                    impl=impl,
                    device=device.type,
                    hardware=hardware + (" [Triton interpreter]" if interpreted else ""),
                    dtype=str(dtype).replace("torch.", ""),
                    layout=layout,
                    shape="x".join(map(str, shape)),
                    peak_GBps=peak,
                    fwd_frac_peak=r["fwd_GBps"] / peak,
                    fwd_bwd_frac_peak=r["fwd_bwd_GBps"] / peak,
                    speedup_vs_eager=eager["fwd_bwd_ms"] / r["fwd_bwd_ms"] if eager else math.nan,
                    fwd_speedup_vs_eager=eager["fwd_ms"] / r["fwd_ms"] if eager else math.nan,
                    speedup_vs_compile=compiled["fwd_bwd_ms"] / r["fwd_bwd_ms"] if compiled else math.nan,
                    fwd_speedup_vs_compile=compiled["fwd_ms"] / r["fwd_ms"] if compiled else math.nan,
                    iters=iters,
                    rounds=rounds,
                    torch=torch.__version__,
                    triton=_triton_version(),
                ))  # fmt: skip
    return judge(pd.DataFrame(rows, columns=COLUMNS), "kernels", device.type == "cuda")
