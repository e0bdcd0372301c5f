"""Checkpoints: atomic writes, ``weights_only`` loads, clear errors.

A training checkpoint (``last.pt``, ``best.pt``) is a dict of tensors and plain
Python values only, so ``torch.load(path, weights_only=True)`` opens it::

    model, optimizer, scheduler, ema, scaler   state dicts (ema/scaler may be {})
    epoch        the last completed epoch (0-based)
    history      one dict of floats per completed epoch (what was logged)
    best         {"metric": name, "mode": "max"|"min", "value": float|None, "epoch": int}
    rng          torch / cuda / numpy / python RNG states (see seed.get_rng_state)
    run_id       the MLflow run this training logs to (None off rank 0 / no tracking)
    config       TrainConfig.to_dict()
    params       the flattened MLflow params of the run, compared on resume

``final.pt`` (logged to MLflow) is the model's bare ``state_dict``.

A write goes to a temporary file in the same folder, is fsync'ed, then renamed
over the target with ``os.replace``: a reader sees the old file or the new one,
never half of one. A crash mid-write can only leave a ``*.tmp`` file behind; its
name carries the writer's process id, and ``remove_stale_tmp`` clears only files
whose writer is gone -- never another live process's save in progress.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

REQUIRED_KEYS = ("model", "optimizer", "scheduler", "ema", "scaler", "epoch", "history", "best", "rng",
                 "run_id", "config", "params")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupt, or not one of ours."""


def save_checkpoint(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` ``obj`` to ``path`` atomically (tmp file + fsync + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    # Make the rename itself durable.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", training: bool = True) -> dict:
    """Load a checkpoint with ``weights_only=True``; any failure is a ``CheckpointError`` naming ``path``.

    ``training=True`` also checks that it is a training checkpoint written by ``fit``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, bad pickle, disallowed global, …
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"checkpoint {path} is corrupt, truncated or not loadable with weights_only=True "
            f"({type(exc).__name__}: {reason}); delete it or train with resume=False"
        ) from None
    if training:
        missing = [k for k in REQUIRED_KEYS if not isinstance(obj, dict) or k not in obj]
        if missing:
            raise CheckpointError(f"{path} is not a training checkpoint written by fit (missing {missing})")
    return obj


def _writer_alive(tmp: Path) -> bool:
    """Whether the process that is writing ``tmp`` (``.<name>.<pid>-<random>.tmp``) still runs."""
    match = re.search(r"\.(\d+)-[^.]*\.tmp$", tmp.name)
    if match is None:
        return False  # a file of the older naming: its writer is long gone
    pid = int(match.group(1))
    if pid == os.getpid():
        return False  # ours, from a save this process abandoned
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def remove_stale_tmp(folder: str | os.PathLike) -> list[Path]:
    """Delete temporary files left by processes killed in the middle of ``save_checkpoint``.

    A file whose writer is still running (another execution saving into the same
    folder) is left alone. Returns the files removed.
    """
    removed = []
    for tmp in Path(folder).glob(".*.tmp"):
        if _writer_alive(tmp):
            continue
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed.append(tmp)
    return removed
