"""GALD: GA modules against their equations, LD's two forms, the head (+ FCN baseline), OHEM, the task (CPU, tiny)."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
import torch.nn.functional as F

import dla_repro  # noqa: F401  (registers dlarepro_* in timm)
from dla_repro.engine import OhemSegmentationTask, SegmentationTask, ohem_cross_entropy, ohem_keep_mask
from dla_repro.kernels import ENV_VAR, OPS
from dla_repro.labels import IGNORE_INDEX
from dla_repro.models.gald import (
    CGNL,
    GA_TYPES,
    DownConv,
    GALDBlock,
    GALDHead,
    GlobalAveragePooling,
    NonLocal,
    PyramidPooling,
    _ld_tail_reference,
    build_ga,
    build_gald_segmenter,
)


@pytest.fixture(autouse=True)
def _seeded(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    torch.manual_seed(0)


def _bn(x: torch.Tensor, bn: torch.nn.BatchNorm2d) -> torch.Tensor:
    """Eval-mode batch norm, written out."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return (x - bn.running_mean[:, None, None]) * scale[:, None, None] + bn.bias[:, None, None]


def _conv1x1(x: torch.Tensor, conv: torch.nn.Conv2d) -> torch.Tensor:
    y = torch.einsum("oc,nchw->nohw", conv.weight[:, :, 0, 0], x)
    return y if conv.bias is None else y + conv.bias[:, None, None]


# --------------------------------------------------------------------------- GA modules
@pytest.mark.parametrize("kind", sorted(GA_TYPES))
def test_every_ga_module_keeps_the_shape(kind):
    module = build_ga(kind, 16)
    for size in ((5, 7), (1, 1), (3, 3)):
        x = torch.randn(2, 16, *size)
        assert module(x).shape == x.shape
    assert isinstance(module, GA_TYPES[kind])
    with pytest.raises(ValueError, match="unknown GA"):
        build_ga("aspp", 16)


def test_gap_broadcasts_the_pooled_vector_and_fuses_by_concatenation():
    module = GlobalAveragePooling(4).eval()
    conv = module.project.conv
    with torch.no_grad():  # W = [0 | I]: only the unpooled global vector reaches the output
        conv.weight.zero_()
        conv.weight[:, 4:, 0, 0] = torch.eye(4)
    x = torch.randn(2, 4, 3, 5)
    y = module(x)
    expected = F.relu(x.mean(dim=(2, 3), keepdim=True) / math.sqrt(1 + module.project.bn.eps)).expand_as(x)
    torch.testing.assert_close(y, expected)
    with torch.no_grad():  # general W: ReLU(BN(W_local x + W_global g))
        conv.weight.normal_()
    w = conv.weight[:, :, 0, 0]
    direct = torch.einsum("oc,nchw->nohw", w[:, :4], x) + torch.einsum("oc,nchw->nohw", w[:, 4:], x.mean((2, 3), True))
    torch.testing.assert_close(module(x), F.relu(_bn(direct, module.project.bn)))


def test_psp_pools_on_its_bins_and_concatenates_before_the_input():
    module = PyramidPooling(8, bins=(1, 2, 3, 6)).eval()
    assert [s[1].conv.out_channels for s in module.stages] == [2, 2, 2, 2]  # C / len(bins)
    x = torch.randn(2, 8, 7, 9)
    assert [tuple(s(x).shape[-2:]) for s in module.stages] == [(1, 1), (2, 2), (3, 3), (6, 6)]
    pooled = []
    for b, stage in zip(module.bins, module.stages):
        p = _bn(_conv1x1(F.adaptive_avg_pool2d(x, b), stage[1].conv), stage[1].bn)  # BN, no ReLU
        pooled.append(F.interpolate(p, size=(7, 9), mode="bilinear", align_corners=True))
    bottleneck = module.bottleneck
    expected = F.relu(_bn(F.conv2d(torch.cat(pooled + [x], 1), bottleneck.conv.weight, padding=1), bottleneck.bn))
    torch.testing.assert_close(module(x), expected)


