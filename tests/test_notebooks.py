"""The committed notebooks: clean, parameterised, valid in every profile, and runnable (smoke)."""

from __future__ import annotations

import json
import re

import nbformat
import pytest

from dla_repro import cli, pipeline, tracking
from dla_repro.paths import results_dir

PIPE = pipeline.load_pipeline()
SPECS = PIPE.notebooks


def test_pipeline_lists_the_data_tour_first():
    assert SPECS and SPECS[0].path.name == "00_data.ipynb"


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_notebook_is_clean_and_parameterised(spec):
    nb = nbformat.read(spec.path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "commit notebooks without outputs"
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged `parameters`"
    params = pipeline.notebook_parameters(spec.path)
    untyped = [p.name for p in params.values() if p.type in ("None", "NoneType")]
    assert not untyped, f"annotate every parameter with its type: {untyped}"
    assert "profile" in params and params["profile"].default == "quick"
    # notebooks are thin: no classes or training loops defined in them
    assert not any(line.lstrip().startswith("class ") for c in code for line in c.source.splitlines())


def test_training_parameters_are_declared_alike_in_every_notebook():
    """A parameter named like a TrainConfig field has that field's type everywhere, one spelling of the tiny
    backbone, and every training notebook reads its parameters back once (``notebook.parameters``)."""
    import dataclasses

    from dla_repro.engine import TrainConfig

    field_types = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    for spec in SPECS:
        params = pipeline.notebook_parameters(spec.path)
        for name, p in params.items():
            if name in field_types:
                assert p.type in str(field_types[name]), f"{spec.name}: {name} is {p.type}, TrainConfig has {field_types[name]}"
        assert not any("dla34_tiny" in str(p.default) for p in params.values()), "tiny backbones: backbone + tiny"
        source = "\n".join(c.source for c in nbformat.read(spec.path, as_version=4).cells if c.cell_type == "code")
        if "epochs" in params:
            assert "notebook.parameters(globals())" in source and "notebook.train_config(params" in source
            assert "TrainConfig(" not in source, f"{spec.name}: build the config from the parameters, not by hand"


def _code_cells(spec) -> list[str]:
    return [c.source for c in nbformat.read(spec.path, as_version=4).cells if c.cell_type == "code"]


TRAINING_CALL = re.compile(r"\b\w+\.run(_ablation)?\(")  # seg.run(, pn.run(, exp.run_ablation(, study.run(
JUDGING = [s for s in SPECS if any("judge" in c for c in _code_cells(s))]  # the notebooks that judge claims


def test_claims_are_preregistered_before_training_and_judged_under_the_plan():
    """Every notebook that judges claims pre-registers them (``study.preregister``) before its first training
    cell, and its judging cell uses the plan; the executed run then carries ``claims_plan.json``."""
    assert len(JUDGING) >= 4, [s.name for s in JUDGING]
    for spec in JUDGING:
        cells = _code_cells(spec)
        prereg = [i for i, c in enumerate(cells) if "study.preregister(" in c]
        training = [i for i, c in enumerate(cells) if TRAINING_CALL.search(c)]
        assert len(prereg) == 1 and training and prereg[0] < training[0], spec.name
        assert all("plan" in c for c in cells if "judge" in c), f"{spec.name}: judge under the plan"


@pytest.mark.parametrize("profile", pipeline.PROFILES)
def test_every_notebook_plans_in_every_profile(profile):
    jobs = pipeline.plan(profile=profile, pipeline=PIPE)
    assert [j.name for j in jobs] == [s.name for s in SPECS]


@pytest.mark.notebook
@pytest.mark.slow
def test_whole_pipeline_runs_in_smoke_profile(capsys):
    code = cli.main(["run", "--profile", "smoke", "--keep-going"])
    out = capsys.readouterr().out
    assert code == 0, out
    manifest = json.loads((results_dir() / "manifest_smoke.json").read_text())
    assert set(manifest["notebooks"]) == {s.name for s in SPECS}
    assert all(e["status"] == "ok" for e in manifest["notebooks"].values())
    _assert_every_run_in_its_notebooks_experiment(manifest)
    _assert_claims_plans_logged(manifest)
    _assert_claims_tables_rejudge_unchanged()
    _assert_gald_outputs()


def _assert_claims_tables_rejudge_unchanged() -> None:
    """Every claims table the smoke run wrote is re-judged (``scripts/rejudge.py``) to the same verdicts."""
    from dla_repro.experiments import rejudge

    judged = rejudge.rejudge(results_dir(), "smoke", write=False)
    assert {s.experiment for s in JUDGING} <= set(judged)
    for experiment, (old, new) in judged.items():
        assert list(new["verdict"]) == list(old["verdict"]), experiment


def _assert_gald_outputs() -> None:
    """GALD's smoke run: its claims' trials and one descriptive GA type, object counts, claims, figures."""
    import pandas as pd

    from dla_repro.experiments.gald import local_distribution as gald

    tables = results_dir() / "tables" / "smoke"
    runs = pd.read_csv(tables / "gald_runs.csv")
    assert sorted(set(runs["trial"])) == ["cgnl", "cgnl_ld", "fcn", "gap_ld"]
    assert runs["eval_small_count"].gt(0).all() and runs["eval_miou"].between(0, 1).all()
    assert list(pd.read_csv(tables / "gald_claims.csv")["claim"]) == [c.text for c in gald.claims()]
    for name in ("object_sizes", "boundary_band", "masks"):
        assert (results_dir() / "figures" / "smoke" / f"gald_{name}.png").is_file(), name


def _assert_claims_plans_logged(manifest: dict) -> None:
    """Each notebook that judges claims left its plan on its run: ``claims_plan.json`` and the hash tag."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking.configure())
    for spec in JUDGING:
        run_id = manifest["notebooks"][spec.name]["mlflow_run_id"]
        assert "claims_plan.json" in {a.path for a in client.list_artifacts(run_id)}, spec.name
        assert client.get_run(run_id).data.tags.get("claims_plan_sha256"), spec.name


def _assert_every_run_in_its_notebooks_experiment(manifest: dict) -> None:
    """Each notebook's experiment holds its run and every sweep / training beneath it; Default stays empty;
    every run's artifacts are under the store's artifact root."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking.configure())
    assert not client.search_runs(["0"]), "runs in MLflow's Default experiment"
    runs = {r.info.run_id: r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])}
    for name, entry in manifest["notebooks"].items():
        notebook = runs[entry["mlflow_run_id"]]
        assert client.get_experiment(notebook.info.experiment_id).name == entry["mlflow_experiment"], name
    nested = 0
    for run in runs.values():
        root = run
        while "mlflow.parentRunId" in root.data.tags:
            root = runs[root.data.tags["mlflow.parentRunId"]]
            nested += 1
        assert root.data.tags.get("kind") == "notebook", run.info.run_name
        assert run.info.experiment_id == root.info.experiment_id, run.info.run_name
        assert run.info.artifact_uri.startswith(tracking.artifact_root().as_uri()), run.info.artifact_uri
    assert nested, "the smoke pipeline trains nested runs"


