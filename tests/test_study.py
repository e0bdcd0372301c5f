"""The study protocol (experiments/study.py): data, trial tables, runs with artifacts, summaries, claims."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from dla_repro.analysis.claims import DESCRIPTIVE, INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, RULE
from dla_repro.engine import ClassificationTask, TrainConfig
from dla_repro.experiments import study
from dla_repro.experiments.study import Claim


class _Linear(nn.Module):
    def __init__(self, num_classes: int, width: int = 4):
        super().__init__()
        self.net = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, width), nn.ReLU(),
                                 nn.Linear(width, num_classes))

    def forward(self, x):
        return self.net(x)


def test_synthetic_versions_by_name_v2_training_on_fresh_samples():
    from dla_repro.data.synthetic import SyntheticStream

    v1 = study.load_data("classification", "synthetic", image_size=32, n_train=8, n_val=4)
    v2 = study.load_data("classification", "synthetic-v2", image_size=32, n_train=8, n_val=4)
    assert v1.synthetic.version == "synthetic-v1" and not isinstance(v1.splits.train, SyntheticStream)
    assert v2.synthetic.version == "synthetic-v2" and isinstance(v2.splits.train, SyntheticStream)
    assert "synthetic-v2" in v2.description and "fresh per epoch" in v2.description
    assert v2.num_classes == 16 < v1.num_classes == 32  # v2 has no scale bins
    with pytest.raises(ValueError, match="data_root"):
        study.load_data("classification", "synthetic-v3")


def test_load_data_gives_one_type_for_every_task():
    for task in study.TASKS:
        data = study.load_data(task, image_size=32, n_train=8, n_val=4)
        assert isinstance(data, study.StudyData) and data.task == task and len(data.val) == 4
        assert data.description.startswith("synthetic (") and "8 train / 4 val" in data.description
        assert data.num_classes == len(data.class_names) and data.synthetic is not None
    seg = study.load_data("segmentation", image_size=32, n_train=8, n_val=4)
    assert seg.context_classes and seg.images(2)[0].shape == (32, 32, 3)
    edges = study.load_data("boundary", image_size=32, n_train=8, n_val=4)
    assert len(edges.gts) == 4 and 0 < edges.positive_fraction < 0.5 and edges.num_classes == 2
    with pytest.raises(ValueError, match="task="):
        study.load_data("detection")
    with pytest.raises(ValueError, match="needs data_root"):
        study.load_data("segmentation", "camvid")


def test_trial_table_builds_from_recipes_and_rejects_unknown_names():
    table = {"narrow": {"width": 2}, "wide": {"width": 8}}
    trials = study.trial_table(table, ["wide", "narrow"], _Linear, num_classes=3)
    assert [t.name for t in trials] == ["wide", "narrow"]
    assert trials[0].params == {"width": 8, "num_classes": 3}  # the recipe plus the shared settings
    assert trials[0].build().net[2].out_features == 8 and trials[1].build().net[2].out_features == 2
    assert study.trial_table(table, ["wide"], _Linear, logged={}, num_classes=3)[0].params == {"width": 8}
    with pytest.raises(ValueError, match="unknown trials.*known: narrow, wide"):
        study.trial_table(table, ["wide", "huge"], _Linear, num_classes=3)


def test_run_keeps_scalars_in_rows_artifacts_aside_and_rebuilds_models():
    data = study.load_data("classification", image_size=32, n_train=16, n_val=8)
    trials = study.trial_table({"narrow": {"width": 2}, "wide": {"width": 8}}, ["narrow", "wide"], _Linear,
                               num_classes=data.num_classes)
    seen = []

    def evaluate(model, d):
        seen.append(d)
        with torch.no_grad():
            logits = torch.cat([model(x[None]) for x, _ in (d.val[i] for i in range(len(d.val)))])
        return {"mean_logit": float(logits.mean()), "logits": logits.numpy(), "table": pd.DataFrame({"a": [1]})}

    config = TrainConfig(epochs=1, batch_size=8, optimizer="adamw", lr=1e-2, progress=False)
    result = study.run("toy", trials, data, config, [0, 1], ClassificationTask(), evaluate=evaluate)
    assert all(d is data for d in seen) and len(seen) == 4  # the hook sees the study's data
    assert list(result.runs["trial"]) == ["narrow", "narrow", "wide", "wide"]
    assert result.runs["mean_logit"].notna().all() and "logits" not in result.runs
    assert set(result.artifacts) == {("narrow", 0), ("narrow", 1), ("wide", 0), ("wide", 1)}
    assert result.artifacts[("wide", 1)]["logits"].shape == (8, data.num_classes)
    # a trained model comes back from its recipe and weights, without re-sending any argument
    model = result.model("wide", 1)
    with torch.no_grad():
        x = torch.stack([data.val[i][0] for i in range(len(data.val))])
        again = model(x).numpy()
    np.testing.assert_allclose(again, result.artifacts[("wide", 1)]["logits"], rtol=0, atol=1e-6)
    assert not model.training and model.net[2].out_features == 8
    assert result.values("wide", "mean_logit") == list(result.runs[result.runs.trial == "wide"]["mean_logit"])
    with pytest.raises(KeyError, match="no run for trial 'wide' with seed 7"):
        result.model("wide", 7)


def test_summarize_is_mean_and_sd_over_seeds_in_run_order():
    runs = pd.DataFrame({"trial": ["b", "b", "a"], "seed": [0, 1, 0], "acc": [0.2, 0.4, 0.5], "n": [7, 7, 3]})
    table = study.summarize(runs, ["acc", "missing"], first=["n"])
    assert list(table["trial"]) == ["b", "a"] and list(table["seeds"]) == [2, 1] and list(table["n"]) == [7, 3]
    assert table.loc[0, "acc_mean"] == pytest.approx(0.3) and table.loc[0, "acc_std"] == pytest.approx(math.sqrt(0.02))
    assert math.isnan(table.loc[1, "acc_std"]) and "missing_mean" not in table


def _runs(values: dict[str, list[float]], metric: str = "m") -> pd.DataFrame:
    return pd.DataFrame([{"trial": t, "seed": s, metric: v} for t, vals in values.items() for s, v in enumerate(vals)])


def test_judge_applies_the_shared_rule_and_keeps_per_seed_values():
    runs = _runs({"a": [0.50, 0.52, 0.51], "b": [0.30, 0.31, 0.29], "c": [0.505, 0.515, 0.51]})
    claims = [
        Claim("a beats b", "a", "b", "m", min_effect=0.01),
        Claim("b beats a", "b", "a", "m", min_effect=0.01),
        Claim("a ≈ c", "a", "c", "m", expect="equal", tolerance=0.02),
        Claim("a beats a never-run trial", "a", "zzz", "m"),  # skipped: the trial did not run
        Claim("a beats the baseline", "a", "base", "m", labels=("a", "baseline (fixed)")),
        Claim("on another metric", "a", "b", "other"),  # skipped: not measured
    ]
    verdicts = study.judge(claims, runs, {"base": [0.6, 0.6, 0.6]})
    assert [v.claim for v in verdicts] == ["a beats b", "b beats a", "a ≈ c", "a beats the baseline"]
    assert [v.verdict for v in verdicts] == [REPRODUCED, NOT_REPRODUCED, REPRODUCED, NOT_REPRODUCED]
    assert verdicts[0].values_a == pytest.approx((0.50, 0.52, 0.51)) and verdicts[3].b == "baseline (fixed)"
    # one seed on a side: the spread cannot be judged, whatever the difference
    one = study.judge([Claim("a beats b", "a", "b", "m", min_effect=0.01)], _runs({"a": [0.9], "b": [0.1, 0.1]}))
    assert one[0].verdict == INCONCLUSIVE
    # a metric undefined for one side: inconclusive, saying why, the measured side still reported
    nan = float("nan")
    undefined = study.judge([Claim("lower error", "a", "b", "m", expect="less", undefined="never found it")],
                            _runs({"a": [nan, nan], "b": [0.4, 0.5]}))
    assert undefined[0].verdict == INCONCLUSIVE and undefined[0].n_a == 0
    assert undefined[0].note == "m undefined for a (never found it)" and undefined[0].mean_b == pytest.approx(0.45)
    # several columns: averaged per seed, NaN skipped
    cols = pd.DataFrame({"trial": ["a", "a", "b", "b"], "seed": [0, 1, 0, 1], "x": [0.4, 0.6, 0.0, 0.1],
                         "y": [nan, 0.8, 0.1, 0.1]})
    (v,) = study.judge([Claim("a beats b on x,y", "a", "b", ("x", "y"), label="IoU(x, y)")], cols)
    assert v.values_a == pytest.approx((0.4, 0.7)) and v.metric == "IoU(x, y)"


def test_judge_pairs_by_seed_by_default_and_only_when_possible():
    # a seed effect both trials share: the paired test sees the per-seed gain, Welch's does not
    runs = _runs({"a": [0.61, 0.58, 0.66, 0.60], "b": [0.57, 0.55, 0.63, 0.58]})
    paired, welch = study.judge([Claim("a beats b", "a", "b", "m"),
                                 Claim("a beats b, unpaired", "a", "b", "m", paired=False)], runs)
    assert paired.paired and paired.test == "paired t one-sided" and paired.df == 3 and paired.verdict == REPRODUCED
    assert not welch.paired and welch.test == "welch one-sided" and welch.verdict == INCONCLUSIVE
    # other seeds on one side, or a group without seeds: Welch, and the note says why
    shifted = runs.assign(seed=[0, 1, 2, 3, 0, 1, 2, 5])
    (v,) = study.judge([Claim("a beats b", "a", "b", "m")], shifted)
    assert not v.paired and "seeds differ ([0, 1, 2, 3] vs [0, 1, 2, 5]" in v.note and v.test == "welch one-sided"
    (g,) = study.judge([Claim("a beats base", "a", "base", "m")], runs, {"base": [0.5] * 4})
    assert not g.paired and "no seeds" in g.note
    # a group keyed by seed (values derived per seed from the runs) pairs with a trial, in seed order
    gain = {3: 0.02, 1: 0.03, 0: 0.04, 2: 0.03}
    (k,) = study.judge([Claim("a beats its gain", "a", "gain", "m")], runs, {"gain": pd.Series(gain)})
    assert k.paired and k.values_b == pytest.approx((0.04, 0.03, 0.03, 0.02)) and not k.note
    (k2,) = study.judge([Claim("a beats its gain", "a", "gain", "m")], runs, {"gain": gain})
    assert k2.p == pytest.approx(k.p) and k2.df == 3


def test_judge_adjusts_the_p_values_of_a_family_together():
    runs = _runs({"a": [0.50, 0.56, 0.53], "b": [0.47, 0.50, 0.46]})  # one-sided p 0.036
    alone = study.judge([Claim("a beats b", "a", "b", "m", paired=False)], runs)
    assert alone[0].verdict == REPRODUCED and alone[0].p_adjusted == pytest.approx(0.0361, abs=1e-4)
    both = study.judge([Claim("a beats b", "a", "b", "m", family="F", paired=False),
                        Claim("a beats b again", "a", "b", "m", family="F", paired=False),
                        Claim("a beats b, own family", "a", "b", "m", paired=False)], runs)
    assert [v.verdict for v in both] == [INCONCLUSIVE, INCONCLUSIVE, REPRODUCED]
    assert [v.p_adjusted for v in both] == pytest.approx([0.0723, 0.0723, 0.0361], abs=1e-4)
    assert "Holm" in study.claims_markdown(both).splitlines()[2]


def test_claims_markdown_is_one_table_with_optional_statements():
    verdicts = study.judge([Claim("a beats b", "a", "b", "m", paired=False),
                            Claim("a ≈ b", "a", "b", "m", expect="equal", tolerance=0.5)],
                           _runs({"a": [0.5, 0.6], "b": [0.1, 0.2]}))
    text = study.claims_markdown(verdicts, footer="rule")
    lines = text.splitlines()
    # header, rule, two rows; how to read it (RULE); the footer
    assert lines[0].startswith("| claim |") and len(lines) == 2 + 2 + 2 + 2 and lines[-1] == "rule"
    assert lines[5] == RULE and len(study.claims_markdown(verdicts, rule=False).splitlines()) == 4
    assert "**reproduced**" in lines[2] and "+0.400 [" in lines[2] and "| Welch |" in lines[2]
    assert "| TOST ±0.5, paired |" in lines[3]
    with_paper = study.claims_markdown(verdicts, ["the paper says so", "and this"])
    assert with_paper.splitlines()[0].startswith("| paper | claim |")
    assert with_paper.splitlines()[2].startswith("| the paper says so | a beats b |")
    assert study.claims_markdown([]).startswith("_No claim")


# ------------------------------------------------------------------ pre-registration
def test_preregister_logs_the_plan_on_the_notebook_run_before_any_training():
    from mlflow.tracking import MlflowClient

    from dla_repro import tracking
    from dla_repro.paths import results_dir

    claims = [Claim("wide beats narrow", "wide", "narrow", "mean_logit", min_effect=0.01, family="F", paired=False),
              Claim("wide ≈ narrow", "wide", "narrow", "mean_logit", expect="equal", tolerance=0.5, family="F")]
    run = tracking.start_notebook_run("toy_prereg", {"epochs": 1}, profile="smoke")
    try:
        plan = study.preregister(claims, [0, 1], experiment="toy_prereg", design="narrow vs wide, one sweep")
        client = MlflowClient(tracking.configure())
        logged = client.get_run(run.info.run_id)
        assert plan.run_id == run.info.run_id and logged.data.tags[study.PLAN_TAG] == plan.sha256
        assert {"claims_plan.json", "claims_plan.csv"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
        assert logged.data.params["claims.n"] == "2" and logged.data.params["claims.c2.expect"] == "equal"
        assert logged.data.params["claims.c1.min_effect"] == "0.01" and logged.data.params["claims.seeds"] == "[0, 1]"
        saved = client.download_artifacts(run.info.run_id, "claims_plan.json")
        content = json.loads(Path(saved).read_text())
        assert content["sha256"] == plan.sha256 and [c["text"] for c in content["claims"]] == [c.text for c in claims]
        table = pd.read_csv(results_dir() / "tables" / "smoke" / "toy_prereg_claims_plan.csv")
        assert list(table["id"]) == ["c1", "c2"] and list(table["test"]) == ["one-sided Welch t", "TOST ±0.5, paired t by seed"]
        assert (table["multiplicity"] == "Holm over the 2 claims of 'F'").all() and not plan.notes

        data = study.load_data("classification", image_size=32, n_train=16, n_val=8)
        trials = study.trial_table({"narrow": {"width": 2}, "wide": {"width": 8}}, ["narrow", "wide"], _Linear,
                                   num_classes=data.num_classes)
        config = TrainConfig(epochs=1, batch_size=8, optimizer="adamw", lr=1e-2, progress=False)

        def evaluate(model, d):
            with torch.no_grad():
                return {"mean_logit": float(torch.cat([model(d.val[i][0][None]) for i in range(len(d.val))]).mean())}

        result = study.run("toy", trials, data, config, [0, 1], ClassificationTask(), evaluate=evaluate)
        # every training started after the plan was logged
        logged_at = int(client.get_run(run.info.run_id).data.tags[study.PLAN_TIME_TAG])
        fits = client.search_runs([run.info.experiment_id], "tags.kind = 'fit'")
        assert len(fits) == 4 and all(f.info.start_time >= logged_at for f in fits)

        verdicts = study.judge_plan(plan, result.runs)
        assert [v.claim for v in verdicts] == [c.text for c in claims]
        assert {v.plan_sha256 for v in verdicts} == {client.get_run(run.info.run_id).data.tags[study.PLAN_TAG]}
        # the same plan again (a resumed execution) is accepted; another plan, or a first plan after training, is not
        assert study.preregister(claims, [0, 1], experiment="toy_prereg", design="narrow vs wide, one sweep").sha256 \
            == plan.sha256
        with pytest.raises(study.PlanError, match="already holds another claims plan"):
            study.preregister(claims[:1], [0, 1], experiment="toy_prereg")
        client.delete_tag(run.info.run_id, study.PLAN_TAG)
        with pytest.raises(study.PlanError, match="already has trainings.*before training starts"):
            study.preregister(claims, [0, 1], experiment="toy_prereg")
    finally:
        tracking.end_notebook_run()


def test_judging_a_claim_that_was_not_preregistered_is_an_error():
    runs = _runs({"a": [0.50, 0.52, 0.51], "b": [0.30, 0.31, 0.29]})
    declared = Claim("a beats b", "a", "b", "m", min_effect=0.01)
    plan = study.preregister([declared], [0, 1, 2], experiment="toy", log=False)
    (v,) = study.judge([declared], runs, plan=plan)
    assert v.plan_sha256 == plan.sha256 and v.verdict == REPRODUCED
    assert study.judge([declared], runs)[0].plan_sha256 == ""  # without a plan: as before
    with pytest.raises(study.PlanError, match="'b beats a' \\(not in the plan\\)"):
        study.judge([declared, Claim("b beats a", "b", "a", "m")], runs, plan=plan)
    moved = Claim("a beats b", "a", "b", "m", min_effect=0.05)  # the margin changed after the plan
    with pytest.raises(study.PlanError, match="declared differently in the plan.*commit"):
        study.judge([moved], runs, plan=plan)
    other = study.preregister([moved], [0, 1, 2], experiment="toy", log=False)
    assert other.sha256 != plan.sha256
    # a plan outside an MLflow run cannot be logged
    with pytest.raises(study.PlanError, match="no active MLflow run"):
        study.preregister([declared], [0, 1], experiment="toy")


def test_invalid_plans_are_refused_with_every_problem_named():
    bad = [Claim("no metric", "a", "b", ""),
           Claim("odd direction", "a", "b", "m", expect="bigger"),
           Claim("≈ without margin", "a", "b", "m", expect="equal"),
           Claim("negative effect", "a", "b", "m", min_effect=-0.1),
           Claim("one side", "a", "a", "m"),
           Claim("twice", "a", "b", "m"), Claim("twice", "a", "c", "m")]
    with pytest.raises(study.PlanError) as err:
        study.preregister(bad, [0, 1], experiment="toy", log=False)
    text = str(err.value)
    for needle in ("'no metric': no metric", "expect='bigger'", "min_effect=-0.1 must be ≥ 0",
                   "'≈ without margin': expect='equal' needs a tolerance", "two different names",
                   "'twice' is declared twice"):
        assert needle in text, needle
    with pytest.raises(study.PlanError, match="no seeds"):
        study.preregister([Claim("a beats b", "a", "b", "m")], [], experiment="toy", log=False)
    one = study.preregister([Claim("a beats b", "a", "b", "m")], [0], experiment="toy", log=False)
    assert one.notes == (study.ONE_SEED_NOTE,) and "one seed: no verdict possible" in one.summary()


def test_paper_modules_declare_valid_plans():
    from dla_repro.experiments.dla import boundaries, classification, segmentation
    from dla_repro.experiments.parsenet import global_context

    spec = classification.ModelSpec("dla34", 32, (8, 8, 16, 24, 48, 96), (1, 1, 1, 2, 4, 1))
    declared = {
        "dla_classification": classification.claims(spec, classification.learned_floor(32)),
        "dla_segmentation": segmentation.claims(["line", "dot"], ["background", "line", "dot"]),
        "dla_boundaries": boundaries.claims(["ida_up:10", "fcn:10", "ida_up:1"], ["Sobel"]),
        "parsenet": global_context.claims(0.02),
    }
    for name, claims in declared.items():
        plan = study.preregister(claims, [0, 1], experiment=name, log=False)
        assert len(plan.table) == len(claims) > 0 and plan.sha256 == study.preregister(
            claims, [0, 1], experiment=name, log=False).sha256, name


def test_a_descriptive_claim_is_measured_but_never_decided_and_leaves_its_family():
    runs = pd.DataFrame({"trial": ["a"] * 5 + ["b"] * 5 + ["c"] * 5, "seed": list(range(5)) * 3,
                         "acc": [0.8, 0.82, 0.81, 0.83, 0.8] + [0.5, 0.52, 0.51, 0.5, 0.53] + [0.6, 0.61, 0.6, 0.62, 0.6]})
    decided = Claim("a beats b", "a", "b", "acc", family="f")
    other = Claim("a beats c", "a", "c", "acc", family="f")
    described = Claim("a beats b", "a", "b", "acc", family="f", descriptive="short budget")
    judged = {v.claim: v for v in study.judge([decided, other], runs)}
    assert judged["a beats b"].verdict == REPRODUCED
    (v, w) = study.judge([described, other], runs)
    # the same numbers, no verdict, the reason declared before training as its note
    assert v.verdict == DESCRIPTIVE and "short budget" in v.note and "short budget" in v.reading
    assert (v.delta, v.ci_low, v.ci_high, v.mde) == (judged["a beats b"].delta, judged["a beats b"].ci_low,
                                                    judged["a beats b"].ci_high, judged["a beats b"].mde)
    # Holm: decided, "a beats b" is adjusted over a family of two; descriptive, it is no test and leaves the family
    assert min(x.p_adjusted for x in judged.values()) == pytest.approx(2 * min(x.p for x in judged.values()))
    assert v.p_adjusted == pytest.approx(v.p) and w.p_adjusted == pytest.approx(w.p)
    # the plan shows and hashes the field only when set: plans without one keep their old hash
    plain = study.preregister([decided], [0, 1, 2, 3, 4], experiment="x", log=False)
    marked = study.preregister([described], [0, 1, 2, 3, 4], experiment="x", log=False)
    assert "descriptive" not in json.dumps(plain.content()) and "short budget" in json.dumps(marked.content())
    assert plain.sha256 != marked.sha256
    assert list(marked.table["descriptive"]) == ["short budget"] and "1 of them descriptive" in marked.summary()
    assert marked.params()["claims.c1.descriptive"] == "short budget" and "claims.c1.descriptive" not in plain.params()
