"""ParseNet pieces: L2NormScale, global context, fusion heads, segmenters on timm backbones (CPU, tiny)."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import dla_repro  # noqa: F401  (registers dlarepro_* in timm)
from dla_repro.kernels import ENV_VAR
from dla_repro.models.parsenet import (
    FUSIONS,
    L2NormScale,
    ParseNetHead,
    ParseNetSegmenter,
    create_parsenet,
    global_context,
    load_vgg_fc_weights,
    vgg16_fcn,
    vgg_fc_neck,
)
from dla_repro.models.segmentation import select_levels


@pytest.fixture(autouse=True)
def _reference_kernels(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    torch.manual_seed(0)


def test_l2norm_scale_forward_and_scale_gradient():
    layer = L2NormScale(6, init_scale=10.0)
    x = torch.randn(2, 6, 3, 4)
    y = layer(x)
    torch.testing.assert_close(y.norm(dim=1), torch.full((2, 3, 4), 10.0))  # ‖y‖ = γ at init
    torch.testing.assert_close(y, 10.0 * x / x.norm(dim=1, keepdim=True))
    y.sum().backward()
    torch.testing.assert_close(layer.scale.grad, (x / x.norm(dim=1, keepdim=True)).sum(dim=(0, 2, 3)))


def test_l2norm_scale_can_be_frozen():
    layer = L2NormScale(4, init_scale=20.0, learn_scale=False)
    x = torch.randn(1, 4, 2, 2, requires_grad=True)
    layer(x).sum().backward()
    assert layer.scale.grad is None and x.grad is not None
    assert "scale" in layer.state_dict() and not any(p.requires_grad for p in layer.parameters())
    assert "learn_scale=False" in repr(layer)
    with pytest.raises(ValueError, match="positive"):
        L2NormScale(0)


def test_layer_goes_through_the_kernel_dispatch(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "nonsense")
    with pytest.raises(ValueError, match=ENV_VAR):
        L2NormScale(3)(torch.randn(1, 3, 2, 2))


def test_global_context_is_the_spatial_mean():
    x = torch.randn(2, 5, 3, 4)
    g = global_context(x)
    assert g.shape == (2, 5, 1, 1)
    torch.testing.assert_close(g.expand_as(x)[:, :, 2, 3], x.mean(dim=(2, 3)))


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("l2norm", [True, False])
def test_head_shapes_and_context(fusion, l2norm):
    head = ParseNetHead(8, 5, fusion=fusion, l2norm=l2norm).eval()
    x = torch.randn(2, 8, 6, 7)
    scores = head(x)
    assert scores.shape == (2, 5, 6, 7)
    n_norms = sum(isinstance(m, L2NormScale) for m in head.modules())
    assert n_norms == (0 if not l2norm else 1 if fusion == "none" else 2)
    # a change in one corner reaches the opposite corner only through the global context
    x2 = x.clone()
    x2[:, :, 0, 0] += 5.0
    far_change = (head(x2)[:, :, -1, -1] - scores[:, :, -1, -1]).abs().max()
    assert (far_change > 1e-6) == (fusion != "none")


def test_early_and_late_fusion_are_the_same_function_with_linear_classifiers():
    early = ParseNetHead(4, 3, fusion="early", l2norm=True)
    late = ParseNetHead(4, 3, fusion="late", l2norm=True)
    with torch.no_grad():
        late.local_norm.scale.copy_(torch.rand(4) + 1)
        late.global_norm.scale.copy_(torch.rand(4) + 1)
        early.local_norm.scale.copy_(late.local_norm.scale)
        early.global_norm.scale.copy_(late.global_norm.scale)
        w = early.classifier[-1].weight
        late.classifier[-1].weight.copy_(w[:, :4])
        late.global_classifier[-1].weight.copy_(w[:, 4:])
        late.classifier[-1].bias.copy_(early.classifier[-1].bias)
        late.global_classifier[-1].bias.zero_()
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(early(x), late(x))


def test_head_options():
    head = ParseNetHead(8, 5, fusion="late", hidden_channels=16, dropout=0.1)
    assert head.classifier[0].out_channels == 16 and isinstance(head.classifier[2], nn.Dropout2d)
    assert head(torch.randn(1, 8, 3, 3)).shape == (1, 5, 3, 3)
    with pytest.raises(ValueError, match="none, early, late"):
        ParseNetHead(8, 5, fusion="middle")


def test_segmenter_on_timm_resnet18_trains_one_step():
    model = create_parsenet("resnet18", num_classes=4, fusion="early")
    assert model.head.in_channels == 512
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 4, (2, 64, 64))
    logits = model(x)
    assert logits.shape == (2, 4, 64, 64)
    assert model.forward_scores(x).shape == (2, 4, 2, 2)  # stride 32
    loss = nn.functional.cross_entropy(logits, y)
    loss.backward()
    assert model.head.local_norm.scale.grad is not None and model.head.global_norm.scale.grad.abs().sum() > 0
    assert model.backbone.conv1.weight.grad.abs().sum() > 0


def test_segmenter_with_a_plain_module_and_other_levels():
    backbone = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.ReLU())
    model = create_parsenet(backbone, num_classes=2, in_channels=6, fusion="late")
    assert model(torch.randn(1, 3, 20, 18)).shape == (1, 2, 20, 18)
    model = create_parsenet("resnet18", num_classes=3, feature_index=2, fusion="none", l2norm=False).eval()
    assert model.head.in_channels == 128 and model.forward_scores(torch.randn(1, 3, 32, 32)).shape == (1, 3, 4, 4)
    with pytest.raises(ValueError, match="feature_info"):
        create_parsenet(backbone, num_classes=2)
    with pytest.raises(ValueError, match="by name"):
        create_parsenet(backbone, num_classes=2, in_channels=6, pretrained=True)


def test_select_levels():
    t = torch.zeros(1)
    assert select_levels(t) is t
    assert select_levels([1, t]) is t and select_levels((t, 1), 0) is t and select_levels({"a": 1, "b": t}) is t
    picked = select_levels([1, t, 2], (2, 1))
    assert picked[0] == 2 and picked[1] is t
    with pytest.raises(TypeError):
        select_levels(None)


def test_vgg16_fcn_baseline_and_parsenet():
    base = vgg16_fcn(num_classes=3, fc_channels=16)
    assert base.head.fusion == "none" and not any(isinstance(m, L2NormScale) for m in base.modules())
    assert base.neck[0].kernel_size == (7, 7) and base.neck[0].padding == (3, 3)
    parse = vgg16_fcn(num_classes=3, fc_channels=16, fusion="early", l2norm=True).eval()
    assert parse(torch.randn(1, 3, 64, 64)).shape == (1, 3, 64, 64)
    assert parse.forward_scores(torch.randn(1, 3, 64, 64)).shape == (1, 3, 2, 2)


def test_load_vgg_fc_weights_from_a_timm_conv_mlp():
    from timm.models.vgg import ConvMlp

    src = ConvMlp(8, 12, kernel_size=3)
    neck = vgg_fc_neck(8, 12, fc6_kernel=3)
    load_vgg_fc_weights(neck, src)
    torch.testing.assert_close(neck[0].weight, src.fc1.weight)
    torch.testing.assert_close(neck[3].bias, src.fc2.bias)
    with pytest.raises(ValueError, match="shapes differ"):
        load_vgg_fc_weights(vgg_fc_neck(8, 10, fc6_kernel=3), src)
    with pytest.raises(ValueError, match="odd"):
        vgg_fc_neck(8, 10, fc6_kernel=4)


@pytest.mark.skipif(not timm.list_models("dlarepro_dla34"), reason="dlarepro_dla34 not registered")
def test_parsenet_on_a_tiny_dla34():
    model = create_parsenet("dlarepro_dla34", num_classes=3, channels=(4, 8, 8, 16, 16, 32)).eval()
    assert model.head.in_channels == 32
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3, 64, 64)