def _tiny_training_runs(experiment: str) -> None:
    """Two trials × two seeds × two profiles of finished 'fit' runs with a 3-epoch val_miou history."""
    import mlflow

    exp_id = tracking.get_or_create_experiment(experiment)
    for profile, offset in (("smoke", 0.0), ("quick", 0.1)):
        for trial, gain in (("fcn", 0.0), ("ida_up", 0.05)):
            for seed in (0, 1):
                with mlflow.start_run(experiment_id=exp_id, run_name=f"{trial} seed={seed}"):
                    mlflow.log_params({"trial": trial, "seed": seed})
                    mlflow.set_tags({"kind": "fit", "profile": profile, "hw.cpu": "Test CPU"})
                    for epoch in range(3):
                        mlflow.log_metric("val_miou", 0.1 * epoch + gain + offset + 0.01 * seed, step=epoch)
    with mlflow.start_run(experiment_id=exp_id, run_name="not a training"):
        mlflow.set_tags({"kind": "sweep", "profile": "smoke"})


@pytest.mark.notebook
def test_compare_runs_notebook_plots_the_stores_runs_and_survives_an_empty_store(capsys):
    """99_compare_runs in smoke: with runs, both figures and the selection (8 trainings, not the sweep);
    pointed at an experiment with none, it says so and still completes."""
    tracking.configure()
    _tiny_training_runs("dla_segmentation")
    assert cli.main(["run", "compare_runs", "--profile", "smoke"]) == 0, capsys.readouterr().out
    figures = results_dir() / "figures" / "smoke"
    assert (figures / "compare_runs_curves.png").is_file() and (figures / "compare_runs_last.png").is_file()
    import pandas as pd

    selected = pd.read_csv(results_dir() / "tables" / "smoke" / "compare_runs_selected.csv")
    assert len(selected) == 8 and set(selected["tags.profile"]) == {"smoke", "quick"}
    summary = pd.read_csv(results_dir() / "tables" / "smoke" / "compare_runs_summary.csv")
    assert len(summary) == 4 and set(summary["count"]) == {2}

    assert cli.main(["run", "compare_runs", "--profile", "smoke", "-p", "experiment=no_such_experiment"]) == 0
    executed = nbformat.read(results_dir() / "notebooks" / "smoke" / "99_compare_runs.ipynb", as_version=4)
    text = json.dumps([c.get("outputs", []) for c in executed.cells])
    assert "no experiment 'no_such_experiment' in the store" in text and "Nothing to plot" in text
