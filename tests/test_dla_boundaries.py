"""Boundary notebook code (dla_repro.experiments.dla.boundaries): scoring, Sobel baseline, sweep, claims, paper run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from dla_repro import cli
from dla_repro.analysis.claims import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED
from dla_repro.engine import TrainConfig, Trial
from dla_repro.experiments.dla import boundaries as B
from dla_repro.experiments import study
from dla_repro.experiments.dla.tasks import boundary_task
from dla_repro.paths import results_dir
from fixtures_formats import write_bsds500


def _outline(h=24, w=24, top=5, left=6, size=10) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[top, left:left + size] = m[top + size - 1, left:left + size] = True
    m[top:top + size, left] = m[top:top + size, left + size - 1] = True
    return m


class _TinyEdgeNet(nn.Module):
    """A stand-in two-class dense predictor (logits at input resolution)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 3, padding=1))

    def forward(self, x):
        return self.body(x)


# ---------------------------------------------------------------------------- scoring
def _lines(h=24, w=24, rows=(4, 15), cols=(20,)) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[list(rows), 2:17] = True
    m[2:22, list(cols)] = True
    return m


def test_perfect_edges_score_one_and_empty_edges_zero():
    gts = [[_lines()], [_lines(rows=(10,), cols=(19, 22))]]  # already thin: thinning keeps every pixel
    perfect = B.score_edges([g[0].astype(float) for g in gts], gts, thresholds=9)
    assert perfect["ods"] == pytest.approx(1.0) and perfect["ois"] == pytest.approx(1.0)
    blank = B.score_edges([np.zeros((24, 24)) for _ in gts], gts, thresholds=9)
    assert blank["ods"] == pytest.approx(0.0, abs=1e-9)
    # one of two annotators reproduced exactly: recall counts both annotators' pixels
    a, b = _lines(), _lines(rows=(9,), cols=(22,))
    half = B.score_edges([a.astype(float)], [[a, b]], thresholds=9)
    assert half["ods_precision"] == pytest.approx(1.0)
    assert half["ods_recall"] == pytest.approx(a.sum() / (a.sum() + b.sum()))
    # a closed outline loses its corners to thinning (bwmorph 'thin'): below 1 even when exact
    assert B.score_edges([_outline().astype(float)], [[_outline()]], thresholds=9)["ods"] < 1


def test_a_soft_map_ranks_true_edges_first():
    gt = _lines()
    rng = np.random.default_rng(0)
    soft = np.where(gt, 0.9, 0.0) + np.where(~gt, rng.random(gt.shape) * 0.5, 0.0)  # edges above clutter
    s = B.score_edges([soft], [[gt]], thresholds=19)
    assert s["ods"] == pytest.approx(1.0)
    assert set(s["curve"].columns) >= {"threshold", "precision", "recall"}


# ---------------------------------------------------------------------------- Sobel
def test_sobel_fires_on_a_step_edge_only():
    img = torch.zeros(3, 16, 16)
    img[:, :, 8:] = 1.0  # a vertical step between columns 7 and 8
    (e,) = B.sobel_edges([img])
    assert e.shape == (16, 16) and e.max() == pytest.approx(1.0) and e.min() >= 0
    assert np.allclose(e[:, :6], 0) and np.allclose(e[:, 10:], 0)
    assert (e[:, 7] == 1).all() and (e[:, 8] == 1).all()
    (flat,) = B.sobel_edges([torch.full((3, 8, 8), 0.3)])
    assert np.allclose(flat, 0)
    gt = np.zeros((16, 16), bool)
    gt[:, 7] = True
    assert B.score_edges([e], [[gt]], thresholds=9)["ods"] > 0.6  # thinning keeps one of the two columns


