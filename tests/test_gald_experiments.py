"""GALD notebook's experiment code: trials, objective, evaluation hook, claims, pilot, smoke and paper-profile runs."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dla_repro import cli
from dla_repro.engine.tasks import OhemSegmentationTask
from dla_repro.experiments import pilot, study
from dla_repro.experiments.gald import local_distribution as gald
from dla_repro.models.gald import GALDBlock
from dla_repro.paths import results_dir
from fixtures_formats import write_cityscapes


@pytest.mark.parametrize("trial", list(gald.TRIALS))
def test_every_trial_builds_the_released_head_with_or_without_its_block(trial):
    torch.manual_seed(0)
    model = gald.build_model(6, **gald.TRIALS[trial])
    x = torch.randn(2, 3, 64, 64)
    main, aux = model.train()(x)
    assert main.shape == (2, 6, 64, 64) and set(aux) == {"aux"} and aux["aux"].shape == (2, 6, 64, 64)
    assert model.eval()(x).shape == (2, 6, 64, 64)  # the auxiliary head: training only
    recipe = gald.TRIALS[trial]
    block = model.head.block
    assert isinstance(block, GALDBlock) == (recipe["ga"] is not None)
    if recipe["ga"] is not None:
        assert (block.ld is not None) == recipe["ld"] and block.form == recipe["form"]


def test_the_claims_arms_differ_and_ld_is_matched_within_five_percent():
    arms = gald.claim_arms()
    assert study.arm_problems(arms) == []
    sizes = {t: sum(p.numel() for p in arms.build[t]().parameters()) for t in gald.PRIMARY}
    assert sizes["cgnl_ld"] > sizes["cgnl"] > sizes["fcn"]  # LD adds its depthwise convs, GA its module
    assert (sizes["cgnl_ld"] - sizes["cgnl"]) / sizes["cgnl_ld"] < gald.MATCHED
    for c in gald.claims():
        assert {c.a, c.b} <= set(gald.PRIMARY)
        assert (c.matched is not None) == ({c.a, c.b} == {"cgnl", "cgnl_ld"})
    assert [c.a for c in gald.claims()].count("fcn") == 1  # GA hurts small objects: fcn is the larger side


def test_the_task_is_the_released_objective():
    task = gald.make_task(5, min_kept=7, thresh=0.6, aux_weight=0.4)
    assert isinstance(task, OhemSegmentationTask) and task.aux_weights == {"aux": 0.4}
    assert (task.min_kept, task.thresh) == (7, 0.6)
    torch.manual_seed(0)
    main, aux = torch.randn(2, 5, 8, 8), torch.randn(2, 5, 4, 4)
    target = torch.randint(0, 5, (2, 8, 8))
    plain = F.cross_entropy(F.interpolate(aux, (8, 8), mode="bilinear", align_corners=True), target)
    assert task.loss((main, {"aux": aux}), target) == pytest.approx(float(task.criterion(main, target) + 0.4 * plain))
    assert gald.make_task(5, aux=False).aux_weights == {}
    assert gald.pilot_baseline.task is gald.make_task  # the pilot trains the fcn trial with this objective


class _Oracle(nn.Module):
    """Logits that put every pixel in the class its input channel names (the input is one-hot)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return x * 10 * self.w


def _onehot_data(masks: torch.Tensor, num_classes: int, names: list[str]):
    images = F.one_hot(masks, num_classes).permute(0, 3, 1, 2).float()
    return SimpleNamespace(val=list(zip(images, masks)), num_classes=num_classes, class_names=names,
                           synthetic=object())


def test_evaluate_scores_objects_by_size_and_the_boundary_band():
    masks = torch.zeros(2, 32, 32, dtype=torch.long)
    masks[:, 4:24, 4:24] = 1  # a 400 px² object
    masks[:, 28:30, 28:30] = 2  # a 4 px² dot
    data = _onehot_data(masks, 3, ["background", "region", "dot"])
    perfect = gald.evaluate(_Oracle(), data)
    assert perfect["eval_miou"] == pytest.approx(1.0) and perfect["eval_small_iou"] == pytest.approx(1.0)
    assert perfect["eval_small_count"] == 2 and perfect["eval_band_acc_2px"] == pytest.approx(1.0)
    assert perfect["eval_size_count_0_16"] == 2 and perfect["eval_size_count_256_1024"] == 2
    assert math.isnan(perfect["eval_size_iou_16_64"]) and perfect["eval_size_count_16_64"] == 0

    class MissTheDot(_Oracle):
        def forward(self, x):
            out = super().forward(x)
            out[:, 2] = -10  # the dot's class is never predicted: the dot becomes background
            return out

    missed = gald.evaluate(MissTheDot(), data)
    assert missed["eval_small_iou"] == 0.0 and missed["eval_size_iou_256_1024"] == pytest.approx(1.0)
    assert missed["eval_band_acc_2px"] < 1.0 and missed["eval_offband_acc_2px"] == pytest.approx(1.0)
    assert set(gald.METRICS) <= set(missed)


