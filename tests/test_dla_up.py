"""DLA-Up: bilinear upsampler initialisation, decoder shapes, backbones, gradients, bad arguments; the shallow
skip decoder and the parameter matching of the decoders compared in the claims."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dla_repro.models.aggregation import AggregationNode
from dla_repro.models.backbones import TINY_CHANNELS
from dla_repro.models.dla_up import (
    BilinearConvTranspose2d,
    DLAUp,
    IDAUp,
    SkipDecoder,
    bilinear_kernel,
    bilinear_upsampler,
    closest_width,
    count_params,
    create_dla_up,
    matched_width_mult,
    skip_width,
)
from dla_repro.experiments.dla.tasks import boundary_task

TINY = dict(channels=(8, 16, 32, 64, 128, 256))


def _interior(y: torch.Tensor, s: int) -> torch.Tensor:
    b = s // 2
    return y[..., b : y.shape[-2] - b, b : y.shape[-1] - b] if b else y


@pytest.mark.parametrize("s", [2, 3, 4, 8])
def test_untrained_upsampler_reproduces_constant_and_ramp(s):
    h, w = 5, 7
    up = BilinearConvTranspose2d(2, s)
    const = torch.full((1, 2, h, w), 3.5)
    i = torch.arange(h, dtype=torch.float32).view(h, 1)
    j = torch.arange(w, dtype=torch.float32).view(1, w)
    ramp = (0.7 * i - 1.3 * j + 2.0).expand(1, 2, h, w)
    with torch.no_grad():
        yc, yr = up(const), up(ramp)
    assert yc.shape == (1, 2, s * h, s * w)
    # interior (source coordinate inside the image): the constant, and the ramp at the source coordinates
    assert torch.allclose(_interior(yc, s), torch.full_like(_interior(yc, s), 3.5), atol=1e-6)
    src_i = (torch.arange(s * h, dtype=torch.float64) + 0.5) / s - 0.5
    src_j = (torch.arange(s * w, dtype=torch.float64) + 0.5) / s - 0.5
    expect = (0.7 * src_i.view(-1, 1) - 1.3 * src_j.view(1, -1) + 2.0).float().expand_as(yr)
    assert torch.allclose(_interior(yr, s), _interior(expect, s), atol=1e-5)
    # interior equals F.interpolate for any input
    x = torch.randn(1, 2, h, w)
    ref = F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
    with torch.no_grad():
        assert torch.allclose(_interior(up(x), s), _interior(ref, s), atol=1e-5)
    # zero border: the first ⌊s/2⌋ rows see a missing (zero) neighbour
    if s > 1:
        assert yc[0, 0, 0, s * w // 2] < 3.5


@pytest.mark.parametrize("s", [2, 3, 4])
def test_replicate_border_is_exact_everywhere(s):
    up = BilinearConvTranspose2d(1, s, border="replicate")
    x = torch.randn(2, 1, 4, 6)
    with torch.no_grad():
        y = up(x)
        yc = up(torch.ones(1, 1, 4, 6))
    assert torch.allclose(y, F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False), atol=1e-5)
    assert torch.allclose(yc, torch.ones_like(yc), atol=1e-6)


def test_bilinear_kernel_values_and_factor_one():
    assert torch.allclose(bilinear_kernel(2)[0], torch.tensor([0.25, 0.75, 0.75, 0.25]) * 0.25)
    assert bilinear_kernel(1).tolist() == [[1.0]]
    assert isinstance(bilinear_upsampler(4, 1), torch.nn.Identity)


def test_upsampler_is_trainable_and_receives_gradients():
    model = create_dla_up("dlarepro_dla34", 3, **TINY)
    ups = [m for m in model.modules() if isinstance(m, BilinearConvTranspose2d)]
    assert ups and all(u.weight.requires_grad for u in ups)
    model(torch.randn(2, 3, 64, 64)).logsumexp(1).mean().backward()
    assert all(u.weight.grad is not None and u.weight.grad.abs().sum() > 0 for u in ups)
    frozen = BilinearConvTranspose2d(3, 2, trainable=False)
    assert not frozen.weight.requires_grad


@pytest.mark.parametrize("decoder", ["ida_up", "skip", "fcn"])
@pytest.mark.parametrize("down_ratio", [2, 4, 8])
def test_output_shapes_tiny_dlarepro(decoder, down_ratio):
    model = create_dla_up("dlarepro_dla34", 5, down_ratio=down_ratio, decoder=decoder, **TINY).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        assert model(x).shape == (2, 5, 64, 96)
        scores = model.forward_scores(x)
    stride = 32 if decoder == "fcn" else down_ratio  # skip predicts at DLA-Up's stride, FCN-32s at the backbone's
    assert scores.shape == (2, 5, 64 // stride, 96 // stride)


def test_any_input_size_is_padded_to_the_backbone_stride():
    model = create_dla_up("dlarepro_dla34", 3, **TINY).eval()
    assert model.stride == 32
    with torch.no_grad():
        assert model(torch.randn(1, 3, 45, 60)).shape == (1, 3, 45, 60)


@pytest.mark.parametrize("down_ratio", [2, 8])
def test_timm_dla34_backbone(down_ratio):
    model = create_dla_up("dla34", 4, down_ratio=down_ratio, pretrained=False).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 4, 64, 64)
        assert model.forward_scores(torch.randn(1, 3, 64, 64)).shape[-1] == 64 // down_ratio


def test_node_kernel_and_width_options():
    k1 = create_dla_up("dlarepro_dla34", 3, node_kernel=1, **TINY)
    k3 = create_dla_up("dlarepro_dla34", 3, node_kernel=3, **TINY)
    kernels = {m.kernel_size for m in k1.decoder.modules() if hasattr(m, "kernel_size") and isinstance(m.kernel_size, int)}
    assert kernels == {1}
    assert sum(p.numel() for p in k3.parameters()) > sum(p.numel() for p in k1.parameters())
    paper = create_dla_up("dlarepro_dla34", 3, width=32, **TINY)
    assert paper.decoder.out_channels == 32
    assert paper(torch.randn(1, 3, 64, 64)).shape == (1, 3, 64, 64)
    assert k3.decoder.out_channels == 16  # official: the width of the stride-2 level


def test_ida_up_merges_deep_to_shallow():
    ida = IDAUp([4, 8, 16], 4, [1, 2, 4])
    out = ida([torch.randn(1, 4, 8, 8), torch.randn(1, 8, 4, 4), torch.randn(1, 16, 2, 2)])
    assert [o.shape for o in out] == [torch.Size([1, 4, 8, 8])] * 2
    up = DLAUp([4, 8, 16, 32], [2, 4, 8, 16])
    assert len(up.idas) == 3
    assert up([torch.randn(1, c, 32 // r, 32 // r) for c, r in zip([4, 8, 16, 32], [2, 4, 8, 16])]).shape == (1, 4, 16, 16)


# ------------------------------------------------------------------ the shallow skip decoder
def test_skip_decoder_projects_every_level_once_and_merges_once():
    chs, strides = [4, 8, 16, 32], [2, 4, 8, 16]
    dec = SkipDecoder(chs, strides, width=6)
    assert dec.factors == [1, 2, 4, 8] and dec.out_channels == 6
    assert len(dec.proj) == 4 and all(p.conv.kernel_size == (1, 1) for p in dec.proj)  # every level, 1×1
    assert isinstance(dec.up[0], torch.nn.Identity)
    assert [u.factor for u in dec.up[1:]] == [2, 4, 8] and all(u.weight.requires_grad for u in dec.up[1:])
    nodes = [m for m in dec.modules() if isinstance(m, AggregationNode)]
    assert len(nodes) == 1 and nodes[0].in_chs == 4 * 6 and nodes[0].kernel_size == 3  # one merge, 3×3
    y = dec([torch.randn(1, c, 32 // r, 32 // r) for c, r in zip(chs, strides)])
    assert y.shape == (1, 6, 16, 16)
    # DLA-Up on the same levels merges through a chain of nodes instead: one per pair within each IDA step
    assert sum(isinstance(m, AggregationNode) for m in DLAUp(chs, strides).modules()) == 3 + 2 + 1


def test_skip_decoder_uses_dla_ups_upsampler_and_stride():
    model = create_dla_up("dlarepro_dla34", 3, decoder="skip", **TINY)
    ups = [m for m in model.decoder.modules() if isinstance(m, BilinearConvTranspose2d)]
    assert [u.factor for u in ups] == [2, 4, 8, 16]  # levels at strides 4..32 to stride 2
    assert model.decoder_name == "skip" and model.down_ratio == 2
    model(torch.randn(2, 3, 64, 64)).logsumexp(1).mean().backward()
    assert all(u.weight.grad is not None for u in ups)


def _levels(channels):
    """The levels DLA-Up reads at down_ratio 2: strides 2..32 of a six-level DLA."""
    return list(channels[1:]), [2, 4, 8, 16, 32]


@pytest.mark.parametrize("name, channels", [("tiny", TINY_CHANNELS), ("dla34", (16, 32, 64, 128, 256, 512))])
@pytest.mark.parametrize("num_classes", [2, 11])
def test_skip_width_matches_dla_up_parameters_within_5_percent(name, channels, num_classes):
    chs, strides = _levels(channels)
    w = skip_width(chs, strides, num_classes)
    skip, ida = SkipDecoder(chs, strides, w), DLAUp(chs, strides)
    head = {k: count_params(d) + (d.out_channels + 1) * num_classes for k, d in (("skip", skip), ("ida", ida))}
    assert abs(head["skip"] - head["ida"]) / head["ida"] < 0.01  # decoder + classifier alone: within 1 %
    # the nearest integer width: one more or one less channel is further away
    for other in (w - 1, w + 1):
        d = SkipDecoder(chs, strides, other)
        assert abs(count_params(d) + (other + 1) * num_classes - head["ida"]) >= abs(head["skip"] - head["ida"])


def test_skip_and_widened_k1_segmenters_match_dla_up_on_the_tiny_backbone():
    n = {name: count_params(create_dla_up("dlarepro_dla34", 11, tiny=True, **kw)) for name, kw in
         {"ida_up": {}, "skip": dict(decoder="skip"), "k1": dict(node_kernel=1, match_params=True),
          "k1_plain": dict(node_kernel=1)}.items()}
    for arm in ("skip", "k1"):
        assert abs(n[arm] - n["ida_up"]) / n["ida_up"] <= 0.05, (arm, n)
    assert (n["ida_up"] - n["k1_plain"]) / n["ida_up"] > 0.05  # without widening the 1×1 arm is not matched


def test_matched_width_mult_keeps_dla_ups_layout():
    chs, strides = _levels(TINY_CHANNELS)
    mult = matched_width_mult(chs, strides, 11, node_kernel=1)
    k1, k3 = DLAUp(chs, strides, 1, width_mult=mult), DLAUp(chs, strides, 3)
    assert k3.widths == [128, 64, 32, 16]
    assert mult > 1 and [w / k1.widths[-1] for w in k1.widths] == [8, 4, 2, 1]  # every step scaled alike
    assert abs(count_params(k1) - count_params(k3)) / count_params(k3) < 0.02
    assert matched_width_mult(chs, strides, 11, node_kernel=3) == 1.0  # the reference matches itself


def test_closest_width_of_a_monotone_count():
    assert closest_width(lambda w: w * w, 50) == 7  # 49 is closer than 64
    assert closest_width(lambda w: w * w, 57) == 8  # 64 is closer than 49
    assert closest_width(lambda w: 10 * w, 5) == 1
    assert closest_width(lambda w: 3 * w, 3000) == 1000
    with pytest.raises(ValueError, match="lo"):
        closest_width(lambda w: w, 5, lo=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(decoder="skip", match_params=True), "apply to decoder='ida_up'"),
        (dict(decoder="fcn", width_mult=2.0), "apply to decoder='ida_up'"),
        (dict(match_params=True, width_mult=2.0), "do not pass both"),
        (dict(width_mult=0.0), "width_mult"),
        (dict(decoder="skip", width=0), "width"),
    ],
)
def test_invalid_width_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_dla_up("dlarepro_dla34", 3, **kwargs, **TINY)


def test_boundary_head_and_task():
    model = create_dla_up("dlarepro_dla34", head="boundary", **TINY)
    assert model.num_classes == 2
    task = boundary_task(10)
    assert task.num_classes == 2 and task.class_weights == [1.0, 10.0]
    logits = model(torch.randn(1, 3, 64, 64))
    loss = task.loss(logits, torch.randint(0, 2, (1, 64, 64)))
    assert torch.isfinite(loss)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_classes=3, decoder="unet"), "decoder"),
        (dict(num_classes=3, head="depth"), "head"),
        (dict(num_classes=3, down_ratio=16), "down_ratio"),
        (dict(num_classes=3, node_kernel=5), "node_kernel"),
        (dict(num_classes=5, head="boundary"), "2 classes"),
        (dict(num_classes=None), "num_classes"),
        (dict(num_classes=0), "num_classes"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_dla_up("dlarepro_dla34", **kwargs, **TINY)


def test_invalid_upsampler_and_backbone():
    with pytest.raises(ValueError, match="factor"):
        BilinearConvTranspose2d(3, 0)
    with pytest.raises(ValueError, match="border"):
        BilinearConvTranspose2d(3, 2, border="reflect")
    with pytest.raises(ValueError, match="feature_info"):
        create_dla_up(torch.nn.Conv2d(3, 3, 1), 3)
    with pytest.raises(ValueError, match="not a level stride"):
        create_dla_up("dlarepro_dla34", 3, down_ratio=4, out_indices=(0, 1, 3, 4, 5), **TINY)
    with pytest.raises(ValueError, match="edge_weight"):
        boundary_task(0)
