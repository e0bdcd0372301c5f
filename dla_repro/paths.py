"""Where things live: the repository root and the folders under it.

Everything is resolved from the location of this package, never from the
current directory: papermill runs notebooks with their own folder as working
directory, and a test may run from anywhere.  ``DLA_REPRO_ROOT`` overrides the
root (an installed, non-editable package has no repository around it).
"""

from __future__ import annotations

import os
from pathlib import Path


def repo_root() -> Path:
    env = os.environ.get("DLA_REPRO_ROOT")
    if env:
        return Path(env).expanduser().resolve()
    return Path(__file__).resolve().parent.parent


def results_dir() -> Path:
    return Path(os.environ.get("DLA_REPRO_RESULTS", repo_root() / "results")).resolve()


def notebooks_dir() -> Path:
    return repo_root() / "notebooks"


def checkpoints_dir() -> Path:
    return Path(os.environ.get("DLA_REPRO_CHECKPOINTS", repo_root() / "checkpoints")).resolve()


def logs_dir() -> Path:
    """Console logs of pipeline executions (``logs/<profile>/``); never committed."""
    return Path(os.environ.get("DLA_REPRO_LOGS", repo_root() / "logs")).resolve()


WORKDIR_ENV = "DLA_REPRO_WORKDIR"
"""Set by ``dla-repro run`` for a notebook's kernel: the execution's working folder."""


def execution_dir(experiment: str, run_id: str) -> Path:
    """The working folder (checkpoints, temporary files) of one notebook execution.

    Keyed by the execution's MLflow run, so any number of executions -- identical
    or not -- run at once on one clone without sharing a file, and a resumed
    execution (same run) finds its checkpoints again.
    """
    return checkpoints_dir() / experiment / run_id


def work_dir() -> Path:
    """Where trainings started in this process keep their checkpoints.

    The execution's folder when a notebook run is active (``DLA_REPRO_WORKDIR``, set
    by the pipeline or by ``tracking.start_notebook_run``); ``checkpoints_dir()``
    for code that trains outside a notebook.
    """
    env = os.environ.get(WORKDIR_ENV)
    return Path(env).resolve() if env else checkpoints_dir()
