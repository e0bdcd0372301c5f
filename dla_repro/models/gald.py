"""GALD (Li et al., BMVC 2019, arXiv 1909.07229): Global Aggregation then Local Distribution.

The claim (§1, §3): a global aggregation (GA) module -- non-local, PSP, ASPP,
CGNL, … -- spreads the context of large patterns over every position and so
oversmooths small ones (boundaries, thin and small objects); a local
distribution (LD) step re-distributes the aggregated feature per channel and
per position with a mask ``M`` that encodes each pattern's spatial extent.

Pieces, each a module of this file::

    D    = ReLU(BN(dwconv_{3×3, s2, p0}(F)))                down-sampling before GA
    U    = up(GA(D))                      to F's size        :class:`GlobalAggregation`
    M    = σ(up(φ_θ(U)))                  φ_θ: ``n`` × dwconv-BN-ReLU   :class:`LocalDistribution`
    GALD = 2U + U ⊙ M                      the released code ("a simple residual design")
         =  U ⊙ M + F                      the paper's figure, ``F_GA ⊙ M ⊕ F``

``up`` is bilinear with ``align_corners=True`` and the down-sampling convs use
no padding -- both as released (lxtGH/GALD-DGCNet ``libs/models/GALDNet.py``,
``GALDBlock`` and ``LocalAttenModule``).  The released block runs GA on the
stride-2 down-sampled feature and returns ``LD(U) + U`` with
``LD(U) = U + U ⊙ M``; the paper's Fig. 2 draws neither the down-sampling nor
the double ``U``: ``form`` switches the output between the two
(:class:`GALDBlock`).  The tail ``up → σ → combine`` goes through the kernel op
``gald_ld_tail`` when :mod:`dla_repro.kernels` has it, and through
:func:`_ld_tail_reference` (the same contract in PyTorch) otherwise.

GA modules (:data:`GA_TYPES`, :func:`build_ga`), each ``N×C×h×w → N×C×h×w``:
``gap`` (ParseNet's global average pooling), ``psp`` (pyramid pooling),
``nonlocal`` (embedded Gaussian), ``cgnl`` (compact generalised non-local,
what the released GALD uses).  :class:`GALDHead` is the released head on the
segmentation contract (:mod:`.segmentation`); with ``ga=None`` it is the FCN
baseline (the same head without the block).  :func:`build_gald_segmenter`
puts it on a ``features_only`` backbone with the auxiliary FCN head.

Down-sampling convs on maps smaller than their 3×3 kernel (CPU-sized inputs:
at 64 px a stride-8 feature is 8×8 and LD's third conv sees 1×1) are zero-padded
up to the kernel size, so they return 1×1 instead of failing; the released
code never meets such maps (97×97 features at its 769 px crops), and maps of
3×3 or more are computed exactly as released.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import ConvNormAct

from ..kernels import get_op
from .backbones import create_backbone
from .parsenet import global_context
from .segmentation import FCNHead, Segmenter, feature_channels

__all__ = [
    "GA_TYPES",
    "LD_FORMS",
    "GlobalAveragePooling",
    "PyramidPooling",
    "NonLocal",
    "CGNL",
    "build_ga",
    "DownConv",
    "GlobalAggregation",
    "LocalDistribution",
    "GALDBlock",
    "GALDHead",
    "build_gald_segmenter",
]

#: Output forms of :class:`GALDBlock` with LD: the released code's and the paper's figure's.
LD_FORMS = ("released", "paper")


def _up(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize with ``align_corners=True`` (the released GALD code's choice everywhere)."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


# --------------------------------------------------------------------------- GA modules
class GlobalAveragePooling(nn.Module):
    """GA by global average pooling, fused as ParseNet's early fusion (arXiv 1506.04579, §3.1–3.2)::

        g = (1/hw) Σ_{i} x_i                       N×C×1×1   (:func:`~.parsenet.global_context`)
        y = ReLU(BN(W · [x ; unpool(g)]))          W: 1×1 conv 2C → C, no bias

    ``unpool`` tiles ``g`` over the ``h×w`` grid; the concatenation is ParseNet's
    fusion of local and global features, and ``W`` projects the ``2C`` channels
    back to ``C`` so that the module has the GA interface (the same
    concatenate-then-project as :class:`PyramidPooling` with its single bin of
    1, but with no convolution before unpooling).  ParseNet's L2 normalisation
    is not used: the head's 3×3 conv + BN before the block already puts the
    features on one scale.  No residual: ``x`` reaches ``y`` through ``W``.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.project = ConvNormAct(2 * channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([x, global_context(x).expand_as(x)], dim=1))


