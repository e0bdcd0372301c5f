"""What a model's forward may return: a main output, optionally with auxiliary outputs.

Most models return one tensor (logits). A model trained with deep supervision --
e.g. GALD (arXiv 1909.07229) adds an auxiliary FCN head on the third stage,
weighted 0.4 in the loss in its official code -- returns the main output together with its
auxiliary outputs::

    return ModelOutput(logits, {"aux": aux_logits})   # or the plain tuple (logits, {"aux": aux_logits})

The engine's tasks compute ``loss(main) + Σ_k w_k · loss(aux_k)`` with the task's
``aux_weights``; metrics, evaluation and every "run the model and look at its
prediction" helper use the main output only (``main_output``). A model usually
returns the auxiliary outputs in training mode only.

A leaf module: models return these without importing the engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

__all__ = ["ModelOutput", "split_output", "main_output"]


class ModelOutput(NamedTuple):
    """``(main, aux)``: the output that is scored, and named auxiliary outputs (training signals only)."""

    main: Any
    aux: Mapping[str, Any] = {}  # never mutated; a fresh dict per model call is fine too


def split_output(output: Any) -> tuple[Any, Mapping[str, Any]]:
    """``(main, aux)`` of a model's output.

    A ``ModelOutput`` or a 2-tuple whose second item is a mapping is split; anything
    else (a tensor, a list of feature maps, …) is the main output with no auxiliaries.
    """
    if isinstance(output, tuple) and len(output) == 2 and isinstance(output[1], Mapping):
        return output[0], output[1]
    return output, {}


def main_output(output: Any) -> Any:
    """The output metrics and predictions use (``split_output(output)[0]``)."""
    return split_output(output)[0]
