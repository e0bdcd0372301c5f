"""Benchmarks: one timing utility, four suites on top of it, tables and figures in ``results/benchmarks/``.

==========================  ===============================================================
module                      measures / does
==========================  ===============================================================
:mod:`.timing`              the utility: warm-up, device sync, interleaved rounds, median/min
:mod:`.models`              train-step images/s and peak memory of our DLA vs timm's, per
                            setting incl. the :data:`FAST_PATH` (``dla-repro bench models``)
:mod:`.kernels`             every op of the kernel table: Triton vs eager vs ``torch.compile``
                            (``dla-repro bench kernels [--op NAME]``)
:mod:`.loaders`             synthetic generator and real readers vs the model's rate
                            (``dla-repro bench data``)
:mod:`.data`                samples/s of the synthetic data generator alone
                            (``dla-repro bench synthetic``)
:mod:`.pipeline`            wall time per notebook: committed manifests, or a live smoke run
                            (``dla-repro bench pipeline [--run]``)
:mod:`.goals`               the issue's GPU goals as pass/fail columns
:mod:`.suite`               presets (ci / cpu / gpu), file names, ``dla-repro bench all``
:mod:`.figures`             one seaborn figure per suite
:mod:`.readme`              README's performance tables from the CSVs (``dla-repro bench readme``)
==========================  ===============================================================

Every row names its hardware (:func:`hardware_string`); a suite's files are
``<suite>_<hardware_slug>.csv`` / ``.png``; :func:`write_benchmark` writes a table.
"""

from __future__ import annotations

import re
from pathlib import Path

from .data import COLUMNS as SYNTHETIC_COLUMNS
from .data import bench_synthetic
from .goals import GOALS, NOT_MEASURED
from .hardware import PEAK_BANDWIDTH_GBPS, hardware_slug, hardware_string, peak_bandwidth_gbps
from .kernels import COLUMNS as KERNEL_COLUMNS
from .kernels import IMPLS, bench_kernels, bench_shapes
from .models import COLUMNS as MODEL_COLUMNS
from .loaders import COLUMNS as DATA_COLUMNS
from .loaders import bench_data
from .models import FAST_PATH, SETTINGS, bench_models
from .pipeline import COLUMNS as PIPELINE_COLUMNS
from .timing import Timing, sync, time_interleaved

__all__ = [
    "DATA_COLUMNS",
    "FAST_PATH",
    "GOALS",
    "IMPLS",
    "NOT_MEASURED",
    "PIPELINE_COLUMNS",
    "KERNEL_COLUMNS",
    "MODEL_COLUMNS",
    "PEAK_BANDWIDTH_GBPS",
    "SETTINGS",
    "SYNTHETIC_COLUMNS",
    "Timing",
    "bench_data",
    "bench_kernels",
    "bench_models",
    "bench_shapes",
    "bench_synthetic",
    "hardware_slug",
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
