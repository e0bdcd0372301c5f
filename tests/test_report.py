"""`dla-repro report`: every notebook's claims in one table, in pipeline order, with provenance; the forest
plot, results/REPORT.md, and README's generated "What reproduced" block."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import yaml

from dla_repro import cli
from dla_repro.analysis.claims import INCONCLUSIVE, REPRODUCED, RULE, claims_table, compare
from dla_repro.analysis import report
from dla_repro.analysis.report import claims_report, collect_claims
from dla_repro.paths import repo_root, results_dir


def _write(profile: str) -> None:
    tables = results_dir() / "tables" / profile
    tables.mkdir(parents=True)
    seg = claims_table([compare("DLA-Up beats FCN", [0.5, 0.52], [0.3, 0.31], names=("ida_up", "fcn"), metric="mIoU",
                                 min_effect=0.01)])
    seg.to_csv(tables / "dla_segmentation_claims.csv", index=False)
    cls = claims_table([compare("full beats hda", [0.3, 0.31], [0.03, 0.04], names=("full", "hda"), floor=0.0625)])
    cls.insert(0, "paper", "IDA and HDA together")  # notebook-specific extra columns are kept
    cls.to_csv(tables / "dla_classification_claims.csv", index=False)
    pd.DataFrame({"x": [1]}).to_csv(tables / "dla_segmentation_runs.csv", index=False)  # not a claims table
    manifest = {"last_run": {"notebooks": ["dla_classification", "dla_segmentation"], "wall_seconds": 12.0},
                "hardware": {"cpu": "Test CPU", "cpu_count": "2", "gpu": "none"},
                "notebooks": {"dla_segmentation": {"git_commit": "abcdef1234567890", "wall_seconds": 7.5,
                                                   "mlflow_run_id": "5e9" * 10 + "ab",
                                                   "output": str(results_dir() / "notebooks" / profile /
                                                                 "03_segmentation.ipynb")},
                              "dla_classification": {"git_commit": "abcdef1234567890", "wall_seconds": 4.5,
                                                     "mlflow_run_id": "c1a" * 10 + "cd",
                                                     "output": f"results/notebooks/{profile}/02_classification.ipynb"}}}
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


def test_report_writes_the_forest_plot_and_one_row_per_claim_with_its_numbers_runs_and_notebook(capsys):
    _write("smoke")
    runs = pd.DataFrame({"trial": ["ida_up", "ida_up", "fcn", "fcn"], "seed": [0, 1, 0, 1],
                         "run_id": ["r_ida0", "r_ida1", "r_fcn0", "r_fcn1"]})
    runs.to_csv(results_dir() / "tables" / "smoke" / "dla_segmentation_runs.csv", index=False)
    assert cli.main(["report", "--profile", "smoke"]) == 0
    out = capsys.readouterr().out
    figure = results_dir() / "figures" / "smoke" / "claims_forest.png"
    path = results_dir() / "REPORT_smoke.md"
    assert f"wrote {figure}" in out and f"wrote {path}" in out and "README" not in out
    assert figure.stat().st_size > 10_000 and (results_dir() / "claims_smoke.md").is_file()

    claims = collect_claims(results_dir(), "smoke", ["dla_classification", "dla_segmentation"])
    frame = report.forest_frame(claims)
    assert list(frame["claim"]) == list(claims["claim"])  # one line per claim, in pipeline order
    seg = frame.set_index("claim").loc["DLA-Up beats FCN"]
    assert seg["scale"] == 0.01 and seg["margin_at"] == 1.0  # Δ in units of min_effect: the margin sits at +1
    assert seg["x"] == pytest.approx(seg["delta"] / 0.01) and seg["x_low"] < seg["x"] < seg["x_high"]
    cls = frame.set_index("claim").loc["full beats hda"]  # no margin declared: drawn in the metric's units
    assert not cls["scaled"] and cls["x"] == cls["delta"] and math.isnan(cls["margin_at"])
    fig = report.plot_forest(frame, "smoke")
    assert len(fig.axes) == 2  # one panel per notebook
    assert [len(ax.get_yticks()) for ax in fig.axes] == [1, 1]

    text = path.read_text()
    assert "| profile | `smoke` |" in text and "**synthetic**" in text and "| seeds | 0, 1 " in text
    assert "Test CPU (2 cores" in text and "abcdef123456" in text and "12 s for the pipeline" in text
    assert "![claims forest plot](figures/smoke/claims_forest.png)" in text
    assert text.index("## DLA") < text.index("| dla_classification | full beats hda")
    row = next(line for line in text.splitlines() if line.startswith("| dla_segmentation | DLA-Up beats FCN"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "statement only" and cells[4] == "+0.205 [+0.136, +0.274]"  # Δ with its 95 % CI
    assert cells[5] != "n/a" and cells[6] == "0.005" and cells[7] == "2/2" and cells[8] == "**reproduced**"
    assert cells[9] == f"`{'5e9' * 10 + 'ab'}` (notebook); trainings: ida_up ×2, fcn ×2"
    assert cells[10] == "[03_segmentation.ipynb](notebooks/smoke/03_segmentation.ipynb)"
    assert "- dla_segmentation `ida_up`: `r_ida0`, `r_ida1`" in text
    row = next(line for line in text.splitlines() if line.startswith("| dla_classification | full beats hda"))
    assert "statement only: “IDA and HDA together”" in row and "did not learn" in row  # the reading of an inconclusive
    assert "[02_classification.ipynb](notebooks/smoke/02_classification.ipynb)" in row  # path relative to the repo


def test_report_without_a_manifest_says_what_is_unknown():
    tables = results_dir() / "tables" / "quick"
    tables.mkdir(parents=True)
    claims_table([compare("x beats y", [0.5, 0.52], [0.3, 0.31], names=("x", "y"))]).to_csv(
        tables / "parsenet_claims.csv", index=False)
    out = report.write_all(results_dir(), "quick")
    text = out["report"].read_text()
    assert out["report"] == results_dir() / "REPORT.md" and out["readme"] is None
    assert "no `manifest_quick.json`" in text and "## ParseNet" in text
    row = next(line for line in text.splitlines() if line.startswith("| parsenet | x beats y"))
    assert row.rstrip().endswith("| n/a | n/a |")  # no run id, no notebook link
    assert len(report.forest_frame(collect_claims(results_dir(), "quick"))) == 1


def test_the_paper_of_a_notebook_is_the_paper_of_its_pipeline_yaml_entry(tmp_path, monkeypatch):
    """No table of papers in the report: a new paper's notebook is named by its `paper:` in pipeline.yaml."""
    papers = report.notebook_papers()  # the repository's pipeline.yaml
    assert {nb: papers.get(nb) for nb in ("dla_classification", "dla_segmentation", "dla_boundaries", "parsenet",
                                          "data_tour", "compare_runs")} == {
        "dla_classification": "DLA", "dla_segmentation": "DLA", "dla_boundaries": "DLA", "parsenet": "ParseNet",
        "data_tour": None, "compare_runs": None}
    assert not hasattr(report, "PAPERS")

    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "pipeline.yaml").write_text(yaml.safe_dump({"notebooks": [
        {"name": "toy_gates", "path": "toy/01_gates.ipynb", "experiment": "toy_gates", "paper": "Toy Gates"},
        {"name": "seg", "path": "dla/03_segmentation.ipynb", "experiment": "dla_segmentation", "paper": "DLA"},
        {"name": "scratch", "path": "99_scratch.ipynb", "experiment": "scratch"}]}))
    monkeypatch.setenv("DLA_REPRO_ROOT", str(tmp_path))
    tables = results_dir() / "tables" / "quick"
    tables.mkdir(parents=True)
    for name in ("toy_gates", "dla_segmentation", "scratch"):
        claims_table([compare(f"{name}: a beats b", [0.5, 0.52], [0.3, 0.31], names=("a", "b"))]).to_csv(
            tables / f"{name}_claims.csv", index=False)
    assert report.notebook_papers() == {"toy_gates": "Toy Gates", "dla_segmentation": "DLA", "seg": "DLA"}
    claims = collect_claims(results_dir(), "quick", ["toy_gates", "dla_segmentation", "scratch"])
    assert list(report.forest_frame(claims)["paper"]) == ["Toy Gates", "DLA", "scratch"]  # no paper: its name
    text = report.report_markdown(claims, "quick")
    assert [line for line in text.splitlines() if line.startswith("## ")] == [
        "## Toy Gates", "## DLA", "## scratch", "## The rule"]
    rows = [line.split("|")[1].strip() for line in report.readme_section(claims).splitlines()[3:6]]
    assert rows == ["Toy Gates", "DLA", "scratch"]


