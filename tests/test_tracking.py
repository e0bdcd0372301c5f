"""MLflow tracking: store location, experiment tags, nested runs, provenance, concurrency."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import mlflow
import pytest
from mlflow.tracking import MlflowClient

from dla_repro import tracking
from dla_repro.paths import repo_root


def test_default_store_is_resolved_from_repo_root_not_cwd(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)
    assert tracking.tracking_uri() == f"sqlite:///{repo_root() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://team-server:5000")
    assert tracking.tracking_uri() == "http://team-server:5000"


def test_undoing_a_tests_monkeypatching_cannot_reach_the_repository_store(monkeypatch):
    # monkeypatch.undo() also drops the isolated-store fixture's variables (tests/conftest.py):
    # the session's own environment must still point at a throw-away store.
    monkeypatch.undo()
    repo_store = f"sqlite:///{repo_root() / 'mlflow.db'}"
    assert tracking.tracking_uri() != repo_store
    assert tracking.configure() != repo_store
    assert tracking.artifact_root() != repo_root() / "mlartifacts"


def test_flatten_nested_params():
    flat = tracking.flatten({"optim": {"lr": 0.1, "momentum": 0.9}, "levels": [1, 2], "name": "dla34"})
    assert flat == {"optim.lr": "0.1", "optim.momentum": "0.9", "levels": "[1, 2]", "name": "dla34"}


def test_notebook_run_with_nested_children_and_provenance(tmp_path):
    run = tracking.start_notebook_run("unit_nb", {"epochs": 2, "model": {"width": 8}}, profile="smoke")
    parent_id = run.info.run_id
    with tracking.sweep_run("ablation") as sweep:
        with tracking.child_run("cfg-a", {"lr": 0.1}) as child:
            tracking.log_dataset("synthetic", "abc123", source="generator", context="train")
            mlflow.log_metric("val_acc", 0.5, step=1)
        child_id, sweep_id = child.info.run_id, sweep.info.run_id
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    path = tracking.log_figure(fig, "line.png")
    plt.close(fig)
    tracking.end_notebook_run()

    client = MlflowClient(tracking.configure())
    exp = client.get_experiment_by_name("unit_nb")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    parent = client.get_run(parent_id)
    assert parent.data.params == {"epochs": "2", "model.width": "8"}
    assert parent.data.tags["profile"] == "smoke"
    assert len(parent.data.tags["git_commit"]) in (40, 7) or parent.data.tags["git_commit"] == "unknown"
    assert parent.data.tags["git_dirty"] in ("true", "false", "unknown")
    assert parent.data.tags["env.torch"]
    assert parent.info.status == "FINISHED"
    assert client.get_run(sweep_id).data.tags["mlflow.parentRunId"] == parent_id
    child_run = client.get_run(child_id)
    assert child_run.data.tags["mlflow.parentRunId"] == sweep_id
    assert child_run.data.params == {"lr": "0.1"}
    assert [d.dataset.name for d in child_run.inputs.dataset_inputs] == ["synthetic"]
    assert path.exists() and path.parent.name == "smoke"
    assert "figures/line.png" in [a.path for a in client.list_artifacts(parent_id, "figures")]


def test_child_run_marks_failed_on_exception():
    with pytest.raises(RuntimeError):
        with tracking.child_run("boom", experiment="unit_fail") as run:
            raise RuntimeError("loss is nan")
    got = MlflowClient(tracking.configure()).get_run(run.info.run_id)
    assert got.info.status == "FAILED"
    assert "loss is nan" in got.data.tags["failure"]


def test_changed_params_on_resume_are_rejected():
    with tracking.child_run("p", {"lr": 0.1}, experiment="unit_params") as run:
        pass
    with pytest.raises(ValueError, match="lr"):
        with tracking.child_run("p", {"lr": 0.2}, run_id=run.info.run_id):
            pass


def test_parent_run_env_is_reused(monkeypatch):
    exp_id = tracking.get_or_create_experiment("unit_env")
    pre = MlflowClient(tracking.configure()).create_run(exp_id)
    monkeypatch.setenv(tracking.PARENT_RUN_ENV, pre.info.run_id)
    run = tracking.start_notebook_run("unit_env", {"a": 1}, profile="quick")
    assert run.info.run_id == pre.info.run_id
    tracking.end_notebook_run()


def test_switching_stores_forgets_the_previous_stores_experiment(monkeypatch, tmp_path):
    # mlflow.set_experiment exports MLFLOW_EXPERIMENT_ID; an id from another store
    # must not leak into runs on the next one (or into a notebook kernel's env).
    tracking.configure()
    mlflow.set_experiment("elsewhere")
    mlflow.set_experiment("elsewhere-too")  # id 2 on the first store, absent from the next
    assert os.environ.get("MLFLOW_EXPERIMENT_ID")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'other.db'}")
    assert tracking.configure().endswith("other.db")
    assert "MLFLOW_EXPERIMENT_ID" not in os.environ
    with tracking.child_run("fresh", {"a": 1}, experiment="unit_switch") as run:
        mlflow.log_metric("m", 1.0)
    got = MlflowClient(tracking.configure()).get_run(run.info.run_id)
    assert got.data.metrics == {"m": 1.0}


WORKER = textwrap.dedent(
    """
    import sys, mlflow
    from dla_repro import tracking
    idx = int(sys.argv[1])
    with tracking.child_run(f"worker-{idx}", {"idx": idx}, experiment="concurrent") as run:
        for step in range(40):
            mlflow.log_metrics({"loss": 1.0 / (step + 1), "acc": step / 40}, step=step)
    print(run.info.run_id)
    """
)


def test_four_processes_on_one_fresh_store_lose_nothing(tmp_path):
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'fresh.db'}")
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(i)], env=env, stdout=subprocess.PIPE, text=True)
        for i in range(4)
    ]
    run_ids = []
    for p in procs:
        out, _ = p.communicate(timeout=240)
        assert p.returncode == 0
        run_ids.append(out.strip().splitlines()[-1])
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("concurrent")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_id for r in runs) == sorted(run_ids)
    for rid in run_ids:
        for key in ("loss", "acc"):
            steps = [m.step for m in client.get_metric_history(rid, key)]
            assert sorted(steps) == list(range(40))


def test_git_dirty_flag_ignores_the_results_folder(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "results").mkdir()
    (tmp_path / "code.py").write_text("a = 1\n")
    (tmp_path / "results" / "table.csv").write_text("x\n1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    assert tracking.git_state(tmp_path)["git_dirty"] == "false"
    (tmp_path / "results" / "table.csv").write_text("x\n2\n")  # the pipeline rewrote a result
    assert tracking.git_state(tmp_path)["git_dirty"] == "false"
    (tmp_path / "code.py").write_text("a = 2\n")  # the code changed
    state = tracking.git_state(tmp_path)
    assert state["git_dirty"] == "true" and len(state["git_commit"]) == 40


def test_log_metrics_turns_class_names_into_valid_metric_names_and_logs_once():
    # per-class scores are named after classes such as "disk@scene0", which MLflow refuses as a metric name
    exp = tracking.get_or_create_experiment("metric_names")
    with mlflow.start_run(experiment_id=exp) as run:
        pass
    tracking.log_metrics(run.info.run_id, {"iou_disk@scene0": 0.25, "val_miou": 0.5}, step=2)
    tracking.log_metrics(run.info.run_id, {"iou_disk@scene0": 0.25}, step=2)  # the same value again: skipped
    client = MlflowClient()
    assert client.get_run(run.info.run_id).data.metrics == {"iou_disk_scene0": 0.25, "val_miou": 0.5}
    assert len(client.get_metric_history(run.info.run_id, "iou_disk_scene0")) == 1


def test_hardware_records_lowered_instruction_sets_only_when_set(monkeypatch):
    for name in tracking._ISA_CAPS:
        monkeypatch.delenv(name, raising=False)
    tracking.hardware.cache_clear()
    assert "isa_caps" not in tracking.hardware()
    tracking.hardware.cache_clear()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "SSE41")
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "SSE4_2")
    assert tracking.hardware()["isa_caps"] == "ONEDNN_MAX_CPU_ISA=SSE41 MKL_ENABLE_INSTRUCTIONS=SSE4_2"
