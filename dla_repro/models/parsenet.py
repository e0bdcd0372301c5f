"""ParseNet (Liu, Rabinovich, Berg, arXiv 1506.04579): global context and L2 normalisation for FCNs.

Pieces (§3), each a module attachable to any backbone's feature map:

* :class:`L2NormScale` -- per position, normalise over channels, then a learned
  per-channel scale γ (§3.3)::

      x̂ = x / sqrt(Σ_c x_c² + eps),      y_c = γ_c · x̂_c

* global context -- global average pooling ``g = mean_{h,w} x`` (``N×C×1×1``),
  then "unpooling": ``g`` tiled back to ``H×W`` (§3.1);
* fusion (:class:`ParseNetHead`, §3.2) -- ``none`` (local features only: the FCN
  baseline), ``early`` (concatenate local and unpooled global features, one
  classifier), ``late`` (a classifier per branch, the score maps summed); each
  branch optionally L2-normalised with its own γ.

Early vs late with a linear (1×1) classifier: ``W·[a; b] = W_a·a + W_b·b``, so
the two compute the same family of functions and get the same weight gradients
-- late merely has two bias terms where early has one; the paper's remark that
"both perform about the same with normalisation" cannot fail there.  With
``hidden_channels`` each classifier is a small MLP of 1×1 convolutions
(``conv → ReLU → conv``), the analogue of the paper's fc layers, which fusion
comes before (early) or after (late) (§3.2): early then lets local and global
features interact non-linearly, late stays a sum of one function of each
(additively separable), so the two are different functions.
``late_hidden_channels`` sets the width of late fusion's per-branch MLPs
(:func:`late_hidden_channels` matches the head's parameter count to early's).
Late fusion classifies the 1×1 pooled vector and broadcasts the score: the
same as classifying the unpooled map.

Multi-layer fusion (§3.3, the paper's conv4_3 + fc7 + pool6): ``in_channels``
a sequence of widths, one per fused level, shallowest first; the deeper maps
are resized bilinearly to the finest grid and fused with the shallower ones
and with the global context of the last (deepest) level -- features whose
scales can differ by a large factor, which is what the L2 layer is for.
:func:`without_batchnorm` removes a backbone's batch norms (VGG-16, the
paper's backbone, has none): then those scales are not equalised upstream.

:class:`ParseNetSegmenter` is ParseNet on the segmentation contract
(:mod:`.segmentation`): a backbone (a ``features_only`` timm model, last level
by default, or any module returning a feature map), an optional neck, the
head, and the logits upsampled bilinearly to the input size.
:func:`create_parsenet` builds one from a timm model name (``resnet18``,
``dlarepro_dla34``, …); :func:`vgg16_fcn` is the FCN-32s-style VGG-16 baseline
(timm's ``vgg16`` up to pool5, then fc6/fc7 as convolutions) that ParseNet
builds on.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import l2norm_scale
from .backbones import create_backbone
from .segmentation import Segmenter, feature_channels, level_info

__all__ = [
    "FUSIONS",
    "L2NormScale",
    "global_context",
    "ParseNetHead",
    "late_hidden_channels",
    "ParseNetSegmenter",
    "LastLevel",
    "without_batchnorm",
    "create_parsenet",
    "vgg16_fcn",
    "vgg_fc_neck",
    "load_vgg_fc_weights",
]

FUSIONS = ("none", "early", "late")


class L2NormScale(nn.Module):
    """ParseNet's L2 normalisation layer: ``y_c = γ_c · x_c / sqrt(Σ_c' x_c'² + eps)`` per position.

    Forward, for each position of ``x`` (``N×C×H×W``)::

        x̂ = x / ‖x‖,   ‖x‖ = sqrt(Σ_c x_c² + eps)      (eps = 1e-10)
        y_c = γ_c · x̂_c

    as the official Caffe layer (weiliu89/caffe ``src/caffe/layers/normalize_layer.cpp``).

    Backward (what :mod:`dla_repro.kernels` implements; autograd gives the same)::

        ∂l/∂x̂ = ∂l/∂y · γ
        ∂l/∂x = ∂l/∂x̂ · (I/‖x‖ − x xᵀ/‖x‖³)
        ∂l/∂γ_c = Σ_positions ∂l/∂y_c · x̂_c

    γ is the parameter ``scale`` (``C`` values, all ``init_scale`` at start: 10
    for fc7/pool6 in ParseNet, 20 for conv4_3 in SSD).  ``learn_scale=False``
    freezes it (the fixed-γ ablation); it stays in the state dict either way.
    Runs the Triton kernel on CUDA, the PyTorch reference elsewhere
    (``DLA_REPRO_KERNELS`` overrides).
    """

    def __init__(self, channels: int, init_scale: float = 10.0, eps: float = 1e-10, learn_scale: bool = True):
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be positive, got {channels}")
        self.eps = float(eps)
        self.scale = nn.Parameter(torch.full((channels,), float(init_scale)), requires_grad=learn_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return l2norm_scale(x, self.scale, self.eps)

    def extra_repr(self) -> str:
        return f"{self.scale.shape[0]}, eps={self.eps:g}, learn_scale={self.scale.requires_grad}"


def global_context(x: torch.Tensor) -> torch.Tensor:
    """Global average pooling, ``N×C×H×W → N×C×1×1`` (unpool by broadcasting: ``g.expand_as(x)``)."""
    return x.mean(dim=(2, 3), keepdim=True)


def _classifier(in_channels: int, num_classes: int, hidden_channels: Optional[int], dropout: float) -> nn.Sequential:
    layers = []
    if hidden_channels:
        layers += [nn.Conv2d(in_channels, hidden_channels, 1), nn.ReLU(inplace=True)]
        in_channels = hidden_channels
    if dropout:
        layers.append(nn.Dropout2d(dropout))
    layers.append(nn.Conv2d(in_channels, num_classes, 1))
    return nn.Sequential(*layers)


def _classifier_params(in_channels: int, num_classes: int, hidden: int) -> int:
    if not hidden:
        return (in_channels + 1) * num_classes
    return (in_channels + 1) * hidden + (hidden + 1) * num_classes


def late_hidden_channels(in_channels: Union[int, Sequence[int]], num_classes: int, hidden_channels: int) -> int:
    """The width of late fusion's per-branch MLPs that makes its head as large as early fusion's.

    Early: one MLP ``(ΣC + C_last) → hidden_channels → K``; late: one MLP
    ``C_i → h → K`` per fused level and one for the global vector.  Returns the
    ``h`` whose late head has the parameter count nearest to early's (0 when
    ``hidden_channels`` is 0: linear classifiers, whose counts differ only by
    the extra biases).
    """
    if not hidden_channels:
        return 0
    widths = [in_channels] if isinstance(in_channels, int) else [int(c) for c in in_channels]
    branches = widths + [widths[-1]]  # every level, then the global vector
    early = _classifier_params(sum(branches), num_classes, hidden_channels)
    per_unit = sum(c + 1 for c in branches) + len(branches) * num_classes  # parameters per hidden unit of late
    fixed = len(branches) * num_classes  # the output biases
    best = max(1, round((early - fixed) / per_unit))
    return min((h for h in (best - 1, best, best + 1) if h >= 1),
               key=lambda h: abs(sum(_classifier_params(c, num_classes, h) for c in branches) - early))


class ParseNetHead(nn.Module):
    """Local features + global context → class scores (at the finest fused grid's stride).

    ============  ===============================================================
    ``fusion``    scores
    ============  ===============================================================
    ``none``      ``cls(n_l(x))``                         (FCN baseline)
    ``early``     ``cls([n_l(x); unpool(n_g(gap(x)))])``   (one classifier)
    ``late``      ``cls_l(n_l(x)) + unpool(cls_g(n_g(gap(x))))``
    ============  ===============================================================

    ``n_l``, ``n_g`` are :class:`L2NormScale` (separate γ, both initialised to
    ``init_scale``) when ``l2norm=True``, identities otherwise.  ``cls`` is a
    1×1 conv (optionally preceded by a 1×1 conv of ``hidden_channels`` + ReLU,
    and dropout); late fusion's per-branch classifiers use
    ``late_hidden_channels`` (default: ``hidden_channels``).  Classifier weights
    start at N(0, 0.01²), biases at 0.

    ``in_channels`` a sequence (multi-layer fusion): the widths of the fused
    levels, shallowest first; ``x`` is then the list of those maps.  Each
    shallower level ``s`` gets its own norm ``n_s`` (and, late, its own
    classifier); the deeper maps are resized bilinearly to the finest one; the
    global context is the pooled last level.  ``none`` then concatenates the
    levels without global context.  :meth:`fused_features` returns what is
    fused, before normalisation (to measure its scales).
    """

    def __init__(
        self,
        in_channels: Union[int, Sequence[int]],
        num_classes: int,
        fusion: str = "early",
        l2norm: bool = True,
        init_scale: float = 10.0,
        learn_scale: bool = True,
        eps: float = 1e-10,
        hidden_channels: Optional[int] = None,
        dropout: float = 0.0,
        late_hidden_channels: Optional[int] = None,
    ):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion={fusion!r}: expected one of {', '.join(FUSIONS)}")
        widths = (int(in_channels),) if isinstance(in_channels, int) else tuple(int(c) for c in in_channels)
        if not widths:
            raise ValueError("in_channels: at least one level")
        self.fusion = fusion
        self.level_channels = widths
        self.in_channels = channels = widths[-1]
        self.num_classes = num_classes
        late_hidden = hidden_channels if late_hidden_channels is None else late_hidden_channels

        def norm(c: int) -> nn.Module:
            return L2NormScale(c, init_scale, eps, learn_scale) if l2norm else nn.Identity()

        self.local_norm = norm(channels)
        self.global_norm = norm(channels) if fusion != "none" else None
        if fusion == "late":
            self.classifier = _classifier(channels, num_classes, late_hidden, dropout)
            self.global_classifier = _classifier(channels, num_classes, late_hidden, dropout)
        else:
            width = sum(widths) + (channels if fusion == "early" else 0)
            self.classifier = _classifier(width, num_classes, hidden_channels, dropout)
            self.global_classifier = None
        # shallower levels (multi-layer fusion); empty for one level, so its state dict is unchanged
        self.shallow_norms = nn.ModuleList(norm(c) for c in widths[:-1])
        self.shallow_classifiers = nn.ModuleList(
            _classifier(c, num_classes, late_hidden, dropout) for c in widths[:-1] if fusion == "late")
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    @property
    def fused_names(self) -> List[str]:
        """One name per entry of :meth:`fused_features`."""
        names = [f"shallow {i} ({c} ch)" for i, c in enumerate(self.level_channels[:-1])]
        names.append(f"local ({self.in_channels} ch)")
        if self.fusion != "none":
            names.append(f"global (GAP, {self.in_channels} ch)")
        return names

    @property
    def fused_norms(self) -> List[nn.Module]:
        """The normalisation of each entry of :meth:`fused_features` (identities without L2)."""
        out = list(self.shallow_norms) + [self.local_norm]
        return out + [self.global_norm] if self.fusion != "none" else out

    def _levels(self, x: Union[torch.Tensor, Sequence[torch.Tensor]]) -> List[torch.Tensor]:
        levels = [x] if isinstance(x, torch.Tensor) else list(x)
        if len(levels) != len(self.level_channels):
            raise ValueError(f"the head fuses {len(self.level_channels)} levels, got {len(levels)}")
        return levels

    def fused_features(self, x: Union[torch.Tensor, Sequence[torch.Tensor]]) -> List[torch.Tensor]:
        """What the head fuses, before normalisation: each level's map on the finest grid, then the
        global vector (``N×C×1×1``, pooled from the last level) unless ``fusion="none"``."""
        levels = self._levels(x)
        size = max((f.shape[-2:] for f in levels), key=lambda s: s[0] * s[1])
        maps = [f if f.shape[-2:] == size else F.interpolate(f, size=tuple(size), mode="bilinear",
                                                               align_corners=False) for f in levels]
        return maps + [global_context(levels[-1])] if self.fusion != "none" else maps

    def forward(self, x: Union[torch.Tensor, Sequence[torch.Tensor]]) -> torch.Tensor:
        if isinstance(x, torch.Tensor) and len(self.level_channels) == 1:  # one level: as it always ran
            local = self.local_norm(x)
            if self.fusion == "none":
                return self.classifier(local)
            g = self.global_norm(global_context(x))  # N×C×1×1; normalising before unpooling is the same
            if self.fusion == "early":
                return self.classifier(torch.cat([local, g.expand_as(local)], dim=1))
            return self.classifier(local) + self.global_classifier(g)  # broadcast = unpool the scores
        feats = [n(f) for n, f in zip(self.fused_norms, self.fused_features(x))]
        maps = feats[:len(self.level_channels)]
        if self.fusion == "none":
            return self.classifier(torch.cat(maps, dim=1))
        g = feats[-1]
        if self.fusion == "early":
            return self.classifier(torch.cat(maps + [g.expand_as(maps[-1])], dim=1))
        scores = self.classifier(maps[-1]) + self.global_classifier(g)
        for cls, m in zip(self.shallow_classifiers, maps[:-1]):
            scores = scores + cls(m)
        return scores

    def extra_repr(self) -> str:
        levels = f", levels={self.level_channels}" if len(self.level_channels) > 1 else ""
        return f"fusion={self.fusion!r}{levels}"


class ParseNetSegmenter(Segmenter):
    """ParseNet on the segmentation contract: ``backbone → level(s) feature_index → neck → head``.

    ``backbone`` may return a tensor, a list/tuple of levels (timm
    ``features_only``) or a dict; ``feature_index`` picks the level (default the
    last, the coarsest), or several levels (a sequence: multi-layer fusion, the
    head gets the list).  ``neck`` (optional) runs on what was picked before the
    head (e.g. VGG's fc6/fc7; :class:`LastLevel` runs it on the last of several
    levels).  ``forward`` returns ``N×K×H×W`` logits at input size;
    ``forward_scores`` the head's scores at its stride.  The input is not
    padded to the backbone's stride (ParseNet as it always ran here): a side that
    is not a multiple of it is rounded by the backbone's strided layers.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, neck: Optional[nn.Module] = None,
                 feature_index: Union[int, Sequence[int]] = -1):
        super().__init__(backbone, head, neck=neck, in_index=feature_index, pad_to_stride=False)

    @property
    def feature_index(self) -> Union[int, tuple]:
        """The backbone level(s) the neck/head read (``in_index`` of the contract)."""
        return self.in_index


