"""The segmentation contract: backbone → decoder/head (+ auxiliary head) → logits at input size.

Every segmenter of the project is the same pipeline (the encoder-decoder of
mmsegmentation, ``mmseg/models/segmentors/encoder_decoder.py``, without its
config machinery); only the decoder and the head differ::

    x' = pad(x)                          bottom/right zeros to a multiple of the stride r
    L  = backbone(x')                    levels L_0 … L_n  (a ``features_only`` timm model)
    z  = decode(select(L, in_index))     decoder / neck: one feature map at stride s
    S  = head(z)                         K class scores at stride s
    y  = crop_{H×W}(bilinear(S, size(x')))   logits at the input size

and, with an auxiliary head (GALD, arXiv 1909.07229: an FCN head on an earlier
stage, official code lxtGH/GALD-DGCNet ``libs/models/GALDNet.py``), in training
mode only, ``y_aux = crop(bilinear(aux_head(L[aux_index])))`` as well.  The
loss weight of the auxiliary logits (GALD: 0.4) belongs to the task, not here.

:class:`BaseSegmenter` owns the shared part -- input-level selection, padding
to the stride, the final bilinear upsampling, the auxiliary head and the form of
the output -- written once.  A subclass says what ``decode`` and ``forward_head``
are and registers their modules under the names its checkpoints use:

=========================================  ===========================  ======================
segmenter                                  decode (neck / decoder)      head
=========================================  ===========================  ======================
:class:`Segmenter` (generic; ParseNet)     ``neck`` (VGG fc6/fc7, …)    ``head`` (ParseNet, …)
:class:`~.dla_up.DLAUpSegmenter`           ``decoder`` (DLA-Up / FCN)   ``classifier`` (1×1)
=========================================  ===========================  ======================

Output form: ``forward`` returns the logits ``N×K×H×W``; a model with an
auxiliary head in training mode returns ``(logits, {"aux": aux_logits})``, the
form the engine's tasks accept.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import ConvNormAct

__all__ = [
    "InIndex",
    "level_info",
    "feature_channels",
    "select_levels",
    "BaseSegmenter",
    "Segmenter",
    "FCNHead",
]

#: Which backbone levels the decoder reads: one level (an int, the decoder gets a
#: tensor) or several (a sequence of ints, the decoder gets a list).
InIndex = Union[int, Sequence[int]]


def level_info(backbone: nn.Module) -> Tuple[List[int], List[int]]:
    """``(channels, strides)`` of the levels a backbone returns, from its ``feature_info``.

    Accepts timm's ``FeatureInfo`` (``features_only`` models) and the list of dicts
    (``num_chs``, ``reduction``) of a timm model built without it.
    """
    info = getattr(backbone, "feature_info", None)
    if info is None:
        raise ValueError(f"{type(backbone).__name__} has no feature_info; build it with features_only=True")
    if hasattr(info, "channels"):
        return [int(c) for c in info.channels()], [int(r) for r in info.reduction()]
    return [int(i["num_chs"]) for i in info], [int(i["reduction"]) for i in info]


def feature_channels(backbone: nn.Module, index: int = -1) -> int:
    """Channels of level ``index`` of a backbone's ``feature_info`` (``features_only`` or not)."""
    if getattr(backbone, "feature_info", None) is None:
        raise ValueError(f"{type(backbone).__name__} has no feature_info; pass in_channels explicitly")
    return level_info(backbone)[0][index]


def select_levels(features: Any, index: InIndex = -1) -> Union[torch.Tensor, List[torch.Tensor]]:
    """Level ``index`` (an int: a tensor) or levels ``index`` (a sequence: a list) of a backbone's output.

    The output may be the list/tuple of a ``features_only`` timm model, a dict of
    levels, or a single tensor (a backbone with one output: returned as it is).
    """
    if isinstance(features, torch.Tensor):
        return features
    if isinstance(features, dict):
        features = list(features.values())
    if not isinstance(features, (list, tuple)) or not features:
        raise TypeError(
            f"backbone returned {type(features).__name__}; expected a tensor, a list/tuple or a dict of tensors"
        )
    if isinstance(index, int):
        return features[index]
    return [features[i] for i in index]


def _resize(scores: torch.Tensor, size: Sequence[int], crop: Sequence[int]) -> torch.Tensor:
    """Bilinear upsampling of ``scores`` to ``size`` (the padded input), cropped to ``crop`` (the input)."""
    h, w = crop
    return F.interpolate(scores, size=tuple(size), mode="bilinear", align_corners=False)[..., :h, :w]


