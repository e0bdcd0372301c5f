"""Ctrl-C and SIGTERM that wait for a write to the run store to finish.

Python raises ``KeyboardInterrupt`` at whatever bytecode it is running.  Landing inside an MLflow write,
it leaves the SQLite store's transaction open -- the traceback still holds the connection -- so the very
next write (marking the run KILLED) waits for the lock and fails with ``database is locked``: the run
stays RUNNING, or is marked FAILED by its parent.  Measured: a SIGINT at a random moment of a
``mlflow.log_metrics`` loop did this in about one run in ten, and a loaded CI machine hit it.

Writes to the store therefore run under :func:`deferred`: a Ctrl-C or SIGTERM that arrives inside the block
is held and delivered, to the handler that was in place, when the block ends::

    with interrupts.deferred():
        mlflow.log_metrics(record, step=epoch)

or ``@interrupts.deferred()`` on a function.  Blocks nest (the outermost one delivers), a signal that was
ignored stays ignored, and outside the main thread the block does nothing -- Python runs signal handlers in
the main thread only, so a write in another thread is never interrupted.  Keep the blocks short: a held
Ctrl-C waits for them.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = ["deferred"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_held: list[int] | None = None  # the signals held by the outermost active block (main thread only)


def _hold(signum: int, frame: object) -> None:
    if _held is not None:
        _held.append(signum)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM for the length of the block and deliver the first one held when it ends."""
    global _held
    if _held is not None or threading.current_thread() is not threading.main_thread():
        yield
        return
    # A handler installed outside Python (getsignal() is None) cannot be put back: leave that signal alone.
    previous = {s: h for s in _SIGNALS if (h := signal.getsignal(s)) is not None and h is not signal.SIG_IGN}
    _held = []
    try:
        for s in previous:
            signal.signal(s, _hold)
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        held, _held = _held, None
        if held:
            signal.raise_signal(held[0])  # the restored handler runs now: KeyboardInterrupt, the CLI's, exit


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, a scheduler's timeout, torchrun stopping the other ranks) ends a run like Ctrl-C:
    ``KeyboardInterrupt`` in the main thread, so runs are recorded and closed; the previous handler after."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
