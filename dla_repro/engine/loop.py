"""The training loop: ``fit(model, data, config, task)``.

One call trains one configuration and is one MLflow run (``tracking.child_run``),
nested under the notebook or sweep run when one is active. Each epoch (``epochs``
of them, or as many as ``iterations`` updates need, the last one then partial):

1. reseed torch / numpy / ``random`` from ``(seed, epoch)``; set the epoch's data order;
2. train: forward under autocast, ``task.loss(output, target, model=model)``, stop
   on a non-finite loss, backward, optional grad-norm clipping, optimiser step, EMA
   update, ``scheduler.step_update`` (a no-op unless ``step_on_epochs=False``);
3. evaluate on ``val`` (and the EMA weights as ``val_ema_*``) -- after every ``val_every``-th epoch and the
   last; an epoch without it cannot become ``best.pt`` when the monitor is a ``val_*`` metric;
4. ``scheduler.step(epoch + 1)`` (a no-op when stepping per update);
5. write ``best.pt`` (if improved) and ``last.pt`` atomically;
6. only then log the epoch's metrics to MLflow with ``step=epoch`` (0-based).

Models may return a main output with auxiliary ones (``dla_repro.outputs``): the
task's loss weighs them, the metrics see the main output only. The optimiser and
schedule come from ``optim`` (timm's factories; ``TrainConfig.param_groups``).

**Resume** (``resume=True`` and ``<ckpt_dir>/last.pt`` exists): the model,
optimiser, scheduler, EMA, scaler and RNG states are restored, training goes on at
the epoch after the checkpoint, in the same MLflow run (its id is in the
checkpoint). Because metrics are logged only after the checkpoint holding them is
on disk, a killed run can have *fewer* steps logged than checkpointed, never more:
on resume the epochs in the checkpoint's history that the run lacks are logged
from the history, and the epochs after the checkpoint are trained and logged for
the first time. Every step is logged exactly once. If the checkpoint holds a run
whose every epoch is done, nothing is retrained: the run is completed (final
weights logged) and its result returned; ``resume=False`` trains again from
scratch in a new run, overwriting the checkpoints. A checkpoint written with other
parameters is refused (``CheckpointError``) rather than mixed into a run.

On CPU a resumed run ends with the same metrics as an uninterrupted one, bit for bit.

**Several processes** (``torchrun``; ``dla-repro train --nproc N``, see
``dla_repro.launch``): every rank runs this loop on its shard (``distributed``);
``batch_size`` is the global batch (``batch_size / N`` per rank), so N ranks give
the same per-update losses as one process, to float rounding, when no BatchNorm
sees a different batch (``sync_bn=True`` on GPUs, or no BatchNorm). Rank 0 alone
opens the MLflow run, writes ``last.pt`` / ``best.pt``, logs and reports progress;
every rank writes ``final.pt`` into its own ``ckpt_dir`` (the weights the caller
gets back; identical on all ranks). On resume rank 0 reads ``last.pt`` and hands
it to every rank, so all continue from the same state.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import torch
from timm.utils import ModelEmaV3
from tqdm import tqdm

from .. import interrupts, tracking
from ..outputs import main_output
from ..paths import checkpoints_dir, work_dir
from . import distributed, progress
from .checkpoint import CheckpointError, load_checkpoint, remove_stale_tmp, save_checkpoint
from .config import RUNTIME_ONLY, TrainConfig
from .loaders import as_bundle, dataset_identity, make_loader, set_epoch
from .optim import create_optimizer, create_scheduler, drop_off_schedule_grads, num_epochs
from .seed import epoch_seed, get_rng_state, seed_everything, set_rng_state
from .tasks import ClassificationTask


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""

    def __init__(self, value: float, epoch: int, step: int, batch: int):
        self.value, self.epoch, self.step, self.batch = value, epoch, step, batch
        super().__init__(
            f"training loss is {value} at epoch {epoch}, step {step} (batch {batch} of the epoch); "
            "try a lower lr, clip_grad, or check the data"
        )


@dataclass
class FitResult:
    history: pd.DataFrame  # one row per epoch: epoch, lr, train_*, val_*, epoch_time_s
    final: dict[str, float]  # the last epoch's row
    monitor: str  # the metric that chose best.pt
    best: float | None  # its best value
    best_epoch: int
    run_id: str | None  # the MLflow run (None off rank 0)
    checkpoint: Path  # last.pt: full training state
    best_checkpoint: Path  # best.pt
    weights: Path  # final.pt: the final model's bare state_dict


def resolve_device(name: str, dist: distributed.DistInfo) -> torch.device:
    if name != "auto":
        return torch.device(name)
    return torch.device("cuda", dist.local_rank) if torch.cuda.is_available() else torch.device("cpu")


def fit(
    model: torch.nn.Module,
    data: Any,
    config: TrainConfig | None = None,
    task: Any = None,
    *,
    run_name: str | None = None,
    params: dict[str, Any] | None = None,
) -> FitResult:
    """Train ``model`` in place on ``data`` (see ``loaders``) and return what happened.

    ``task`` defaults to ``ClassificationTask()``. ``run_name`` names the MLflow run
    and the default checkpoint folder (default: the model's class name). ``params``
    are extra MLflow params (e.g. the model's settings), logged beside the config.
    Seed and build the model before calling (``seed_everything(cfg.seed)``).
    """
    cfg = config or TrainConfig()
    task = task or ClassificationTask()
    dist = distributed.setup()
    device = resolve_device(cfg.device, dist)
    run_name = run_name or type(model).__name__
    ckpt_dir = Path(cfg.ckpt_dir) if cfg.ckpt_dir else work_dir() / run_name
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    bundle = as_bundle(data)

    if cfg.monitor is None:
        monitor, mode = f"{'val' if bundle.val is not None else 'train'}_{task.monitor}", task.mode
    else:
        monitor, mode = cfg.monitor, "min" if cfg.monitor.endswith("loss") else "max"
    mode = cfg.monitor_mode or mode
    amp = cfg.amp if cfg.amp is not None else device.type == "cuda"
    amp_dtype = getattr(torch, cfg.amp_dtype)
    autocast = functools.partial(torch.autocast, device.type, dtype=amp_dtype, enabled=amp)
    run_params = tracking.flatten(
        {**cfg.params(), "task": getattr(task, "params", dict)(), **(params or {})}
    )

    seed_everything(cfg.seed)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.sync_bn:
        model = distributed.sync_batchnorm(model, dist, device)
    ema = ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema else None
    train_loader = make_loader(bundle.train, cfg, dist, device, train=True)
    val_loader = make_loader(bundle.val, cfg, dist, device, train=False)
    updates_per_epoch = len(train_loader)
    epochs = num_epochs(cfg, updates_per_epoch)
    optimizer = create_optimizer(model, cfg)
    scheduler = create_scheduler(optimizer, cfg, updates_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=amp and amp_dtype is torch.float16)

    # ---- resume
    start, history, run_id = 0, [], None
    best = {"metric": monitor, "mode": mode, "value": None, "epoch": -1}
    if dist.is_main and ckpt_dir.is_dir():
        remove_stale_tmp(ckpt_dir)
    # Rank 0 decides whether to resume and hands its checkpoint to the other ranks (which may not see its disk).
    ckpt = load_checkpoint(last_path) if cfg.resume and dist.is_main and last_path.exists() else None
    ckpt = distributed.broadcast_object(ckpt, dist)  # on CPU: RNG states must stay there; load_state_dict moves the rest
    if ckpt is not None:
        changed = sorted(
            k for k in run_params.keys() | ckpt["params"].keys()
            if k not in RUNTIME_ONLY and run_params.get(k) != ckpt["params"].get(k)
        )
        if changed:
            raise CheckpointError(
                f"{last_path} was written with different parameters ({', '.join(changed)}); "
                "resume with the same configuration, use another ckpt_dir, or pass resume=False"
            )
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
        set_rng_state(ckpt["rng"])
        start, history, best, run_id = ckpt["epoch"] + 1, ckpt["history"], ckpt["best"], ckpt["run_id"]
    elif cfg.resume and dist.is_main:
        # Killed before its first checkpoint: reopen the run it had started (nothing was logged yet)
        # rather than leave an empty KILLED run beside a new one.
        run_id = tracking.find_child_run(run_name, "fit", unfinished=True)
    net = distributed.wrap(model, dist, device)

    def checkpoint(epoch: int) -> dict[str, Any]:
        return {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "ema": ema.state_dict() if ema is not None else {},
            "scaler": scaler.state_dict(),
            "epoch": epoch,
            "history": history,
            "best": best,
            "rng": get_rng_state(),
            "run_id": run_id,
            "config": cfg.to_dict(),
            "params": run_params,
        }

    # ---- train
    with _mlflow_run(dist, run_name, run_params, run_id, ckpt_dir) as run:
        if run is not None:
            run_id = run.info.run_id
            config = {**cfg.to_dict(), "device": str(device), "amp": amp, "monitor": monitor, "monitor_mode": mode,
                      "ckpt_dir": _shown_path(ckpt_dir), "num_epochs": epochs, "updates_per_epoch": updates_per_epoch,
                      "world_size": dist.world_size}
            _log_start(run_id, start == 0, bundle, history, config)

        for epoch in range(start, epochs):
            t0 = time.perf_counter()
            seed_everything(epoch_seed(cfg.seed, epoch))
            set_epoch(train_loader, cfg.seed, epoch)
            set_epoch(val_loader, cfg.seed, epoch)
            record: dict[str, Any] = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
            # With ``iterations`` the last epoch stops after the remaining updates; else None (all batches).
            max_batches = cfg.iterations - epoch * updates_per_epoch if cfg.iterations else None
            if max_batches is not None and max_batches >= updates_per_epoch:
                max_batches = None
            with tqdm(
                total=max_batches or updates_per_epoch,
                desc=f"epoch {epoch + 1}/{epochs}",
                disable=not (cfg.progress and dist.is_main),
                file=sys.stdout,
                mininterval=0.5 if sys.stdout.isatty() else 5.0,  # few redraws in a saved notebook
                ncols=110,
            ) as bar:
                try:
                    train = _train_epoch(net, model, train_loader, task, optimizer, scheduler, scaler,
                                         ema, cfg, device, autocast, epoch, bar, max_batches)
                except NonFiniteLossError as err:
                    if run is not None:
                        with interrupts.deferred():
                            mlflow.set_tags({"nonfinite_loss.epoch": err.epoch, "nonfinite_loss.step": err.step})
                    raise
                record.update(_prefixed("train_", train))
                if val_loader is not None and _validates(epoch, epochs, cfg.val_every):
                    record.update(_prefixed("val_", _evaluate(net, val_loader, task, cfg, device, autocast)))
                    if ema is not None:
                        ema_metrics = _evaluate(ema.module, val_loader, task, cfg, device, autocast)
                        record.update(_prefixed("val_ema_", ema_metrics))
                record["epoch_time_s"] = time.perf_counter() - t0
                bar.set_postfix_str(_summary(record, monitor), refresh=False)
            scheduler.step(epoch + 1)
            history.append(record)

            scored = val_loader is None or _validates(epoch, epochs, cfg.val_every) or not monitor.startswith("val_")
            if scored and monitor not in record:
                raise ValueError(f"monitor={monitor!r} is not among the metrics {sorted(record)}")
            value = record.get(monitor)
            improved = scored and (best["value"] is None
                                   or (value > best["value"] if mode == "max" else value < best["value"]))
            if improved:
                best = {**best, "value": value, "epoch": epoch}
            with interrupts.deferred():  # a Ctrl-C here would leave the store locked (see interrupts)
                if dist.is_main:
                    state = checkpoint(epoch)
                    if improved:
                        save_checkpoint(state, best_path)
                    save_checkpoint(state, last_path)
                if run is not None:
                    mlflow.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=epoch)
            if dist.is_main:
                progress.report(progress.format_epoch(
                    run_name, epoch, epochs, record, [r["epoch_time_s"] for r in history[start:]],
                    keys=list(dict.fromkeys(["train_loss", monitor]))))

        weights = ckpt_dir / "final.pt"
        save_checkpoint(model.state_dict(), weights)  # every rank: the caller may load it (identical weights)
        ema_weights = save_checkpoint(ema.module.state_dict(), ckpt_dir / "final_ema.pt") if ema is not None else None
        if dist.is_main:
            tracking.log_checkpoint(weights)
            if ema_weights is not None:
                tracking.log_checkpoint(ema_weights)

    return FitResult(
        history=pd.DataFrame(history),
        final=dict(history[-1]),
        monitor=monitor,
        best=best["value"],
        best_epoch=best["epoch"],
        run_id=run_id if dist.is_main else None,
        checkpoint=last_path,
        best_checkpoint=best_path,
        weights=weights,
    )


def _validates(epoch: int, epochs: int, every: int) -> bool:
    """Whether epoch ``epoch`` (0-based) of ``epochs`` ends with a validation: every ``every``-th and the last."""
    return epoch + 1 == epochs or (every > 0 and (epoch + 1) % every == 0)


def evaluate(model: torch.nn.Module, data: Any, task: Any = None, config: TrainConfig | None = None) -> dict:
    """Loss and task metrics of ``model`` on a dataset or loader (no MLflow, no prefix)."""
    cfg = config or TrainConfig()
    task = task or ClassificationTask()
    dist = distributed.setup()
    device = resolve_device(cfg.device, dist)
    amp = cfg.amp if cfg.amp is not None else device.type == "cuda"
    autocast = functools.partial(torch.autocast, device.type, dtype=getattr(torch, cfg.amp_dtype), enabled=amp)
    loader = make_loader(data, cfg, dist, device, train=False)
    return _evaluate(model.to(device), loader, task, cfg, device, autocast)


# --------------------------------------------------------------------- one epoch
def _train_epoch(net, model, loader, task, optimizer, scheduler, scaler, ema, cfg, device, autocast, epoch, bar,
                 max_batches=None):
    """One pass over ``loader`` (its first ``max_batches`` batches if given); mean loss and train metrics."""
    net.train()
    meter = task.metrics()
    loss_fn = _loss_fn(task, model)
    loss_sum, count = 0.0, 0
    updates = epoch * len(loader)
    batches = loader if max_batches is None else itertools.islice(loader, max_batches)
    for batch, (x, y) in enumerate(batches):
        x, y = _to_device(x, y, device, cfg.channels_last)
        with autocast():
            out = net(x)
            loss = loss_fn(out, y)
        # One host sync per step: cheap next to a step, and it stops a diverging run at once
        # (averaged over ranks, so every rank stops together).
        value = distributed.all_mean(loss.detach().float().clone()).item()
        if not math.isfinite(value):
            raise NonFiniteLossError(value, epoch, updates, batch)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.clip_grad:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.clip_grad)
        drop_off_schedule_grads(optimizer, updates)
        scaler.step(optimizer)
        scaler.update()
        updates += 1
        scheduler.step_update(num_updates=updates)
        if ema is not None:
            ema.update(model, step=updates)
        meter.update(main_output(out).detach(), y)
        loss_sum, count = loss_sum + value * len(y), count + len(y)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_sum / count:.4f}", refresh=False)
    return {"loss": loss_sum / max(count, 1), **_compute(meter)}


@torch.no_grad()
def _evaluate(net, loader, task, cfg, device, autocast) -> dict[str, float]:
    net.eval()
    meter = task.metrics()
    loss_fn = _loss_fn(task, distributed.unwrap(net))
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    for x, y in loader:
        x, y = _to_device(x, y, device, cfg.channels_last)
        with autocast():
            out = net(x)
            loss = loss_fn(out, y)
        loss_sum += loss.double() * len(y)
        count += len(y)
        meter.update(main_output(out), y)
    distributed.all_sum(loss_sum)
    distributed.all_sum(count)
    return {"loss": (loss_sum / count.clamp(min=1)).item(), **_compute(meter)}


# ----------------------------------------------------------------------- helpers
def _loss_fn(task, model):
    """``task.loss`` with ``model=`` bound if it takes a ``model`` argument (tasks written before it did not)."""
    try:
        params = inspect.signature(task.loss).parameters.values()
    except (TypeError, ValueError):  # no introspectable signature (e.g. a C callable)
        return task.loss
    if any(p.name == "model" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return functools.partial(task.loss, model=model)
    return task.loss


def _to_device(x, y, device, channels_last):
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    if channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y


def _compute(meter) -> dict[str, float]:
    """An evaluator's metrics over all ranks: summed state if it can ``sync()``, else averaged values."""
    if hasattr(meter, "sync"):
        meter.sync()
        return {k: float(v) for k, v in meter.compute().items()}
    values = {k: float(v) for k, v in meter.compute().items()}
    if values and torch.distributed.is_available() and torch.distributed.is_initialized():
        reduced = distributed.all_mean(torch.tensor(list(values.values()), dtype=torch.float64))
        values = dict(zip(values, reduced.tolist()))
    return values


def _prefixed(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}{k}": v for k, v in metrics.items()}


def _summary(record: dict[str, Any], monitor: str) -> str:
    keys = dict.fromkeys([k for k in record if k.endswith("_loss")] + [monitor])
    return " ".join(f"{k}={record[k]:.4g}" for k in keys if k in record)


@contextlib.contextmanager
def _mlflow_run(dist, run_name, params, run_id, ckpt_dir):
    """``tracking.child_run`` on rank 0 (reopening ``run_id`` if the store still has it); None elsewhere."""
    if not dist.is_main:
        yield None
        return
    tracking.configure()
    if run_id is not None and not _run_exists(run_id):
        run_id = None  # checkpoint from another store: log its history into a new run
    with tracking.child_run(run_name, params, run_id=run_id, tags={"kind": "fit", "ckpt_dir": _shown_path(ckpt_dir)}) as run:
        yield run


def _shown_path(path: Path) -> str:
    """``path`` relative to the checkpoints folder when under it (no clone's absolute path in a run)."""
    try:
        return str(Path(path).resolve().relative_to(checkpoints_dir()))
    except ValueError:
        return str(path)


def _run_exists(run_id: str) -> bool:
    try:
        mlflow.tracking.MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return False
    return True


@interrupts.deferred()
def _log_start(run_id: str, fresh: bool, bundle: Any, history: list[dict[str, Any]], config: dict) -> None:
    """What a run gets before its first epoch: the config, the dataset (new runs), the steps a resume lacks."""
    mlflow.log_dict(config, "config.json")
    identity = dataset_identity(bundle)
    if fresh and identity is not None:
        tracking.log_dataset(*identity, context="train")
    _log_missing_steps(run_id, history)


def _log_missing_steps(run_id: str, history: list[dict[str, Any]]) -> None:
    """Log the epochs of ``history`` the run does not have yet (killed between checkpoint and log)."""
    if not history:
        return
    client = mlflow.tracking.MlflowClient()
    # An epoch's metrics go in one log_metrics batch, so one key tells which epochs are in.
    logged = {m.step for m in client.get_metric_history(run_id, "epoch_time_s")}
    for record in history:
        if record["epoch"] not in logged:
            mlflow.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=record["epoch"])
