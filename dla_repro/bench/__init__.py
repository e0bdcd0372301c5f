"""Benchmarks: one timing utility, suites on top of it, tables written to ``results/benchmarks/``.

==========================  ===============================================================
module                      measures
==========================  ===============================================================
:mod:`.timing`              the utility: warm-up, device sync, interleaved rounds, median/min
:mod:`.models`              train-step throughput of our DLA vs timm's (``dla-repro bench models``)
:mod:`.kernels`             every op of the kernel table: Triton vs eager vs ``torch.compile``
                            (``dla-repro bench kernels [--op NAME]``)
:mod:`.data`                samples/s of the synthetic data generator on a CPU
                            (``dla-repro bench synthetic``)
==========================  ===============================================================

Every row names its hardware (:func:`hardware_string`); :func:`write_benchmark`
writes a suite's table.
"""

from __future__ import annotations

import re
from pathlib import Path

from .data import COLUMNS as SYNTHETIC_COLUMNS
from .data import bench_synthetic
from .hardware import PEAK_BANDWIDTH_GBPS, hardware_string, peak_bandwidth_gbps
from .kernels import COLUMNS as KERNEL_COLUMNS
from .kernels import IMPLS, bench_kernels, bench_shapes
from .models import COLUMNS as MODEL_COLUMNS
from .models import SETTINGS, bench_models
from .timing import Timing, sync, time_interleaved

__all__ = [
    "IMPLS",
    "KERNEL_COLUMNS",
    "MODEL_COLUMNS",
    "PEAK_BANDWIDTH_GBPS",
    "SETTINGS",
    "SYNTHETIC_COLUMNS",
    "Timing",
    "bench_kernels",
    "bench_models",
    "bench_shapes",
    "bench_synthetic",
    "hardware_string",
    "peak_bandwidth_gbps",
    "sync",
    "time_interleaved",
    "write_benchmark",
]


def write_benchmark(df, name: str) -> Path:
    """Write ``df`` to ``results/benchmarks/<name>.csv`` (under ``dla_repro.paths.results_dir()``)."""
    from ..paths import results_dir

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ValueError(f"benchmark name {name!r}: use letters, digits, '_', '-', '.' (no path)")
    path = results_dir() / "benchmarks" / f"{name}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    return path
