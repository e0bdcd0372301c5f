"""Parameters and MACs with FlopCounterMode, against timm and the reference table."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import dla_repro  # noqa: F401
from dla_repro.metrics.complexity import count_complexity, count_macs
from dla_repro.experiments.dla.reference import REFERENCE
from dla_repro.models import VARIANTS, create_dla


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_params_equal_timm_and_gmacs_match_the_table(variant):
    with torch.device("meta"):
        ours = create_dla(variant)
        ref = timm.create_model(variant)
    c = count_complexity(ours, input_size=(3, 224, 224))
    assert c["params"] == sum(p.numel() for p in ref.parameters())
    assert round(c["params"] / 1e6, 2) == REFERENCE[variant]["params_m"]
    assert abs(c["gmacs"] / REFERENCE[variant]["gmacs"] - 1) <= 0.01
    assert c["macs"] == c["conv_macs"] + c["norm_macs"]


def test_known_counts_and_meta_equals_real_run():
    conv = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4))
    c = count_complexity(conv, input_size=(3, 8, 8))
    assert c["conv_macs"] == 8 * 8 * 4 * 3 * 9 and c["norm_macs"] == 4 * 8 * 8
    assert count_macs(nn.Linear(10, 5), input_size=(10,)) == 50
    model = create_dla("dla34", channels=(8, 16, 32, 64, 128, 256)).train()
    real = count_complexity(model, input_size=(3, 32, 32), batch_size=2, meta=False)
    assert real == count_complexity(model, input_size=(3, 32, 32), batch_size=2)
    assert model.training and not any(p.is_meta for p in model.parameters())


def test_architecture_table_compares_with_timm_and_the_reference():
    from dla_repro.experiments.dla.architecture import architecture_table

    df = architecture_table(["dla46_c", "dla102"])
    assert list(df["variant"]) == ["dla46_c", "dla102"]
    assert (df["params"] == df["params_timm"]).all()
    assert (df["gmacs_diff_pct"].abs() <= 1).all() and (df["top1_paper"] == "n/a").all()
    assert architecture_table(["dla34"], image_size=64)["gmacs_ref"].item() == "n/a"
