"""Engine contracts for the next papers: auxiliary outputs, model-reading losses,
parameter groups, iteration-based length. Each default leaves today's numbers alone
(checked bit for bit against the previous engine when the contracts were added);
these tests check that each contract, when used, does what it says.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from torch import nn

from dla_repro.engine import (
    ClassificationTask,
    SegmentationTask,
    TopKAccuracy,
    TrainConfig,
    create_optimizer,
    evaluate,
    fit,
    load_checkpoint,
    seed_everything,
)
from dla_repro.engine import distributed
from dla_repro.outputs import ModelOutput, main_output, split_output
from test_engine import client, metrics_only, small_config, toy_data, toy_model


class AuxNet(nn.Module):
    """A classifier with an auxiliary head; returns both in training (or always, with ``always``)."""

    def __init__(self, always: bool = False, plain_tuple: bool = False):
        super().__init__()
        seed_everything(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(8, 2)
        self.aux_head = nn.Linear(8, 2)
        self.always, self.plain_tuple = always, plain_tuple

    def forward(self, x):
        f = self.body(x)
        main = self.head(f)
        if not (self.training or self.always):
            return main
        aux = {"aux": self.aux_head(f)}
        return (main, aux) if self.plain_tuple else ModelOutput(main, aux)


class MainOnly(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return main_output(self.net(x))


# -------------------------------------------------------------- auxiliary outputs
def test_split_output_forms():
    t = torch.zeros(2)
    assert split_output(t) == (t, {})
    assert split_output(ModelOutput(t, {"aux": t}))[1]["aux"] is t
    assert split_output((t, {"aux": t}))[1]["aux"] is t
    pair = (t, t)  # a tuple that is not (main, mapping) stays whole
    assert split_output(pair)[0] is pair and main_output(ModelOutput(t)) is t


def test_aux_loss_is_main_plus_weighted_aux():
    g = torch.Generator().manual_seed(0)
    main, aux, y = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g), torch.tensor([0, 1, 2, 1])
    task = ClassificationTask(aux_weights={"aux": 0.4})
    expected = F.cross_entropy(main, y) + 0.4 * F.cross_entropy(aux, y)
    assert torch.equal(task.loss(ModelOutput(main, {"aux": aux}), y), expected)
    assert torch.equal(task.loss(main, y), F.cross_entropy(main, y))  # no aux: the criterion exactly
    assert torch.equal(ClassificationTask(aux_weights={"aux": 0}).loss((main, {"aux": aux}), y), F.cross_entropy(main, y))
    with pytest.raises(ValueError, match=r"auxiliary outputs \['aux'\]"):
        ClassificationTask().loss(ModelOutput(main, {"aux": aux}), y)

    # segmentation: the auxiliary logits (at a lower resolution) are resized to the target too
    seg = SegmentationTask(3, aux_weights={"aux": 0.4})
    logits, low = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    target = torch.randint(0, 3, (2, 8, 8), generator=g)
    target[0, 0] = 255
    up = F.interpolate(low, size=(8, 8), mode="bilinear", align_corners=False)
    expected = F.cross_entropy(logits, target, ignore_index=255) + 0.4 * F.cross_entropy(up, target, ignore_index=255)
    assert torch.equal(seg.loss(ModelOutput(logits, {"aux": low}), target), expected)
    assert seg.params()["aux_weights"] == {"aux": 0.4}


def test_fit_trains_the_aux_head_and_scores_the_main_output(tmp_path):
    data = toy_data(32, 16)
    model = AuxNet()
    aux_before = model.aux_head.weight.detach().clone()
    result = fit(model, data, small_config(tmp_path, epochs=2), ClassificationTask(aux_weights={"aux": 0.4}),
                 run_name="aux")
    assert not torch.equal(model.aux_head.weight, aux_before), "the aux loss reaches the aux head"
    assert client().get_run(result.run_id).data.params["task.aux_weights.aux"] == "0.4"

    ignored = AuxNet()
    fit(ignored, data, small_config(tmp_path, epochs=1, ckpt_dir=str(tmp_path / "w0")),
        ClassificationTask(aux_weights={"aux": 0.0}), run_name="aux0")
    assert torch.equal(ignored.aux_head.weight, aux_before), "weight 0: the aux head gets no gradient"

    with pytest.raises(ValueError, match="aux_weights"):
        fit(AuxNet(), data, small_config(tmp_path, epochs=1, ckpt_dir=str(tmp_path / "x")), run_name="noweight")

    # evaluate() with a model that returns aux outputs in eval mode too: metrics from the main output,
    # the loss with the weighted aux term
    always = AuxNet(always=True, plain_tuple=True)
    always.load_state_dict(model.state_dict())
    task = ClassificationTask(aux_weights={"aux": 0.4})
    both = evaluate(always, data.val, task, small_config(tmp_path))
    main = evaluate(MainOnly(always), data.val, ClassificationTask(), small_config(tmp_path))
    assert both["top1"] == main["top1"] == result.final["val_top1"]
    assert both["loss"] > main["loss"]


# ------------------------------------------------------------ loss reads the model
class Scaled(nn.Module):
    """The toy classifier plus a parameter the forward does not use (like a learned scale read by a cost term)."""

    def __init__(self):
        super().__init__()
        self.net = toy_model()
        self.log_scale = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return self.net(x)


class CostTask(ClassificationTask):
    """Cross-entropy + 0.5·(log_scale − 1)², read from the model (a DynOPool-style budget term)."""

    def __init__(self):
        super().__init__()
        self.seen: list[type] = []

    def loss(self, output, target, model=None):
        self.seen.append(type(model))
        return super().loss(output, target) + 0.5 * (model.log_scale - 1).pow(2)


def test_loss_term_read_from_the_model_changes_the_gradient(tmp_path):
    data = toy_data(32, 16)
    plain = Scaled()
    fit(plain, data, small_config(tmp_path, epochs=1, ckpt_dir=str(tmp_path / "plain")), run_name="plain")
    assert plain.log_scale.item() == 0.0, "no term reads it: no gradient"

    costed, task = Scaled(), CostTask()
    result = fit(costed, data, small_config(tmp_path, epochs=1), task, run_name="cost")
    assert 0.0 < costed.log_scale.item() < 1.0, "the cost term pulls log_scale towards 1"
    assert set(task.seen) == {Scaled}, "train and eval hand the task the model itself"
    assert result.final["train_loss"] > 0


def test_task_without_model_argument_still_works(tmp_path):
    class Legacy:
        monitor, mode = "top1", "max"

        def loss(self, output, target):
            return F.cross_entropy(output, target)

        def metrics(self):
            return TopKAccuracy((1,))

    result = fit(toy_model(), toy_data(32, 16), small_config(tmp_path, epochs=1), Legacy(), run_name="legacy")
    reference = fit(toy_model(), toy_data(32, 16), small_config(tmp_path, epochs=1, ckpt_dir=str(tmp_path / "ref")),
                    ClassificationTask(topk=(1,)), run_name="ref")
    assert metrics_only(result.history).equals(metrics_only(reference.history))


def test_ddp_hands_the_task_the_unwrapped_model(tmp_path, monkeypatch):
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    wrapped = []
    real_wrap = distributed.wrap
    monkeypatch.setattr(distributed, "wrap", lambda *a: wrapped.append(real_wrap(*a)) or wrapped[-1])
    task = CostTask()
    try:
        fit(Scaled(), toy_data(32, 16), small_config(tmp_path, epochs=1), task, run_name="ddp-cost")
    finally:
        torch.distributed.destroy_process_group()
    assert isinstance(wrapped[0], nn.parallel.DistributedDataParallel)
    assert set(task.seen) == {Scaled}


# ----------------------------------------------------------------- parameter groups
def _groups(optimizer):
    return [{k: v for k, v in g.items() if k != "params"} | {"n": len(g["params"])} for g in optimizer.param_groups]


def test_default_optimizer_is_timms_and_groups_get_their_settings():
    model = toy_model()
    cfg = TrainConfig(lr=0.1, weight_decay=1e-4)
    ours = create_optimizer(model, cfg)
    timms = create_optimizer_v2(model, opt="sgd", lr=0.1, weight_decay=1e-4, momentum=0.9)
    assert _groups(ours) == _groups(timms)

    # toy_model: 0 conv, 1 BN, 6 Linear; "6.*" -> its own groups after the default ones
    cfg = dataclasses.replace(cfg, param_groups={"6.*": {"lr_scale": 10.0}, "1.weight": {"weight_decay": 0.5}})
    groups = create_optimizer(model, cfg).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    layout = [(g.get("group"), g["weight_decay"], g.get("lr_scale"), [names[id(p)] for p in g["params"]]) for g in groups]
    assert layout == [
        (None, 0.0, None, ["0.bias", "1.bias"]),
        (None, 1e-4, None, ["0.weight"]),
        ("6.*", 0.0, 10.0, ["6.bias"]),
        ("6.*", 1e-4, 10.0, ["6.weight"]),
        ("1.weight", 0.5, None, ["1.weight"]),
    ]
    with pytest.raises(ValueError, match="matches no trainable parameter"):
        create_optimizer(model, dataclasses.replace(cfg, param_groups={"head.*": {"lr_scale": 2.0}}))
    with pytest.raises(ValueError, match="param_groups"):
        TrainConfig(param_groups={"6.*": {"momentum": 0.5}})


def test_param_groups_follow_the_schedule_and_are_logged(tmp_path):
    cfg = small_config(tmp_path, epochs=2, schedule="step", decay_epochs=1, decay_rate=0.5, lr=0.1,
                       param_groups={"6.*": {"lr_scale": 10.0, "weight_decay": 0.0}})
    result = fit(toy_model(), toy_data(32, 16), cfg, run_name="groups")
    assert result.history["lr"].tolist() == pytest.approx([0.1, 0.05])  # the base lr is what is logged
    groups = load_checkpoint(result.checkpoint)["optimizer"]["param_groups"]
    # after two epochs the step schedule is at 0.1 · 0.5²; the pattern's group at 10× that
    assert [g["lr"] for g in groups] == pytest.approx([0.025, 0.025, 0.25])
    assert [g["weight_decay"] for g in groups] == [0.0, 1e-4, 0.0]
    params = client().get_run(result.run_id).data.params
    assert params["param_groups"] == '{"6.*": {"lr_scale": 10.0, "weight_decay": 0.0}}'
    assert "iterations" not in params  # unset: not logged (runs before these fields log the same params)


# ------------------------------------------------------------------- iterations
class CountingModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = toy_model()
        self.train_forwards = 0

    def forward(self, x):
        self.train_forwards += self.training
        return self.net(x)


def test_iterations_run_exactly_that_many_updates_with_poly_per_update(tmp_path):
    # 32 samples / batch 16 = 2 updates per epoch; 7 iterations = 4 epochs, the last one a single batch
    model = CountingModel()
    cfg = small_config(tmp_path, iterations=7, schedule="poly", step_on_epochs=False, epochs=1)
    result = fit(model, toy_data(32, 16), cfg, run_name="iters")
    assert model.train_forwards == 7
    assert result.history["epoch"].tolist() == [0, 1, 2, 3]
    assert result.history["lr"].tolist() == pytest.approx([0.1 * (1 - 2 * e / 7) ** 0.9 for e in range(4)])
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0)  # T = 7 updates: poly reached 0
    assert client().get_run(result.run_id).data.params["iterations"] == "7"


class Crash(RuntimeError):
    pass


class CrashingTask(ClassificationTask):
    """Raises at the ``after``-th training loss (an interrupted run); logs the same params as its parent."""

    def __init__(self, after: int):
        super().__init__()
        self.after, self.calls = after, 0

    def loss(self, output, target, model=None):
        if torch.is_grad_enabled():
            self.calls += 1
            if self.calls == self.after:
                raise Crash("killed")
        return super().loss(output, target, model)


def test_resume_is_exact_with_iterations_and_param_groups(tmp_path):
    cfg = small_config(tmp_path, iterations=7, schedule="poly", step_on_epochs=False, resume=True,
                       optimizer="adamw", lr=0.01, param_groups={"6.*": {"lr_scale": 3.0}})
    whole = fit(toy_model(), toy_data(32, 16), dataclasses.replace(cfg, ckpt_dir=str(tmp_path / "whole")),
                run_name="whole")

    with pytest.raises(Crash):  # dies in epoch 2, after last.pt of epoch 1 was written
        fit(toy_model(), toy_data(32, 16), cfg, CrashingTask(after=6), run_name="killed")
    assert load_checkpoint(tmp_path / "ckpt" / "last.pt")["epoch"] == 1
    resumed = fit(toy_model(seed=5), toy_data(32, 16), cfg, run_name="killed")  # weights come from last.pt

    assert metrics_only(resumed.history).equals(metrics_only(whole.history))
    a, b = torch.load(whole.weights, weights_only=True), torch.load(resumed.weights, weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _strip(load_checkpoint(resumed.checkpoint)["optimizer"]["param_groups"]) == \
        _strip(load_checkpoint(whole.checkpoint)["optimizer"]["param_groups"])


def _strip(groups):
    return [{k: v for k, v in g.items() if k != "params"} for g in groups]


def test_config_rejects_negative_iterations():
    with pytest.raises(ValueError, match="iterations"):
        TrainConfig(iterations=-1)
