"""Faults that lose nothing: a pre-flight check of the tracking store, runs left open
by dead processes, and the interrupted execution a ``--resume`` continues.

Every run this project opens carries three tags (``tracking.owner_tags``):

* ``dla_repro.host`` and ``dla_repro.process`` -- the machine and the process
  (``<pid>:<start time>``, so a recycled pid is not mistaken for the owner) that
  holds the run open;
* ``dla_repro.root`` -- the notebook run of the execution it belongs to.

A run still ``RUNNING`` whose owner process is gone was left by a kill (``kill -9``,
a dead kernel, a power cut): :func:`close_stale_runs` marks it ``KILLED`` with a note.
:func:`close_execution_runs` closes every run of one execution that its kernel did
not close (Ctrl-C, dead kernel). :func:`find_resumable` picks the latest
unfinished execution of a notebook with the same profile and parameters.
"""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from typing import Any

from . import interrupts, tracking

HOST_TAG, PROCESS_TAG, ROOT_TAG = "dla_repro.host", "dla_repro.process", "dla_repro.root"
CLOSED_TAG = "dla_repro.closed"


# ------------------------------------------------------------------- processes
def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), or "" where unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            stat = handle.read()
    except OSError:
        return ""
    # The command name (field 2) may contain spaces: split after its closing parenthesis.
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else ""


def process_token(pid: int | None = None) -> str:
    """``"<pid>:<start time>"`` of a process (this one by default)."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}:{_start_time(pid)}"


def process_alive(token: str) -> bool:
    """Whether the process named by :func:`process_token` still runs (same pid *and* start time)."""
    pid_text, _, started = token.partition(":")
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    return not started or not _start_time(pid) or _start_time(pid) == started


# ------------------------------------------------------------------- pre-flight
def preflight(uri: str | None = None, timeout: float = 2.0) -> str | None:
    """Why the tracking store cannot be used, in one line; None when it can (about a second at most).

    An HTTP server must answer (any HTTP status counts: it is there); a SQLite
    store's folder must be writable. Other schemes are not checked.
    """
    uri = uri or tracking.tracking_uri()
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
                return None
        except urllib.error.HTTPError:
            return None  # the server answered
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            return f"MLflow tracking server {uri} is unreachable ({reason})"
    db = tracking._sqlite_path(uri)
    if db is not None:
        folder = db.parent
        if not folder.is_dir():
            return f"MLflow store {uri}: folder {folder} does not exist"
        if not os.access(folder, os.W_OK) or (db.exists() and not os.access(db, os.W_OK)):
            return f"MLflow store {uri} is not writable"
    return None


# ------------------------------------------------------------------------- runs
def _client():
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking.configure())


def _search(experiment_ids: Iterable[str], filter_string: str) -> list[Any]:
    ids = list(experiment_ids)
    if not ids:
        return []
    return _client().search_runs(ids, filter_string=filter_string, max_results=10000)


@interrupts.deferred()
def _close(client, run, status: str, note: str) -> None:
    client.set_tag(run.info.run_id, CLOSED_TAG, note[:5000])
    client.set_terminated(run.info.run_id, status=status)


def close_stale_runs(experiment_ids: Iterable[str]) -> list[str]:
    """Mark ``KILLED`` every ``RUNNING`` run of these experiments whose owner process on this
    machine is gone. Returns the run ids closed. Runs owned by another machine are left alone."""
    client, host, closed = _client(), socket.gethostname(), []
    for run in _search(experiment_ids, "attributes.status = 'RUNNING'"):
        tags = run.data.tags
        owner = tags.get(PROCESS_TAG)
        if tags.get(HOST_TAG) != host or not owner or process_alive(owner):
            continue
        _close(client, run, "KILLED", f"closed by dla-repro: its process {owner.split(':')[0]} on {host} "
                                      "ended without closing it (killed?)")
        closed.append(run.info.run_id)
    return closed


def close_execution_runs(experiment_id: str, root_id: str, status: str, note: str) -> list[str]:
    """Close the runs of one execution (tag ``dla_repro.root``) still open, notebook run excluded."""
    client, closed = _client(), []
    for run in _search([experiment_id], f"attributes.status = 'RUNNING' and tags.`{ROOT_TAG}` = '{root_id}'"):
        if run.info.run_id == root_id:
            continue
        _close(client, run, status, note)
        closed.append(run.info.run_id)
    return closed


def find_resumable(experiment: str, profile: str, params: Mapping[str, Any]) -> Any | None:
    """The latest notebook run of ``experiment`` with this profile that did not finish and whose
    logged parameters include ``params`` (same values) -- the execution a ``--resume`` continues."""
    client = _client()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    wanted = tracking.flatten(params)
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.kind = 'notebook' and tags.profile = '{profile}' and attributes.status != 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=200,
    )
    for run in runs:
        if run.info.status == "RUNNING" and process_alive(run.data.tags.get(PROCESS_TAG, "")):
            continue  # another execution is still working on it
        logged = run.data.params
        if logged and all(logged.get(k) == v for k, v in wanted.items()):
            return run
    return None
