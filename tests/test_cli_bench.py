"""`dla-repro bench`: each benchmark runs from the CLI and writes its CSV under results/benchmarks/."""

from __future__ import annotations

import pandas as pd

from dla_repro import cli
from dla_repro.paths import results_dir


def test_bench_synthetic_writes_its_table(capsys):
    assert cli.main(["bench", "synthetic", "--image-size", "32"]) == 0
    df = pd.read_csv(results_dir() / "benchmarks" / "synthetic_cpu.csv")
    assert list(df["image_size"]) == [32] and (df["samples_per_s"] > 0).all()
    assert "samples_per_s" in capsys.readouterr().out


def test_bench_kernels_on_cpu_times_the_reference(capsys):
    assert cli.main(["bench", "kernels", "--device", "cpu", "--image-size", "4"]) == 0
    df = pd.read_csv(results_dir() / "benchmarks" / "kernels_cpu.csv")
    assert len(df) and "wrote" in capsys.readouterr().out
