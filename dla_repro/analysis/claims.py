"""Verdicts on a paper's claims from measured numbers: reproduced, not reproduced, inconclusive.

A claim is a comparison between two groups of runs ("``full`` beats ``none`` on
top-1"), each group one value per seed.  The verdict is deliberately plain:

* **reproduced** -- the mean difference has the claimed sign and is larger than the
  noise: ``|Δ| > k · SE(Δ)`` with the Welch standard error of the seed means
  (``k = 2`` by default), and larger than ``min_effect``;
* **not reproduced** -- the difference is at least as clear *against* the claim;
* **inconclusive at this budget** -- anything else (too few seeds, overlapping
  spreads, an effect below ``min_effect``).

With a single seed there is no spread: the verdict is inconclusive unless
``min_effect`` is given and exceeded.  ``floor`` (e.g. twice the chance accuracy)
guards against comparing models that did not learn: when either group's mean is
at or below it, the verdict is inconclusive whatever the difference, and ``note``
says why.  Claims of *no difference* ("early ≈ late")
use ``expect="equal"``: reproduced when ``|Δ| ≤ tolerance`` and the noise is small
enough to tell (``k · SE ≤ tolerance``), not reproduced when ``|Δ| > tolerance``
clearly, inconclusive otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

__all__ = ["REPRODUCED", "NOT_REPRODUCED", "INCONCLUSIVE", "Verdict", "compare", "floor_note", "claims_table"]

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
INCONCLUSIVE = "inconclusive at this budget"


@dataclass(frozen=True)
class Verdict:
    claim: str
    metric: str
    a: str
    b: str
    mean_a: float
    mean_b: float
    delta: float  # mean_a − mean_b
    se: float  # standard error of delta (nan with one seed per group)
    n_a: int
    n_b: int
    expect: str
    verdict: str
    note: str = ""
    values_a: tuple[float, ...] = ()  # the per-seed values behind mean_a (in seed order)
    values_b: tuple[float, ...] = ()

    def as_row(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        se = "n/a" if math.isnan(self.se) else f"{self.se:.3g}"
        return (f"{self.claim}: {self.verdict} — {self.a} {self.mean_a:.4g} vs {self.b} {self.mean_b:.4g} "
                f"(Δ = {self.delta:+.3g}, SE {se}, seeds {self.n_a}/{self.n_b})")


def _se(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    return float(math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)))


def floor_note(floor: float | None, groups: dict[str, Sequence[float]]) -> str:
    """Why a verdict cannot stand: the groups whose mean is at or below ``floor`` ("" if none)."""
    if floor is None:
        return ""
    low = [name for name, values in groups.items() if float(np.mean(values)) <= floor]
    return f"{' and '.join(low)} at or below {floor:.3g} (did not learn at this budget)" if low else ""


def compare(
    claim: str,
    a: Sequence[float],
    b: Sequence[float],
    *,
    metric: str = "",
    names: tuple[str, str] = ("A", "B"),
    expect: str = "greater",
    k: float = 2.0,
    min_effect: float = 0.0,
    tolerance: float | None = None,
    floor: float | None = None,
) -> Verdict:
    """Verdict on "``a`` is greater than / less than / equal to ``b``" (one value per seed each)."""
    if expect not in ("greater", "less", "equal"):
        raise ValueError(f"expect={expect!r}: expected 'greater', 'less' or 'equal'")
    if expect == "equal" and tolerance is None:
        raise ValueError("expect='equal' needs a tolerance")
    xa = np.asarray(a, dtype=float)
    xb = np.asarray(b, dtype=float)
    if xa.size == 0 or xb.size == 0 or not (np.isfinite(xa).all() and np.isfinite(xb).all()):
        raise ValueError(f"{claim}: both groups need finite values, got {list(xa)} and {list(xb)}")
    delta = float(xa.mean() - xb.mean())
    se = _se(xa, xb)
    noise = k * se if not math.isnan(se) else math.inf

    if expect == "equal":
        if abs(delta) <= tolerance and noise <= tolerance:
            verdict = REPRODUCED
        elif abs(delta) - noise > tolerance:
            verdict = NOT_REPRODUCED
        else:
            verdict = INCONCLUSIVE
    else:
        signed = delta if expect == "greater" else -delta
        clear = abs(delta) > max(min_effect, 0.0) and (abs(delta) > noise or (math.isinf(noise) and min_effect > 0))
        if clear:
            verdict = REPRODUCED if signed > 0 else NOT_REPRODUCED
        else:
            verdict = INCONCLUSIVE
    note = floor_note(floor, {names[0]: xa, names[1]: xb})
    if note:
        verdict = INCONCLUSIVE
    return Verdict(claim, metric, names[0], names[1], float(xa.mean()), float(xb.mean()), delta, se,
                   int(xa.size), int(xb.size), expect, verdict, note, tuple(map(float, xa)), tuple(map(float, xb)))


def claims_table(verdicts: Sequence[Verdict]) -> pd.DataFrame:
    """One row per claim, for ``tracking.log_table`` and the notebook's closing cell."""
    return pd.DataFrame([v.as_row() for v in verdicts])
