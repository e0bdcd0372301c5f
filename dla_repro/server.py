"""``dla-repro ui --serve``: a team tracking server -- ``mlflow server`` over a database, with an artifact proxy.

The server keeps runs, parameters and metrics in the database named by the backend
store URI (PostgreSQL for a team: ``postgresql://USER@HOST:5432/DB``; the driver is
the ``team`` extra) and the runs' files under the artifacts destination (a folder
or an object-store URI). It proxies artifacts (``--serve-artifacts``): new
experiments get ``mlflow-artifacts:/`` locations, so clients upload and download
files through the server's HTTP API and need no access to the destination.
Clients set ``MLFLOW_TRACKING_URI=http://HOST:PORT``.

The backend URI reaches ``mlflow server`` through its ``MLFLOW_BACKEND_STORE_URI``
variable, not its command line: a command line is readable by every user of the
machine (``ps``), a process's environment only by its owner. Whatever is printed
shows the URI with its password masked.

A plain ``mlflow server`` has **no authentication**: whoever reaches the port can
read, change and delete every run. It binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import tracking

BACKEND_ENV = "MLFLOW_BACKEND_STORE_URI"
ARTIFACTS_ENV = "MLFLOW_ARTIFACTS_DESTINATION"
LOOPBACK = ("127.0.0.1", "localhost", "::1")

redacted = tracking.redacted_uri


def _scheme(uri: str) -> str:
    """``postgresql`` for ``postgresql+psycopg://...``; "" for a plain path."""
    match = re.match(r"^([A-Za-z][\w+.-]*)://", uri)
    return match.group(1).split("+", 1)[0].lower() if match else ""


def artifacts_destination(value: str) -> str:
    """A URI (``s3://...``, ``file:///...``) as given; a plain path made absolute (the server's folder)."""
    if _scheme(value):
        return value
    return str(Path(value).expanduser().resolve())


class ServeError(Exception):
    """Why the server cannot start, in one line."""


@dataclass(frozen=True)
class ServerCommand:
    argv: list[str]
    backend_store_uri: str
    artifacts: str

    @property
    def env(self) -> dict[str, str]:
        """The environment ``mlflow server`` runs in: this one plus the backend URI."""
        return {**os.environ, BACKEND_ENV: self.backend_store_uri}

    def shown(self) -> str:
        """The command as a shell line, password masked (what ``--dry-run`` prints)."""
        return f"{BACKEND_ENV}={shlex.quote(redacted(self.backend_store_uri))} {shlex.join(self.argv)}"


def server_command(
    mlflow_bin: str, backend_store_uri: str | None, artifacts: str | None, host: str, port: int,
    workers: int | None = None, allowed_hosts: str | None = None,
) -> ServerCommand:
    """The ``mlflow server`` invocation; ``ServeError`` when the backend or the artifact place is not given
    (neither as an option nor as ``MLFLOW_BACKEND_STORE_URI`` / ``MLFLOW_ARTIFACTS_DESTINATION``)."""
    backend = backend_store_uri or os.environ.get(BACKEND_ENV)
    if not backend:
        raise ServeError(f"--serve needs the runs' database: --backend-store-uri postgresql://USER@HOST:PORT/DB "
                         f"(or {BACKEND_ENV})")
    if _scheme(backend) in ("http", "https"):
        raise ServeError(f"--backend-store-uri {redacted(backend)} is a tracking server; the backend store is a "
                         "database such as postgresql://USER@HOST:PORT/DB")
    where = artifacts or os.environ.get(ARTIFACTS_ENV)
    if not where:
        raise ServeError(f"--serve needs a place for the runs' files: --artifacts-destination DIR or URI "
                         f"(or {ARTIFACTS_ENV})")
    where = artifacts_destination(where)
    argv = [mlflow_bin, "server", "--serve-artifacts", "--artifacts-destination", where,
            "--host", host, "--port", str(port)]
    if workers:
        argv += ["--workers", str(workers)]
    if allowed_hosts:
        argv += ["--allowed-hosts", allowed_hosts]
    return ServerCommand(argv, backend, where)


def backend_problem(uri: str, timeout: int = 5) -> str | None:
    """Why the server could not use the database at ``uri`` (driver missing, unreachable, refused), or None.

    Only PostgreSQL is checked (a connection within ``timeout`` seconds); MLflow creates and
    migrates the tables itself when it starts.
    """
    if _scheme(uri) not in ("postgresql", "postgres"):
        return None
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(uri, connect_args={"connect_timeout": timeout})
    except (ImportError, ModuleNotFoundError) as exc:
        return (f"no PostgreSQL driver ({exc}); install the team extra: pip install -e '.[team]' "
                "(psycopg[binary])")
    except sqlalchemy.exc.ArgumentError as exc:
        return f"not a database URI: {exc}"
    try:
        with engine.connect():
            return None
    except sqlalchemy.exc.SQLAlchemyError as exc:
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        return f"cannot connect to {redacted(uri)}: {detail[0] if detail else type(exc).__name__}"
    finally:
        engine.dispose()


def run(command: ServerCommand) -> int:
    """Run the server until it ends, or until Ctrl-C / SIGTERM stops it (then 0).

    The server (``mlflow server`` and its uvicorn workers) gets a process group of its own, which
    is stopped as a whole: a worker is never left serving after this command ended.
    """
    if not _scheme(command.artifacts):  # a folder of this machine
        Path(command.artifacts).mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(command.argv, env=command.env, start_new_session=True)

    def stop(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        _stop_group(proc)
        print("dla-repro ui: server stopped", file=sys.stderr)
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stop_group(proc: subprocess.Popen, grace: float = 20) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # workers still up after the grace period
    proc.wait()


def client_hint(host: str, port: int) -> str:
    """What clients export to log to this server."""
    import socket

    name = socket.getfqdn() if host in ("0.0.0.0", "::", "") else host
    return f"MLFLOW_TRACKING_URI=http://{name}:{port}"


def exposure_warning(host: str) -> str | None:
    """The warning for a server reachable from other machines (None on loopback)."""
    if host in LOOPBACK:
        return None
    return (f"dla-repro ui: warning: listening on {host}: mlflow server has no authentication -- anyone who "
            "reaches this port can read, change and delete every run; keep it on a trusted network "
            "(firewall, VPN, or a reverse proxy with authentication in front)")


def describe(command: ServerCommand, host: str, port: int) -> Sequence[str]:
    """The lines printed before the server starts."""
    return [
        f"MLflow tracking server on http://{host}:{port} over {redacted(command.backend_store_uri)}, "
        f"artifacts in {command.artifacts}",
        f"  clients: export {client_hint(host, port)}",
    ]