# ---------------------------------------------------------------------------- trials
def test_parse_trials_and_errors():
    assert B.parse_trials(["ida_up:10", "fcn:1", "skip:10"]) == [("ida_up", 10.0), ("fcn", 1.0), ("skip", 10.0)]
    with pytest.raises(ValueError, match="decoder:edge_weight"):
        B.parse_trials(["ida_up"])
    with pytest.raises(ValueError, match="not a number"):
        B.parse_trials(["ida_up:ten"])
    with pytest.raises(ValueError, match="decoder"):
        B.make_trials(["unet:10"])
    trials = B.make_trials(["ida_up:10", "fcn:1"])
    assert [t.name for t in trials] == ["ida_up w=10", "fcn w=1"]
    assert trials[0].task.class_weights == [1.0, 10.0]
    out = trials[1].build().eval()(torch.randn(1, 3, 32, 32))
    assert out.shape == (1, 2, 32, 32)
    (skip,) = B.make_trials(["skip:10"])
    model = skip.build().eval()
    assert model.decoder_name == "skip" and model.forward_scores(torch.randn(1, 3, 32, 32)).shape == (1, 2, 16, 16)


def test_the_tolerance_is_one_pixel_on_synthetic_data_and_the_benchmarks_on_real_data():
    synthetic = study.load_data("boundary", image_size=32, n_train=2, n_val=1)
    assert B.tolerance(synthetic) == B.SYNTHETIC_TOLERANCE_PX == 1.0
    assert B.tolerance(synthetic, 2.0) == 2.0 and B.tolerance(synthetic, 0.0) is None
    real = study.StudyData("boundary", None, 2, ["non-boundary", "boundary"], "real", synthetic=None)
    assert B.tolerance(real, 1.0) is None  # BSDS500: 0.0075 × diagonal, unchanged
    gt = np.zeros((64, 64), bool)
    gt[:, 29] = True  # the synthetic convention: the pixel before a vertical label change ...
    other = np.roll(gt, 1, axis=1).astype(float)  # ... and the one after it
    assert B.score_edges([other], [[gt]], 5)["ods"] == 0.0
    assert B.score_edges([other], [[gt]], 5, max_dist_px=B.tolerance(synthetic))["ods"] == pytest.approx(1.0)


def test_run_ablation_with_a_stand_in_model_scores_every_run():
    data = study.load_data("boundary", image_size=32, n_train=8, n_val=3)
    assert len(data.gts) == 3 and data.gts[0][0].shape == (32, 32) and 0 < data.positive_fraction < 0.5
    assert data.images(2)[0].shape == (32, 32, 3)
    trials = [Trial(f"tiny w={w:g}", {"decoder": "tiny", "edge_weight": w}, _TinyEdgeNet, task=boundary_task(w))
              for w in (1.0, 10.0)]
    cfg = TrainConfig(epochs=1, batch_size=4, optimizer="adamw", lr=1e-3, progress=False)
    ab = B.run("t", trials, data, cfg, seeds=[0, 1], thresholds=5, n_keep=2, max_dist_px=B.tolerance(data))
    assert len(ab.runs) == 4 and ab.runs[["ods", "ois", "ap"]].notna().all().all()
    assert (ab.runs["tolerance"] == "1 px").all()  # which tolerance ran, in every row
    assert set(ab.artifacts) == {("tiny w=1", 0), ("tiny w=1", 1), ("tiny w=10", 0), ("tiny w=10", 1)}
    assert all(len(a["edge_maps"]) == 2 and a["edge_maps"][0].shape == (32, 32) for a in ab.artifacts.values())
    assert "curve" not in ab.runs and "edge_maps" not in ab.runs  # artifacts stay out of the table
    sobel = B.score_edges(B.sobel_edges([data.val[i][0] for i in range(3)]), data.gts, 5, max_dist_px=1.0)
    summary = B.summarize(ab.runs, {"Sobel": sobel})
    assert list(summary["trial"]) == ["tiny w=1", "tiny w=10", "Sobel"] and (summary["seeds"] == [2, 2, 0]).all()
    assert (summary["tolerance"] == "1 px").all()
    fig = B.plot_pr_curves({k: a["curve"] for k, a in ab.artifacts.items()}, summary, {"Sobel": sobel["curve"]})
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert len(labels) == 3 and all("ODS" in t and "OIS" in t and "AP" in t for t in labels)
    fig2 = B.plot_edge_maps(data.images(2), data.gts, {k[0]: a["edge_maps"] for k, a in ab.artifacts.items()}, n=2)
    assert len(fig2.axes) == 2 * 4


