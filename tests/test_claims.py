"""The verdict rule (dla_repro.analysis.claims): valid 5 % tests, TOST, Holm, and what a verdict reports.

The Monte-Carlo checks draw many experiments under a known truth and count how
often the rule says "reproduced".  The bulk of the draws goes through SciPy's
vectorised t-tests (the same test ``compare`` runs); a smaller number goes
through ``compare`` itself, which must agree with the vectorised decision draw
by draw -- so the rate measured on the large sample is ``compare``'s rate.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy import stats

from dla_repro.analysis.claims import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    REPRODUCED,
    Verdict,
    claims_table,
    compare,
    holm,
)

ALPHA = 0.05
N_DRAWS = 4000  # vectorised draws per setting
N_COMPARE = 200  # of which this many also go through compare()


def _slack(n: int, rate: float = ALPHA) -> float:
    """Three Monte-Carlo standard errors of a rate estimated from ``n`` draws."""
    return 3 * math.sqrt(rate * (1 - rate) / n)


def _agree_and_rate(a: np.ndarray, b: np.ndarray, rejected: np.ndarray, **kw) -> float:
    """compare() on the first draws agrees with the vectorised decision; the rate of the vectorised one."""
    verdicts = [compare("claim", a[i], b[i], **kw).verdict for i in range(N_COMPARE)]
    assert [v == REPRODUCED for v in verdicts] == rejected[:N_COMPARE].tolist()
    return float(rejected.mean())


# ----------------------------------------------------------------- the numbers of one test
def test_welch_p_df_and_interval_match_scipy_and_a_hand_computation():
    a, b = [0.52, 0.55, 0.50, 0.58], [0.47, 0.49, 0.51]
    v = compare("a beats b", a, b)
    ref = stats.ttest_ind(a, b, equal_var=False, alternative="greater")
    assert v.p == pytest.approx(ref.pvalue) and v.df == pytest.approx(ref.df) and v.p_adjusted == v.p
    va, vb = np.var(a, ddof=1) / 4, np.var(b, ddof=1) / 3
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 2)  # Welch–Satterthwaite
    half = stats.t.ppf(0.975, df) * se
    assert v.se == pytest.approx(se) and v.df == pytest.approx(df)
    assert (v.ci_low, v.ci_high) == pytest.approx((v.delta - half, v.delta + half))
    assert v.mde == pytest.approx((stats.t.ppf(0.95, df) + stats.t.ppf(0.8, df)) * se)
    assert v.test == "welch one-sided" and not v.paired and v.alpha == ALPHA
    # "less" is the mirror image
    less = compare("b below a", b, a, expect="less")
    assert less.p == pytest.approx(ref.pvalue) and less.verdict == v.verdict


def test_paired_test_matches_scipy():
    a, b = [0.61, 0.58, 0.66, 0.60], [0.57, 0.55, 0.63, 0.58]  # a consistent per-seed gain, large seed effect
    v = compare("a beats b", a, b, paired=True)
    ref = stats.ttest_rel(a, b, alternative="greater")
    assert v.p == pytest.approx(ref.pvalue) and v.df == 3 and v.paired and v.test == "paired t one-sided"
    assert v.verdict == REPRODUCED
    assert compare("a beats b", a, b).verdict == INCONCLUSIVE  # Welch does not see the pairing
    half = stats.t.ppf(0.975, 3) * np.std(np.subtract(a, b), ddof=1) / 2
    assert (v.ci_low, v.ci_high) == pytest.approx((v.delta - half, v.delta + half))
    with pytest.raises(ValueError, match="paired"):
        compare("a beats b", a, b[:3], paired=True)


def test_tost_p_is_the_larger_one_sided_p():
    a, b = [0.500, 0.505, 0.498, 0.503, 0.501], [0.499, 0.502, 0.500, 0.497, 0.503]
    v = compare("a ≈ b", a, b, expect="equal", tolerance=0.01)
    lower = stats.ttest_ind(np.add(a, 0.01), b, equal_var=False, alternative="greater").pvalue  # H0: Δ ≤ −δ
    upper = stats.ttest_ind(np.subtract(a, 0.01), b, equal_var=False, alternative="less").pvalue  # H0: Δ ≥ δ
    assert v.p == pytest.approx(max(lower, upper)) and v.verdict == REPRODUCED and v.test == "TOST welch"
    q = stats.t.ppf(0.95, v.df)
    assert v.mde == pytest.approx((q + stats.t.ppf(0.9, v.df)) * v.se)
    # the 90 % interval straddles the margin: inconclusive; entirely outside it: not reproduced
    wide = compare("a ≈ b", [0.50, 0.53, 0.47], [0.50, 0.51, 0.49], expect="equal", tolerance=0.01)
    assert wide.verdict == INCONCLUSIVE and "not inside ±0.01" in wide.reading
    far = compare("a ≈ b", [0.60, 0.61, 0.62], [0.50, 0.51, 0.49], expect="equal", tolerance=0.01)
    assert far.verdict == NOT_REPRODUCED and "outside ±0.01" in far.reading


# --------------------------------------------------------------------- Monte Carlo: size
@pytest.mark.parametrize("n", [2, 3, 5])
@pytest.mark.parametrize("sd_b", [1.0, 5.0])
def test_welch_false_positive_rate_is_at_most_alpha(n, sd_b):
    rng = np.random.default_rng(1000 * n + int(sd_b))
    a = rng.normal(0.0, 1.0, (N_DRAWS, n))
    b = rng.normal(0.0, sd_b, (N_DRAWS, n))  # no true difference; spreads equal or 5:1
    p = stats.ttest_ind(a, b, axis=1, equal_var=False, alternative="greater").pvalue
    rate = _agree_and_rate(a, b, p < ALPHA)
    assert rate <= ALPHA + _slack(N_DRAWS)


@pytest.mark.parametrize("n", [2, 3, 5])
def test_paired_false_positive_rate_is_at_most_alpha(n):
    rng = np.random.default_rng(7 + n)
    seed_effect = rng.normal(0.0, 3.0, (N_DRAWS, n))  # what a seed fixes, shared by both sides
    a = seed_effect + rng.normal(0.0, 1.0, (N_DRAWS, n))
    b = seed_effect + rng.normal(0.0, 1.0, (N_DRAWS, n))
    p = stats.ttest_rel(a, b, axis=1, alternative="greater").pvalue
    rate = _agree_and_rate(a, b, p < ALPHA, paired=True)
    assert rate <= ALPHA + _slack(N_DRAWS)


@pytest.mark.parametrize("n", [3, 5])
@pytest.mark.parametrize("margin", [1.0, 4.0])
def test_tost_accepts_equivalence_at_most_alpha_when_the_difference_is_the_margin(n, margin):
    rng = np.random.default_rng(31 * n + int(margin))
    a = rng.normal(margin, 1.0, (N_DRAWS, n))  # true Δ = δ: not equivalent
    b = rng.normal(0.0, 1.0, (N_DRAWS, n))
    lower = stats.ttest_ind(a + margin, b, axis=1, equal_var=False, alternative="greater").pvalue
    upper = stats.ttest_ind(a - margin, b, axis=1, equal_var=False, alternative="less").pvalue
    rate = _agree_and_rate(a, b, np.maximum(lower, upper) < ALPHA, expect="equal", tolerance=margin)
    assert rate <= ALPHA + _slack(N_DRAWS)


def test_compare_itself_keeps_the_false_positive_rate():
    """The same check without the vectorised shortcut: 600 calls of compare, two seeds, 5:1 spreads."""
    rng = np.random.default_rng(3)
    calls = 600
    hits = sum(compare("c", rng.normal(0, 1, 2), rng.normal(0, 5, 2)).verdict == REPRODUCED for _ in range(calls))
    assert hits / calls <= ALPHA + _slack(calls)


# --------------------------------------------------------------------- Monte Carlo: power
def test_welch_power_for_a_large_effect_at_five_seeds():
    rng = np.random.default_rng(11)
    a = rng.normal(2.5, 1.0, (N_DRAWS, 5))  # true Δ = 2.5 per-arm SD
    b = rng.normal(0.0, 1.0, (N_DRAWS, 5))
    p = stats.ttest_ind(a, b, axis=1, equal_var=False, alternative="greater").pvalue
    assert _agree_and_rate(a, b, p < ALPHA) >= 0.8


# ------------------------------------------------------------------------ the decisions
def test_one_seed_never_decides():
    for kw in ({}, {"min_effect": 0.2}, {"expect": "less", "min_effect": 0.2}, {"paired": True},
               {"expect": "equal", "tolerance": 0.5}):
        v = compare("a beats b", [0.9], [0.1], **kw)
        assert v.verdict == INCONCLUSIVE and v.note == "one seed: no verdict" and math.isnan(v.p)
    assert compare("a beats b", [0.9, 0.91], [0.1], min_effect=0.2).verdict == INCONCLUSIVE


def test_not_reproduced_when_the_data_exclude_the_smallest_effect_of_interest():
    a, b = [0.500, 0.502, 0.501, 0.499, 0.500], [0.500, 0.501, 0.499, 0.500, 0.501]
    v = compare("a beats b by a point", a, b, min_effect=0.01)
    assert v.verdict == NOT_REPRODUCED and "effects of 0.01 or more are excluded" in v.reading
    assert compare("a beats b", a, b).verdict == INCONCLUSIVE  # without a smallest effect: cannot tell
    # significantly the other way
    other = compare("a beats b", [0.40, 0.41, 0.42], [0.50, 0.51, 0.52])
    assert other.verdict == NOT_REPRODUCED and "the other way" in other.reading


def test_a_significant_but_negligible_difference_is_not_called_a_result():
    a, b = [0.3040, 0.3050, 0.3060], [0.3000, 0.3010, 0.3020]  # p < 0.05, Δ = 0.004 < min_effect 0.005
    v = compare("a beats b", a, b, min_effect=0.005)
    assert v.p < ALPHA and v.verdict == INCONCLUSIVE and "below the smallest effect" in v.reading
    assert compare("a beats b", a, b).verdict == REPRODUCED


def test_inconclusive_rows_say_what_the_budget_can_detect():
    v = compare("a beats b", [0.70, 0.80], [0.74, 0.75])
    assert v.verdict == INCONCLUSIVE and v.reading.startswith(f"cannot detect below {v.mde:.3g} at this budget")
    assert "are excluded" in v.reading


def test_no_spread_and_floor_give_no_verdict_but_keep_the_numbers():
    flat = compare("a beats b", [0.0, 0.0], [0.0, 0.0])
    assert flat.verdict == INCONCLUSIVE and "no spread" in flat.note
    low = compare("a beats b", [0.30, 0.31, 0.30], [0.04, 0.05, 0.04], names=("A", "B"), floor=0.0625)
    assert low.verdict == INCONCLUSIVE and low.note.startswith("B at or below 0.0625") and low.p < ALPHA


def test_holm_within_a_family():
    base = compare("c", [0.80, 0.82, 0.81], [0.70, 0.71, 0.69], family="F")
    family = [dataclasses.replace(base, claim=f"c{i}", p=p, p_adjusted=p) for i, p in enumerate([0.01, 0.04, 0.03])]
    alone = dataclasses.replace(base, claim="alone", family="", p=0.04, p_adjusted=0.04)
    out = holm([*family, alone])
    assert [v.verdict for v in out] == [REPRODUCED, INCONCLUSIVE, INCONCLUSIVE, REPRODUCED]
    assert [v.p_adjusted for v in out] == pytest.approx([0.03, 0.06, 0.06, 0.04])
    assert "after Holm's adjustment over the 3 claims of 'F'" in out[1].reading
    assert [v.p for v in out] == pytest.approx([0.01, 0.04, 0.03, 0.04])  # the raw p is kept
    assert holm(out) == out  # idempotent
    # verdicts that do not rest on p are left alone
    against = compare("c", [0.40, 0.41, 0.42], [0.50, 0.51, 0.52], family="F")
    assert holm([against, family[0]])[0].verdict == NOT_REPRODUCED


def test_the_table_has_the_new_columns_and_the_old_ones():
    v = compare("A beats B", [0.80, 0.82, 0.81], [0.70, 0.71, 0.69], names=("A", "B"))
    table = claims_table([v])
    old = ["claim", "metric", "a", "b", "mean_a", "mean_b", "delta", "se", "n_a", "n_b", "expect", "verdict", "note",
           "values_a", "values_b"]
    assert list(table.columns[: len(old)]) == old
    assert {"ci_low", "ci_high", "p", "p_adjusted", "alpha", "df", "paired", "test", "mde", "reading"} <= set(table)
    assert list(table.columns) == [f.name for f in dataclasses.fields(Verdict)]
    assert "A beats B: reproduced" in str(v) and "p " in str(v)
