"""Training engine: learning, determinism, schedules, tasks, non-finite loss, MLflow, DDP.

Everything trains a tiny conv net on a few hundred 3×8×8 random tensors for a few
epochs, on CPU. ``toy_data`` / ``toy_model`` are shared with test_engine_checkpoint.py.
"""

from __future__ import annotations

import dataclasses
import math
import time

import pytest
import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from dla_repro import tracking
from dla_repro.engine import (
    ClassificationTask,
    DataBundle,
    NonFiniteLossError,
    SegmentationTask,
    TopKAccuracy,
    TrainConfig,
    evaluate,
    fit,
    seed_everything,
)
from dla_repro.engine import distributed


class ToyImages(Dataset):
    """Label = sign of the mean of channel 0; ``augment``: random flips drawn from torch's RNG.

    ``delay`` slows ``__getitem__`` down (the kill test needs an epoch that lasts a while).
    """

    def __init__(self, x, y, augment: bool = False, delay: float = 0.0):
        self.x, self.y, self.augment, self.delay = x, y, augment, delay

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        if self.delay:
            time.sleep(self.delay)
        x = self.x[i]
        if self.augment and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, self.y[i]


def toy_data(n_train: int = 128, n_val: int = 64, delay: float = 0.0) -> DataBundle:
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(n_train + n_val, 3, 8, 8, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long()
    return DataBundle(
        ToyImages(x[:n_train], y[:n_train], augment=True, delay=delay),
        ToyImages(x[n_train:], y[n_train:]),
        name="toy-images",
        digest="toy1234",
        source="tests/test_engine.py",
    )


def toy_model(seed: int = 0, classes: int = 2) -> nn.Module:
    seed_everything(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.2),  # draws from the RNG every step: resume must restore it
        nn.Linear(8, classes),
    )


def small_config(tmp_path, **overrides) -> TrainConfig:
    base = dict(epochs=3, batch_size=16, lr=0.1, schedule="cosine", progress=False, ckpt_dir=str(tmp_path / "ckpt"))
    return TrainConfig(**{**base, **overrides})


def metrics_only(history):
    """The history without wall-clock times, for exact comparisons."""
    return history.drop(columns=["epoch_time_s"])


def client() -> MlflowClient:
    return MlflowClient(tracking.configure())