class BaseSegmenter(nn.Module, ABC):
    """``backbone → select levels → decode → head → bilinear to the input size`` (module docstring).

    Args:
        backbone: returns its levels (a ``features_only`` timm model) or one tensor.
        in_index: the level(s) ``decode`` reads (:data:`InIndex`).
        pad_to_stride: zero-pad the input at the bottom/right to a multiple of the
            backbone's total stride ``r`` (the largest stride in ``feature_info``)
            and crop the logits back, so that an input such as CamVid's 360×480 at
            ``r = 32`` keeps every level aligned (0 is the mean colour after
            normalisation).  Without it, a size that is not a multiple of ``r`` is
            rounded by the backbone's strided layers.
        aux_head: scores from level ``aux_index`` (training only), or ``None``.
        aux_index: the level the auxiliary head reads (an int).

    Subclasses implement :meth:`decode` (selected levels → features) and
    :meth:`forward_head` (features → scores) and register their modules.
    """

    def __init__(
        self,
        backbone: nn.Module,
        in_index: InIndex = -1,
        *,
        pad_to_stride: bool = True,
        aux_head: Optional[nn.Module] = None,
        aux_index: Optional[int] = None,
    ):
        super().__init__()
        if (aux_head is None) != (aux_index is None):
            raise ValueError("an auxiliary head needs aux_index (the level it reads), and aux_index needs a head")
        self.backbone = backbone
        self.in_index = in_index if isinstance(in_index, int) else tuple(int(i) for i in in_index)
        self.pad_to_stride = pad_to_stride
        self.stride = max(level_info(backbone)[1]) if getattr(backbone, "feature_info", None) is not None else 1
        self.aux_head, self.aux_index = aux_head, aux_index

    # --- the two parts a subclass defines --------------------------------------------
    @abstractmethod
    def decode(self, inputs: Union[torch.Tensor, List[torch.Tensor]]) -> torch.Tensor:
        """Selected level(s) → the feature map the head classifies."""

    @abstractmethod
    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Features → class scores at their own stride."""

    # --- the contract ------------------------------------------------------------------
    def levels(self, x: torch.Tensor) -> Any:
        """The backbone's output on ``x`` (all its levels)."""
        return self.backbone(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Decoded features of ``x`` (not padded), at the head's stride."""
        return self.decode(select_levels(self.levels(x), self.in_index))

    def forward_scores(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores of ``x`` (not padded) at the head's stride, before the final upsampling."""
        return self.forward_head(self.forward_features(x))

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, Tuple[torch.Tensor, Dict[str, torch.Tensor]]]:
        size = x.shape[-2:]
        if self.pad_to_stride:
            ph, pw = -size[0] % self.stride, -size[1] % self.stride
            if ph or pw:
                x = F.pad(x, (0, pw, 0, ph))
        levels = self.levels(x)
        logits = _resize(self.forward_head(self.decode(select_levels(levels, self.in_index))), x.shape[-2:], size)
        if self.aux_index is None or not self.training:
            return logits
        aux = _resize(self.aux_head(select_levels(levels, self.aux_index)), x.shape[-2:], size)
        return logits, {"aux": aux}


class Segmenter(BaseSegmenter):
    """The generic segmenter: ``neck`` (optional) then ``head`` on the selected level(s).

    ``neck`` defaults to ``nn.Identity`` (no parameters, no state_dict keys);
    ``head`` maps the neck's output to class scores.  ParseNet (its head, and VGG's
    fc6/fc7 as the neck) and GALD (its head, an :class:`FCNHead` as ``aux_head``)
    are segmenters of this kind.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        *,
        neck: Optional[nn.Module] = None,
        in_index: InIndex = -1,
        pad_to_stride: bool = True,
        aux_head: Optional[nn.Module] = None,
        aux_index: Optional[int] = None,
    ):
        super().__init__(backbone, in_index, pad_to_stride=pad_to_stride, aux_head=aux_head, aux_index=aux_index)
        self.neck = neck if neck is not None else nn.Identity()
        self.head = head

    def decode(self, inputs: Union[torch.Tensor, List[torch.Tensor]]) -> torch.Tensor:
        return self.neck(inputs)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)


class FCNHead(nn.Sequential):
    """FCN head: ``num_convs × (k×k conv → BN → ReLU) → Dropout2d → 1×1 conv`` to ``num_classes`` scores.

    GALD's auxiliary head on ResNet's layer3 (lxtGH/GALD-DGCNet
    ``libs/models/GALDNet.py``): one 3×3 conv 1024 → 512, BN, ReLU,
    ``Dropout2d(0.1)``, 1×1 classifier.  The convolutions keep PyTorch's default
    initialisation.
    """

    def __init__(self, in_channels: int, num_classes: int, channels: int = 512, num_convs: int = 1,
                 kernel_size: int = 3, dropout: float = 0.1):
        layers: List[nn.Module] = []
        for _ in range(num_convs):
            layers.append(ConvNormAct(in_channels, channels, kernel_size))
            in_channels = channels
        layers += [nn.Dropout2d(dropout), nn.Conv2d(in_channels, num_classes, 1)]
        super().__init__(*layers)
