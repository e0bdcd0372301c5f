"""engine.executors: a sweep's trainings as Ray tasks -- selection, environment, and the local executor's results."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time

import mlflow
import pandas as pd
import pytest
import torch

from dla_repro import cli, tracking
from dla_repro.engine import TrainConfig, Trial, sweep
from dla_repro.engine import executors
from test_engine import client, toy_data
from test_sweep import _model


# ------------------------------------------------------------------ selection (fast)
def test_the_executor_is_the_argument_else_the_environment_else_local(monkeypatch):
    monkeypatch.delenv(executors.EXECUTOR_ENV, raising=False)
    assert executors.resolve_executor() == "local"
    monkeypatch.setenv(executors.EXECUTOR_ENV, "Ray")
    assert executors.resolve_executor() == "ray"
    assert executors.resolve_executor("local") == "local"
    monkeypatch.setenv(executors.EXECUTOR_ENV, "dask")
    with pytest.raises(ValueError, match=f"{executors.EXECUTOR_ENV}='dask'.*'local', 'ray'"):
        executors.resolve_executor()
    with pytest.raises(ValueError, match="executor='spark'"):
        executors.resolve_executor("spark")
    with pytest.raises(ValueError, match="sweep_executor='dask'"):
        TrainConfig(sweep_executor="dask")
    # a runtime choice: not a parameter of the trained configuration (logged, compared on resume)
    assert "sweep_executor" not in TrainConfig(sweep_executor="ray").params()


def test_the_cluster_is_the_argument_else_ours_else_rays_variable_else_a_local_instance(monkeypatch):
    for var in (executors.ADDRESS_ENV, "RAY_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    assert executors.ray_address() is None
    monkeypatch.setenv("RAY_ADDRESS", "ray-head:6379")
    assert executors.ray_address() == "ray-head:6379"
    monkeypatch.setenv(executors.ADDRESS_ENV, "head:6379")
    assert executors.ray_address() == "head:6379"
    assert executors.ray_address("other:6379") == "other:6379"


def test_a_task_gets_the_callers_tracking_environment_and_a_gpu_only_on_cuda(monkeypatch):
    notebook = tracking.start_notebook_run("unit_ray_env", {}, profile="smoke").info.run_id
    try:
        monkeypatch.setenv("MLFLOW_RUN_ID", "0" * 32)  # MLflow's own process state: never handed on
        monkeypatch.setenv("DLA_REPRO_RESULTS", "/elsewhere/results")
        monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
        monkeypatch.setenv("PATH_UNRELATED_TO_US", "x")
        env = executors.worker_environ("f" * 32)
    finally:
        tracking.end_notebook_run()
    assert env["MLFLOW_TRACKING_URI"] == tracking.tracking_uri()
    assert env[tracking.PARENT_RUN_ENV] == "f" * 32 and env[tracking.ROOT_RUN_ENV] == notebook
    assert env[tracking.PROFILE_ENV] == "smoke" and "DLA_REPRO_WORKDIR" in env
    assert env["DLA_REPRO_RESULTS"] == "/elsewhere/results" and env["ATEN_CPU_CAPABILITY"] == "avx2"
    assert "MLFLOW_RUN_ID" not in env and "PATH_UNRELATED_TO_US" not in env

    assert executors._gpus(["cpu", "cuda", "cuda:0", "auto"], 2, "s") == [0, 1, 1, 1]
    assert executors._gpus(["cpu", "auto"], 0, "s") == [0, 0]
    assert executors._gpus(["cuda", "cpu"], 1, "s", share=0.125) == [0.125, 0]  # eight side by side on a GPU
    with pytest.raises(RuntimeError, match="need a GPU, and the Ray cluster has none"):
        executors._gpus(["cuda"], 0, "s")


def _run_args(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(["run", *argv])


def test_dla_repro_run_passes_the_executor_to_the_kernels_environment():
    pytest.importorskip("ray", reason="the 'scale' extra is not installed")
    assert cli.executor_environ(_run_args()) == {}
    assert cli.executor_environ(_run_args("--executor", "local")) == {executors.EXECUTOR_ENV: "local"}
    assert cli.executor_environ(_run_args("--executor", "ray", "--address", "head:6379")) == {
        executors.EXECUTOR_ENV: "ray", executors.ADDRESS_ENV: "head:6379"}
    with pytest.raises(SystemExit):
        _run_args("--executor", "dask")


def test_without_ray_a_ray_sweep_or_run_says_which_extra_to_install_before_anything_runs(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(ImportError, match=r"\[scale\]"):
        executors.import_ray()
    trials = [Trial("w=2", {"width": 2}, functools.partial(_model, 2))]
    cfg = TrainConfig(epochs=1, batch_size=32, progress=False)
    with pytest.raises(ImportError, match="scale"):
        sweep("no ray", trials, toy_data(32, 16), cfg, executor="ray")
    monkeypatch.setenv(executors.EXECUTOR_ENV, "ray")
    with pytest.raises(ImportError, match="scale"):
        sweep("no ray either", trials, toy_data(32, 16), cfg)
    assert not client().search_runs([e.experiment_id for e in client().search_experiments()]), "a run was opened"

    assert cli.main(["run", "--executor", "ray"]) == 2
    err = capsys.readouterr().err
    assert "needs Ray" in err and "'.[scale]'" in err and "nothing was run" in err
    assert cli.main(["run", "--address", "head:6379"]) == 2
    assert "use it with --executor ray" in capsys.readouterr().err


# ------------------------------------------------------------------ a local Ray cluster (slow)
def _broken_once_training(run_name: str, timeout_s: float = 120.0) -> torch.nn.Module:
    """Fails -- once the training ``run_name`` (another task) has opened its MLflow run, so its cancellation shows."""
    import time

    from mlflow.tracking import MlflowClient

    store = MlflowClient(tracking.configure())
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not store.search_runs(
            [e.experiment_id for e in store.search_experiments()], f"attributes.run_name = '{run_name}'"):
        time.sleep(0.5)
    raise RuntimeError("cannot build this one")


def _weight_norm(model, fit_result):
    return {"wnorm": model[0].weight.detach().norm(), "curve": pd.DataFrame({"x": [1, 2]})}


def _into_store(monkeypatch, root):
    root.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    monkeypatch.setenv("DLA_REPRO_ARTIFACTS", str(root / "artifacts"))
    monkeypatch.setenv("DLA_REPRO_CHECKPOINTS", str(root / "checkpoints"))
    mlflow_client = client()  # configures the store now in the environment
    return mlflow_client


def _study(name, trials, cfg, **how):
    """A notebook run with one sweep under it, as a notebook executes it: (notebook run id, sweep result)."""
    notebook = tracking.start_notebook_run("unit_ray", {"epochs": cfg.epochs}, profile="smoke").info.run_id
    try:
        return notebook, sweep(name, trials, toy_data(64, 32), cfg, seeds=[0, 1], evaluate=_weight_norm, **how)
    finally:
        tracking.end_notebook_run()


def _landed(mlflow_client, notebook, result):
    """Every run of the store, checked to be where a notebook's sweep puts them; {run name: run}."""
    from dla_repro.recovery import ROOT_TAG

    experiment = mlflow_client.get_experiment_by_name("unit_ray").experiment_id
    everything = mlflow_client.search_runs([e.experiment_id for e in mlflow_client.search_experiments()])
    assert {r.info.experiment_id for r in everything} == {experiment}, "a run outside the notebook's experiment"
    assert len(everything) == 1 + 1 + 4
    sweep_run = mlflow_client.get_run(result.sweep_run_id)
    assert sweep_run.data.tags["mlflow.parentRunId"] == notebook
    fits = {}
    for run_id in result.runs["run_id"]:
        run = mlflow_client.get_run(run_id)
        assert run.data.tags["mlflow.parentRunId"] == result.sweep_run_id and run.info.status == "FINISHED"
        assert run.data.tags[ROOT_TAG] == notebook and run.data.tags["profile"] == "smoke"
        fits[run.info.run_name] = run
    return fits


