"""Learnable resizing (DynOPool, Shape Adaptor): sizes, gradients, MACs, surgery, optimiser groups."""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dla_repro.models.resizing import (
    ALPHA_PATTERN,
    DynOPool,
    ShapeAdaptor,
    Subsample2d,
    WithGMACsLoss,
    alpha_param_groups,
    differentiable_macs,
    replace_resizing,
    resizing_groups,
    resizing_modules,
    resizing_parameters,
    shape_adaptor_count,
    shape_adaptor_init_alpha,
    shape_adaptor_init_alphas,
    shape_adaptor_positions,
    shape_adaptor_sizes,
)


def set_scale(module: DynOPool, r_h: float, r_w: float) -> None:
    """Set ``alpha`` so that ``module.scale() == (r_h, r_w)``."""
    lo, hi = module.scale_range
    with torch.no_grad():
        for i, r in enumerate((r_h, r_w)):
            p = (r - lo) / (hi - lo)
            module.alpha[i] = math.log(p / (1 - p))


def tiny_vgg(pool=lambda: nn.MaxPool2d(2, 2)) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), pool(),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), pool(),
        nn.Conv2d(16, 16, 3, padding=1, groups=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5),
    )


def flop_counter_macs(model: nn.Module, x: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return counter.get_total_flops() // 2


# ------------------------------------------------------------------------- DynOPool
@pytest.mark.parametrize("size,scale", [((32, 32), (0.5, 0.5)), ((13, 20), (0.6, 0.3)), ((9, 7), (0.75, 0.9))])
def test_dynopool_output_size_is_the_rounded_scaled_input(size, scale):
    m = DynOPool(init_scale=scale)
    y = m(torch.randn(2, 3, *size))
    r = m.scale().tolist()
    expected = tuple(max(1, math.ceil(ri * s - 0.5 - 1e-4)) for ri, s in zip(r, size))
    assert y.shape == (2, 3, *expected)
    assert all(abs(e - ri * s) <= 0.5 + 1e-4 for e, ri, s in zip(expected, r, size))


def test_dynopool_scale_is_clamped_and_output_never_below_one_pixel():
    m = DynOPool(scale_range=(0.2, 0.9))
    with torch.no_grad():
        m.alpha.fill_(-1e4)
    assert m.scale().tolist() == pytest.approx([0.2, 0.2])
    assert m(torch.randn(1, 2, 2, 1)).shape == (1, 2, 1, 1)  # 0.2·2 rounds to 0: kept at 1
    out = m(torch.randn(1, 2, 40, 40))
    assert out.shape == (1, 2, 8, 8) and torch.isfinite(out).all()
    with torch.no_grad():
        m.alpha.fill_(1e4)
    assert m.scale().tolist() == pytest.approx([0.9, 0.9])
    assert m(torch.randn(1, 2, 40, 40)).shape == (1, 2, 36, 36)
    with pytest.raises(ValueError, match="inside"):
        DynOPool(init_scale=0.95, scale_range=(0.2, 0.9))


@pytest.mark.parametrize("reduce", ["max", "mean"])
def test_dynopool_gradient_to_alpha_matches_central_differences_float64(reduce):
    torch.manual_seed(0)
    m = DynOPool(reduce=reduce).double()
    set_scale(m, 0.62, 0.71)  # 13·0.62 = 8.06, 11·0.71 = 7.81: far from a rounding tie
    x = torch.randn(2, 3, 13, 11, dtype=torch.float64)
    g = torch.randn(2, 3, 8, 8, dtype=torch.float64)

    def loss() -> torch.Tensor:
        y = m(x)
        assert y.shape == g.shape  # the perturbation never changes the rounded size
        return (y * g).sum()

    loss().backward()
    analytic = m.alpha.grad.clone()
    assert analytic.abs().min() > 1e-3  # the gradient does reach both α
    eps = 1e-6
    numeric = torch.zeros(2, dtype=torch.float64)
    with torch.no_grad():
        for i in range(2):
            m.alpha[i] += eps
            up = loss()
            m.alpha[i] -= 2 * eps
            down = loss()
            m.alpha[i] += eps
            numeric[i] = (up - down) / (2 * eps)
    torch.testing.assert_close(analytic, numeric, rtol=1e-6, atol=1e-8)


def test_dynopool_at_one_half_vs_max_pool():
    """Measured: on even sides r = 1/2 is a 2×2 max-pool up to coordinate rounding; on odd sides it is not."""
    torch.manual_seed(0)
    m = DynOPool()  # default: α for r = 1/2 stored in float32
    x = torch.randn(2, 3, 32, 24)
    err32 = (m(x) - F.max_pool2d(x, 2)).abs().max().item()
    assert 0 < err32 < 1e-4, err32  # not bit-exact: r = 0.49999997, coordinates drift by ~1e-6 px

    m64 = DynOPool().double()
    with torch.no_grad():
        m64.alpha.fill_(math.log(3 / 4))  # logit((0.5 − 0.125)/0.875) in double precision
    x64 = x.double()
    err64 = (m64(x64) - F.max_pool2d(x64, 2)).abs().max().item()
    assert err64 < 1e-12, err64

    odd = torch.randn(2, 3, 33, 31)
    y, p = m(odd), F.max_pool2d(odd, 2)
    assert y.shape == p.shape == (2, 3, 16, 15)  # the sizes agree (ties round down) ...
    assert (y - p).abs().max() > 0.1  # ... the values do not: queries fall between pixels
    # the 16 rows of spacing 2 are centred on the 33: queries at rows 0.5, 1.5, …, read two-row means
    means = 0.5 * (odd[:, :, :-1] + odd[:, :, 1:])  # row k: the value at row k + 0.5
    cols = 0.5 * (means[..., :-1] + means[..., 1:])  # and at column k + 0.5 (31 → 15 cells also centred)
    torch.testing.assert_close(y, F.max_pool2d(cols, 2), atol=1e-4, rtol=0)


def test_dynopool_mean_of_four_queries_at_one_half_is_average_pool():
    torch.manual_seed(1)
    m = DynOPool(reduce="mean")
    x = torch.randn(1, 2, 16, 16)
    torch.testing.assert_close(m(x), F.avg_pool2d(x, 2), atol=1e-4, rtol=0)


# --------------------------------------------------------------------- Shape Adaptor
def test_shape_adaptor_initialisation_gives_the_official_sizes():
    alphas = shape_adaptor_init_alphas(32)  # count from the heuristic: int(log2(32/2)) = 4
    assert len(alphas) == 4 and alphas[0] == pytest.approx(-0.346, abs=1e-3)  # vgg16_cifar_toy.py's value
    assert shape_adaptor_sizes(32, alphas) == [32, 22, 15, 10, 7]
    # the same chain through real modules
    chain = nn.Sequential(*[ShapeAdaptor(alpha=a) for a in alphas])
    x, sizes = torch.randn(1, 2, 32, 32), [32]
    for m in chain:
        x = m(x)
        assert x.shape[-1] == x.shape[-2]
        sizes.append(x.shape[-1])
    assert sizes == [32, 22, 15, 10, 7]
    # input · s^n ≈ 8 before flooring, for another size too
    a = shape_adaptor_init_alpha(224, 6)
    s = 0.5 + 0.5 / (1 + math.exp(-a))
    assert 224 * s**6 == pytest.approx(8, rel=1e-3)
    # unreachable target: the official log(eps)
    assert shape_adaptor_init_alpha(256, 2, output_size=8) == pytest.approx(math.log(1e-4))


def test_shape_adaptor_forward_is_the_official_mix_and_alpha_learns_only_through_it():
    torch.manual_seed(0)
    m = ShapeAdaptor(alpha=0.3)
    x = torch.randn(2, 3, 20, 20, requires_grad=True)
    y = m(x)
    sig = torch.sigmoid(torch.tensor(0.3)).item()
    side = int(20 * (0.5 + 0.5 * sig))
    down = F.interpolate(F.max_pool2d(x, 2), size=side, mode="bilinear", align_corners=True)
    same = F.interpolate(x, size=side, mode="bilinear", align_corners=True)
    torch.testing.assert_close(y, (1 - sig) * down + sig * same)

    g = torch.randn_like(y)
    (y * g).sum().backward()
    expected = sig * (1 - sig) * (g * (same - down)).sum()
    torch.testing.assert_close(m.alpha.grad, expected.detach())

    residual = ShapeAdaptor(alpha=0.3, residual=True)
    torch.testing.assert_close(residual(x), 2 * y)
    shortcut = torch.randn(2, 3, 20, 20)  # ResNet form: down(x) mixed with the residual branch
    torch.testing.assert_close(residual(x, shortcut), 2 * ((1 - sig) * down + sig * F.interpolate(
        shortcut, size=side, mode="bilinear", align_corners=True)))


def test_shape_adaptor_count_and_uniform_positions():
    assert [shape_adaptor_count(s) for s in (32, 64, 224)] == [4, 5, 6]
    assert shape_adaptor_positions(13, 4) == [0, 3, 6, 9]  # VGG-16: none after the last conv
    for n_layers, n in [(13, 5), (16, 6), (8, 7)]:
        pos = shape_adaptor_positions(n_layers, n)
        assert len(pos) == n and pos == sorted(set(pos)) and pos[0] == 0 and pos[-1] < n_layers - 1
    with pytest.raises(ValueError):
        shape_adaptor_positions(4, 4)


@pytest.mark.parametrize("make", [lambda: DynOPool(init_scale=(0.6, 0.45)), lambda: ShapeAdaptor(alpha=0.4)])
def test_no_hidden_state_output_depends_only_on_the_input(make):
    torch.manual_seed(0)
    module = make()
    fresh_a, fresh_b = copy.deepcopy(module), copy.deepcopy(module)
    a, b = torch.randn(1, 2, 32, 32), torch.randn(1, 2, 24, 18)
    first = [module(a), module(b), module(a)]
    again = [module(b), module(a)]
    torch.testing.assert_close(first[0], fresh_a(a), rtol=0, atol=0)
    torch.testing.assert_close(first[1], fresh_b(b), rtol=0, atol=0)
    torch.testing.assert_close(first[2], first[0], rtol=0, atol=0)
    torch.testing.assert_close(again[0], first[1], rtol=0, atol=0)
    torch.testing.assert_close(again[1], first[0], rtol=0, atol=0)
    assert first[0].shape != first[1].shape


# ---------------------------------------------------------------------- MACs and loss
@pytest.mark.parametrize("kind", ["dynopool", "shape_adaptor"])
def test_differentiable_macs_equals_flop_counter_and_has_gradient(kind):
    torch.manual_seed(0)
    model = replace_resizing(tiny_vgg(), kind)
    mods = resizing_modules(model)
    if kind == "dynopool":
        set_scale(mods[0], 0.62, 0.55)
        set_scale(mods[1], 0.7, 0.48)
    x = torch.randn(1, 3, 29, 26)
    macs = differentiable_macs(model, (3, 29, 26))
    assert macs.dtype == torch.float64 and macs.item() == flop_counter_macs(model, x)
    macs.backward()
    grads = [m.alpha.grad for m in mods]
    assert all(g is not None and (g > 0).all() for g in grads)  # a larger scale costs more

    # ∂MACs/∂r_j = Σ_{convs after module j} MACs_conv / r_j, per axis (the chain assumption)
    with torch.no_grad():
        into_second_conv = model[:3](x)
    convs_after_first = flop_counter_macs(model[3:], into_second_conv) - 16 * 5  # minus the linear layer
    r = mods[0].scale()
    if kind == "dynopool":  # one α per axis: the row α moves r_h only
        expected = convs_after_first / r[0] * torch.autograd.grad(r[0], mods[0].alpha)[0][0]
        got = grads[0][0]
    else:  # one α, the same s on both axes
        expected = 2 * convs_after_first / r[0] * torch.autograd.grad(r[0], mods[0].alpha)[0]
        got = grads[0]
    torch.testing.assert_close(got.double(), expected.double(), rtol=1e-5, atol=0)


def test_differentiable_macs_follows_a_change_of_rounded_size():
    model = replace_resizing(tiny_vgg(), "dynopool")
    before = differentiable_macs(model, (3, 32, 32)).item()
    for m in resizing_modules(model):
        set_scale(m, 0.8, 0.8)
    after = differentiable_macs(model, (3, 32, 32)).item()
    assert after > before and after == flop_counter_macs(model, torch.zeros(1, 3, 32, 32))


def test_gmacs_loss_adds_lambda_times_gmacs_and_follows_the_task_contract():
    from dla_repro.engine.tasks import ClassificationTask

    torch.manual_seed(0)
    model = replace_resizing(tiny_vgg(), "dynopool")
    task = WithGMACsLoss(ClassificationTask(), input_size=(3, 16, 16), gmacs_weight=50.0)
    x, target = torch.randn(4, 3, 16, 16), torch.randint(0, 5, (4,))
    out = model(x)
    base = F.cross_entropy(out, target)
    loss = task.loss(out, target, model=model)
    gmacs = differentiable_macs(model, (3, 16, 16)).item() / 1e9
    assert loss.item() == pytest.approx(base.item() + 50.0 * gmacs, rel=1e-6)
    loss.backward()
    with_term = [m.alpha.grad.clone() for m in resizing_modules(model)]
    model.zero_grad()
    WithGMACsLoss(ClassificationTask(), (3, 16, 16), gmacs_weight=0.0).loss(model(x), target, model=model).backward()
    without = [m.alpha.grad for m in resizing_modules(model)]
    assert all((a - b > 0).all() for a, b in zip(with_term, without))  # the term pushes every r down
    assert model.training  # the sizing pass left the mode alone
    assert (task.monitor, task.mode) == ("top1", "max") and task.params()["gmacs_weight"] == 50.0
    evaluator = task.metrics()
    evaluator.update(out, target)
    assert "top1" in evaluator.compute()
    with pytest.raises(ValueError, match="model"):
        task.loss(out, target)
    clone = pickle.loads(pickle.dumps(task))  # a sweep hands its task to worker processes by pickling
    assert clone.loss(out, target, model=model).item() == pytest.approx(loss.item(), rel=1e-6)


# -------------------------------------------------------------------------- surgery
def test_replace_resizing_swaps_the_pools_and_keeps_the_shapes_at_init():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    reference = tiny_vgg()
    model = replace_resizing(copy.deepcopy(reference), "dynopool")
    assert len(resizing_modules(model)) == 2 and not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert model[:6](x).shape == reference[:6](x).shape == (2, 16, 8, 8)
    assert model(x).shape == (2, 5)

    sa = replace_resizing(copy.deepcopy(reference), "shape_adaptor", input_size=32, output_size=8)
    adaptors = resizing_modules(sa)
    assert len(adaptors) == 2 and all(isinstance(m.down, nn.MaxPool2d) for m in adaptors)
    assert adaptors[0].alpha.item() == pytest.approx(shape_adaptor_init_alpha(32, 2, 8))
    assert sa[:6](x).shape[-1] == shape_adaptor_sizes(32, [a.alpha.item() for a in adaptors])[-1] == 8

    with pytest.raises(ValueError, match="kind"):
        replace_resizing(tiny_vgg(), "pool")


def test_replace_resizing_strided_convs_only_when_asked():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 1))
    assert len(resizing_modules(replace_resizing(copy.deepcopy(net), "dynopool"))) == 1
    both = replace_resizing(copy.deepcopy(net), "shape_adaptor", strided_convs=True)
    assert len(resizing_modules(both)) == 2
    conv_sa = both[0][1]
    assert both[0][0].stride == (1, 1) and isinstance(conv_sa.down, Subsample2d)
    # the down branch of the converted conv is the original strided conv
    x = torch.randn(1, 3, 15, 15)
    torch.testing.assert_close(conv_sa.down(both[0][0](x)), net[0](x))
    assert both(x).shape[:2] == (1, 4)


