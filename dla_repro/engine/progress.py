"""One line per epoch for a person watching a pipeline: ``dla-repro run`` shows them.

Under ``dla-repro run`` the notebook's kernel cannot print to the terminal (its
output goes into the executed notebook and the execution's log file), so the
pipeline hands it a file in ``DLA_REPRO_PROGRESS``; :func:`epoch_line` appends
one line per finished epoch there, and the pipeline echoes new lines to the
console as they arrive. Outside the pipeline the variable is unset and nothing
is written (a notebook in JupyterLab shows tqdm bars with ``progress=True``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence

PROGRESS_ENV = "DLA_REPRO_PROGRESS"


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def format_epoch(run_name: str, epoch: int, epochs: int, record: Mapping[str, float],
                 epoch_seconds: Sequence[float], keys: Sequence[str] = ()) -> str:
    """``"fcn seed=0  epoch 3/10  train_loss=0.91 val_miou=0.41  2.1 s/epoch  ETA 15s"``.

    The ETA of this training is the mean epoch time so far times the epochs left.
    """
    shown = " ".join(f"{k}={record[k]:.4g}" for k in keys if k in record)
    mean = sum(epoch_seconds) / max(len(epoch_seconds), 1)
    left = epochs - (epoch + 1)
    eta = f"ETA {_duration(mean * left)}" if left > 0 else "done"
    return f"{run_name}  epoch {epoch + 1}/{epochs}  {shown}  {mean:.1f} s/epoch  {eta}"


def report(line: str) -> None:
    """Append ``line`` to the pipeline's progress file, if there is one (never raises)."""
    path = os.environ.get(PROGRESS_ENV)
    if not path:
        return
    try:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(f"{time.strftime('%H:%M:%S')} {line}\n")
    except OSError:
        pass  # progress is a convenience; training goes on