# ------------------------------------------------------------------------ learning
def test_loss_decreases_and_identical_runs_match(tmp_path):
    cfg = small_config(tmp_path, epochs=4, lr=0.3)
    model, data = toy_model(), toy_data()
    first = fit(model, data, cfg, run_name="toy")
    h = first.history
    assert list(h["epoch"]) == [0, 1, 2, 3]
    assert h["train_loss"].iloc[-1] < h["train_loss"].iloc[0] - 0.1
    assert h["val_loss"].iloc[-1] < h["val_loss"].iloc[0]
    assert h["val_top1"].iloc[-1] > 0.75
    assert "train_top5" not in h  # two classes: no top-5
    assert first.monitor == "val_top1" and first.best == h["val_top1"].max()
    assert evaluate(model, data.val, config=cfg) == {"loss": h["val_loss"].iloc[-1], "top1": h["val_top1"].iloc[-1]}

    again = fit(toy_model(), toy_data(), dataclasses.replace(cfg, ckpt_dir=str(tmp_path / "again")), run_name="toy")
    assert metrics_only(again.history).equals(metrics_only(first.history))

    run = client().get_run(first.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["lr"] == "0.3" and run.data.params["task.name"] == "classification"
    assert "resume" not in run.data.params and "progress" not in run.data.params
    assert run.data.tags["dataset.name"] == "toy-images"
    assert len(run.inputs.dataset_inputs) == 1
    for key in ("train_loss", "train_top1", "val_loss", "val_top1", "lr", "epoch_time_s"):
        assert [m.step for m in client().get_metric_history(first.run_id, key)] == [0, 1, 2, 3]
    artifacts = {a.path for a in client().list_artifacts(first.run_id)}
    assert {"config.json", "checkpoints"} <= artifacts
    assert [a.path for a in client().list_artifacts(first.run_id, "checkpoints")] == ["checkpoints/final.pt"]


def test_val_every_scores_fewer_epochs_and_trains_the_same_weights(tmp_path):
    cfg = small_config(tmp_path, epochs=5, lr=0.3)
    every = fit(toy_model(), toy_data(), cfg, run_name="toy")
    sparse = fit(toy_model(), toy_data(), dataclasses.replace(cfg, val_every=2, ckpt_dir=str(tmp_path / "sparse")),
                 run_name="toy")
    scored = sparse.history["val_top1"].notna().tolist()
    assert scored == [False, True, False, True, True]  # every 2nd epoch and the last
    train = [c for c in every.history if c.startswith("train_")]
    assert sparse.history[train].equals(every.history[train])  # scoring touches no weight
    assert sparse.final["val_top1"] == every.final["val_top1"]
    assert sparse.best == max(every.history["val_top1"].iloc[[1, 3, 4]])  # best among the scored epochs
    last = fit(toy_model(), toy_data(), dataclasses.replace(cfg, val_every=0, ckpt_dir=str(tmp_path / "last")),
               run_name="toy")
    assert last.history["val_top1"].notna().tolist() == [False] * 4 + [True] and last.best_epoch == 4
    assert [m.step for m in client().get_metric_history(last.run_id, "val_top1")] == [4]
    assert "val_every" not in client().get_run(last.run_id).data.params  # how often it is watched, not what it is
    with pytest.raises(ValueError, match="val_every"):
        small_config(tmp_path, val_every=-1)


def test_fit_nests_under_active_run(tmp_path):
    parent = tracking.start_notebook_run("unit_engine", {"epochs": 1}, profile="smoke").info.run_id
    result = fit(toy_model(), toy_data(32, 16), small_config(tmp_path, epochs=1), run_name="nested")
    tracking.end_notebook_run()
    assert client().get_run(result.run_id).data.tags["mlflow.parentRunId"] == parent


# ----------------------------------------------------------------------- schedules
@pytest.mark.parametrize(
    "schedule, extra, expected",
    [
        ("step", dict(decay_epochs=2, decay_rate=0.1), [0.1, 0.1, 0.01, 0.01]),
        ("poly", dict(poly_power=0.9), [0.1 * (1 - t / 4) ** 0.9 for t in range(4)]),
        ("cosine", dict(), [0.1 * 0.5 * (1 + math.cos(math.pi * t / 4)) for t in range(4)]),
    ],
)
def test_schedule_lr_per_epoch(tmp_path, schedule, extra, expected):
    cfg = small_config(tmp_path, epochs=4, schedule=schedule, **extra)
    result = fit(toy_model(), toy_data(16, 16), cfg, run_name=schedule)
    assert result.history["lr"].tolist() == pytest.approx(expected, rel=1e-9)


def test_poly_per_update_and_warmup(tmp_path):
    # 32 samples / batch 16 = 2 updates per epoch; t counts updates, T = 4 epochs × 2.
    cfg = small_config(tmp_path, epochs=4, schedule="poly", step_on_epochs=False)
    result = fit(toy_model(), toy_data(32, 16), cfg, run_name="poly-updates")
    assert result.history["lr"].tolist() == pytest.approx([0.1 * (1 - 2 * e / 8) ** 0.9 for e in range(4)])

    cfg = small_config(tmp_path, epochs=3, schedule="constant", warmup_epochs=2, warmup_lr=0.0, ckpt_dir=str(tmp_path / "w"))
    result = fit(toy_model(), toy_data(16, 16), cfg, run_name="warmup")
    assert result.history["lr"].tolist() == pytest.approx([0.0, 0.05, 0.1])


def test_config_rejects_unknown_schedule():
    with pytest.raises(ValueError, match="schedule='exp'"):
        TrainConfig(schedule="exp")


# ----------------------------------------------------------------- non-finite loss
def test_nan_loss_stops_with_error_and_failed_run(tmp_path):
    data = toy_data(64, 16)
    data.train.x = data.train.x.clone()
    data.train.x[37] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"epoch 0, step \d+") as err:
        fit(toy_model(), data, small_config(tmp_path), run_name="nan")
    runs = client().search_runs(
        [client().get_experiment_by_name("scratch").experiment_id], "attributes.run_name = 'nan'"
    )
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FAILED"
    assert run.data.tags["nonfinite_loss.epoch"] == "0"
    assert run.data.tags["nonfinite_loss.step"] == str(err.value.step)
    assert "NonFiniteLossError" in run.data.tags["failure"]
    assert client().get_metric_history(run.info.run_id, "train_loss") == []