class LastLevel(nn.Module):
    """Runs ``module`` on the last of a list of levels and passes the others through (a neck for
    multi-layer fusion: VGG's fc6/fc7 on pool5, conv4_3 as it is); on a tensor, ``module(x)``."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x):
        if isinstance(x, torch.Tensor):
            return self.module(x)
        return [*x[:-1], self.module(x[-1])]


def without_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every batch norm removed, in place: a ``BatchNorm2d`` becomes an identity, a
    norm-with-activation (timm's ``BatchNormAct2d``) its activation (and drop) alone.

    For a backbone whose feature scales are not equalised by batch statistics
    (VGG-16, the paper's backbone, has no batch norm).  The convolutions keep
    their initialisation (and stay without bias where they had none).
    """
    from timm.layers import BatchNormAct2d

    for name, child in module.named_children():
        if isinstance(child, BatchNormAct2d):
            setattr(module, name, nn.Sequential(child.drop, child.act))
        elif isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, nn.Identity())
        else:
            without_batchnorm(child)
    return module


def create_parsenet(
    backbone: Union[str, nn.Module] = "resnet18",
    num_classes: int = 21,
    *,
    fusion: str = "early",
    l2norm: bool = True,
    init_scale: float = 10.0,
    learn_scale: bool = True,
    hidden_channels: Optional[int] = None,
    late_hidden_channels: Optional[int] = None,
    dropout: float = 0.0,
    feature_index: Union[int, Sequence[int]] = -1,
    in_channels: Optional[Union[int, Sequence[int]]] = None,
    neck: Optional[nn.Module] = None,
    batchnorm: bool = True,
    tiny: bool = False,
    pretrained: bool = False,
    **backbone_kwargs,
) -> ParseNetSegmenter:
    """A ParseNet head on a backbone: a timm model name (built ``features_only``) or a module.

    A name is built by :func:`~.backbones.create_backbone` with ``tiny``,
    ``pretrained`` and ``backbone_kwargs`` (e.g. ``out_indices=(0, 1, 2, 3)``;
    ``tiny=True`` for the CPU-sized ``dlarepro_*`` DLA).  ``neck`` runs between
    the level and the head; ``in_channels`` (the head's input width) defaults to
    the chosen level's channels from ``feature_info``, and must be given with a
    neck that changes the width.  ``feature_index`` a sequence: multi-layer
    fusion of those levels (``in_channels`` then one width per level).
    ``batchnorm=False`` removes the backbone's batch norms
    (:func:`without_batchnorm`).  ``fusion="none", l2norm=False`` is the plain
    FCN baseline on that backbone.
    """
    if isinstance(backbone, str):
        backbone = create_backbone(backbone, tiny=tiny, pretrained=pretrained, **backbone_kwargs)
    elif backbone_kwargs or pretrained or tiny:
        raise ValueError("backbone_kwargs, tiny and pretrained apply only to a backbone given by name")
    if not batchnorm:
        without_batchnorm(backbone)
    if in_channels is None:
        if isinstance(feature_index, int):
            in_channels = feature_channels(backbone, feature_index)
        else:
            in_channels = [feature_channels(backbone, i) for i in feature_index]
    head = ParseNetHead(
        in_channels,
        num_classes,
        fusion=fusion,
        l2norm=l2norm,
        init_scale=init_scale,
        learn_scale=learn_scale,
        hidden_channels=hidden_channels,
        dropout=dropout,
        late_hidden_channels=late_hidden_channels,
    )
    return ParseNetSegmenter(backbone, head, neck=neck, feature_index=feature_index)


