"""DLA classification experiments (notebook dla/02_classification): trials, reuse, claims, figures, paper profile."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

matplotlib.use("Agg")

import mlflow  # noqa: E402

from dla_repro import cli, tracking  # noqa: E402
from dla_repro.analysis.claims import DESCRIPTIVE, INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED  # noqa: E402
from dla_repro.engine import TrainConfig  # noqa: E402
from dla_repro.experiments import study  # noqa: E402
from dla_repro.experiments.dla import classification as exp  # noqa: E402
from dla_repro.models.dla import create_dla  # noqa: E402
from dla_repro.paths import results_dir  # noqa: E402

TINY = exp.ModelSpec("dla34", num_classes=32, channels=(8, 8, 16, 24, 48, 96), deep_levels=(1, 1, 1, 1, 4, 1))


def test_aggregation_trials_match_parameters_and_keep_full_as_is():
    planned = exp.ablation_trials("aggregation", TINY)
    assert [p.trial.name for p in planned] == ["agg=none", "agg=ida", "agg=hda", "agg=full"]
    counts = {p.trial.name: sum(q.numel() for q in p.trial.build().parameters()) for p in planned}
    full = counts["agg=full"]
    assert all(abs(n / full - 1) <= 0.05 for n in counts.values()), counts
    assert planned[-1].trial.params["width_mult"] == 1.0
    assert {p.trial.params["aggregation"] for p in planned} == {"none", "ida", "hda", "full"}


def _n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_every_arm_of_every_ablation_starts_at_chance_loss():
    """The study's zero classifier: cross-entropy at initialisation is ln C for every trial, whatever its body."""
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 5, 17, 31])
    for ablation in exp.ABLATIONS:
        for p in exp.ablation_trials(ablation, TINY):
            assert p.trial.params["head_init_scale"] == 0.0
            torch.manual_seed(0)
            model = p.trial.build()
            for train in (True, False):
                with torch.no_grad():
                    loss = torch.nn.functional.cross_entropy(model.train(train)(x), y).item()
                assert abs(loss - math.log(32)) <= 1e-4, (p.trial.name, train, loss)
    # with the official init the arms would not start together
    official = dataclasses.replace(TINY, head_init_scale=1.0)
    losses = []
    for p in exp.ablation_trials("aggregation", official, modes=["none", "full"]):
        torch.manual_seed(0)
        with torch.no_grad():
            losses.append(torch.nn.functional.cross_entropy(p.trial.build()(x), y).item())
    assert min(losses) > math.log(32) + 0.1


def test_every_claim_between_two_trials_is_matched_within_the_declared_tolerance():
    trials = {p.trial.name: p for ablation in exp.ABLATIONS for p in exp.ablation_trials(ablation, TINY)}
    counts = {name: _n_params(p.trial.build()) for name, p in trials.items()}
    declared = exp.claims(TINY)
    between_trials = [c for c in declared if c.a in trials and c.b in trials]
    assert len(between_trials) == 6 and all(c.matched == exp.MATCH_TOLERANCE == 0.05 for c in between_trials)
    assert [c.matched for c in declared if c not in between_trials] == [None]  # the residual gains: groups
    for c in between_trials:
        na, nb = counts[c.a], counts[c.b]
        assert abs(na - nb) / max(na, nb) <= c.matched, (c.text, na, nb)
    # the residual term adds no parameter; the 3×3 arm is narrowed (one width multiplier), the 1×1 arm is full
    assert counts["deep/residual=on"] == counts["deep/residual=off"] != counts["shallow/residual=on"]
    k1, k3 = trials["kernel=1x1"].trial, trials["kernel=3x3"].trial
    assert k1.params["width_mult"] == 1.0 and k3.params["width_mult"] < 1.0 and k3.params["root_kernel"] == 3
    assert k1.params["channels"] == "8,8,16,24,48,96" and k3.params["channels"] != k1.params["channels"]
    assert trials["kernel=3x3"].trial.build().level5.root.conv.kernel_size == (3, 3)
    same_widths_3x3 = _n_params(create_dla("dla34", **{**TINY.base, "root_kernel": 3}))
    assert same_widths_3x3 / counts["kernel=1x1"] > 1.3  # why the 3×3 arm is narrowed


