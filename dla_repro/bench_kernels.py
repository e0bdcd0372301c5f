"""Speed of the L2NormScale kernel vs the eager PyTorch reference vs ``torch.compile`` of it.

Per (channels, memory format, implementation): the time of a forward
(``no_grad``) and of a forward + backward (``∂x`` and ``∂γ`` with
``torch.autograd.grad``), the median over ``rounds`` interleaved rounds of
``iters`` calls each (implementations alternate order every round, so drifts
of a shared machine hit all alike), and the achieved memory bandwidth from the
*minimum* traffic any implementation must move:

* forward: read ``x``, write ``y``                      → ``2 · numel · bytes``
* backward: read ``x`` and ``∂l/∂y``, write ``∂l/∂x``   → ``3 · numel · bytes``

(γ, ∂γ and the kernel's saved ``1/‖x‖``, ``C`` times smaller than ``x``, are
not counted.)  ``*_frac_peak`` divides by the GPU's peak DRAM bandwidth from
:data:`PEAK_BANDWIDTH_GBPS` (vendor figures; NaN for a GPU not in the table
and on CPU).  ``max_abs_err`` is the largest forward difference from the eager
reference.  On a CPU the kernel is left out (it would run in Triton's
interpreter): eager and compile only.
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from .bench import hardware_string
from .bench import write_benchmark as _write_csv
from .kernels import l2norm_scale_reference

__all__ = ["IMPLS", "COLUMNS", "PEAK_BANDWIDTH_GBPS", "peak_bandwidth_gbps", "bench_l2norm", "write_benchmark"]

IMPLS = ("triton", "eager", "compile")
COLUMNS = [
    "impl",
    "device",
    "hardware",
    "dtype",
    "memory_format",
    "N",
    "C",
    "H",
    "W",
    "fwd_ms",
    "fwd_bwd_ms",
    "fwd_GBps",
    "fwd_bwd_GBps",
    "peak_GBps",
    "fwd_frac_peak",
    "fwd_bwd_frac_peak",
    "speedup_vs_eager",
    "max_abs_err",
    "iters",
    "rounds",
    "torch",
    "triton",
]

#: Peak DRAM bandwidth (GB/s, vendor data sheets), matched in order against
#: ``torch.cuda.get_device_name``; the first pattern that matches wins.
PEAK_BANDWIDTH_GBPS: List[Tuple[str, float, str]] = [
    (r"H100.*PCIe", 2000.0, "H100 PCIe"),
    (r"H100 NVL", 3900.0, "H100 NVL"),
    (r"H100", 3350.0, "H100 SXM"),
    (r"(?<!G)H200", 4800.0, "H200"),
    (r"A100.*SXM4-80GB", 2039.0, "A100 SXM 80GB"),
    (r"A100.*80GB.*PCIe|A100.*PCIE-80GB", 1935.0, "A100 PCIe 80GB"),
    (r"A100", 1555.0, "A100 40GB"),
    (r"L40S", 864.0, "L40S"),
    (r"A10G", 600.0, "A10G"),
    (r"\bL4\b", 300.0, "L4"),
    (r"V100", 900.0, "V100"),
    (r"\bT4\b", 320.0, "T4"),
    (r"RTX 4090", 1008.0, "RTX 4090"),
]


def peak_bandwidth_gbps(device_name: str) -> float:
    """The peak DRAM bandwidth (GB/s) of a GPU by its name; NaN when it is not in the table."""
    for pattern, gbps, _ in PEAK_BANDWIDTH_GBPS:
        if re.search(pattern, device_name):
            return gbps
    return math.nan


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _impl_fn(impl: str) -> Callable:
    if impl == "eager":
        return l2norm_scale_reference
    if impl == "compile":
        return torch.compile(l2norm_scale_reference, dynamic=False)
    if impl == "triton":
        from .kernels.l2norm import l2norm_scale_triton

        return l2norm_scale_triton
    raise ValueError(f"unknown impl {impl!r}; expected some of {IMPLS}")


def _steps(fn: Callable, x: torch.Tensor, gamma: torch.Tensor, dy: torch.Tensor):
    def forward() -> None:
        with torch.no_grad():
            fn(x, gamma)

    def forward_backward() -> None:
        torch.autograd.grad(fn(x, gamma), (x, gamma), dy)

    return forward, forward_backward


def bench_l2norm(
    device: Union[str, torch.device] = "cuda",
    N: int = 16,
    channels: Sequence[int] = (512, 1024),
    size: int = 64,
    iters: int = 20,
    rounds: int = 5,
    warmup: int = 3,
    dtype: torch.dtype = torch.float32,
    memory_formats: Sequence[str] = ("contiguous", "channels_last"),
    impls: Optional[Sequence[str]] = None,
    seed: int = 0,
):
    """A ``pandas.DataFrame`` (columns :data:`COLUMNS`), one row per (C, memory format, impl).

    Defaults: all of :data:`IMPLS` on CUDA; ``eager`` and ``compile`` on CPU.
    ``speedup_vs_eager`` compares forward + backward times.
    """
    import pandas as pd

    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("bench_l2norm(device='cuda'): no CUDA device is available")
    if impls is None:
        impls = IMPLS if device.type == "cuda" else ("eager", "compile")
    unknown = [i for i in impls if i not in IMPLS]
    if unknown:
        raise ValueError(f"unknown impls {unknown}; expected some of {IMPLS}")
    bad = [m for m in memory_formats if m not in ("contiguous", "channels_last")]
    if bad:
        raise ValueError(f"unknown memory formats {bad}; expected contiguous and/or channels_last")
    if iters < 1 or rounds < 1 or warmup < 0:
        raise ValueError("need iters >= 1, rounds >= 1, warmup >= 0")
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = ""
    hardware = hardware_string(device)
    peak = peak_bandwidth_gbps(torch.cuda.get_device_name(device)) if device.type == "cuda" else math.nan
    element = torch.empty((), dtype=dtype).element_size()
    fns = {impl: _impl_fn(impl) for impl in impls}
    rows: List[Dict] = []
    gen = torch.Generator().manual_seed(seed)
    for C in channels:
        for fmt in memory_formats:
            mf = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
            x = torch.randn(N, C, size, size, generator=gen).to(device, dtype).contiguous(memory_format=mf)
            x.requires_grad_(True)
            gamma = torch.full((C,), 10.0, device=device, dtype=dtype, requires_grad=True)
            dy = torch.randn(N, C, size, size, generator=gen).to(device, dtype).contiguous(memory_format=mf)
            with torch.no_grad():
                expected = l2norm_scale_reference(x, gamma)
            steps = {impl: _steps(fn, x, gamma, dy) for impl, fn in fns.items()}
            errors = {}
            for impl, fn in fns.items():
                with torch.no_grad():
                    errors[impl] = float((fn(x, gamma) - expected).abs().max())
                for _ in range(warmup):
                    for step in steps[impl]:
                        step()
            times: Dict[str, Tuple[List[float], List[float]]] = {impl: ([], []) for impl in fns}
            for r in range(rounds):
                order = list(fns) if r % 2 == 0 else list(fns)[::-1]
                for impl in order:
                    for which, step in enumerate(steps[impl]):
                        _sync(device)
                        t0 = time.perf_counter()
                        for _ in range(iters):
                            step()
                        _sync(device)
                        times[impl][which].append((time.perf_counter() - t0) / iters)
            numel = x.numel()
            medians = {impl: tuple(statistics.median(t) for t in ts) for impl, ts in times.items()}
            for impl, (fwd_s, fwd_bwd_s) in medians.items():
                fwd_gbps = 2 * numel * element / fwd_s / 1e9
                fwd_bwd_gbps = 5 * numel * element / fwd_bwd_s / 1e9
                eager = medians.get("eager")
                interpreted = impl == "triton" and device.type != "cuda"
                rows.append(
                    dict(
                        impl=impl,
                        device=device.type,
                        hardware=hardware + (" [Triton interpreter]" if interpreted else ""),
                        dtype=str(dtype).replace("torch.", ""),
                        memory_format=fmt,
                        N=N,
                        C=C,
                        H=size,
                        W=size,
                        fwd_ms=fwd_s * 1e3,
                        fwd_bwd_ms=fwd_bwd_s * 1e3,
                        fwd_GBps=fwd_gbps,
                        fwd_bwd_GBps=fwd_bwd_gbps,
                        peak_GBps=peak,
                        fwd_frac_peak=fwd_gbps / peak,
                        fwd_bwd_frac_peak=fwd_bwd_gbps / peak,
                        speedup_vs_eager=(eager[1] / fwd_bwd_s) if eager else math.nan,
                        max_abs_err=errors[impl],
                        iters=iters,
                        rounds=rounds,
                        torch=torch.__version__,
                        triton=triton_version,
                    )
                )
            del x, gamma, dy, expected, steps
    return pd.DataFrame(rows, columns=COLUMNS)


def write_benchmark(df, name: Optional[str] = None) -> Path:
    """Write ``df`` to ``results/benchmarks/kernels_<device>.csv`` (or ``<name>.csv``) under ``results_dir()``."""
    if name is None:
        name = f"kernels_{df['device'].iloc[0]}" if len(df) else "kernels"
    return _write_csv(df, name)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m dla_repro.bench_kernels --device cuda --write``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--N", type=int, default=16)
    p.add_argument("--channels", type=int, nargs="+", default=[512, 1024])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--impls", nargs="+", choices=IMPLS)
    p.add_argument("--write", action="store_true", help="write results/benchmarks/kernels_<device>.csv")
    args = p.parse_args(argv)
    df = bench_l2norm(args.device, args.N, args.channels, args.size, args.iters, args.rounds, impls=args.impls)
    print(df.to_string(index=False))
    if args.write:
        print(f"wrote {write_benchmark(df)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
