"""engine.sweep: trials × seeds under one parent run; claims verdicts."""

from __future__ import annotations

import functools
import math
import os

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from dla_repro import tracking
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


class _Recording(nn.Module):
    """A shared stem (built first, as a backbone is) and an arm-specific head; records every training batch."""

    seen: dict = {}

    def __init__(self, arm: str, width: int):
        super().__init__()
        self.arm = arm
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(4, width, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(width, 2))
        self.stem_at_init = self.stem.weight.detach().clone()

    def forward(self, x):
        if self.training:
            self.seen.setdefault(self.arm, []).append(x.detach().clone())
        return self.head(self.stem(x))


def test_a_seeds_arms_share_data_stream_order_and_shared_init_so_claims_are_paired_by_seed():
    """The design behind paired claims: within one sweep, seed k gives every arm the same batches in the same
    order and the same initial weights for the modules built first; another seed gives others."""
    from dla_repro.experiments import study

    models = {}

    def build(arm, width):
        models[arm] = _Recording(arm, width)
        return models[arm]

    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.05, schedule="constant", progress=False)
    data = toy_data(48, 16)
    for seed in (0, 1):
        _Recording.seen = {}
        trials = [Trial(arm, {"arm": arm}, functools.partial(build, arm, w)) for arm, w in (("a", 3), ("b", 8))]
        sweep(f"pairing seed {seed}", trials, data, cfg, seeds=[seed])
        a, b = _Recording.seen["a"], _Recording.seen["b"]
        assert len(a) == len(b) == 2 * 3
        assert all(torch.equal(x, y) for x, y in zip(a, b))  # same batches, same order
        assert torch.equal(models["a"].stem_at_init, models["b"].stem_at_init)  # same start for the shared part
        if seed == 0:
            first, stem0 = a, models["a"].stem_at_init
    assert not torch.equal(first[0], a[0]) and not torch.equal(stem0, models["a"].stem_at_init)
    # and so a claim between two trials of a sweep is paired by default, unless declared otherwise
    assert study.Claim("a beats b", "a", "b", "val_top1").paired


def _runs_by_experiment(mlflow_client) -> dict[str, set[str]]:
    """run ids of every run in the store, by experiment id (Default is ``"0"``)."""
    exps = mlflow_client.search_experiments(view_type=mlflow.entities.ViewType.ALL)
    return {e.experiment_id: {r.info.run_id for r in mlflow_client.search_runs([e.experiment_id])} for e in exps}


@pytest.mark.parametrize("parent", ["notebook run in this kernel", "pipeline run via env"])
def test_notebook_sweep_and_trainings_land_in_the_notebooks_experiment(parent, monkeypatch, tmp_path):
    """notebook run -> sweep -> trainings: one experiment holds them all, Default stays empty, and the
    trainings' checkpoints are in the store's artifact root (not ./mlruns/0)."""
    monkeypatch.chdir(tmp_path)  # where MLflow would put Default's artifacts (./mlruns)
    exp_id = tracking.get_or_create_experiment("unit_hierarchy")
    mlflow_client = client()
    if parent == "pipeline run via env":  # as dla-repro run: the run exists, the kernel gets its id
        notebook_id = mlflow_client.create_run(exp_id, run_name="unit_hierarchy-smoke").info.run_id
        monkeypatch.setenv(tracking.PARENT_RUN_ENV, notebook_id)
    else:
        notebook_id = tracking.start_notebook_run("unit_hierarchy", {"epochs": 1}, profile="smoke").info.run_id
    trials = [Trial("w=2", {"width": 2}, functools.partial(_model, 2))]
    cfg = TrainConfig(epochs=1, batch_size=32, lr=0.05, schedule="constant", progress=False)
    result = sweep("placement", trials, toy_data(32, 16), cfg, seeds=[0])
    tracking.end_notebook_run()

    fit_id = result.runs.loc[0, "run_id"]
    assert mlflow_client.get_run(result.sweep_run_id).data.tags["mlflow.parentRunId"] == notebook_id
    assert mlflow_client.get_run(fit_id).data.tags["mlflow.parentRunId"] == result.sweep_run_id
    by_exp = _runs_by_experiment(mlflow_client)
    assert by_exp[exp_id] == {notebook_id, result.sweep_run_id, fit_id}
    assert not by_exp.get("0"), "runs in MLflow's Default experiment"
    root = tracking.artifact_root()
    artifact_uri = mlflow_client.get_run(fit_id).info.artifact_uri
    assert artifact_uri.startswith(root.as_uri())
    logged = [a.path for a in mlflow_client.list_artifacts(fit_id, "checkpoints")]
    assert logged and all((root / artifact_uri[len(root.as_uri()) + 1:] / p).is_file() for p in logged)
    assert not (tmp_path / "mlruns").exists()


