"""Ctrl-C / SIGTERM held while the run store is written (dla_repro.interrupts), and the fault it prevents."""

from __future__ import annotations

import signal
import threading

import pytest
import sqlalchemy
from mlflow.tracking import MlflowClient
from test_engine import toy_data, toy_model

from dla_repro import interrupts, tracking
from dla_repro.engine import TrainConfig, fit


@pytest.fixture(autouse=True)
def _ctrl_c_raises():
    """Python's own Ctrl-C handler, whatever the test process inherited (a run started with ``&`` or ``nohup``
    ignores SIGINT, and so would these tests' interrupts)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_ctrl_c_inside_the_block_arrives_when_it_ends_and_nested_blocks_wait_for_the_outermost():
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts.deferred():
            with interrupts.deferred():
                signal.raise_signal(signal.SIGINT)
                reached.append("inner")
            reached.append("outer")  # the inner block's end did not deliver it
    assert reached == ["inner", "outer"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_handler_in_place_gets_the_held_signal_and_is_put_back():
    calls = []

    def handler(signum, frame):
        calls.append(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        with interrupts.deferred():
            signal.raise_signal(signal.SIGTERM)
            signal.raise_signal(signal.SIGTERM)
            assert calls == []
        assert calls == [signal.SIGTERM]  # delivered once, after the block
        assert signal.getsignal(signal.SIGTERM) is handler
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_an_ignored_signal_stays_ignored_and_a_block_without_signals_changes_nothing():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupts.deferred():
            signal.raise_signal(signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)

    @interrupts.deferred()
    def write(x):
        return x + 1

    assert write(1) == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_outside_the_main_thread_the_block_leaves_the_handlers_alone():
    seen = []

    def worker():
        with interrupts.deferred():
            seen.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [signal.default_int_handler]


@pytest.fixture
def ctrl_c_inside_a_metric_insert():
    """A Ctrl-C that arrives just after the store's first ``INSERT INTO metrics``: inside the open transaction."""
    fired = []

    def listener(conn, cursor, statement, parameters, context, executemany):
        if not fired and statement.lstrip().upper().startswith("INSERT INTO METRICS"):
            fired.append(statement)
            signal.raise_signal(signal.SIGINT)

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "after_cursor_execute", listener)
    yield fired
    sqlalchemy.event.remove(sqlalchemy.engine.Engine, "after_cursor_execute", listener)


def test_a_ctrl_c_during_a_metric_write_ends_the_training_killed_not_stuck_on_a_locked_store(
        ctrl_c_inside_a_metric_insert):
    """Without interrupts.deferred the KeyboardInterrupt leaves the SQLite transaction open and holding the write
    lock; marking the run KILLED then waits out the busy timeout and fails ('database is locked'), and the run
    stays RUNNING (seen on a loaded CI machine).  Now the write finishes first, then the Ctrl-C arrives."""
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.01, schedule="constant", progress=False)
    client = MlflowClient(tracking.configure())
    with pytest.raises(KeyboardInterrupt):
        fit(toy_model(0), toy_data(32, 16), cfg, run_name="interrupted")
    assert ctrl_c_inside_a_metric_insert, "the interrupt never fired: the store wrote no metrics"
    (run,) = client.search_runs([client.get_experiment_by_name("scratch").experiment_id])
    assert run.info.status == "KILLED"
    assert run.data.tags["failure"].startswith("KeyboardInterrupt")
    assert run.data.metrics["train_loss"] > 0  # the epoch's metrics went in whole before the interrupt
