"""MLflow tracking for notebooks, sweeps and trained configurations.

Layout of what lands in MLflow:

* one **experiment per notebook** (``dla_classification``, ``data_tour`` …), tagged
  ``mlflow.experimentKind = custom_model_development`` so MLflow 3.x opens it on the
  runs table rather than on the GenAI traces overview;
* one **notebook run** per execution of a notebook (``start_notebook_run``), carrying
  the notebook's parameters, the profile, provenance (git commit + dirty flag,
  library versions, hardware), its figures and tables, and — when the pipeline ran
  it — the executed ``.ipynb``;
* one **child run per trained configuration** (``child_run``), nested under the
  notebook run or under a sweep run nested in it, carrying the flattened config,
  per-epoch metrics, the dataset (``mlflow.log_input``) and the final checkpoint.
  A nested run is created in its parent's experiment, so a notebook's experiment
  holds its run, its sweeps and their trainings (and their artifacts), and
  MLflow's ``Default`` experiment stays empty.

The store defaults to ``sqlite:///<repo>/mlflow.db`` resolved from the repository
root (papermill's working directory is the notebook's folder), with artifacts in
``<repo>/mlartifacts``. ``MLFLOW_TRACKING_URI`` overrides it, e.g. a team server.
SQLite is switched to WAL journaling and its first initialisation is serialised
by a file lock, so several processes can log to one store at once.  Every write
here holds Ctrl-C and SIGTERM until it ends (:mod:`dla_repro.interrupts`), so an
interrupt never leaves the store locked by a half-written transaction.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import platform
import re
import sqlite3
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from . import interrupts
from .paths import repo_root, results_dir

PARENT_RUN_ENV = "DLA_REPRO_PARENT_RUN_ID"
"""Set by ``dla-repro run``: the notebook run the pipeline created for this execution."""

ROOT_RUN_ENV = "DLA_REPRO_ROOT_RUN_ID"
"""Set in a sweep's worker processes (whose parent is the sweep run): the execution's notebook run."""

PROFILE_ENV = "DLA_REPRO_PROFILE"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

_state: dict[str, Any] = {"profile": None, "configured_uri": None}


# --------------------------------------------------------------------------- store
def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the repository's ``sqlite:///…/mlflow.db``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{repo_root() / 'mlflow.db'}"


def artifact_root() -> Path:
    return Path(os.environ.get("DLA_REPRO_ARTIFACTS", repo_root() / "mlartifacts")).resolve()


def _sqlite_path(uri: str) -> Path | None:
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):])
    return None


_DATABASES = ("sqlite", "postgresql", "postgres", "mysql", "mssql")


def _database_store(uri: str) -> bool:
    """Whether ``uri`` is a database this process writes to itself (not a tracking server): its
    experiments get artifact locations under ``artifact_root()``, else MLflow would put artifacts in
    ``./mlruns`` of whatever folder the process runs in (a notebook's, under papermill)."""
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    return scheme.split("+", 1)[0].lower() in _DATABASES


_PASSWORD = re.compile(r"^(?P<head>[A-Za-z][\w+.-]*://[^/@:]*):[^/@]*@")


def redacted_uri(uri: str) -> str:
    """``uri`` with the password of its user part masked (``postgresql://mlflow:***@db:5432/mlflow``):
    what is printed or written to a manifest."""
    return _PASSWORD.sub(r"\g<head>:***@", uri)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def configure() -> str:
    """Point MLflow at the project's store; create and migrate it once, safely.

    Idempotent per process. Returns the tracking URI in use.
    """
    import mlflow

    uri = tracking_uri()
    if _state["configured_uri"] == uri:
        return uri
    if _state["configured_uri"] is not None:
        forget_active_experiment()
    mlflow.set_tracking_uri(uri)
    db = _sqlite_path(uri)
    if db is not None:
        # Several processes opening a fresh store at once would race on the schema
        # migrations: serialise the first contact, then switch to WAL so readers
        # and the one writer do not block each other.
        with _file_lock(db.with_name(db.name + ".lock")):
            from mlflow.tracking import MlflowClient

            MlflowClient(uri).search_experiments(max_results=1)
            with sqlite3.connect(db, timeout=30) as conn:
                conn.execute("PRAGMA journal_mode=WAL")
    _state["configured_uri"] = uri
    return uri


# What ``mlflow.set_experiment`` leaves behind in this process and exports to
# child processes; ids are per store, so they are stale once the store changes.
MLFLOW_PROCESS_VARS = ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID")


def forget_active_experiment() -> None:
    """Drop MLflow's process-global active experiment (and its exported env vars)."""
    from mlflow.tracking import fluent

    fluent._active_experiment_id = None
    for var in MLFLOW_PROCESS_VARS:
        os.environ.pop(var, None)


@interrupts.deferred()
def get_or_create_experiment(name: str) -> str:
    """The experiment id for ``name``, created (with the UI tag) if absent."""
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = configure()
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        location = None  # a tracking server chooses (with --serve-artifacts: mlflow-artifacts:/, its proxy)
        if _database_store(uri):
            location = (artifact_root() / name).as_uri()
        try:
            exp_id = client.create_experiment(
                name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
            )
        except mlflow.exceptions.MlflowException:
            # Another process created it between our lookup and our create.
            exp_id = client.get_experiment_by_name(name).experiment_id
        return exp_id
    if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return exp.experiment_id


# ---------------------------------------------------------------------- provenance
def flatten(params: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, str]:
    """``{"a": {"b": 1}, "c": [1, 2]}`` → ``{"a.b": "1", "c": "[1, 2]"}`` (MLflow params are strings)."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, name, sep))
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            flat[name] = text[:6000]  # MLflow's param value limit
    return flat


def git_state(root: Path | None = None) -> dict[str, str]:
    """Commit and dirty flag of the repository (MLflow cannot see them under papermill).

    Dirty means a tracked file differs from the commit *outside* ``results/``: the
    pipeline itself rewrites the committed results, which says nothing about the
    code that produced them.
    """
    root = root or repo_root()

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=20
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results"))
        branch = git("rev-parse", "--abbrev-ref", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": "unknown", "git_dirty": "unknown", "git_branch": "unknown"}
    return {"git_commit": commit, "git_dirty": str(dirty).lower(), "git_branch": branch}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


_ISA_CAPS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


@functools.lru_cache(maxsize=1)
def hardware() -> dict[str, str]:
    """The machine a number was measured on, as short strings."""
    import torch

    info = {
        "cpu": _cpu_name(),
        "cpu_count": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        # The vector instructions PyTorch's CPU kernels use (AVX512, AVX2, DEFAULT; ATEN_CPU_CAPABILITY lowers
        # it): they decide the floating-point rounding, so two CPUs give different numbers for one seed.
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "gpu": "none",
    }
    # Caps on the instruction sets of the other two CPU kernel libraries (oneDNN: convolutions; MKL: matmuls),
    # recorded when set, so that a run made with a lowered ISA says so (README "Replication").
    caps = [f"{k}={os.environ[k]}" for k in _ISA_CAPS if os.environ.get(k)]
    if caps:
        info["isa_caps"] = " ".join(caps)
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        info["gpu"] = f"{n}x {torch.cuda.get_device_name(0)}"
    return info


def hardware_label() -> str:
    """One line for figure titles: ``"NVIDIA H100 80GB HBM3"`` or ``"CPU: <model>, 2 cores"``."""
    hw = hardware()
    if hw["gpu"] != "none":
        return hw["gpu"]
    return f"CPU: {hw['cpu']} ({hw['cpu_count']} cores)"


def environment() -> dict[str, str]:
    import timm
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "cuda": str(torch.version.cuda),
        "cudnn": str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else "none",
        "platform": platform.platform(),
    }


def provenance_tags() -> dict[str, str]:
    git = git_state()
    tags = {
        "mlflow.source.git.commit": git["git_commit"],
        "git_commit": git["git_commit"],
        "git_dirty": git["git_dirty"],
        "git_branch": git["git_branch"],
    }
    tags.update({f"env.{k}": v for k, v in environment().items()})
    tags.update({f"hw.{k}": v for k, v in hardware().items()})
    return tags


# ----------------------------------------------------------------------- runs
def root_run_id() -> str | None:
    """The notebook run of this execution: the pipeline's (``DLA_REPRO_PARENT_RUN_ID``) or the
    one ``start_notebook_run`` opened in this kernel (in a sweep's worker process: ``DLA_REPRO_ROOT_RUN_ID``);
    None outside a notebook execution."""
    return os.environ.get(ROOT_RUN_ENV) or os.environ.get(PARENT_RUN_ENV) or _state.get("notebook_run")


def owner_tags(root: str | None = None) -> dict[str, str]:
    """Who holds a run open (machine, process) and which execution it belongs to (see ``recovery``)."""
    import socket

    from .recovery import HOST_TAG, PROCESS_TAG, ROOT_TAG, process_token

    tags = {HOST_TAG: socket.gethostname(), PROCESS_TAG: process_token()}
    root = root or root_run_id()
    if root:
        tags[ROOT_TAG] = root
    return tags


def current_profile() -> str:
    return _state["profile"] or os.environ.get(PROFILE_ENV, "quick")


@interrupts.deferred()
def start_notebook_run(
    experiment: str, params: Mapping[str, Any], profile: str, run_name: str | None = None,
    resume: bool = False,
):
    """Open the run of one notebook execution and return it (``mlflow.ActiveRun``).

    Under ``dla-repro run`` the pipeline has already created the run and exported its
    id in ``DLA_REPRO_PARENT_RUN_ID``: the notebook logs into that run, so the
    executed notebook the pipeline logs afterwards sits beside the figures.
    Run in JupyterLab, a fresh run is created -- or, with ``resume=True``, the latest
    unfinished run of this notebook with the same profile and ``params`` is reopened
    (``recovery.find_resumable``), so its trainings continue from their checkpoints.
    Any run left active in this kernel (a re-executed cell) is closed first. End it
    with ``end_notebook_run()``.

    Trainings started afterwards keep their checkpoints in the execution's own
    folder (``paths.execution_dir(experiment, run_id)``, exported as
    ``DLA_REPRO_WORKDIR`` unless the pipeline already chose it).
    """
    import mlflow

    from .paths import WORKDIR_ENV, execution_dir

    _state["profile"] = profile
    exp_id = get_or_create_experiment(experiment)
    while mlflow.active_run() is not None:
        mlflow.end_run()
    parent = os.environ.get(PARENT_RUN_ENV)
    if parent:
        run = mlflow.start_run(run_id=parent)
    else:
        previous = None
        if resume:
            from .recovery import find_resumable

            previous = find_resumable(experiment, profile, params)
        if previous is not None:
            run = mlflow.start_run(run_id=previous.info.run_id)
        else:
            run = mlflow.start_run(experiment_id=exp_id, run_name=run_name or f"{experiment}-{profile}")
        _state["notebook_run"] = run.info.run_id
        os.environ[WORKDIR_ENV] = str(execution_dir(experiment, run.info.run_id))
        mlflow.set_tags(owner_tags(run.info.run_id))
    if parent and WORKDIR_ENV not in os.environ:
        os.environ[WORKDIR_ENV] = str(execution_dir(experiment, parent))
    _log_params_once(params)
    mlflow.set_tags({**provenance_tags(), "profile": profile, "kind": "notebook"})
    return run


@interrupts.deferred()
def end_notebook_run(status: str = "FINISHED") -> None:
    import mlflow

    from .paths import WORKDIR_ENV

    while mlflow.active_run() is not None:
        mlflow.end_run(status=status)
    if _state.pop("notebook_run", None) is not None and not os.environ.get(PARENT_RUN_ENV):
        os.environ.pop(WORKDIR_ENV, None)


def _log_params_once(params: Mapping[str, Any]) -> None:
    """Log params, skipping keys already on the run with the same value (resume)."""
    import mlflow

    flat = flatten(params)
    run = mlflow.active_run()
    existing = mlflow.get_run(run.info.run_id).data.params if run else {}
    fresh = {k: v for k, v in flat.items() if k not in existing}
    changed = {k for k, v in flat.items() if k in existing and existing[k] != v}
    if changed:
        raise ValueError(
            f"run {run.info.run_id} already has different values for {sorted(changed)}; "
            "resume with the same configuration or start a new run"
        )
    items = list(fresh.items())
    for i in range(0, len(items), 100):  # MLflow batch limit
        mlflow.log_params(dict(items[i : i + 100]))


def parent_run() -> tuple[str, str] | None:
    """``(run_id, experiment_id)`` of the run a new run nests under, or None.

    The active run of this process (the notebook run, or a sweep run inside it);
    else the notebook run the pipeline created for this execution
    (``DLA_REPRO_PARENT_RUN_ID``), whose experiment is read from the store.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    active = mlflow.active_run()
    if active is not None:
        return active.info.run_id, active.info.experiment_id
    parent = os.environ.get(PARENT_RUN_ENV)
    if not parent:
        return None
    try:
        return parent, MlflowClient(configure()).get_run(parent).info.experiment_id
    except mlflow.exceptions.MlflowException as exc:
        raise RuntimeError(
            f"{PARENT_RUN_ENV}={parent} names no run in the MLflow store {tracking_uri()}"
        ) from exc


@contextlib.contextmanager
def child_run(
    run_name: str,
    params: Mapping[str, Any] | None = None,
    run_id: str | None = None,
    experiment: str | None = None,
    tags: Mapping[str, str] | None = None,
    find_existing: bool = False,
) -> Iterator[Any]:
    """A run for one trained configuration (or a sweep), nested under its parent run.

    The parent is the active run (the notebook run, or a sweep run inside it), else
    the pipeline's notebook run named by ``DLA_REPRO_PARENT_RUN_ID``; the new run
    is created in the **parent's experiment**, never MLflow's ``Default``.  With
    no parent the run is top-level in ``experiment`` (default: ``"scratch"``).
    ``run_id`` reopens an existing run (resume after a crash); ``find_existing``
    reopens the parent's child of the same name and kind if there is one. An
    exception inside the block marks the run FAILED (``KILLED`` for Ctrl-C) and
    propagates. Every run carries ``owner_tags`` (machine, process, execution).
    """
    import mlflow

    configure()
    nested = mlflow.active_run() is not None
    if run_id is None and find_existing:
        run_id = find_child_run(run_name, (tags or {}).get("kind"))
    run = None
    try:
        # Store writes wait out Ctrl-C (``interrupts``): one held here arrives once ``run`` is set, so it ends KILLED.
        with interrupts.deferred():
            if run_id is not None:
                run = mlflow.start_run(run_id=run_id, nested=nested)
            else:
                parent = parent_run()
                if parent is None:
                    exp_id = get_or_create_experiment(experiment or "scratch")
                    run = mlflow.start_run(run_name=run_name, experiment_id=exp_id)
                else:
                    parent_id, exp_id = parent
                    run = mlflow.start_run(run_name=run_name, nested=nested, experiment_id=exp_id,
                                           parent_run_id=None if nested else parent_id)
            if params:
                _log_params_once(params)
            mlflow.set_tags({**provenance_tags(), **owner_tags(), "profile": current_profile(), **(tags or {})})
        yield run
    except BaseException as exc:
        if run is not None:
            with interrupts.deferred():
                with contextlib.suppress(Exception):
                    mlflow.set_tag("failure", f"{type(exc).__name__}: {exc}"[:5000])
                mlflow.end_run(status="FAILED" if not isinstance(exc, KeyboardInterrupt) else "KILLED")
        raise
    else:
        with interrupts.deferred():
            mlflow.end_run(status="FINISHED")


def sweep_run(name: str, params: Mapping[str, Any] | None = None, resume: bool = False):
    """A parent run grouping several trained configurations (``with sweep_run(..): fit(..)``).

    ``resume=True`` reopens the sweep run of the same name under the same parent
    (the interrupted execution's), so resumed trainings stay beneath it.
    """
    return child_run(name, params, tags={"kind": "sweep"}, find_existing=resume)


def find_child_run(run_name: str, kind: str | None, unfinished: bool = False) -> str | None:
    """The id of the latest run named ``run_name`` (of tag ``kind``; not FINISHED if ``unfinished``)
    nested under the current parent, or None."""
    import mlflow
    from mlflow.tracking import MlflowClient

    parent = parent_run()
    if parent is None:
        return None
    parent_id, exp_id = parent
    name = run_name.replace("'", "\\'")
    query = f"tags.`mlflow.parentRunId` = '{parent_id}' and attributes.run_name = '{name}'"
    if kind:
        query += f" and tags.kind = '{kind}'"
    if unfinished:
        query += " and attributes.status != 'FINISHED'"
    try:
        runs = MlflowClient(configure()).search_runs([exp_id], filter_string=query,
                                                     order_by=["attributes.start_time DESC"], max_results=1)
    except mlflow.exceptions.MlflowException:
        return None
    return runs[0].info.run_id if runs else None


# -------------------------------------------------------------------- artifacts
@interrupts.deferred()
def log_dataset(
    name: str, digest: str, source: str, context: str = "train", meta: Mapping[str, Any] | None = None
) -> None:
    """Record the dataset on the active run (``mlflow.log_input``): the runs table's Dataset column.

    ``source`` is a path for real datasets or a short description for generated data.
    """
    import mlflow
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    src = CodeDatasetSource(tags={"source": str(source), **{k: str(v) for k, v in (meta or {}).items()}})
    dataset = MetaDataset(source=src, name=name, digest=str(digest)[:36])
    mlflow.log_input(dataset, context=context)
    mlflow.set_tags({"dataset.name": name, "dataset.digest": str(digest)})


def _results_path(kind: str, filename: str) -> Path:
    path = results_dir() / kind / current_profile() / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@interrupts.deferred()
def log_figure(fig, filename: str, dpi: int = 130) -> Path:
    """Save ``fig`` to ``results/figures/<profile>/<filename>`` and log it to the active run."""
    import mlflow

    path = _results_path("figures", filename)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    if mlflow.active_run() is not None:
        mlflow.log_figure(fig, f"figures/{filename}")
    return path


@interrupts.deferred()
def log_table(df, filename: str) -> Path:
    """Save a DataFrame to ``results/tables/<profile>/<filename>`` (CSV) and log it."""
    import mlflow

    path = _results_path("tables", filename)
    df.to_csv(path, index=False)
    if mlflow.active_run() is not None:
        mlflow.log_artifact(str(path), artifact_path="tables")
    return path


def metric_name(key: str) -> str:
    """``key`` as an MLflow metric name: characters MLflow refuses (e.g. ``@`` in ``iou_disk@scene0``) become ``_``."""
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", key)


@interrupts.deferred()
def log_metrics(run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
    """Log ``metrics`` to run ``run_id`` (open or finished) at ``step``, each key at most once.

    Keys become valid metric names (:func:`metric_name`).  A key whose latest
    value on the run already equals the new one (NaN equals NaN) is skipped, so a
    rerun that recomputes the same numbers (a resumed sweep) logs nothing twice.
    """
    import math
    import time

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(configure())
    logged = client.get_run(run_id).data.metrics

    def same(a: float, b: float | None) -> bool:
        return b is not None and (a == b or (math.isnan(a) and math.isnan(b)))

    now = int(time.time() * 1000)
    named = {metric_name(k): float(v) for k, v in metrics.items()}
    fresh = [Metric(k, v, now, step) for k, v in named.items() if not same(v, logged.get(k))]
    for i in range(0, len(fresh), 1000):  # MLflow batch limit
        client.log_batch(run_id, metrics=fresh[i : i + 1000])


@interrupts.deferred()
def log_table_artifact(run_id: str, df, name: str, artifact_path: str = "tables") -> None:
    """Attach a DataFrame to run ``run_id`` as ``<artifact_path>/<name>.csv`` (rewritten if present)."""
    import tempfile

    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.csv"
        df.to_csv(path, index=False)
        MlflowClient(configure()).log_artifact(run_id, str(path), artifact_path=artifact_path)


@interrupts.deferred()
def log_checkpoint(path: str | os.PathLike, artifact_path: str = "checkpoints") -> None:
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.log_artifact(str(path), artifact_path=artifact_path)


@interrupts.deferred()
def log_notebook(run_id: str, notebook: str | os.PathLike) -> None:
    """Attach an executed notebook to a run (used by the pipeline after papermill)."""
    from mlflow.tracking import MlflowClient

    MlflowClient(configure()).log_artifact(run_id, str(notebook), artifact_path="notebook")


def experiment_urls(base_url: str) -> list[tuple[str, str]]:
    """``(name, url)`` of every experiment's runs view on an MLflow UI at ``base_url``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(configure())
    out = []
    for exp in client.search_experiments(order_by=["name ASC"]):
        out.append((exp.name, f"{base_url.rstrip('/')}/#/experiments/{exp.experiment_id}/runs"))
    return out
