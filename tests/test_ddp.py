"""Several processes: ``dla-repro train --nproc N`` (torchrun, DDP on gloo), global batch, SyncBatchNorm.

The slow tests start real processes: ``torchrun -m ddp_toy`` (two ranks training the tiny study of
``tests/ddp_toy.py``, compared step by step with one process), and ``dla-repro train`` on a notebook
whose rank 1 kills its own training process mid-run, then ``--resume``. Every process runs one
thread (``OMP_NUM_THREADS=1``).
"""

from __future__ import annotations

import argparse
import os
import pickle
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import ddp_toy
from dla_repro import cli, launch, pipeline
from dla_repro.engine import TrainConfig, distributed, fit
from dla_repro.engine.loaders import make_loader
from dla_repro.engine.sweep import resolve_workers
from nbfactory import make_notebook

TESTS = Path(__file__).resolve().parent
TIMEOUT = 300  # seconds a whole dla-repro train may take here before the test calls it a hang


def _env(**extra: str) -> dict[str, str]:
    """This test's environment (its throw-away store and folders) for a subprocess, one thread each."""
    path = os.pathsep.join([str(TESTS.parent), str(TESTS), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra}


def _fast_store() -> Path:
    """The test's MLflow store, made from a migrated empty one (a fresh store costs ~10 s of migrations)."""
    db = Path(os.environ["MLFLOW_TRACKING_URI"].removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    return launch._empty_store(db)


@pytest.fixture
def toy_pipeline(tmp_path) -> Path:
    folder = tmp_path / "nb"
    make_notebook(folder / "ddp_toy.ipynb", ddp_toy.PARAMETERS, ddp_toy.CODE)
    (folder / "pipeline.yaml").write_text(ddp_toy.PIPELINE)
    return folder / "pipeline.yaml"


# ------------------------------------------------------------------------ the command
def _args(**overrides) -> argparse.Namespace:
    parser = cli.build_parser()
    args = parser.parse_args(["train", "ddp_toy", "--nproc", "2"])
    return argparse.Namespace(**{**vars(args), **overrides})


def test_train_runs_torchrun_on_the_rank_entry_point(toy_pipeline, capsys):
    assert cli.main(["--pipeline", str(toy_pipeline), "train", "ddp_toy", "--profile", "smoke", "--nproc", "2",
                     "-p", "epochs=2", "--resume", "--dry-run"]) == 0
    cmd = capsys.readouterr().out.split()
    assert cmd[1:8] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "--max-restarts",
                        "0"]
    rank = cmd[cmd.index("dla_repro.launch") + 1:]
    assert rank == ["ddp_toy", "--profile", "smoke", "-p", "epochs=2", "--resume", "--pipeline", str(toy_pipeline.resolve())]


def test_train_passes_the_multi_node_rendezvous():
    cmd = launch.torchrun_command(_args(nproc=8, nnodes=2, node_rank=1, rdzv_endpoint="head:29400",
                                        rdzv_id="job7"))
    head = cmd[:cmd.index("-m", 3)]
    assert "--standalone" not in head
    for flag, value in [("--nproc-per-node", "8"), ("--nnodes", "2"), ("--node-rank", "1"),
                        ("--rdzv-backend", "c10d"), ("--rdzv-endpoint", "head:29400"), ("--rdzv-id", "job7")]:
        assert head[head.index(flag) + 1] == value


def test_train_checks_parameters_and_the_global_batch_before_starting(toy_pipeline):
    pipe = toy_pipeline
    with pytest.raises(pipeline.PipelineError, match="batch_size=15 is the global batch.*2 processes"):
        launch.check(_args(pipeline=pipe, param=["batch_size=15"]))
    with pytest.raises(pipeline.PipelineError, match="batch_size=16 .* 6 processes"):
        launch.check(_args(pipeline=pipe, nproc=3, nnodes=2, rdzv_endpoint="h:1"))
    with pytest.raises(pipeline.ParameterError, match="unknown parameter 'nope'"):
        launch.check(_args(pipeline=pipe, param=["nope=1"]))
    with pytest.raises(pipeline.PipelineError, match="--rdzv-endpoint"):
        launch.check(_args(pipeline=pipe, nnodes=2))
    notebook = toy_pipeline.parent / "ddp_toy.ipynb"
    args = _args(pipeline=pipe, names=[str(notebook)])
    assert [job.name for job in launch.check(args)] == ["ddp_toy"]  # a notebook's path names its entry


# ---------------------------------------------------------------- engine under DDP
def test_global_batch_is_split_over_ranks_into_the_same_batches():
    """N ranks read batch_size / N each; together, step by step, the samples one process reads."""
    data = ddp_toy.data(n_train=32).train
    cfg = TrainConfig(batch_size=8)
    one = make_loader(data, cfg, distributed.DistInfo(), torch.device("cpu"), train=True)
    ranks = [make_loader(data, cfg, distributed.DistInfo(rank=r, world_size=2), torch.device("cpu"), train=True)
             for r in (0, 1)]
    for loader in (one, *ranks):
        loader.sampler.set_epoch(3)
    whole = [sorted(x[:, 0].tolist()) for x, _ in one]
    split = [sorted(a[:, 0].tolist() + b[:, 0].tolist()) for (a, _), (b, _) in zip(*ranks)]
    assert len(whole) == len(split) == 4 and [len(x) for x, _ in ranks[0]] == [4] * 4
    assert split == whole
    assert distributed.per_rank_batch(16, distributed.DistInfo(world_size=4)) == 4
    with pytest.raises(ValueError, match="batch_size=10 is the global batch.*4 processes"):
        distributed.per_rank_batch(10, distributed.DistInfo(world_size=4))
    val = make_loader(data, cfg, distributed.DistInfo(rank=2, world_size=3), torch.device("cpu"), train=False)
    assert val.batch_size == 3  # evaluation splits any batch (rounded up): no update depends on it


def test_sync_bn_converts_every_batchnorm_when_a_process_group_exists():
    model = ddp_toy.build(batchnorm=True)
    keys = list(model.state_dict())
    assert distributed.sync_batchnorm(model, distributed.DistInfo(), torch.device("cpu")) is model
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    group = distributed.DistInfo(world_size=2, enabled=True)
    converted = distributed.sync_batchnorm(model, group, torch.device("cuda", 0))
    assert any(isinstance(m, nn.SyncBatchNorm) for m in converted.modules())
    assert not any(type(m) is nn.BatchNorm1d for m in converted.modules())
    assert list(converted.state_dict()) == keys  # checkpoints load either way
    with pytest.raises(ValueError, match="SyncBatchNorm needs GPUs"):
        distributed.sync_batchnorm(ddp_toy.build(batchnorm=True), group, torch.device("cpu"))
    assert "sync_bn" not in TrainConfig().params() and TrainConfig(sync_bn=True).params()["sync_bn"] is True


def test_sync_bn_on_a_cpu_process_group_stops_before_training(tmp_path):
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        with pytest.raises(ValueError, match="SyncBatchNorm needs GPUs"):
            fit(ddp_toy.build(batchnorm=True), ddp_toy.data(),
                TrainConfig(epochs=1, batch_size=8, sync_bn=True, progress=False, ckpt_dir=str(tmp_path / "c")))
    finally:
        torch.distributed.destroy_process_group()


def test_sweeps_are_serial_under_torchrun(monkeypatch):
    assert resolve_workers(0, "cpu", 5) >= 1
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert resolve_workers(0, "cpu", 5) == 1 and resolve_workers(4, "cpu", 5) == 1


def test_a_sweep_in_a_process_group_trains_here_whatever_the_executor(tmp_path, monkeypatch):
    """Every rank must train each (trial, seed) itself: no worker processes, no Ray tasks."""
    _fast_store()
    monkeypatch.setenv("DLA_REPRO_EXECUTOR", "ray")
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        seen = ddp_toy.train("in-group", TrainConfig(epochs=1, batch_size=8, progress=False, sweep_workers=2,
                                                     sweep_executor="ray"))
    finally:
        torch.distributed.destroy_process_group()
    assert len(seen["steps"]) == 4  # trained in this process (the task recorded its steps)


# --------------------------------------------------------------- real processes
@pytest.mark.slow
def test_two_processes_give_the_loss_curve_of_one(tmp_path):
    """torchrun, 2 gloo ranks, global batch 8 (4 per rank), 12 updates: every step's loss, the
    epoch metrics and the final weights equal one process's with batch 8; rank 1 logs nothing."""
    _fast_store()
    torch.set_num_threads(1)
    one = ddp_toy.train("one")
    out = tmp_path / "ranks"
    out.mkdir()
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "--max-restarts", "0", "-m", "ddp_toy", str(out)],
                          env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [pickle.loads((out / f"rank{r}.pkl").read_bytes()) for r in (0, 1)]

    assert len(one["steps"]) == len(ranks[0]["steps"]) == len(ranks[1]["steps"]) == 12
    # each rank's loss is the mean over its 4 samples; the global batch's is their mean
    both = [(a + b) / 2 for a, b in zip(ranks[0]["steps"], ranks[1]["steps"])]
    assert both == pytest.approx(one["steps"], rel=1e-5)
    assert ranks[0]["steps"] != pytest.approx(ranks[1]["steps"], rel=1e-3)  # the ranks did read different halves
    for rank in ranks:
        for key in ("train_loss", "train_top1", "val_loss", "val_top1"):
            assert rank["history"][key].tolist() == pytest.approx(one["history"][key].tolist(), rel=1e-5), key
        for name, value in one["weights"].items():
            torch.testing.assert_close(rank["weights"][name], value, rtol=1e-5, atol=1e-6)

    assert ranks[0]["run_id"] is not None and ranks[1]["run_id"] is None
    assert ranks[1]["sweep_run_id"] is None  # rank 1 opened no MLflow run
    with sqlite3.connect(os.environ["MLFLOW_TRACKING_URI"].removeprefix("sqlite:///")) as db:
        names = sorted(n for (n,) in db.execute("select name from runs"))
        steps = [s for (s,) in db.execute("select step from metrics where run_uuid = ? and key = 'train_loss' "
                                          "order by step", (ranks[0]["run_id"],))]
    assert names == ["ddp", "mlp seed=0", "mlp seed=0", "one"]
    assert steps == [0, 1, 2]


