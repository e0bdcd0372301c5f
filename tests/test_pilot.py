"""The pilot: the MDE arithmetic, the summary of a pilot's runs, and one tiny real pilot run."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from dla_repro.experiments import pilot


def test_mde_is_the_paired_t_formula_and_seeds_for_inverts_it():
    t = stats.t(4)
    assert pilot.mde(0.015, 5) == pytest.approx((t.ppf(0.95) + t.ppf(0.8)) * 0.015 * math.sqrt(2 / 5))
    assert 0.028 < pilot.mde(0.015, 5) < 0.03  # the classification target: sd 0.015 -> MDE <= 0.03 at 5
    n = pilot.seeds_for(0.05, 0.03)
    assert pilot.mde(0.05, n) <= 0.03 < pilot.mde(0.05, n - 1)
    assert pilot.seeds_for(1.0, 1e-4, most=50) is None and math.isnan(pilot.mde(0.1, 1))


def test_summary_reports_spread_mde_and_whether_training_was_still_climbing():
    def curve(end, late):
        return [[0, 0.1], [300, end - late], [450, end - late], [600, end]]

    runs = pd.DataFrame([{"task": "classification", "version": "synthetic-v2", "image_size": 32, "steps": 600,
                          "seed": s, "metric": "val_ema_top1", "value": v, "seconds": 50.0, "curve": curve(v, 0.1)}
                         for s, v in enumerate([0.60, 0.62, 0.61, 0.63, 0.59])])
    (row,) = pilot.summarize(runs, target=0.03).to_dict("records")
    assert row["sd"] == pytest.approx(np.std([0.60, 0.62, 0.61, 0.63, 0.59], ddof=1))
    assert row["mde_at_n"] == pytest.approx(pilot.mde(row["sd"], 5)) and row["seeds_for_target"] == pilot.seeds_for(row["sd"], 0.03)
    assert row["late_gain"] == pytest.approx(0.1)  # still rising over the last quarter: not converged
    flat = runs.assign(curve=[curve(v, 0.0) for v in runs["value"]])
    assert pilot.summarize(flat, target=0.03)["late_gain"].iloc[0] == pytest.approx(0.0)


def test_a_tiny_pilot_trains_the_plain_baseline_from_the_chance_loss_and_writes_its_tables(tmp_path):
    runs = pilot.pilot("classification", steps=(4,), seeds=(0,), n_val=16)
    (row,) = runs.to_dict("records")
    assert row["metric"] == "val_ema_top1" and 0 <= row["value"] <= 1 and row["curve"][-1][0] == 4
    folder = pilot.write(runs, pilot.summarize(runs, 0.03), tmp_path / "pilot")
    assert {p.name for p in folder.iterdir()} == {"pilot_runs.csv", "pilot_curves.csv", "pilot_summary.csv"}
    assert "hardware" in pd.read_csv(folder / "pilot_summary.csv")
    with pytest.raises(KeyError, match="no frozen recipe"):
        pilot.recipe("synthetic-v1", "classification")
