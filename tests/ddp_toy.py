"""A tiny study for ``tests/test_ddp.py``, importable by the test, by ``torchrun -m ddp_toy`` and by the
kernels of the notebook the test writes (``tests/`` on ``PYTHONPATH``).

Data: points in 8 dimensions labelled by the sign of their first coordinate; model: a two-layer
perceptron, without BatchNorm so that N processes and one compute the same thing (with
``batchnorm=True`` to check ``sync_bn``). ``DLA_REPRO_TEST_KILL=RANK:EPOCH`` makes the training
process of that rank SIGKILL itself as that epoch starts (the training set's ``set_epoch``, which
``fit`` calls every epoch).

``python -m torch.distributed.run --nproc-per-node N -m ddp_toy OUT`` trains :data:`CONFIG` with
:func:`train` on every rank and pickles what each rank saw to ``OUT/rank<k>.pkl``.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from dla_repro.engine import ClassificationTask, DataBundle, TrainConfig, Trial, sweep

KILL_ENV = "DLA_REPRO_TEST_KILL"
# 32 samples, global batch 8: 4 updates per epoch, 3 epochs; sweep_workers=0 is forced to 1 under DDP
CONFIG = TrainConfig(epochs=3, batch_size=8, optimizer="sgd", lr=0.2, momentum=0.9, weight_decay=0.0,
                     schedule="constant", progress=False, sweep_workers=0)


class Points(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor, train: bool = False):
        self.x, self.y, self.train = x, y, train

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]

    def set_epoch(self, epoch: int, seed: int) -> None:
        if self.train and os.environ.get(KILL_ENV) == f"{os.environ.get('RANK', '0')}:{epoch}":
            os.kill(os.getpid(), signal.SIGKILL)


def data(n_train: int = 32, n_val: int = 16) -> DataBundle:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(n_train + n_val, 8, generator=g)
    y = (x[:, 0] > 0).long()
    return DataBundle(Points(x[:n_train], y[:n_train], train=True), Points(x[n_train:], y[n_train:]),
                      name="ddp-toy", digest="ddp-toy-7", source="tests/ddp_toy.py")


def build(width: int = 16, batchnorm: bool = False) -> nn.Module:
    norm = [nn.BatchNorm1d(width)] if batchnorm else []
    return nn.Sequential(nn.Linear(8, width), *norm, nn.ReLU(), nn.Linear(width, 2))


class RecordingTask(ClassificationTask):
    """Classification that remembers this process's loss of every training step (its own shard's)."""

    def __init__(self):
        super().__init__(topk=(1,))
        self.steps: list[float] = []

    def loss(self, output, target, model=None):
        value = super().loss(output, target, model=model)
        if torch.is_grad_enabled():  # training; evaluation runs under no_grad
            self.steps.append(value.item())
        return value


def train(name: str, config: TrainConfig = CONFIG) -> dict:
    """Sweep ``name``: one trial, seed 0, on :func:`data`; this process's per-step losses, history, weights."""
    task = RecordingTask()
    result = sweep(name, [Trial("mlp", {"width": 16}, build)], data(), config, seeds=[0], task=task)
    fit = result.fits[("mlp", 0)]
    weights = torch.load(fit.weights, weights_only=True)
    return {"steps": task.steps, "history": result.history, "weights": weights, "run_id": fit.run_id,
            "sweep_run_id": result.sweep_run_id}


PARAMETERS = """\
profile: str = "smoke"
epochs: int = 4
batch_size: int = 16
n_train: int = 32
optimizer: str = "sgd"
lr: float = 0.2
momentum: float = 0.9
weight_decay: float = 0.0
schedule: str = "constant"
seeds: list[int] = [0]
sweep_workers: int = 0  # forced to 1 under torchrun
resume: bool = False
"""

CODE = """\
import ddp_toy
from dla_repro import notebook, tracking
from dla_repro.engine import ClassificationTask, Trial, sweep

params = notebook.parameters(globals())
run = notebook.start("ddp_toy", params)
config = notebook.train_config(params)
trials = [Trial("mlp", {"width": 16}, ddp_toy.build)]
result = sweep("toy", trials, ddp_toy.data(n_train), config, seeds=seeds, task=ClassificationTask(topk=(1,)))
print(result.runs.to_string())
tracking.end_notebook_run()
"""

PIPELINE = """\
profiles: {smoke: {defaults: {}}, quick: {defaults: {}}, paper: {defaults: {}}}
notebooks:
  - name: ddp_toy
    path: ddp_toy.ipynb
    experiment: ddp_toy
"""


if __name__ == "__main__":
    out = Path(sys.argv[1])
    seen = train("ddp")
    (out / f"rank{os.environ['RANK']}.pkl").write_bytes(pickle.dumps(seen))
