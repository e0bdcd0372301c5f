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
logged for an epoch is the lr of its first update (in the first parameter group).

**Length.** ``epochs`` full passes over the training set, or -- with
``iterations > 0`` -- exactly that many optimiser updates (GALD trains 50,000
iterations with poly stepped per iteration, arXiv 1909.07229): the run then has
``ceil(iterations / batches per epoch)`` epochs, the last one possibly partial,
and ``epochs`` is not used. Evaluation, checkpoints and logging stay per epoch.
With ``step_on_epochs=False`` the schedule's length T is ``iterations`` updates;
``warmup_epochs`` and ``decay_epochs`` still count epochs of the training loader.

**Parameter groups.** By default the optimiser is timm's
``create_optimizer_v2(model, …)``: one lr, and no weight decay on biases and
norm parameters. ``param_groups`` gives the parameters whose name matches a
pattern (``fnmatch`` over ``model.named_parameters()``, first matching pattern
wins) their own lr multiplier and/or weight decay, e.g. learned scale factors
(DynOPool, arXiv 2205.15254; Shape Adaptor, arXiv 2008.00892)::

    TrainConfig(param_groups={"*.log_scale": {"lr_scale": 10.0, "weight_decay": 0.0}})

``lr_scale`` multiplies the scheduled lr (timm's ``lr_scale`` group key, the
mechanism of its layer-wise lr decay); without ``weight_decay`` a group follows
timm's rule (none on 1-d parameters). ``every: k`` updates the group's parameters
on every k-th update only (updates 0, k, 2k, …): on the others their gradients are
dropped before the optimiser step, so they neither move nor enter its moments --
Shape Adaptor's schedule, whose official code steps the α every 20 iterations
(lorenmt/shape-adaptor ``model_training.py``, ``--step``; it does so with its own
optimiser, in an extra forward/backward pass before the weights' step, where here
both step together on that update). The spec is logged as one MLflow param
holding its JSON.

**Several processes** (``torchrun``, ``dla-repro train --nproc N``): ``batch_size``
is the *global* batch -- each of the N ranks reads ``batch_size / N`` samples per
update (a ``ValueError`` when N does not divide it), so the same config gives the
same optimisation on any number of ranks. ``sync_bn=True`` turns every BatchNorm
into ``nn.SyncBatchNorm`` when a process group exists (statistics over the global
batch, as the DLA paper's segmentation trained); without a process group it
changes nothing. PyTorch's SyncBatchNorm trains on GPUs only.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SCHEDULES = ("step", "poly", "cosine", "constant")
AMP_DTYPES = ("bfloat16", "float16")

# Fields that change how a run is *watched* or *where* its files go, not what it
# computes: not logged as MLflow params and not compared on resume (resuming sets
# ``resume=True``; ``val_every`` only decides how often the model is scored -- evaluation touches no weight and
# every epoch re-seeds its streams --; ``sweep_workers`` and ``sweep_executor`` only decide how many trainings of a sweep run side by side, and where; the checkpoint folder is per execution and holds an absolute path,
# which would make identical configurations from two clones look different).
RUNTIME_ONLY = ("resume", "progress", "ckpt_dir", "sweep_workers", "val_every", "sweep_executor")
GROUP_KEYS = ("lr_scale", "weight_decay", "every")


@dataclass
class TrainConfig:
    # length and batch
    epochs: int = 10
    iterations: int = 0  # > 0: train exactly this many updates instead of ``epochs`` epochs
    batch_size: int = 64
    drop_last: bool = False  # drop the last incomplete training batch
    # optimiser — timm.optim.create_optimizer_v2
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    # {name pattern: {"lr_scale": x, "weight_decay": y}}; empty: timm's default groups
    param_groups: dict[str, dict[str, float]] = field(default_factory=dict)
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
    sync_bn: bool = False  # under DDP: BatchNorm statistics over all ranks (nn.SyncBatchNorm)
    # evaluation and checkpoints
    val_every: int = 1  # validate after every k-th epoch and after the last (0: after the last only)
    monitor: str | None = None  # metric that picks best.pt; None: the task's default
    monitor_mode: str | None = None  # "max" or "min"; None: the task's default
    ckpt_dir: str | None = None  # None: <paths.work_dir()>/<run_name>
    resume: bool = False  # continue from <ckpt_dir>/last.pt if it exists
    # runtime
    seed: int = 0
    device: str = "auto"  # "auto": cuda:<LOCAL_RANK> if available, else cpu
    num_workers: int = 0
    progress: bool = True
    sweep_workers: int = 1  # trainings a sweep runs at once, one thread each (0: one per CPU core; see engine.sweep)
    sweep_executor: str = ""  # "local" or "ray" ("": $DLA_REPRO_EXECUTOR, else local; see engine.executors)

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule={self.schedule!r}: expected one of {SCHEDULES}")
        if self.amp_dtype not in AMP_DTYPES:
            raise ValueError(f"amp_dtype={self.amp_dtype!r}: expected one of {AMP_DTYPES}")
        if self.monitor_mode not in (None, "max", "min"):
            raise ValueError(f"monitor_mode={self.monitor_mode!r}: expected 'max' or 'min'")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be at least 1")
        if isinstance(self.val_every, bool) or not isinstance(self.val_every, int) or self.val_every < 0:
            raise ValueError(f"val_every={self.val_every!r}: expected 0 (after the last epoch only) or a positive count")
        if self.sweep_executor not in ("", "local", "ray"):
            raise ValueError(f"sweep_executor={self.sweep_executor!r}: expected 'local', 'ray' or '' (the default)")
        if self.iterations < 0:
            raise ValueError(f"iterations={self.iterations}: expected 0 (train for epochs) or a positive count")
        if not isinstance(self.param_groups, Mapping):
            raise ValueError(f"param_groups must map name patterns to settings, got {self.param_groups!r}")
        for pattern, spec in self.param_groups.items():
            unknown = set(spec) - set(GROUP_KEYS) if isinstance(spec, Mapping) else None
            if unknown is None or unknown or not spec:
                raise ValueError(
                    f"param_groups[{pattern!r}] = {spec!r}: expected a non-empty mapping with keys from {GROUP_KEYS}"
                )
            every = spec.get("every", 1)
            if isinstance(every, bool) or not isinstance(every, int) or every < 1:
                raise ValueError(f"param_groups[{pattern!r}]['every'] = {every!r}: expected a positive integer")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def params(self) -> dict[str, Any]:
        """The fields that define the trained configuration (logged, compared on resume).

        ``param_groups`` becomes one JSON string (its patterns are not valid MLflow
        param names). ``iterations``, ``param_groups`` and ``sync_bn`` appear only when
        set, so a run that uses none of them logs -- and resumes against -- the params
        it did before they existed.
        """
        params = {k: v for k, v in self.to_dict().items() if k not in RUNTIME_ONLY}
        for key in ("iterations", "sync_bn"):
            if not params[key]:
                del params[key]
        groups = params.pop("param_groups")
        if groups:
            params["param_groups"] = json.dumps(groups)
        return params