# ------------------------------------------------------- dla-repro train, kill, resume
def _runs(db_path: Path) -> dict[str, dict]:
    """Every run of the store: name, kind, status, and per metric its logged steps (in logging order)."""
    with sqlite3.connect(db_path) as db:
        runs = {uuid: {"name": name, "status": status, "kind": None, "steps": {}}
                for uuid, name, status in db.execute("select run_uuid, name, status from runs")}
        for uuid, kind in db.execute("select run_uuid, value from tags where key = 'kind'"):
            runs[uuid]["kind"] = kind
        for uuid, key, step in db.execute("select run_uuid, key, step from metrics order by rowid"):
            runs[uuid]["steps"].setdefault(key, []).append(step)
        for uuid, key, value in db.execute("select run_uuid, key, value from metrics where key = 'train_loss' "
                                           "order by step"):
            runs[uuid].setdefault("train_loss", []).append(value)
    return runs


def _train(pipeline_file: Path, *extra: str, env: dict) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-m", "dla_repro.cli", "--pipeline", str(pipeline_file), "train",
                               "ddp_toy", "--profile", "smoke", "--nproc", "2", *extra],
                              env=env, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"dla-repro train hung (no exit after {TIMEOUT} s):\n{exc.stdout}\n{exc.stderr}")
    return proc, time.monotonic() - start