def test_a_run_without_a_parent_goes_to_its_named_experiment_and_a_missing_parent_is_an_error(monkeypatch):
    with tracking.child_run("alone", experiment="unit_alone") as run:
        pass
    mlflow_client = client()
    assert run.info.experiment_id == mlflow_client.get_experiment_by_name("unit_alone").experiment_id
    monkeypatch.setenv(tracking.PARENT_RUN_ENV, "0123456789abcdef0123456789abcdef")
    with pytest.raises(RuntimeError, match=tracking.PARENT_RUN_ENV):
        with tracking.sweep_run("orphan"):
            pass
    assert not _runs_by_experiment(mlflow_client).get("0")


def test_sweep_rejects_duplicate_names_and_no_seeds():
    trial = Trial("same", {}, functools.partial(_model, 2))
    cfg = TrainConfig(epochs=1, progress=False)
    with pytest.raises(ValueError, match="unique"):
        sweep("dup", [trial, trial], toy_data(16, 8), cfg)
    with pytest.raises(ValueError, match="seed"):
        sweep("noseed", [trial], toy_data(16, 8), cfg, seeds=[])


def _measure(model, fit_result):
    """What a study's evaluation returns: scalars of several kinds, a curve, a map."""
    weight = model[0].weight.detach()
    return {
        "wnorm": weight.norm(),  # 0-d tensor -> float
        "n_epochs": len(fit_result.history),  # int
        "undefined": float("nan"),
        "label": "conv",  # string: row only, not a metric
        "curve": pd.DataFrame({"threshold": [0.25, 0.5], "f": [0.1, float(weight.abs().mean())]}),
        "edge map": np.full((2, 3), 7.0),
    }


def test_sweep_evaluate_hook_scalars_to_rows_and_metrics_artifacts_kept_and_logged():
    trials = [Trial("w=2", {"width": 2}, functools.partial(_model, 2))]
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.05, schedule="constant", progress=False)
    result = sweep("hooked", trials, toy_data(64, 32), cfg, seeds=[1, 0], evaluate=_measure)

    runs = result.runs
    assert {"wnorm", "n_epochs", "undefined", "label"} <= set(runs) and not {"curve", "edge map"} & set(runs)
    assert isinstance(runs.loc[0, "wnorm"], float) and runs.loc[0, "n_epochs"] == 2
    assert result.values("w=2", "wnorm") == runs.sort_values("seed")["wnorm"].tolist()
    assert result.values("w=2", "seed") == [0, 1]
    with pytest.raises(KeyError, match="no trial"):
        result.values("w=9", "wnorm")

    assert set(result.artifacts) == {("w=2", 1), ("w=2", 0)}
    kept = result.artifacts[("w=2", 0)]
    assert set(kept) == {"curve", "edge map"} and kept["edge map"].shape == (2, 3)

    mlflow_client = client()
    for seed, run_id in zip(runs["seed"], runs["run_id"]):
        run = mlflow_client.get_run(run_id)
        row = runs[runs["seed"] == seed].iloc[0]
        assert run.data.metrics["wnorm"] == pytest.approx(row["wnorm"], rel=1e-12)
        assert math.isnan(run.data.metrics["undefined"]) and "label" not in run.data.metrics
        assert [m.step for m in mlflow_client.get_metric_history(run_id, "wnorm")] == [1]  # the last epoch
        assert [a.path for a in mlflow_client.list_artifacts(run_id, "evaluate")] == ["evaluate/curve.csv"]
        csv = mlflow_client.download_artifacts(run_id, "evaluate/curve.csv")
        pd.testing.assert_frame_equal(pd.read_csv(csv), result.artifacts[("w=2", seed)]["curve"])


