"""DLA classifiers: timm registry and interface, weight compatibility with timm,
ablation switches, matched families and the checkpoint loader."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import timm
import torch

import dla_repro  # noqa: F401  (registers dlarepro_*)
from dla_repro.models import (
    AGGREGATION_MODES,
    VARIANTS,
    AggregationNode,
    PretrainedWeightsError,
    SequentialStage,
    Tree,
    create_dla,
    load_dla_checkpoint,
    matched_family,
)

TINY = dict(channels=(8, 16, 32, 64, 128, 256), num_classes=5)


def _roots(model):
    return [m for m in model.modules() if isinstance(m, AggregationNode)]


def test_registry_lists_the_ten_variants():
    assert sorted(timm.list_models("dlarepro_dla*")) == sorted(f"dlarepro_{v}" for v in VARIANTS)
    assert len(VARIANTS) == 10


def test_import_is_cheap_and_registers_when_a_submodule_imports_timm_first():
    code = (
        "import sys, dla_repro\n"
        "assert 'timm' not in sys.modules and 'torch' not in sys.modules\n"
        "import dla_repro.models.aggregation\n"  # first importer of timm is one of ours
        "import timm\n"
        "print(len(timm.list_models('dlarepro_dla*')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "10"


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_loads_timm_weights_strictly_and_gives_the_same_logits(variant):
    torch.manual_seed(0)
    ref = timm.create_model(variant).double().eval()
    ours = timm.create_model(f"dlarepro_{variant}").double().eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        a, b = ref(x), ours(x)
    assert ((a - b).abs().max() / a.abs().max()).item() <= 1e-10


def test_timm_interface_and_config():
    model = timm.create_model("dlarepro_dla34", num_classes=7, in_chans=1, **{"channels": TINY["channels"]})
    x = torch.randn(2, 1, 32, 32)
    assert model(x).shape == (2, 7)
    feats = model.forward_features(x)
    assert feats.shape == (2, 256, 1, 1)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 256)
    assert model.get_classifier() is model.fc
    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and model.dla_config["num_classes"] == 3
    assert [f["reduction"] for f in model.feature_info] == [1, 2, 4, 8, 16, 32]
    cfg = model.pretrained_cfg["dla_config"]
    assert cfg["variant"] == "dla34" and cfg["aggregation"] == "full" and cfg["in_chans"] == 1
    assert model.default_cfg is model.pretrained_cfg
    final, inter = model.forward_intermediates(x, indices=[2, 5])
    assert [t.shape[-1] for t in inter] == [8, 1] and final.shape == feats.shape


def test_features_only_returns_all_levels():
    model = timm.create_model("dlarepro_dla34", features_only=True, channels=TINY["channels"])
    outs = model(torch.randn(2, 3, 32, 32))
    assert [o.shape[1] for o in outs] == list(TINY["channels"])
    assert [32 // o.shape[-1] for o in outs] == [1, 2, 4, 8, 16, 32]
    assert model.feature_info.reduction() == [1, 2, 4, 8, 16, 32]
    assert model.dla_config["channels"] == TINY["channels"]


def test_pretrained_is_refused_with_a_pointer_to_the_loader():
    with pytest.raises(ValueError, match="load_dla_checkpoint"):
        timm.create_model("dlarepro_dla34", pretrained=True)


def test_no_unused_projection_and_no_shared_state_between_instances():
    model = create_dla("dla102", **TINY)
    for tree in (m for m in model.modules() if isinstance(m, Tree)):
        if tree.levels > 1:
            assert tree.project is None and tree.root is None
    before = timm.create_model("dlarepro_dla34", **TINY).dla_config
    timm.create_model("dlarepro_dla34", block="bottleneck", residual_root=True, **TINY)
    assert timm.create_model("dlarepro_dla34", **TINY).dla_config == before


@pytest.mark.parametrize("mode", AGGREGATION_MODES)
def test_ablation_modes_run_and_have_the_expected_nodes(mode):
    model = create_dla("dla34", aggregation=mode, **TINY)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    assert model.dla_config["aggregation"] == mode
    stages = [getattr(model, f"level{i}") for i in range(2, 6)]
    roots = _roots(model)
    if mode == "none":
        assert not roots and all(isinstance(s, SequentialStage) for s in stages)
        assert [len(s.blocks) for s in stages] == [2, 4, 4, 2]  # 2**levels blocks, as in the tree
    elif mode == "ida":
        assert len(roots) == 3 and all(r.in_chs == r.out_chs + s.in_chs for r, s in zip(roots, stages[1:]))
    else:  # one root per levels==1 subtree: 1 + 2 + 2 + 1
        assert len(roots) == 6
        final4 = model.level4.tree2.root
        assert final4.in_chs == 3 * 128 + (64 if mode == "full" else 0)  # [x2, x1, (bottom), left root]


def test_switches_block_root_kernel_residual_and_tiny_split():
    model = create_dla("dla34", block="bottleneck", root_kernel=3, residual_root=True, **TINY)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    assert all(r.conv.kernel_size == (3, 3) and r.residual for r in _roots(model))
    split = create_dla("dla34", block="split", cardinality=2, base_width=16, **TINY)
    assert split.level3.tree1.tree1.conv2.groups == 2
    with pytest.raises(ValueError, match="cardinality"):  # 32 groups do not fit a 16-channel stage
        create_dla("dla34", block="split", channels=(8, 8, 16, 32, 64, 128))
    with pytest.raises(ValueError, match="aggregation"):
        create_dla("dla34", aggregation="dense")


def test_head_init_scale_zero_starts_every_mode_at_chance_and_one_is_the_official_init():
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 4])
    torch.manual_seed(0)
    default = create_dla("dla34", **TINY)
    torch.manual_seed(0)
    half = create_dla("dla34", head_init_scale=0.5, **TINY)
    assert default.dla_config["head_init_scale"] == 1.0 and half.dla_config["head_init_scale"] == 0.5
    assert torch.equal(half.fc.weight, 0.5 * default.fc.weight) and torch.equal(half.fc.bias, 0.5 * default.fc.bias)
    assert torch.equal(half.level5.root.conv.weight, default.level5.root.conv.weight)  # the body is untouched
    for mode in AGGREGATION_MODES:
        for residual in (False, True):
            model = create_dla("dla34", aggregation=mode, residual_root=residual, head_init_scale=0.0, **TINY)
            assert not model.fc.weight.any() and not model.fc.bias.any()
            loss = torch.nn.functional.cross_entropy(model(x), y)  # train mode: what the first step sees
            assert abs(loss.item() - math.log(5)) < 1e-6
            loss.backward()
            assert model.fc.weight.grad.abs().sum() > 0  # the head learns from the first step
    assert create_dla("dla34", head_init_scale=0.0, **{**TINY, "num_classes": 0})(x).shape == (4, 256)


def test_grad_checkpointing_trains():
    model = create_dla("dla34", **TINY)
    model.set_grad_checkpointing(True)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert model.base_layer[0].weight.grad is not None


def test_matched_family_is_within_tolerance_and_reports_widths():
    family = matched_family("dla34", tolerance=0.05, **TINY)
    assert [m.mode for m in family] == list(AGGREGATION_MODES)
    full = family[-1]
    assert full.width_mult == 1.0 and full.channels == TINY["channels"]
    for member in family:
        assert abs(member.rel_diff) <= 0.05
        assert all(c % 8 == 0 for c in member.channels)
        model = member.create()
        assert sum(p.numel() for p in model.parameters()) == member.params
        assert model.dla_config["aggregation"] == member.mode
    assert family[0].channels[-1] > full.channels[-1]  # no aggregation nodes: widened to match
    fixed = matched_family("dla34", modes=("none",), target_params=family[-1].params // 2, **TINY)
    assert abs(fixed[0].rel_diff) <= 0.05 and fixed[0].width_mult < 1


def _official_layout(model):
    """ucbdrive/dla checkpoint layout: extra (unused) projections in trees with
    levels > 1, the classifier stored as a Linear, no num_batches_tracked."""
    state = {k: v.clone() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    extra = []
    for name, tree in model.named_modules():
        if isinstance(tree, Tree) and tree.levels > 1 and tree.in_chs != tree.out_chs:
            state[f"{name}.project.0.weight"] = torch.randn(tree.out_chs, tree.in_chs, 1, 1)
            extra.append(f"{name}.project.0.weight")
            for p in ("weight", "bias", "running_mean", "running_var"):
                state[f"{name}.project.1.{p}"] = torch.randn(tree.out_chs)
                extra.append(f"{name}.project.1.{p}")
    state["fc.weight"] = state["fc.weight"].flatten(1)
    return state, extra


def test_loader_reads_the_official_layout_and_reports_what_it_ignored(tmp_path):
    source = create_dla("dla34", **TINY)
    state, extra = _official_layout(source)
    assert extra  # dla34 has levels=2 trees with a width change
    path = tmp_path / "dla34-official.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    target = create_dla("dla34", **TINY)
    report = load_dla_checkpoint(target, path)
    assert sorted(report.ignored) == sorted(extra)
    assert report.converted == ["fc.weight"] and report.filled
    assert str(path) in str(report)
    for k, v in source.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(target.state_dict()[k], v), k


def test_loader_errors_name_the_path(tmp_path):
    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(PretrainedWeightsError, match="corrupt.pth"):
        load_dla_checkpoint(create_dla("dla34", **TINY), bad)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_dla_checkpoint(create_dla("dla34", **TINY), tmp_path / "missing.pth")
    with pytest.raises(PretrainedWeightsError, match="does not fit"):
        load_dla_checkpoint(create_dla("dla34", **TINY), create_dla("dla46_c", **TINY).state_dict())
