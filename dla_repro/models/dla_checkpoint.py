"""Load timm's or the original authors' DLA classifier weights into a :class:`~.dla.DLA`.

Our DLA keeps the module names of the official code (ucbdrive/dla ``dla.py``)
and of timm (``timm/models/dla.py``), so both their checkpoints load tensor for
tensor; :func:`load_dla_checkpoint` handles the few places where the official
layout differs and says what it did in a :class:`CheckpointReport`.

A file that cannot be read, or weights that do not fit the model, raise
:class:`PretrainedWeightsError` (the engine's ``CheckpointError`` is another
thing: a training checkpoint written by ``fit``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Mapping, Union

import torch
from torch import nn

from . import aggregation as agg

__all__ = ["PretrainedWeightsError", "CheckpointReport", "load_dla_checkpoint"]


class PretrainedWeightsError(RuntimeError):
    """DLA weights (timm's or the authors') that cannot be read or do not fit the model."""


@dataclass
class CheckpointReport:
    """What :func:`load_dla_checkpoint` did besides loading tensors one-to-one."""

    source: str
    loaded: int = 0
    ignored: List[str] = field(default_factory=list)  # in the checkpoint, deliberately not loaded
    converted: List[str] = field(default_factory=list)  # reshaped to fit (e.g. a Linear fc)
    filled: List[str] = field(default_factory=list)  # absent from the checkpoint, kept from the model

    def __str__(self) -> str:
        parts = [f"{self.loaded} tensors from {self.source}"]
        for name in ("ignored", "converted", "filled"):
            keys = getattr(self, name)
            if keys:
                parts.append(f"{name} {len(keys)}: {', '.join(keys)}")
        return "; ".join(parts)


_UNUSED_PROJECT = re.compile(r"^(?P<tree>.+)\.project\.")


def load_dla_checkpoint(
    model: nn.Module, source: Union[str, Path, Mapping[str, torch.Tensor]], strict: bool = True
) -> CheckpointReport:
    """Load timm's or the original authors' (ucbdrive/dla) DLA weights into ``model``.

    ``source`` is a path (read with ``torch.load(..., weights_only=True)``) or a
    state dict; a ``{"state_dict": ...}`` / ``{"model": ...}`` wrapper and a
    ``module.`` prefix are undone.  Differences of the official layout handled:

    * ``<tree>.project.*`` of trees with ``levels > 1``: the official code builds
      these projections but never uses them -- ignored and reported;
    * ``fc.weight`` stored as a Linear ``[classes, C]`` weight: reshaped to the
      1x1 conv ``[classes, C, 1, 1]`` (the official ``fc`` already is a conv);
    * BatchNorm ``num_batches_tracked`` absent (pre-0.4 PyTorch): kept from the model.

    Anything else that does not match is an error when ``strict``.
    """
    if isinstance(source, Mapping):
        name, state = "<state_dict>", dict(source)
    else:
        path = Path(source).expanduser()
        name = str(path)
        if not path.is_file():
            raise FileNotFoundError(f"DLA checkpoint not found: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # unpickling, zip and EOF errors all mean the same to the user
            raise PretrainedWeightsError(f"cannot read DLA checkpoint {path}: {type(err).__name__}: {err}") from err
    for wrapper in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainedWeightsError(f"{name} does not hold a state dict of tensors")
    state = dict(state)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}

    own = model.state_dict()
    report = CheckpointReport(source=name)
    for key in [k for k in state if k not in own]:
        match = _UNUSED_PROJECT.match(key)
        if match:
            try:
                tree = model.get_submodule(match["tree"])
            except AttributeError:
                tree = None
            if isinstance(tree, agg.Tree) and tree.levels > 1:
                report.ignored.append(key)
                del state[key]
    fc = state.get("fc.weight")
    if fc is not None and "fc.weight" in own and fc.ndim == 2 and own["fc.weight"].ndim == 4:
        state["fc.weight"] = fc[:, :, None, None]
        report.converted.append("fc.weight")
    for key in own:
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = own[key]
            report.filled.append(key)
    try:
        model.load_state_dict(state, strict=strict)
    except RuntimeError as err:
        raise PretrainedWeightsError(f"checkpoint {name} does not fit the model: {err}") from err
    report.loaded = sum(1 for k in state if k in own) - len(report.filled)
    return report
