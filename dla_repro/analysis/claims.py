"""Verdicts on a paper's claims from measured numbers: reproduced, not reproduced, inconclusive.

A claim is a comparison between two groups of runs ("``full`` beats ``none`` on
top-1"), each group one value per seed.  ``Δ = mean(a) − mean(b)`` is judged by a
t-test at level ``alpha`` (0.05) -- Welch's test for two independent groups
(Welch 1947, with the Welch–Satterthwaite degrees of freedom), or with
``paired=True`` the paired t-test on the per-seed differences (both groups ran
the same seeds, values in the same seed order; ``n − 1`` degrees of freedom).

**Directional claims** (``expect="greater"`` / ``"less"``; ``e`` below is the
effect signed so that the claim says ``e > 0``):

* **reproduced** -- the one-sided test of ``H0: e ≤ 0`` rejects at ``alpha``
  (``p < alpha``) *and* the estimate reaches the claim's smallest effect of
  interest (``e ≥ min_effect``).  The second condition only removes rejections,
  so the rate of false "reproduced" verdicts under no difference stays ≤ alpha;
  it keeps a consistent but negligible difference (many seeds, 0.001 mIoU) from
  being called a result.  ``min_effect`` is *not* the null hypothesis: a test of
  ``H0: e ≤ min_effect`` would need far more seeds than a CPU budget allows;
* **not reproduced** -- the effect is significantly in the other direction
  (the one-sided test the other way rejects at ``alpha``), or, when the claim
  names ``min_effect > 0``, the one-sided upper ``1 − alpha`` confidence bound of
  ``e`` is below ``min_effect``: the data exclude an effect as large as the
  smallest one of interest.  Either way a true effect ``≥ min_effect`` is called
  "not reproduced" at most an ``alpha`` share of the time;
* **inconclusive at this budget** -- anything else.  ``reading`` then says what
  the budget can and cannot tell: the minimum detectable effect and, when the
  interval bounds it, the largest effect the data still allow.

**Claims of no difference** (``expect="equal"``, margin ``tolerance = δ``): two
one-sided tests (TOST, Schuirmann 1987) of ``H0: Δ ≤ −δ`` and ``H0: Δ ≥ δ``;
``p`` is the larger of the two p-values.  Reproduced when both reject at
``alpha`` -- the ``1 − 2·alpha`` (90 %) interval of Δ lies inside ``(−δ, δ)``;
not reproduced when that interval lies entirely outside the margin (``|Δ|``
significantly larger than δ); inconclusive otherwise.

**Never a decision** with fewer than two seeds in either group (or fewer than
two pairs): there is no spread to test against, whatever ``min_effect`` says
(``note`` "one seed: no verdict"); nor when neither group varies at all (the
t statistic is undefined); nor when a group's mean is at or below ``floor``
(e.g. twice the chance accuracy: a model that did not learn) -- the test is still
reported, the verdict is inconclusive and ``note`` says why.

**Several claims about one statement** (a ``family``): :func:`holm` adjusts the
p-values within each family by Holm's step-down procedure (Holm 1979), which
keeps the probability of *any* false "reproduced" in the family ≤ alpha, and
re-derives the verdicts from the adjusted p-values (``p_adjusted``).  Only
"reproduced" depends on ``p``: a claim that no longer passes becomes
inconclusive.  "Not reproduced" stays a per-claim decision at ``alpha``.

Every :class:`Verdict` reports, besides the means and per-seed values:

* ``ci_low`` / ``ci_high`` -- the two-sided ``1 − alpha`` (95 %) confidence
  interval of Δ, ``Δ ± t_{1−alpha/2, df} · SE`` (Welch or paired).  The
  directional decision is one-sided at ``alpha``, i.e. it matches the 90 %
  interval: a "reproduced" row can show a 95 % interval that touches 0;
* ``p`` (one-sided p of the claimed direction, or the TOST p), ``p_adjusted``
  (Holm; equal to ``p`` for a claim alone in its family), ``alpha``, ``df``,
  ``paired``, ``test``;
* ``mde`` -- the minimum detectable effect at 80 % power for the observed
  spread at this number of seeds, from the normal approximation with t
  quantiles: ``mde = (t_{1−alpha, df} + t_{0.8, df}) · SE`` (one-sided, as the
  test).  For an equivalence claim it is the smallest margin the TOST would
  establish with 80 % power when the true Δ is 0:
  ``(t_{1−alpha, df} + t_{0.9, df}) · SE``.  Both plug in the *observed* SE, so
  with two seeds they are rough;
* ``reading`` -- for the rows that are not reproduced: what this budget shows.

References: B. L. Welch (1947), "The generalization of 'Student's' problem when
several different population variances are involved", *Biometrika* 34, 28–35.
D. J. Schuirmann (1987), "A comparison of the two one-sided tests procedure and
the power approach for assessing the equivalence of average bioavailability",
*J. Pharmacokinet. Biopharm.* 15, 657–680.  S. Holm (1979), "A simple
sequentially rejective multiple test procedure", *Scand. J. Statist.* 6, 65–70.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats

__all__ = [
    "REPRODUCED",
    "NOT_REPRODUCED",
    "INCONCLUSIVE",
    "DESCRIPTIVE",
    "ALPHA",
    "POWER",
    "RULE",
    "Verdict",
    "compare",
    "holm",
    "floor_note",
    "claims_table",
]

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
INCONCLUSIVE = "inconclusive at this budget"
DESCRIPTIVE = "descriptive: no verdict"  # declared before training as not decidable in this run (see study.Claim)
ALPHA = 0.05  # level of every test
POWER = 0.8  # power at which the minimum detectable effect is quoted
ONE_SEED = "one seed: no verdict"
NO_SPREAD = "no spread in either group: no test"

RULE = ("Δ (A−B) with its 95 % confidence interval; p: one-sided t-test of the claimed direction (Welch, or paired "
        "by seed), TOST for ≈ claims, Holm-adjusted within a family of claims; *reproduced* when p < 0.05 and Δ "
        "reaches the claim's smallest effect of interest (a one-sided 5 % test: with p between 0.025 and 0.05 the "
        "95 % interval still reaches past 0); *not reproduced* when the difference is significantly "
        "the other way or the data exclude that smallest effect (≈: |Δ| significantly beyond the margin); MDE: "
        "the smallest effect this number of seeds detects with 80 % power. One seed, or a side that did not "
        "learn: no verdict.")


@dataclass(frozen=True)
class Verdict:
    claim: str
    metric: str
    a: str
    b: str
    mean_a: float
    mean_b: float
    delta: float  # mean_a − mean_b
    se: float  # standard error of delta, Welch or paired (nan with one seed per group)
    n_a: int
    n_b: int
    expect: str
    verdict: str
    note: str = ""  # why no verdict could be given (one seed, floor, undefined metric, no pairing)
    values_a: tuple[float, ...] = ()  # the per-seed values behind mean_a (in seed order)
    values_b: tuple[float, ...] = ()
    ci_low: float = math.nan  # two-sided 1 − alpha confidence interval of delta
    ci_high: float = math.nan
    p: float = math.nan  # one-sided p of the claimed direction; TOST p for expect="equal"
    p_adjusted: float = math.nan  # Holm-adjusted within the family (= p when alone)
    alpha: float = ALPHA
    df: float = math.nan  # degrees of freedom of the t distribution (Welch–Satterthwaite or n − 1)
    paired: bool = False
    test: str = ""  # "welch one-sided", "paired t one-sided", "TOST welch", "TOST paired t"
    mde: float = math.nan  # minimum detectable effect (equivalence: margin) at 80 % power
    min_effect: float = 0.0
    tolerance: float | None = None
    family: str = ""
    reading: str = ""  # what the budget shows when the claim is not reproduced
    plan_sha256: str = ""  # the pre-registered plan the claim was judged under (experiments.study.preregister)

    def as_row(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        se = "n/a" if math.isnan(self.se) else f"{self.se:.3g}"
        p = "" if math.isnan(self.p_adjusted) else f", p {self.p_adjusted:.3g}"
        return (f"{self.claim}: {self.verdict} — {self.a} {self.mean_a:.4g} vs {self.b} {self.mean_b:.4g} "
                f"(Δ = {self.delta:+.3g}, SE {se}{p}, seeds {self.n_a}/{self.n_b})")


def floor_note(floor: float | None, groups: dict[str, Sequence[float]]) -> str:
    """Why a verdict cannot stand: the groups whose mean is at or below ``floor`` ("" if none)."""
    if floor is None:
        return ""
    low = [name for name, values in groups.items() if float(np.mean(values)) <= floor]
    return f"{' and '.join(low)} at or below {floor:.3g} (did not learn at this budget)" if low else ""


def _join(*notes: str) -> str:
    return "; ".join(n for n in notes if n)


def _estimate(xa: np.ndarray, xb: np.ndarray, paired: bool) -> tuple[float, float]:
    """Standard error of Δ and its degrees of freedom (Welch–Satterthwaite, or ``n − 1`` paired)."""
    if paired:
        d = xa - xb
        return float(d.std(ddof=1) / math.sqrt(d.size)), float(d.size - 1)
    va, vb = xa.var(ddof=1) / xa.size, xb.var(ddof=1) / xb.size
    se2 = va + vb
    if se2 == 0:
        return 0.0, math.nan
    df = se2**2 / (va**2 / (xa.size - 1) + vb**2 / (xb.size - 1))  # Welch 1947
    return float(math.sqrt(se2)), float(df)


def _p(x: float) -> str:
    return "n/a" if math.isnan(x) else ("< 0.001" if x < 0.001 else f"{x:.3f}")


def _decide(expect: str, delta: float, se: float, df: float, alpha: float, min_effect: float,
            tolerance: float | None) -> tuple[str, float, float, str]:
    """``(verdict, p, mde, reading)`` of the test (before floor and Holm)."""
    t = stats.t(df)
    q = t.ppf(1 - alpha)  # one-sided critical value
    if expect == "equal":
        p = max(t.sf((delta + tolerance) / se), t.cdf((delta - tolerance) / se))  # TOST (Schuirmann 1987)
        lo, hi = delta - q * se, delta + q * se  # the 1 − 2·alpha interval
        mde = float((q + t.ppf(1 - (1 - POWER) / 2)) * se)
        where = f"{round(100 * (1 - 2 * alpha))} % CI [{lo:+.3g}, {hi:+.3g}]"
        if p < alpha:
            return REPRODUCED, float(p), mde, ""
        if lo > tolerance or hi < -tolerance:
            return NOT_REPRODUCED, float(p), mde, f"{where} lies outside ±{tolerance:g}"
        return INCONCLUSIVE, float(p), mde, (f"{where} is not inside ±{tolerance:g}; at this budget equivalence "
                                             f"can be shown only for margins above {mde:.3g}")
    e = delta if expect == "greater" else -delta  # the claim says e > 0
    p, p_against = float(t.sf(e / se)), float(t.cdf(e / se))
    upper = e + q * se  # one-sided upper 1 − alpha bound of e
    mde = float((q + t.ppf(POWER)) * se)
    if p_against < alpha:
        return NOT_REPRODUCED, p, mde, f"significantly the other way (one-sided p {_p(p_against)})"
    if p < alpha and e >= min_effect:
        return REPRODUCED, p, mde, ""
    if min_effect > 0 and upper < min_effect:
        real = f"a difference in the claimed direction (p {_p(p)}) but " if p < alpha else ""
        return NOT_REPRODUCED, p, mde, (f"{real}effects of {min_effect:g} or more are excluded "
                                        f"(upper {round(100 * (1 - alpha))} % bound {upper:+.3g})")
    if p < alpha:
        return INCONCLUSIVE, p, mde, (f"significant (p {_p(p)}) but the estimate {e:+.3g} is below the smallest "
                                      f"effect of interest {min_effect:g}")
    return INCONCLUSIVE, p, mde, (f"cannot detect below {mde:.3g} at this budget ({round(100 * POWER)} % power); "
                                  f"effects above {upper:+.3g} are excluded (upper {round(100 * (1 - alpha))} % bound)")


def compare(
    claim: str,
    a: Sequence[float],
    b: Sequence[float],
    *,
    metric: str = "",
    names: tuple[str, str] = ("A", "B"),
    expect: str = "greater",
    min_effect: float = 0.0,
    tolerance: float | None = None,
    floor: float | None = None,
    paired: bool = False,
    alpha: float = ALPHA,
    family: str = "",
) -> Verdict:
    """Verdict on "``a`` is greater than / less than / equal to ``b``" (one value per seed each).

    ``paired=True``: ``a`` and ``b`` hold the same seeds in the same order (equal
    lengths) and the paired t-test on the per-seed differences is used; otherwise
    Welch's test.  The rule is the module docstring's; ``p_adjusted`` is ``p``
    until :func:`holm` adjusts it within ``family``.
    """
    if expect not in ("greater", "less", "equal"):
        raise ValueError(f"expect={expect!r}: expected 'greater', 'less' or 'equal'")
    if expect == "equal" and (tolerance is None or not tolerance > 0):
        raise ValueError("expect='equal' needs a tolerance > 0")
    xa = np.asarray(a, dtype=float)
    xb = np.asarray(b, dtype=float)
    if xa.size == 0 or xb.size == 0 or not (np.isfinite(xa).all() and np.isfinite(xb).all()):
        raise ValueError(f"{claim}: both groups need finite values, got {list(xa)} and {list(xb)}")
    if paired and xa.size != xb.size:
        raise ValueError(f"{claim}: a paired comparison needs one value per seed on both sides, "
                         f"got {xa.size} and {xb.size}")
    delta = float(xa.mean() - xb.mean())
    kind = "paired t" if paired else "welch"
    test = f"TOST {kind}" if expect == "equal" else f"{kind} one-sided"
    nan = math.nan
    se, df, ci, p, mde, reading = nan, nan, (nan, nan), nan, nan, ""
    if min(xa.size, xb.size) < 2:
        verdict, note = INCONCLUSIVE, ONE_SEED
    else:
        se, df = _estimate(xa, xb, paired)
        if se == 0:
            verdict, note = INCONCLUSIVE, NO_SPREAD
        else:
            half = float(stats.t.ppf(1 - alpha / 2, df)) * se
            ci = (delta - half, delta + half)
            verdict, p, mde, reading = _decide(expect, delta, se, df, alpha, max(min_effect, 0.0), tolerance)
            note = ""
    low = floor_note(floor, {names[0]: xa, names[1]: xb})
    if low:
        verdict, note = INCONCLUSIVE, _join(note, low)
    return Verdict(claim, metric, names[0], names[1], float(xa.mean()), float(xb.mean()), delta, se,
                   int(xa.size), int(xb.size), expect, verdict, note, tuple(map(float, xa)), tuple(map(float, xb)),
                   ci_low=ci[0], ci_high=ci[1], p=p, p_adjusted=p, alpha=alpha, df=df, paired=paired, test=test,
                   mde=mde, min_effect=float(min_effect), tolerance=tolerance, family=family, reading=reading)


def holm(verdicts: Sequence[Verdict], alpha: float = ALPHA) -> list[Verdict]:
    """Holm's step-down adjustment (Holm 1979) of ``p`` within each ``family``, verdicts re-derived.

    In a family of ``m`` claims with a p-value, the ``j``-th smallest p becomes
    ``max_{i ≤ j} min(1, (m − i + 1) · p_(i))``.  Claims without a family, and
    claims without a p-value (one seed, undefined metric), are left as they are
    (``p_adjusted = p``).  A "reproduced" claim whose adjusted p is not below
    ``alpha`` becomes inconclusive; no other verdict depends on ``p``.  Claims
    whose verdict the floor blocks still count in ``m`` (conservative).  A
    claim declared descriptive (verdict :data:`DESCRIPTIVE`) tests nothing and
    does not count.
    """
    out = list(verdicts)
    families: dict[str, list[int]] = {}
    for i, v in enumerate(out):
        if v.family and not math.isnan(v.p) and v.verdict != DESCRIPTIVE:
            families.setdefault(v.family, []).append(i)
    for i, v in enumerate(out):
        if not (v.family and not math.isnan(v.p) and v.verdict != DESCRIPTIVE):
            out[i] = dataclasses.replace(v, p_adjusted=v.p, alpha=alpha)
    for family, members in families.items():
        m = len(members)
        running = 0.0
        for rank, i in enumerate(sorted(members, key=lambda j: out[j].p)):
            v = out[i]
            running = max(running, min(1.0, (m - rank) * v.p))
            verdict, reading = v.verdict, v.reading
            if v.verdict == REPRODUCED and not running < alpha:
                verdict = INCONCLUSIVE
                reading = (f"p {_p(v.p)} alone, {_p(running)} after Holm's adjustment over the {m} claims of "
                           f"'{family}'")
            out[i] = dataclasses.replace(v, p_adjusted=running, alpha=alpha, verdict=verdict, reading=reading)
    return out


def claims_table(verdicts: Sequence[Verdict]) -> pd.DataFrame:
    """One row per claim, for ``tracking.log_table`` and the notebook's closing cell."""
    return pd.DataFrame([v.as_row() for v in verdicts])