def test_an_arm_that_cannot_be_matched_stops_the_ablation_before_training():
    # the compact ResNeXt variant's widths move in steps of 32: no 3×3 arm within ±5 % of its 1×1 DLA
    with pytest.raises(ValueError, match=r"dla46x_c aggregation='full'.*tolerance 5%"):
        exp.ablation_trials("kernel", exp.ModelSpec("dla46x_c", num_classes=1000))


def test_claims_label_the_paper_comparison_and_the_extension():
    statements = {c.b: c.statement for c in exp.claims(TINY) if c.family == "aggregation"}
    assert "primary, paper-faithful" in statements["agg=none"] and "extension" not in statements["agg=none"]
    for side in ("agg=ida", "agg=hda"):
        assert statements[side].startswith("this project's extension (the paper defines no IDA-only / HDA-only")
    assert {c.family for c in exp.claims(TINY) if c.b.startswith("agg=")} == {"aggregation"}  # one Holm family


def test_claim_arms_hook_is_tiny_and_builds_the_notebooks_trials():
    arms = exp.claim_arms()
    assert tuple(arms.example.shape) == (2, 3, 32, 32)
    assert [c.text for c in arms.claims] == [c.text for c in exp.claims(exp.ARMS_SPEC)]
    named = {side for c in arms.claims for side in (c.a, c.b)} - {"deep gain", "shallow gain"}
    assert named <= set(arms.build)
    for name, planned in ((p.trial.name, p) for a in exp.ABLATIONS for p in exp.ablation_trials(a, exp.ARMS_SPEC)):
        # the same models as the notebook's trials, but for the head's init (zero heads all output 0)
        model, ours = arms.build[name](), planned.trial.build()
        assert model.dla_config == {**ours.dla_config, "head_init_scale": 1.0}
        assert _n_params(model) == _n_params(ours)
    assert study.arm_problems(arms) == []


def test_residual_trials_compare_a_shallow_and_a_deep_tree_and_share_the_baseline():
    res = {p.trial.name: p for p in exp.ablation_trials("residual", TINY)}
    assert set(res) == {"shallow/residual=off", "shallow/residual=on", "deep/residual=off", "deep/residual=on"}
    assert res["shallow/residual=off"].trial.params["depth"] < 4 <= res["deep/residual=on"].trial.params["depth"]
    deep = res["deep/residual=on"].trial.build()
    assert deep.dla_config["levels"] == (1, 1, 1, 1, 4, 1) and deep.dla_config["residual_root"]
    full = exp.ablation_trials("aggregation", TINY)[-1]
    k1 = exp.ablation_trials("kernel", TINY)[0]
    # the same model under three names: trained once
    assert full.key == res["shallow/residual=off"].key == k1.key
    assert len({p.key for p in res.values()}) == 4
    with pytest.raises(ValueError, match="unknown ablation"):
        exp.ablation_trials("depth", TINY)


def test_model_spec_and_data_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown DLA variant"):
        exp.ModelSpec("dla35")
    with pytest.raises(ValueError, match="6 widths"):
        exp.ModelSpec(channels=(8, 16))
    with pytest.raises(ValueError, match="expected 'synthetic'"):
        study.load_data("classification", "mnist", "x")
    with pytest.raises(ValueError, match="needs data_root"):
        study.load_data("classification", "imagefolder", "")
    with pytest.raises(FileNotFoundError, match="train"):
        study.load_data("classification", "imagefolder", str(tmp_path))


