"""Speed of the synthetic data generator on a CPU (``dla-repro bench synthetic``).

One call = :func:`dla_repro.data.synthetic.generate` of ``n`` samples (in
chunks of ``chunk_size``) at one image size, with ``torch.set_num_threads(threads)``.
All image sizes are timed in one interleaved run of :func:`.timing.time_interleaved`
(``warmup`` untimed calls each, then ``repeats`` rounds of one call, ABBA order);
every call draws other samples (the seed counts up).  ``samples_per_s`` is the
fastest round, ``samples_per_s_median`` the median one.  The CLI writes the table
to ``results/benchmarks/synthetic_cpu.csv``.
"""

from __future__ import annotations

import itertools
import platform
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..data.synthetic import SYNTHETIC_VERSION, SyntheticConfig, generate
from .hardware import hardware_string
from .timing import check_repeats, time_interleaved

__all__ = ["COLUMNS", "bench_synthetic"]

COLUMNS = [
    "generator",
    "config_digest",
    "image_size",
    "n",
    "chunk_size",
    "threads",
    "samples_per_s",
    "samples_per_s_median",
    "repeats",
    "cpu",
    "platform",
    "torch",
    "numpy",
]


def _generate_fn(cfg: SyntheticConfig, n: int, chunk_size: int) -> Callable[[], object]:
    seeds = itertools.count()
    return lambda: generate(cfg, n, seed=next(seeds), split="bench", chunk_size=chunk_size)


def bench_synthetic(
    image_sizes: Sequence[int] = (32, 64, 128),
    n: int = 2048,
    chunk_size: int = 256,
    threads: int = 1,
    repeats: int = 3,
    warmup: int = 1,
    config: Optional[SyntheticConfig] = None,
):
    """Samples per second of ``generate`` on this CPU: a ``pandas.DataFrame``, one row per image size.

    Columns :data:`COLUMNS`.  ``torch.set_num_threads(threads)`` holds during the
    run and is restored afterwards.
    """
    import pandas as pd

    check_repeats(1, repeats, warmup)
    base = config or SyntheticConfig()
    configs = {int(size): base.replace(image_size=int(size)) for size in image_sizes}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fns = {size: _generate_fn(cfg, n, chunk_size) for size, cfg in configs.items()}
        timings = time_interleaved(fns, iters=1, rounds=repeats, warmup=warmup, device="cpu")
    finally:
        torch.set_num_threads(previous)
    cpu = hardware_string("cpu").rsplit(" (", 1)[0]
    rows = [
        dict(
            generator=SYNTHETIC_VERSION,
            config_digest=cfg.digest(),
            image_size=size,
            n=n,
            chunk_size=chunk_size,
            threads=threads,
            samples_per_s=n / timings[size].min,
            samples_per_s_median=n / timings[size].median,
            repeats=repeats,
            cpu=cpu,
            platform=platform.platform(),
            torch=torch.__version__,
            numpy=np.__version__,
        )
        for size, cfg in configs.items()
    ]
    return pd.DataFrame(rows, columns=COLUMNS)
