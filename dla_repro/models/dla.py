"""DLA classifiers (Deep Layer Aggregation, Yu et al., CVPR 2018, arXiv 1707.06484, §4.1), registered in timm.

Network (the layout of the official ucbdrive/dla ``dla.py``, kept so its and timm's weights load):

    base_layer : 7x7 conv, stride 1 → BN → ReLU                 (stride 1)
    level0     : levels[0] × (3x3 conv → BN → ReLU)             (stride 1)
    level1     : levels[1] × (3x3 conv → BN → ReLU), first s=2  (stride 2)
    level2..5  : one aggregation stage each, stride 2           (strides 4 … 32)
    head       : global average pool → 1x1 conv (``fc``) → flatten

A stage (``level2`` … ``level5``) has 2^levels[i] blocks.  How they are
aggregated is the ``aggregation`` switch:

=========  ===============================================================
``full``   the paper's DLA: an HDA :class:`~.aggregation.Tree` per stage, and
           IDA across stages (the stage input joins the last root where
           ``level_roots`` says so -- stages 3-5 in the official nets)
``hda``    the same trees, the stage input never joined
``ida``    blocks chained; one binary node (stage output, stage input) in
           the stages where ``full`` joins the input.  So ``full`` has exactly
           the edges of ``hda`` plus those of ``ida``
``none``   blocks chained, no aggregation node: a plain staged baseline
=========  ===============================================================

The ten variants are configurations (:data:`VARIANTS`), not subclasses.  After
``import dla_repro`` every one is ``timm.create_model("dlarepro_<variant>")``;
any config key can be overridden there (``channels=...`` changes the widths;
the CPU-sized DLA of the experiments is :func:`~.backbones.create_backbone`
with ``tiny=True``).  Loading the official or timm weights:
:mod:`.dla_checkpoint`; the ablation modes at matched parameter count:
:mod:`.dla_family`.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Union

import torch
from torch import nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import BatchNormAct2d, create_classifier, create_conv2d, get_act_layer
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

# Modules, not names: when one of them is the first to import timm, the import hook
# (see __init__) loads this module while that one is still half-initialised.
from . import aggregation as agg
from . import blocks as blk

if TYPE_CHECKING:
    from .blocks import LayerType

__all__ = ["AGGREGATION_MODES", "VARIANTS", "DLA", "create_dla"]

AGGREGATION_MODES = ("none", "ida", "hda", "full")

#: The ten DLA classifiers (arXiv 1707.06484 §4.1; official ucbdrive/dla ``dla.py``, ``dla34()`` …
#: ``dla169()``, the same in timm ``timm/models/dla.py``): levels, channels, block, residual root.
VARIANTS: Dict[str, Dict[str, Any]] = {
    "dla34": dict(levels=(1, 1, 1, 2, 2, 1), channels=(16, 32, 64, 128, 256, 512), block="basic"),
    "dla46_c": dict(levels=(1, 1, 1, 2, 2, 1), channels=(16, 32, 64, 64, 128, 256), block="bottleneck"),
    "dla46x_c": dict(levels=(1, 1, 1, 2, 2, 1), channels=(16, 32, 64, 64, 128, 256), block="split"),
    "dla60x_c": dict(levels=(1, 1, 1, 2, 3, 1), channels=(16, 32, 64, 64, 128, 256), block="split"),
    "dla60": dict(levels=(1, 1, 1, 2, 3, 1), channels=(16, 32, 128, 256, 512, 1024), block="bottleneck"),
    "dla60x": dict(levels=(1, 1, 1, 2, 3, 1), channels=(16, 32, 128, 256, 512, 1024), block="split"),
    "dla102": dict(
        levels=(1, 1, 1, 3, 4, 1), channels=(16, 32, 128, 256, 512, 1024), block="bottleneck", residual_root=True
    ),
    "dla102x": dict(
        levels=(1, 1, 1, 3, 4, 1), channels=(16, 32, 128, 256, 512, 1024), block="split", residual_root=True
    ),
    "dla102x2": dict(
        levels=(1, 1, 1, 3, 4, 1),
        channels=(16, 32, 128, 256, 512, 1024),
        block="split",
        cardinality=64,
        residual_root=True,
    ),
    "dla169": dict(
        levels=(1, 1, 2, 3, 5, 1), channels=(16, 32, 128, 256, 512, 1024), block="bottleneck", residual_root=True
    ),
}

_DEFAULT_LEVEL_ROOTS = (False, True, True, True)


def _conv_level(in_chs: int, out_chs: int, convs: int, stride: int, act: type) -> nn.Sequential:
    """``convs`` × (3x3 conv → BN → ReLU), the first with ``stride`` (keys ``0``, ``1``, ``2``, ...)."""
    layers: List[nn.Module] = []
    for i in range(convs):
        conv = create_conv2d(in_chs, out_chs, 3, stride=stride if i == 0 else 1)
        layers += [conv, BatchNormAct2d(out_chs, act_layer=act)]
        in_chs = out_chs
    return nn.Sequential(*layers)


class DLA(nn.Module):
    """Deep Layer Aggregation classifier; see the module docstring for the layout.

    Args:
        levels: six ints; ``levels[0:2]`` conv counts of ``level0/1``, ``levels[2:]``
            the tree depth of stages 2-5 (a stage has ``2**levels[i]`` blocks).
        channels: six widths, one per level.
        block: ``"basic"``, ``"bottleneck"`` or ``"split"`` (ResNeXt bottleneck).
        cardinality, base_width: groups and per-group width of the bottleneck
            (default per block: bottleneck 1/64, split 32/4).
        residual_root: add the deepest input inside each aggregation node.
        root_kernel: kernel size of the aggregation nodes (1 or 3).
        aggregation: ``"full"``, ``"hda"``, ``"ida"`` or ``"none"``.
        level_roots: for stages 2-5, whether the stage input joins the stage's
            last node (IDA across stages); the official nets use (F, T, T, T).
        head_init_scale: factor on the classifier's initial weight and bias
            (timm's name and meaning for the same switch, e.g. ``convnext.py``).
            1 (default): the official init, unchanged.  0: a zero classifier --
            every logit is 0 at initialisation, so the cross-entropy starts at
            exactly ln(num_classes) whatever the backbone computes, and models
            that differ only in their body start from the same loss (the
            from-scratch ablations, :mod:`dla_repro.experiments.dla.classification`).
            The head's weight gradient (softmax − onehot) ⊗ features is not zero,
            so it learns at the first step and the body from the second.  Applied
            at construction only (``reset_classifier`` builds a fresh head).
    """

    def __init__(
        self,
        levels: Sequence[int] = VARIANTS["dla34"]["levels"],
        channels: Sequence[int] = VARIANTS["dla34"]["channels"],
        block: str = "basic",
        cardinality: Optional[int] = None,
        base_width: Optional[int] = None,
        residual_root: bool = False,
        root_kernel: int = 1,
        aggregation: str = "full",
        level_roots: Sequence[bool] = _DEFAULT_LEVEL_ROOTS,
        num_classes: int = 1000,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        output_stride: int = 32,
        act_layer: LayerType = "relu",
        head_init_scale: float = 1.0,
    ):
        super().__init__()
        levels, channels = tuple(int(v) for v in levels), tuple(int(c) for c in channels)
        level_roots = tuple(bool(v) for v in level_roots)
        if len(levels) != 6 or len(channels) != 6:
            raise ValueError(f"levels and channels need 6 entries each, got {levels} and {channels}")
        if len(level_roots) != 4:
            raise ValueError(f"level_roots needs 4 entries (stages 2-5), got {level_roots}")
        if aggregation not in AGGREGATION_MODES:
            raise ValueError(f"unknown aggregation {aggregation!r}; expected one of {AGGREGATION_MODES}")
        if block not in blk.BLOCKS:
            raise ValueError(f"unknown block {block!r}; expected one of {sorted(blk.BLOCKS)}")
        if output_stride != 32:
            raise ValueError("DLA classifiers support output_stride=32 only")
        if block != "basic":
            card0, width0 = blk.BLOCK_DEFAULTS[block]
            cardinality = card0 if cardinality is None else int(cardinality)
            base_width = width0 if base_width is None else int(base_width)
        self.dla_config: Dict[str, Any] = dict(
            levels=levels,
            channels=channels,
            block=block,
            cardinality=cardinality,
            base_width=base_width,
            residual_root=bool(residual_root),
            root_kernel=int(root_kernel),
            aggregation=aggregation,
            level_roots=level_roots,
            num_classes=int(num_classes),
            in_chans=int(in_chans),
            global_pool=global_pool,
            drop_rate=float(drop_rate),
            act_layer=act_layer if isinstance(act_layer, str) else getattr(act_layer, "__name__", str(act_layer)),
            head_init_scale=float(head_init_scale),
        )
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        self.channels = channels
        self.grad_checkpointing = False
        act = get_act_layer(act_layer)

        self.base_layer = nn.Sequential(
            create_conv2d(in_chans, channels[0], 7), BatchNormAct2d(channels[0], act_layer=act)
        )
        self.level0 = _conv_level(channels[0], channels[0], levels[0], 1, act)
        self.level1 = _conv_level(channels[0], channels[1], levels[1], 2, act)
        block_fn = functools.partial(
            blk.make_block, block, cardinality=cardinality, base_width=base_width, act_layer=act
        )
        node = dict(root_kernel=root_kernel, residual_root=residual_root, act_layer=act)
        for i in range(2, 6):
            in_chs, out_chs, joins = channels[i - 1], channels[i], level_roots[i - 2]
            if aggregation in ("full", "hda"):
                join = joins and aggregation == "full"
                stage = agg.Tree(levels[i], block_fn, in_chs, out_chs, 2, level_root=join, **node)
            else:
                join = joins and aggregation == "ida"
                stage = agg.SequentialStage(2 ** levels[i], block_fn, in_chs, out_chs, 2, join_input=join, **node)
            self.add_module(f"level{i}", stage)
        self.feature_info = [dict(num_chs=channels[i], reduction=2**i, module=f"level{i}") for i in range(6)]

        self.num_features = self.head_hidden_size = channels[-1]
        self.global_pool, self.head_drop, self.fc = create_classifier(
            self.num_features, num_classes, pool_type=global_pool, use_conv=True, drop_rate=drop_rate
        )
        self.flatten = nn.Flatten(1) if global_pool else nn.Identity()
        self._init_weights(head_init_scale)

    def _init_weights(self, head_init_scale: float = 1.0) -> None:
        # the official init: N(0, 2/n), n = k·k·out_channels (= He, fan-out), BN γ=1, β=0
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if head_init_scale != 1.0 and isinstance(self.fc, nn.Conv2d):  # num_classes=0: no classifier
            with torch.no_grad():
                self.fc.weight.mul_(head_init_scale)
                if self.fc.bias is not None:
                    self.fc.bias.mul_(head_init_scale)

    # --- timm model interface -------------------------------------------------
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        blocks: Any = r"^level(\d+)" if coarse else [
            (r"^level(\d+)\.tree(\d+)", None),
            (r"^level(\d+)\.blocks\.(\d+)", None),
            (r"^level(\d+)\.root", (2,)),
            (r"^level(\d+)", (1,)),
        ]
        return dict(stem=r"^base_layer", blocks=blocks)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        ref = next(self.parameters())
        self.num_classes = num_classes
        self.dla_config.update(num_classes=int(num_classes), global_pool=global_pool)
        self.global_pool, self.fc = create_classifier(
            self.num_features, num_classes, pool_type=global_pool, use_conv=True
        )
        self.global_pool.to(ref.device)
        self.fc.to(device=ref.device, dtype=ref.dtype)
        self.flatten = nn.Flatten(1) if global_pool else nn.Identity()
        for m in (self.global_pool, self.fc, self.flatten):
            m.train(self.training)

    def _levels(self) -> List[nn.Module]:
        return [getattr(self, f"level{i}") for i in range(6)]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.base_layer(x)
        for level in self._levels():
            if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
                x = torch.utils.checkpoint.checkpoint(level, x, use_reentrant=False)
            else:
                x = level(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.global_pool(x))
        if pre_logits:
            return self.flatten(x)
        return self.flatten(self.fc(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        """Final features and the outputs of levels ``indices`` (0-5 = strides 1-32;
        an int n means the last n levels, None all)."""
        if output_fmt != "NCHW":
            raise ValueError("only NCHW output is supported")
        take = _take_indices(6, indices)
        out = []
        x = self.base_layer(x)
        for i, level in enumerate(self._levels()):
            if stop_early and i > max(take):
                break
            x = level(x)
            if i in take:
                out.append(x)
        return out if intermediates_only else (x, out)

    def prune_intermediate_layers(
        self, indices: Union[int, List[int]] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> List[int]:
        take = _take_indices(6, indices)
        last = max(take)
        for i in range(last + 1, 6):
            setattr(self, f"level{i}", nn.Identity())
        if last < 5:
            self.num_features = self.head_hidden_size = self.channels[last]
        if prune_head or last < 5:
            self.reset_classifier(0, "")
        return take


def _take_indices(n: int, indices: Optional[Union[int, Sequence[int]]]) -> List[int]:
    if indices is None:
        return list(range(n))
    if isinstance(indices, int):
        if not 0 < indices <= n:
            raise ValueError(f"take the last 1..{n} levels, got {indices}")
        return list(range(n - indices, n))
    take = sorted(i % n for i in indices)
    if any(not -n <= i < n for i in indices):
        raise ValueError(f"level indices must be in [-{n}, {n}), got {list(indices)}")
    return take


# --- timm registration ----------------------------------------------------------
def _cfg(**kwargs) -> Dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bilinear",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "base_layer.0",
        "classifier": "fc",
        "license": "mit",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({f"dlarepro_{name}": _cfg() for name in VARIANTS})


def _create(variant: str, pretrained: bool = False, **kwargs) -> nn.Module:
    if pretrained:
        raise ValueError(
            f"dlarepro_{variant} ships no weights (nothing is downloaded); create it with pretrained=False "
            "and load a checkpoint with dla_repro.models.load_dla_checkpoint()"
        )
    built: Dict[str, Any] = {}

    def build(**model_kwargs) -> DLA:
        model = DLA(**model_kwargs)
        built["config"] = model.dla_config
        return model

    model = build_model_with_cfg(
        build,
        f"dlarepro_{variant}",
        pretrained=False,
        feature_cfg=dict(out_indices=(0, 1, 2, 3, 4, 5)),
        **{**VARIANTS[variant], **kwargs},
    )
    config = dict(built["config"], variant=variant)
    model.pretrained_cfg = dict(model.pretrained_cfg, dla_config=config)
    model.default_cfg = model.pretrained_cfg
    if not isinstance(model, DLA):  # features_only wrapper
        model.dla_config = config
    return model


def create_dla(variant: str, **kwargs) -> nn.Module:
    """``timm.create_model(f"dlarepro_{variant}", **kwargs)`` without the prefix."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown DLA variant {variant!r}; expected one of {list(VARIANTS)}")
    return _create(variant, **kwargs)


