"""Checkpoints and resume: atomic writes, weights_only loads, corrupt files, kill -9 mid-training."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from dla_repro.engine import CheckpointError, TrainConfig, fit, load_checkpoint, save_checkpoint
from dla_repro.engine import checkpoint as checkpoint_module
from dla_repro.engine import loop
from test_engine import client, metrics_only, small_config, toy_data, toy_model

TESTS = Path(__file__).resolve().parent
METRICS = ("lr", "train_loss", "train_top1", "val_loss", "val_top1", "val_ema_top1", "epoch_time_s")


def logged_steps(run_id: str) -> dict[str, list[int]]:
    return {key: sorted(m.step for m in client().get_metric_history(run_id, key)) for key in METRICS}


def resume_config(ckpt_dir: Path) -> TrainConfig:
    return TrainConfig(epochs=4, batch_size=16, lr=0.2, schedule="step", decay_epochs=2, ema=True,
                       ema_decay=0.9, progress=False, ckpt_dir=str(ckpt_dir), resume=True)


# ------------------------------------------------------------------ files on disk
def test_checkpoints_load_with_weights_only(tmp_path):
    result = fit(toy_model(), toy_data(32, 16), small_config(tmp_path, epochs=2), run_name="wo")
    ckpt = torch.load(result.checkpoint, weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["run_id"] == result.run_id
    assert ckpt["config"]["epochs"] == 2 and len(ckpt["history"]) == 2
    assert set(ckpt["rng"]) == {"torch", "cuda", "numpy", "python"}
    assert torch.load(result.best_checkpoint, weights_only=True)["epoch"] == result.best_epoch
    weights = torch.load(result.weights, weights_only=True)
    model = toy_model(seed=1)
    model.load_state_dict(weights)  # final.pt is a bare state_dict
    assert not list(tmp_path.glob("ckpt/.*.tmp"))


def test_atomic_write_leaves_old_file_and_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt" / "last.pt"
    save_checkpoint({"epoch": 0}, path)
    before = path.read_bytes()

    def dies_halfway(obj, f):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.torch, "save", dies_halfway)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"epoch": 1}, path)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "pickle"])
def test_corrupt_checkpoint_is_a_clear_error(tmp_path, damage):
    cfg = small_config(tmp_path, epochs=1)
    result = fit(toy_model(), toy_data(32, 16), cfg, run_name="corrupt")
    path = result.checkpoint
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    else:  # a pickle needing arbitrary code: refused by weights_only
        torch.save({"model": Path("somewhere")}, path)
    with pytest.raises(CheckpointError, match=str(path)) as err:
        fit(toy_model(), toy_data(32, 16), dataclasses.replace(cfg, resume=True), run_name="corrupt")
    assert err.value.__cause__ is None and err.value.__suppress_context__
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")


def test_resume_with_other_parameters_is_refused(tmp_path):
    cfg = small_config(tmp_path, epochs=1)
    fit(toy_model(), toy_data(32, 16), cfg, run_name="p")
    with pytest.raises(CheckpointError, match="different parameters.*lr"):
        fit(toy_model(), toy_data(32, 16), dataclasses.replace(cfg, lr=0.5, resume=True), run_name="p")


# ------------------------------------------------------------------------- resume
KILLED_TRAINING = """
import sys
import torch
torch.set_num_threads({threads})  # as the resuming process: CPU reductions depend on the thread count
sys.path.insert(0, {tests!r})
from test_engine import toy_data, toy_model
from test_engine_checkpoint import resume_config
from dla_repro.engine import fit
fit(toy_model(), toy_data(delay={delay}), resume_config({ckpt!r}), run_name="killed")
"""


def test_kill_9_then_resume_same_run_each_step_once_same_metrics(tmp_path):
    ckpt = tmp_path / "killed"
    script = KILLED_TRAINING.format(tests=str(TESTS), ckpt=str(ckpt), delay=0.01,
                                    threads=torch.get_num_threads())
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not (ckpt / "last.pt").exists():
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # mid epoch 1: each epoch takes ~2 s with the delay
    finally:
        proc.kill()
        proc.wait()
    saved = load_checkpoint(ckpt / "last.pt")
    assert saved["epoch"] < 3  # killed before the end (normally during epoch 1)
    run_id = saved["run_id"]
    assert client().get_run(run_id).info.status == "RUNNING"  # killed: nobody closed it

    resumed = fit(toy_model(), toy_data(), resume_config(ckpt), run_name="killed")
    clean = fit(toy_model(), toy_data(), dataclasses.replace(resume_config(tmp_path / "clean"), resume=False),
                run_name="clean")

    assert resumed.run_id == run_id
    assert client().get_run(run_id).info.status == "FINISHED"
    assert logged_steps(run_id) == {key: [0, 1, 2, 3] for key in METRICS}
    pd.testing.assert_frame_equal(metrics_only(resumed.history), metrics_only(clean.history))
    assert resumed.history["lr"].tolist() == pytest.approx([0.2, 0.2, 0.02, 0.02])
    for key, value in client().get_run(run_id).data.metrics.items():  # latest logged values
        assert value == pytest.approx(clean.final[key]) or key == "epoch_time_s"


def test_killed_between_checkpoint_and_log_backfills_the_missing_step(tmp_path, monkeypatch):
    ckpt = tmp_path / "gap"
    calls = []
    real_log_metrics = loop.mlflow.log_metrics

    def dies_on_second_epoch(metrics, step):
        calls.append(step)
        if step == 1:
            raise KeyboardInterrupt  # as if killed after last.pt (epoch 1) was written
        real_log_metrics(metrics, step=step)

    monkeypatch.setattr(loop.mlflow, "log_metrics", dies_on_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        fit(toy_model(), toy_data(64, 16), resume_config(ckpt), run_name="gap")
    monkeypatch.setattr(loop.mlflow, "log_metrics", real_log_metrics)
    run_id = load_checkpoint(ckpt / "last.pt")["run_id"]
    assert load_checkpoint(ckpt / "last.pt")["epoch"] == 1
    assert logged_steps(run_id)["train_loss"] == [0]

    resumed = fit(toy_model(), toy_data(64, 16), resume_config(ckpt), run_name="gap")
    assert resumed.run_id == run_id
    assert logged_steps(run_id) == {key: [0, 1, 2, 3] for key in METRICS}


def test_finished_run_is_returned_without_retraining(tmp_path, monkeypatch):
    cfg = dataclasses.replace(resume_config(tmp_path / "done"), epochs=2)
    first = fit(toy_model(), toy_data(32, 16), cfg, run_name="done")
    train_epoch = loop._train_epoch
    monkeypatch.setattr(loop, "_train_epoch", lambda *a: pytest.fail("retrained a finished run"))
    again = fit(toy_model(seed=5), toy_data(32, 16), cfg, run_name="done")
    assert again.run_id == first.run_id
    assert again.history.equals(first.history)
    assert logged_steps(first.run_id)["train_loss"] == [0, 1]
    # resume=False trains again, in a new run (of this test's store: no monkeypatch.undo(), which
    # would also undo the isolated-store fixture)
    monkeypatch.setattr(loop, "_train_epoch", train_epoch)
    fresh = fit(toy_model(), toy_data(32, 16), dataclasses.replace(cfg, resume=False), run_name="done")
    assert fresh.run_id != first.run_id
