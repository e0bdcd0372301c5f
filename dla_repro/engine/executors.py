"""Where a sweep's trainings run: here (``local``) or as tasks of a Ray cluster (``ray``).

    from dla_repro.engine.executors import map_on_ray, resolve_executor, worker_environ

    resolve_executor()              # "local" unless DLA_REPRO_EXECUTOR=ray (or an explicit "ray")
    results = map_on_ray(train_one, [(trial, seed), ...], shared=context, environ=worker_environ(parent_run_id),
                         label="ablation", devices=["cpu", ...], local_cpus=2)

``local`` is the default: a sweep trains in this process, or in ``workers`` spawned one-thread processes
(:mod:`.workers`).  ``ray``: every job is one Ray task asking for one CPU -- and one GPU when its device is
``cuda`` (``auto``: when the cluster has GPUs), or ``gpu_share`` of one so that several share it -- run by a
Ray worker with one torch thread, so a job gives the numbers it gives in a local one-thread worker.  The
results come back in job order.

Selection: ``sweep(executor=...)``, else ``TrainConfig.sweep_executor``, else ``DLA_REPRO_EXECUTOR`` (set by
``dla-repro run --executor ray``; a notebook's kernel inherits it), else ``local``.  The cluster: one this
process is already connected to (``ray.init`` called before), else ``address`` / ``DLA_REPRO_RAY_ADDRESS``
(``dla-repro run --address HOST:PORT``) / Ray's own ``RAY_ADDRESS``, else a local Ray instance with
``local_cpus`` CPUs, started by the first Ray sweep of this process and kept for its later ones
(:func:`shutdown` ends it; so does the end of the process).

Environment.  A task runs with the caller's ``DLA_REPRO_*`` and ``MLFLOW_*`` variables (less the ids MLflow
exports for its own process), the tracking URI in use, the variables that cap the CPU's instruction sets
(they decide the rounding) and ``environ`` (:func:`.workers.tracking_environ`: profile, working folder, the
run to nest under, the execution's run), set through the task's Ray ``runtime_env``.  A local instance also
gets this process's ``sys.path``, as a spawned local worker does; the workers of another cluster import the
code installed on their machines.

Faults.  A task that fails, or Ctrl-C here, cancels the others -- a running training gets a
``KeyboardInterrupt`` and marks its MLflow run KILLED, as in a local worker -- waits for them to end, and
the error propagates: a task's exception is Ray's ``RayTaskError`` of the same class as the original (so
``except RuntimeError`` still catches a ``RuntimeError``), carrying the remote traceback and a note naming the
job.  A task whose worker dies (out of memory) is not retried: the call fails with Ray's error.  Ray missing is
an ``ImportError`` naming the ``scale`` extra.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .. import tracking
from . import progress
from .workers import tracking_environ

__all__ = ["EXECUTORS", "EXECUTOR_ENV", "ADDRESS_ENV", "resolve_executor", "ray_address", "import_ray",
           "worker_environ", "map_on_ray", "shutdown"]

EXECUTORS = ("local", "ray")
EXECUTOR_ENV = "DLA_REPRO_EXECUTOR"
"""``local`` or ``ray``: where a sweep trains when neither its call nor its config says (``dla-repro run --executor``)."""
ADDRESS_ENV = "DLA_REPRO_RAY_ADDRESS"
"""``HOST:PORT`` of the Ray cluster a ``ray`` sweep connects to (``dla-repro run --address``); unset: a local one."""
INSTALL_HINT = "pip install -e '.[scale]' (the 'scale' extra of dla_repro)"

# Variables that change the numbers a CPU computes (tracking.hardware records them): a task sees the caller's.
_NUMERIC_ENV = (*tracking._ISA_CAPS, "CUBLAS_WORKSPACE_CONFIG")
# Tries at starting a local instance: Ray gives up on one whose processes are slow to come up (a busy machine).
_START_ATTEMPTS = 3
_CANCEL_GRACE_S = 30.0
_STATE: dict[str, Any] = {"local": False, "task": None}


def resolve_executor(executor: str | None = None) -> str:
    """``executor``, else ``$DLA_REPRO_EXECUTOR``, else ``"local"``; a ``ValueError`` for any other name."""
    source = "executor" if executor else EXECUTOR_ENV
    name = (executor or os.environ.get(EXECUTOR_ENV, "")).strip().lower() or "local"
    if name not in EXECUTORS:
        raise ValueError(f"{source}={name!r}: expected one of {EXECUTORS}")
    return name


def ray_address(address: str | None = None) -> str | None:
    """The cluster to connect to: ``address``, ``$DLA_REPRO_RAY_ADDRESS``, Ray's ``$RAY_ADDRESS``; None: start one here."""
    return address or os.environ.get(ADDRESS_ENV) or os.environ.get("RAY_ADDRESS") or None


