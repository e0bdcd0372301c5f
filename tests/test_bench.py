"""Throughput benchmark: shape and sanity of the table, at a tiny size."""

from __future__ import annotations

import pandas as pd
import pytest

from dla_repro.bench import COLUMNS, bench_models, write_benchmark
from dla_repro.paths import results_dir


def test_bench_models_tiny_table_is_sane():
    df = bench_models(["dla46_c"], batch_size=2, image_size=32, steps=1, warmup=0, rounds=1)
    assert list(df.columns) == COLUMNS
    assert sorted(df["impl"]) == ["dla_repro", "timm"]
    assert (df["images_per_s"] > 0).all() and (df["setting"] == "fp32").all() and (df["device"] == "cpu").all()
    ours, ref = (df.loc[df["impl"] == i, "images_per_s"].item() for i in ("dla_repro", "timm"))
    assert df["ratio"].nunique() == 1 and df["ratio"].iloc[0] == pytest.approx(ours / ref)
    assert df["hardware"].iloc[0]
    path = write_benchmark(df, "tiny")
    assert path == results_dir() / "benchmarks" / "tiny.csv"
    assert list(pd.read_csv(path).columns) == COLUMNS


def test_bench_models_rejects_bad_arguments():
    with pytest.raises(ValueError, match="settings"):
        bench_models(["dla34"], settings=("fp16",))
    with pytest.raises(ValueError, match="name"):
        write_benchmark(pd.DataFrame(), "../escape")
