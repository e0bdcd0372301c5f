"""The performance goals of the GPU suites, as data, and the pass/fail columns they add to a table.

Each :class:`Goal` names the rows it judges (``where``: column values), the
measured column(s) it reads and the least value that passes; with several
columns (forward and forward + backward) the smallest must pass.  On CUDA a
judged row gets ``pass`` or ``fail`` (``n/a`` when the value is missing, e.g. the
peak bandwidth of a GPU not in :data:`.hardware.PEAK_BANDWIDTH_GBPS`); the
goals are GPU goals, so on a CPU the rows that stand for them (``where_cpu``:
the reference's rows of a kernel goal, whose Triton rows a CPU does not time)
say :data:`NOT_MEASURED`.

Two columns carry the verdicts, one entry per goal that applies to the row,
joined by ``"; "``: ``goal`` (what is required) and ``goal_met``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Optional, Tuple

__all__ = ["GOALS", "GOAL_COLUMNS", "NOT_MEASURED", "Goal", "judge"]

NOT_MEASURED = "not measured (no GPU)"
GOAL_COLUMNS = ["goal", "goal_met"]


@dataclass(frozen=True)
class Goal:
    """``min(row[c] for c in columns) >= at_least`` on the rows where every ``where`` column has its value."""

    suite: str
    text: str
    where: Mapping[str, object]
    columns: Tuple[str, ...]
    at_least: float
    where_cpu: Optional[Mapping[str, object]] = field(default=None)  # default: ``where``

    def applies(self, row: Mapping, cuda: bool) -> bool:
        where = self.where if cuda or self.where_cpu is None else self.where_cpu
        return all(row.get(k) == v for k, v in where.items())

    def verdict(self, row: Mapping, cuda: bool) -> str:
        if not cuda:
            return NOT_MEASURED
        values = [float(row.get(c, math.nan)) for c in self.columns]
        if any(math.isnan(v) for v in values):
            return "n/a"
        return "pass" if min(values) >= self.at_least else "fail"


#: The issue's goals ("Performance and scale-out"); kernel speed-ups hold for the
#: forward and for forward + backward alike.
GOALS: Tuple[Goal, ...] = (
    Goal("models", "ours >= 1.0x timm (same setting)", {"variant": "dla34", "impl": "dla_repro"}, ("ratio",), 1.0),
    Goal("models", "fast path >= 2x timm fp32 eager",
         {"variant": "dla34", "impl": "dla_repro", "setting": "fast_path"}, ("speedup_vs_timm_fp32",), 2.0),
    Goal("kernels", ">= 2x eager", {"op": "l2norm_scale", "impl": "triton"},
         ("fwd_speedup_vs_eager", "speedup_vs_eager"), 2.0, {"op": "l2norm_scale", "impl": "eager"}),
    Goal("kernels", ">= 1x compiled", {"op": "l2norm_scale", "impl": "triton"},
         ("fwd_speedup_vs_compile", "speedup_vs_compile"), 1.0, {"op": "l2norm_scale", "impl": "eager"}),
    Goal("kernels", ">= 75% of peak bandwidth", {"op": "l2norm_scale", "impl": "triton"},
         ("fwd_frac_peak", "fwd_bwd_frac_peak"), 0.75, {"op": "l2norm_scale", "impl": "eager"}),
    Goal("kernels", ">= 2x eager", {"op": "dynopool_resample", "impl": "triton"},
         ("fwd_speedup_vs_eager", "speedup_vs_eager"), 2.0, {"op": "dynopool_resample", "impl": "eager"}),
    Goal("kernels", ">= 1.5x eager", {"op": "gald_ld_tail", "impl": "triton"},
         ("fwd_speedup_vs_eager", "speedup_vs_eager"), 1.5, {"op": "gald_ld_tail", "impl": "eager"}),
    Goal("data", "loader >= model (does not starve it)", {}, ("ratio",), 1.0),
)  # fmt: skip


def judge(df, suite: str, cuda: bool):
    """``df`` with the :data:`GOAL_COLUMNS` of ``suite``'s goals filled in (a new DataFrame)."""
    goals = [g for g in GOALS if g.suite == suite]
    texts, verdicts = [], []
    for row in df.to_dict("records"):
        mine = [g for g in goals if g.applies(row, cuda)]
        texts.append("; ".join(g.text for g in mine))
        verdicts.append("; ".join(g.verdict(row, cuda) for g in mine))
    return df.assign(goal=texts, goal_met=verdicts)