def import_ray():
    """The ``ray`` module, or an ``ImportError`` that says how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError(f"the ray executor needs Ray, which is not installed here: {INSTALL_HINT}",
                          name="ray") from exc
    return ray


def worker_environ(parent_run_id: str | None) -> dict[str, str]:
    """What a Ray task needs to train and log as a local worker of this process would (see the module docstring)."""
    environ = {k: v for k, v in os.environ.items()
               if (k.startswith(("DLA_REPRO_", "MLFLOW_")) and k not in tracking.MLFLOW_PROCESS_VARS)
               or k in _NUMERIC_ENV}
    environ["MLFLOW_TRACKING_URI"] = tracking.tracking_uri()
    environ.update(tracking_environ(parent_run_id))
    return environ


def _connect(ray, address: str | None, local_cpus: int | None) -> str:
    """Connect to (or start) the cluster; a line saying which."""
    if ray.is_initialized():
        return "the Ray cluster this process is connected to"
    address = ray_address(address)
    if address:
        ray.init(address=address)
        return f"the Ray cluster at {address}"
    cpus = local_cpus or os.cpu_count() or 1
    for attempt in range(1, _START_ATTEMPTS + 1):
        try:
            ray.init(num_cpus=cpus, include_dashboard=False)
            break
        except Exception as exc:  # Ray waits seconds for its agents and node, then gives up (not configurable)
            ray.shutdown()
            if "timed out" not in str(exc) or attempt == _START_ATTEMPTS:
                raise RuntimeError(
                    f"could not start a local Ray instance ({attempt} tries; a busy machine?): {exc} -- start one "
                    f"with `ray start --head` and pass its address (--address, {ADDRESS_ENV})") from exc
            progress.report(f"a local Ray instance did not come up in time; trying again ({exc})")
    _STATE["local"] = True
    return f"a local Ray instance ({cpus} CPUs)"


def shutdown() -> None:
    """End the local Ray instance a sweep of this process started (a connection made by the caller is left alone)."""
    if _STATE["local"]:
        import ray

        ray.shutdown()
        _STATE.update(local=False, task=None)


def _gpus(devices: Sequence[str], cluster_gpus: float, label: str, share: float = 1.0) -> list[float]:
    """``share`` of a GPU for a job on ``cuda`` (and on ``auto`` when the cluster has GPUs), none on ``cpu``."""
    wanted = [share if d.startswith("cuda") or (d == "auto" and cluster_gpus >= 1) else 0 for d in devices]
    if any(wanted) and cluster_gpus < 1:
        raise RuntimeError(f"{label}: trainings on device 'cuda' need a GPU, and the Ray cluster has none "
                           "(use device='auto' or 'cpu', or a cluster with GPU nodes)")
    return wanted


def _run(function: Callable[..., Any], shared: Any, job: tuple) -> Any:
    """One job in a Ray worker: one torch thread, as a local worker (the environment came with the task)."""
    import torch

    torch.set_num_threads(1)
    return function(shared, *job)


def _cancel(ray, refs: list, grace_s: float) -> None:
    """Cancel ``refs``: a running task gets a KeyboardInterrupt (its run ends KILLED); force what outlives ``grace_s``."""
    for ref in refs:
        ray.cancel(ref)
    try:
        _, left = ray.wait(refs, num_returns=len(refs), timeout=grace_s, fetch_local=False)
    except KeyboardInterrupt:  # a second Ctrl-C: stop waiting
        left = refs
    for ref in left:
        ray.cancel(ref, force=True)


def _close_left_running(parent_run_id: str | None) -> list[str]:
    """Mark KILLED every run still RUNNING under ``parent_run_id`` once its tasks are cancelled; their ids.

    A task forced off after the grace period, or interrupted inside a write to the store (Ray raises the
    interrupt in the task's thread, which :mod:`dla_repro.interrupts` cannot defer), cannot close its own run;
    the driver, the one process still standing, does (seen on a loaded CI machine: a run left RUNNING)."""
    if not parent_run_id:
        return []
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking.tracking_uri())
    parent = client.get_run(parent_run_id)
    left = client.search_runs([parent.info.experiment_id],
                              f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status = 'RUNNING'")
    for run in left:
        client.set_terminated(run.info.run_id, status="KILLED")
    return [run.info.run_id for run in left]


def map_on_ray(function: Callable[..., Any], jobs: Sequence[tuple], *, shared: Any = None,
               environ: Mapping[str, str] | None = None, label: str = "ray", names: Sequence[str] | None = None,
               devices: Sequence[str] | None = None, gpu_share: float = 1.0, address: str | None = None,
               local_cpus: int | None = None) -> list[Any]:
    """``[function(shared, *job) for job in jobs]``, each job a Ray task with ``environ`` added to its environment.

    ``devices[k]`` (default ``cpu``) decides whether job k asks for a GPU -- ``gpu_share`` of one (0.125: eight
    jobs side by side on each GPU); ``names[k]`` names its task.
    ``function`` and ``shared`` must pickle (cloudpickle); ``shared`` is stored once in the object store.
    See the module docstring for the cluster, the environment and faults.
    """
    ray = import_ray()
    jobs = list(jobs)
    names = list(names) if names is not None else [f"job {k}" for k in range(len(jobs))]
    where = _connect(ray, address, local_cpus)
    resources = ray.cluster_resources()
    gpus = _gpus(list(devices) if devices is not None else ["cpu"] * len(jobs), resources.get("GPU", 0), label,
                 gpu_share)
    env_vars = {k: str(v) for k, v in (environ or {}).items()}
    if _STATE["local"]:  # the same machine: the workers import what this process imports
        env_vars["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    if _STATE["task"] is None:
        _STATE["task"] = ray.remote(max_retries=0)(_run)
    shared_ref = ray.put(shared)
    refs = [_STATE["task"].options(num_cpus=1, num_gpus=gpu, name=f"{label}: {name}",
                                   runtime_env={"env_vars": env_vars}).remote(function, shared_ref, job)
            for job, gpu, name in zip(jobs, gpus, names)]
    index = {ref: k for k, ref in enumerate(refs)}
    done: list[Any] = [None] * len(jobs)
    progress.report(f"{label}: {len(jobs)} Ray tasks on {where}")
    pending = list(refs)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                k = index[ref]
                try:
                    done[k] = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:
                    exc.add_note(f"{label}: raised by the Ray task of {names[k]}; the other tasks were cancelled")
                    raise
                progress.report(f"{label}: finished {len(jobs) - len(pending)}/{len(jobs)} ({names[k]})")
        return done
    except BaseException:
        if pending:
            _cancel(ray, pending, _CANCEL_GRACE_S)
            closed = _close_left_running(env_vars.get(tracking.PARENT_RUN_ENV))
            if closed:
                progress.report(f"{label}: marked KILLED {len(closed)} run(s) their cancelled tasks left open")
        raise
