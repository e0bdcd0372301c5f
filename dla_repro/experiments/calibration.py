"""Calibrate the synthetic data's difficulty against the plain baseline -- and only it.

The generator's defaults (``SyntheticConfig``) were set once so that a short CPU
training of the plain baseline (``dla_repro.models.plain.PlainNet``: convolutions in
a chain, no skips, no aggregation, no global context) lands clearly between chance
and saturation on both tasks; then they were frozen (``SYNTHETIC_VERSION``).  No
other model is trained here, so the data cannot have been tuned to make one of the
papers' methods look good.

What is measured (``calibrate``), on the validation split:

* classification -- top-1 accuracy on the image label, and how often the predicted
  label has the right *shape* and the right *position bin* (the two factors of the
  label), each beside its chance level;
* segmentation -- mIoU and pixel accuracy beside a majority-class predictor;
  the mean IoU of the context classes, of the thin/small classes (``line``,
  ``dot``); the **context error**: among pixels of a context class that the model
  assigns to the right shape, the share given the wrong scene type (chance:
  1 − 1/num_scene_types; left empty when the model finds under 1 % of those pixels'
  shape at all, ``context_shape_recall``);
* the data alone -- how well the scene type can be read from the mean background
  colour of the whole image versus an 8×8 window (``scene_evidence``): the
  information that resolves the context classes is in the image, but only at
  large scale.

Re-measure (≈ 3 minutes on one CPU core; writes
``results/tables/synthetic_calibration.csv``)::

    OMP_NUM_THREADS=1 python -m dla_repro.experiments.calibration
    python -m dla_repro.experiments.calibration --image-size 32 --epochs 8 --no-write
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data.synthetic import SYNTHETIC_VERSION, SyntheticConfig, make_splits
from ..metrics.segmentation import confusion_matrix, iou_from_confusion
from .. import interrupts
from ..paths import results_dir

__all__ = ["CALIBRATION_TABLE", "calibrate", "load_calibration", "scene_evidence", "main"]

CALIBRATION_TABLE = "synthetic_calibration.csv"
COLUMNS = [
    "data_digest", "synthetic_version", "image_size", "n_train", "n_val", "epochs", "seed",
    "baseline", "task", "metric", "value", "chance", "train_seconds", "hardware", "torch_threads", "date",
]


# ------------------------------------------------------------------------- data probes
def scene_evidence(
    images: torch.Tensor,
    scenes: torch.Tensor,
    config: SyntheticConfig,
    masks: torch.Tensor | None = None,
    windows: Sequence[int] = (4, 8, 16, 32, 64),
    min_background: float = 0.25,
) -> dict[int, float]:
    """Scene-type accuracy of a fixed, untrained rule applied to square windows of the image.

    The image is tiled into non-overlapping k×k windows (k ≥ image size: the whole
    image).  In each window the rule takes the mean colour -- of the background
    pixels only when ``masks`` is given, skipping windows with less than
    ``min_background`` background -- and picks the scene type whose chroma direction
    it points to most.  The result says at which scale the scene cue becomes
    readable; no model is involved.
    """
    from ..data.synthetic import _chroma_directions, denormalize

    rgb = denormalize(images, config) - 0.5  # N,3,H,W
    directions = _chroma_directions(config.num_scene_types)  # S,3
    h = rgb.shape[-1]
    weight = torch.ones_like(rgb[:, :1]) if masks is None else (masks == 0).unsqueeze(1).float()
    out = {}
    for k in windows:
        k = min(int(k), h)
        total = F.avg_pool2d(rgb * weight, k, stride=k)
        share = F.avg_pool2d(weight, k, stride=k)  # N,1,h/k,w/k
        mean = total / share.clamp(min=1e-6)
        guess = torch.einsum("nchw,sc->nshw", mean, directions).argmax(1)
        hit = (guess == scenes.view(-1, 1, 1)).float()
        valid = (share[:, 0] >= min_background).float() if masks is not None else torch.ones_like(hit)
        out[k] = ((hit * valid).sum() / valid.sum().clamp(min=1)).item()
    return out


@torch.no_grad()
def _predict(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    model.eval()
    return torch.cat([model(images[i : i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)])


# --------------------------------------------------------------------------- calibrate
def calibrate(
    config: SyntheticConfig | None = None,
    image_size: int = 64,
    n_train: int = 4000,
    n_val: int = 1000,
    epochs: int = 8,
    seed: int = 0,
    batch_size: int = 64,
    lr: float = 2e-3,
    tasks: Sequence[str] = ("classification", "segmentation"),
    write: bool = True,
    progress: bool = True,
):
    """Train the plain baseline on each task and return the calibration table (``pandas.DataFrame``).

    ``write=True`` appends the rows to ``results/tables/synthetic_calibration.csv``
    (replacing earlier rows of the same data digest, image size, seed and task).  Training
    goes through ``dla_repro.engine.fit`` (one MLflow run per task, nested under a
    ``synthetic_calibration`` run of the ``data_calibration`` experiment).
    """
    import pandas as pd

    from .. import tracking
    from ..engine import ClassificationTask, SegmentationTask, TrainConfig, fit, seed_everything
    from ..models.plain import PlainNet

    config = (config or SyntheticConfig()).replace(image_size=image_size)
    splits = make_splits(config, n_train, n_val, seed)
    val = splits.val
    hardware = tracking.hardware_label()
    threads = torch.get_num_threads()
    common = {
        "data_digest": config.digest(), "synthetic_version": SYNTHETIC_VERSION, "image_size": image_size,
        "n_train": n_train, "n_val": n_val, "epochs": epochs, "seed": seed, "baseline": "plain",
        "hardware": hardware, "torch_threads": threads, "date": _dt.date.today().isoformat(),
    }
    rows: list[dict] = []

    def add(task: str, metric: str, value: float, chance: float, seconds: float = float("nan")) -> None:
        rows.append({**common, "task": task, "metric": metric, "value": float(value), "chance": float(chance),
                     "train_seconds": seconds})

    train_cfg = TrainConfig(epochs=epochs, batch_size=batch_size, optimizer="adamw", lr=lr, weight_decay=1e-4,
                            schedule="cosine", seed=seed, progress=progress, device="cpu")
    params = {"data": config.to_dict(), "data_digest": config.digest(), "n_train": n_train, "n_val": n_val}

    tracking.configure()
    with tracking.child_run("synthetic_calibration", params, experiment="data_calibration"):
        # ---- data probe (no model)
        evidence = scene_evidence(val.images, val.scenes, config, val.masks, windows=(8, image_size))
        chance_scene = 1.0 / config.num_scene_types
        add("scene_probe", "scene_acc_window8", evidence[8], chance_scene)
        add("scene_probe", "scene_acc_whole_image", evidence[image_size], chance_scene)

        if "classification" in tasks:
            seed_everything(seed)
            model = PlainNet(config.num_labels, "classification")
            t0 = time.perf_counter()
            fit(model, splits, train_cfg, ClassificationTask(topk=(1,)), run_name="plain_classification",
                params={"model": "plain", "data_digest": config.digest()})
            seconds = time.perf_counter() - t0
            pred = _predict(model, val.images)
            truth = val.labels
            per_label = config.num_positions * config.scale_bins
            add("classification", "top1", (pred == truth).float().mean(), 1.0 / config.num_labels, seconds)
            add("classification", "shape_acc", (pred // per_label == truth // per_label).float().mean(),
                1.0 / len(config.shapes), seconds)
            pos = lambda y: (y // config.scale_bins) % config.num_positions  # noqa: E731
            add("classification", "position_acc", (pos(pred) == pos(truth)).float().mean(),
                1.0 / config.num_positions, seconds)

        if "segmentation" in tasks:
            seg = splits.with_task("segmentation")
            c = config.num_mask_classes
            seed_everything(seed)
            model = PlainNet(c, "segmentation")
            t0 = time.perf_counter()
            fit(model, seg, train_cfg, SegmentationTask(c), run_name="plain_segmentation",
                params={"model": "plain", "data_digest": config.digest()})
            seconds = time.perf_counter() - t0
            target = val.masks.long()
            cm = confusion_matrix(_predict(model, val.images), target, c, ignore_index=None)
            iou = iou_from_confusion(cm)
            majority = int(torch.bincount(target.flatten(), minlength=c).argmax())
            cm_major = confusion_matrix(torch.full_like(target, majority), target, c, ignore_index=None)
            add("segmentation", "miou", torch.nanmean(iou), torch.nanmean(iou_from_confusion(cm_major)), seconds)
            add("segmentation", "pixel_acc", cm.diag().sum() / cm.sum(), cm_major.diag().sum() / cm_major.sum(),
                seconds)
            names = config.mask_names
            context = config.context_classes()
            small = [names.index("line"), names.index("dot")]
            add("segmentation", "miou_context_classes", torch.nanmean(iou[context]), float("nan"), seconds)
            add("segmentation", "miou_line_dot", torch.nanmean(iou[small]), float("nan"), seconds)
            for k, name in enumerate(names):
                add("segmentation", f"iou_{name}", iou[k], float("nan"), seconds)
            # context error: right shape, wrong scene type -- meaningful only where the model finds
            # the shape at all, so its share of the context pixels is recorded beside it
            ctx = config.context_scores(cm)
            if not math.isnan(ctx["context_shape_recall"]):
                add("segmentation", "context_shape_recall", ctx["context_shape_recall"], float("nan"), seconds)
                add("segmentation", "context_error", ctx["context_error"], 1 - chance_scene, seconds)

        df = pd.DataFrame(rows, columns=COLUMNS)
        if write:
            path = write_calibration(df)
            import mlflow

            with interrupts.deferred():
                mlflow.log_artifact(str(path), artifact_path="tables")
    return df


def write_calibration(df) -> Path:
    """Merge ``df`` into ``results/tables/synthetic_calibration.csv`` (same digest/size/seed/task rows replaced)."""
    import pandas as pd

    path = results_dir() / "tables" / CALIBRATION_TABLE
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        old = pd.read_csv(path)
        key = ["data_digest", "image_size", "seed", "task"]
        fresh = set(map(tuple, df[key].astype(str).values))
        old = old[[tuple(r) not in fresh for r in old[key].astype(str).values]]
        df = pd.concat([old, df], ignore_index=True)
    df.to_csv(path, index=False, float_format="%.4f")
    return path


def load_calibration():
    """The calibration table: ``results/tables/synthetic_calibration.csv`` under ``results_dir()``,
    else the one committed in the repository; an empty DataFrame if neither exists."""
    import pandas as pd

    from ..paths import repo_root

    for folder in (results_dir(), repo_root() / "results"):
        path = folder / "tables" / CALIBRATION_TABLE
        if path.exists():
            return pd.read_csv(path)
    return pd.DataFrame(columns=COLUMNS)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m dla_repro.experiments.calibration",
        description="Train the plain baseline on the synthetic data and record the calibration table.",
    )
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--n-val", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--tasks", nargs="+", default=["classification", "segmentation"],
                        choices=["classification", "segmentation"])
    parser.add_argument("--no-write", action="store_true", help="print only; do not touch results/")
    args = parser.parse_args(argv)
    import pandas as pd

    frames = [
        calibrate(image_size=args.image_size, n_train=args.n_train, n_val=args.n_val, epochs=args.epochs,
                  seed=seed, batch_size=args.batch_size, lr=args.lr, tasks=args.tasks, write=not args.no_write)
        for seed in args.seeds
    ]
    df = pd.concat(frames, ignore_index=True)
    show = df[["seed", "task", "metric", "value", "chance", "train_seconds"]]
    print(show.to_string(index=False, float_format=lambda v: f"{v:.3f}" if not math.isnan(v) else "-"))


if __name__ == "__main__":
    main()