# --------------------------------------------------------------------------- tasks
def test_topk_accuracy():
    acc = TopKAccuracy((1, 5))
    logits = torch.tensor([[0.0, 1, 2, 3, 4, 5], [5.0, 4, 3, 2, 1, 0]])
    acc.update(logits, torch.tensor([5, 5]))  # first: top-1 hit; second: rank 6 → miss both
    acc.update(logits[:1], torch.tensor([1]))  # rank 5 → top-5 hit only
    assert acc.compute() == pytest.approx({"top1": 1 / 3, "top5": 2 / 3})


def test_segmentation_metrics_ignore_255_and_skip_absent_classes():
    meter = SegmentationTask(num_classes=4).metrics()
    target = torch.tensor([[[0, 0, 1, 255]]])
    pred = torch.tensor([[[0, 1, 1, 3]]])  # the 255 pixel predicted 3: ignored, so class 3 is absent
    meter.update(F.one_hot(pred, 4).permute(0, 3, 1, 2).float(), target)  # as logits N×C×H×W
    out = meter.compute()
    assert out["pixel_acc"] == pytest.approx(2 / 3)
    assert out["miou"] == pytest.approx((1 / 2 + 1 / 2) / 2)  # class 0: 1/(2+0), class 1: 1/(1+1)


def test_segmentation_loss_weights_ignore_and_resize():
    task = SegmentationTask(num_classes=2, class_weights=(1.0, 10.0))
    logits = torch.randn(2, 2, 4, 4)
    target = torch.randint(0, 2, (2, 8, 8))
    target[0, 0, 0] = 255
    up = F.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=False)
    expected = F.cross_entropy(up, target, weight=torch.tensor([1.0, 10.0]), ignore_index=255)
    assert task.loss(logits, target).item() == pytest.approx(expected.item())


def test_segmentation_fit_with_ema_clip_and_channels_last(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 3, 8, 8, generator=g)
    y = (x[:, 0] > 0).long()  # per-pixel label from channel 0
    y[:, 0, 0] = 255
    data = (TensorDataset(x[:32], y[:32]), TensorDataset(x[32:], y[32:]))
    seed_everything(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 1), nn.AvgPool2d(2))
    cfg = small_config(tmp_path, epochs=2, ema=True, ema_decay=0.5, clip_grad=1.0, channels_last=True)
    result = fit(model, data, cfg, SegmentationTask(num_classes=2), run_name="seg")
    row = result.final
    for key in ("train_loss", "train_miou", "train_pixel_acc", "val_loss", "val_miou", "val_ema_miou"):
        assert key in row
    assert 0.0 <= row["val_miou"] <= 1.0
    assert result.monitor == "val_miou"
    assert (result.weights.parent / "final_ema.pt").is_file()


def test_custom_evaluator_and_monitor(tmp_path):
    class Count:
        def __init__(self):
            self.n = 0

        def update(self, output, target):
            self.n += len(target)

        def compute(self):
            return {"seen": self.n}

    class CountingTask(ClassificationTask):
        def metrics(self):
            return Count()

    cfg = small_config(tmp_path, epochs=2, monitor="val_loss", optimizer="adamw", lr=0.01)
    result = fit(toy_model(), toy_data(32, 16), cfg, CountingTask(), run_name="custom")
    assert result.final["train_seen"] == 32 and result.final["val_seen"] == 16
    assert result.monitor == "val_loss" and result.best == result.history["val_loss"].min()


# ---------------------------------------------------------------------------- DDP
def test_ddp_path_world_size_one(tmp_path, monkeypatch):
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1
    )
    wrapped = []
    real_wrap = distributed.wrap
    monkeypatch.setattr(distributed, "wrap", lambda *a: wrapped.append(real_wrap(*a)) or wrapped[-1])
    try:
        cfg = small_config(tmp_path, epochs=2)
        result = fit(toy_model(), toy_data(32, 16), cfg, run_name="ddp")
    finally:
        torch.distributed.destroy_process_group()
    assert isinstance(wrapped[0], torch.nn.parallel.DistributedDataParallel)
    assert result.run_id is not None and len(result.history) == 2
    plain = fit(toy_model(), toy_data(32, 16), dataclasses.replace(cfg, ckpt_dir=str(tmp_path / "plain")), run_name="plain")
    assert metrics_only(plain.history).equals(metrics_only(result.history))
