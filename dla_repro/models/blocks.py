"""Residual blocks of the DLA backbones: basic, bottleneck and split (ResNeXt).

Deep Layer Aggregation (Yu et al., CVPR 2018, arXiv 1707.06484), §3 and §4.1:
the aggregation structures are independent of the block, and the paper builds
DLA from three residual blocks.  Every block here computes

    y = ReLU(F(x) + s)

with ``s`` the shortcut: ``x`` itself, or -- for the first block of a stage,
which changes resolution and/or width -- a projection of the max-pooled input
that the enclosing stage passes in (the block never builds its own projection,
so the stage can share one downsampled input between the shortcut and the
aggregation node).

Parameter and buffer names (``conv1``, ``bn1``, ...) follow the official code
(ucbdrive/dla ``dla.py``) and timm (``timm/models/dla.py``), so their
checkpoints load unchanged.  Convolutions come from ``timm.layers``
(``create_conv2d``), a norm followed by an activation is timm's
``BatchNormAct2d`` (a ``BatchNorm2d`` with an activation member, so its
state_dict keys are those of a plain BatchNorm), and a norm that feeds a
residual sum is a plain ``nn.BatchNorm2d`` (no identity act/drop calls).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Callable, Optional, Type, Union

import torch
from torch import nn
from timm.layers import BatchNormAct2d, create_conv2d, get_act_layer

LayerType = Union[str, Callable[..., nn.Module], Type[nn.Module]]

__all__ = ["ResidualBlock", "BasicBlock", "Bottleneck", "BLOCKS", "BLOCK_DEFAULTS", "bottleneck_width", "make_block"]


class ResidualBlock(nn.Module, ABC):
    """``y = ReLU(F(x) + s)``: the sum and activation every block shares.

    A subclass builds F (:meth:`residual`) and its activation ``act``; ``s`` is
    ``x`` unless the stage passes a ``shortcut`` (the projected, max-pooled input
    of a stage's first block).
    """

    act: nn.Module

    @abstractmethod
    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """F(x)."""

    def forward(self, x: torch.Tensor, shortcut: Optional[torch.Tensor] = None) -> torch.Tensor:
        out = self.residual(x)
        out += x if shortcut is None else shortcut
        return self.act(out)


class BasicBlock(ResidualBlock):
    """Basic residual block: two 3x3 convolutions.

    F(x) = BN₂(W₂ ∗ ReLU(BN₁(W₁ ∗ₛ x))),   y = ReLU(F(x) + s)

    ``conv1`` = W₁ (3x3, stride ``stride``), ``conv2`` = W₂ (3x3), ``shortcut`` = s.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, dilation: int = 1, act_layer: LayerType = "relu"):
        super().__init__()
        act = get_act_layer(act_layer)
        self.conv1 = create_conv2d(in_chs, out_chs, 3, stride=stride, dilation=dilation)
        self.bn1 = BatchNormAct2d(out_chs, act_layer=act)
        self.conv2 = create_conv2d(out_chs, out_chs, 3, dilation=dilation)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.act = act(inplace=True)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(self.bn1(self.conv1(x))))


def bottleneck_width(out_chs: int, cardinality: int = 1, base_width: int = 64, expansion: int = 2) -> int:
    """Inner width d of a (split) bottleneck, the rule of the official code and timm:

        d = ⌊out · base_width / 64⌋ · cardinality / expansion

    Plain bottleneck (cardinality 1, base_width 64): d = out / 2 (expansion 2, not
    ResNet's 4).  Split (cardinality 32, base_width 4): d = ⌊out / 16⌋ · 16.
    """
    return int(math.floor(out_chs * (base_width / 64)) * cardinality) // expansion


class Bottleneck(ResidualBlock):
    """Bottleneck block (1x1 → 3x3 → 1x1) with expansion 2; with ``cardinality`` > 1
    the 3x3 is a grouped convolution: the split (ResNeXt) block of DLA-X.

    F(x) = BN₃(W₃ ∗ ReLU(BN₂(W₂ ∗ₛ,g ReLU(BN₁(W₁ ∗ x))))),   y = ReLU(F(x) + s)

    W₁: in → d (1x1), W₂: d → d (3x3, stride ``stride``, g = ``cardinality`` groups),
    W₃: d → out (1x1); d = :func:`bottleneck_width`.
    """

    expansion = 2

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int = 1,
        dilation: int = 1,
        cardinality: int = 1,
        base_width: int = 64,
        act_layer: LayerType = "relu",
    ):
        super().__init__()
        act = get_act_layer(act_layer)
        mid = bottleneck_width(out_chs, cardinality, base_width, self.expansion)
        if mid < cardinality or mid % cardinality:
            raise ValueError(
                f"bottleneck width {mid} (out={out_chs}, base_width={base_width}) is not a positive "
                f"multiple of cardinality={cardinality}; widen the stage or lower the cardinality"
            )
        self.conv1 = create_conv2d(in_chs, mid, 1)
        self.bn1 = BatchNormAct2d(mid, act_layer=act)
        self.conv2 = create_conv2d(mid, mid, 3, stride=stride, dilation=dilation, groups=cardinality)
        self.bn2 = BatchNormAct2d(mid, act_layer=act)
        self.conv3 = create_conv2d(mid, out_chs, 1)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.act = act(inplace=True)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn3(self.conv3(self.bn2(self.conv2(self.bn1(self.conv1(x))))))


#: block name → class; "split" is the bottleneck with grouped 3x3 (ResNeXt).
BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck, "split": Bottleneck}

#: per block name, the (cardinality, base_width) used when a config leaves them unset.
BLOCK_DEFAULTS = {"basic": (None, None), "bottleneck": (1, 64), "split": (32, 4)}


def make_block(
    name: str,
    in_chs: int,
    out_chs: int,
    stride: int = 1,
    dilation: int = 1,
    cardinality: Optional[int] = None,
    base_width: Optional[int] = None,
    act_layer: LayerType = "relu",
) -> nn.Module:
    """Build the block called ``name`` (see :data:`BLOCKS`)."""
    if name not in BLOCKS:
        raise ValueError(f"unknown block {name!r}; expected one of {sorted(BLOCKS)}")
    if name == "basic":
        if cardinality not in (None, 1):
            raise ValueError(f"the basic block has no groups (got cardinality={cardinality})")
        return BasicBlock(in_chs, out_chs, stride, dilation, act_layer=act_layer)
    card0, width0 = BLOCK_DEFAULTS[name]
    return Bottleneck(
        in_chs,
        out_chs,
        stride,
        dilation,
        cardinality=card0 if cardinality is None else cardinality,
        base_width=width0 if base_width is None else base_width,
        act_layer=act_layer,
    )