def test_replace_resizing_on_timm_vgg16_bn():
    """timm's VGG-16-BN (138 M parameters, ~1.5 s to build here): its five max-pools become DynOPool."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vgg16_bn", pretrained=False, num_classes=10)
    pools = sum(isinstance(m, nn.MaxPool2d) for m in model.modules())
    replace_resizing(model, "dynopool")
    assert pools == 5 and len(resizing_modules(model)) == 5
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    model.eval()
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 3, 32, 32)).shape == (1, 512, 1, 1)


# ------------------------------------------------------------------ optimiser groups
def test_alpha_parameters_get_their_own_group_without_weight_decay():
    from dla_repro.engine.optim import param_groups

    model = replace_resizing(tiny_vgg(), "dynopool")
    groups = param_groups(model, alpha_param_groups(lr_scale=10.0), weight_decay=5e-4)
    alpha_groups = [g for g in groups if g.get("group") == ALPHA_PATTERN]
    assert len(alpha_groups) == 1
    (g,) = alpha_groups
    assert g["weight_decay"] == 0.0 and g["lr_scale"] == 10.0
    assert {id(p) for p in g["params"]} == {id(p) for p in resizing_parameters(model)}
    others = {id(p) for grp in groups if grp is not g for p in grp["params"]}
    assert not others & {id(p) for p in g["params"]}
    assert len(others) + len(g["params"]) == len(list(model.parameters()))


# ------------------------------------------------------------- tied stages (merging branches)
def _set_group(group: list[nn.Module], kind: str) -> None:
    """Move a group's (shared) α away from its initial value: r = 0.6 for DynOPool, α = 1 (s ≈ 0.866) for SA."""
    if kind == "dynopool":
        set_scale(group[0], 0.6, 0.6)
    else:
        with torch.no_grad():
            group[0].alpha.fill_(1.0)


