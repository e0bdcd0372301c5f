"""DLA-Up: iterative deep aggregation for dense prediction (Deep Layer Aggregation, arXiv 1707.06484, §4.2).

A backbone (any ``features_only`` timm model with ``feature_info`` -- the
``dlarepro_*`` DLAs or timm's own ``dla34``) gives levels ``x_l`` at strides
``2^l``.  DLA-Up merges them back from the deepest to the stride ``down_ratio``
with IDA used a second time, now upsampling (§4.2, Fig. 4; official code
ucbdrive/dla ``dla_up.py``: ``IDAUp``, ``DLAUp``, ``DLASeg``):

* :class:`BilinearConvTranspose2d` -- the upsampler ``U_s``: a depthwise
  ``ConvTranspose2d`` (kernel ``2s - s mod 2``, stride ``s``, padding ``⌊s/2⌋``)
  whose weights start as bilinear interpolation and are trained;
* :class:`IDAUp` -- one IDA over levels ``x_j, …, x_L`` of a common width ``w``::

      P_i = ReLU(BN(W_i ∗ x_i))              (1×1 projection, identity when x_i has width w)
      u_i = U_{2^(i-j)}(P_i)                 (to the resolution of x_j)
      y_j = u_j,  y_i = N(y_{i-1}, u_i)      (binary aggregation nodes, i = j+1 … L)

  ``N`` is :class:`~dla_repro.models.aggregation.AggregationNode`: conv over the
  concatenation (3×3 for dense prediction, the paper; 1×1 as an ablation) → BN → ReLU;
* :class:`DLAUp` -- IDA-up applied from deep to shallow: step ``j = L-1, …, f``
  runs :class:`IDAUp` on ``x_j`` and the outputs ``y`` of the previous step (already
  at the resolution of ``x_{j+1}``), replacing those levels by its own ``y``; the
  final ``y_L`` of the last step (at stride ``2^f = down_ratio``) is the decoder output.
  Widths: each step projects to the width of its shallowest level ``x_j`` (the
  official ``dla_up.py``); ``width=32`` projects everything to 32 channels (the
  paper text, §4.2).

:class:`DLAUpSegmenter` is DLA-Up on the segmentation contract
(:mod:`.segmentation`): the decoder, then a 1×1 classifier at stride
``down_ratio`` (2 by default, as in the paper; 4 or 8 configurable) whose scores
are upsampled bilinearly to the input size.  Two baselines share everything but the decoder:

* ``decoder="skip"`` (:class:`SkipDecoder`) -- *shallow* aggregation at the same
  output stride: every level projected once, upsampled in one step to stride
  ``down_ratio`` by the same trainable bilinear upsamplers, merged once by one
  node (FCN-8s / U-Net-style skip connections; DLA §3, Fig. 2(b) vs (c)).  Its
  width is chosen by :func:`skip_width` so that its parameter count matches
  DLA-Up's on the same backbone: the comparison is deep vs shallow aggregation,
  not stride or size;
* ``decoder="fcn"`` (:class:`FCNDecoder`) -- no aggregation: the classifier on
  the deepest level only, upsampled in one step (FCN-32s-like; stride 32, so it
  differs from DLA-Up in output stride as well -- a reference, not a fair
  ablation).

``match_params=True`` with ``decoder="ida_up"`` widens (or narrows) every step of
DLA-Up by one factor (:func:`matched_width_mult`) until its parameter count
matches the 3×3-node DLA-Up's: the 1×1-node ablation at matched parameters.

The boundary head (§5.4) is the same with 2 classes (background, edge); its
positive-class weight (``--edge-weight 10`` in the official BSDS and
PASCAL-boundary commands, ucbdrive/dla ``README.md``) is a loss weight and lives
with the task.

:func:`create_dla_up` builds one from a timm model name.
"""

from __future__ import annotations

import math
from typing import Any, Callable, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import ConvNormAct

from ..metrics.complexity import count_params
from .aggregation import AggregationNode
from .backbones import create_backbone
from .segmentation import BaseSegmenter, level_info