@pytest.mark.slow
def test_a_ray_sweep_gives_the_local_executors_rows_numbers_and_mlflow_runs(monkeypatch, tmp_path):
    """Two trials x two seeds on a local Ray cluster of 2 CPUs vs the local one-thread executor, each into its
    own store: the same rows and per-seed numbers bit for bit, and the same runs (nesting, experiment, params,
    metric steps and values); then a failing task cancels the others and its error comes back."""
    pytest.importorskip("ray", reason="the 'scale' extra is not installed")
    from dla_repro.recovery import PROCESS_TAG, process_token

    monkeypatch.delenv(executors.ADDRESS_ENV, raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    trials = [Trial(f"w={w}", {"width": w}, functools.partial(_model, w)) for w in (2, 6)]
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.05, schedule="constant", progress=False)

    local_client = _into_store(monkeypatch, tmp_path / "local")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the numbers of the local workers (one thread each), without spawning them
    try:
        local_notebook, local = _study("ray vs local", trials, cfg, executor="local", workers=1)
    finally:
        torch.set_num_threads(threads)
    ray_client = _into_store(monkeypatch, tmp_path / "ray")
    try:
        monkeypatch.setenv(executors.EXECUTOR_ENV, "ray")  # as `dla-repro run --executor ray` sets it
        ray_notebook, on_ray = _study("ray vs local", trials, cfg, workers=2)

        # a task fails while another trains (minutes of slow batches): that one is cancelled, its run ends
        # KILLED, and the error comes back with its class, its message and the task's name
        fails_client = _into_store(monkeypatch, tmp_path / "fails")
        slow = dataclasses.replace(cfg, epochs=50)
        broken = [trials[0], Trial("broken", {"width": 3}, functools.partial(_broken_once_training, "w=2 seed=0"))]
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="cannot build this one") as failure:
            sweep("one fails", broken, toy_data(32, 16, delay=0.05), slow, seeds=[0], workers=2)
        assert time.monotonic() - started < 100, "the slow training was not cancelled"
        assert any("broken seed=0" in note for note in getattr(failure.value, "__notes__", []))
    finally:
        executors.shutdown()

    cols = ["trial", "width", "seed", "n_params", "best", "best_epoch", "train_loss", "val_loss", "val_top1", "wnorm"]
    pd.testing.assert_frame_equal(on_ray.runs[cols], local.runs[cols], check_exact=True)
    history = [c for c in local.history.columns if c != "epoch_time_s"]
    pd.testing.assert_frame_equal(on_ray.history[history], local.history[history], check_exact=True)
    assert set(on_ray.artifacts) == set(local.artifacts) and "curve" in on_ray.artifacts[("w=6", 1)]
    for (trial, seed), fit in on_ray.fits.items():  # in the execution's folder, as a local worker puts them
        assert fit.weights.is_file() and f"{ray_notebook}/ray_vs_local/{trial}/seed{seed}" in str(fit.weights)

    local_fits = _landed(local_client, local_notebook, local)
    ray_fits = _landed(ray_client, ray_notebook, on_ray)
    assert sorted(ray_fits) == sorted(local_fits) == ["w=2 seed=0", "w=2 seed=1", "w=6 seed=0", "w=6 seed=1"]
    for name, run in ray_fits.items():
        other = local_fits[name]
        assert run.data.params == other.data.params
        assert set(run.data.metrics) == set(other.data.metrics)
        for key in run.data.metrics:
            if key == "epoch_time_s":
                continue
            ours = [(m.step, m.value) for m in ray_client.get_metric_history(run.info.run_id, key)]
            assert ours == [(m.step, m.value) for m in local_client.get_metric_history(other.info.run_id, key)], key
        assert run.data.tags["hw.torch_threads"] == "1" and run.data.tags[PROCESS_TAG] != process_token()
    states = {r.info.run_name: r.info.status for r in fails_client.search_runs(
        [e.experiment_id for e in fails_client.search_experiments()])}
    assert states == {"one fails": "FAILED", "w=2 seed=0": "KILLED"}, states
    assert mlflow.active_run() is None
