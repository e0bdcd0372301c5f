"""Re-judging committed claims tables (dla_repro.experiments.rejudge, scripts/rejudge.py) without retraining."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import math
import sys
import types

import pandas as pd
import pytest
import yaml

from dla_repro.analysis.claims import DESCRIPTIVE, REPRODUCED, claims_table, compare
from dla_repro.analysis.report import collect_claims
from dla_repro.experiments import rejudge as rejudge_module
from dla_repro.experiments import study
from dla_repro.experiments.dla import classification as exp
from dla_repro.experiments.parsenet import global_context as pn
from dla_repro.experiments.rejudge import NOT_REJUDGED, rejudge, rejudge_from_runs, rejudge_table, runs_groups
from dla_repro.paths import repo_root, results_dir
from dla_repro.pipeline import load_pipeline

OLD_COLUMNS = ["claim", "metric", "a", "b", "mean_a", "mean_b", "delta", "se", "n_a", "n_b", "expect", "verdict",
               "note", "values_a", "values_b"]


def _runs() -> pd.DataFrame:
    values = {"fcn": [0.30, 0.31, 0.29], "early_multi": [0.20, 0.21, 0.19], "early_multi_l2": [0.40, 0.41, 0.39],
              "early_l2": [0.40, 0.41, 0.39], "late_l2": [0.405, 0.395, 0.40]}
    nan = float("nan")
    ctx = {"fcn": [0.4, 0.45, 0.5], "early_multi": [0.3] * 3, "early_multi_l2": [0.2] * 3, "early_l2": [nan] * 3,
           "late_l2": [0.1] * 3}
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
    # the old table does not record that both sides ran the same seeds: Welch's test, and the note says so
    unpaired = [dataclasses.replace(c, paired=False) for c in pn.claims(equal_tolerance=0.05)]
    expected = claims_table(study.judge(unpaired, _runs()))
    got = out["parsenet"][1]
    pd.testing.assert_frame_equal(got.drop(columns="note"), expected.drop(columns="note"))
    two_sided = got["n_a"].gt(0) & got["n_b"].gt(0)
    assert got.loc[two_sided, "note"].str.contains("not paired: the table does not record").all()
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


def test_a_claim_declared_descriptive_is_rejudged_as_judge_gives_it():
    old = _old_table(0.02)
    marked = [dataclasses.replace(c, descriptive="short budget") if i == 0 else c
              for i, c in enumerate(pn.claims(0.02))]
    new = rejudge_table(old, marked)
    assert new["verdict"].iloc[0] == DESCRIPTIVE and "short budget" in new["note"].iloc[0]
    assert (new["verdict"].iloc[1:] != DESCRIPTIVE).all()
    assert new["delta"].iloc[0] == pytest.approx(old["delta"].iloc[0])  # measured all the same


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


def _without_values(table: pd.DataFrame) -> pd.DataFrame:
    """A claims table as the old rule wrote it before per-seed values were kept: its own verdicts, no values."""
    old = table[[c for c in OLD_COLUMNS if c not in ("values_a", "values_b")]].copy()
    old["verdict"] = REPRODUCED
    return old


def test_a_table_without_per_seed_values_is_rejudged_from_the_runs_table_beside_it():
    tables = results_dir() / "tables" / "quick"
    tables.mkdir(parents=True)
    runs = _runs()
    _without_values(claims_table(study.judge(pn.claims(0.05), runs))).to_csv(tables / "parsenet_claims.csv",
                                                                                index=False)
    runs.iloc[::-1].to_csv(tables / "parsenet_runs.csv", index=False)  # rows out of seed order
    manifest = {"notebooks": {"parsenet": {"parameters": {"profile": "quick", "equal_tolerance": 0.05}}}}
    (results_dir() / "manifest_quick.json").write_text(json.dumps(manifest))

    old, new = rejudge(results_dir(), "quick")["parsenet"]
    assert "values_a" not in old
    pd.testing.assert_frame_equal(new, claims_table(study.judge(pn.claims(0.05), runs)))
    # the same verdict as judging the per-seed values directly, seeds in increasing order
    row = new[new["claim"] == "early fusion needs normalisation (multi-layer, no batch norm)"].iloc[0]
    direct = compare(row["claim"], [0.40, 0.41, 0.39], [0.20, 0.21, 0.19], metric="eval_miou",
                     names=("early_multi_l2", "early_multi"), min_effect=pn.MIN_EFFECT, paired=True)  # seeds agree
    assert (row["verdict"], row["p"]) == (direct.verdict, pytest.approx(direct.p))
    assert (row["values_a"], row["values_b"]) == ((0.40, 0.41, 0.39), (0.20, 0.21, 0.19))  # seeds 0, 1, 2
    assert REPRODUCED != new["verdict"].iloc[1]  # the old verdicts are not kept
    assert list(pd.read_csv(tables / "parsenet_claims.csv")["verdict"]) == list(new["verdict"])  # written


def test_a_claim_the_runs_table_cannot_give_back_is_kept_and_marked_not_rejudged():
    runs = _runs()
    old = _without_values(claims_table(study.judge(pn.claims(0.05), runs)))
    old.insert(0, "paper", "ParseNet")
    missing = "global context helps the context classes (their mIoU)"
    new = rejudge_from_runs(old, pn.claims(0.05), runs.drop(columns="eval_miou_context"),
                            source="parsenet_runs.csv")
    assert list(new["claim"]) == list(old["claim"]) and (new["paper"] == "ParseNet").all()
    kept = new[new["claim"] == missing].iloc[0]
    assert kept["verdict"] == NOT_REJUDGED and math.isnan(kept["p"])
    assert kept["note"].startswith(f"{NOT_REJUDGED}: parsenet_runs.csv has no column eval_miou_context")
    assert "old rule said: reproduced" in kept["note"]
    assert kept["mean_a"] == old.loc[old["claim"] == missing, "mean_a"].iloc[0]  # its old numbers stay
    others = new[new["claim"] != missing].reset_index(drop=True)
    expected = claims_table(study.judge(pn.claims(0.05), runs.drop(columns="eval_miou_context")))
    assert list(others["verdict"]) == list(expected["verdict"])
    # values the table did not count (another runs table) are not judged either
    other_runs = runs[~((runs["trial"] == "fcn") & (runs["seed"] == 2))]
    counted = rejudge_from_runs(old, pn.claims(0.05), other_runs)
    assert (counted.loc[counted["b"] == "fcn", "verdict"] == NOT_REJUDGED).all()
    assert (counted.loc[counted["b"] != "fcn", "verdict"] != NOT_REJUDGED).all()


def test_classification_from_runs_is_judge_claims_with_its_residual_gains_and_floor():
    spec = exp.ModelSpec("dla34", 10, (8, 8, 16, 24, 48, 96), (1, 1, 1, 2, 4, 1))
    top1 = {"agg=full": [0.6, 0.62, 0.64], "agg=none": [0.5, 0.55, 0.5], "agg=ida": [0.58, 0.6, 0.61],
            "agg=hda": [0.5, 0.52, 0.49], "deep/residual=on": [0.5, 0.52, 0.55],
            "deep/residual=off": [0.4, 0.45, 0.41], "shallow/residual=on": [0.6, 0.58, 0.63],
            "shallow/residual=off": [0.6, 0.62, 0.64], "kernel=1x1": [0.6, 0.62, 0.64],
            "kernel=3x3": [0.61, 0.62, 0.63]}
    runs = pd.DataFrame([{"trial": t, "seed": s, exp.METRIC: v} for t, vs in top1.items()
                         for s, v in reversed(list(enumerate(vs)))])  # rows out of seed order
    floor = exp.learned_floor(10)
    expected = exp.claims_frame(exp.judge_claims(exp.Results(runs=runs), spec, floor=floor))
    old = _without_values(expected).assign(ablation=expected["ablation"], paper=expected["paper"])
    old = old[["ablation", "paper", *[c for c in old.columns if c not in ("ablation", "paper")]]]
    groups = runs_groups("dla_classification", runs)  # the module's hook, found through pipeline.yaml
    assert groups == exp.runs_groups(runs) and set(groups) == {"deep gain", "shallow gain"}
    new = rejudge_from_runs(old, exp.claims(spec, floor), runs, groups)
    pd.testing.assert_frame_equal(new, expected)


def test_every_notebook_that_writes_claims_names_a_module_with_the_rejudge_hook():
    """pipeline.yaml's ``module`` is how re-judging finds a paper: every notebook writing a claims table has one,
    importable and exposing ``rejudge_claims(params, tables, table)``; no other notebook has one."""
    specs = load_pipeline().notebooks
    writers = {spec.name for spec in specs if f"{spec.experiment}_claims.csv" in spec.path.read_text()}
    assert writers == {"dla_classification", "dla_segmentation", "dla_boundaries", "parsenet", "dynopool", "gald"}
    assert {spec.name for spec in specs if spec.module} == writers
    for spec in specs:
        if not spec.module:
            continue
        module = importlib.import_module(spec.module)
        assert rejudge_module.paper_module(spec.experiment) is module
        hook = getattr(module, "rejudge_claims", None)
        assert callable(hook), spec.module
        assert list(inspect.signature(hook).parameters) == ["params", "tables", "table"], spec.module
        groups = getattr(module, "runs_groups", None)
        assert groups is None or list(inspect.signature(groups).parameters) == ["runs"], spec.module
    committed = repo_root() / "results" / "tables" / "quick"
    for path in sorted(committed.glob("*_claims.csv")):  # every committed table can be re-judged
        assert rejudge_module.paper_module(path.name[: -len("_claims.csv")])
    for name in ("DECLARED", "GROUPS"):
        assert not hasattr(rejudge_module, name)  # no per-paper table in the shared code


@pytest.fixture
def toy_pipeline(tmp_path, monkeypatch):
    """A repository whose pipeline.yaml lists a toy paper's notebook (module ``toy_paper_gates``, not on disk)."""
    def rejudge_claims(params, tables, table):
        claims = [study.Claim("gates help", "gated", "plain", "eval_miou", min_effect=params["min_effect"])]
        return claims, lambda v: v

    toy = types.ModuleType("toy_paper_gates")
    toy.rejudge_claims = rejudge_claims
    toy.runs_groups = lambda runs: {"gain": [1.0, 2.0]}
    monkeypatch.setitem(sys.modules, "toy_paper_gates", toy)
    monkeypatch.setitem(sys.modules, "toy_paper_hookless", types.ModuleType("toy_paper_hookless"))
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "pipeline.yaml").write_text(yaml.safe_dump({
        "profiles": {p: {"defaults": {}} for p in ("smoke", "quick", "paper")},
        "notebooks": [
            {"name": "toy_gates", "path": "toy/01_gates.ipynb", "experiment": "toy_gates", "paper": "Toy",
             "module": "toy_paper_gates"},
            {"name": "tour", "path": "00_tour.ipynb", "experiment": "tour"},
            {"name": "hookless", "path": "toy/02.ipynb", "experiment": "hookless", "module": "toy_paper_hookless"},
            {"name": "ghost", "path": "toy/03.ipynb", "experiment": "ghost", "module": "toy_paper.missing"}]}))
    monkeypatch.setenv("DLA_REPRO_ROOT", str(tmp_path))
    return toy


def test_a_new_papers_module_is_found_through_pipeline_yaml_alone(toy_pipeline):
    claims, post = rejudge_module.declared_claims("toy_gates", {"min_effect": 0.03}, results_dir(), pd.DataFrame())
    assert [(c.text, c.min_effect) for c in claims] == [("gates help", 0.03)] and post("v") == "v"
    assert runs_groups("toy_gates", pd.DataFrame()) == {"gain": [1.0, 2.0]}
    with pytest.raises(KeyError, match="notebook 'tour' of pipeline.yaml names no `module:`"):
        rejudge_module.declared_claims("tour", {}, results_dir(), pd.DataFrame())
    with pytest.raises(KeyError, match="toy_paper_hookless .*has no rejudge_claims"):
        rejudge_module.declared_claims("hookless", {}, results_dir(), pd.DataFrame())
    with pytest.raises(KeyError, match="names module 'toy_paper.missing', which does not exist"):
        runs_groups("ghost", pd.DataFrame())
    with pytest.raises(KeyError, match="no notebook of pipeline.yaml writes"):
        runs_groups("nobody", pd.DataFrame())
