"""Notebook glue: parameters declared once, one call per figure.

A notebook declares its parameters once, in the cell tagged ``parameters``, as
annotated assignments (``epochs: int = 3``).  Python records annotated names in
the namespace's ``__annotations__``, and papermill's injected cell only rebinds
them, so the parameters the notebook ran with are recoverable from its globals::

    params = notebook.parameters(globals())          # {"epochs": 5, "lr": 0.002, ...}
    run = notebook.start(\"dla_segmentation\", params)  # the notebook's MLflow run
    config = notebook.train_config(params)           # the TrainConfig fields among them
    notebook.show(fig, "dla_segmentation_curves.png", caption)   # caption + log + show

No list of names is written twice: what the parameters cell declares is what is
logged and what configures training.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from . import tracking

__all__ = ["parameters", "start", "train_config", "show"]

#: Not logged as MLflow parameters: ``profile`` is set by the pipeline and recorded
#: as the run's tag; ``resume`` says how the run was executed, not what it computes
#: (a resumed execution logs into the run it continues, whose params say ``False``).
NOT_LOGGED = ("profile", "resume")


def parameters(namespace: Mapping[str, Any]) -> dict[str, Any]:
    """The notebook's parameters with their current values: the names annotated in ``namespace``.

    Call it right after the parameters cell (``parameters(globals())``), before any
    other annotated assignment.
    """
    names = namespace.get("__annotations__", {})
    if not names:
        raise ValueError("no annotated parameters in this namespace: declare them as `name: type = value` "
                         "in the cell tagged `parameters`")
    return {name: namespace[name] for name in names if name in namespace}


def start(experiment: str, params: Mapping[str, Any]):
    """Start the notebook's MLflow run, logging ``params`` (but ``profile``, which is a tag).

    With ``resume=True`` among the parameters (``dla-repro run --resume`` sets it)
    an interrupted execution with the same parameters is continued: its run is
    reopened and each training goes on from its last checkpoint.
    """
    logged = {k: v for k, v in params.items() if k not in NOT_LOGGED}
    return tracking.start_notebook_run(experiment, params=logged, profile=params.get("profile"),
                                       resume=bool(params.get("resume", False)))


def train_config(params: Mapping[str, Any], **overrides: Any):
    """A :class:`~dla_repro.engine.TrainConfig` from the parameters that are its fields (plus ``overrides``).

    Progress bars are off by default (``progress=False``): under papermill they
    would fill the executed notebook.
    """
    from .engine import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in params.items() if k in fields}
    return TrainConfig(**{"progress": False, **values, **overrides})


def show(fig, filename: str, caption: str | None = None, title: str | None = None, fontsize: float = 8):
    """Title, caption (usually ``plots.provenance(...)``), log to MLflow and ``results/``, then show ``fig``."""
    import matplotlib.pyplot as plt

    from . import plots

    if title:
        fig.suptitle(title)
        fig.tight_layout()
    if caption:
        plots.caption(fig, caption, fontsize=fontsize)
    tracking.log_figure(fig, filename)
    plt.show()
    return fig
