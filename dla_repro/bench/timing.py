"""The one timing utility every benchmark uses: warm up, synchronise, repeat interleaved, summarise.

Several implementations are timed in one run, interleaved: round ``r`` runs
each of them once (``iters`` calls between two device synchronisations), in
the given order when ``r`` is even and reversed when odd (ABBA…), so drifts of
a shared machine (clock boost, other jobs) hit all alike.  A round's time per
call is ``t_r = (t_end − t_start) / iters``; :class:`Timing` keeps the
``rounds`` values of each implementation and summarises them by the median
(the typical call) and the minimum (the least disturbed one).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, Hashable, Mapping, Tuple, TypeVar, Union

import torch

__all__ = ["Timing", "check_repeats", "sync", "time_interleaved"]

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Timing:
    """Seconds per call, one value per round."""

    seconds: Tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def min(self) -> float:
        return min(self.seconds)

    @property
    def max(self) -> float:
        return max(self.seconds)


def sync(device: Union[str, torch.device]) -> None:
    """Wait for the device's queued work (a no-op on CPU), so a timer reads finished work."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_repeats(iters: int, rounds: int, warmup: int) -> None:
    """Reject counts a timing cannot use (checked before the setup of a benchmark, not after)."""
    if iters < 1 or rounds < 1 or warmup < 0:
        raise ValueError(f"need iters >= 1, rounds >= 1, warmup >= 0; got {iters}, {rounds}, {warmup}")


def time_interleaved(
    fns: Mapping[K, Callable[[], object]],
    iters: int = 1,
    rounds: int = 5,
    warmup: int = 1,
    device: Union[str, torch.device] = "cpu",
) -> Dict[K, Timing]:
    """Time each of ``fns`` (no-argument callables) in ``rounds`` interleaved rounds of ``iters`` calls.

    Every function is first called ``warmup`` times (compilation, caches,
    autotuning), then the device is synchronised before and after each timed
    burst.  Returns a :class:`Timing` per key of ``fns``.
    """
    check_repeats(iters, rounds, warmup)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    seconds: Dict[K, list] = {key: [] for key in fns}
    for r in range(rounds):
        for key in list(fns) if r % 2 == 0 else list(fns)[::-1]:
            fn = fns[key]
            sync(device)
            t0 = time.perf_counter()
            for _ in range(iters):
                fn()
            sync(device)
            seconds[key].append((time.perf_counter() - t0) / iters)
    return {key: Timing(tuple(s)) for key, s in seconds.items()}