__all__ = [
    "DECODERS",
    "HEADS",
    "bilinear_kernel",
    "BilinearConvTranspose2d",
    "bilinear_upsampler",
    "IDAUp",
    "DLAUp",
    "SkipDecoder",
    "FCNDecoder",
    "DLAUpSegmenter",
    "count_params",
    "closest_width",
    "skip_width",
    "matched_width_mult",
    "create_dla_up",
]

DECODERS = ("ida_up", "skip", "fcn")
HEADS = ("segmentation", "boundary")
BORDERS = ("zero", "replicate")


def bilinear_kernel(factor: int) -> torch.Tensor:
    """The ``k×k`` bilinear kernel of upsampling by ``factor`` (``k = 2·factor - factor mod 2``).

    ``K[a, b] = (1 - |a - c|/s)(1 - |b - c|/s)`` with ``s = factor`` and centre
    ``c = s - 1/2`` (even ``s``) or ``s - 1`` (odd ``s``): the weight an input pixel
    gets at an output pixel ``|a - c|/s`` input pixels away.  With stride ``s`` and
    padding ``⌊s/2⌋`` this places output pixel ``o`` at input coordinate
    ``(o + 1/2)/s - 1/2``, the convention of ``F.interpolate(align_corners=False)``.
    """
    if not isinstance(factor, int) or isinstance(factor, bool) or factor < 1:
        raise ValueError(f"upsampling factor must be a positive integer, got {factor!r}")
    k = 2 * factor - factor % 2
    centre = factor - 0.5 if factor % 2 == 0 else factor - 1.0
    t = 1.0 - (torch.arange(k, dtype=torch.float64) - centre).abs() / factor
    return torch.outer(t, t).float()


