"""The aggregation ablation at matched parameter count: one width per mode.

Comparing the aggregation modes of :mod:`.dla` (``none``, ``ida``, ``hda``,
``full``) at equal width would credit aggregation with the parameters its nodes
add.  :func:`matched_family` instead widens or narrows each mode by one width
multiplier ``w`` until its parameter count ``P_mode(w)`` is within a tolerance
of the target ``P*`` (by default that of ``full``)::

    w* = argmin_w |P_mode(w) / P* − 1|,   channels = round(w · c_l / d_l) · d_l

with ``c_l`` the variant's six widths and ``d_l`` the step that keeps each level
valid (:func:`_channel_divisors`); a mode that cannot get within ``tolerance``
(default ±5 %, relative to ``P*``) is an error, never a silently unfair arm.
The same rule matches any other switch to a target: ``matched_family(variant,
modes=("full",), target_params=P, root_kernel=3)`` is the 3×3-node DLA narrowed
to ``P`` (the node-kernel ablation of
:mod:`dla_repro.experiments.dla.classification`).  This is our design of a fair ablation, not a
table of the paper (arXiv 1707.06484 §5.1 compares DLA with ResNet/ResNeXt
backbones of similar size, and has no IDA-only or HDA-only network).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from . import blocks as blk
from .dla import AGGREGATION_MODES, DLA, VARIANTS, create_dla

__all__ = ["FamilyMember", "matched_family"]


@dataclass
class FamilyMember:
    """One ablation mode of a variant, widened or narrowed to the family's target size."""

    variant: str
    mode: str
    width_mult: float
    channels: Tuple[int, ...]
    params: int
    target_params: int
    kwargs: Dict[str, Any]  # everything for timm.create_model(f"dlarepro_{variant}", **kwargs)

    @property
    def rel_diff(self) -> float:
        return self.params / self.target_params - 1.0

    def create(self, **overrides) -> DLA:
        return create_dla(self.variant, **{**self.kwargs, **overrides})

    def as_dict(self) -> Dict[str, Any]:
        return dict(asdict(self), rel_diff=self.rel_diff)


def _config_of(variant: str, overrides: Mapping[str, Any]) -> Dict[str, Any]:
    if variant not in VARIANTS:
        raise ValueError(f"unknown DLA variant {variant!r}; expected one of {list(VARIANTS)}")
    return {**VARIANTS[variant], **overrides}


def _param_count(config: Mapping[str, Any], cache: Dict[Any, int]) -> int:
    key = tuple(sorted((k, repr(v)) for k, v in config.items()))
    if key not in cache:
        with torch.device("meta"):
            cache[key] = sum(p.numel() for p in DLA(**config).parameters())
    return cache[key]


def _channel_divisors(config: Mapping[str, Any]) -> Tuple[int, ...]:
    """Smallest width steps that keep each level valid: 8 for convs and plain blocks;
    for split blocks 128/base_width, so the grouped width ⌊c·w/64⌋·g/2 stays a
    multiple of the cardinality g."""
    block = config.get("block", "basic")
    step = 8
    if block == "split" or (block == "bottleneck" and (config.get("cardinality") or 1) > 1):
        base_width = config.get("base_width") or blk.BLOCK_DEFAULTS[block][1]
        step = max(8, -(-128 // base_width))
    return (8, 8) + (step,) * 4


def _scaled(channels: Sequence[int], mult: float, divisors: Sequence[int]) -> Tuple[int, ...]:
    return tuple(max(d, int(round(c * mult / d)) * d) for c, d in zip(channels, divisors))


def matched_family(
    variant: str = "dla34",
    modes: Sequence[str] = AGGREGATION_MODES,
    target_params: Optional[int] = None,
    tolerance: float = 0.05,
    **model_kwargs,
) -> List[FamilyMember]:
    """Ablation modes of ``variant`` with (nearly) equal parameter counts.

    The target is ``target_params`` or, by default, the parameter count of the
    ``full`` model with ``model_kwargs`` (e.g. ``channels=...`` for a tiny DLA,
    ``num_classes=10``).  For each mode one width multiplier w scales all six
    widths (rounded to valid steps, see :func:`_channel_divisors`); w is found
    by bisection and the closer of the two bracketing widths is kept.  A mode
    that cannot get within ``tolerance`` (relative) raises ``ValueError``.
    Counting happens on the meta device: no memory, no init cost.
    """
    base = _config_of(variant, model_kwargs)
    unknown = [m for m in modes if m not in AGGREGATION_MODES]
    if unknown:
        raise ValueError(f"unknown aggregation modes {unknown}; expected a subset of {AGGREGATION_MODES}")
    cache: Dict[Any, int] = {}
    target = int(target_params) if target_params else _param_count(dict(base, aggregation="full"), cache)
    divisors = _channel_divisors(base)
    members = []
    for mode in modes:
        def count(mult: float) -> Tuple[int, Tuple[int, ...]]:
            chans = _scaled(base["channels"], mult, divisors)
            return _param_count(dict(base, aggregation=mode, channels=chans), cache), chans

        lo, hi = 1.0, 1.0
        while count(lo)[0] > target and lo > 1 / 64:
            lo /= 2
        while count(hi)[0] < target and hi < 64:
            hi *= 2
        for _ in range(24):
            mid = (lo + hi) / 2
            if count(mid)[0] < target:
                lo = mid
            else:
                hi = mid
        best = min((lo, hi), key=lambda m: abs(count(m)[0] - target))
        if mode == "full" and target_params is None:
            best = 1.0
        params, chans = count(best)
        if abs(params / target - 1) > tolerance:
            raise ValueError(
                f"{variant} aggregation={mode!r}: closest width {chans} has {params:,} params, "
                f"{params / target - 1:+.1%} from the target {target:,} (tolerance {tolerance:.0%})"
            )
        kwargs = dict(model_kwargs, aggregation=mode, channels=chans)
        members.append(FamilyMember(variant, mode, best, chans, params, target, kwargs))
    return members
