"""engine.sweep: trials × seeds under one parent run; claims verdicts."""

from __future__ import annotations

import functools

import pytest
from torch import nn

from dla_repro.analysis.claims import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, claims_table, compare
from dla_repro.engine import TrainConfig, Trial, sweep
from test_engine import client, toy_data


def _model(width: int) -> nn.Module:  # unseeded: the sweep seeds before build
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(width, 2))


def test_sweep_nests_every_trial_and_seed_and_is_deterministic():
    trials = [Trial(f"w={w}", {"width": w}, functools.partial(_model, w)) for w in (2, 6)]
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.05, schedule="constant", progress=False)
    result = sweep("toy sweep", trials, toy_data(64, 32), cfg, seeds=[0, 1], params={"note": "x"})

    runs = result.runs
    assert list(zip(runs["trial"], runs["seed"])) == [("w=2", 0), ("w=2", 1), ("w=6", 0), ("w=6", 1)]
    assert list(runs["n_params"]) == [3 * 2 * 9 + 2 + 2 * 2 + 2] * 2 + [3 * 6 * 9 + 6 + 6 * 2 + 2] * 2
    assert runs["val_top1"].between(0, 1).all() and len(result.history) == 4 * 2
    # seeds differ, so runs differ; the same seed again gives the same numbers
    assert runs.loc[0, "train_loss"] != runs.loc[1, "train_loss"]
    again = sweep("toy sweep again", trials[:1], toy_data(64, 32), cfg, seeds=[1])
    assert again.runs.loc[0, "train_loss"] == pytest.approx(runs.loc[1, "train_loss"], abs=0, rel=0)

    mlflow_client = client()
    parent = mlflow_client.get_run(result.sweep_run_id)
    assert parent.data.tags["kind"] == "sweep" and parent.data.params["note"] == "x"
    for run_id in runs["run_id"]:
        child = mlflow_client.get_run(run_id)
        assert child.data.tags["mlflow.parentRunId"] == result.sweep_run_id
        assert child.data.params["sweep"] == "toy sweep" and "width" in child.data.params
        assert child.info.status == "FINISHED"


def test_sweep_rejects_duplicate_names_and_no_seeds():
    trial = Trial("same", {}, functools.partial(_model, 2))
    cfg = TrainConfig(epochs=1, progress=False)
    with pytest.raises(ValueError, match="unique"):
        sweep("dup", [trial, trial], toy_data(16, 8), cfg)
    with pytest.raises(ValueError, match="seed"):
        sweep("noseed", [trial], toy_data(16, 8), cfg, seeds=[])


def test_verdicts():
    clear_win = compare("A beats B", [0.80, 0.82, 0.81], [0.70, 0.71, 0.69], names=("A", "B"))
    assert clear_win.verdict == REPRODUCED and clear_win.delta == pytest.approx(0.11)
    assert compare("A beats B", [0.70, 0.71, 0.69], [0.80, 0.82, 0.81]).verdict == NOT_REPRODUCED
    assert compare("A beats B", [0.70, 0.80], [0.74, 0.75]).verdict == INCONCLUSIVE  # overlapping
    assert compare("A < B", [0.1, 0.11], [0.3, 0.31], expect="less").verdict == REPRODUCED
    # one seed: no spread, so only an explicit minimum effect can decide
    assert compare("A beats B", [0.9], [0.5]).verdict == INCONCLUSIVE
    assert compare("A beats B", [0.9], [0.5], min_effect=0.2).verdict == REPRODUCED
    assert compare("A beats B", [0.9, 0.91], [0.89, 0.9], min_effect=0.05).verdict == INCONCLUSIVE
    # a model at or below the floor (did not learn) makes any difference inconclusive
    low = compare("A beats B", [0.30, 0.31, 0.30], [0.04, 0.05, 0.04], names=("A", "B"), floor=0.0625)
    assert low.verdict == INCONCLUSIVE and low.note.startswith("B at or below 0.0625")
    assert compare("A beats B", [0.30, 0.31, 0.30], [0.10, 0.11, 0.10], floor=0.0625).verdict == REPRODUCED
    # equality claims
    assert compare("A = B", [0.50, 0.51], [0.505, 0.50], expect="equal", tolerance=0.02).verdict == REPRODUCED
    assert compare("A = B", [0.50, 0.51], [0.70, 0.71], expect="equal", tolerance=0.02).verdict == NOT_REPRODUCED
    assert compare("A = B", [0.4, 0.6], [0.5, 0.5], expect="equal", tolerance=0.02).verdict == INCONCLUSIVE
    with pytest.raises(ValueError, match="tolerance"):
        compare("A = B", [1], [1], expect="equal")
    with pytest.raises(ValueError, match="finite"):
        compare("A beats B", [float("nan")], [1.0])
    table = claims_table([clear_win])
    assert list(table["verdict"]) == [REPRODUCED] and "A beats B: reproduced" in str(clear_win)
