"""Every claim compares two different functions, matched where it says so.

Each paper module that judges claims (``module:`` in ``notebooks/pipeline.yaml``)
exposes ``claim_arms()`` -> :class:`dla_repro.experiments.study.ClaimArms`: its
claims, a builder per trial, an example batch.  For every claim between two
trials, :func:`~dla_repro.experiments.study.arm_problems` builds both arms after
the same seed and fails when they compute the same function, or when a claim
declared ``matched`` has parameter counts further apart than it says.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

from dla_repro.experiments import study
from dla_repro.experiments.study import Claim, ClaimArms
from dla_repro.pipeline import load_pipeline

MODULES = sorted({nb.module for nb in load_pipeline().notebooks if nb.module})


@pytest.mark.parametrize("module", MODULES)
def test_every_claims_arms_differ_and_are_matched_as_declared(module):
    mod = importlib.import_module(module)
    assert hasattr(mod, "claim_arms"), f"{module} judges claims but has no claim_arms() for this check"
    arms = mod.claim_arms()
    assert isinstance(arms, ClaimArms)
    checked = [c for c in arms.claims if c.a in arms.build and c.b in arms.build]
    assert checked, f"{module}: no claim between two trials to check"
    assert study.arm_problems(arms) == []


@pytest.mark.parametrize("module", MODULES)
def test_every_claims_builders_pickle_so_a_sweep_can_train_them_in_worker_processes(module):
    """A sweep with sweep_workers != 1 sends each trial's builder to a spawned process."""
    import pickle

    arms = importlib.import_module(module).claim_arms()
    for name, build in arms.build.items():
        assert pickle.loads(pickle.dumps(build)) is not None, name


def test_the_tasks_pickle():
    import pickle

    from dla_repro.engine import ClassificationTask, SegmentationTask
    from dla_repro.experiments.dla.boundaries import boundary_task

    for task in (ClassificationTask(label_smoothing=0.1), SegmentationTask(5), boundary_task(10.0)):
        copy = pickle.loads(pickle.dumps(task))
        assert type(copy) is type(task)
    metrics = pickle.loads(pickle.dumps(SegmentationTask(5))).metrics()
    assert metrics is not None


class _Linear(nn.Module):
    def __init__(self, width: int, bias_scale: float = 1.0):
        super().__init__()
        self.fc = nn.Linear(4, width)
        self.out = nn.Linear(width, 2)
        self.bias_scale = bias_scale

    def forward(self, x):
        return self.out(self.fc(x)) * self.bias_scale


def test_arm_problems_finds_the_same_function_and_unmatched_parameters():
    x = torch.randn(3, 4)
    arms = ClaimArms(
        claims=[Claim("same", "a", "a_again", "m"), Claim("fair", "a", "b", "m", matched=0.05),
                Claim("unfair", "a", "wide", "m", matched=0.05), Claim("to a group", "a", "group", "m")],
        build={"a": lambda: _Linear(8), "a_again": lambda: _Linear(8), "b": lambda: _Linear(8, 2.0),
               "wide": lambda: _Linear(16)},
        example=x,
    )
    problems = study.arm_problems(arms)
    assert len(problems) == 2
    assert "'same': a and a_again compute the same function" in problems[0]
    assert "'unfair'" in problems[1] and "more than the declared ±5%" in problems[1]


def test_check_arms_stops_before_training_with_every_problem():
    from dla_repro.engine import Trial

    trials = [Trial("a", {}, lambda: _Linear(8)), Trial("a_again", {}, lambda: _Linear(8)),
              Trial("wide", {}, lambda: _Linear(16))]
    claims = [Claim("same", "a", "a_again", "m"), Claim("unfair", "a", "wide", "m", matched=0.05)]
    with pytest.raises(ValueError, match="unfit to compare") as err:
        study.check_arms(claims, trials, torch.randn(3, 4))
    assert "'same'" in str(err.value) and "'unfair'" in str(err.value)
    study.check_arms(claims[1:2], [trials[0], Trial("wide", {}, lambda: _Linear(8, 2.0))], torch.randn(3, 4))
