"""Shared test fixtures.

Every test runs against a throw-away MLflow store and results folder so the
suite never touches the repository's own ``mlflow.db`` or ``results/``.
"""

from __future__ import annotations

import os

import pytest


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


@pytest.fixture(autouse=True)
def _isolated_store(tmp_path, monkeypatch):
    store = tmp_path / "mlstore"
    store.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
    monkeypatch.setenv("DLA_REPRO_ARTIFACTS", str(store / "artifacts"))
    monkeypatch.setenv("DLA_REPRO_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("DLA_REPRO_CHECKPOINTS", str(tmp_path / "checkpoints"))
    monkeypatch.delenv("DLA_REPRO_PARENT_RUN_ID", raising=False)
    _reset_mlflow_state()
    # MLflow's sqlite migrations log at INFO on every new store; keep output readable.
    monkeypatch.setenv("MLFLOW_LOGGING_LEVEL", os.environ.get("MLFLOW_LOGGING_LEVEL", "WARNING"))
    yield
    _reset_mlflow_state()
