"""`dla-repro bench`: each benchmark runs from the CLI and writes its CSV under results/benchmarks/."""

from __future__ import annotations

import pandas as pd

from dla_repro import cli
from dla_repro.bench import KERNEL_COLUMNS, SYNTHETIC_COLUMNS
from dla_repro.paths import results_dir


def test_bench_synthetic_writes_its_table(capsys):
    assert cli.main(["bench", "synthetic", "--image-size", "32"]) == 0
    df = pd.read_csv(results_dir() / "benchmarks" / "synthetic_cpu.csv")
    assert list(df.columns) == SYNTHETIC_COLUMNS  # those of the committed results/benchmarks/synthetic_cpu.csv
    assert list(df["image_size"]) == [32] and (df["samples_per_s"] >= df["samples_per_s_median"]).all()
    assert (df["samples_per_s_median"] > 0).all() and "samples_per_s" in capsys.readouterr().out


def test_bench_kernels_on_cpu_times_the_reference(capsys):
    argv = ["bench", "kernels", "--device", "cpu", "--image-size", "4", "--op", "l2norm_scale", "--impls", "eager"]
    assert cli.main(argv) == 0
    df = pd.read_csv(results_dir() / "benchmarks" / "kernels_cpu.csv")
    assert list(df.columns) == KERNEL_COLUMNS and set(df["impl"]) == {"eager"}
    assert set(df["shape"]) == {"16x512x4x4", "16x1024x4x4"} and len(df) == 4  # default N, C at H = W = 4
    assert "wrote" in capsys.readouterr().out


def test_bench_kernels_unknown_op_is_a_clear_error(capsys):
    assert cli.main(["bench", "kernels", "--device", "cpu", "--op", "l2_norm"]) == 2
    err = capsys.readouterr().err
    assert "unknown kernel op 'l2_norm'" in err and "l2norm_scale" in err and "Traceback" not in err
