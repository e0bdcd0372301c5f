"""Re-judging committed claims tables (dla_repro.experiments.rejudge, scripts/rejudge.py) without retraining."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from dla_repro.analysis.claims import REPRODUCED, claims_table
from dla_repro.analysis.report import collect_claims
from dla_repro.experiments import study
from dla_repro.experiments.parsenet import global_context as pn
from dla_repro.experiments.rejudge import rejudge, rejudge_table
from dla_repro.paths import repo_root, results_dir

OLD_COLUMNS = ["claim", "metric", "a", "b", "mean_a", "mean_b", "delta", "se", "n_a", "n_b", "expect", "verdict",
               "note", "values_a", "values_b"]


def _runs() -> pd.DataFrame:
    values = {"fcn": [0.30, 0.31, 0.29], "early": [0.20, 0.21, 0.19], "early_l2": [0.40, 0.41, 0.39],
              "late_l2": [0.405, 0.395, 0.40]}
    nan = float("nan")
    ctx = {"fcn": [0.4, 0.45, 0.5], "early": [0.3] * 3, "early_l2": [nan] * 3, "late_l2": [0.1] * 3}
    return pd.DataFrame([{"trial": t, "seed": s, "eval_miou": v, "eval_miou_context": v / 2,
                          "eval_context_error": ctx[t][s]} for t, vals in values.items() for s, v in enumerate(vals)])


def _old_table(tolerance: float) -> pd.DataFrame:
    """A table as an older rule wrote it: the same values, its own verdicts, none of the test columns."""
    old = claims_table(study.judge(pn.claims(tolerance), _runs()))[OLD_COLUMNS].copy()
    old["verdict"] = REPRODUCED
    return old


def test_rejudge_gives_what_judge_gives_today_with_the_parameters_the_run_recorded():
    tables = results_dir() / "tables" / "quick"
    tables.mkdir(parents=True)
    _old_table(0.05).to_csv(tables / "parsenet_claims.csv", index=False)
    pd.DataFrame({"claim": ["x"], "verdict": [REPRODUCED]}).to_csv(tables / "other_claims.csv", index=False)
    manifest = {"notebooks": {"parsenet": {"parameters": {"profile": "quick", "equal_tolerance": 0.05}}}}
    (results_dir() / "manifest_quick.json").write_text(json.dumps(manifest))

    out = rejudge(results_dir(), "quick")
    expected = claims_table(study.judge(pn.claims(equal_tolerance=0.05), _runs()))
    pd.testing.assert_frame_equal(out["parsenet"][1], expected)
    assert out["other"][1] is None  # no per-seed values: left alone
    written = collect_claims(results_dir(), "quick")
    parsenet = written[written["notebook"] == "parsenet"]
    assert list(parsenet["verdict"]) == list(expected["verdict"]) and REPRODUCED != expected["verdict"].iloc[1]
    assert parsenet.loc[parsenet["expect"] == "equal", "tolerance"].tolist() == [0.05]  # the recorded parameter


def test_rejudge_table_keeps_extra_columns_and_refuses_claims_it_cannot_find():
    old = _old_table(0.02)
    old.insert(0, "paper", "ParseNet")
    new = rejudge_table(old, pn.claims(0.02))
    assert list(new.columns[:2]) == ["paper", "claim"] and (new["paper"] == "ParseNet").all()
    # the plan the claims were pre-registered under stays: the rule changed, not the plan
    assert (rejudge_table(old.assign(plan_sha256="abc123"), pn.claims(0.02))["plan_sha256"] == "abc123").all()
    with pytest.raises(KeyError, match="not declared"):
        rejudge_table(old.assign(claim="a claim nobody made"), pn.claims(0.02))
    with pytest.raises(ValueError, match="compares"):
        rejudge_table(old.assign(b="someone else"), pn.claims(0.02))


def test_the_committed_quick_tables_are_what_the_current_rule_says():
    """The committed claims tables agree with a re-judgement of their own per-seed values."""
    results = repo_root() / "results"
    if not (results / "tables" / "quick").is_dir():
        pytest.skip("no committed quick results")
    for name, (old, new) in rejudge(results, "quick", write=False).items():
        if new is None:
            continue
        assert list(old["verdict"]) == list(new["verdict"]), name
        for col in ("p", "p_adjusted", "ci_low", "ci_high", "mde"):
            for x, y in zip(old[col], new[col]):
                assert (math.isnan(x) and math.isnan(y)) or x == pytest.approx(y, rel=1e-12), (name, col)
