"""The benchmark suites by name, their sizes (presets), and the files each writes.

``dla-repro bench <suite>`` and ``dla-repro bench all`` go through :func:`run_suite`:
measure, write ``results/benchmarks/<suite>_<hardware>.csv`` and the suite's
figure ``<suite>_<hardware>.png`` (:func:`.hardware.hardware_slug`: ``cpu`` or
the GPU's model, e.g. ``h100-sxm``).

A *preset* fixes every suite's size in one place (:data:`PRESETS`):

========  ==================================================================
``ci``    tiny shapes, one round: the tests' form; seconds on a CPU; the
          numbers mean nothing
``cpu``   the committed CPU tables (DLA-34 and DLA-46-C at 224 px, kernels at
          16×16 feature maps, eager and compiled); run on a quiet machine
``gpu``   the issue's GPU form: DLA-34 at 224 px, batch 128, all five settings;
          every kernel op at its paper-sized shapes with Triton, eager and
          compiled; data at 224 px with 8 workers; a few minutes on an H100/H200
========  ==================================================================

The CPU presets run with one thread (``torch.set_num_threads(1)`` for the
suite, restored afterwards; each row's ``hardware`` says so): on a machine that
others share, two threads fighting for two busy cores are many times slower and
far noisier than one.  The default preset is ``gpu`` when CUDA is available,
``cpu`` otherwise.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Dict, Optional

import torch

from .hardware import gpu_slug, hardware_slug

__all__ = ["PRESETS", "SUITES", "default_preset", "run_suite", "write_suite"]

SUITES = ("models", "kernels", "data", "pipeline")

PRESETS: Dict[str, Dict[str, dict]] = {
    "ci": dict(
        threads=1,
        models=dict(variants=("dla46_c",), batch_size=2, image_size=32, settings=("fp32", "bf16"), steps=1,
                    warmup=0, rounds=1),
        kernels=dict(image_size=4, iters=1, rounds=1, warmup=0, impls=("eager",)),
        data=dict(image_size=32, n=16, batch_size=8, num_workers=0, rounds=1, warmup=0, model="dla46_c",
                  model_batch_size=2),
        pipeline=dict(profiles=("smoke", "quick")),
    ),
    "cpu": dict(
        threads=1,
        models=dict(variants=("dla34", "dla46_c"), batch_size=8, image_size=224, settings=("fp32",), steps=1,
                    warmup=2, rounds=12),
        kernels=dict(image_size=16, iters=10, rounds=5, warmup=2, impls=("eager", "compile")),
        data=dict(image_size=224, n=128, batch_size=32, num_workers=0, rounds=3, warmup=1, model="dla34",
                  model_batch_size=8),
        pipeline=dict(profiles=("smoke", "quick")),
    ),
    "gpu": dict(
        threads=None,
        models=dict(variants=("dla34",), batch_size=128, image_size=224, settings=None, steps=5, warmup=3,
                    rounds=5),
        kernels=dict(image_size=None, iters=20, rounds=5, warmup=3, impls=None),
        data=dict(image_size=224, n=1024, batch_size=128, num_workers=8, rounds=2, warmup=1, model="dla34",
                  model_batch_size=128),
        pipeline=dict(profiles=("smoke", "quick")),
    ),
}  # fmt: skip


def default_preset() -> str:
    return "gpu" if torch.cuda.is_available() else "cpu"


def run_suite(suite: str, preset: Optional[str] = None, device: Optional[str] = None, **overrides):
    """Measure ``suite`` at ``preset`` (default :func:`default_preset`), ``overrides`` on top: a DataFrame.

    ``device`` defaults to CUDA when available.  For ``pipeline``, ``run=True``
    runs the smoke profile live (:func:`.pipeline.run_profile`) in addition to
    reading the manifests.
    """
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; expected one of {SUITES}")
    preset = preset or default_preset()
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {tuple(PRESETS)}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    kwargs = {**PRESETS[preset][suite], **{k: v for k, v in overrides.items() if v is not None}}
    threads, previous = PRESETS[preset]["threads"], torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _measure(suite, device, kwargs)
    finally:
        torch.set_num_threads(previous)


def _measure(suite: str, device: str, kwargs: dict):
    if suite == "models":
        from .models import bench_models

        return bench_models(device=device, **kwargs)
    if suite == "kernels":
        from .kernels import bench_kernels

        return bench_kernels(device=device, **kwargs)
    if suite == "data":
        from .loaders import bench_data

        return bench_data(device=device, **kwargs)
    import pandas as pd

    from .pipeline import from_manifests, run_profile

    live = run_profile(kwargs.pop("run_profile", "smoke")) if kwargs.pop("run", False) else None
    df = from_manifests(kwargs["profiles"])
    if live is not None:  # the live run replaces a committed manifest's rows of its profile
        df = pd.concat([live, df[~df["profile"].isin(set(live["profile"]))]], ignore_index=True)
    return df


def output_name(suite: str, df, device: Optional[str] = None) -> str:
    """``<suite>_<hardware slug>``: of the machine the rows were measured on (``device``, default CUDA if any).

    The pipeline's rows come from manifests: their own hardware names the file
    when they share one.
    """
    here = hardware_slug(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if suite == "pipeline" and len(df):
        slugs = {"cpu" if d == "cpu" else gpu_slug(re.sub(r"^\d+x\s+", "", h))
                 for d, h in zip(df["device"], df["hardware"])}  # fmt: skip
        if len(slugs) == 1:
            return f"pipeline_{slugs.pop()}"
    return f"{suite}_{here}"


def write_suite(suite: str, df, name: Optional[str] = None, device: Optional[str] = None) -> Dict[str, Path]:
    """Write ``df``'s CSV and figure under ``results/benchmarks/``: ``{"csv": path, "figure": path}``."""
    from . import write_benchmark
    from .figures import plot_suite

    name = name or output_name(suite, df, device)
    csv = write_benchmark(df, name)
    figure = csv.with_suffix(".png")
    if len(df):
        plot_suite(suite, df, figure)
    return {"csv": csv, "figure": figure if figure.exists() else None}


def run_all(preset: Optional[str] = None, device: Optional[str] = None, run_pipeline: bool = False, log=print):
    """Every suite at ``preset``, each written as it ends; the data suite reuses the models suite's rate.

    Returns ``{suite: {"csv", "figure", "seconds"}}``.
    """
    out = {}
    model_rate = None
    for suite in SUITES:
        t0 = time.perf_counter()
        extra = {}
        if suite == "data" and model_rate is not None:
            extra["model_images_per_s"] = model_rate
        if suite == "pipeline":
            extra["run"] = run_pipeline
        df = run_suite(suite, preset, device, **extra)
        if suite == "models":
            model_rate = _consumer_rate(df, PRESETS[preset or default_preset()]["data"])
        out[suite] = {**write_suite(suite, df, device=device), "seconds": time.perf_counter() - t0}
        log(f"bench {suite}: {len(df)} rows in {out[suite]['seconds']:.1f} s -> {out[suite]['csv']}")
    return out


def _consumer_rate(models_df, data_kwargs: dict) -> Optional[float]:
    """Our model's images/s in the models table, if it measured what the data suite compares with."""
    cuda = (models_df["device"] == "cuda").any()
    setting = "fast_path" if cuda else "fp32"
    mine = models_df[(models_df["impl"] == "dla_repro") & (models_df["setting"] == setting)
                     & (models_df["variant"] == data_kwargs["model"])
                     & (models_df["image_size"] == data_kwargs["image_size"])]  # fmt: skip
    return float(mine["images_per_s"].iloc[0]) if len(mine) else None
