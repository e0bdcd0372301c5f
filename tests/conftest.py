"""Shared test fixtures.

Every test runs against a throw-away MLflow store and results folder so the
suite never touches the repository's own ``mlflow.db`` or ``results/``.

Two layers keep it so: each test gets its own store (``_isolated_store``), and
the session's environment itself points at a throw-away store, so a test that
undoes its monkeypatching (``monkeypatch.undo()``) still cannot reach the
repository's. After each test a guard fails it if MLflow was left pointed at the
repository's store or if it created the repository's ``mlflow.db``, ``mlruns/``,
``mlartifacts/`` or ``checkpoints/``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from dla_repro.paths import repo_root

# What the suite must never create in the repository (the store, its artifacts,
# MLflow's fallback artifact folder for Default, training state).
REPO_STATE = ("mlflow.db", "mlruns", "mlartifacts", "checkpoints", "logs")
SESSION_ENV = ("MLFLOW_TRACKING_URI", "DLA_REPRO_ARTIFACTS", "DLA_REPRO_RESULTS", "DLA_REPRO_CHECKPOINTS",
               "DLA_REPRO_LOGS")
_session: dict = {}


def pytest_configure(config):
    """Point the whole session (and every subprocess it starts) at a throw-away store."""
    scratch = Path(tempfile.mkdtemp(prefix="dla_repro_tests_"))
    _session["scratch"] = scratch
    _session["saved_env"] = {var: os.environ.get(var) for var in SESSION_ENV}
    os.environ.update(
        MLFLOW_TRACKING_URI=f"sqlite:///{scratch / 'mlflow.db'}",
        DLA_REPRO_ARTIFACTS=str(scratch / "artifacts"),
        DLA_REPRO_RESULTS=str(scratch / "results"),
        DLA_REPRO_CHECKPOINTS=str(scratch / "checkpoints"),
        DLA_REPRO_LOGS=str(scratch / "logs"),
    )


def pytest_unconfigure(config):
    for var, value in _session.pop("saved_env", {}).items():
        if value is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = value
    scratch = _session.pop("scratch", None)
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)


def repo_store_uri() -> str:
    return f"sqlite:///{repo_root() / 'mlflow.db'}"


def repo_state_created(before: set[str]) -> list[str]:
    """Paths of ``REPO_STATE`` present in the repository now that were not in ``before``."""
    return sorted(name for name in REPO_STATE if (repo_root() / name).exists() and name not in before)


def assert_repo_store_untouched(before: set[str]) -> None:
    import mlflow

    from dla_repro import tracking

    used = {tracking._state["configured_uri"], mlflow.get_tracking_uri()}
    if repo_store_uri() in used:
        pytest.fail(f"the test left MLflow pointed at the repository's store {repo_store_uri()}")
    created = repo_state_created(before)
    if created:
        pytest.fail(f"the test created {created} in the repository {repo_root()}")


def _reset_mlflow_state() -> None:
    """MLflow keeps process-global state that would leak from one test's throw-away
    store into the next: the active run stack, the active experiment id, and the
    MLFLOW_EXPERIMENT_ID variable ``set_experiment`` exports to subprocesses."""
    import mlflow

    from dla_repro import tracking

    while mlflow.active_run() is not None:
        mlflow.end_run()
    tracking.forget_active_experiment()
    tracking._state.update(profile=None, configured_uri=None)
    tracking._state.pop("notebook_run", None)
    # what start_notebook_run / the pipeline export for a notebook execution
    for var in ("DLA_REPRO_WORKDIR", "DLA_REPRO_PROGRESS"):
        os.environ.pop(var, None)


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """A test that sets torch's thread count (e.g. to one, as a worker does) leaves it as it found it: on a
    CPU the count changes seeded initialisations (``tests/test_segmenter_identity.py`` failed after such a
    test in CI)."""
    import torch

    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _isolated_store(tmp_path, monkeypatch):
    before = {name for name in REPO_STATE if (repo_root() / name).exists()}
    store = tmp_path / "mlstore"
    store.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
    monkeypatch.setenv("DLA_REPRO_ARTIFACTS", str(store / "artifacts"))
    monkeypatch.setenv("DLA_REPRO_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("DLA_REPRO_CHECKPOINTS", str(tmp_path / "checkpoints"))
    monkeypatch.setenv("DLA_REPRO_LOGS", str(tmp_path / "logs"))
    monkeypatch.delenv("DLA_REPRO_PARENT_RUN_ID", raising=False)
    _reset_mlflow_state()
    # MLflow's sqlite migrations log at INFO on every new store; keep output readable.
    monkeypatch.setenv("MLFLOW_LOGGING_LEVEL", os.environ.get("MLFLOW_LOGGING_LEVEL", "WARNING"))
    yield
    try:
        assert_repo_store_untouched(before)
    finally:
        _reset_mlflow_state()
