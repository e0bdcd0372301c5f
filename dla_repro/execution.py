"""What one notebook execution needs around papermill: a quiet console, progress
lines, outputs that are never half-written, and a manifest that parallel
executions can share.

* :class:`Console` writes to the terminal even while :func:`output_to_log` sends
  everything else this process and its kernel print (papermill's per-cell lines,
  kernel warnings) to the execution's log file.
* :class:`ProgressTail` echoes the kernel's one-line-per-epoch progress
  (``engine.progress``) as it arrives.
* :func:`staging_dir` / :func:`promote`: a notebook writes its figures, tables and
  executed copy into a staging folder of its own; only a successful execution
  moves them into ``results/`` (file by file with ``os.replace``, under a lock), so
  a failed or interrupted execution leaves the previous good outputs in place.
* :func:`update_manifest`: read-merge-replace of ``results/manifest_<profile>.json``
  under the same lock, so no writer loses another's entry.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from .paths import results_dir

WORK = ".work"  # results/.work/: staging folders and the lock (ignored by git)


# ---------------------------------------------------------------------- console
class Console:
    """Lines to the terminal (the stdout this process started with), whatever fd 1 points at later."""

    def __init__(self, stream: TextIO | None = None):
        if stream is None:
            sys.stdout.flush()
            try:
                stream = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1, encoding="utf-8",
                                   errors="replace")
            except (AttributeError, OSError, ValueError):  # no file descriptor (captured in a test, a GUI)
                stream = sys.stdout
        self._stream = stream
        self._lock = threading.Lock()

    def __call__(self, line: str = "") -> None:
        with self._lock:
            try:
                self._stream.write(f"{line}\n")
                self._stream.flush()
            except (OSError, ValueError):
                pass  # the terminal went away (closed pipe): the execution carries on regardless


@contextlib.contextmanager
def output_to_log(log: Path) -> Iterator[Path]:
    """Send fds 1 and 2 of this process -- and of every process it starts, such as the
    notebook's kernel -- to ``log`` (appended), restoring them afterwards."""
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    target = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(target, 1)
        os.dup2(target, 2)
        yield log
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, target):
            os.close(fd)


class ProgressTail:
    """Echo the lines a kernel appends to ``path`` (``engine.progress``), prefixed, until stopped."""

    def __init__(self, path: Path, echo: Callable[[str], None], prefix: str, interval: float = 0.5):
        self.path, self.echo, self.prefix, self.interval = path, echo, prefix, interval
        self._stop = threading.Event()
        self._offset = 0
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> ProgressTail:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("")  # a resumed execution's earlier lines were shown then
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._drain()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._drain()

    def _drain(self) -> None:
        try:
            with open(self.path, encoding="utf-8", errors="replace") as handle:
                handle.seek(self._offset)
                chunk = handle.read()
        except OSError:
            return
        complete = chunk[: chunk.rfind("\n") + 1]  # a line being written is echoed next time
        self._offset += len(complete.encode("utf-8"))
        for line in complete.splitlines():
            self.echo(f"{self.prefix}{line}")


# ------------------------------------------------------------------ results I/O
@contextlib.contextmanager
def results_lock() -> Iterator[None]:
    """Exclusive lock over ``results/`` writes (promotion, manifest) across processes."""
    from .tracking import _file_lock  # the same flock the MLflow store's creation uses

    with _file_lock(results_dir() / WORK / "lock"):
        yield


def staging_dir(key: str) -> Path:
    """A fresh folder an execution writes its results into (``results/.work/staging/<key>``)."""
    path = results_dir() / WORK / "staging" / key
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def promote(staging: Path, target: Path | None = None) -> list[Path]:
    """Move every file of ``staging`` to the same place under ``target`` (default ``results/``),
    each with ``os.replace`` (a reader sees the old file or the new one), under the results lock;
    then remove ``staging``. Returns the files written."""
    target = target or results_dir()
    written = []
    with results_lock():
        for src in sorted(p for p in staging.rglob("*") if p.is_file()):
            dst = target / src.relative_to(staging)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
            written.append(dst)
    shutil.rmtree(staging, ignore_errors=True)
    return written


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def update_manifest(profile: str, change: Callable[[dict], None]) -> Path:
    """Apply ``change`` to ``results/manifest_<profile>.json`` (created if absent) under the lock."""
    path = results_dir() / f"manifest_{profile}.json"
    with results_lock():
        manifest = json.loads(path.read_text()) if path.exists() else {}
        manifest.setdefault("notebooks", {})
        change(manifest)
        write_json_atomic(path, manifest)
    return path


def folder_size(path: Path) -> int:
    """Bytes in the files under ``path`` (0 if absent)."""
    if not path.exists():
        return 0
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
