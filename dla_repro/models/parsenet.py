"""ParseNet (Liu, Rabinovich, Berg, 2015): global context and L2 normalisation for FCNs.

Pieces (PAPERS.md §2), each a module attachable to any backbone's feature map:

* :class:`L2NormScale` -- per position, normalise over channels, then a learned
  per-channel scale γ::

      x̂ = x / sqrt(Σ_c x_c² + eps),      y_c = γ_c · x̂_c

* global context -- global average pooling ``g = mean_{h,w} x`` (``N×C×1×1``),
  then "unpooling": ``g`` tiled back to ``H×W``;
* fusion (:class:`ParseNetHead`) -- ``none`` (local features only: the FCN
  baseline), ``early`` (concatenate local and unpooled global features, one
  classifier), ``late`` (a classifier per branch, the score maps summed); each
  branch optionally L2-normalised with its own γ.

Early vs late with a linear (1×1) classifier: ``W·[a; b] = W_a·a + W_b·b``, so
the two compute the same family of functions and get the same weight gradients
-- late merely has two bias terms where early has one; the paper's remark that
"both perform about the same with normalisation" is expected there.  ``hidden_channels`` puts a
1×1 conv + ReLU before each classifier so the fused features interact
non-linearly (early) or not (late).  Late fusion classifies the 1×1 pooled
vector and broadcasts the score: the same as classifying the unpooled map.

:class:`ParseNetSegmenter` runs a backbone (a ``features_only`` timm model,
last level by default, or any module returning a feature map), an optional
neck, the head, and upsamples the logits bilinearly to the input size.
:func:`create_parsenet` builds one from a timm model name (``resnet18``,
``dlarepro_dla34`` after ``import dla_repro``, …); :func:`vgg16_fcn` is the
FCN-32s-style VGG-16 baseline (timm's ``vgg16`` up to pool5, then fc6/fc7 as
convolutions) that ParseNet builds on.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import l2norm_scale

__all__ = [
    "FUSIONS",
    "L2NormScale",
    "global_context",
    "ParseNetHead",
    "ParseNetSegmenter",
    "select_feature",
    "feature_channels",
    "create_parsenet",
    "vgg16_fcn",
    "vgg_fc_neck",
    "load_vgg_fc_weights",
]

FUSIONS = ("none", "early", "late")


class L2NormScale(nn.Module):
    """ParseNet's L2 normalisation layer: ``y_c = γ_c · x_c / sqrt(Σ_c' x_c'² + eps)`` per position.

    Forward, for each position of ``x`` (``N×C×H×W``)::

        x̂ = x / ‖x‖,   ‖x‖ = sqrt(Σ_c x_c² + eps)      (eps = 1e-10, as the official Caffe layer)
        y_c = γ_c · x̂_c

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


class ParseNetHead(nn.Module):
    """Local features + global context → class scores (stride of the feature map).

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
    and dropout).  Classifier weights start at N(0, 0.01²), biases at 0.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        fusion: str = "early",
        l2norm: bool = True,
        init_scale: float = 10.0,
        learn_scale: bool = True,
        eps: float = 1e-10,
        hidden_channels: Optional[int] = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion={fusion!r}: expected one of {', '.join(FUSIONS)}")
        self.fusion = fusion
        self.in_channels = in_channels
        self.num_classes = num_classes

        def norm() -> nn.Module:
            return L2NormScale(in_channels, init_scale, eps, learn_scale) if l2norm else nn.Identity()

        self.local_norm = norm()
        self.global_norm = norm() if fusion != "none" else None
        width = 2 * in_channels if fusion == "early" else in_channels
        self.classifier = _classifier(width, num_classes, hidden_channels, dropout)
        self.global_classifier = _classifier(in_channels, num_classes, hidden_channels, dropout) if fusion == "late" else None
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local = self.local_norm(x)
        if self.fusion == "none":
            return self.classifier(local)
        g = self.global_norm(global_context(x))  # N×C×1×1; normalising before unpooling is the same
        if self.fusion == "early":
            return self.classifier(torch.cat([local, g.expand_as(local)], dim=1))
        return self.classifier(local) + self.global_classifier(g)  # broadcast = unpool the scores

    def extra_repr(self) -> str:
        return f"fusion={self.fusion!r}"


def select_feature(features: Any, index: int = -1) -> torch.Tensor:
    """The feature map at ``index`` of a backbone's output (a tensor, a list/tuple, or a dict of levels)."""
    if isinstance(features, torch.Tensor):
        return features
    if isinstance(features, dict):
        features = list(features.values())
    if isinstance(features, (list, tuple)) and features:
        return features[index]
    raise TypeError(f"backbone returned {type(features).__name__}; expected a tensor, a list/tuple or a dict of tensors")


