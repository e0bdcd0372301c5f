"""`dla-repro report`: every notebook's claims in one table, in pipeline order, with provenance."""

from __future__ import annotations

import json

import pandas as pd

from dla_repro import cli
from dla_repro.analysis.claims import INCONCLUSIVE, REPRODUCED, RULE, claims_table, compare
from dla_repro.analysis.report import claims_report, collect_claims
from dla_repro.paths import results_dir


def _write(profile: str) -> None:
    tables = results_dir() / "tables" / profile
    tables.mkdir(parents=True)
    seg = claims_table([compare("DLA-Up beats FCN", [0.5, 0.52], [0.3, 0.31], names=("ida_up", "fcn"), metric="mIoU")])
    seg.to_csv(tables / "dla_segmentation_claims.csv", index=False)
    cls = claims_table([compare("full beats hda", [0.3, 0.31], [0.03, 0.04], names=("full", "hda"), floor=0.0625)])
    cls.insert(0, "paper", "IDA and HDA together")  # notebook-specific extra columns are kept
    cls.to_csv(tables / "dla_classification_claims.csv", index=False)
    pd.DataFrame({"x": [1]}).to_csv(tables / "dla_segmentation_runs.csv", index=False)  # not a claims table
    manifest = {"last_run": {"notebooks": ["dla_classification", "dla_segmentation"], "wall_seconds": 12.0},
                "hardware": {"cpu": "Test CPU", "cpu_count": "2", "gpu": "none"},
                "notebooks": {"dla_segmentation": {"git_commit": "abcdef1234567890", "wall_seconds": 7.5},
                              "dla_classification": {"git_commit": "abcdef1234567890", "wall_seconds": 4.5}}}
    (results_dir() / f"manifest_{profile}.json").write_text(json.dumps(manifest))


def test_report_gathers_every_claims_table_in_pipeline_order(capsys):
    _write("quick")
    claims = collect_claims(results_dir(), "quick", ["dla_classification", "dla_segmentation"])
    assert list(claims["notebook"]) == ["dla_classification", "dla_segmentation"]
    assert list(claims["verdict"]) == [INCONCLUSIVE, REPRODUCED]
    assert cli.main(["report", "--profile", "quick"]) == 0
    out = capsys.readouterr().out
    text = (results_dir() / "claims_quick.md").read_text()
    assert text in out
    assert "Commit abcdef123456 · Test CPU (2 cores), GPU: none · notebooks' wall time 12 s" in text
    rows = [line for line in text.splitlines() if line.startswith("| dla_")]
    assert rows[0].startswith("| dla_classification | full beats hda | full 0.305 vs hda 0.035")
    assert "hda at or below 0.0625" in rows[0]
    assert "ida_up 0.510 vs fcn 0.305 (mIoU) | +0.205 [+0.136, +0.274] | 0.005 | 2/2 | Welch |" in rows[1]
    assert "\nVerdicts: 1 reproduced, 1 inconclusive at this budget.\n" in text
    assert text.rstrip().endswith(RULE)


def test_report_reads_tables_written_before_the_test_columns():
    tables = results_dir() / "tables" / "quick"
    tables.mkdir(parents=True)
    old = claims_table([compare("DLA-Up beats FCN", [0.5, 0.52], [0.3, 0.31], names=("ida_up", "fcn"))])
    old = old[["claim", "metric", "a", "b", "mean_a", "mean_b", "delta", "se", "n_a", "n_b", "expect", "verdict",
               "note", "values_a", "values_b"]]
    old.to_csv(tables / "dla_segmentation_claims.csv", index=False)
    text = claims_report(collect_claims(results_dir(), "quick"), "quick")
    row = [line for line in text.splitlines() if line.startswith("| dla_segmentation")][0]
    assert "| +0.205 ± 0.011 (SE) | n/a | 2/2 | n/a | n/a | **reproduced** |" in row


def test_report_without_results_names_the_folder(capsys):
    assert cli.main(["report", "--profile", "paper"]) == 2
    err = capsys.readouterr().err
    assert str(results_dir() / "tables" / "paper") in err and "dla-repro run --profile paper" in err
