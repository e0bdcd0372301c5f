"""Benchmarks: the timing utility, and the shape and sanity of the model and kernel tables at tiny sizes."""

from __future__ import annotations

import math
import time

import pandas as pd
import pytest
import torch

from dla_repro.bench import (
    KERNEL_COLUMNS,
    MODEL_COLUMNS,
    bench_kernels,
    bench_models,
    bench_shapes,
    peak_bandwidth_gbps,
    time_interleaved,
    write_benchmark,
)
from dla_repro.kernels import OPS, get_op
from dla_repro.paths import results_dir


def test_time_interleaved_warms_up_alternates_and_times_each_call():
    log = []
    fns = {"a": lambda: log.append("a"), "b": lambda: (log.append("b"), time.sleep(0.01))}
    timings = time_interleaved(fns, iters=2, rounds=3, warmup=1)
    assert "".join(log) == "ab" + "aabb" + "bbaa" + "aabb"  # warm-up, then ABBA order by round
    assert set(timings) == {"a", "b"} and all(len(t.seconds) == 3 for t in timings.values())
    b = timings["b"]
    assert b.min >= 0.01 and b.min <= b.median <= b.max  # seconds per call, not per burst of 2
    assert timings["a"].median < b.median
    with pytest.raises(ValueError, match="rounds >= 1"):
        time_interleaved(fns, rounds=0)


def test_bench_models_tiny_table_is_sane():
    df = bench_models(["dla46_c"], batch_size=2, image_size=32, steps=1, warmup=0, rounds=1)
    assert list(df.columns) == MODEL_COLUMNS
    assert sorted(df["impl"]) == ["dla_repro", "timm"]
    assert (df["images_per_s"] > 0).all() and (df["setting"] == "fp32").all() and (df["device"] == "cpu").all()
    ours, ref = (df.loc[df["impl"] == i, "images_per_s"].item() for i in ("dla_repro", "timm"))
    assert df["ratio"].nunique() == 1 and df["ratio"].iloc[0] == pytest.approx(ours / ref)
    assert df["hardware"].iloc[0]
    path = write_benchmark(df, "tiny")
    assert path == results_dir() / "benchmarks" / "tiny.csv"
    assert list(pd.read_csv(path).columns) == MODEL_COLUMNS


def test_bench_models_rejects_bad_arguments():
    with pytest.raises(ValueError, match="settings"):
        bench_models(["dla34"], settings=("fp16",))
    with pytest.raises(ValueError, match="name"):
        write_benchmark(pd.DataFrame(), "../escape")


@pytest.mark.parametrize("name", sorted(OPS))
def test_bench_kernels_table_on_cpu(name):
    op = get_op(name)
    shape = bench_shapes(op, image_size=4)[0]
    df = bench_kernels([name], "cpu", shapes=[shape], iters=1, rounds=2, warmup=0, impls=("eager",))
    n_dtypes = len(op.bench.dtypes)  # rows: for each dtype, each layout
    assert list(df.columns) == KERNEL_COLUMNS and len(df) == n_dtypes * len(op.bench.layouts)
    assert list(df["layout"]) == list(op.bench.layouts) * n_dtypes and (df["shape"] == "x".join(map(str, shape))).all()
    assert (df["op"] == name).all() and (df["fwd_ms"] > 0).all() and (df["fwd_bwd_ms"] > 0).all()
    assert (df["max_abs_err"] == 0).all() and (df["speedup_vs_eager"] == 1).all()
    inputs = op.inputs(shape)
    fwd_bytes, fwd_bwd_bytes = op.bench.bytes_moved(inputs, op.reference(*inputs))
    row = df.iloc[0]
    assert row["fwd_GBps"] == pytest.approx(fwd_bytes / (row["fwd_ms"] / 1e3) / 1e9)
    assert row["fwd_bwd_GBps"] == pytest.approx(fwd_bwd_bytes / (row["fwd_bwd_ms"] / 1e3) / 1e9)
    assert df["peak_GBps"].isna().all() and df["hardware"].str.len().min() > 0


def test_bench_kernels_compiled_reference_agrees():
    df = bench_kernels(
        ["l2norm_scale"], "cpu", shapes=[(1, 8, 4, 4)], layouts=("contiguous",), iters=1, rounds=1, warmup=0
    )
    assert list(df["impl"]) == ["eager", "compile"]  # the CPU default: no interpreted kernel
    assert df["max_abs_err"].max() < 1e-5 and (df["fwd_bwd_ms"] > 0).all()


def test_bench_shapes_and_peak_bandwidth_table_and_bad_arguments():
    op = get_op("l2norm_scale")
    assert bench_shapes(op) == list(op.bench.shapes)
    assert bench_shapes(op, 8) == [s[:2] + (8, 8) for s in op.bench.shapes]
    assert peak_bandwidth_gbps("NVIDIA H100 80GB HBM3") == 3350
    assert peak_bandwidth_gbps("NVIDIA H100 PCIe") == 2000
    assert peak_bandwidth_gbps("NVIDIA H200") == 4800
    assert peak_bandwidth_gbps("NVIDIA A100-SXM4-80GB") == 2039
    assert math.isnan(peak_bandwidth_gbps("Some Future GPU"))
    with pytest.raises(ValueError, match="impls"):
        bench_kernels(device="cpu", impls=("cuda",))
    with pytest.raises(ValueError, match="layouts"):
        bench_kernels(device="cpu", layouts=("nhwc",), impls=("eager",))
    with pytest.raises(ValueError, match="the ops are: .*l2norm_scale"):  # every row, by name
        bench_kernels(["l2_norm"], device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            bench_kernels(device="cuda")