def vgg_fc_neck(in_channels: int = 512, fc_channels: int = 4096, fc6_kernel: int = 7, dropout: float = 0.5) -> nn.Sequential:
    """FCN's convolutionised fc6/fc7: ``k×k conv (same padding) → ReLU → drop → 1×1 conv → ReLU → drop``."""
    if fc6_kernel % 2 == 0:
        raise ValueError(f"fc6_kernel must be odd (same padding), got {fc6_kernel}")
    return nn.Sequential(
        nn.Conv2d(in_channels, fc_channels, fc6_kernel, padding=fc6_kernel // 2),
        nn.ReLU(inplace=True),
        nn.Dropout2d(dropout),
        nn.Conv2d(fc_channels, fc_channels, 1),
        nn.ReLU(inplace=True),
        nn.Dropout2d(dropout),
    )


def load_vgg_fc_weights(neck: nn.Sequential, pre_logits: nn.Module) -> None:
    """Copy timm VGG's ``pre_logits`` (``fc1`` k×k, ``fc2`` 1×1: the ImageNet fc6/fc7) into a :func:`vgg_fc_neck`."""
    for dst, src in ((neck[0], pre_logits.fc1), (neck[3], pre_logits.fc2)):
        if dst.weight.shape != src.weight.shape:
            raise ValueError(f"fc weight shapes differ: neck {tuple(dst.weight.shape)} vs timm {tuple(src.weight.shape)}")
        with torch.no_grad():
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)


