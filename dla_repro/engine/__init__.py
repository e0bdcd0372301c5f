"""Training engine: one ``fit`` for every notebook, knowing nothing of any paper.

    from dla_repro.engine import TrainConfig, fit, seed_everything, SegmentationTask

    cfg = TrainConfig(epochs=3, lr=0.05, schedule="poly")
    seed_everything(cfg.seed)
    model = timm.create_model("dlarepro_dla34", num_classes=10)
    result = fit(model, (train_set, val_set), cfg, ClassificationTask(), run_name="dla34")
    result.history  # one row per epoch; every value is also in the run's MLflow metrics

Files: ``config`` (TrainConfig), ``loop`` (fit, evaluate), ``tasks`` (loss and
metrics), ``loaders`` (data → DataLoaders), ``checkpoint`` (atomic save, safe
load), ``seed`` (seeding, RNG state), ``sweep`` (configurations × seeds under one parent run), ``distributed`` (torchrun / DDP).
"""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .loaders import DataBundle
from .loop import FitResult, NonFiniteLossError, evaluate, fit
from .seed import seed_everything
from .sweep import SweepResult, Trial, count_params, sweep
from .tasks import ClassificationTask, ConfusionMatrix, SegmentationTask, TopKAccuracy

__all__ = [
    "CheckpointError",
    "ClassificationTask",
    "ConfusionMatrix",
    "DataBundle",
    "FitResult",
    "NonFiniteLossError",
    "SegmentationTask",
    "SweepResult",
    "TopKAccuracy",
    "TrainConfig",
    "Trial",
    "count_params",
    "evaluate",
    "fit",
    "load_checkpoint",
    "save_checkpoint",
    "seed_everything",
    "sweep",
]
