"""Training engine: one ``fit`` for every notebook, knowing nothing of any paper.

    from dla_repro.engine import TrainConfig, fit, seed_everything, SegmentationTask

    cfg = TrainConfig(epochs=3, lr=0.05, schedule="poly")
    seed_everything(cfg.seed)
    model = timm.create_model("dlarepro_dla34", num_classes=10)
    result = fit(model, (train_set, val_set), cfg, ClassificationTask(), run_name="dla34")
    result.history  # one row per epoch; every value is also in the run's MLflow metrics

Files: ``config`` (TrainConfig), ``loop`` (fit, evaluate), ``tasks`` (loss and
metrics; main + auxiliary outputs, loss terms read from the model), ``losses`` (OHEM
cross-entropy), ``optim``
(timm optimiser with optional named parameter groups, lr schedule, iteration-based
length), ``loaders`` (data → DataLoaders), ``checkpoint`` (atomic save, safe
load), ``seed`` (seeding, RNG state), ``sweep`` (configurations × seeds under one
parent run, with an ``evaluate`` hook for scalars and artifacts), ``distributed``
(torchrun / DDP). The engine knows no paper; segmentation scores come from
``dla_repro.metrics.segmentation``.
"""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .loaders import DataBundle
from .loop import FitResult, NonFiniteLossError, evaluate, fit
from .optim import create_optimizer, create_scheduler
from .seed import seed_everything
from .sweep import SweepResult, Trial, count_params, sweep
from .losses import ohem_cross_entropy, ohem_keep_mask
from .tasks import ClassificationTask, OhemSegmentationTask, SegmentationTask, SupervisedTask, TopKAccuracy

__all__ = [
    "CheckpointError",
    "ClassificationTask",
    "DataBundle",
    "FitResult",
    "NonFiniteLossError",
    "OhemSegmentationTask",
    "SegmentationTask",
    "SupervisedTask",
    "SweepResult",
    "TopKAccuracy",
    "TrainConfig",
    "Trial",
    "count_params",
    "create_optimizer",
    "create_scheduler",
    "evaluate",
    "fit",
    "load_checkpoint",
    "ohem_cross_entropy",
    "ohem_keep_mask",
    "save_checkpoint",
    "seed_everything",
    "sweep",
]