def _chain_side(groups: list[list[nn.Module]], side: int) -> int:
    for g in groups:
        side = g[0].output_size(side, side)[0]
    return side


def _resnet18():
    import timm

    # timm's resnet18, narrowed (stem 8, stages 8-64 wide: same layout, a CPU-sized test)
    return timm.create_model("resnet18", pretrained=False, num_classes=3, stem_width=8, channels=(8, 16, 32, 64))


def _tiny_dla34():
    import timm

    import dla_repro  # noqa: F401  (registers dlarepro_*)

    return timm.create_model("dlarepro_dla34", pretrained=False, num_classes=5, channels=(8, 16, 32, 64, 128, 256))


def _stages(model: nn.Module) -> int:
    """Down-sampling stages of a timm model: log2 of its last feature level's reduction (5 for both nets here)."""
    return int(math.log2(model.feature_info[-1]["reduction"]))


@pytest.mark.parametrize("kind", ["dynopool", "shape_adaptor"])
@pytest.mark.parametrize("build", [_resnet18, _tiny_dla34], ids=["resnet18", "dla34_tiny"])
def test_tied_stages_keep_merging_branches_in_size_untied_ones_do_not(kind, build):
    """ResNet's strided conv + strided shortcut, DLA's max-pooled bottom + strided first block: one α per stage."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    model = replace_resizing(build(), kind, strided_convs=True, input_size=32).eval()
    groups = resizing_groups(model)
    assert len(groups) == _stages(model) == 5
    assert max(len(g) for g in groups) == 2  # the two branches of every stage after the stem
    assert all(m.alpha is g[0].alpha for g in groups for m in g)
    if kind == "shape_adaptor":  # the official init counts stages, not modules
        assert groups[0][0].alpha.item() == pytest.approx(shape_adaptor_init_alpha(32, 5, 8))
    with torch.no_grad():
        assert model.forward_features(x).shape[-1] == _chain_side(groups, 32) == (1 if kind == "dynopool" else 6)  # SA: 32 → 24 → 18 → 13 → 9 → 6
        for g in groups:
            _set_group(g, kind)
        side = _chain_side(groups, 32)
        assert side == (2 if kind == "dynopool" else 13)  # 32·0.6⁵ ≈ 2.5; 32 → 27 → 23 → 19 → 16 → 13
        assert model.forward_features(x).shape[-2:] == (side, side)
        assert model(x).shape == (2, model.num_classes)

    untied = replace_resizing(build(), kind, strided_convs=True, input_size=32, tie=None).eval()
    # untied, every target is replaced -- DLA-34's too: the unused ``downsample`` of the level-2 sub-trees of
    # stages 3 and 4 (their parent hands them ``bottom``), which tying leaves as max-pools (they never run)
    assert len(resizing_groups(untied)) == len(resizing_modules(untied)) == (8 if build is _resnet18 else 11)
    left = [n for n, m in model.named_modules() if isinstance(m, nn.MaxPool2d) and n.endswith("downsample")]
    assert left == ([] if build is _resnet18 else ["level3.tree1.downsample", "level4.tree1.downsample"])
    heads = _first_of_each_input_size(untied)
    assert len(heads) == 5
    with torch.no_grad():
        assert untied(x).shape == (2, untied.num_classes)  # at initialisation the branches agree ...
        for m in heads:  # ... the same perturbation, on one branch of every stage: they no longer do
            _set_group([m], kind)
        with pytest.raises(RuntimeError, match="[Ss]ize"):
            untied(x)


def _first_of_each_input_size(model: nn.Module) -> list[nn.Module]:
    """The first resizing module to run at every input size (one per stage), by one forward pass on 32 px."""
    seen: dict[tuple, nn.Module] = {}

    def record(module, args):
        seen.setdefault(tuple(args[0].shape[-2:]), module)

    handles = [m.register_forward_pre_hook(record) for m in resizing_modules(model)]
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    for h in handles:
        h.remove()
    return list(seen.values())


def test_a_plain_chain_gets_one_alpha_per_layer_either_way():
    """VGG's pools see different sizes: tying changes nothing (the same model as ``tie=None``)."""
    torch.manual_seed(0)
    reference = tiny_vgg()
    for kind in ("dynopool", "shape_adaptor"):
        tied = replace_resizing(copy.deepcopy(reference), kind)
        untied = replace_resizing(copy.deepcopy(reference), kind, tie=None)
        assert [len(g) for g in resizing_groups(tied)] == [1, 1]
        assert tied.state_dict().keys() == untied.state_dict().keys()
        for k, v in tied.state_dict().items():
            torch.testing.assert_close(v, untied.state_dict()[k], rtol=0, atol=0)
    with pytest.raises(ValueError, match="tie"):
        replace_resizing(tiny_vgg(), tie="stage")


