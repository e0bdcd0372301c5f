"""``TrainConfig``: everything one call to ``fit`` needs to know, as plain values.

The config is a flat dataclass of ints, floats, strings and bools so that it can be
logged as MLflow parameters, stored in a checkpoint loadable with
``torch.load(weights_only=True)``, and compared on resume. Build variants with
``dataclasses.replace(cfg, lr=0.01)``.

Optimiser and schedule are timm's: ``optimizer`` is any name
``timm.optim.create_optimizer_v2`` knows (``sgd``, ``adamw``, …); ``schedule`` is
passed to ``timm.scheduler.create_scheduler_v2``:

* ``step``   — lr × ``decay_rate`` every ``decay_epochs`` epochs;
* ``poly``   — lr · (1 − t/T)^``poly_power`` (0.9, as in the segmentation papers);
* ``cosine`` — half-cosine from lr to ``min_lr``;
* ``constant`` — fixed lr (after the optional warmup).

The schedule is stepped **per epoch** by default (``step_on_epochs=True``): the lr
is constant within an epoch. ``step_on_epochs=False`` steps it after every
optimiser update (t counts updates; epochs-based lengths are scaled by the number
of batches), which is what "poly" usually means in segmentation papers. The ``lr``
logged for an epoch is the lr of its first update.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

SCHEDULES = ("step", "poly", "cosine", "constant")
AMP_DTYPES = ("bfloat16", "float16")

# Fields that change how a run is *watched*, not what it computes: not logged as
# MLflow params and not compared on resume (resuming sets ``resume=True``).
RUNTIME_ONLY = ("resume", "progress")


@dataclass
class TrainConfig:
    # length and batch
    epochs: int = 10
    batch_size: int = 64
    drop_last: bool = False  # drop the last incomplete training batch
    # optimiser — timm.optim.create_optimizer_v2
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    # schedule — timm.scheduler.create_scheduler_v2
    schedule: str = "step"
    step_on_epochs: bool = True
    decay_epochs: int = 30  # step: decay interval
    decay_rate: float = 0.1  # step: lr multiplier at each decay
    poly_power: float = 0.9  # poly: exponent
    min_lr: float = 0.0  # cosine / poly floor
    warmup_epochs: int = 0
    warmup_lr: float = 1e-5
    # numerics
    amp: bool | None = None  # None: autocast on CUDA, off on CPU
    amp_dtype: str = "bfloat16"  # float16 adds a GradScaler
    channels_last: bool = False
    clip_grad: float | None = None  # max global grad norm
    ema: bool = False  # keep a timm ModelEmaV3 copy, evaluated as val_ema_*
    ema_decay: float = 0.9998
    # evaluation and checkpoints
    monitor: str | None = None  # metric that picks best.pt; None: the task's default
    monitor_mode: str | None = None  # "max" or "min"; None: the task's default
    ckpt_dir: str | None = None  # None: <checkpoints_dir()>/<run_name>
    resume: bool = False  # continue from <ckpt_dir>/last.pt if it exists
    # runtime
    seed: int = 0
    device: str = "auto"  # "auto": cuda:<LOCAL_RANK> if available, else cpu
    num_workers: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule={self.schedule!r}: expected one of {SCHEDULES}")
        if self.amp_dtype not in AMP_DTYPES:
            raise ValueError(f"amp_dtype={self.amp_dtype!r}: expected one of {AMP_DTYPES}")
        if self.monitor_mode not in (None, "max", "min"):
            raise ValueError(f"monitor_mode={self.monitor_mode!r}: expected 'max' or 'min'")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be at least 1")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def params(self) -> dict[str, Any]:
        """The fields that define the trained configuration (logged, compared on resume)."""
        return {k: v for k, v in self.to_dict().items() if k not in RUNTIME_ONLY}