@pytest.mark.slow
@pytest.mark.notebook
def test_a_killed_rank_fails_the_job_and_resume_continues_it(toy_pipeline):
    """Rank 1's training process SIGKILLs itself as epoch 2 (of 4) starts: the job exits non-zero, its runs
    are FAILED/KILLED (none left RUNNING); ``--resume`` continues in the same runs from rank 0's last
    checkpoint, every metric logged once per epoch, and the curve is the uninterrupted one-process curve."""
    db = _fast_store()
    proc, seconds = _train(toy_pipeline, env=_env(**{ddp_toy.KILL_ENV: "1:2"}))
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output[-3000:]  # torchrun's status for a failed rank
    assert "dla-repro[rank 1]: [1/1] ddp_toy: FAILED" in output, output[-3000:]
    killed = _runs(db)
    assert {r["kind"] for r in killed.values()} == {"notebook", "sweep", "fit"}, killed
    assert all(r["status"] in ("FAILED", "KILLED") for r in killed.values()), killed
    (fit_id, fit_run), = ((k, r) for k, r in killed.items() if r["kind"] == "fit")
    assert fit_run["steps"]["train_loss"] in ([], [0], [0, 1])  # epoch 2 never ran

    proc, _ = _train(toy_pipeline, "--resume", env=_env())
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    resumed = _runs(db)
    assert set(resumed) == set(killed)  # the same runs, reopened
    assert all(r["status"] == "FINISHED" for r in resumed.values()), resumed
    for key, steps in resumed[fit_id]["steps"].items():
        assert steps == [0, 1, 2, 3], (key, steps)  # unique and contiguous: nothing logged twice

    torch.set_num_threads(1)
    config = TrainConfig(epochs=4, batch_size=16, optimizer="sgd", lr=0.2, momentum=0.9, weight_decay=0.0,
                         schedule="constant", progress=False)
    one = ddp_toy.train("one", config)
    assert resumed[fit_id]["train_loss"] == pytest.approx(one["history"]["train_loss"].tolist(), rel=1e-5)
    print(f"killed job ended in {seconds:.0f} s")
