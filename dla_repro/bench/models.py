"""Training throughput of our DLA against timm's, measured in one interleaved run.

One *train step* = forward, cross-entropy, backward, SGD (momentum) update, on a
fixed random batch.  For each variant and setting both implementations get the
same weights (ours loads timm's state dict), ``warmup`` untimed steps, then
``rounds`` timed bursts of ``steps`` steps, alternating which goes first
(ABBA...), so drifts of a shared machine hit both alike -- the finer the
interleaving (default: one step per burst, ten rounds) the fairer.  Throughput
is the median over rounds; ``ratio`` = ours / timm.

Settings: ``fp32``; ``bf16`` (autocast); ``channels_last`` (memory format of
model and input); ``compile`` (``torch.compile`` of both models).  On a CPU the
default is ``fp32`` only; on CUDA all four.
"""

from __future__ import annotations

import contextlib
import statistics
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from .hardware import bench_device, hardware_string
from .timing import check_repeats, time_interleaved

__all__ = ["SETTINGS", "COLUMNS", "bench_models"]

SETTINGS = ("fp32", "bf16", "channels_last", "compile")
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
    "hardware",
    "torch",
    "timm",
]


def _train_step_fn(model: torch.nn.Module, setting: str, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    device = x.device
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    if setting == "channels_last":
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    forward = torch.compile(model) if setting == "compile" else model
    autocast = (
        (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if setting == "bf16" else contextlib.nullcontext
    )

    def step() -> None:
        with autocast():
            loss = F.cross_entropy(forward(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


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
    one, so the steadier comparison of the two codes), ``hardware``.
    """
    import pandas as pd
    import timm

    from .. import models as _models  # noqa: F401  (importing it registers dlarepro_* in timm)

    device = bench_device(device, "bench_models")
    if settings is None:
        settings = SETTINGS if device.type == "cuda" else ("fp32",)
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        raise ValueError(f"unknown settings {unknown}; expected some of {SETTINGS}")
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
            fns = {"dla_repro": _train_step_fn(ours, setting, x, y), "timm": _train_step_fn(ref, setting, x, y)}
            timings = time_interleaved(fns, iters=steps, rounds=rounds, warmup=warmup, device=device)
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
                        hardware=hardware,
                        torch=torch.__version__,
                        timm=timm.__version__,
                    )
                )
            del ref, ours, fns
    return pd.DataFrame(rows, columns=COLUMNS)
