"""Does the input pipeline keep up with the model? (``dla-repro bench data``)

Each *source* is timed at one image size, in samples per second:

=================  ============================================================
source             one timed call
=================  ============================================================
``synthetic``      :func:`dla_repro.data.synthetic.generate` of ``n`` samples
                   (the generator the default data comes from)
``imagefolder``    one pass over ``n`` JPEG files in ImageNet's layout
                   (``<root>/train/<class>/<image>.JPEG``), read by the
                   project's ``ImageFolderDataset`` with the ImageNet training
                   transform (RandomResizedCrop + flip, normalise) through a
                   ``DataLoader`` with ``num_workers`` workers
``cifar100``       one pass over ``n`` images of CIFAR-100's pickles
                   (``<root>/cifar-100-python/{train,meta}``), read by the
                   project's ``CIFAR100`` with its training transform, same loader
=================  ============================================================

The files are written to a temporary folder first, in the datasets' real
formats (as the reader tests' fixtures are): random-noise RGB images of
``file_size`` pixels (default ``ceil(image_size / 0.875)``, the evaluation
resize), JPEG quality 90.  Noise compresses worse than photographs, so its
decoding is slower: a conservative rate.  CIFAR images are 32×32 as in the
real files (resized by the transform when ``image_size`` is not 32).

The rate is compared with what the model consumes: ``model_images_per_s``, the
train-step images/s of ``dlarepro_<model>`` at the same image size
(:func:`.models.bench_models`, setting ``fast_path`` on CUDA, ``fp32`` on a
CPU) unless given.  ``ratio`` = samples/s ÷ model images/s; ``starves`` is
``ratio < 1``: that source could not feed the model at full speed.
"""

from __future__ import annotations

import itertools
import math
import pickle
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from ..data.synthetic import SyntheticConfig, generate
from .goals import GOAL_COLUMNS, judge
from .hardware import bench_device, hardware_string
from .timing import check_repeats, time_interleaved

__all__ = ["COLUMNS", "SOURCES", "bench_data", "write_cifar100", "write_imagefolder"]

SOURCES = ("synthetic", "imagefolder", "cifar100")
COLUMNS = [
    "source",
    "image_size",
    "file_size",
    "n",
    "batch_size",
    "num_workers",
    "samples_per_s",
    "samples_per_s_best",
    "rounds",
    "model",
    "model_setting",
    "model_images_per_s",
    "ratio",
    "starves",
    "device",
    "hardware",
    "torch",
    *GOAL_COLUMNS,
]


def write_imagefolder(root: Path, n: int, size: int, classes: int = 4, seed: int = 0) -> Path:
    """``n`` random ``size``×``size`` JPEGs in ``<root>/train/<class>/``, ImageNet's layout; returns ``root``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for k in range(n):
        folder = Path(root) / "train" / f"n{k % classes:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"n{k % classes:08d}_{k}.JPEG", quality=90)
    return Path(root)


def write_cifar100(root: Path, n: int, seed: int = 0) -> Path:
    """CIFAR-100's ``train`` and ``meta`` pickles with ``n`` random images (bytes keys, protocol 2)."""
    rng = np.random.default_rng(seed)
    base = Path(root) / "cifar-100-python"
    base.mkdir(parents=True, exist_ok=True)
    fine = rng.integers(0, 100, n).tolist()
    train = {
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
        b"batch_label": b"training batch 1 of 1",
        b"fine_labels": fine,
        b"coarse_labels": [f // 5 for f in fine],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
    }
    meta = {
        b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
    }
    for name, obj in (("train", train), ("meta", meta)):
        with open(base / name, "wb") as f:
            pickle.dump(obj, f, protocol=2)
    return Path(root)


def _loader_pass(dataset, batch_size: int, num_workers: int, pin: bool) -> Callable[[], None]:
    """One full pass over ``dataset`` through a shuffling ``DataLoader`` (workers kept between passes)."""
    from torch.utils.data import DataLoader

    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers, pin_memory=pin,
        persistent_workers=num_workers > 0, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip

    def one_pass() -> None:
        for _ in loader:
            pass

    return one_pass


def _model_rate(model: str, setting: str, device: torch.device, batch_size: int, image_size: int) -> float:
    from .models import bench_models

    df = bench_models([model], device, batch_size=batch_size, image_size=image_size, settings=[setting],
                      warmup=1, rounds=3)  # fmt: skip
    return float(df.loc[df["impl"] == "dla_repro", "images_per_s"].item())


def bench_data(
    image_size: int = 224,
    device: Union[str, torch.device] = "cpu",
    sources: Sequence[str] = SOURCES,
    n: int = 256,
    batch_size: int = 64,
    num_workers: int = 0,
    file_size: Optional[int] = None,
    rounds: int = 3,
    warmup: int = 1,
    model: str = "dla34",
    model_setting: Optional[str] = None,
    model_images_per_s: Optional[float] = None,
    model_batch_size: Optional[int] = None,
):
    """A ``pandas.DataFrame`` (columns :data:`COLUMNS`), one row per source; see the module.

    ``samples_per_s`` is the median round, ``samples_per_s_best`` the fastest.
    ``model_images_per_s``: the model's rate if already measured (else measured
    here with ``model_batch_size``, default ``batch_size``).
    """
    import pandas as pd

    from ..data.readers import build_classification_dataset

    device = bench_device(device, "bench_data")
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise ValueError(f"unknown sources {unknown}; expected some of {SOURCES}")
    check_repeats(1, rounds, warmup)
    model_setting = model_setting or ("fast_path" if device.type == "cuda" else "fp32")
    file_size = file_size or math.ceil(image_size / 0.875)
    pin = device.type == "cuda"
    with tempfile.TemporaryDirectory(prefix="dla_repro_bench_data_") as tmp:
        fns: Dict[str, Callable[[], object]] = {}
        sizes = {}
        for source in sources:
            root = Path(tmp) / source
            if source == "synthetic":
                seeds, cfg = itertools.count(), SyntheticConfig().replace(image_size=image_size)
                fns[source] = lambda cfg=cfg, seeds=seeds: generate(cfg, n, seed=next(seeds), split="bench")
                sizes[source] = image_size
                continue
            if source == "imagefolder":
                write_imagefolder(root, n, file_size)
                sizes[source] = file_size
            else:
                write_cifar100(root, n)
                sizes[source] = 32
            dataset, _ = build_classification_dataset(source, root, "train", image_size, train=True)
            fns[source] = _loader_pass(dataset, batch_size, num_workers, pin)
        timings = time_interleaved(fns, iters=1, rounds=rounds, warmup=warmup, device="cpu")
        del fns  # persistent workers end before the folder goes
    if model_images_per_s is None:
        model_images_per_s = _model_rate(model, model_setting, device, model_batch_size or batch_size, image_size)
    hardware = hardware_string(device)
    rows: List[Dict] = []
    for source, timing in timings.items():
        rate = n / timing.median
        rows.append(dict(
            source=source,
            image_size=image_size,
            file_size=sizes[source],
            n=n,
            batch_size=batch_size,
            num_workers=0 if source == "synthetic" else num_workers,
            samples_per_s=rate,
            samples_per_s_best=n / timing.min,
            rounds=rounds,
            model=f"dlarepro_{model}",
            model_setting=model_setting,
            model_images_per_s=model_images_per_s,
            ratio=rate / model_images_per_s,
            starves=bool(rate < model_images_per_s),
            device=device.type,
            hardware=hardware,
            torch=torch.__version__,
        ))  # fmt: skip
    return judge(pd.DataFrame(rows, columns=COLUMNS), "data", device.type == "cuda")