class PyramidPooling(nn.Module):
    """PSP's pyramid pooling module (Zhao et al., arXiv 1612.01105, §3.3) as a GA module::

        P_b = BN(W_b · avgpool_{b×b}(x))           b ∈ bins = (1, 2, 3, 6);  W_b: 1×1, C → C_b
        y   = ReLU(BN(V ∗ [up(P_1); up(P_2); up(P_3); up(P_6); x]))      V: 3×3, C + ΣC_b → C

    ``avgpool_{b×b}`` is adaptive average pooling to a ``b×b`` grid and ``up``
    bilinear (``align_corners=True``) back to ``h×w``.  The stages have BN but
    no ReLU and the pooled maps come before ``x`` in the concatenation, as in
    the PSP module of the GALD authors' code (lxtGH/GALD-DGCNet
    ``libs/models/PSPNet.py``, ``PSPModule``); its stages are 512 wide and its
    bottleneck ends in ``Dropout2d(0.1)``.  Here ``C_b = C / len(bins)`` by
    default (the PSPNet paper's 1/N reduction) and there is no dropout (a GA
    module inside the GALD head; the released head has none).
    """

    def __init__(self, channels: int, bins: Sequence[int] = (1, 2, 3, 6), stage_channels: Optional[int] = None):
        super().__init__()
        self.bins = tuple(int(b) for b in bins)
        if not self.bins:
            raise ValueError("bins: at least one")
        width = stage_channels or max(1, channels // len(self.bins))
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), ConvNormAct(channels, width, 1, apply_act=False))
            for b in self.bins)
        self.bottleneck = ConvNormAct(channels + len(self.bins) * width, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [_up(stage(x), x.shape[-2:]) for stage in self.stages]
        return self.bottleneck(torch.cat(pooled + [x], dim=1))

    def extra_repr(self) -> str:
        return f"bins={self.bins}"


class NonLocal(nn.Module):
    """Non-local block, embedded Gaussian (Wang et al., arXiv 1711.07971, §3.2–3.3)::

        f_ij = exp(θ(x_i)ᵀ φ(x_j)) / Σ_j' exp(θ(x_i)ᵀ φ(x_j'))     softmax over the positions j
        y_i  = Σ_j f_ij g(x_j)
        z_i  = BN(W y_i) + x_i

    ``θ``, ``φ``, ``g``: 1×1 convs ``C → C'`` (``C' = C/2`` by default); ``W``: 1×1
    ``C' → C`` followed by BN whose scale starts at 0 (§4.1: the block starts as
    the identity).  No sub-sampling of ``φ``/``g``: in GALD the module already
    runs on a down-sampled feature.
    """

    def __init__(self, channels: int, inter_channels: Optional[int] = None):
        super().__init__()
        inter = inter_channels or max(1, channels // 2)
        self.theta = nn.Conv2d(channels, inter, 1)
        self.phi = nn.Conv2d(channels, inter, 1)
        self.g = nn.Conv2d(channels, inter, 1)
        self.out = ConvNormAct(inter, channels, 1, bias=True, apply_act=False)
        nn.init.zeros_(self.out.bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        theta = self.theta(x).flatten(2).transpose(1, 2)  # N × hw × C'
        phi = self.phi(x).flatten(2)  # N × C' × hw
        g = self.g(x).flatten(2).transpose(1, 2)  # N × hw × C'
        attention = torch.softmax(theta @ phi, dim=-1)  # N × hw(i) × hw(j)
        y = (attention @ g).transpose(1, 2).reshape(n, -1, h, w)
        return self.out(y) + x


class CGNL(nn.Module):
    """Compact generalised non-local block, dot-product kernel, as GALD releases it.

    Yue et al., arXiv 1810.13125; the GALD code's ``SpatialCGNL``
    (lxtGH/GALD-DGCNet ``libs/models/GALDNet.py``: 8 groups, no scaling).  With
    ``θ``, ``φ``, ``g`` 1×1 convs ``C → C'`` (``C' = C/2``, no bias) whose ``C'``
    channels split into ``G`` consecutive groups ``k``::

        a_k = Σ_{c ∈ k} Σ_i φ_c(x)_i · g_c(x)_i            one scalar per group and image
        y_c = a_k · θ_c(x)                                 c ∈ k
        z   = GN_G(W_G ∗ y) + x                            W_G: grouped 1×1 conv C' → C (G groups, no bias)

    ``GN_G`` is GroupNorm with ``G`` groups (affine ``γ``, ``β``).  Note what
    this computes: ``W_G`` maps group ``k`` of ``y`` to exactly group ``k`` of
    its output, which ``GN_G`` normalises as one group, so the magnitude of
    ``a_k`` cancels and only its sign survives (up to GroupNorm's ``eps``)::

        z_k = γ_k ⊙ sign(a_k) · N(W_G ∗ θ(x))_k + β_k + x_k       N: normalisation over group k

    i.e. the global aggregate enters as one sign per group and image
    (``tests/test_gald.py`` checks it).  It is computed as released.
    """

    def __init__(self, channels: int, inter_channels: Optional[int] = None, groups: int = 8):
        super().__init__()
        inter = inter_channels or max(1, channels // 2)
        if inter % groups or channels % groups:
            raise ValueError(f"CGNL: channels ({channels}) and inter_channels ({inter}) must divide into {groups} groups")
        self.groups = groups
        self.theta = nn.Conv2d(channels, inter, 1, bias=False)
        self.phi = nn.Conv2d(channels, inter, 1, bias=False)
        self.g = nn.Conv2d(channels, inter, 1, bias=False)
        self.z = nn.Conv2d(inter, channels, 1, groups=groups, bias=False)
        self.gn = nn.GroupNorm(groups, channels)

    def aggregate(self, x: torch.Tensor) -> torch.Tensor:
        """``a``: the per-group scalars, ``N × G``."""
        n = x.shape[0]
        return (self.phi(x).reshape(n, self.groups, -1) * self.g(x).reshape(n, self.groups, -1)).sum(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta = self.theta(x)
        n = x.shape[0]
        y = (self.aggregate(x)[..., None] * theta.reshape(n, self.groups, -1)).reshape_as(theta)
        return self.gn(self.z(y)) + x

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


#: The GA modules by name; each is built as ``GA_TYPES[kind](channels, **kwargs)``.
GA_TYPES: Dict[str, Type[nn.Module]] = {
    "gap": GlobalAveragePooling,
    "psp": PyramidPooling,
    "nonlocal": NonLocal,
    "cgnl": CGNL,
}


def build_ga(kind: str, channels: int, **kwargs: Any) -> nn.Module:
    """The GA module ``kind`` (a key of :data:`GA_TYPES`) on ``channels`` channels."""
    try:
        cls = GA_TYPES[kind]
    except KeyError:
        raise ValueError(f"unknown GA module {kind!r}; expected one of {', '.join(GA_TYPES)}") from None
    return cls(channels, **kwargs)


# --------------------------------------------------------------------------- GA, LD, block
class DownConv(ConvNormAct):
    """Depthwise 3×3 stride-2 conv (no padding, with bias) → BN → ReLU, as GALD's down-sampling.

    Output side ``⌊(s − 3)/2⌋ + 1``.  A map smaller than 3 along a side is first
    zero-padded to 3 there (centred), so it gives 1 instead of an error (module
    docstring); larger maps are untouched.
    """

    def __init__(self, channels: int):
        super().__init__(channels, channels, 3, stride=2, padding=0, groups=channels, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ph, pw = max(0, 3 - x.shape[-2]), max(0, 3 - x.shape[-1])
        if ph or pw:
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        return super().forward(x)


class GlobalAggregation(nn.Module):
    """``U = up(GA(ReLU(BN(dwconv_{3×3, s2}(F)))))``: GA on the down-sampled feature, back to ``F``'s size.

    The released block runs its GA module (CGNL) on the stride-2 depthwise
    down-sampled map (``GALDBlock.down``, ≈1/16 of the image at output stride
    8) and upsamples bilinearly with ``align_corners=True``.
    """

    def __init__(self, channels: int, ga: str = "cgnl", **ga_kwargs: Any):
        super().__init__()
        self.kind = ga
        self.down = DownConv(channels)
        self.ga = build_ga(ga, channels, **ga_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _up(self.ga(self.down(x)), x.shape[-2:])

    def extra_repr(self) -> str:
        return f"ga={self.kind!r}"


class LocalDistribution(nn.Module):
    """LD's mask branch ``φ_θ``: ``n_down`` × (depthwise 3×3 stride-2 conv → BN → ReLU) on ``U``.

    ``forward(U)`` returns the mask logits at low resolution (≈1/64 of the
    image in the released code, ``LocalAttenModule``: three such convs);
    :meth:`mask` the mask itself, ``M = σ(up(φ_θ(U)))``, per channel and
    position at ``U``'s size.  The combination with ``U`` is
    :class:`GALDBlock`'s (through the kernel op).
    """

    def __init__(self, channels: int, n_down: int = 3):
        super().__init__()
        if n_down < 1:
            raise ValueError(f"n_down must be at least 1, got {n_down}")
        self.convs = nn.Sequential(*(DownConv(channels) for _ in range(n_down)))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.convs(u)

    def mask(self, u: torch.Tensor) -> torch.Tensor:
        """``M = σ(up(φ_θ(U)))`` at ``U``'s size (for visualisation; the block's output fuses this)."""
        return torch.sigmoid(_up(self(u), u.shape[-2:]))


def _ld_tail_reference(
    mask_logits: torch.Tensor, ga: torch.Tensor, feature: Optional[torch.Tensor], form: str
) -> torch.Tensor:
    """LD's tail in PyTorch: ``M = σ(up(mask_logits))``, then the block's output of ``form``.

    ``mask_logits``: ``N×C×h×w``; ``ga`` (``U``): ``N×C×H×W``; ``feature``
    (``F``, the block's input): ``N×C×H×W``, used by ``form="paper"`` only::

        released:  2U + U ⊙ M
        paper:     U ⊙ M + F

    ``up`` is bilinear to ``H×W`` with ``align_corners=True``.  The kernel op
    ``gald_ld_tail`` has this contract.
    """
    m = torch.sigmoid(_up(mask_logits, ga.shape[-2:]))
    if form == "released":
        return 2 * ga + ga * m
    if form == "paper":
        if feature is None:
            raise ValueError("form='paper' needs the block's input feature")
        return ga * m + feature
    raise ValueError(f"form={form!r}: expected one of {', '.join(LD_FORMS)}")


def _ld_tail(mask_logits: torch.Tensor, ga: torch.Tensor, feature: Optional[torch.Tensor], form: str) -> torch.Tensor:
    """The kernel op ``gald_ld_tail`` when :mod:`dla_repro.kernels` registers it, else the reference."""
    try:
        op = get_op("gald_ld_tail")
    except ValueError:
        op = _ld_tail_reference
    return op(mask_logits, ga, feature, form)


class GALDBlock(nn.Module):
    """GA, then optionally LD: the GALD block (arXiv 1909.07229, §3, Fig. 2).

    With ``U`` = :class:`GlobalAggregation` of the input ``F`` and
    ``M = σ(up(φ_θ(U)))`` (:class:`LocalDistribution`, ``ld_convs`` convs)::

        ld=False              U                  (GA only)
        form="released"       2U + U ⊙ M         released code: LD(U) = U + U ⊙ M, then LD(U) + U,
                                                 the maintainer's "simple residual design"
        form="paper"          U ⊙ M + F          the paper's figure, F_GA ⊙ M ⊕ F

    (official code: lxtGH/GALD-DGCNet ``libs/models/GALDNet.py``, ``GALDBlock``).
    ``forward(x, return_mask=True)`` returns ``(output, M)`` (``M`` is ``None``
    without LD).  ``ga_kwargs`` go to the GA module (e.g. ``groups`` of CGNL).
    """

    def __init__(self, channels: int, ga: str = "cgnl", ld: bool = True, form: str = "released",
                 ld_convs: int = 3, **ga_kwargs: Any):
        super().__init__()
        if form not in LD_FORMS:
            raise ValueError(f"form={form!r}: expected one of {', '.join(LD_FORMS)}")
        self.form = form
        self.ga = GlobalAggregation(channels, ga, **ga_kwargs)
        self.ld = LocalDistribution(channels, ld_convs) if ld else None

    def forward(self, x: torch.Tensor, return_mask: bool = False
                ) -> Union[torch.Tensor, Tuple[torch.Tensor, Optional[torch.Tensor]]]:
        u = self.ga(x)
        if self.ld is None:
            return (u, None) if return_mask else u
        logits = self.ld(u)
        out = _ld_tail(logits, u, x if self.form == "paper" else None, self.form)
        if not return_mask:
            return out
        return out, torch.sigmoid(_up(logits, u.shape[-2:]))

    def extra_repr(self) -> str:
        return f"form={self.form!r}" if self.ld is not None else "ld=False"


# --------------------------------------------------------------------------- head, segmenter
class GALDHead(nn.Module):
    """The released GALD head (``GALDHead``); ``ga=None`` is the FCN baseline (no block)::

        a = ReLU(BN(conv_{3×3}(x)))                    in → mid
        b = ReLU(BN(conv_{3×3}(block(a))))            mid → mid;  block = GALDBlock, or identity
        S = conv_{1×1}(ReLU(BN(conv_{3×3}([x ; b]))))  in + mid → mid → K

    ``x`` is the backbone's last level; the concatenation puts it first, as
    released.  Convs have no bias except the classifier's; PyTorch's default
    initialisation, as released.  :meth:`mask` gives the block's ``M`` for a
    backbone feature.
    """

    def __init__(self, in_channels: int, num_classes: int, mid: int = 512, ga: Optional[str] = "cgnl",
                 ld: bool = True, form: str = "released", ld_convs: int = 3, **ga_kwargs: Any):
        super().__init__()
        if ga is None and (ld or ga_kwargs):
            raise ValueError("ga=None is the FCN baseline (no block): pass ld=False and no GA arguments")
        self.conva = ConvNormAct(in_channels, mid, 3)
        self.block = GALDBlock(mid, ga, ld, form, ld_convs, **ga_kwargs) if ga is not None else nn.Identity()
        self.convb = ConvNormAct(mid, mid, 3)
        self.bottleneck = ConvNormAct(in_channels + mid, mid, 3)
        self.classifier = nn.Conv2d(mid, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.convb(self.block(self.conva(x)))
        return self.classifier(self.bottleneck(torch.cat([x, b], dim=1)))

    def mask(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """``M`` of the block for the backbone feature ``x`` (``None`` without a block or without LD)."""
        if not isinstance(self.block, GALDBlock):
            return None
        return self.block(self.conva(x), return_mask=True)[1]


def build_gald_segmenter(
    backbone: Union[str, nn.Module],
    num_classes: int,
    ga: Optional[str] = "cgnl",
    ld: bool = True,
    form: str = "released",
    mid: int = 512,
    aux: bool = True,
    output_stride: Optional[int] = 8,
    pretrained: bool = False,
    *,
    ld_convs: int = 3,
    ga_kwargs: Optional[Mapping[str, Any]] = None,
    aux_index: int = -2,
    **backbone_kwargs: Any,
) -> Segmenter:
    """GALD (or its FCN baseline, ``ga=None, ld=False``) on a ``features_only`` backbone.

    ``backbone`` by name is built by :func:`~.backbones.create_backbone` with
    ``pretrained``, ``output_stride`` (unless ``None``) and ``backbone_kwargs``
    (e.g. ``tiny=True`` for the CPU-sized ``dlarepro_*`` DLA).  A timm ResNet
    with ``output_stride=8`` is the released dilated backbone (layer3 dilation
    2, layer4 dilation 4; the released deep stem and multi-grid (1, 2, 4) in
    layer4 are not timm's ResNet's).  The ``dlarepro_*`` DLAs do not dilate:
    build them with ``output_stride=None`` (stride 32).

    The head (:class:`GALDHead`, ``mid`` channels; released 512) reads the last
    level; the auxiliary head (``aux=True``, training only) is an
    :class:`~.segmentation.FCNHead` (3×3 conv → BN → ReLU → Dropout2d(0.1) →
    1×1, ``mid`` wide) on level ``aux_index`` (default the second-to-last:
    ResNet's layer3, as released).  Its loss weight (0.4) is the task's
    (:class:`~dla_repro.engine.tasks.OhemSegmentationTask`).
    """
    if isinstance(backbone, str):
        if output_stride is not None:
            backbone_kwargs["output_stride"] = output_stride
        backbone = create_backbone(backbone, pretrained=pretrained, **backbone_kwargs)
    elif backbone_kwargs or pretrained:
        raise ValueError("backbone_kwargs and pretrained apply only to a backbone given by name")
    head = GALDHead(feature_channels(backbone, -1), num_classes, mid, ga, ld, form, ld_convs, **dict(ga_kwargs or {}))
    aux_head = FCNHead(feature_channels(backbone, aux_index), num_classes, channels=mid) if aux else None
    return Segmenter(backbone, head, aux_head=aux_head, aux_index=aux_index if aux else None)