def test_claims_from_hand_made_runs():
    runs = pd.DataFrame({
        "trial": ["ida_up w=10"] * 3 + ["skip w=10"] * 3 + ["fcn w=10"] * 3 + ["ida_up w=1"] * 3,
        "ods": [0.50, 0.52, 0.51, 0.40, 0.43, 0.41, 0.10, 0.12, 0.11, 0.49, 0.53, 0.51],
    })
    declared = B.claims(["ida_up:10", "skip:10", "fcn:10", "ida_up:1"], ["Sobel"])
    v = {x.claim.split(" (")[0]: x for x in study.judge(declared, runs, B.baseline_groups({"Sobel": {"ods": 0.6}}, 3))}
    primary = v["DLA-Up"]
    assert (primary.a, primary.b) == ("ida_up w=10", "skip w=10") and primary.verdict == REPRODUCED
    assert declared[0].matched == B.MATCHED == 0.05
    ref = v["Reference: DLA-Up vs the FCN-32s decoder"]
    assert (ref.a, ref.b) == ("ida_up w=10", "fcn w=10") and "output stride 2 vs 32" in ref.claim
    assert [c.matched for c in declared if c.b == "fcn w=10"] == [None]  # a reference, not a matched ablation
    assert v["edge weight 10"].verdict == INCONCLUSIVE
    assert v["learned DLA-Up beats the no-learning Sobel edge map"].verdict == NOT_REPRODUCED
    md = study.claims_markdown(list(v.values()))
    assert md.count("\n") == 2 + 4 - 1 + 2 and "**reproduced**" in md  # + the rule below the table
    assert "No claim" in study.claims_markdown([])
    # without the shallow decoder no claim tests aggregation; FCN-32s is only ever a reference
    assert all(c.text.startswith(("Reference:", "edge weight")) for c in B.claims(["ida_up:10", "fcn:10",
                                                                                  "ida_up:1"]))


def test_claim_arms_leaves_out_the_loss_only_arm():
    arms = B.claim_arms()
    assert set(arms.build) == {"ida_up w=10", "skip w=10", "fcn w=10"}
    assert [c.b for c in arms.claims if c.a in arms.build and c.b in arms.build] == ["skip w=10", "fcn w=10"]
    assert study.arm_problems(arms) == []


# ---------------------------------------------------------------------------- paper profile
@pytest.mark.slow
def test_paper_profile_runs_on_a_bsds500_fixture(tmp_path, capsys):
    write_bsds500(tmp_path / "data", {"train": 2, "val": 2}, annotators=3, size=(48, 64))
    code = cli.main([
        "run", "dla_boundaries", "--profile", "paper", "--data-root", str(tmp_path / "data"),
        "-p", "epochs=1",  # everything else: the paper profile (full DLA-34, crop 416, 99 thresholds)
    ])
    out = capsys.readouterr().out
    assert code == 0, out
    summary = pd.read_csv(results_dir() / "tables" / "paper" / "dla_boundaries_summary.csv")
    assert list(summary["trial"]) == ["ida_up w=10", "skip w=10", "Sobel", "ceiling (GT as prediction)"]
    assert (summary["tolerance"] == "0.0075 × diagonal").all()  # real data: the BSDS tolerance
    claims = pd.read_csv(results_dir() / "tables" / "paper" / "dla_boundaries_claims.csv")
    assert list(claims["b"]) == ["skip w=10", "Sobel"]
    runs = pd.read_csv(results_dir() / "tables" / "paper" / "dla_boundaries_runs.csv")
    assert runs["ods"].between(0, 1).all() and runs["backbone"].iloc[0] == "dlarepro_dla34"
    assert (results_dir() / "figures" / "paper" / "dla_boundaries_pr.png").exists()
    assert (results_dir() / "notebooks" / "paper" / "04_boundaries.ipynb").exists()
