"""`dla-repro` pipeline: parameter resolution and validation, execution, failures, manifest."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from dla_repro import cli, pipeline, tracking
from dla_repro.paths import results_dir
from nbfactory import make_notebook

PARAMS = textwrap.dedent(
    """\
    profile: str = "quick"  # smoke | quick | paper
    epochs: int = 3
    lr: float = 0.1
    seeds: list[int] = [0, 1]
    use_aug: bool = True
    """
)

GOOD_BODY = textwrap.dedent(
    """\
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tqdm import tqdm
    from dla_repro import tracking
    run = tracking.start_notebook_run("nb_good", dict(epochs=epochs, lr=lr, seeds=seeds), profile=profile)
    for _ in tqdm(range(epochs), desc="epochs"):
        pass
    fig, ax = plt.subplots()
    ax.plot(seeds)
    tracking.log_figure(fig, "good.png")
    tracking.end_notebook_run()
    print("EPOCHS", epochs, "LR", lr, "SEEDS", seeds)
    """
)


@pytest.fixture
def pipe_file(tmp_path):
    nbdir = tmp_path / "nbs"
    make_notebook(nbdir / "good.ipynb", PARAMS, GOOD_BODY)
    make_notebook(nbdir / "bad.ipynb", 'profile: str = "quick"\n', "x = 1", "raise ValueError('synthetic failure')")
    make_notebook(nbdir / "other.ipynb", 'profile: str = "quick"\nwidth: int = 4\n', "print(width)")
    spec = {
        "profiles": {
            "smoke": {"defaults": {"epochs": 1, "width": 2}},
            "quick": {"defaults": {}},
            "paper": {"defaults": {"epochs": 120}},
        },
        "notebooks": [
            {"name": "good", "path": "good.ipynb", "experiment": "nb_good", "params": {"smoke": {"lr": 0.5}}},
            {"name": "bad", "path": "bad.ipynb", "experiment": "nb_bad"},
            {"name": "other", "path": "other.ipynb", "experiment": "nb_other"},
        ],
    }
    path = nbdir / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_precedence_profile_defaults_then_pipeline_then_cli(pipe_file):
    pipe = pipeline.load_pipeline(pipe_file)
    (job,) = pipeline.plan(["good"], "smoke", pipeline=pipe)
    assert job.parameters == {"epochs": 1, "lr": 0.5, "profile": "smoke"}
    (job,) = pipeline.plan(["good"], "smoke", ["epochs=4", "seeds=[3,4,5]", "use_aug=false"], pipeline=pipe)
    assert job.parameters == {"epochs": 4, "lr": 0.5, "seeds": [3, 4, 5], "use_aug": False, "profile": "smoke"}
    (job,) = pipeline.plan(["good"], "paper", ["lr=1"], pipeline=pipe)
    assert job.parameters["lr"] == 1.0 and isinstance(job.parameters["lr"], float)
    assert job.parameters["epochs"] == 120


def test_the_extended_profile_is_optional_in_a_pipeline_file_and_named_when_missing(pipe_file):
    pipe = pipeline.load_pipeline(pipe_file)  # defines smoke, quick and paper only
    with pytest.raises(pipeline.PipelineError, match="'extended' is not defined in the pipeline file"):
        pipeline.plan(["good"], "extended", pipeline=pipe)
    assert "extended" in pipeline.load_pipeline().profiles  # the repository's defines it


def test_a_profile_that_requires_cuda_is_refused_without_it_before_anything_runs(pipe_file, capsys):
    spec = yaml.safe_load(pipe_file.read_text())
    spec["profiles"]["gpu"] = {"requires": "cuda", "defaults": {"epochs": 7}}
    pipe_file.write_text(yaml.safe_dump(spec))
    pipe = pipeline.load_pipeline(pipe_file)
    (job,) = pipeline.plan(["good"], "gpu", pipeline=pipe)  # planning needs no GPU
    assert job.parameters["epochs"] == 7
    pipeline.check_machine(pipe, "gpu", cuda=True)
    pipeline.check_machine(pipe, "quick", cuda=False)  # no requirement
    with pytest.raises(pipeline.PipelineError, match="needs a CUDA device"):
        pipeline.check_machine(pipe, "gpu", cuda=False)
    if not torch.cuda.is_available():
        assert cli.main(["--pipeline", str(pipe_file), "run", "good", "--profile", "gpu"]) != 0
        assert "needs a CUDA device" in capsys.readouterr().err
        assert not (results_dir() / "manifest_gpu.json").exists()
    spec["profiles"]["gpu"]["requires"] = "tpu"
    pipe_file.write_text(yaml.safe_dump(spec))
    with pytest.raises(pipeline.PipelineError, match="known requirements"):
        pipeline.check_machine(pipeline.load_pipeline(pipe_file), "gpu", cuda=True)
    # the repository's gpu profile: every notebook plans in it (test_notebooks), and it asks for CUDA
    assert pipeline.load_pipeline().profiles["gpu"]["requires"] == "cuda"


def test_cli_override_routes_to_declaring_notebooks_only(pipe_file):
    pipe = pipeline.load_pipeline(pipe_file)
    jobs = {j.name: j for j in pipeline.plan(["good", "other"], "quick", ["epochs=2", "other.width=9"], pipeline=pipe)}
    assert jobs["good"].parameters["epochs"] == 2 and "width" not in jobs["good"].parameters
    assert jobs["other"].parameters == {"width": 9, "profile": "quick"}


@pytest.mark.parametrize(
    "override, match",
    [
        ("epoch=2", r"unknown parameter 'epoch'.*epochs: int"),
        ("epochs=two", r"'epochs' expects int, got 'two'"),
        ("epochs=2.5", r"'epochs' expects int"),
        ("use_aug=maybe", r"'use_aug' expects bool"),
        ("seeds=[a]", r"'seeds' expects int"),
        ("good.nope=1", r"unknown parameter 'nope' for notebook 'good'"),
        ("profile=paper", r"set by the pipeline"),
        ("epochs", r"key=value"),
    ],
)
def test_bad_parameters_fail_before_execution(pipe_file, override, match, capsys):
    pipe = pipeline.load_pipeline(pipe_file)
    with pytest.raises(pipeline.ParameterError, match=match):
        pipeline.plan(["good"], "quick", [override], pipeline=pipe)
    # through the CLI: exit code 2, nothing executed, no MLflow run created
    assert cli.main(["--pipeline", str(pipe_file), "run", "good", "-p", override]) == 2
    assert "error" in capsys.readouterr().err
    assert not (results_dir() / "notebooks").exists()


def test_unknown_parameter_in_pipeline_yaml_is_an_error(pipe_file):
    spec = yaml.safe_load(pipe_file.read_text())
    spec["notebooks"][2]["params"] = {"quick": {"widht": 3}}
    pipe_file.write_text(yaml.safe_dump(spec))
    with pytest.raises(pipeline.ParameterError, match="widht.*width: int"):
        pipeline.plan(["other"], "quick", pipeline=pipeline.load_pipeline(pipe_file))


def test_paper_and_module_are_read_and_a_module_must_be_a_dotted_name(pipe_file):
    spec = yaml.safe_load(pipe_file.read_text())
    spec["notebooks"][0].update(paper="Toy", module="toy_paper.experiments.gates")
    pipe_file.write_text(yaml.safe_dump(spec))
    good, bad, _ = pipeline.load_pipeline(pipe_file).notebooks
    assert (good.paper, good.module) == ("Toy", "toy_paper.experiments.gates")  # not imported: it does not exist
    assert (bad.paper, bad.module) == ("", "")
    for module in ("toy_paper/experiments/gates.py", "toy paper", "toy.", 3):
        spec["notebooks"][0]["module"] = module
        pipe_file.write_text(yaml.safe_dump(spec))
        with pytest.raises(pipeline.PipelineError, match="notebook 'good' has module.*dotted module name"):
            pipeline.load_pipeline(pipe_file)


def test_unknown_notebook_and_missing_data_root(pipe_file, tmp_path):
    pipe = pipeline.load_pipeline(pipe_file)
    with pytest.raises(pipeline.PipelineError, match="unknown notebook"):
        pipeline.plan(["nope"], "quick", pipeline=pipe)
    with pytest.raises(pipeline.PipelineError, match="data-root.*does not exist"):
        pipeline.plan(["good"], "quick", data_root=str(tmp_path / "missing"), pipeline=pipe)


@pytest.mark.notebook
def test_run_executes_logs_and_writes_manifest(pipe_file, capsys):
    code = cli.main(["--pipeline", str(pipe_file), "run", "good", "other", "--profile", "smoke", "-p", "epochs=2"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "[1/2] good: ok" in out and "[2/2] other: ok" in out
    executed = results_dir() / "notebooks" / "smoke" / "good.ipynb"
    assert "EPOCHS 2 LR 0.5 SEEDS [0, 1]" in executed.read_text()
    manifest = json.loads((results_dir() / "manifest_smoke.json").read_text())
    entry = manifest["notebooks"]["good"]
    assert entry["status"] == "ok" and entry["parameters"]["epochs"] == 2 and entry["wall_seconds"] > 0
    client = MlflowClient(tracking.configure())
    run = client.get_run(entry["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["epochs"] == "2"  # logged by the notebook into the pipeline's run
    assert {a.path for a in client.list_artifacts(run.info.run_id, "notebook")} == {"notebook/good.ipynb"}
    assert "figures/good.png" in {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert (results_dir() / "figures" / "smoke" / "good.png").exists()


@pytest.mark.notebook
def test_failure_names_notebook_and_cell_and_keep_going_continues(pipe_file, capsys):
    code = cli.main(["--pipeline", str(pipe_file), "run", "bad", "other", "--profile", "quick"])
    out = capsys.readouterr().out
    assert code == 1
    # cell #4 of the executed notebook: markdown, parameters, injected parameters, `x = 1`, then this one
    # the line that raised, from the traceback (not merely the cell's last line)
    assert "notebook bad failed in cell #4 line 1 `raise ValueError('synthetic failure')`: ValueError: synthetic failure" in out
    assert "['other'] not run" in out

    code = cli.main(["--pipeline", str(pipe_file), "run", "bad", "other", "--keep-going", "--jobs", "2"])
    out = capsys.readouterr().out
    assert code == 1
    assert "other: ok" in out and "bad: FAILED" in out
    manifest = json.loads((results_dir() / "manifest_quick.json").read_text())
    assert manifest["notebooks"]["bad"]["status"] == "failed"
    run = MlflowClient(tracking.configure()).get_run(manifest["notebooks"]["bad"]["mlflow_run_id"])
    assert run.info.status == "FAILED" and "synthetic failure" in run.data.tags["failure"]


def test_list_shows_types_defaults_and_profile_values(pipe_file, capsys):
    assert cli.main(["--pipeline", str(pipe_file), "list", "good", "--profile", "smoke"]) == 0
    out = capsys.readouterr().out
    assert "epochs" in out and ": int" in out and "= 3" in out and "[smoke: 1]" in out
    assert "smoke | quick | paper" in out