def test_fixed_strided_convs_beside_learned_pools_are_warned_about():
    with pytest.warns(UserWarning, match="strided_convs=True"):
        replace_resizing(_tiny_dla34(), "dynopool")  # DLA's bottom pool beside its strided first block


@pytest.mark.parametrize("kind", ["dynopool", "shape_adaptor"])
def test_shared_alpha_counted_once_in_parameters_and_optimiser_group_and_state_dict_round_trips(kind, tmp_path):
    from dla_repro.engine.optim import param_groups

    torch.manual_seed(0)
    model = replace_resizing(_resnet18(), kind, strided_convs=True, input_size=32)
    for g in resizing_groups(model):
        _set_group(g, kind)
    alphas = list(resizing_parameters(model))
    assert len(alphas) == 5 and len({id(a) for a in alphas}) == 5  # one per stage, not one per module (8)
    named = [n for n, _ in model.named_parameters() if n.endswith(".alpha")]
    assert len(named) == 5 and "layer2.0.conv1.1.alpha" in named and "layer2.0.downsample.0.1.alpha" not in named
    assert len(list(model.parameters())) == len({id(p) for p in model.parameters()})

    groups = param_groups(model, alpha_param_groups(lr_scale=10.0), weight_decay=5e-4)
    (alpha_group,) = [g for g in groups if g.get("group") == ALPHA_PATTERN]
    assert [id(p) for p in alpha_group["params"]] == [id(a) for a in alphas]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    # one optimiser step moves the shared α once, and every branch with it
    opt = torch.optim.SGD([{"params": alpha_group["params"], "lr": 0.5}])
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    l2 = model.layer2[0]
    assert l2.conv1[1].alpha is l2.downsample[0][1].alpha

    # the state dict stores the shared α under both names; a fresh tied model loads it back, sharing intact
    state = model.state_dict()
    torch.testing.assert_close(state["layer2.0.conv1.1.alpha"], state["layer2.0.downsample.0.1.alpha"])
    torch.save(state, tmp_path / "m.pt")
    fresh = replace_resizing(_resnet18(), kind, strided_convs=True, input_size=32)
    fresh.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    assert fresh.layer2[0].conv1[1].alpha is fresh.layer2[0].downsample[0][1].alpha
    model.eval(), fresh.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)
    # and a deep copy keeps the sharing
    clone = copy.deepcopy(model)
    assert clone.layer2[0].conv1[1].alpha is clone.layer2[0].downsample[0][1].alpha


