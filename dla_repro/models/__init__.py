"""Models built on timm blocks; the DLA classifiers register as ``dlarepro_*`` in timm.

Importing this package is cheap: it does not import torch or timm (importing
timm takes seconds, and most ``dla_repro`` commands never need it).  The
``dlarepro_*`` models reach timm's registry at the moment timm itself is
imported -- whichever comes first:

* timm already imported → :mod:`.dla` is imported (and registers) right now;
* otherwise a one-shot import hook runs :mod:`.dla` right after ``import timm``
  finishes, so ``import dla_repro; import timm; timm.create_model("dlarepro_dla34")``
  works in either order.

Names such as ``DLA``, ``create_backbone`` or ``create_dla_up`` resolve lazily
from the submodules (``from dla_repro.models import DLA`` imports :mod:`.dla`):

==================  ==============================================================
``blocks``          residual blocks (basic, bottleneck, split)
``aggregation``     aggregation node, HDA tree, IDA stage
``dla``             the DLA classifiers, registered in timm as ``dlarepro_*``
``dla_checkpoint``  loading timm's / the authors' DLA weights
``dla_family``      the aggregation ablation at matched parameter count
``backbones``       ``features_only`` backbones, the tiny DLA (``tiny=True``)
``segmentation``    the segmentation contract: backbone → decoder/head (+ aux head)
``dla_up``          DLA-Up and the FCN decoder on that contract
``parsenet``        ParseNet's L2 normalisation, global context and head
``gald``            GALD's GA modules, LD, block and head (+ FCN baseline)
``plain``           the plain calibration baseline
``resizing``        DynOPool and Shape Adaptor, a differentiable MACs estimate, pool surgery
==================  ==============================================================
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

_EXPORTS = {
    "blocks": ("BasicBlock", "Bottleneck", "BLOCKS", "make_block", "bottleneck_width"),
    "aggregation": ("AggregationNode", "Tree", "SequentialStage"),
    "dla": ("AGGREGATION_MODES", "VARIANTS", "DLA", "create_dla"),
    "dla_checkpoint": ("PretrainedWeightsError", "CheckpointReport", "load_dla_checkpoint"),
    "dla_family": ("FamilyMember", "matched_family"),
    "backbones": ("TINY_CHANNELS", "create_backbone"),
    "segmentation": ("BaseSegmenter", "Segmenter", "FCNHead", "level_info", "feature_channels", "select_levels"),
    "dla_up": ("BilinearConvTranspose2d", "bilinear_upsampler", "IDAUp", "DLAUp", "DLAUpSegmenter", "create_dla_up"),
    "parsenet": ("L2NormScale", "ParseNetHead", "ParseNetSegmenter", "create_parsenet", "vgg16_fcn"),
    "gald": ("GA_TYPES", "build_ga", "GlobalAggregation", "LocalDistribution", "GALDBlock", "GALDHead",
             "build_gald_segmenter"),
    "resizing": ("DynOPool", "ShapeAdaptor", "differentiable_macs", "WithGMACsLoss", "replace_resizing"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    if name in _EXPORTS:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_WHERE) | set(_EXPORTS))


def register() -> None:
    """Register the ``dlarepro_*`` models in timm now (imports timm)."""
    importlib.import_module(f"{__name__}.dla")


class _RegisterAfterTimm(importlib.abc.Loader):
    """Wraps timm's own loader: executes timm, then registers our models."""

    def __init__(self, inner: importlib.abc.Loader):
        self._inner = inner

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module) -> None:
        module.__loader__ = self._inner  # leave no trace of the wrapper on timm
        if module.__spec__ is not None:
            module.__spec__.loader = self._inner
        self._inner.exec_module(module)
        register()

    def __getattr__(self, name):
        return getattr(self._inner, name)


class _TimmImportHook(importlib.abc.MetaPathFinder):
    """One-shot finder for the top-level ``timm`` package (removes itself on first use)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "timm":
            return None
        _remove_hook()
        spec = importlib.util.find_spec("timm")
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisterAfterTimm(spec.loader)
        return spec


def _remove_hook() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _TimmImportHook)]


if "timm" in sys.modules:
    register()
elif not any(isinstance(f, _TimmImportHook) for f in sys.meta_path):
    sys.meta_path.insert(0, _TimmImportHook())
