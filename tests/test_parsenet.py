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
    LastLevel,
    ParseNetHead,
    ParseNetSegmenter,
    create_parsenet,
    global_context,
    late_hidden_channels,
    load_vgg_fc_weights,
    vgg16_fcn,
    vgg_fc_neck,
    without_batchnorm,
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
    """Why the heads are non-linear: with one 1×1 conv each, late is early with its weight split in two."""
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


def _interaction(head: ParseNetHead, x: torch.Tensor) -> torch.Tensor:
    """The mixed second difference of the scores at position (1, 1) in its local feature and the global context.

    ``dl`` changes the local features at (1, 1) but not their mean (it moves them from (3, 3)); ``dg`` changes
    the mean but not (1, 1).  A head whose scores are ``a(local) + b(global)`` gives 0.
    """
    dl = torch.zeros_like(x)
    dl[:, :, 1, 1] += 3.0 * torch.randn(x.shape[:2], dtype=x.dtype)
    dl[:, :, 3, 3] -= dl[:, :, 1, 1]
    dg = torch.zeros_like(x)
    dg[:, :, 4, 0] += 30.0 * torch.randn(x.shape[:2], dtype=x.dtype)
    s = [head(x + a + b)[:, :, 1, 1] for a, b in ((dl, dg), (dl, 0), (0, dg), (0, 0))]
    return (s[0] - s[1] - s[2] + s[3]).abs().max()


@pytest.mark.parametrize("l2norm", [True, False])
def test_nonlinear_heads_make_early_and_late_different_functions(l2norm):
    """Late fusion is additively separable in local and global features for any weights; early fusion through
    an MLP is not -- so no choice of weights makes them one function (with linear heads both are separable)."""
    x = torch.randn(2, 6, 5, 5, dtype=torch.float64)
    heads = {}
    for fusion, hidden in (("early", 16), ("late", 16), ("early", None)):
        torch.manual_seed(0)
        head = ParseNetHead(6, 3, fusion=fusion, l2norm=l2norm, hidden_channels=hidden).double().eval()
        with torch.no_grad():  # weights of a trained scale (N(0, 0.01²) leaves ReLUs nearly linear around 0)
            for m in head.modules():
                if isinstance(m, nn.Conv2d):
                    m.weight.normal_(0, 1.0)
                    m.bias.normal_(0, 1.0)
        heads[(fusion, hidden)] = head
    with torch.no_grad():
        assert _interaction(heads[("early", 16)], x) > 1e-3
        assert _interaction(heads[("late", 16)], x) < 1e-10
        assert _interaction(heads[("early", None)], x) < 1e-10  # linear early: separable too (the old equivalence)
        assert not torch.allclose(heads[("early", 16)](x), heads[("late", 16)](x))


@pytest.mark.parametrize("widths", [64, [32, 64], [512, 4096], [16, 64]])
@pytest.mark.parametrize("classes", [10, 33])
def test_late_hidden_width_matches_early_head_parameters(widths, classes):
    hidden = 64
    early = ParseNetHead(widths, classes, fusion="early", hidden_channels=hidden)
    late = ParseNetHead(widths, classes, fusion="late", hidden_channels=hidden,
                        late_hidden_channels=late_hidden_channels(widths, classes, hidden))
    n_early, n_late = (sum(p.numel() for p in h.parameters()) for h in (early, late))
    assert abs(n_early - n_late) / max(n_early, n_late) < 0.02
    assert late_hidden_channels(widths, classes, 0) == 0


def test_multi_layer_head_fuses_levels_on_the_finest_grid():
    shallow, deep = torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4)
    for fusion in FUSIONS:
        head = ParseNetHead([4, 6], 3, fusion=fusion, l2norm=True, hidden_channels=8).eval()
        assert head([shallow, deep]).shape == (2, 3, 8, 8)
        feats = head.fused_features([shallow, deep])
        assert [tuple(f.shape[1:]) for f in feats] == [(4, 8, 8), (6, 8, 8)] + ([(6, 1, 1)] if fusion != "none" else [])
        assert len(head.fused_names) == len(feats) == len(head.fused_norms)
        torch.testing.assert_close(feats[0], shallow)
        if fusion != "none":
            torch.testing.assert_close(feats[-1], global_context(deep))  # pooled from the deep level itself
        for norm, f in zip(head.fused_norms, feats):  # the L2 layer equalises every fused feature's norm
            torch.testing.assert_close(norm(f).norm(dim=1), torch.full(f.shape[:1] + f.shape[2:], 10.0))
    assert len(ParseNetHead([4, 6], 3, fusion="late").shallow_classifiers) == 1
    assert not ParseNetHead([4, 6], 3, fusion="early").shallow_classifiers
    assert "levels=(4, 6)" in repr(ParseNetHead([4, 6], 3))
    with pytest.raises(ValueError, match="2 levels"):
        ParseNetHead([4, 6], 3)(deep)


def test_multi_layer_segmenter_without_batchnorm():
    model = create_parsenet("dlarepro_dla34", 5, tiny=True, out_indices=(0, 1, 2, 3), feature_index=(2, 3),
                            batchnorm=False, fusion="late", hidden_channels=8)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert model.head.level_channels == (32, 64) and model.feature_index == (2, 3)
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 5, 32, 32) and model.forward_scores(x).shape == (2, 5, 8, 8)  # stride 4
    # without batch norm the features do not depend on the rest of the batch
    model.train()
    torch.testing.assert_close(model(x)[:1], model(x[:1]))
    plain = without_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()))
    assert isinstance(plain[1], nn.Identity)


def test_vgg16_multi_layer_fuses_conv4_3_with_fc7():
    model = vgg16_fcn(num_classes=3, fc_channels=16, fusion="early", l2norm=True, shallow_levels=(3,)).eval()
    assert isinstance(model.neck, LastLevel) and model.head.level_channels == (512, 16)
    assert model.forward_scores(torch.randn(1, 3, 64, 64)).shape == (1, 3, 8, 8)  # conv4_3's stride 8


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