class _TwoBranches(nn.Module):
    """x → (max-pool | strided conv) → sum → conv: the smallest merge of two down-sampling branches."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.strided = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.head = nn.Conv2d(4, 6, 3, padding=1)

    def forward(self, x):
        x = self.stem(x)
        return self.head(self.pool(x) + self.strided(x))


@pytest.mark.parametrize("kind", ["dynopool", "shape_adaptor"])
def test_differentiable_macs_counts_a_tied_stage_once(kind):
    """The conv after the merge sees H·W ∝ r² of the one stage, not of two stages: ∂MACs/∂r = 2·MACs/r; the strided
    branch's conv, made stride 1, runs after the pool branch was resized but at the input size: no gradient."""
    torch.manual_seed(0)
    model = replace_resizing(_TwoBranches(), kind, strided_convs=True, input_size=16)
    (group,) = resizing_groups(model)
    assert len(group) == 2
    if kind == "dynopool":
        set_scale(group[0], 0.6, 0.6)  # both axes the same r: one number to compare
    x = torch.zeros(1, 3, 16, 16)
    macs = differentiable_macs(model, (3, 16, 16))
    assert macs.item() == flop_counter_macs(model, x)
    macs.backward()
    with torch.no_grad():
        side = group[0].output_size(16, 16)
    head = side[0] * side[1] * 6 * 4 * 9
    r = group[0].scale()
    dr = torch.autograd.grad(r[0], group[0].alpha)[0]
    dr = dr[0] if kind == "dynopool" else dr
    # DynOPool: one α per axis, each moves one factor of H·W; Shape Adaptor: one α moves both
    expected = head / r[0] * dr if kind == "dynopool" else 2 * head / r[0] * dr
    got = group[0].alpha.grad[0] if kind == "dynopool" else group[0].alpha.grad
    torch.testing.assert_close(got.double(), expected.double(), rtol=1e-5, atol=0)