def test_size_and_band_frames_are_long_forms_of_the_run_table():
    runs = pd.DataFrame({"trial": ["fcn", "cgnl"], "seed": [0, 0], "eval_size_iou_0_16": [0.2, 0.1],
                         "eval_size_count_0_16": [30, 30], "eval_size_iou_16_64": [0.5, 0.6],
                         "eval_size_count_16_64": [9, 9], "eval_band_acc_1px": [0.7, 0.6],
                         "eval_offband_acc_1px": [0.9, 0.9]})
    sizes = gald.size_frame(runs)
    assert sorted(sizes["bin"].unique()) == ["0-16", "16-64"] and len(sizes) == 4
    assert sizes.set_index(["arm", "bin"]).loc[("cgnl", "0-16"), "value"] == 0.1
    bands = gald.band_frame(runs)
    assert list(bands["width"]) == [1, 1] and list(bands["band_acc"]) == [0.7, 0.6]


def test_masks_are_the_ld_sigmoid_on_the_blocks_grid():
    torch.manual_seed(0)
    model = gald.build_model(4, **gald.TRIALS["cgnl_ld"])
    pred, mask = gald.predict_with_masks(model, torch.randn(2, 3, 64, 64))
    assert pred.shape == (2, 64, 64) and mask.shape == (2, 32, 16, 16)  # head width 32, level 2: stride 4
    assert float(mask.min()) >= 0 and float(mask.max()) <= 1
    assert gald.predict_with_masks(gald.build_model(4, **gald.TRIALS["cgnl"]), torch.randn(1, 3, 64, 64))[1] is None


def test_the_pilot_trains_the_fcn_trial_with_the_released_objective(monkeypatch):
    made = []
    real = gald.make_task

    def spy(num_classes):
        made.append(num_classes)
        return real(num_classes, min_kept=100)

    monkeypatch.setattr(gald.pilot_baseline, "task", spy)
    runs = pilot.pilot("segmentation", image_size=32, steps=(2,), seeds=(0,), n_val=4, workers=1,
                       baseline="dla_repro.experiments.gald.local_distribution:pilot_baseline")
    assert made == [10] and 0 <= runs.iloc[0]["value"] <= 1


def test_rejudge_claims_declares_the_notebooks_claims(tmp_path):
    claims, post = gald.rejudge_claims({}, tmp_path, pd.DataFrame())
    assert [c.text for c in claims] == [c.text for c in gald.claims()]
    quick, _ = gald.rejudge_claims({"dataset": "synthetic-v2", "iterations": 200}, tmp_path, pd.DataFrame())
    assert quick == gald.claims(small_descriptive=gald.short_budget("synthetic-v2", 200))


def test_a_short_synthetic_run_describes_the_small_object_claims_and_judges_the_rest():
    assert gald.short_budget("synthetic-v2", gald.SMALL_BUDGET) == ""
    assert gald.short_budget("cityscapes", 1) == "" and gald.short_budget("synthetic-v2", 0) == ""
    why = gald.short_budget("synthetic-v2", 200)
    assert "200 updates" in why and str(gald.SMALL_BUDGET) in why
    described = {c.text: c.descriptive for c in gald.claims(small_descriptive=why)}
    small = {c.text for c in gald.claims() if c.metric == "eval_small_iou"}
    assert len(small) == 2 and all(described[t] == why for t in small)
    assert all(not d for t, d in described.items() if t not in small)


@pytest.mark.notebook
@pytest.mark.slow
def test_the_paper_profile_runs_on_a_cityscapes_fixture(tmp_path, capsys):
    """The released recipe (SGD, poly, OHEM + aux, a dilated ResNet at output stride 8) on Cityscapes' real file
    layout, shrunk with ``-p`` to one iteration of a small ResNet on 32-px crops."""
    root = tmp_path / "cityscapes"
    write_cityscapes(root, "train", size=(32, 64))
    write_cityscapes(root, "val", cities={"frankfurt": 2}, size=(32, 64))
    code = cli.main([
        "run", "gald", "--profile", "paper", "--data-root", str(root),
        "-p", "iterations=1", "-p", "backbone=resnet18", "-p", "mid=16", "-p", "crop_size=32", "-p", "batch_size=2",
        "-p", "num_workers=0", "-p", "min_kept=100", "-p", "seeds=[0, 1]", "-p", "trials=[fcn, cgnl, cgnl_ld]",
        "-p", "n_show=1",
    ])
    out = capsys.readouterr().out
    assert code == 0, out
    tables = results_dir() / "tables" / "paper"
    runs = pd.read_csv(tables / "gald_runs.csv")
    assert sorted(set(runs["trial"])) == ["cgnl", "cgnl_ld", "fcn"] and len(runs) == 6
    assert "eval_size_iou_0_1024" in runs  # COCO's small / medium / large bins on real data
    claims = pd.read_csv(tables / "gald_claims.csv")
    assert list(claims["claim"]) == [c.text for c in gald.claims()]
    assert (results_dir() / "notebooks" / "paper" / "07_gald.ipynb").is_file()
