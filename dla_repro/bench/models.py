"""Training throughput and peak memory of our DLA against timm's, measured in one interleaved run.

One *train step* = forward, cross-entropy, backward, SGD (momentum) update, on a
fixed random batch.  For each variant and setting both implementations get the
same weights (ours loads timm's state dict), ``warmup`` untimed steps, then
``rounds`` timed bursts of ``steps`` steps, alternating which goes first
(ABBA...), so drifts of a shared machine hit both alike -- the finer the
interleaving (default: one step per burst, ten rounds) the fairer.  Throughput
is the median over rounds; ``ratio`` = ours / timm.

Settings (:data:`SETTINGS`: each a set of features): ``fp32`` (eager, float32);
``bf16`` (autocast); ``channels_last`` (memory format of model and input);
``compile`` (``torch.compile`` of the model); ``fast_path`` -- :data:`FAST_PATH`,
the project's recommended combination.  On a CPU the default is ``fp32`` only;
on CUDA all five.

:data:`FAST_PATH` is bf16 autocast + channels_last + ``torch.compile``: autocast
keeps float32 weights, optimizer state and batch-norm statistics (the engine's
own default on CUDA, ``FitConfig(amp=True, amp_dtype="bfloat16")``, plus
``channels_last=True``), and ``compile`` changes no arithmetic, so it keeps
accuracy; ``loss_rel_err`` checks the numbers on the benchmark's batch.  It is
defined here only: change it here if ``bench models`` shows another
combination faster on a GPU.

Extra columns: ``peak_mem_MB`` (``torch.cuda.max_memory_allocated`` over one
train step measured alone, after the timing; NaN on a CPU);
``loss_rel_err`` (the first step's loss against the same model's fp32 eager
loss on the same weights and batch); ``speedup_vs_timm_fp32`` (images/s over
timm's fp32 eager images/s in the same call; NaN without an ``fp32`` setting);
``goal`` / ``goal_met`` (:mod:`.goals`).
"""

from __future__ import annotations

import contextlib
import math
import statistics
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from .goals import GOAL_COLUMNS, judge
from .hardware import bench_device, hardware_string
from .timing import check_repeats, time_interleaved

__all__ = ["FAST_PATH", "SETTINGS", "COLUMNS", "bench_models"]

#: The project's recommended fast path: the features of the ``fast_path`` setting.
FAST_PATH = frozenset({"bf16", "channels_last", "compile"})
#: Setting name -> the features it turns on (none: fp32 eager, contiguous).
SETTINGS = {
    "fp32": frozenset(),
    "bf16": frozenset({"bf16"}),
    "channels_last": frozenset({"channels_last"}),
    "compile": frozenset({"compile"}),
    "fast_path": FAST_PATH,
}
COLUMNS = [
    "variant",
    "impl",
    "setting",
    "device",
    "batch_size",
    "image_size",
    "steps",
    "rounds",
    "images_per_s",
    "spread",
    "ratio",
    "images_per_s_best",
    "ratio_best",
    "speedup_vs_timm_fp32",
    "peak_mem_MB",
    "loss_rel_err",
    "hardware",
    "torch",
    "timm",
    *GOAL_COLUMNS,
]


