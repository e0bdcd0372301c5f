"""The benchmark suites end to end in their CI size, the GPU goals, the pipeline timer, README's generated tables."""

from __future__ import annotations

import json
import shutil
import sys

import pandas as pd
import pytest

from dla_repro import cli
from dla_repro.bench import (
    DATA_COLUMNS,
    KERNEL_COLUMNS,
    MODEL_COLUMNS,
    NOT_MEASURED,
    PIPELINE_COLUMNS,
    hardware_slug,
)
from dla_repro.bench.goals import judge
from dla_repro.bench.hardware import gpu_slug
from dla_repro.bench.pipeline import from_manifests, run_profile
from dla_repro.bench.readme import BEGIN, END, render, update_readme
from dla_repro.bench.suite import output_name
from dla_repro.kernels import OPS
from dla_repro.paths import repo_root, results_dir

COLUMNS = {"models": MODEL_COLUMNS, "kernels": KERNEL_COLUMNS, "data": DATA_COLUMNS, "pipeline": PIPELINE_COLUMNS}


def test_bench_all_ci_writes_every_suite_with_sane_values(capsys):
    """The suites "run on CPU in CI-sized form and produce their CSVs and figures"."""
    results_dir().mkdir(parents=True, exist_ok=True)
    shutil.copy(repo_root() / "results" / "manifest_quick.json", results_dir() / "manifest_quick.json")
    readme_before = (repo_root() / "README.md").read_text()
    assert cli.main(["bench", "all", "--preset", "ci", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    folder = results_dir() / "benchmarks"
    tables = {}
    for suite, columns in COLUMNS.items():
        df = pd.read_csv(folder / f"{suite}_cpu.csv")
        assert list(df.columns) == columns and len(df), suite
        assert (folder / f"{suite}_cpu.png").stat().st_size > 1000, suite
        tables[suite] = df

    models = tables["models"]
    assert list(models["setting"]) == ["fp32", "fp32", "bf16", "bf16"] and (models["images_per_s"] > 0).all()
    rate = models.set_index(["setting", "impl"])["images_per_s"]
    for setting, g in models.groupby("setting"):
        assert sorted(g["impl"]) == ["dla_repro", "timm"]
        assert g["ratio"].tolist() == pytest.approx([rate[setting, "dla_repro"] / rate[setting, "timm"]] * 2)
    speedup = models.set_index(["setting", "impl"])["speedup_vs_timm_fp32"]
    assert speedup["bf16", "dla_repro"] == pytest.approx(rate["bf16", "dla_repro"] / rate["fp32", "timm"])
    assert speedup["fp32", "timm"] == 1 and models["peak_mem_MB"].isna().all()  # peak memory: CUDA only
    loss_err = models.set_index(["setting", "impl"])["loss_rel_err"]
    assert loss_err["fp32"].eq(0).all() and loss_err["bf16"].between(0, 0.05).all()  # bf16 autocast vs fp32
    ours = rate["fp32", "dla_repro"]
    assert "(1 threads)" in models["hardware"].iloc[0]  # the CPU presets run one thread

    kernels = tables["kernels"]
    assert set(kernels["op"]) == set(OPS) and (kernels["fwd_bwd_ms"] > 0).all() and (kernels["fwd_ms"] > 0).all()
    assert kernels["fwd_frac_peak"].isna().all()  # no peak bandwidth on a CPU
    assert (kernels["speedup_vs_eager"] == 1).all() and kernels["speedup_vs_compile"].isna().all()

    data = tables["data"]
    assert list(data["source"]) == ["synthetic", "imagefolder", "cifar100"] and (data["samples_per_s"] > 0).all()
    assert data["ratio"].tolist() == pytest.approx((data["samples_per_s"] / data["model_images_per_s"]).tolist())
    assert (data["starves"] == (data["ratio"] < 1)).all()
    assert data["model_images_per_s"].iloc[0] == pytest.approx(ours)  # reused from the models suite

    pipeline = tables["pipeline"]
    quick = json.loads((repo_root() / "results" / "manifest_quick.json").read_text())["notebooks"]
    assert set(pipeline["profile"]) == {"quick"} and set(pipeline["notebook"]) == set(quick)
    assert dict(zip(pipeline["notebook"], pipeline["wall_seconds"])) == {k: v["wall_seconds"] for k, v in quick.items()}

    # every goal is a GPU goal: on a CPU each judged row says so, and every goal's suite has judged rows
    # (the models goals concern DLA-34, which the CI size leaves out: test_goals_pass_and_fail_on_cuda_rows)
    assert tables["models"]["goal"].isna().all() and tables["models"]["goal_met"].isna().all()
    for suite in ("kernels", "data"):
        judged = tables[suite].dropna(subset=["goal"])
        assert len(judged), suite
        assert all(set(v.split("; ")) == {NOT_MEASURED} for v in judged["goal_met"]), suite
    assert set(tables["kernels"].dropna(subset=["goal"])["op"]) == set(OPS)

    # README is regenerated only from the repository's own results: here the block is printed instead
    assert (repo_root() / "README.md").read_text() == readme_before
    assert "**models** on" in out and "**pipeline** on" in out


def test_goals_pass_and_fail_on_cuda_rows():
    rows = pd.DataFrame([
        dict(op="l2norm_scale", impl="triton", fwd_speedup_vs_eager=3.0, speedup_vs_eager=2.5,
             fwd_speedup_vs_compile=1.2, speedup_vs_compile=0.9, fwd_frac_peak=0.8, fwd_bwd_frac_peak=0.76),
        dict(op="l2norm_scale", impl="eager", fwd_speedup_vs_eager=1.0, speedup_vs_eager=1.0),
        dict(op="gald_ld_tail", impl="triton", fwd_speedup_vs_eager=1.6, speedup_vs_eager=1.5),
        dict(op="dynopool_resample", impl="triton", fwd_speedup_vs_eager=2.1, speedup_vs_eager=float("nan")),
    ])  # fmt: skip
    df = judge(rows, "kernels", cuda=True)
    assert df["goal_met"].tolist() == ["pass; fail; pass", "", "pass", "n/a"]  # compiled bwd 0.9 < 1
    assert df["goal"].iloc[0] == ">= 2x eager; >= 1x compiled; >= 75% of peak bandwidth"
    cpu = judge(rows.assign(impl="eager"), "kernels", cuda=False)
    assert cpu["goal_met"].iloc[2] == NOT_MEASURED and cpu["goal_met"].iloc[0].count(NOT_MEASURED) == 3
    models = pd.DataFrame([
        dict(variant="dla34", impl="dla_repro", setting="fast_path", ratio=1.1, speedup_vs_timm_fp32=1.9),
        dict(variant="dla34", impl="timm", setting="fast_path", ratio=1.1, speedup_vs_timm_fp32=1.7),
        dict(variant="dla46_c", impl="dla_repro", setting="fp32", ratio=0.9, speedup_vs_timm_fp32=0.9),
    ])  # fmt: skip
    assert judge(models, "models", cuda=True)["goal_met"].tolist() == ["pass; fail", "", ""]
    assert judge(models, "models", cuda=False)["goal_met"].tolist() == [f"{NOT_MEASURED}; {NOT_MEASURED}", "", ""]


def test_hardware_slugs_and_output_names():
    assert hardware_slug("cpu") == "cpu"
    assert gpu_slug("NVIDIA H100 80GB HBM3") == "h100-sxm" and gpu_slug("NVIDIA H200") == "h200"
    assert gpu_slug("NVIDIA GeForce RTX 3090") == "geforce-rtx-3090"
    gpu_rows = pd.DataFrame(dict(device=["cuda"], hardware=["1x NVIDIA H200"]))
    assert output_name("pipeline", gpu_rows, "cpu") == "pipeline_h200" and output_name("models", gpu_rows, "cpu") == (
        "models_cpu")


def test_pipeline_live_run_is_isolated_and_read_from_its_manifest(tmp_path):
    script = (
        "import json, os, pathlib; r = pathlib.Path(os.environ['DLA_REPRO_RESULTS']); r.mkdir(parents=True);"
        "assert os.environ['MLFLOW_TRACKING_URI'].startswith('sqlite:///' + str(r.parent));"
        "m = dict(hardware=dict(cpu='X', cpu_count='2', gpu='none'), notebooks=dict(nb=dict(wall_seconds=1.5,"
        " status='ok', git_commit='abc', started_at='t')));"
        "(r / 'manifest_smoke.json').write_text(json.dumps(m))"
    )
    df = run_profile("smoke", workdir=tmp_path, command=[sys.executable, "-c", script])
    assert list(df.columns) == PIPELINE_COLUMNS
    assert df[["profile", "notebook", "wall_seconds", "source", "git_commit", "device"]].values.tolist() == [
        ["smoke", "nb", 1.5, "live", "abc", "cpu"]]
    assert df["hardware"].item() == "X (2 CPUs)"
    with pytest.raises(RuntimeError, match="exited with 3"):
        run_profile("smoke", workdir=tmp_path, command=[sys.executable, "-c", "raise SystemExit(3)"])
    assert from_manifests(["smoke"], tmp_path / "nowhere").empty


def test_readme_block_from_small_csvs(tmp_path):
    pd.DataFrame([
        dict(variant="dla34", impl=impl, setting="fp32", images_per_s=rate, ratio=1.25, speedup_vs_timm_fp32=rate / 4,
             peak_mem_MB=float("nan"), loss_rel_err=0.0, hardware="CPU X (1 threads)", goal_met=NOT_MEASURED)
        for impl, rate in (("dla_repro", 5.0), ("timm", 4.0))
    ]).to_csv(tmp_path / "models_cpu.csv", index=False)  # fmt: skip
    pd.DataFrame([
        dict(profile="quick", notebook="a", wall_seconds=10.0, source="manifest", git_commit="1234567890",
             hardware="CPU X (2 CPUs)"),
        dict(profile="quick", notebook="b", wall_seconds=2.5, source="manifest", git_commit="abcdef0123",
             hardware="CPU X (2 CPUs)"),
    ]).to_csv(tmp_path / "pipeline_cpu.csv", index=False)  # fmt: skip
    block = render(tmp_path)
    assert "**models** on CPU X (1 threads) (`results/benchmarks/models_cpu.csv`):" in block
    assert f"| dla34 | fp32 | 5.00 | 4.00 | 1.25 | 1.25 | – | – | 0.00 | {NOT_MEASURED} |" in block
    assert "**kernels**: no table yet -- `dla-repro bench kernels`" in block
    assert "| a | 10.0 |" in block and "| **total** | 12.5 |" in block and "commits 1234567, abcdef0" in block

    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{BEGIN}\nold\n{END}\noutro\n")
    assert update_readme(readme, block) is True and update_readme(readme, block) is False
    assert readme.read_text() == f"intro\n{BEGIN}\n{block}{END}\noutro\n"
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="expected one"):
        update_readme(readme, block)


def test_committed_readme_tables_are_what_the_committed_csvs_generate():
    text = (repo_root() / "README.md").read_text()
    committed = text.split(BEGIN, 1)[1].split(END, 1)[0]
    assert committed == "\n" + render(repo_root() / "results" / "benchmarks"), (
        "README's performance tables differ from results/benchmarks/*.csv: run `dla-repro bench readme`")
