"""Backbones for dense prediction: any timm model, ``features_only``, and the one tiny DLA.

A segmenter (:mod:`.segmentation`) reads its levels from a ``features_only``
timm model: level ``l`` is the backbone's output at stride ``r_l`` with ``C_l``
channels, both listed by ``feature_info``.  :func:`create_backbone` builds one by
name -- ours (``dlarepro_dla34``, … after ``import dla_repro``) or timm's own
(``dla34``, ``resnet18``, ``vgg16``, …).

The experiments run on CPUs with a narrow DLA-34: the ``dlarepro_dla34`` levels
and tree depths with the widths :data:`TINY_CHANNELS` (each level ½ … ⅛ of the
paper's ``16, 32, 64, 128, 256, 512``).  ``tiny=True`` is the one way to ask for
it; it applies to the ``dlarepro_*`` DLAs, whose ``channels`` are a config key
(Deep Layer Aggregation, arXiv 1707.06484, §4.1: the variants differ only in
depth, width and block).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from torch import nn

__all__ = ["TINY_CHANNELS", "create_backbone"]

#: Widths of the six levels of the tiny (CPU-sized) ``dlarepro_*`` DLA.
TINY_CHANNELS = (8, 16, 32, 64, 128, 256)


def create_backbone(
    name: str,
    *,
    tiny: bool = False,
    out_indices: Optional[Sequence[int]] = None,
    pretrained: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """``timm.create_model(name, features_only=True, ...)``: a backbone whose forward returns its levels.

    Args:
        name: a timm model name; the ``dlarepro_*`` ones are registered first.
        tiny: the narrow DLA (:data:`TINY_CHANNELS`); only for ``dlarepro_*`` names.
        out_indices: the levels returned (timm's default: all of them).
        pretrained: timm's pretrained weights (must be reachable; ``dlarepro_*`` ship none).
        kwargs: model config overrides for timm (e.g. ``channels=...`` of a ``dlarepro_*`` DLA).
    """
    if tiny:
        if not name.startswith("dlarepro_"):
            raise ValueError(f"tiny=True narrows a dlarepro_* DLA (channels {TINY_CHANNELS}); got {name!r}")
        if "channels" in kwargs:
            raise ValueError(f"tiny=True sets channels={TINY_CHANNELS}; do not pass channels as well")
        kwargs["channels"] = TINY_CHANNELS
    elif name.endswith("_tiny"):
        raise ValueError(f"{name!r}: ask for a tiny backbone with tiny=True on a dlarepro_* name")
    if out_indices is not None:
        kwargs["out_indices"] = tuple(out_indices)
    import timm

    from . import register

    register()  # the dlarepro_* names in timm's registry
    return timm.create_model(name, pretrained=pretrained, features_only=True, **kwargs)