class BilinearConvTranspose2d(nn.Module):
    """Depthwise transposed convolution ``U_s``, initialised to bilinear upsampling by ``s``, trainable.

    ``y = conv_transpose2d(x, K, stride=s, padding=⌊s/2⌋, groups=C)`` with every
    channel's kernel ``K`` = :func:`bilinear_kernel` ``(s)`` at initialisation
    (``weight`` is ``C×1×k×k``, no bias; ``trainable=False`` freezes it).  The
    output is ``s·H × s·W``.

    What is exact at initialisation (checked in ``tests/test_dla_up.py``):

    * ``border="zero"`` (default; the official code): the input is zero outside
      the image, so an output pixel whose source coordinate ``(o+1/2)/s - 1/2``
      lies in ``[0, H-1]`` -- every pixel except the first and last ``⌊s/2⌋``
      rows/columns -- equals ``F.interpolate(x, scale_factor=s, mode="bilinear",
      align_corners=False)`` exactly, for any input; a constant is reproduced
      and a linear ramp ``a·i + b`` becomes ``a·((o+1/2)/s - 1/2) + b`` there.  In
      the border rows the missing neighbour counts as 0 (a constant 1 gives
      ``1 - w`` with ``w`` the missing weight, e.g. ``3/4`` for ``s = 2``).
    * ``border="replicate"``: the input is padded by one replicated pixel before
      and the result cropped after, so *every* output pixel equals
      ``F.interpolate(..., align_corners=False)`` (which clamps at the border):
      constants are exact everywhere, ramps are exact in the interior and
      clamped to the edge value in the border rows, as ``F.interpolate``.
    """

    def __init__(self, channels: int, factor: int, trainable: bool = True, border: str = "zero"):
        super().__init__()
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be a positive integer, got {channels!r}")
        if border not in BORDERS:
            raise ValueError(f"border={border!r}: expected one of {', '.join(BORDERS)}")
        kernel = bilinear_kernel(factor)
        self.channels, self.factor, self.border = channels, factor, border
        self.padding = factor // 2
        self.weight = nn.Parameter(kernel.expand(channels, 1, *kernel.shape).clone(), requires_grad=trainable)

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.copy_(bilinear_kernel(self.factor).expand_as(self.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.factor
        if self.border == "replicate":
            x = F.pad(x, (1, 1, 1, 1), mode="replicate")
        y = F.conv_transpose2d(x, self.weight.to(x.dtype), stride=s, padding=self.padding, groups=self.channels)
        if self.border == "replicate":
            y = y[..., s:-s, s:-s]
        return y

    def extra_repr(self) -> str:
        return f"{self.channels}, factor={self.factor}, border={self.border!r}, trainable={self.weight.requires_grad}"


def bilinear_upsampler(channels: int, factor: int, trainable: bool = True, border: str = "zero") -> nn.Module:
    """:class:`BilinearConvTranspose2d` for ``factor > 1``, ``nn.Identity`` for ``factor == 1``."""
    if factor == 1:
        return nn.Identity()
    return BilinearConvTranspose2d(channels, factor, trainable=trainable, border=border)


def _fit(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Crop an upsampled map to ``size`` (a stride-2 conv rounds odd sizes up, so ``s·⌈H/s⌉ ≥ H``)."""
    h, w = size
    if x.shape[-2] < h or x.shape[-1] < w:
        raise ValueError(f"upsampled level {tuple(x.shape[-2:])} is smaller than its target {tuple(size)}")
    return x[..., :h, :w]


def _check_kernel(node_kernel: int) -> None:
    if node_kernel not in (1, 3):
        raise ValueError(f"node_kernel must be 1 or 3, got {node_kernel!r}")


def _check_strides(reductions: Sequence[int]) -> None:
    for a, b in zip(reductions, reductions[1:]):
        if b % a or b <= a:
            raise ValueError(f"level strides must increase by integer factors, got {list(reductions)}")


class IDAUp(nn.Module):
    """One iterative deep aggregation with upsampling (see the module docstring).

    ``in_channels[i]`` and ``factors[i]`` describe input level ``i`` (``factors[0]``
    is 1: the shallowest input sets the resolution).  ``forward(levels)`` returns
    the list ``[y_1, …, y_n]`` of node outputs, all at the resolution of
    ``levels[0]`` with ``out_channels`` channels; the last is the aggregate.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int,
        factors: Sequence[int],
        node_kernel: int = 3,
        trainable_up: bool = True,
        border: str = "zero",
    ):
        super().__init__()
        _check_kernel(node_kernel)
        if len(in_channels) < 2 or len(in_channels) != len(factors):
            raise ValueError(f"IDAUp needs ≥ 2 levels with one factor each, got {list(in_channels)} / {list(factors)}")
        self.proj = nn.ModuleList(
            nn.Identity() if c == out_channels else ConvNormAct(c, out_channels, 1) for c in in_channels
        )
        self.up = nn.ModuleList(bilinear_upsampler(out_channels, int(f), trainable_up, border) for f in factors)
        self.nodes = nn.ModuleList(
            AggregationNode(2 * out_channels, out_channels, kernel_size=node_kernel) for _ in in_channels[1:]
        )

    def forward(self, levels: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        size = levels[0].shape[-2:]
        u = [_fit(up(proj(x)), size) for x, proj, up in zip(levels, self.proj, self.up)]
        y, out = u[0], []
        for node, ui in zip(self.nodes, u[1:]):
            y = node([y, ui])
            out.append(y)
        return out


class DLAUp(nn.Module):
    """IDA-up from the deepest level to the shallowest: ``levels`` (strides ``r_0 < r_1 < …``) → one map at ``r_0``.

    ``channels`` are the input levels' widths, ``reductions`` their strides.
    Step ``t`` (``j = n-2-t``) aggregates level ``j`` with the ``t+1`` outputs of
    the previous step; ``width=None`` projects step ``j`` to ``channels[j]``
    (official code), an integer projects every step to that width (paper text: 32).
    ``width_mult`` scales every step's width (rounded, at least 1): the same
    layout, wider or narrower (:func:`matched_width_mult` uses it to match
    parameter counts).  ``widths`` lists the steps' widths from the deepest step
    on; ``out_channels`` is the width of the output map.
    """

    def __init__(
        self,
        channels: Sequence[int],
        reductions: Sequence[int],
        node_kernel: int = 3,
        width: Optional[int] = None,
        trainable_up: bool = True,
        border: str = "zero",
        width_mult: float = 1.0,
    ):
        super().__init__()
        _check_kernel(node_kernel)
        n = len(channels)
        if n < 2 or len(reductions) != n:
            raise ValueError(f"DLAUp needs ≥ 2 levels with one stride each, got {list(channels)} / {list(reductions)}")
        _check_strides(reductions)
        if not width_mult > 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult!r}")
        in_chs, strides = list(channels), list(reductions)
        self.idas = nn.ModuleList()
        self.widths: List[int] = []
        for t in range(n - 1):
            j = n - 2 - t
            base = channels[j] if width is None else int(width)
            out = max(1, round(base * width_mult))
            self.widths.append(out)
            factors = [s // strides[j] for s in strides[j:]]
            self.idas.append(IDAUp(in_chs[j:], out, factors, node_kernel, trainable_up, border))
            in_chs[j + 1 :] = [out] * (n - 1 - j)  # y replaces levels j+1..n-1, at level j's stride
            strides[j + 1 :] = [strides[j]] * (n - 1 - j)
        self.out_channels = out

    def forward(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        levels = list(levels)
        n = len(levels)
        if n != len(self.idas) + 1:
            raise ValueError(f"DLAUp built for {len(self.idas) + 1} levels, got {n}")
        for t, ida in enumerate(self.idas):
            j = n - 2 - t
            levels[j + 1 :] = ida(levels[j:])
        return levels[-1]


class SkipDecoder(nn.Module):
    """Shallow aggregation: every level projected once, upsampled in one step, merged once.

    The baseline that isolates what DLA-Up claims.  DLA (arXiv 1707.06484, §3
    and Fig. 2(b) vs (c); the abstract calls skip connections shallow because
    they fuse in one step) contrasts *shallow* skip aggregation -- FCN-8s, U-Net,
    FPN: each level joins the output once -- with *iterative deep* aggregation,
    where shallow levels are merged progressively, through a chain of nodes, with
    ever deeper ones.  This decoder is the shallow side with every other factor
    held equal to :class:`DLAUp`: the same backbone levels (stride ``r_0 =
    down_ratio`` and deeper), the same 1×1 conv-BN-ReLU projection to a common
    width, the same upsampler (:class:`BilinearConvTranspose2d`, bilinear at
    initialisation and trained, as DLA-Up's ``IDAUp`` in ucbdrive/dla
    ``dla_up.py``), the same output stride ``r_0`` -- only the merge differs::

        P_i = ReLU(BN(W_i ∗ x_i))                   (1×1 projection to width w, every level)
        u_i = U_{r_i / r_0}(P_i)                    (one step to stride r_0; U_1 = identity)
        y   = N(u_0, u_1, …, u_L)                   (one node over the concatenation)

    ``N`` is :class:`~dla_repro.models.aggregation.AggregationNode` (conv with
    ``node_kernel``, 3×3 as DLA-Up's dense nodes, → BN → ReLU).  ``width`` is free;
    :func:`skip_width` picks the one that gives the decoder (with its classifier)
    DLA-Up's parameter count on the same backbone, so a difference between the two
    is not a difference in size.  The compute is not matched: all of this
    decoder's weights act at stride ``r_0``, while most of DLA-Up's act on the deep,
    coarse levels.
    """

    def __init__(
        self,
        channels: Sequence[int],
        reductions: Sequence[int],
        width: int,
        node_kernel: int = 3,
        trainable_up: bool = True,
        border: str = "zero",
    ):
        super().__init__()
        _check_kernel(node_kernel)
        n = len(channels)
        if n < 2 or len(reductions) != n:
            raise ValueError(f"SkipDecoder needs ≥ 2 levels with one stride each, got {list(channels)} / "
                             f"{list(reductions)}")
        _check_strides(reductions)
        if not isinstance(width, int) or isinstance(width, bool) or width < 1:
            raise ValueError(f"width must be a positive integer, got {width!r}")
        factors = [r // reductions[0] for r in reductions]
        self.width, self.factors = width, factors
        self.proj = nn.ModuleList(ConvNormAct(c, width, 1) for c in channels)
        self.up = nn.ModuleList(bilinear_upsampler(width, f, trainable_up, border) for f in factors)
        self.node = AggregationNode(n * width, width, kernel_size=node_kernel)
        self.out_channels = width

    def forward(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(levels) != len(self.proj):
            raise ValueError(f"SkipDecoder built for {len(self.proj)} levels, got {len(levels)}")
        size = levels[0].shape[-2:]
        return self.node([_fit(up(proj(x)), size) for x, proj, up in zip(levels, self.proj, self.up)])

    def extra_repr(self) -> str:
        return f"width={self.width}, factors={self.factors}"


class FCNDecoder(nn.Module):
    """The no-aggregation ablation: the deepest level only (the head then upsamples it in one step)."""

    def __init__(self, channels: Sequence[int]):
        super().__init__()
        self.out_channels = int(channels[-1])

    def forward(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        return levels[-1]


# --------------------------------------------------------------- matching parameter counts
def _head_params(decoder: nn.Module, num_classes: int) -> int:
    """Parameters of a decoder and its 1×1 classifier (``out_channels × K`` weights + ``K`` biases)."""
    return count_params(decoder) + (decoder.out_channels + 1) * num_classes


def closest_width(count: Callable[[int], int], target: int, lo: int = 1) -> int:
    """The integer ``w ≥ lo`` whose ``count(w)`` is closest to ``target`` (ties: the smaller ``w``).

    ``count`` must be non-decreasing in ``w`` (a parameter count as a function of a
    width).  Doubling brackets the target, bisection finds the first ``w`` with
    ``count(w) ≥ target``; that one or its predecessor is the closest.
    """
    if lo < 1:
        raise ValueError(f"lo must be ≥ 1, got {lo}")
    hi = lo
    while count(hi) < target:
        lo, hi = hi, 2 * hi
        if hi > 1 << 20:
            raise ValueError(f"no width up to {hi} reaches {target:,} parameters")
    while lo < hi:  # first w in [lo, hi] with count(w) >= target
        mid = (lo + hi) // 2
        if count(mid) >= target:
            hi = mid
        else:
            lo = mid + 1
    if hi > 1 and abs(count(hi - 1) - target) <= abs(count(hi) - target):
        return hi - 1
    return hi


def _on_meta(build: Callable[[], nn.Module]) -> nn.Module:
    """``build()`` with parameters on the meta device: shapes only, no memory, no initialisation cost."""
    with torch.device("meta"):
        return build()


def skip_width(
    channels: Sequence[int],
    reductions: Sequence[int],
    num_classes: int,
    node_kernel: int = 3,
    *,
    reference_width: Optional[int] = None,
    trainable_up: bool = True,
    border: str = "zero",
) -> int:
    """The :class:`SkipDecoder` width whose parameter count is closest to DLA-Up's on the same levels.

    Counts the decoder *and* its 1×1 classifier for ``num_classes`` on both sides
    (the backbone is shared, so this is the whole segmenter's difference).  The
    reference is :class:`DLAUp` as the paper uses it -- 3×3 nodes, step widths
    ``reference_width`` (``None``: the official per-level widths) -- with the same
    upsamplers.  With integer widths the counts agree to about one width step: on
    the tiny and the full DLA-34 within 1 % (``tests/test_dla_up.py``), far inside
    the ±5 % the segmentation and boundary claims declare (``Claim.matched``).
    """
    target = _head_params(_on_meta(lambda: DLAUp(channels, reductions, 3, reference_width, trainable_up, border)),
                          num_classes)

    def count(w: int) -> int:
        return _head_params(_on_meta(lambda: SkipDecoder(channels, reductions, w, node_kernel, trainable_up, border)),
                            num_classes)

    return closest_width(count, target)


def matched_width_mult(
    channels: Sequence[int],
    reductions: Sequence[int],
    num_classes: int,
    node_kernel: int,
    *,
    width: Optional[int] = None,
    trainable_up: bool = True,
    border: str = "zero",
) -> float:
    """The ``width_mult`` that gives a ``node_kernel`` DLA-Up the parameter count of the 3×3-node one.

    A 1×1 node has a ninth of a 3×3 node's weights, so the 1×1-node ablation is a
    much smaller decoder at the same widths; scaling every step's width by one
    factor keeps its layout and restores its size.  The factor is ``w / b`` with
    ``b`` the output step's base width (``width``, or the shallowest level's
    channels) and ``w`` the integer output width whose count (decoder + classifier)
    is closest to the 3×3 DLA-Up's with the same ``width``.
    """
    target = _head_params(_on_meta(lambda: DLAUp(channels, reductions, 3, width, trainable_up, border)), num_classes)
    base = channels[0] if width is None else int(width)

    def count(w: int) -> int:
        return _head_params(_on_meta(lambda: DLAUp(channels, reductions, node_kernel, width, trainable_up, border,
                                                   width_mult=w / base)), num_classes)

    return closest_width(count, target) / base


class DLAUpSegmenter(BaseSegmenter):
    """DLA-Up / shallow skip / FCN on the segmentation contract: ``decoder`` then the 1×1 ``classifier``.

    ``decoder`` (:class:`DLAUp`, :class:`SkipDecoder` or :class:`FCNDecoder`) reads the levels from
    stride ``down_ratio`` on (``first_level`` is the first of them);
    ``classifier`` is a 1×1 conv initialised ``W ~ N(0, 2/C)`` with C the decoder
    width (He, fan-in; the official ``DLASeg.fc`` of ucbdrive/dla ``dla_up.py``
    uses the fan-out, ``N(0, 2/K)`` with K classes) and zero bias.  ``forward`` returns ``N×num_classes×H×W`` logits (:class:`BaseSegmenter`:
    padded to the backbone's stride, bilinear to the input size);
    ``forward_scores`` the classifier's scores at the decoder's stride
    (``down_ratio`` for ``ida_up`` and ``skip``, the backbone's last stride for ``fcn``).  The
    final upsampling is fixed bilinear (``F.interpolate``); the official code uses
    a frozen bilinear transposed conv, which is the same away from the border.
    """

    def __init__(
        self,
        backbone: nn.Module,
        decoder: nn.Module,
        num_classes: int,
        first_level: int,
        down_ratio: int,
        decoder_name: str,
        head: str = "segmentation",
        *,
        aux_head: Optional[nn.Module] = None,
        aux_index: Optional[int] = None,
    ):
        levels = range(first_level, len(level_info(backbone)[0]))
        super().__init__(backbone, tuple(levels), aux_head=aux_head, aux_index=aux_index)
        self.decoder = decoder
        self.first_level, self.down_ratio = first_level, down_ratio
        self.decoder_name, self.head_name, self.num_classes = decoder_name, head, num_classes
        self.classifier = nn.Conv2d(decoder.out_channels, num_classes, 1)
        nn.init.normal_(self.classifier.weight, std=math.sqrt(2.0 / decoder.out_channels))
        nn.init.zeros_(self.classifier.bias)

    def decode(self, inputs: List[torch.Tensor]) -> torch.Tensor:
        return self.decoder(inputs)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)

    def extra_repr(self) -> str:
        return f"decoder={self.decoder_name!r}, head={self.head_name!r}, down_ratio={self.down_ratio}"


def create_dla_up(
    backbone: Union[str, nn.Module] = "dlarepro_dla34",
    num_classes: Optional[int] = None,
    *,
    down_ratio: int = 2,
    decoder: str = "ida_up",
    node_kernel: int = 3,
    head: str = "segmentation",
    width: Optional[int] = None,
    trainable_up: bool = True,
    border: str = "zero",
    width_mult: float = 1.0,
    match_params: bool = False,
    tiny: bool = False,
    pretrained: bool = False,
    **backbone_kwargs: Any,
) -> DLAUpSegmenter:
    """DLA-Up (``decoder="ida_up"``), the shallow skip decoder (``"skip"``) or FCN-32s (``"fcn"``) on a backbone.

    ``backbone``: a timm model name (``"dlarepro_dla34"``, timm's ``"dla34"``, …;
    built by :func:`~.backbones.create_backbone` with ``tiny``, ``pretrained``
    and ``backbone_kwargs``; ``tiny=True`` is the CPU-sized ``dlarepro_*`` DLA)
    or a module with ``feature_info`` returning a list of levels.
    ``down_ratio``: stride of the prediction (2, 4 or 8; must be one of the
    backbone's level strides); levels shallower than it are not used.
    ``head="boundary"``: 2 classes (``num_classes`` may be omitted or 2), trained
    with a positive-class weight in the loss (official: 10, see the module
    docstring).  Logits come back at the input resolution.

    Widths: ``ida_up`` -- ``width`` (``None``: official per-level widths) times
    ``width_mult``; ``match_params=True`` replaces ``width_mult`` by
    :func:`matched_width_mult`, the factor that gives this DLA-Up (e.g. with
    ``node_kernel=1``) the parameter count of the 3×3-node one.  ``skip`` --
    ``width`` is the common width of :class:`SkipDecoder`; ``None`` (the default)
    picks it by :func:`skip_width`, matched to the paper's DLA-Up (3×3 nodes,
    official widths) on this backbone; its merge node has ``node_kernel``.
    ``fcn`` has no width.
    """
    if decoder not in DECODERS:
        raise ValueError(f"decoder={decoder!r}: expected one of {', '.join(DECODERS)}")
    if head not in HEADS:
        raise ValueError(f"head={head!r}: expected one of {', '.join(HEADS)}")
    if head == "boundary":
        if num_classes not in (None, 2):
            raise ValueError(f"the boundary head has 2 classes (background, edge), got num_classes={num_classes}")
        num_classes = 2
    if num_classes is None or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if down_ratio not in (2, 4, 8):
        raise ValueError(f"down_ratio must be 2, 4 or 8, got {down_ratio!r}")
    _check_kernel(node_kernel)
    if isinstance(backbone, str):
        backbone = create_backbone(backbone, tiny=tiny, pretrained=pretrained, **backbone_kwargs)
    elif backbone_kwargs or pretrained or tiny:
        raise ValueError("backbone_kwargs, tiny and pretrained apply only to a backbone given by name")
    info = getattr(backbone, "feature_info", None)
    if info is None or not hasattr(info, "reduction"):
        raise ValueError(f"{type(backbone).__name__} has no feature_info; build it with features_only=True")
    channels, reductions = level_info(backbone)
    if down_ratio not in reductions:
        raise ValueError(f"down_ratio={down_ratio} is not a level stride of the backbone (strides {reductions})")
    first = reductions.index(down_ratio)
    chs, strides = channels[first:], reductions[first:]
    if (match_params or width_mult != 1.0) and decoder != "ida_up":
        raise ValueError(f"width_mult and match_params apply to decoder='ida_up', not {decoder!r}")
    if match_params and width_mult != 1.0:
        raise ValueError("match_params=True chooses width_mult; do not pass both")
    if decoder == "fcn":
        dec: nn.Module = FCNDecoder(chs)
    elif len(chs) < 2:
        raise ValueError(f"{decoder} needs ≥ 2 levels at stride ≥ {down_ratio}, backbone has strides {reductions}")
    elif decoder == "skip":
        w = skip_width(chs, strides, num_classes, node_kernel, trainable_up=trainable_up, border=border) \
            if width is None else width
        dec = SkipDecoder(chs, strides, w, node_kernel, trainable_up, border)
    else:
        if match_params:
            width_mult = matched_width_mult(chs, strides, num_classes, node_kernel, width=width,
                                            trainable_up=trainable_up, border=border)
        dec = DLAUp(chs, strides, node_kernel, width, trainable_up, border, width_mult=width_mult)
    return DLAUpSegmenter(backbone, dec, num_classes, first, down_ratio, decoder, head)