@register_model
def dlarepro_dla34(pretrained: bool = False, **kwargs) -> DLA:
    return _create("dla34", pretrained, **kwargs)


@register_model
def dlarepro_dla46_c(pretrained: bool = False, **kwargs) -> DLA:
    return _create("dla46_c", pretrained, **kwargs)


@register_model
def dlarepro_dla46x_c(pretrained: bool = False, **kwargs) -> DLA:
    return _create("dla46x_c", pretrained, **kwargs)


@register_model
def dlarepro_dla60x_c(pretrained: bool = False, **kwargs) -> DLA:
    return _create("dla60x_c", pretrained, **kwargs)


@register_model
def dlarepro_dla60(pretrained: bool = False, **kwargs) -> DLA:
    return _create("dla60", pretrained, **kwargs)


@register_model
def dlarepro_dla60x(pretrained: bool = False, **kwargs) -> DLA:
    return _create("dla60x", pretrained, **kwargs)


@register_model
def dlarepro_dla102(pretrained: bool = False, **kwargs) -> DLA:
    return _create("dla102", pretrained, **kwargs)


@register_model
def dlarepro_dla102x(pretrained: bool = False, **kwargs) -> DLA:
    return _create("dla102x", pretrained, **kwargs)


@register_model
def dlarepro_dla102x2(pretrained: bool = False, **kwargs) -> DLA:
    return _create("dla102x2", pretrained, **kwargs)


@register_model
def dlarepro_dla169(pretrained: bool = False, **kwargs) -> DLA:
    return _create("dla169", pretrained, **kwargs)
