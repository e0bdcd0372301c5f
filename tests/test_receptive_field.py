"""Theoretical and empirical receptive fields on tiny CPU models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dla_repro.analysis.receptive_field import (
    canvas,
    empirical_receptive_field,
    extent,
    gradient_receptive_field,
    theoretical_receptive_field,
)


def _convs(k: int, channels: int = 4) -> nn.Sequential:
    layers = []
    for i in range(k):
        layers += [nn.Conv2d(3 if i == 0 else channels, channels, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*layers)


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.branch = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))

    def forward(self, x):
        x = self.stem(x)
        return x + self.branch(x)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_stack_of_3x3_convs_has_rf_2k_plus_1(k):
    rf = theoretical_receptive_field(_convs(k), "", input_size=21)
    assert rf.size == (2 * k + 1, 2 * k + 1) and not rf.clipped
    assert (rf.top + rf.bottom) // 2 == 10 and (rf.left + rf.right) // 2 == 10  # centred on the centre unit


def test_strides_pooling_dilation_and_branches():
    pooled = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1))
    assert theoretical_receptive_field(pooled, "", 32).size == (8, 8)  # 3, +1 (pool), +2·2 (conv at stride 2)
    assert theoretical_receptive_field(nn.Conv2d(3, 2, 3, padding=2, dilation=2), "", 15).size == (5, 5)
    assert theoretical_receptive_field(_Residual(), "", 15).size == (5, 5)  # the longest path counts
    assert theoretical_receptive_field(_Residual(), "stem", 15).size == (1, 1)
    assert theoretical_receptive_field(_convs(2), "0", 15, position=(0, 0)).size == (2, 2)  # clipped at the corner
    assert theoretical_receptive_field(_convs(2), "0", 15, position=(0, 0)).clipped


def test_timm_resnet18_layer1_and_model_untouched():
    import timm

    model = timm.create_model("resnet18", pretrained=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # conv1 7×7/2 → 7; maxpool 3/2 → 11; four 3×3 convs at stride 4 → 11 + 4·2·4 = 43
    rf = theoretical_receptive_field(model, "layer1", input_size=96)
    assert rf.size == (43, 43) and not rf.clipped
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_empirical_field_lies_inside_the_theoretical_one():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1)
    )
    image = torch.randn(3, 24, 24)
    rf = theoretical_receptive_field(model, "", 24)
    for patch, stride in ((1, 1), (4, 2)):
        emp = empirical_receptive_field(model, "", image, patch=patch, stride=stride, batch_size=64)
        assert emp.map.shape == (24, 24) and emp.map.max() > 0 and emp.position == rf.position
        rows, cols = torch.nonzero(emp.map > 1e-9 * emp.map.max(), as_tuple=True)
        grow = patch - 1  # a patch overlapping the field spreads its change over all its pixels
        assert rows.min() >= rf.top - grow and rows.max() <= rf.bottom + grow
        assert cols.min() >= rf.left - grow and cols.max() <= rf.right + grow
        assert emp.box is not None and emp.area <= (rf.height + 2 * grow) * (rf.width + 2 * grow)


def test_a_unit_that_sees_one_pixel_has_a_tiny_field():
    model = nn.Conv2d(3, 5, 1)
    image = torch.randn(3, 16, 16)
    assert theoretical_receptive_field(model, "", 16).size == (1, 1)
    emp = empirical_receptive_field(model, "", image)  # the defaults: 1-px probes at every pixel
    assert emp.area == 1 and emp.box.size == (1, 1) and (emp.box.top, emp.box.left) == (8, 8)
    emp = empirical_receptive_field(model, "", image, patch=3, stride=1, attribution="spread")
    assert emp.area <= 25 and emp.fraction < 0.1 and emp.side <= 5


def test_the_probe_inflates_the_occlusion_field_and_the_centre_attribution_halves_it():
    """Why the empirical field was re-measured: ParseNet's probe as first used here (an 8-px noise patch every
    4 px, its change spread over the patch) makes a 1×1 field 12×12; attributed to the patch's centre it is
    the field dilated by patch − 1 (8×8); 1–2 px probes measure 1×1 and 2×2; the gradient ERF 1×1."""
    model = nn.Conv2d(3, 5, 1)
    image = torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(0))
    old = empirical_receptive_field(model, "", image, patch=8, stride=4, attribution="spread")
    assert old.box.size == (12, 12) and old.area == 144
    assert empirical_receptive_field(model, "", image, patch=8, stride=4).box.size == (8, 8)
    assert empirical_receptive_field(model, "", image, patch=2).box.size == (2, 2)
    assert empirical_receptive_field(model, "", image, patch=1).box.size == (1, 1)
    grad = gradient_receptive_field(model, "", image)
    assert grad.method == "gradient" and grad.area == 1 and (grad.box.top, grad.box.left) == (8, 8)
    with pytest.raises(ValueError, match="attribution"):
        empirical_receptive_field(model, "", image, attribution="middle")


@pytest.mark.parametrize("model", [nn.Identity(), nn.Conv2d(3, 5, 1)], ids=["identity", "conv1x1"])
def test_gradient_erf_of_a_pointwise_map_is_one_pixel(model):
    images = torch.randn(3, 3, 9, 9)
    erf = gradient_receptive_field(model, "", images, canvas_size=21)
    assert erf.area == 1 and erf.box.size == (1, 1) and (erf.box.top, erf.box.left) == (10, 10)
    assert erf.map.shape == (21, 21) and not erf.box.clipped


def _linear_top(k: int, channels: int = 8) -> nn.Sequential:
    """k 3×3 convs with ReLUs between them (none after the last: no dead output unit)."""
    return nn.Sequential(*list(_convs(k, channels))[:-1])


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_gradient_erf_of_k_3x3_convs_is_inside_2k_plus_1_and_wider_than_a_pixel(k):
    torch.manual_seed(k)
    model = _linear_top(k)
    theo = theoretical_receptive_field(model, "", 31)
    assert theo.size == (2 * k + 1, 2 * k + 1)
    erf = gradient_receptive_field(model, "", torch.randn(4, 3, 16, 16), canvas_size=31)  # canvas > field
    assert not erf.box.clipped and erf.area > 1
    assert 1 < erf.box.height <= 2 * k + 1 and 1 < erf.box.width <= 2 * k + 1
    assert theo.top <= erf.box.top and erf.box.bottom <= theo.bottom  # inside the theoretical field


def test_canvas_puts_the_image_at_the_centre_of_a_mirrored_board():
    image = torch.arange(12.0).view(1, 3, 4)
    board = canvas(image, (9, 10))
    assert board.shape == (1, 9, 10)
    torch.testing.assert_close(board[:, 3:6, 3:7], image)
    torch.testing.assert_close(board[:, 3:6, 2], image[:, :, 1])  # reflected about the left border
    assert canvas(image, 40).shape == (1, 40, 40)  # many reflections
    zeros = canvas(image[None], (5, 6), fill="zeros")
    assert zeros.shape == (1, 1, 5, 6) and zeros.sum() == image.sum() and zeros[0, 0, 0, 0] == 0
    with pytest.raises(ValueError, match="smaller"):
        canvas(image, 2)


def test_a_canvas_larger_than_the_field_keeps_the_gradient_erf_from_being_clipped():
    """On the bare image, a field larger than the image is cut at the border; on a larger canvas it is whole."""
    torch.manual_seed(0)
    model = _linear_top(6)  # 13×13 field
    image = torch.randn(3, 9, 9)
    bare = gradient_receptive_field(model, "", image, threshold=1e-9)  # the whole support
    whole = gradient_receptive_field(model, "", image, canvas_size=25, threshold=1e-9)
    assert bare.box.clipped and bare.box.size == (9, 9)
    assert not whole.box.clipped and whole.box.size == (13, 13)


def test_whole_map_position_and_mode_restored():
    model = nn.Conv2d(3, 2, 1).train()
    emp = empirical_receptive_field(model, "", torch.randn(3, 8, 8), patch=2, stride=2, position="all")
    assert emp.position is None and emp.fraction == 1.0 and model.training
    assert theoretical_receptive_field(model, "", 8, position="all").size == (8, 8)
    with pytest.raises(ValueError, match="outside"):
        empirical_receptive_field(model, "", torch.randn(3, 8, 8), patch=2, position=(9, 0))
    with pytest.raises(ValueError, match="patch"):
        empirical_receptive_field(model, "", torch.randn(3, 8, 8), patch=9)
    with pytest.raises(AttributeError):
        theoretical_receptive_field(model, "missing", 8)


def test_extent_threshold():
    heat = torch.zeros(5, 5)
    heat[1:3, 2:4] = 1.0
    heat[4, 4] = 0.01
    assert extent(heat, 0.05) == (4, (1, 2, 2, 3))
    assert extent(heat, 0.001)[0] == 5
    assert extent(torch.zeros(3, 3)) == (0, None)


def test_fcn_vgg16_fc7_field_is_404_as_in_parsenet():
    """ParseNet (arXiv 1506.04579): the theoretical field of FCN-VGG's fc7 is 404×404 (one float64 pass at 416 px)."""
    from dla_repro.models.parsenet import vgg16_fcn

    model = vgg16_fcn(num_classes=2, fc_channels=4)  # fc width does not change the field
    rf = theoretical_receptive_field(model, "neck", input_size=416)
    assert rf.size == (404, 404) and not rf.clipped
