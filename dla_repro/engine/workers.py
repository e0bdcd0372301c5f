"""Trainings side by side: jobs in spawned one-thread worker processes, with the faults handled.

    from dla_repro.engine.workers import map_in_workers, tracking_environ

    results = map_in_workers(train_one, [(trial, seed) for ...], workers=2, shared=context,
                             environ=tracking_environ(parent_run_id), label="ablation")

``function(shared, *job)`` runs for every job, ``workers`` at a time, and the results come back in job
order.  ``function`` and ``shared`` must pickle (module-level functions, ``functools.partial``, dataclasses
of such); ``shared`` is sent once per worker, not once per job -- the place for a dataset.

On a CPU, k single-thread trainings side by side use k cores better than one k-thread training: a tiny
model's ops are too small to split well.  A job gives the same numbers in any worker (one thread each).

Faults.  Ctrl-C reaches the whole process group, but only the calling process decides: workers ignore
SIGINT, and on any failure or interrupt there every worker gets SIGTERM, which a worker turns into
``KeyboardInterrupt`` -- a training's MLflow run is marked KILLED, as in the calling process -- and then it
exits without a traceback (an interrupt that lands in a write to the run store waits for the write to end:
:mod:`dla_repro.interrupts`).  A worker whose parent dies (kill -9 of the kernel) stops the same way within a
second, and exits regardless a minute later, so no orphan keeps training; a worker that dies (out of memory) breaks the pool and the call fails
with that message.  Used by :func:`dla_repro.engine.sweep` and the pilot (``dla_repro.experiments.pilot``).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from .. import tracking
from . import progress

__all__ = ["map_in_workers", "tracking_environ"]

_STATE: dict[str, Any] = {}
_ORPHAN_GRACE_S = 60.0


def tracking_environ(parent_run_id: str | None) -> dict[str, str]:
    """What a worker needs to log as this process would: the profile, the execution's working folder and,
    under ``parent_run_id``, the MLflow run to nest under and the execution's root run (recovery, ``--resume``)."""
    from ..paths import WORKDIR_ENV, work_dir

    environ = {tracking.PROFILE_ENV: tracking.current_profile(), WORKDIR_ENV: str(work_dir())}
    if parent_run_id is not None:
        environ[tracking.PARENT_RUN_ENV] = parent_run_id
        root = tracking.root_run_id()
        if root:
            environ[tracking.ROOT_RUN_ENV] = root
    return environ


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(_ORPHAN_GRACE_S)  # the training should have marked its run KILLED and exited by now
    os._exit(130)


def _start(function: Callable, shared: Any, environ: Mapping[str, str], parent: int) -> None:
    os.environ.update(environ)
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _interrupt)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    _STATE.update(function=function, shared=shared)


def _call(*job: Any) -> Any:
    try:
        return _STATE["function"](_STATE["shared"], *job)
    except KeyboardInterrupt:
        os._exit(130)  # stopped by the calling process, which reports it; a training's run is already marked KILLED


def map_in_workers(function: Callable[..., Any], jobs: Sequence[tuple], workers: int, *, shared: Any = None,
                   environ: Mapping[str, str] | None = None, label: str = "workers") -> list[Any]:
    """``[function(shared, *job) for job in jobs]``, ``workers`` jobs at a time, each worker a spawned process
    with one thread and ``environ`` added to its environment (see the module docstring for faults)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    jobs = list(jobs)
    before = set(multiprocessing.active_children())
    pool = ProcessPoolExecutor(workers, multiprocessing.get_context("spawn"), initializer=_start,
                               initargs=(function, shared, dict(environ or {}), os.getpid()))
    try:
        pending = [pool.submit(_call, *job) for job in jobs]
        done, total = [None] * len(jobs), len(jobs)
        progress.report(f"{label}: {total} jobs, {workers} at a time")
        for k, future in enumerate(pending):
            done[k] = future.result()
            progress.report(f"{label}: finished {k + 1}/{total} (in order)")
        pool.shutdown()
        return done
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        started = set(multiprocessing.active_children()) - before
        for process in started:
            process.terminate()  # SIGTERM: the worker marks its run KILLED and exits
        for process in started:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
        raise