def test_readme_block_is_replaced_between_the_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.README_START}\nold\n{report.README_END}\noutro\n")
    assert report.update_readme(readme, "| new |") is True
    assert readme.read_text() == f"intro\n{report.README_START}\n| new |\n{report.README_END}\noutro\n"
    assert report.update_readme(readme, "| new |") is False
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="report:start"):
        report.update_readme(readme, "x")


def test_readme_what_reproduced_is_generated_from_the_committed_quick_results():
    """README's block equals what `dla-repro report --profile quick` makes of the committed tables: rerun it
    after changing a claims table (it rewrites the block, REPORT.md and the forest plot)."""
    results = repo_root() / "results"
    manifest = report.load_manifest(results, "quick")
    claims = collect_claims(results, "quick", report._order(manifest))
    expected = report.readme_section(claims, "quick")
    assert report.readme_block(repo_root() / "README.md") == expected, (
        "README's What reproduced is stale: run `dla-repro report --profile quick`")
    assert "results/REPORT.md" in expected and "results/figures/quick/claims_forest.png" in expected
    assert (results / "REPORT.md").is_file() and (results / "figures" / "quick" / "claims_forest.png").is_file()
    papers = set(report.notebook_papers().values())  # every paper of pipeline.yaml: one row per claim
    assert len([line for line in expected.splitlines() if line.split(" | ")[0].lstrip("| ") in papers]
               ) == len(claims)
