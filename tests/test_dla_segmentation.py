"""The DLA-Up segmentation experiment: trials, tables, claims, and the notebook in the paper profile."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from fixtures_formats import write_camvid

from dla_repro import cli
from dla_repro.analysis.claims import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED
from dla_repro.experiments import study
from dla_repro.experiments.dla import segmentation as seg
from dla_repro.paths import results_dir

NAMES = ["background", "region", "line", "dot"]


@pytest.mark.parametrize("trial", list(seg.TRIALS))
def test_every_trial_builds_a_segmenter(trial):
    model = seg.build_model(4, **seg.TRIALS[trial]).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 4, 32, 32)
    assert model.decoder_name == seg.TRIALS[trial]["decoder"]


def test_bad_trials_and_backbones_are_rejected():
    with pytest.raises(ValueError, match="unknown trials"):
        seg.make_trials(["fcn", "unet"], 4)
    with pytest.raises(ValueError, match="tiny"):
        seg.build_model(4, backbone="dla34", tiny=True, decoder="fcn")
    with pytest.raises(ValueError, match="data_root"):
        study.load_data("segmentation", "camvid", "")


def _runs(values: dict[str, list[float]], line: dict[str, list[float]]) -> pd.DataFrame:
    rows = []
    for trial, vals in values.items():
        for seed, v in enumerate(vals):
            rows.append({"trial": trial, "seed": seed, "val_miou": v, "n_params": 1, "train_seconds": 1.0,
                         "iou_background": 0.9, "iou_region": 0.8, "iou_line": 0.0, "iou_dot": np.nan,
                         "ftol_background": 0.95, "ftol_region": 0.9, "ftol_line": line[trial][seed],
                         "ftol_dot": np.nan, "fine_tolerance": "1 px"})
    return pd.DataFrame(rows)


def test_the_primary_claims_compare_deep_with_shallow_aggregation_at_matched_parameters():
    claims = seg.claims(["line", "dot", "nope"], NAMES)
    primary = [c for c in claims if not c.text.startswith("Reference:")]
    assert [(c.a, c.b) for c in primary] == [("ida_up", "skip"), ("ida_up", "skip"), ("ida_up", "ida_up_k1")]
    assert all(c.matched == seg.MATCHED == 0.05 for c in primary)
    assert primary[1].metric == ("ftol_line", "ftol_dot") and primary[1].label == "F ±1 px(line, dot)"
    # FCN-32s (another output stride) only as a labelled reference row, never a claim's baseline
    (ref,) = [c for c in claims if "fcn" in (c.a, c.b)]
    assert ref.text.startswith("Reference:") and "output stride 2 vs 32" in ref.text and ref.matched is None
    assert "stride 4 vs 32" in seg.claims([], NAMES, down_ratio=4)[-1].text
    assert seg.claims(["line"], NAMES, fine_tolerance=2)[1].label == "F ±2 px(line)"
    assert seg.REFERENCE == "fcn" and list(seg.TRIALS) == ["ida_up", "skip", "ida_up_k1", "fcn"]


def test_claims_tables_and_markdown_follow_the_measured_values():
    runs = _runs({"skip": [0.10, 0.11, 0.12], "ida_up": [0.30, 0.31, 0.29], "ida_up_k1": [0.40, 0.42, 0.41],
                  "fcn": [0.05, 0.06, 0.05]},
                 {"skip": [0.0, 0.0, 0.0], "ida_up": [0.2, 0.25, 0.3], "ida_up_k1": [0.1, 0.3, 0.0],
                  "fcn": [0.0, 0.0, 0.0]})
    base = pd.DataFrame({"seed": [0, 1, 0, 1], "class": ["line", "line", "dot", "dot"], "iou": [0.1, 0.5, 0.2, 0.2],
                         "n_train": 4000, "epochs": 8})
    claims = seg.claims(["line", "dot"], NAMES, base)
    verdicts = study.judge(claims, runs, seg.baseline_groups(base, ["line", "dot"]))
    assert [v.verdict for v in verdicts] == [REPRODUCED, REPRODUCED, NOT_REPRODUCED, REPRODUCED, INCONCLUSIVE]
    assert verdicts[1].mean_a == pytest.approx(0.25)  # NaN dot F skipped: mean over line only
    assert verdicts[1].values_a == pytest.approx((0.2, 0.25, 0.3))  # per-seed values, in seed order
    assert (verdicts[0].a, verdicts[0].b) == ("ida_up (deep)", "skip (shallow)")
    assert "plain (4000 images × 8 epochs)" in verdicts[4].b  # IoU: the calibration table has no tolerant F
    text = study.claims_markdown(verdicts)
    assert "**not reproduced**" in text and "F ±1 px(line, dot)" in text and "fcn (stride 32)" in text
    # only claims whose trials ran
    assert [v.claim for v in study.judge(seg.claims([], NAMES), runs[runs.trial.isin(["ida_up", "skip"])])] == [
        "DLA-Up (iterative deep aggregation) beats a shallow one-step skip decoder at the same output stride"
    ]
    summary = seg.summarize(runs, NAMES, ["line", "dot"])
    assert list(summary["trial"]) == ["skip", "ida_up", "ida_up_k1", "fcn"]
    assert summary.loc[1, "miou_mean"] == pytest.approx(0.30) and summary.loc[1, "seeds"] == 3
    assert summary.loc[1, "ftol_fine_mean"] == pytest.approx(0.25) and summary.loc[1, "iou_fine_mean"] == 0.0
    assert (summary["fine_tolerance"] == "1 px").all()
    long = seg.per_class_table(runs, NAMES)
    assert len(long) == 12 * 4 and set(long["class"]) == set(NAMES)
    line = long[(long["class"] == "line") & (long["trial"] == "ida_up")]
    assert list(line["ftol"]) == [0.2, 0.25, 0.3] and (line["iou"] == 0).all()  # F beside IoU, row for row


def test_describe_shows_strides_widths_and_the_parameter_match():
    models = {t: seg.build_model(11, **seg.TRIALS[t]) for t in seg.TRIALS}
    table = seg.describe(models).set_index("trial")
    assert list(table["output stride"]) == [2, 2, 2, 32]
    assert table.loc["skip", "width"] == "95" and table.loc["ida_up", "width"] == "128/64/32/16"
    assert table.loc["ida_up", "node kernel"] == "3" and table.loc["ida_up_k1", "node kernel"] == "1"
    for arm in ("skip", "ida_up_k1"):
        gap = abs(table.loc[arm, "params"] / table.loc["ida_up", "params"] - 1)
        assert gap <= seg.MATCHED, arm


def test_plain_baseline_reads_the_calibration_rows():
    cal = pd.DataFrame([
        {"task": "segmentation", "image_size": 64, "seed": 0, "metric": "miou", "value": 0.3, "n_train": 4000, "epochs": 8},
        {"task": "segmentation", "image_size": 64, "seed": 0, "metric": "iou_line", "value": 0.01, "n_train": 4000, "epochs": 8},
        {"task": "segmentation", "image_size": 32, "seed": 0, "metric": "iou_line", "value": 0.5, "n_train": 4000, "epochs": 8},
        {"task": "classification", "image_size": 64, "seed": 0, "metric": "top1", "value": 0.5, "n_train": 4000, "epochs": 8},
    ]).assign(synthetic_version="synthetic-v1")
    base = seg.plain_baseline(cal, 64)
    assert list(base["class"]) == ["mIoU", "line"] and list(base["iou"]) == [0.3, 0.01]
    assert seg.plain_baseline(pd.DataFrame(), 64).empty
    # another data version at the same size is another task: no baseline row (the calibration measured v1 only)
    assert seg.plain_baseline(cal, 32, "synthetic-v2").empty and len(seg.plain_baseline(cal, 32, "synthetic-v1")) == 1


def test_per_class_iou_of_a_perfect_and_a_constant_model():
    class Oracle(torch.nn.Module):  # logits that pick the label stored in channel 0 of the input
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return torch.nn.functional.one_hot(x[:, 0].long(), 3).permute(0, 3, 1, 2).float()

    y = torch.tensor([[[0, 1], [2, 255]]])
    x = torch.stack([y.clamp(max=2).float()] * 3, 1)
    data = list(zip(x, y))
    data = study.StudyData("segmentation", (data, data), 3, ["a", "b", "c"], "oracle")
    assert seg.evaluate(Oracle(), data) == {"iou_a": 1.0, "iou_b": 1.0, "iou_c": 1.0, "ftol_a": 1.0,
                                            "ftol_b": 1.0, "ftol_c": 1.0, "fine_tolerance": "1 px"}


def test_a_thin_line_one_pixel_off_scores_iou_zero_and_a_high_tolerant_f():
    class Lower(torch.nn.Module):  # predicts the label map stored in channel 0, one row lower
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return torch.nn.functional.one_hot(x[:, 0].long().roll(1, 1), 2).permute(0, 3, 1, 2).float()

    y = torch.zeros(2, 12, 12, dtype=torch.long)
    y[:, 5, 1:11] = 1  # a one-pixel line
    x = torch.stack([y.float()] * 3, 1)
    data = list(zip(x, y))
    data = study.StudyData("segmentation", (data, data), 2, ["background", "line"], "one row lower")
    scores = seg.evaluate(Lower(), data)
    assert scores["iou_line"] == 0.0 and scores["ftol_line"] == pytest.approx(1.0)
    assert seg.evaluate(Lower(), data, fine_tolerance=0)["ftol_line"] == 0.0


@pytest.mark.slow
@pytest.mark.notebook
def test_paper_profile_runs_on_a_camvid_fixture(tmp_path, capsys):
    write_camvid(tmp_path / "CamVid", {"train": 2, "val": 1}, size=(40, 48))
    code = cli.main([
        "run", "dla_segmentation", "--profile", "paper", "--data-root", str(tmp_path),
        "-p", "epochs=1", "-p", "n_show=1", "-p", 'trials=["ida_up", "skip"]',
    ])
    assert code == 0, capsys.readouterr().out
    runs = pd.read_csv(results_dir() / "tables" / "paper" / "dla_segmentation_runs.csv")
    assert set(runs["trial"]) == {"ida_up", "skip"}
    assert {"iou_sky", "iou_pole", "iou_bicyclist"} <= set(runs.columns)
    assert (runs["backbone"] == "dla34").all() and not runs["tiny"].any()
    claims = pd.read_csv(results_dir() / "tables" / "paper" / "dla_segmentation_claims.csv")
    assert set(claims["verdict"]) <= {REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE}
    for name in ("per_class", "examples", "curves"):
        assert (results_dir() / "figures" / "paper" / f"dla_segmentation_{name}.png").exists()
    assert (results_dir() / "notebooks" / "paper" / "03_segmentation.ipynb").exists()
