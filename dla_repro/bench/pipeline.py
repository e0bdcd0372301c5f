"""Wall time of the notebook pipeline per notebook and profile (``dla-repro bench pipeline``).

Two sources, one table:

* ``manifest`` -- the per-notebook ``wall_seconds`` that ``dla-repro run``
  records in ``results/manifest_<profile>.json`` (each entry with its start time,
  status and git commit, the manifest with the machine's hardware): the
  committed quick run's times cost nothing to read;
* ``live`` (``--run``) -- :func:`run_profile` executes a profile (default
  ``smoke``) now with ``dla-repro run`` in a subprocess whose results folder,
  MLflow store, artifacts, checkpoints and logs all lie in a scratch folder
  (the repository's are untouched), then reads that run's manifest.

``wall_seconds`` is the notebook's execution as the pipeline timed it (kernel
start to the last cell; not the interpreter start of the ``dla-repro`` process).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .hardware import gpu_slug

__all__ = ["COLUMNS", "from_manifests", "manifest_hardware", "run_profile"]

COLUMNS = [
    "profile",
    "notebook",
    "wall_seconds",
    "status",
    "resumed",
    "source",
    "started_at",
    "git_commit",
    "hardware",
    "device",
]


def manifest_hardware(hw: Dict[str, str]) -> tuple:
    """``(hardware, device, slug)`` of a manifest's ``hardware`` entry (:func:`dla_repro.tracking.hardware`)."""
    gpu = hw.get("gpu", "none")
    if gpu and gpu != "none":
        return gpu, "cuda", gpu_slug(re.sub(r"^\d+x\s+", "", gpu))
    threads = f", {hw['torch_threads']} threads" if hw.get("torch_threads") else ""
    return f"{hw.get('cpu', 'unknown CPU')} ({hw.get('cpu_count', '?')} CPUs{threads})", "cpu", "cpu"


def from_manifests(profiles: Sequence[str] = ("smoke", "quick"), results: Optional[Path] = None, source="manifest"):
    """One row per notebook of each ``results/manifest_<profile>.json`` found (columns :data:`COLUMNS`).

    ``results``: the results folder (default :func:`dla_repro.paths.results_dir`).
    A profile without a manifest has no rows.
    """
    import pandas as pd

    from ..paths import results_dir

    results = Path(results) if results is not None else results_dir()
    rows: List[Dict] = []
    for profile in profiles:
        path = results / f"manifest_{profile}.json"
        if not path.is_file():
            continue
        manifest = json.loads(path.read_text())
        hardware, device, _ = manifest_hardware(manifest.get("hardware", {}))
        for name, entry in sorted(manifest.get("notebooks", {}).items()):
            rows.append(dict(
                profile=profile,
                notebook=name,
                wall_seconds=float(entry.get("wall_seconds", float("nan"))),
                status=entry.get("status", ""),
                resumed=bool(entry.get("resumed", False)),
                source=source,
                started_at=entry.get("started_at", ""),
                git_commit=entry.get("git_commit", ""),
                hardware=hardware,
                device=device,
            ))  # fmt: skip
    return pd.DataFrame(rows, columns=COLUMNS)


def run_profile(profile: str = "smoke", names: Sequence[str] = (), workdir: Optional[Path] = None, command=None):
    """Run ``profile`` now, isolated in ``workdir`` (default: a temporary folder), and return its rows.

    ``command``: the argv to run (default ``python -m dla_repro.cli run --profile
    <profile> [names]``); the environment points the results folder, MLflow store,
    artifacts, checkpoints and logs into ``workdir``.  A failed run is a
    ``RuntimeError`` with the tail of its output.
    """
    with tempfile.TemporaryDirectory(prefix="dla_repro_bench_pipeline_") as tmp:
        work = Path(workdir) if workdir is not None else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        env = dict(
            os.environ,
            DLA_REPRO_RESULTS=str(work / "results"),
            MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}",
            DLA_REPRO_ARTIFACTS=str(work / "artifacts"),
            DLA_REPRO_CHECKPOINTS=str(work / "checkpoints"),
            DLA_REPRO_LOGS=str(work / "logs"),
        )
        argv = command or [sys.executable, "-m", "dla_repro.cli", "run", "--profile", profile, *names]
        proc = subprocess.run(argv, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr)[-2000:]
            raise RuntimeError(f"{' '.join(argv)} exited with {proc.returncode}:\n{tail}")
        return from_manifests([profile], work / "results", source="live")