def feature_channels(backbone: nn.Module, index: int = -1) -> int:
    """Channels of level ``index`` from a timm model's ``feature_info`` (``features_only`` or not)."""
    info = getattr(backbone, "feature_info", None)
    if info is None:
        raise ValueError(f"{type(backbone).__name__} has no feature_info; pass in_channels explicitly")
    if hasattr(info, "channels"):
        return int(info.channels()[index])
    return int(info[index]["num_chs"])


class ParseNetSegmenter(nn.Module):
    """``backbone → select level → neck → head → bilinear upsampling to the input size``.

    ``backbone`` may return a tensor, a list/tuple of levels (timm
    ``features_only``) or a dict; ``feature_index`` picks the level (default the
    last, the coarsest).  ``neck`` (optional) runs on that level before the head
    (e.g. VGG's fc6/fc7).  ``forward`` returns ``N×K×H×W`` logits at input size;
    ``forward_scores`` the head's scores at feature stride.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, neck: Optional[nn.Module] = None, feature_index: int = -1):
        super().__init__()
        self.backbone = backbone
        self.neck = neck if neck is not None else nn.Identity()
        self.head = head
        self.feature_index = feature_index

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(select_feature(self.backbone(x), self.feature_index))

    def forward_scores(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.forward_scores(x)
        return F.interpolate(scores, size=x.shape[-2:], mode="bilinear", align_corners=False)


def create_parsenet(
    backbone: Union[str, nn.Module] = "resnet18",
    num_classes: int = 21,
    *,
    fusion: str = "early",
    l2norm: bool = True,
    init_scale: float = 10.0,
    learn_scale: bool = True,
    hidden_channels: Optional[int] = None,
    dropout: float = 0.0,
    feature_index: int = -1,
    in_channels: Optional[int] = None,
    pretrained: bool = False,
    **backbone_kwargs,
) -> ParseNetSegmenter:
    """A ParseNet head on a backbone: a timm model name (built ``features_only``) or a module.

    ``in_channels`` defaults to the chosen level's channels from ``feature_info``.
    ``backbone_kwargs`` go to ``timm.create_model`` (e.g. ``channels=…`` for a
    tiny ``dlarepro_*`` model).  ``fusion="none", l2norm=False`` is the plain
    FCN baseline on that backbone.
    """
    if isinstance(backbone, str):
        import timm

        backbone = timm.create_model(backbone, pretrained=pretrained, features_only=True, **backbone_kwargs)
    elif backbone_kwargs or pretrained:
        raise ValueError("backbone_kwargs and pretrained apply only to a backbone given by name")
    if in_channels is None:
        in_channels = feature_channels(backbone, feature_index)
    head = ParseNetHead(
        in_channels,
        num_classes,
        fusion=fusion,
        l2norm=l2norm,
        init_scale=init_scale,
        learn_scale=learn_scale,
        hidden_channels=hidden_channels,
        dropout=dropout,
    )
    return ParseNetSegmenter(backbone, head, feature_index=feature_index)


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
    fusion: str = "none",
    l2norm: bool = False,
    init_scale: float = 10.0,
    learn_scale: bool = True,
    hidden_channels: Optional[int] = None,
    fc_channels: int = 4096,
    fc6_kernel: int = 7,
    dropout: float = 0.5,
    pretrained: bool = False,
) -> ParseNetSegmenter:
    """FCN-32s-style VGG-16: timm ``vgg16`` to pool5 (stride 32), fc6/fc7 as convs, then a ParseNet head.

    Defaults (``fusion="none", l2norm=False``) are the FCN baseline; ParseNet
    is ``fusion="early", l2norm=True`` on the fc7 features.  With the FCN
    fc6 (7×7, 4096 channels) the theoretical receptive field of fc7 is 404×404.
    ``pretrained=True`` loads timm's ImageNet weights, fc6/fc7 included (needs
    the weights reachable; not on the machines this is built on).  The paper's
    own baseline used a reduced fc6/fc7 (a DeepLab-style variant; PAPERS.md
    records no details): ``fc_channels``/``fc6_kernel`` change it.
    """
    import timm

    backbone = timm.create_model("vgg16", pretrained=pretrained, features_only=True)
    neck = vgg_fc_neck(feature_channels(backbone), fc_channels, fc6_kernel, dropout)
    if pretrained:
        load_vgg_fc_weights(neck, timm.create_model("vgg16", pretrained=True).pre_logits)
    head = ParseNetHead(
        fc_channels,
        num_classes,
        fusion=fusion,
        l2norm=l2norm,
        init_scale=init_scale,
        learn_scale=learn_scale,
        hidden_channels=hidden_channels,
    )
    return ParseNetSegmenter(backbone, head, neck=neck)
