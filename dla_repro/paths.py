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