def test_nonlocal_is_softmax_attention_over_positions():
    module = NonLocal(4).eval()
    assert torch.count_nonzero(module.out.bn.weight) == 0  # starts as the identity (Wang et al. §4.1)
    x = torch.randn(2, 4, 3, 2)
    torch.testing.assert_close(module(x), x)
    with torch.no_grad():
        module.out.bn.weight.fill_(1.0)
    theta, phi, g = (_conv1x1(x, c).flatten(2) for c in (module.theta, module.phi, module.g))  # N × C' × hw
    y = torch.zeros_like(g)
    for n in range(2):
        for i in range(6):
            logits = torch.stack([theta[n, :, i] @ phi[n, :, j] for j in range(6)])
            w = torch.exp(logits - logits.max()) / torch.exp(logits - logits.max()).sum()
            y[n, :, i] = sum(w[j] * g[n, :, j] for j in range(6))
    expected = _bn(_conv1x1(y.reshape(2, 2, 3, 2), module.out.conv), module.out.bn) + x
    torch.testing.assert_close(module(x), expected)


def test_cgnl_matches_the_released_dot_product_formula():
    module = CGNL(8, groups=2)  # C' = 4: two groups of two channels
    x = torch.randn(3, 8, 4, 5)
    theta, phi, g = (_conv1x1(x, c) for c in (module.theta, module.phi, module.g))
    a = torch.stack([(phi[:, 2 * k:2 * k + 2] * g[:, 2 * k:2 * k + 2]).sum(dim=(1, 2, 3)) for k in range(2)], 1)
    torch.testing.assert_close(module.aggregate(x), a)
    y = torch.cat([a[:, k, None, None, None] * theta[:, 2 * k:2 * k + 2] for k in range(2)], 1)
    expected = module.gn(F.conv2d(y, module.z.weight, groups=2)) + x
    torch.testing.assert_close(module(x), expected)
    # identity-like weights: θ = φ = g = first half of x, z = identity on those channels → a_k = Σ x_c²
    with torch.no_grad():
        eye = torch.zeros(4, 8, 1, 1)
        eye[torch.arange(4), torch.arange(4)] = 1
        for conv in (module.theta, module.phi, module.g):
            conv.weight.copy_(eye)
        module.z.weight.zero_()
        module.z.weight[torch.arange(0, 8, 2), torch.tensor([0, 1, 0, 1])] = 1  # out 2j ← in j (within its group)
    a = torch.stack([(x[:, 2 * k:2 * k + 2] ** 2).sum(dim=(1, 2, 3)) for k in range(2)], 1)
    torch.testing.assert_close(module.aggregate(x), a)


def test_cgnl_global_aggregate_enters_only_through_its_sign():
    """W_G maps group k to group k and GN normalises each group: |a_k| cancels (exactly at eps = 0)."""
    module = CGNL(32, groups=8)
    x = torch.randn(2, 32, 6, 6)
    a = module.aggregate(x)
    theta = module.theta(x)

    def with_a(values):
        return module.gn(module.z((values[..., None] * theta.reshape(2, 8, -1)).reshape_as(theta))) + x

    torch.testing.assert_close(module(x), with_a(a))
    module.gn.eps = 0.0
    torch.testing.assert_close(module(x), with_a(torch.sign(a)))


# --------------------------------------------------------------------------- down-sampling, GA, LD
def test_down_conv_is_released_on_large_maps_and_pads_only_tiny_ones():
    conv = DownConv(4).eval()
    x = torch.randn(1, 4, 9, 8)
    plain = F.relu(_bn(F.conv2d(x, conv.conv.weight, conv.conv.bias, stride=2, groups=4), conv.bn))
    torch.testing.assert_close(conv(x), plain)
    assert conv(x).shape[-2:] == (4, 3)
    assert conv(torch.randn(1, 4, 1, 2)).shape[-2:] == (1, 1)
    assert conv(torch.randn(1, 4, 3, 3)).shape[-2:] == (1, 1)


