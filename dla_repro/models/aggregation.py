"""Aggregation node, IDA and HDA (Deep Layer Aggregation, Yu et al., CVPR 2018, arXiv 1707.06484, §3).

The official code is ucbdrive/dla ``dla.py`` (``Root``, ``Tree``); "the official" below means it.

Three pieces, each a module:

* :class:`AggregationNode` -- the paper's node N: a convolution over the
  concatenated inputs, BN, ReLU, optionally with a residual.
* :class:`Tree` -- hierarchical deep aggregation (HDA) of one stage: a recursive
  binary tree of blocks whose roots are fed back into the backbone.
* :class:`SequentialStage` -- the same blocks chained without a tree; with
  ``join_input`` the stage ends in one binary IDA node that merges the stage
  output with its (downsampled) input.  Without it, a plain staged baseline.

In the DLA classifier, IDA across stages *is* the ``level_root`` input of a
stage: the previous stage's aggregate (``bottom``, max-pooled to the new
resolution) is an extra input of the stage's last node, so shallow features are
merged again at every deeper stage.

Each stage computes the downsampled input ``bottom = MaxPool_s(x)`` once and hands
it down: it serves both the shortcut of the first block (projected by a 1x1
conv + BN when the width changes) and, for IDA, the aggregation node.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, List, Optional, Sequence

import torch
from torch import nn
from timm.layers import create_conv2d, get_act_layer

if TYPE_CHECKING:  # annotations only: no import cycle when timm's import hook loads .dla
    from .blocks import LayerType

__all__ = ["AggregationNode", "Tree", "SequentialStage", "projection"]

#: ``block_fn(in_chs, out_chs, stride) -> nn.Module`` building one residual block.
BlockFn = Callable[[int, int, int], nn.Module]


def projection(in_chs: int, out_chs: int) -> nn.Sequential:
    """Shortcut projection P(x) = BN(W ∗ x), W a 1x1 conv (keys ``0.weight``, ``1.*``)."""
    return nn.Sequential(create_conv2d(in_chs, out_chs, 1), nn.BatchNorm2d(out_chs))


class AggregationNode(nn.Module):
    """Aggregation node, paper §3.3:

        N(x₁, …, xₙ) = σ(BN(Σᵢ Wᵢ xᵢ + b))              (plain)
        N(x₁, …, xₙ) = σ(BN(Σᵢ Wᵢ xᵢ + b) + x_deep)     (``residual=True``)

    In code: ``y = act(bn(conv(cat(xs))))``; a conv W (``conv``) over the channel
    concatenation [x₁; …; xₙ] (one ``torch.cat``) equals Σᵢ Wᵢ xᵢ, and b is
    absorbed by BN.  k = ``kernel_size``: 1 for classification, 3 for dense
    prediction.  σ = ReLU (``act``).  x_deep, the residual, is the output of
    the deepest block aggregated; the official code (and this one) passes it as
    the first input ``xs[0]``.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        residual: bool = False,
        act_layer: LayerType = "relu",
    ):
        super().__init__()
        if kernel_size not in (1, 3):
            raise ValueError(f"root kernel must be 1 or 3, got {kernel_size}")
        self.in_chs, self.out_chs, self.kernel_size, self.residual = in_chs, out_chs, kernel_size, residual
        self.conv = create_conv2d(in_chs, out_chs, kernel_size)
        self.bn = nn.BatchNorm2d(out_chs)
        self.act = get_act_layer(act_layer)(inplace=True)

    def forward(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        y = self.bn(self.conv(torch.cat(list(xs), 1)))
        if self.residual:
            y += xs[0]
        return self.act(y)


class Tree(nn.Module):
    """Hierarchical deep aggregation (HDA), paper §3.2, Fig. 2(d)-(f):

        T_n(x) = N(R^n_{n-1}(x), R^n_{n-2}(x), …, R^n_1(x), L^n_1(x), L^n_2(x))
        L^n_2(x) = B(L^n_1(x)),   L^n_1(x) = B(R^n_1(x)),
        R^n_m(x) = T_m(x) if m = n-1 else T_m(R^n_{m+1}(x))

    with B a block and N an :class:`AggregationNode`.  Implemented as the
    official recursion: ``levels == 1`` → two blocks (``tree1``, ``tree2``) and a
    ``root``; ``levels > 1`` → two sub-trees, where the left sub-tree's output is
    fed to the right one *and* carried as an extra input (``children``) of the
    right one's final root (parent merged with left child).  With ``level_root``
    the downsampled stage input joins that final root too (IDA across stages).

    Root input order (the official one, needed for weight compatibility):
    ``[x2, x1, *children]`` where ``children = [bottom (if level_root), left
    sub-tree outputs from the outermost inwards]``.  Unlike the official code no
    projection is built for ``levels > 1`` (it was never used there), and no
    list argument is mutated.
    """

    def __init__(
        self,
        levels: int,
        block_fn: BlockFn,
        in_chs: int,
        out_chs: int,
        stride: int = 1,
        level_root: bool = False,
        root_dim: int = 0,
        root_kernel: int = 1,
        residual_root: bool = False,
        act_layer: LayerType = "relu",
    ):
        super().__init__()
        if levels < 1:
            raise ValueError(f"a tree needs levels >= 1, got {levels}")
        root_dim = root_dim or 2 * out_chs
        if level_root:
            root_dim += in_chs
        self.levels, self.level_root, self.root_dim = levels, level_root, root_dim
        self.in_chs, self.out_chs, self.stride = in_chs, out_chs, stride
        self.downsample = nn.MaxPool2d(stride, stride) if stride > 1 else nn.Identity()
        if levels == 1:
            self.tree1 = block_fn(in_chs, out_chs, stride)
            self.tree2 = block_fn(out_chs, out_chs, 1)
            self.project = projection(in_chs, out_chs) if in_chs != out_chs else None
            self.root = AggregationNode(root_dim, out_chs, root_kernel, residual_root, act_layer)
        else:
            sub = dict(root_kernel=root_kernel, residual_root=residual_root, act_layer=act_layer)
            self.tree1 = Tree(levels - 1, block_fn, in_chs, out_chs, stride, **sub)
            self.tree2 = Tree(levels - 1, block_fn, out_chs, out_chs, 1, root_dim=root_dim + out_chs, **sub)
            self.project = None
            self.root = None

    def forward(
        self,
        x: torch.Tensor,
        bottom: Optional[torch.Tensor] = None,
        children: Optional[List[torch.Tensor]] = None,
    ) -> torch.Tensor:
        """``bottom``: ``x`` already max-pooled by the stride (the parent computed it);
        ``children``: extra inputs of this tree's final root."""
        if bottom is None:
            bottom = self.downsample(x)
        children = [] if children is None else children
        if self.level_root:
            children = children + [bottom]
        if self.root is None:  # levels > 1: two sub-trees
            x1 = self.tree1(x, bottom)
            return self.tree2(x1, None, children + [x1])
        shortcut = bottom if self.project is None else self.project(bottom)
        x1 = self.tree1(x, shortcut)
        x2 = self.tree2(x1)
        return self.root([x2, x1, *children])


class SequentialStage(nn.Module):
    """A stage of ``num_blocks`` chained blocks, without HDA:

        y = B_n(… B_2(B_1(x, s = P(MaxPool_s(x)))))              (``join_input=False``)
        y = N(B_n(…), MaxPool_s(x))                               (``join_input=True``)

    The second form is IDA restricted to one binary node per stage: the stage
    output merged with the stage input (paper §3.1, Fig. 2(c)).  The first is
    the plain staged baseline that aggregates nothing.
    """

    def __init__(
        self,
        num_blocks: int,
        block_fn: BlockFn,
        in_chs: int,
        out_chs: int,
        stride: int = 1,
        join_input: bool = False,
        root_kernel: int = 1,
        residual_root: bool = False,
        act_layer: LayerType = "relu",
    ):
        super().__init__()
        if num_blocks < 1:
            raise ValueError(f"a stage needs at least one block, got {num_blocks}")
        self.in_chs, self.out_chs, self.stride, self.join_input = in_chs, out_chs, stride, join_input
        self.downsample = nn.MaxPool2d(stride, stride) if stride > 1 else nn.Identity()
        self.project = projection(in_chs, out_chs) if in_chs != out_chs else None
        self.blocks = nn.ModuleList(
            [block_fn(in_chs, out_chs, stride)] + [block_fn(out_chs, out_chs, 1) for _ in range(num_blocks - 1)]
        )
        self.root = (
            AggregationNode(out_chs + in_chs, out_chs, root_kernel, residual_root, act_layer) if join_input else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bottom = self.downsample(x)
        shortcut = bottom if self.project is None else self.project(bottom)
        x = self.blocks[0](x, shortcut)
        for block in self.blocks[1:]:
            x = block(x)
        if self.root is not None:
            x = self.root([x, bottom])
        return x