def test_learned_shapes_reports_a_tied_stage_per_module_and_skips_layers_that_never_run():
    from dla_repro.experiments.dynopool.resizing import learned_shapes, resizing_layers

    model = replace_resizing(_tiny_dla34(), "dynopool", strided_convs=True, input_size=32)
    for g in resizing_groups(model):
        _set_group(g, "dynopool")
    shapes = learned_shapes(model, 32)
    layers = resizing_layers(model)
    assert len(layers) == 11 and len(shapes) == 9  # the two unused sub-tree pools have no row
    assert set(shapes["kind"]) == {"DynOPool"} and shapes["layer"].max() == 10
    assert shapes["r_h"].tolist() == pytest.approx([0.6] * 9)
    # the two branches of a stage: one row each, the same input and output size
    per_stage = shapes.groupby(["in_h", "in_w"])[["h", "w"]].nunique()
    assert len(per_stage) == 5 and (per_stage == 1).all().all()


def test_alpha_every_k_updates_moves_the_scales_only_on_those_updates(tmp_path):
    """Shape Adaptor's schedule (``alpha_param_groups(every=k)``): through ``fit``, three updates with ``every=3``
    leave every α where one update leaves it (both move it at update 0 only, from the same weights and batch),
    while the other parameters keep training; with ``every=1`` the α move on."""
    from torch.utils.data import TensorDataset

    from dla_repro.engine import TrainConfig, fit

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(48, 3, 16, 16, generator=g), torch.randint(0, 5, (48,), generator=g)
    data = (TensorDataset(x[:32], y[:32]), TensorDataset(x[32:], y[32:]))

    def trained(iterations: int, every: int) -> nn.Module:
        torch.manual_seed(0)
        model = replace_resizing(tiny_vgg(), "dynopool")
        cfg = TrainConfig(iterations=iterations, batch_size=16, lr=0.01, schedule="constant", progress=False,
                          param_groups=alpha_param_groups(lr_scale=10.0, every=every),
                          ckpt_dir=str(tmp_path / f"{iterations}-{every}"))
        fit(model, data, cfg, run_name="every")
        return model

    one, every3, every1 = trained(1, 3), trained(3, 3), trained(3, 1)
    alphas = lambda m: torch.cat([p.detach().flatten() for p in resizing_parameters(m)])  # noqa: E731
    start = alphas(replace_resizing(tiny_vgg(), "dynopool"))
    assert not torch.equal(alphas(one), start)  # update 0 moves them
    torch.testing.assert_close(alphas(every3), alphas(one), rtol=0, atol=0)
    assert not torch.equal(alphas(every1), alphas(one))
    assert not torch.equal(every3[0].weight, one[0].weight)  # the weights trained on updates 1 and 2
    with pytest.raises(ValueError, match="positive integer"):
        TrainConfig(param_groups=alpha_param_groups(every=0))
