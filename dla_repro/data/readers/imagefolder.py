"""ImageNet and the fine-grained sets (CUB, Cars, Aircraft, Food) as one folder per class.

On disk::

    <root>/train/<class>/*.jpg|png|...
    <root>/val/<class>/*.jpg|png|...

Built on torchvision's ``ImageFolder``, after checking the layout so that a
mistake gives a readable error instead of an empty or silently mislabelled set:
a missing split, images lying directly in the split folder (ImageNet's
validation images as shipped: they must first be sorted into class folders with
the devkit's labels), no class folders, or a class folder with no image.

Class indices are the sorted class-folder names. A ``val`` split takes its class
list from ``train`` when that exists, so both splits use the same indices even if
``val`` lacks a class; a ``val`` class unknown to ``train`` is an error.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

from torchvision.datasets import ImageFolder

from .layout import IMAGE_EXTENSIONS, DatasetIdentity, DatasetLayoutError

__all__ = ["ImageFolderDataset", "class_folders"]

_EXPECTED = """\
<root>/
  train/
    <class_a>/  img001.jpg  img002.jpg ...
    <class_b>/  ...
  val/
    <class_a>/  ...
    <class_b>/  ...
"""


def class_folders(split_dir: Path, dataset: str = "ImageFolder") -> list[str]:
    """Sorted class-folder names of ``split_dir``; a layout error if there are none."""
    if not split_dir.is_dir():
        raise DatasetLayoutError(dataset, split_dir, "missing split folder", _EXPECTED)
    dirs, loose = [], 0
    with os.scandir(split_dir) as it:
        for entry in it:
            if entry.is_dir() and not entry.name.startswith("."):
                dirs.append(entry.name)
            elif entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS):
                loose += 1
    if not dirs:
        why = "no class folders"
        if loose:
            why = (
                f"{loose} images lie directly in the split folder; put them in one folder per class "
                "(for ImageNet's val, sort them with the devkit's ground-truth labels)"
            )
        raise DatasetLayoutError(dataset, split_dir, why, _EXPECTED)
    return sorted(dirs)


class ImageFolderDataset(DatasetIdentity, ImageFolder):
    """``<root>/<split>/<class>/<image>`` → ``(transform(PIL RGB image), class index)``.

    ``classes``: the class list to index with (default: this split's folders).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Callable | None = None,
        classes: Sequence[str] | None = None,
        name: str = "imagefolder",
    ):
        self.dataset_root = Path(root).expanduser()
        if not self.dataset_root.is_dir():
            raise DatasetLayoutError(name, self.dataset_root, "the data root does not exist", _EXPECTED)
        split_dir = self.dataset_root / split
        found = class_folders(split_dir, name)
        if classes is None:
            classes = found
        else:
            unknown = sorted(set(found) - set(classes))
            if unknown:
                raise DatasetLayoutError(
                    name, split_dir, f"class folders not in the training classes: {unknown[:5]}", _EXPECTED
                )
        self._classes = list(classes)
        self.split, self.name = split, name
        super().__init__(str(split_dir), transform=transform, allow_empty=True)
        counts = [0] * len(self.classes)
        for _, target in self.samples:
            counts[target] += 1
        empty = [c for c, n in zip(self.classes, counts) if n == 0 and c in found]
        if empty:
            raise DatasetLayoutError(
                name, split_dir / empty[0], f"{len(empty)} class folder(s) with no image ({', '.join(empty[:5])})",
                _EXPECTED,
            )
        if not self.samples:
            raise DatasetLayoutError(name, split_dir, "no images", _EXPECTED)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        return self._classes, {c: i for i, c in enumerate(self._classes)}

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def source(self) -> str:
        return str(self.dataset_root)

    def _identity_items(self) -> Sequence[str]:
        base = len(self.root) + 1
        return [f"{path[base:]}:{target}" for path, target in self.samples]