@pytest.mark.parametrize("form", ["released", "paper"])
def test_ld_forms_match_their_formulas(form):
    block = GALDBlock(16, "cgnl", ld=True, form=form).eval()
    x = torch.randn(2, 16, 16, 16)
    u = block.ga(x)
    assert u.shape == x.shape
    m = block.ld.mask(u)
    expected = 2 * u + u * m if form == "released" else u * m + x
    out, mask = block(x, return_mask=True)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(mask, m)
    assert mask.shape == x.shape and bool(((mask > 0) & (mask < 1)).all())
    assert block.ld(u).shape[-2:] == (1, 1)  # 16 → 7 → 3 → 1: three stride-2 convs without padding
    logits = block.ld(u)
    up = F.interpolate(logits, size=(16, 16), mode="bilinear", align_corners=True)
    torch.testing.assert_close(_ld_tail_reference(logits, u, x, form), expected)
    torch.testing.assert_close(torch.sigmoid(up), m)


def test_ld_tail_reference_on_a_hand_computed_input():
    logits = torch.tensor([[[[0.0, math.log(3.0)]]]])  # 1×1×1×2 → up to 1×3 (align_corners: ends kept)
    ga = torch.ones(1, 1, 1, 3) * 2
    feature = torch.full((1, 1, 1, 3), 10.0)
    m = torch.sigmoid(torch.tensor([0.0, math.log(3.0) / 2, math.log(3.0)]))  # [0.5, ·, 0.75]
    torch.testing.assert_close(_ld_tail_reference(logits, ga, None, "released")[0, 0, 0], 4 + 2 * m)
    torch.testing.assert_close(_ld_tail_reference(logits, ga, feature, "paper")[0, 0, 0], 2 * m + 10)
    with pytest.raises(ValueError, match="feature"):
        _ld_tail_reference(logits, ga, None, "paper")
    with pytest.raises(ValueError, match="form"):
        _ld_tail_reference(logits, ga, feature, "both")


def test_ga_only_and_ga_plus_ld_are_different_functions():
    torch.manual_seed(1)
    gald_block = GALDBlock(8, "psp", ld=True).eval()
    ga_only = GALDBlock(8, "psp", ld=False).eval()
    ga_only.ga.load_state_dict(gald_block.ga.state_dict())
    assert not any(k.startswith("ld.") for k in ga_only.state_dict())
    x = torch.randn(2, 8, 12, 12)
    u = gald_block.ga(x)
    torch.testing.assert_close(ga_only(x), u)
    assert ga_only(x, return_mask=True)[1] is None
    assert not torch.allclose(gald_block(x), u)
    assert not torch.allclose(GALDBlock(8, "psp", form="paper").eval()(x), gald_block(x))
    with pytest.raises(ValueError, match="form"):
        GALDBlock(8, form="figure")


def test_block_goes_through_the_kernel_op_when_registered(monkeypatch):
    calls = []

    def fake(mask_logits, ga, feature, form):
        calls.append(form)
        return torch.zeros_like(ga)

    block = GALDBlock(8, "gap").eval()
    x = torch.randn(1, 8, 8, 8)
    reference = block(x)
    monkeypatch.setitem(OPS, "gald_ld_tail", fake)
    assert torch.count_nonzero(block(x)) == 0 and calls == ["released"]
    monkeypatch.delitem(OPS, "gald_ld_tail")
    torch.testing.assert_close(block(x), reference)


