"""Optimiser and lr schedule from a ``TrainConfig``: timm's factories, plus named parameter groups.

``create_optimizer(model, cfg)`` is ``timm.optim.create_optimizer_v2(model, …)``
when ``cfg.param_groups`` is empty -- the same call, so the same groups (no weight
decay on biases, norm parameters and ``model.no_weight_decay()``) and the same
numbers as ever. With ``param_groups`` the parameters whose name matches a
pattern form their own groups, after the default ones (so ``param_groups[0]``,
whose lr is the one logged, keeps the base lr)::

    base, no decay   | base, decay   | pattern 1 (no decay | decay) | pattern 2 …

A pattern's ``lr_scale`` becomes timm's ``lr_scale`` group key, which every timm
scheduler multiplies into the scheduled lr; its ``weight_decay``, if given,
applies to all its parameters, else the default rule splits it in two. A pattern
that matches no trainable parameter is an error (a typo would otherwise train
with the default lr silently). The groups are rebuilt identically on resume and
the optimiser state loads into them.

``create_scheduler(optimizer, cfg, updates_per_epoch)`` is
``timm.scheduler.create_scheduler_v2``; with ``cfg.iterations`` and per-update
stepping its length is exactly ``cfg.iterations`` updates.
"""

from __future__ import annotations

import fnmatch
import functools
import math
from collections.abc import Mapping

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2

from .config import TrainConfig

__all__ = ["create_optimizer", "create_scheduler", "drop_off_schedule_grads", "num_epochs", "param_groups"]


def create_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """timm's optimiser named ``cfg.optimizer`` over ``model``, with ``cfg.param_groups`` if any."""
    kwargs = dict(opt=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    if not cfg.param_groups:
        return create_optimizer_v2(model, **kwargs)
    group_fn = functools.partial(param_groups, spec=cfg.param_groups, weight_decay=cfg.weight_decay)
    return create_optimizer_v2(model, param_group_fn=group_fn, **kwargs)


def param_groups(
    model: torch.nn.Module, spec: Mapping[str, Mapping[str, float]], weight_decay: float
) -> list[dict]:
    """Optimiser groups: timm's default two, then the parameters of each pattern of ``spec``.

    The default rule is timm's ``param_groups_weight_decay``: no decay for 1-d
    parameters, ``*.bias`` and names matching ``model.no_weight_decay()``; none
    at all when ``weight_decay`` is 0. Every group states its ``weight_decay``.
    """
    no_decay_patterns = tuple(getattr(model, "no_weight_decay", lambda: ())())

    def decays(name: str, p: torch.nn.Parameter) -> bool:
        excluded = p.ndim <= 1 or name.endswith(".bias")
        return bool(weight_decay) and not excluded and not any(fnmatch.fnmatch(name, q) for q in no_decay_patterns)

    base: list[tuple[str, torch.nn.Parameter]] = []
    matched: dict[str, list[tuple[str, torch.nn.Parameter]]] = {pattern: [] for pattern in spec}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        pattern = next((q for q in spec if fnmatch.fnmatch(name, q)), None)
        (base if pattern is None else matched[pattern]).append((name, p))

    def split(named, **extra) -> list[dict]:
        no_decay = [p for n, p in named if not decays(n, p)]
        decay = [p for n, p in named if decays(n, p)]
        return [g for g in ({"params": no_decay, "weight_decay": 0.0, **extra},
                            {"params": decay, "weight_decay": weight_decay, **extra}) if g["params"]]

    groups = split(base)
    for pattern, settings in spec.items():
        named = matched[pattern]
        if not named:
            names = [n for n, p in model.named_parameters() if p.requires_grad]
            raise ValueError(
                f"param_groups pattern {pattern!r} matches no trainable parameter of {type(model).__name__} "
                f"(names look like {names[:4]})"
            )
        extra = {"group": pattern}
        if "lr_scale" in settings:
            extra["lr_scale"] = float(settings["lr_scale"])
        if int(settings.get("every", 1)) > 1:
            extra["every"] = int(settings["every"])
        if "weight_decay" in settings:
            groups.append({"params": [p for _, p in named], "weight_decay": float(settings["weight_decay"]), **extra})
        else:
            groups.extend(split(named, **extra))
    return groups


def drop_off_schedule_grads(optimizer: torch.optim.Optimizer, update: int) -> None:
    """Before the optimiser step of update ``update`` (counted from 0): drop the gradients of every group whose
    ``every`` (``param_groups`` key ``every: k``) does not divide ``update``, so that update leaves them as they
    are -- optimisers skip a parameter without a gradient, moments included."""
    for group in optimizer.param_groups:
        every = group.get("every", 1)
        if every > 1 and update % every:
            for p in group["params"]:
                p.grad = None


def num_epochs(cfg: TrainConfig, updates_per_epoch: int) -> int:
    """Epochs the run has: ``cfg.epochs``, or enough to hold ``cfg.iterations`` updates (last one partial)."""
    if not cfg.iterations:
        return cfg.epochs
    if updates_per_epoch < 1:
        raise ValueError("iterations is set but the training loader yields no batch")
    return math.ceil(cfg.iterations / updates_per_epoch)


def create_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, updates_per_epoch: int):
    """timm's ``cfg.schedule`` over the run's length (see ``TrainConfig``)."""
    if cfg.iterations and not cfg.step_on_epochs:
        # T counts updates: give timm a length in "epochs" of one update each.
        length = dict(num_epochs=cfg.iterations, updates_per_epoch=1,
                      decay_epochs=cfg.decay_epochs * updates_per_epoch,
                      warmup_epochs=cfg.warmup_epochs * updates_per_epoch)
    else:
        length = dict(num_epochs=num_epochs(cfg, updates_per_epoch), updates_per_epoch=updates_per_epoch,
                      decay_epochs=cfg.decay_epochs, warmup_epochs=cfg.warmup_epochs)
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=cfg.schedule,
        decay_rate=cfg.poly_power if cfg.schedule == "poly" else cfg.decay_rate,
        min_lr=cfg.min_lr,
        warmup_lr=cfg.warmup_lr,
        step_on_epochs=cfg.step_on_epochs,
        **length,
    )
    return scheduler
