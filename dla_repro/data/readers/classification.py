"""One entry point for the classification datasets and their standard augmentation.

* ``cifar100`` / ``cifar100_coarse`` -- ``CIFAR100`` (100 fine / 20 coarse classes).
  Train: pad 4 px, random 32×32 crop, horizontal flip; eval: none. Then
  normalise with the CIFAR-100 statistics.
* ``imagenet``, ``cub``, ``cars``, ``aircraft``, ``food`` -- ``ImageFolderDataset``
  (``<root>/<split>/<class>/<image>``); ``imagefolder`` -- the same at ``root`` itself.
  timm's ``create_transform``: train RandomResizedCrop + flip; eval resize to
  ``size / 0.875`` then centre crop (256 → 224); ImageNet mean/std.

The ImageNet-like transforms are timm's factory with colour jitter off, which is
the DLA recipe (ucbdrive/dla README and ``classify.py``: RandomResizedCrop 224 + flip;
eval resize 256 / center crop 224). timm has no pad-and-crop factory, so CIFAR's is composed from
torchvision transforms. CIFAR has no validation split: ``val`` reads ``test``.

For an ImageFolder dataset ``root`` may be the dataset's folder or a data root
holding it under a conventional name (``imagenet``, ``CUB_200_2011``, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from torch.utils.data import Dataset
from torchvision import transforms as T

from .cifar import CIFAR100, CIFAR100_MEAN, CIFAR100_STD
from .imagefolder import ImageFolderDataset, class_folders

__all__ = ["build_classification_dataset", "classification_transform", "CLASSIFICATION_DATASETS"]

EVAL_CROP_PCT = 0.875

# name -> folder names the dataset conventionally has under a data root
_FOLDER_ALIASES: dict[str, tuple[str, ...]] = {
    "imagenet": ("imagenet", "ImageNet", "ILSVRC2012", "imagenet1k"),
    "cub": ("cub", "CUB_200_2011", "cub200", "CUB"),
    "cars": ("cars", "stanford_cars", "StanfordCars", "Cars"),
    "aircraft": ("aircraft", "fgvc-aircraft-2013b", "fgvc_aircraft", "Aircraft"),
    "food": ("food", "food-101", "food101", "Food101"),
    "imagefolder": (),
}
CLASSIFICATION_DATASETS = ("cifar100", "cifar100_coarse", *_FOLDER_ALIASES)


def classification_transform(name: str, image_size: int, train: bool) -> Callable:
    """The standard transform of dataset ``name`` (PIL image in, normalised tensor out)."""
    if name.startswith("cifar"):
        norm = [T.ToTensor(), T.Normalize(CIFAR100_MEAN, CIFAR100_STD)]
        resize = [] if image_size == 32 else [T.Resize(image_size)]
        if not train:
            return T.Compose([*resize, *norm])
        pad = max(1, round(4 * image_size / 32))
        return T.Compose([*resize, T.RandomCrop(image_size, padding=pad), T.RandomHorizontalFlip(), *norm])
    return create_transform(
        image_size,
        is_training=train,
        color_jitter=None,
        interpolation="bilinear",
        crop_pct=EVAL_CROP_PCT,
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
    )


def _folder_root(name: str, root: Path, split: str) -> Path:
    for base in [root, *(root / a for a in _FOLDER_ALIASES[name])]:
        if (base / split).is_dir():
            return base
    # Let the reader raise its layout error at the most likely place.
    return root


def build_classification_dataset(
    name: str, root: str | Path, split: str, image_size: int, train: bool
) -> tuple[Dataset, int]:
    """``(dataset, num_classes)`` for ``name`` in ``CLASSIFICATION_DATASETS``.

    ``train`` picks the augmentation (random for training, deterministic for
    evaluation) independently of ``split``.
    """
    name = name.lower()
    if name not in CLASSIFICATION_DATASETS:
        raise ValueError(f"unknown classification dataset {name!r}; known: {', '.join(CLASSIFICATION_DATASETS)}")
    transform = classification_transform(name, image_size, train)
    root = Path(root).expanduser()
    if name.startswith("cifar"):
        split = {"val": "test", "validation": "test"}.get(split, split)
        ds = CIFAR100(root, split, "coarse" if name.endswith("coarse") else "fine", transform)
        return ds, ds.num_classes
    base = _folder_root(name, root, split)
    classes = None
    if split != "train" and (base / "train").is_dir():
        classes = class_folders(base / "train", name)
    ds = ImageFolderDataset(base, split, transform, classes=classes, name=name)
    return ds, ds.num_classes