# --------------------------------------------------------------------------- head, segmenter
def test_head_with_and_without_the_block():
    x = torch.randn(2, 12, 8, 8)
    fcn = GALDHead(12, 3, mid=8, ga=None, ld=False).eval()
    assert isinstance(fcn.block, torch.nn.Identity) and not any(".block" in k or k.startswith("block")
                                                                 for k in fcn.state_dict())
    expected = fcn.classifier(fcn.bottleneck(torch.cat([x, fcn.convb(fcn.conva(x))], 1)))
    torch.testing.assert_close(fcn(x), expected)
    assert fcn.mask(x) is None
    head = GALDHead(12, 3, mid=16, ga="cgnl").eval()
    assert isinstance(head.block, GALDBlock) and head(x).shape == (2, 3, 8, 8)
    assert head.mask(x).shape == (2, 16, 8, 8)
    assert GALDHead(12, 3, mid=16, ga="cgnl", ld=False).mask(x) is None
    with pytest.raises(ValueError, match="FCN baseline"):
        GALDHead(12, 3, mid=8, ga=None)  # ld=True needs a GA


def test_aux_output_in_training_only():
    model = build_gald_segmenter("dlarepro_dla34", 4, mid=16, output_stride=None, tiny=True)
    x = torch.randn(2, 3, 64, 64)
    main, aux = model.train()(x)
    assert main.shape == aux["aux"].shape == (2, 4, 64, 64) and set(aux) == {"aux"}
    assert model.aux_index == -2 and model.aux_head[1].p == 0.1  # Dropout2d(0.1)
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 4, 64, 64)
    no_aux = build_gald_segmenter("dlarepro_dla34", 4, mid=16, aux=False, output_stride=None, tiny=True).train()
    assert isinstance(no_aux(x), torch.Tensor) and not any(k.startswith("aux_head") for k in no_aux.state_dict())


@pytest.mark.parametrize("name,kwargs,size", [
    ("dlarepro_dla34", {"output_stride": None, "tiny": True}, 32),
    ("resnet18", {"output_stride": 8}, 64),
])
def test_backbones_build_and_run(name, kwargs, size):
    model = build_gald_segmenter(name, 5, mid=16, **kwargs)
    x = torch.randn(2, 3, size, size)
    main, aux = model.train()(x)
    assert main.shape == aux["aux"].shape == (2, 5, size, size)
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 5, size, size)


def test_resnet_is_dilated_to_stride_8():
    model = build_gald_segmenter("resnet18", 5, ga=None, ld=False, mid=8)
    levels = model.levels(torch.randn(1, 3, 64, 64))
    assert [lv.shape[-1] for lv in levels[-3:]] == [8, 8, 8] and model.stride == 8
    with pytest.raises(ValueError, match="output_stride"):
        build_gald_segmenter("dlarepro_dla34", 5, mid=8, tiny=True)  # the DLAs do not dilate


def test_released_head_size():
    """The released ResNet head (2048 → 512, 19 classes) has 24,040,979 parameters, counted from the code."""
    head = GALDHead(2048, 19, mid=512)
    assert sum(p.numel() for p in head.parameters()) == 24_040_979


def test_gradients_reach_every_parameter():
    model = build_gald_segmenter("dlarepro_dla34", 3, mid=16, output_stride=None, tiny=True).train()
    x = torch.randn(2, 3, 32, 32)
    target = torch.randint(0, 3, (2, 32, 32))
    OhemSegmentationTask(3, min_kept=500, aux_weights={"aux": 0.4}).loss(model(x), target).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    zero = [n for n, p in model.named_parameters() if torch.count_nonzero(p.grad) == 0]
    assert not zero, zero


# --------------------------------------------------------------------------- OHEM, task
def _two_class_logits(p: torch.Tensor) -> torch.Tensor:
    """Logits whose softmax gives class 0 probability ``p`` (``N×H×W``)."""
    return torch.stack([torch.log(p), torch.log1p(-p)], dim=1)


def _ohem_case():
    p = torch.tensor([[[0.1, 0.5, 0.65, 0.8], [0.9, 0.95, 0.2, 0.99]]])  # 1×2×4, true class 0
    target = torch.zeros(1, 2, 4, dtype=torch.long)
    target[0, 1, 2] = IGNORE_INDEX  # p = 0.2, but ignored: never kept, never counted
    return _two_class_logits(p), target, p