def vgg16_fcn(
    num_classes: int = 21,
    *,
    fc_channels: int = 4096,
    fc6_kernel: int = 7,
    dropout: float = 0.5,
    pretrained: bool = False,
    shallow_levels: Sequence[int] = (),
    **head_kwargs: Any,
) -> ParseNetSegmenter:
    """FCN-32s-style VGG-16: timm ``vgg16`` to pool5 (stride 32), fc6/fc7 as convs, then a ParseNet head.

    ``head_kwargs`` are those of :func:`create_parsenet` (``fusion``, ``l2norm``,
    ``init_scale``, ``learn_scale``, ``hidden_channels``); the defaults here,
    ``fusion="none", l2norm=False``, are the FCN baseline, and ParseNet is
    ``fusion="early", l2norm=True`` on the fc7 features.  ``dropout`` is that of
    fc6/fc7.  With the FCN fc6 (7×7, 4096 channels) the theoretical receptive
    field of fc7 is 404×404 (ParseNet, arXiv 1506.04579, §3.1).
    ``pretrained=True`` loads timm's ImageNet weights, fc6/fc7 included (needs
    the weights reachable; not on the machines this is built on).  The paper's
    own baseline used a reduced fc6/fc7 (DeepLab-style; its size is not
    given): ``fc_channels``/``fc6_kernel`` change it.  ``shallow_levels``:
    backbone levels fused with fc7 (multi-layer fusion; level 3 is conv4_3 at
    stride 8), fc7 upsampled to their grid.
    """
    backbone = create_backbone("vgg16", pretrained=pretrained)
    neck = vgg_fc_neck(feature_channels(backbone), fc_channels, fc6_kernel, dropout)
    if pretrained:
        import timm

        load_vgg_fc_weights(neck, timm.create_model("vgg16", pretrained=True).pre_logits)
    head_kwargs = {"fusion": "none", "l2norm": False, **head_kwargs}
    if shallow_levels:
        channels = level_info(backbone)[0]
        index = (*[int(i) for i in shallow_levels], len(channels) - 1)
        widths = [channels[i] for i in index[:-1]] + [fc_channels]
        return create_parsenet(backbone, num_classes, neck=LastLevel(neck), in_channels=widths, feature_index=index,
                               **head_kwargs)
    return create_parsenet(backbone, num_classes, neck=neck, in_channels=fc_channels, **head_kwargs)
