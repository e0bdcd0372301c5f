"""The pilot: the MDE arithmetic, the summary of a pilot's runs, and one tiny real pilot run."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from dla_repro.experiments import pilot


def test_mde_is_the_paired_t_formula_and_seeds_for_inverts_it():
    t = stats.t(4)
    assert pilot.mde(0.015, 5) == pytest.approx((t.ppf(0.95) + t.ppf(0.8)) * 0.015 * math.sqrt(2 / 5))
    assert 0.028 < pilot.mde(0.015, 5) < 0.03  # the classification target: sd 0.015 -> MDE <= 0.03 at 5
    n = pilot.seeds_for(0.05, 0.03)
    assert pilot.mde(0.05, n) <= 0.03 < pilot.mde(0.05, n - 1)
    assert pilot.seeds_for(1.0, 1e-4, most=50) is None and math.isnan(pilot.mde(0.1, 1))


def test_summary_reports_spread_mde_and_whether_training_was_still_climbing():
    def curve(end, late):
        return [[0, 0.1], [300, end - late], [450, end - late], [600, end]]

    runs = pd.DataFrame([{"task": "classification", "version": "synthetic-v2", "baseline": "plain", "image_size": 32,
                          "steps": 600,
                          "seed": s, "metric": "val_top1", "value": v, "seconds": 50.0, "curve": curve(v, 0.1)}
                         for s, v in enumerate([0.60, 0.62, 0.61, 0.63, 0.59])])
    (row,) = pilot.summarize(runs, target=0.03).to_dict("records")
    assert row["sd"] == pytest.approx(np.std([0.60, 0.62, 0.61, 0.63, 0.59], ddof=1))
    assert row["mde_at_n"] == pytest.approx(pilot.mde(row["sd"], 5)) and row["seeds_for_target"] == pilot.seeds_for(row["sd"], 0.03)
    assert row["late_gain"] == pytest.approx(0.1)  # still rising over the last quarter: not converged
    flat = runs.assign(curve=[curve(v, 0.0) for v in runs["value"]])
    assert pilot.summarize(flat, target=0.03)["late_gain"].iloc[0] == pytest.approx(0.0)


def test_a_tiny_pilot_trains_the_plain_baseline_from_the_chance_loss_and_writes_its_tables(tmp_path):
    runs = pilot.pilot("classification", steps=(4,), seeds=(0,), n_val=16)
    (row,) = runs.to_dict("records")
    assert row["metric"] == "val_top1" and 0 <= row["value"] <= 1 and row["curve"][-1][0] == 4
    assert row["baseline"] == "plain"
    folder = pilot.write(runs, pilot.summarize(runs, 0.03), tmp_path / "pilot")
    assert {p.name for p in folder.iterdir()} == {"pilot_runs.csv", "pilot_curves.csv", "pilot_summary.csv"}
    assert "hardware" in pd.read_csv(folder / "pilot_summary.csv")
    with pytest.raises(KeyError, match="no frozen recipe"):
        pilot.recipe("synthetic-v1", "classification")


def test_a_pilot_of_a_papers_baseline_arm_and_tables_written_before_baselines_were_named(tmp_path):
    """--baseline module:function trains that arm (here the segmentation claims' shallow skip decoder); rows of
    an older table (no baseline column, all plain) are kept as the plain baseline's, and replaced per budget."""
    runs = pilot.pilot("segmentation", steps=(2,), seeds=(0,), n_val=4,
                       baseline="dla_repro.experiments.dla.segmentation:pilot_baseline")
    (row,) = runs.to_dict("records")
    assert row["metric"] == "val_miou" and 0 <= row["value"] <= 1
    folder = tmp_path / "pilot"
    folder.mkdir()
    old = pd.DataFrame([{"task": "classification", "version": "synthetic-v2", "image_size": 32, "steps": 600,
                         "seed": 0, "metric": "val_top1", "value": 0.5}])
    old.to_csv(folder / "pilot_runs.csv", index=False)
    pilot.write(runs, pilot.summarize(runs, 0.02), folder)
    table = pd.read_csv(folder / "pilot_runs.csv")
    assert sorted(zip(table["task"], table["baseline"])) == [
        ("classification", "plain"), ("segmentation", "dla_repro.experiments.dla.segmentation:pilot_baseline")]
    with pytest.raises(ValueError, match="package.module:function"):
        pilot.pilot("classification", steps=(1,), seeds=(0,), baseline="nonsense")


def test_scores_adds_what_the_final_baseline_gives_beyond_the_pilot_metric(tmp_path):
    """--scores module:function scores each final baseline (here ParseNet's fcn trial: does it find the context
    shapes at all?) and the summary carries the mean of each score."""
    runs = pilot.pilot("segmentation", image_size=64, steps=(2,), seeds=(0, 1), n_val=4,
                       baseline="dla_repro.experiments.parsenet.global_context:pilot_baseline",
                       scores="dla_repro.experiments.parsenet.global_context:evaluate")
    assert {"score.eval_miou", "score.eval_miou_context", "score.eval_context_shape_recall"} <= set(runs)
    assert runs["score.eval_miou"].between(0, 1).all()
    summary = pilot.summarize(runs, 0.02)
    assert summary["score.eval_miou"].item() == pytest.approx(runs["score.eval_miou"].mean())
    with pytest.raises(ValueError, match="package.module:function"):
        pilot.pilot("segmentation", steps=(1,), seeds=(0,), scores="evaluate")


@pytest.mark.parametrize("notebook, task, size", [("dla/02_classification.ipynb", "classification", 32),
                                                  ("dla/03_segmentation.ipynb", "segmentation", 32),
                                                  ("dla/04_boundaries.ipynb", "segmentation", 32),
                                                  ("parsenet/05_global_context.ipynb", "segmentation", 64),
                                                  ("dynopool/06_dynopool.ipynb", "classification", 32)])
def test_the_notebooks_quick_defaults_are_the_frozen_v2_recipe_and_the_pilots_epoch(notebook, task, size):
    """The studies train with the recipe the pilot calibrated on the baseline (not a copy that could drift):
    every recipe field is the notebook's default, and an epoch of the fresh stream is the pilot's 50 updates."""
    from dla_repro.paths import repo_root
    from dla_repro.pipeline import notebook_parameters

    params = {k: p.default for k, p in notebook_parameters(repo_root() / "notebooks" / notebook).items()}
    assert params["dataset"] == "synthetic-v2" and params["image_size"] == size and len(params["seeds"]) >= 5
    recipe = pilot.recipe("synthetic-v2", task)
    if task == "classification":
        assert params["label_smoothing"] == recipe["label_smoothing"]
    for key, value in recipe.items():
        if key != "label_smoothing":
            assert params.get(key, value) == value and (key in params or key in ("warmup_lr", "min_lr")), key
    assert params["n_train"] == pilot.STEPS_PER_EPOCH * params["batch_size"]
    assert params["iterations"] > 0 and "ema" not in params


def test_the_classification_pilot_trains_the_notebooks_none_arm_not_full():
    """The budget pilot's DLA is the notebook's default DLA (widths, deep tree) in ablation A's ``none`` mode:
    a drift of the notebook's defaults would leave the pilot measuring another model."""
    import dataclasses

    import torch

    from dla_repro.experiments.dla import classification as cls
    from dla_repro.paths import repo_root
    from dla_repro.pipeline import notebook_parameters

    params = {k: p.default for k, p in notebook_parameters(repo_root() / "notebooks" / "dla" / "02_classification.ipynb").items()}
    assert list(cls.PILOT_SPEC.channels) == params["channels"] and list(cls.PILOT_SPEC.deep_levels) == params["deep_levels"]
    model = cls.pilot_baseline(16)
    spec = dataclasses.replace(cls.PILOT_SPEC, num_classes=16)
    arms = {p.trial.name: p.trial.build() for p in cls.ablation_trials("aggregation", spec, modes=("none", "full"))}
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in arms["agg=none"].state_dict().items()}
    assert shapes != {k: tuple(v.shape) for k, v in arms["agg=full"].state_dict().items()}
    assert float(model(torch.randn(2, 3, 32, 32)).abs().max()) == 0.0  # zero classifier: the chance loss


def test_the_dynopool_pilot_trains_the_notebooks_hand_designed_net():
    """DynOPool's budget pilot is the notebook's ``hand`` arm at its default widths: fixed max-pools (no learned
    resizing, the method under test), zero classifier."""
    import torch

    from dla_repro.experiments.dynopool import resizing as dyn
    from dla_repro.models.resizing import resizing_modules
    from dla_repro.paths import repo_root
    from dla_repro.pipeline import notebook_parameters

    params = {k: p.default for k, p in notebook_parameters(repo_root() / "notebooks" / "dynopool" / "06_dynopool.ipynb").items()}
    model = dyn.pilot_baseline(16)
    notebook_hand = dyn.build_model(16, "hand", widths=params["widths"])
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {
        k: tuple(v.shape) for k, v in notebook_hand.state_dict().items()}
    assert not resizing_modules(model) and resizing_modules(dyn.build_model(16, "dynopool"))
    assert float(model(torch.randn(2, 3, 32, 32)).detach().abs().max()) == 0.0
