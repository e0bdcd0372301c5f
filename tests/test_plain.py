"""The plain calibration baseline: heads, shapes, and that it really is plain."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dla_repro.models.plain import PlainNet


def test_classification_head_shapes_and_gradients():
    torch.manual_seed(0)
    model = PlainNet(num_classes=7, channels=(8, 8, 16), depth=2)
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 7)
    assert model.forward_features(x).shape == (2, 16, 4, 4)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)


def test_segmentation_head_is_upsampled_to_the_input():
    model = PlainNet(num_classes=5, task="segmentation", channels=(8, 8, 16, 16))
    x = torch.randn(2, 3, 48, 48)
    out = model(x)
    assert out.shape == (2, 5, 48, 48)
    assert model.forward_head(model.forward_features(x)).shape == (2, 5, 3, 3)  # stride 16, no size given


def test_plain_means_a_chain_of_conv_bn_relu():
    model = PlainNet(num_classes=4, channels=(8, 16), depth=3)
    leaves = {type(m) for m in model.modules() if not list(m.children())}
    allowed = {nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Identity, nn.Dropout, nn.Flatten,
               nn.AdaptiveAvgPool2d}
    extra = {t for t in leaves if t not in allowed and not t.__name__.endswith("Pool2d")}
    assert not extra, extra
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 2 * 3 + 1  # stem, stages, classifier
    assert [c.stride[0] for c in convs[1:-1]] == [2, 1, 1, 2, 1, 1]


def test_registered_in_timm_and_bad_task():
    import timm

    import dla_repro.models.plain  # noqa: F401  (registers dlarepro_plain)

    model = timm.create_model("dlarepro_plain", num_classes=6, channels=(8, 8))
    assert isinstance(model, PlainNet) and model(torch.randn(1, 3, 16, 16)).shape == (1, 6)
    with pytest.raises(ValueError, match="task"):
        PlainNet(task="detection")


def test_calibration_runs_end_to_end_and_writes_its_table():
    from dla_repro.experiments.calibration import CALIBRATION_TABLE, calibrate, load_calibration
    from dla_repro.paths import results_dir

    df = calibrate(image_size=32, n_train=32, n_val=16, epochs=1, batch_size=16, progress=False)
    metrics = set(df["metric"])
    assert {"top1", "shape_acc", "position_acc", "miou", "pixel_acc", "scene_acc_whole_image"} <= metrics
    assert df["value"].between(0, 1).all()
    assert (results_dir() / "tables" / CALIBRATION_TABLE).exists()
    again = load_calibration()
    assert len(again) == len(df) and set(again["data_digest"]) == {df["data_digest"].iloc[0]}