def test_sweep_extra_is_an_alias_of_evaluate():
    trials = [Trial("w=2", {"width": 2}, functools.partial(_model, 2))]
    cfg = TrainConfig(epochs=1, batch_size=32, lr=0.05, progress=False)
    old = sweep("old name", trials, toy_data(32, 16), cfg, extra=lambda m, r: {"twice": 2.0 * r.final["val_loss"]})
    assert old.runs.loc[0, "twice"] == 2.0 * old.runs.loc[0, "val_loss"]
    assert client().get_run(old.runs.loc[0, "run_id"]).data.metrics["twice"] == old.runs.loc[0, "twice"]
    with pytest.raises(ValueError, match="not both"):
        sweep("both", trials, toy_data(32, 16), cfg, evaluate=_measure, extra=_measure)


def test_log_metrics_logs_each_value_once():
    with tracking.child_run("once") as run:
        run_id = run.info.run_id
    tracking.log_metrics(run_id, {"a": 1.0, "b": float("nan")}, step=3)  # to a finished run
    tracking.log_metrics(run_id, {"a": 1.0, "b": float("nan")}, step=3)  # a rerun: nothing new
    tracking.log_metrics(run_id, {"a": 2.0}, step=4)
    history = client().get_metric_history(run_id, "a")
    assert [(m.step, m.value) for m in history] == [(3, 1.0), (4, 2.0)]
    assert len(client().get_metric_history(run_id, "b")) == 1


def test_verdicts():
    clear_win = compare("A beats B", [0.80, 0.82, 0.81], [0.70, 0.71, 0.69], names=("A", "B"))
    assert clear_win.verdict == REPRODUCED and clear_win.delta == pytest.approx(0.11)
    assert compare("A beats B", [0.70, 0.71, 0.69], [0.80, 0.82, 0.81]).verdict == NOT_REPRODUCED
    assert compare("A beats B", [0.70, 0.80], [0.74, 0.75]).verdict == INCONCLUSIVE  # overlapping
    assert compare("A < B", [0.1, 0.11], [0.3, 0.31], expect="less").verdict == REPRODUCED
    # one seed: no spread, so nothing decides -- not even a difference beyond the minimum effect
    assert compare("A beats B", [0.9], [0.5]).verdict == INCONCLUSIVE
    assert compare("A beats B", [0.9], [0.5], min_effect=0.2).verdict == INCONCLUSIVE
    # the data exclude the minimum effect (upper 95 % bound of Δ 0.031 < 0.05)
    assert compare("A beats B", [0.9, 0.91], [0.89, 0.9], min_effect=0.05).verdict == NOT_REPRODUCED
    # a model at or below the floor (did not learn) makes any difference inconclusive
    low = compare("A beats B", [0.30, 0.31, 0.30], [0.04, 0.05, 0.04], names=("A", "B"), floor=0.0625)
    assert low.verdict == INCONCLUSIVE and low.note.startswith("B at or below 0.0625")
    assert compare("A beats B", [0.30, 0.31, 0.30], [0.10, 0.11, 0.10], floor=0.0625).verdict == REPRODUCED
    # equality claims
    # TOST: with two seeds the 90 % interval [-0.019, +0.024] is not inside ±0.02; with five it is
    assert compare("A = B", [0.50, 0.51], [0.505, 0.50], expect="equal", tolerance=0.02).verdict == INCONCLUSIVE
    assert compare("A = B", [0.50, 0.51, 0.505, 0.50, 0.505], [0.505, 0.50, 0.50, 0.51, 0.505], expect="equal",
                   tolerance=0.02).verdict == REPRODUCED
    assert compare("A = B", [0.50, 0.51], [0.70, 0.71], expect="equal", tolerance=0.02).verdict == NOT_REPRODUCED
    assert compare("A = B", [0.4, 0.6], [0.5, 0.5], expect="equal", tolerance=0.02).verdict == INCONCLUSIVE
    with pytest.raises(ValueError, match="tolerance"):
        compare("A = B", [1], [1], expect="equal")
    with pytest.raises(ValueError, match="finite"):
        compare("A beats B", [float("nan")], [1.0])
    table = claims_table([clear_win])
    assert list(table["verdict"]) == [REPRODUCED] and "A beats B: reproduced" in str(clear_win)


