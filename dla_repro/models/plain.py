"""The plain calibration baseline: a chain of convolutions, nothing aggregated.

Used once, to set the difficulty of the synthetic data (``dla_repro.experiments.calibration``),
and as the "no aggregation, no context" reference point of the notebooks.

    stem   : 3x3 conv, stride 1 → BN → ReLU                        (stride 1)
    stage i: 3x3 conv, stride 2 → BN → ReLU, then (depth − 1) ×
             3x3 conv → BN → ReLU                                  (stride 2^(i+1))
    head   : classification — global average pool → 1x1 conv (``fc``)
             segmentation   — 1x1 conv score layer on the last stage,
                              bilinearly upsampled to the input size
                              (FCN-32s style: one coarse score map, no skips)

No residual connections, no skip connections, no aggregation nodes, no global
context branch: every later model of the project adds one of these to a network
of this kind.  With the defaults (4 stages, strides to 16) at 64×64 the score map
of the segmentation head is 4×4.

``timm.create_model("dlarepro_plain", num_classes=..., task=...)`` works once this
module has been imported.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import ConvNormAct, create_classifier
from timm.models import register_model
from torch import nn

__all__ = ["PlainNet", "plain_net"]

TASKS = ("classification", "segmentation")


class PlainNet(nn.Module):
    """Plain conv net with a classification or an FCN-32s-style segmentation head.

    Args:
        num_classes: classes of the head.
        task: ``"classification"`` (logits N×C) or ``"segmentation"`` (logits N×C×H×W
            at the input's size).
        in_chans: input channels.
        channels: width of the stem (``channels[0]``) and of each stage (all of them).
        depth: convolutions per stage (the first one has stride 2).
        drop_rate: dropout before the classifier (classification only).
    """

    def __init__(
        self,
        num_classes: int = 16,
        task: str = "classification",
        in_chans: int = 3,
        channels: Sequence[int] = (16, 32, 64, 128),
        depth: int = 2,
        drop_rate: float = 0.0,
    ):
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"task={task!r}: expected one of {TASKS}")
        if depth < 1 or not channels:
            raise ValueError("need depth ≥ 1 and at least one stage")
        self.task, self.num_classes = task, num_classes
        self.channels, self.depth, self.drop_rate = tuple(channels), depth, drop_rate
        self.stem = ConvNormAct(in_chans, channels[0], 3)
        stages, prev = [], channels[0]
        self.feature_info = [{"num_chs": channels[0], "reduction": 1, "module": "stem"}]
        for i, width in enumerate(channels):
            layers = [ConvNormAct(prev, width, 3, stride=2)]
            layers += [ConvNormAct(width, width, 3) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*layers))
            self.feature_info.append({"num_chs": width, "reduction": 2 ** (i + 1), "module": f"stages.{i}"})
            prev = width
        self.stages = nn.Sequential(*stages)
        self.num_features = prev
        self.reset_classifier(num_classes)

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        if self.task == "classification":
            self.global_pool, self.fc = create_classifier(self.num_features, num_classes, use_conv=True)
            self.head_drop = nn.Dropout(self.drop_rate)
            self.flatten = nn.Flatten(1)
        else:
            self.fc = nn.Conv2d(self.num_features, num_classes, 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Logits from the last feature map; ``size`` is the output size of a segmentation head."""
        if self.task == "classification":
            return self.flatten(self.fc(self.head_drop(self.global_pool(x))))
        score = self.fc(x)
        if size is not None and score.shape[-2:] != tuple(size):
            score = F.interpolate(score, size=size, mode="bilinear", align_corners=False)
        return score

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x), size=x.shape[-2:])


@register_model
def dlarepro_plain(pretrained: bool = False, **kwargs) -> PlainNet:
    """The plain baseline in timm's registry (no pretrained weights exist)."""
    if pretrained:
        raise ValueError("dlarepro_plain has no pretrained weights")
    kwargs.pop("pretrained_cfg", None)
    kwargs.pop("pretrained_cfg_overlay", None)
    kwargs.pop("cache_dir", None)
    return PlainNet(**kwargs)


def plain_net(num_classes: int, task: str = "classification", **kwargs) -> PlainNet:
    """``PlainNet(num_classes, task, **kwargs)``."""
    return PlainNet(num_classes=num_classes, task=task, **kwargs)
