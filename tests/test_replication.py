"""A re-run's results folder judged against the reference's (dla_repro.analysis.replication, `dla-repro replication`)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from dla_repro.analysis.claims import claims_table, compare
from dla_repro.analysis.replication import arm_interval, compare_arms, write_replication
from dla_repro.cli import main

BETTER = [0.40, 0.42, 0.41, 0.43, 0.39]
BASE = [0.30, 0.31, 0.29, 0.32, 0.30]


def _write(folder, claims, cpu="AMD EPYC"):
    """A results folder as the pipeline leaves it: tables/quick/<notebook>_claims.csv and the manifest."""
    tables = folder / "tables" / "quick"
    tables.mkdir(parents=True)
    claims_table(claims).to_csv(tables / "toy_claims.csv", index=False)
    (folder / "manifest_quick.json").write_text(json.dumps({"hardware": {"cpu": cpu, "cpu_count": "2", "gpu": "none"}}))
    return folder


def _claims(better=BETTER, base=BASE):
    return [
        compare("wide beats narrow", better, base, metric="top1", names=("wide", "narrow"), paired=True,
                min_effect=0.01),
        compare("narrow beats tiny", base, [0.30, 0.31, 0.29, 0.32, 0.31], metric="top1", names=("narrow", "tiny"),
                paired=True, min_effect=0.01),
    ]


def test_the_arm_interval_is_the_t_interval_of_the_mean():
    mean, low, high = arm_interval([1.0, 2.0, 3.0])
    half = stats.t.ppf(0.975, 2) * 1.0 / math.sqrt(3)
    assert (mean, low, high) == pytest.approx((2.0, 2.0 - half, 2.0 + half))
    assert math.isnan(arm_interval([0.5])[1])  # one seed: no interval


def test_an_identical_rerun_agrees_on_every_verdict_and_arm(tmp_path):
    reference = _write(tmp_path / "ref", _claims())
    rerun = _write(tmp_path / "rerun", _claims(), cpu="Intel Xeon")
    manifest = json.loads((rerun / "manifest_quick.json").read_text())
    manifest["hardware"]["cpu_capability"] = "AVX512"
    manifest["hardware"]["isa_caps"] = "ONEDNN_MAX_CPU_ISA=SSE41"
    (rerun / "manifest_quick.json").write_text(json.dumps(manifest))
    out = write_replication(reference, rerun)
    assert out["ok"]
    assert out["verdicts"]["same"].tolist() == [True, True]
    assert sorted(out["arms"]["arm"]) == ["narrow", "tiny", "wide"]  # "narrow" is in two claims, counted once
    assert "Same verdict: 2 of 2 claims" in out["text"] and "3 of 3" in out["text"]
    assert "AMD EPYC (2 cores)" in out["text"] and "Intel Xeon (2 cores, PyTorch CPU kernels AVX512, instruction sets capped: ONEDNN_MAX_CPU_ISA=SSE41)" in out["text"]
    assert (rerun / "REPLICATION_quick.md").read_text() == out["text"]


def test_a_rerun_whose_arm_moved_out_of_the_interval_and_flipped_a_verdict_is_reported(tmp_path, capsys):
    reference = _write(tmp_path / "ref", _claims())
    moved = [v - 0.10 for v in BETTER]  # wide now below narrow: the first verdict flips
    rerun = _write(tmp_path / "rerun", _claims(better=moved))
    assert main(["replication", str(rerun), "--reference", str(reference)]) == 1
    printed = capsys.readouterr().out
    assert "Same verdict: 1 of 2 claims" in printed and "2 of 3" in printed
    arms = pd.read_csv(rerun / "replication_quick_arms.csv").set_index("arm")
    assert not arms.loc["wide", "inside"] and arms.loc["narrow", "inside"]
    assert arms.loc["wide", "shift"] == pytest.approx(-0.10)
    verdicts = pd.read_csv(rerun / "replication_quick_verdicts.csv").set_index("claim")
    assert verdicts.loc["wide beats narrow", "reference"] == "reproduced"
    assert verdicts.loc["wide beats narrow", "rerun"] != "reproduced"


def test_a_claim_missing_from_the_rerun_does_not_agree_and_its_arms_are_not_checked(tmp_path):
    reference = _write(tmp_path / "ref", _claims())
    rerun = _write(tmp_path / "rerun", _claims()[:1])
    out = write_replication(reference, rerun)
    assert not out["ok"]
    assert out["verdicts"].set_index("claim").loc["narrow beats tiny", "rerun"] == "missing"
    arms = out["arms"].set_index("arm")
    assert pd.isna(arms.loc["tiny", "inside"]) and arms.loc["tiny", "n_rerun"] == 0


def test_an_arm_without_values_has_no_interval_to_check():
    frame = pd.DataFrame([{"notebook": "nb", "claim": "c", "metric": "m", "a": "x", "b": "y",
                           "values_a": "", "values_b": str(tuple(float(v) for v in np.linspace(0.1, 0.2, 5)))}])
    arms = compare_arms(frame, frame).set_index("arm")
    assert pd.isna(arms.loc["x", "inside"]) and bool(arms.loc["y", "inside"])


def test_no_claims_in_a_folder_is_an_error_naming_it(tmp_path, capsys):
    reference = _write(tmp_path / "ref", _claims())
    assert main(["replication", str(tmp_path / "empty"), "--reference", str(reference)]) == 2
    assert "empty" in capsys.readouterr().err