def _train_step_fn(
    model: torch.nn.Module, setting: str, x: torch.Tensor, y: torch.Tensor
) -> Tuple[Callable[[], None], Callable[[], float]]:
    """``(step, loss)``: one train step, and the loss of the step's forward without updating."""
    device = x.device
    features = SETTINGS[setting]
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    if "channels_last" in features:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    forward = torch.compile(model) if "compile" in features else model
    autocast = (
        (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if "bf16" in features else contextlib.nullcontext
    )

    def step() -> None:
        with autocast():
            loss = F.cross_entropy(forward(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def loss() -> float:
        with torch.no_grad(), autocast():
            return float(F.cross_entropy(model(x), y))  # eager: the numbers compile would reproduce

    return step, loss


def _peak_memory_mb(step: Callable[[], None], device: torch.device) -> float:
    """``torch.cuda.max_memory_allocated`` (MB) over one step on its own; NaN on a CPU."""
    if device.type != "cuda":
        return math.nan
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def bench_models(
    variants: Sequence[str] = ("dla34",),
    device: Union[str, torch.device] = "cpu",
    batch_size: int = 8,
    image_size: int = 224,
    settings: Optional[Sequence[str]] = None,
    steps: int = 1,
    warmup: int = 2,
    rounds: int = 10,
    num_classes: int = 1000,
    seed: int = 0,
):
    """Train-step throughput (images/s) of ``dlarepro_<variant>`` vs timm's ``<variant>``.

    Returns a ``pandas.DataFrame`` with one row per (variant, setting, impl) and
    the columns :data:`COLUMNS`: ``images_per_s`` (median over rounds),
    ``spread`` ((max - min) / median over rounds: the noise of the number),
    ``ratio`` (ours / timm, on both rows of a pair), ``images_per_s_best`` and
    ``ratio_best`` (the fastest round: on a shared machine the least disturbed
    one, so the steadier comparison of the two codes), ``speedup_vs_timm_fp32``,
    ``peak_mem_MB``, ``loss_rel_err`` (see the module), ``hardware``, ``goal`` and
    ``goal_met`` (:func:`.goals.judge`).
    """
    import pandas as pd
    import timm

    from .. import models as _models  # noqa: F401  (importing it registers dlarepro_* in timm)

    device = bench_device(device, "bench_models")
    if settings is None:
        settings = tuple(SETTINGS) if device.type == "cuda" else ("fp32",)
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        raise ValueError(f"unknown settings {unknown}; expected some of {tuple(SETTINGS)}")
    check_repeats(steps, rounds, warmup)
    hardware = hardware_string(device)
    rows: List[Dict] = []
    for variant in variants:
        for setting in settings:
            torch.manual_seed(seed)
            ref = timm.create_model(variant, num_classes=num_classes).to(device).train()
            ours = timm.create_model(f"dlarepro_{variant}", num_classes=num_classes).to(device).train()
            ours.load_state_dict(ref.state_dict())
            x = torch.randn(batch_size, 3, image_size, image_size, device=device)
            y = torch.randint(0, num_classes, (batch_size,), device=device)
            models = {"dla_repro": ours, "timm": ref}
            with torch.no_grad():
                loss32 = {impl: float(F.cross_entropy(m(x), y)) for impl, m in models.items()}
            fns, losses = {}, {}
            for impl, m in models.items():
                fns[impl], loss = _train_step_fn(m, setting, x, y)
                losses[impl] = abs(loss() - loss32[impl]) / abs(loss32[impl])
            timings = time_interleaved(fns, iters=steps, rounds=rounds, warmup=warmup, device=device)
            peak = {impl: _peak_memory_mb(fn, device) for impl, fn in fns.items()}
            rates = {impl: [batch_size / t for t in timing.seconds] for impl, timing in timings.items()}
            median = {impl: statistics.median(v) for impl, v in rates.items()}
            best = {impl: max(v) for impl, v in rates.items()}
            ratio, ratio_best = median["dla_repro"] / median["timm"], best["dla_repro"] / best["timm"]
            for impl, v in rates.items():
                rows.append(
                    dict(
                        variant=variant,
                        impl=impl,
                        setting=setting,
                        device=device.type,
                        batch_size=batch_size,
                        image_size=image_size,
                        steps=steps,
                        rounds=rounds,
                        images_per_s=median[impl],
                        spread=(max(v) - min(v)) / median[impl],
                        ratio=ratio,
                        images_per_s_best=best[impl],
                        ratio_best=ratio_best,
                        peak_mem_MB=peak[impl],
                        loss_rel_err=losses[impl],
                        hardware=hardware,
                        torch=torch.__version__,
                        timm=timm.__version__,
                    )
                )
            del ref, ours, models, fns
    df = pd.DataFrame(rows, columns=COLUMNS)
    timm_fp32 = df[(df["impl"] == "timm") & (df["setting"] == "fp32")].set_index("variant")["images_per_s"]
    df["speedup_vs_timm_fp32"] = df["images_per_s"] / df["variant"].map(timm_fp32)
    return judge(df, "models", device.type == "cuda")