def _broken(width: int) -> nn.Module:
    raise RuntimeError(f"cannot build width {width}")


def test_parallel_sweep_gives_the_serial_rows_in_order_nested_and_tagged_like_the_serial_one(monkeypatch):
    """workers=2: two spawned single-thread processes; the same rows, in the same order, with the same numbers
    as a serial sweep on one thread; every training nested under the sweep run and tagged with the execution."""
    from dla_repro.recovery import ROOT_TAG

    trials = [Trial(f"w={w}", {"width": w}, functools.partial(_model, w)) for w in (2, 6)]
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.05, schedule="constant", progress=False)
    notebook_id = tracking.start_notebook_run("unit_parallel", {"epochs": 2}, profile="smoke").info.run_id
    parallel = sweep("in parallel", trials, toy_data(64, 32), cfg, seeds=[0, 1], workers=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        serial = sweep("in series", trials, toy_data(64, 32), cfg, seeds=[0, 1])
    finally:
        torch.set_num_threads(threads)
    tracking.end_notebook_run()

    cols = ["trial", "seed", "n_params", "train_loss", "val_loss", "val_top1"]
    pd.testing.assert_frame_equal(parallel.runs[cols], serial.runs[cols], check_exact=True)
    assert len(parallel.history) == len(serial.history) == 8
    mlflow_client = client()
    pids = set()
    for run_id in parallel.runs["run_id"]:
        run = mlflow_client.get_run(run_id)
        assert run.data.tags["mlflow.parentRunId"] == parallel.sweep_run_id
        assert run.data.tags[ROOT_TAG] == notebook_id and run.info.status == "FINISHED"
        pids.add(run.data.tags["dla_repro.process"])
    assert len(pids) == 2, "both workers trained"
    assert parallel.fits[("w=6", 1)].weights.is_file()


def test_parallel_sweep_fails_when_a_training_fails_and_rejects_negative_workers():
    cfg = TrainConfig(epochs=1, batch_size=32, lr=0.05, schedule="constant", progress=False)
    trials = [Trial("ok", {"width": 2}, functools.partial(_model, 2)),
              Trial("broken", {"width": 3}, functools.partial(_broken, 3))]
    with pytest.raises(RuntimeError, match="cannot build width 3"):
        sweep("one fails", trials, toy_data(32, 16), cfg, seeds=[0], workers=2)
    with pytest.raises(ValueError, match="workers"):
        sweep("negative", trials, toy_data(32, 16), cfg, seeds=[0], workers=-1)


def test_resolve_workers_one_per_core_on_cpu_one_on_gpu_never_more_than_the_jobs():
    from dla_repro.engine.sweep import resolve_workers

    cores = len(os.sched_getaffinity(0))
    assert resolve_workers(0, "cpu") == cores
    assert resolve_workers(0, "cuda") == 1
    assert resolve_workers(5, "cpu", jobs=3) == 3 and resolve_workers(1, "cpu", jobs=10) == 1