def test_run_ablation_trains_each_model_once_and_nests_runs():
    data = study.load_data("classification", image_size=32, n_train=16, n_val=8)
    assert data.num_classes == 32 and "32px" in data.description
    config = TrainConfig(epochs=1, batch_size=8, optimizer="adamw", lr=1e-3, schedule="constant", progress=False)
    with mlflow.start_run(experiment_id=tracking.get_or_create_experiment("t")) as parent:
        results = exp.run_ablation("aggregation", TINY, data, config, [0, 1], modes=["none", "full"])
        results = exp.run_ablation("kernel", TINY, data, config, [0, 1], results)
    runs = results.runs
    assert len(runs) == 8 and set(runs["ablation"]) == {"aggregation", "kernel"}
    reused = runs[runs["reused_from"].notna()]
    assert list(reused["trial"]) == ["kernel=1x1", "kernel=1x1"] and set(reused["reused_from"]) == {"agg=full"}
    full = runs[runs["trial"] == "agg=full"].set_index("seed")["val_top1"]
    assert (reused.set_index("seed")["val_top1"] == full).all()
    assert len(results.history) == 8 and set(results.history["config"]) == {"none", "full", "1×1 node", "3×3 node"}
    # 6 trained runs (not 8), each nested under a sweep run nested under the notebook run, all in its experiment
    in_experiment = [parent.info.experiment_id]
    children = mlflow.search_runs(in_experiment, filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 2 and set(children["tags.mlflow.runName"]) == {"dla_aggregation", "dla_kernel"}
    trained = mlflow.search_runs(in_experiment, filter_string="tags.kind != 'sweep'")
    trained = trained[trained["run_id"] != parent.info.run_id]
    assert len(trained) == 6 and set(trained["tags.mlflow.parentRunId"]) == set(children["run_id"])
    assert mlflow.search_runs(["0"]).empty  # nothing in Default
    table = exp.summary(results)
    assert list(table["trial"]) == ["agg=none", "agg=full", "kernel=1x1", "kernel=3x3"]


def _fake(values: dict[tuple[str, str], list[float]]) -> exp.Results:
    rows, hist = [], []
    for (ablation, trial), vals in values.items():
        for seed, v in enumerate(vals):
            extra = {}
            if ablation == "residual":
                extra = {"tree": trial.split("/")[0], "depth": 4 if trial.startswith("deep") else 2}
            rows.append({"ablation": ablation, "trial": trial, "config": trial, "seed": seed, "n_params": 1000,
                         "val_top1": v, "train_seconds": 1.0, **extra})
            for epoch in range(2):
                hist.append({"ablation": ablation, "trial": trial, "config": trial, "seed": seed, "epoch": epoch,
                             "val_top1": v * (epoch + 1) / 2, "train_loss": 3.0 - epoch})
    return exp.Results(pd.DataFrame(rows), pd.DataFrame(hist))


def test_claims_follow_the_numbers():
    results = _fake({
        ("aggregation", "agg=none"): [0.20, 0.22, 0.21],
        ("aggregation", "agg=ida"): [0.40, 0.42, 0.41],  # beats full: not reproduced
        ("aggregation", "agg=hda"): [0.30, 0.33, 0.27],  # overlaps: inconclusive
        ("aggregation", "agg=full"): [0.30, 0.31, 0.32],
        ("residual", "shallow/residual=off"): [0.30, 0.31, 0.32],
        ("residual", "shallow/residual=on"): [0.25, 0.27, 0.26],
        ("residual", "deep/residual=off"): [0.30, 0.31, 0.32],
        ("residual", "deep/residual=on"): [0.40, 0.42, 0.41],
        ("kernel", "kernel=1x1"): [0.30, 0.31, 0.32],
        ("kernel", "kernel=3x3"): [0.302, 0.311, 0.320],
    })
    judged = exp.judge_claims(results, TINY)
    claims = exp.claims_frame(judged)
    got = dict(zip(claims["claim"], claims["verdict"]))
    assert got["full DLA (IDA+HDA) beats none at matched params"] == REPRODUCED
    assert got["full DLA (IDA+HDA) beats ida at matched params"] == NOT_REPRODUCED
    assert got["full DLA (IDA+HDA) beats hda at matched params"] == INCONCLUSIVE
    assert got["residual node helps the deep tree (depth 4)"] == REPRODUCED
    assert got["residual node does not help the shallow tree (depth 2)"] == REPRODUCED
    assert got["residual gain is larger for the deep tree than for the shallow one"] == REPRODUCED
    assert claims.iloc[-1]["verdict"] == REPRODUCED and claims.iloc[-1]["ablation"] == "kernel"
    assert claims.iloc[0]["paper"].startswith("IDA and HDA together")
    text = exp.claims_markdown(judged, "ctx")
    assert "ctx" in text and text.count("\n| ") == len(claims) + 1 and "not reproduced" in text
    # one seed: no spread, so nothing is called
    one = _fake({("aggregation", "agg=none"): [0.1], ("aggregation", "agg=full"): [0.9]})
    assert [v.verdict for _, v in exp.judge_claims(one, TINY)] == [INCONCLUSIVE]
    assert exp.claims_markdown(exp.judge_claims(exp.Results(), TINY)).startswith("No ablation ran")


def test_models_that_did_not_learn_make_claims_inconclusive():
    floor = exp.learned_floor(32)  # twice chance: 0.0625
    results = _fake({
        ("aggregation", "agg=hda"): [0.035, 0.040, 0.038],  # at chance
        ("aggregation", "agg=full"): [0.30, 0.31, 0.32],
        ("aggregation", "agg=none"): [0.20, 0.22, 0.21],
        ("residual", "shallow/residual=off"): [0.30, 0.31, 0.32],
        ("residual", "shallow/residual=on"): [0.25, 0.27, 0.26],
        ("residual", "deep/residual=off"): [0.03, 0.031, 0.032],
        ("residual", "deep/residual=on"): [0.40, 0.42, 0.41],
    })
    without = {v.claim: v.verdict for _, v in exp.judge_claims(results, TINY)}
    judged = exp.judge_claims(results, TINY, floor=floor)
    claims = exp.claims_frame(judged)
    got = dict(zip(claims["claim"], claims["verdict"]))
    assert without["full DLA (IDA+HDA) beats hda at matched params"] == REPRODUCED
    assert got["full DLA (IDA+HDA) beats hda at matched params"] == INCONCLUSIVE
    assert got["full DLA (IDA+HDA) beats none at matched params"] == REPRODUCED  # both learned
    assert got["residual node helps the deep tree (depth 4)"] == INCONCLUSIVE
    assert got["residual gain is larger for the deep tree than for the shallow one"] == INCONCLUSIVE
    assert got["residual node does not help the shallow tree (depth 2)"] == REPRODUCED
    notes = claims.set_index("claim")["note"]
    assert "hda at or below 0.0625" in notes["full DLA (IDA+HDA) beats hda at matched params"]
    # judged under the pre-registered plan: the same verdicts, each with the plan's hash; another floor is a change
    plan = study.preregister(exp.claims(TINY, floor), [0, 1, 2], experiment="dla_classification", log=False)
    planned = exp.judge_claims(results, TINY, floor=floor, plan=plan)
    assert [v.verdict for _, v in planned] == [v.verdict for _, v in judged]
    assert {v.plan_sha256 for _, v in planned} == {plan.sha256}
    with pytest.raises(study.PlanError, match="declared differently in the plan"):
        exp.judge_claims(results, TINY, plan=plan)
    assert "deep/off" in notes["residual gain is larger for the deep tree than for the shallow one"]
    assert "did not learn" in exp.claims_markdown(judged)


@pytest.mark.notebook
def test_wrong_data_root_layout_is_a_clear_error_through_the_cli(tmp_path, capsys):
    root = tmp_path / "not_imagenet"
    (root / "images").mkdir(parents=True)  # no train/ or val/
    code = cli.main(["run", "dla_classification", "--profile", "paper", "--data-root", str(root), "-p", "epochs=1"])
    out = capsys.readouterr().out
    assert code == 1
    assert "dla_classification failed in cell" in out and "DatasetLayoutError" in out
    assert str(root / "train") in out and "Expected layout" in out and "<class_a>/" in out


def test_figures_and_paper_table():
    results = _fake({("aggregation", "agg=none"): [0.2, 0.25], ("aggregation", "agg=full"): [0.3, 0.32],
                     ("kernel", "kernel=1x1"): [0.3, 0.32], ("kernel", "kernel=3x3"): [0.31, 0.3]})
    fig = exp.plot_accuracy_vs_params(results)
    dotted = lambda ax: sorted(line.get_ydata()[0] for line in ax.lines if line.get_linestyle() == ":")  # noqa: E731
    assert len(fig.axes) == 2 and fig.axes[0].get_title().startswith("A:") and dotted(fig.axes[0]) == []
    fig = exp.plot_accuracy_vs_params(results, num_classes=32)
    assert dotted(fig.axes[0]) == pytest.approx([1 / 32, 2 / 32])
    fig = exp.plot_training_curves(results)
    assert len(fig.axes) == 4
    table = exp.paper_vs_ours(results, TINY, "synthetic")
    assert len(table) == 4 and (table["paper_params_m"] == 15.74).all() and not table["comparable"].any()
    assert np.isclose(table.iloc[1]["ours_top1_mean"], 0.31)


def _write_imagefolder(root, classes=("cat", "dog"), per_class=3):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            folder = root / split / c
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")


@pytest.mark.slow
@pytest.mark.notebook
def test_notebook_runs_in_the_paper_profile_on_an_imagefolder(tmp_path, capsys):
    _write_imagefolder(tmp_path / "imagenet")
    code = cli.main([
        "run", "dla_classification", "--profile", "paper", "--data-root", str(tmp_path / "imagenet"),
        "-p", "epochs=1", "-p", "image_size=32", "-p", "batch_size=4", "-p", "num_workers=0",
        "-p", "channels=[8, 8, 16, 24, 48, 96]", "-p", "deep_levels=[1, 1, 1, 1, 4, 1]",
        "-p", "modes=[none, full]", "-p", "seeds=[0]",
    ])
    out = capsys.readouterr().out
    assert code == 0, out
    manifest = json.loads((results_dir() / "manifest_paper.json").read_text())
    assert manifest["notebooks"]["dla_classification"]["status"] == "ok"
    runs = pd.read_csv(results_dir() / "tables" / "paper" / "dla_classification_runs.csv")
    assert len(runs) == 2 + 4 + 2 and set(runs["ablation"]) == {"aggregation", "residual", "kernel"}
    claims = pd.read_csv(results_dir() / "tables" / "paper" / "dla_classification_claims.csv")
    assert len(claims) == 5
    assert (results_dir() / "figures" / "paper" / "dla_classification_acc_vs_params.png").is_file()


def test_no_ablation_gives_empty_tables_and_no_claims():
    results = exp.Results()
    assert not len(results.of("aggregation")) and "config_key" in results.runs
    results.runs.drop(columns=["config_key"])  # what the notebook logs
    assert not len(exp.claims_frame(exp.judge_claims(results, TINY)))


def test_a_synthetic_run_short_of_the_frozen_budget_is_descriptive():
    assert exp.short_budget("synthetic-v2", exp.FROZEN_ITERATIONS) == ""
    assert exp.short_budget("imagefolder", 300) == ""  # real data: judged as run
    assert exp.short_budget("synthetic-v2", 0) == ""  # epochs, not updates
    why = exp.short_budget("synthetic-v2", 300)
    assert "300 updates" in why and "2,400" in why
    results = _fake({("aggregation", "agg=full"): [0.30, 0.31, 0.32], ("aggregation", "agg=none"): [0.20, 0.22, 0.21]})
    judged = exp.judge_claims(results, TINY, floor=exp.learned_floor(32), descriptive=why)
    (v,) = [v for _, v in judged]
    assert v.verdict == DESCRIPTIVE and v.delta == pytest.approx(0.1)
    # the re-judging hook declares the same, from the run's parameters
    declared, _ = exp.rejudge_claims({"dataset": "synthetic-v2", "iterations": 300, "variant": "dla34", "image_size": 32,
                                      "channels": list(TINY.channels), "deep_levels": list(TINY.deep_levels)},
                                     Path("/nonexistent"), pd.DataFrame())
    assert {c.descriptive for c in declared} == {why}