def test_ohem_keeps_exactly_the_pixels_the_rule_names():
    logits, target, p = _ohem_case()
    valid = target != IGNORE_INDEX
    # min_kept 2 ≤ 7 valid: t = max(0.7, 0.5) = 0.7 → 0.1, 0.5, 0.65
    keep = ohem_keep_mask(logits, target, thresh=0.7, min_kept=2)
    assert keep.tolist() == [[[True, True, True, False], [False, False, False, False]]]
    # min_kept 5: the 5th smallest valid p is 0.9 > 0.7 → t = 0.9: 0.1, 0.5, 0.65, 0.8, 0.9
    keep = ohem_keep_mask(logits, target, thresh=0.7, min_kept=5)
    assert keep.tolist() == [[[True, True, True, True], [True, False, False, False]]]
    # min_kept 7 = |V|: t = 0.99 → all valid; 8 > |V|: no mining at all → all valid; 0: no mining either
    for k in (7, 8, 0):
        assert torch.equal(ohem_keep_mask(logits, target, min_kept=k), valid)
    # the loss is the mean -log p over the kept pixels
    loss = ohem_cross_entropy(logits, target, thresh=0.7, min_kept=5)
    torch.testing.assert_close(loss, -torch.log(torch.tensor([0.1, 0.5, 0.65, 0.8, 0.9])).mean())
    torch.testing.assert_close(ohem_cross_entropy(logits, target, min_kept=100_000),
                               F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX))


def test_ohem_keeps_ties_and_matches_a_sort_on_random_inputs():
    logits = _two_class_logits(torch.tensor([[[0.9, 0.8, 0.8, 0.8]]]))
    target = torch.zeros(1, 1, 4, dtype=torch.long)
    assert ohem_keep_mask(logits, target, min_kept=2).sum() == 3  # t = 0.8: the three tied pixels
    torch.manual_seed(3)
    logits = torch.randn(2, 5, 6, 7) * 3
    target = torch.randint(0, 5, (2, 6, 7))
    target[torch.rand(2, 6, 7) < 0.2] = IGNORE_INDEX
    valid = target != IGNORE_INDEX
    prob = torch.softmax(logits, 1).gather(1, target.clamp(max=4)[:, None])[:, 0]
    for k in (1, 10, 40, int(valid.sum())):
        t = max(0.7, float(prob[valid].sort().values[k - 1]))
        assert torch.equal(ohem_keep_mask(logits, target, min_kept=k), valid & (prob <= t))


def test_ohem_upsamples_the_logits_to_the_labels_first():
    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 8, 8))
    up = F.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=True)
    torch.testing.assert_close(ohem_cross_entropy(logits, target, min_kept=20),
                               ohem_cross_entropy(up, target, min_kept=20))


def test_task_total_is_ohem_plus_0_4_plain_ce_on_aux():
    main, target, _ = _ohem_case()
    aux = torch.randn_like(main)
    assert OhemSegmentationTask(2).aux_weights == {}  # the engine's default: no auxiliary output expected
    task = OhemSegmentationTask(2, min_kept=5, aux_weights={"aux": 0.4})  # GALD's weight, set by its experiment
    assert isinstance(task, SegmentationTask)
    expected = ohem_cross_entropy(main, target, min_kept=5) + 0.4 * F.cross_entropy(aux, target,
                                                                                     ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(task.loss((main, {"aux": aux}), target), expected)
    torch.testing.assert_close(task.loss(main, target), ohem_cross_entropy(main, target, min_kept=5))
    params = task.params()
    assert params["name"] == "segmentation_ohem" and params["ohem_thresh"] == 0.7 and params["ohem_min_kept"] == 5
    assert pickle.loads(pickle.dumps(task)).min_kept == 5  # travels to sweep workers
