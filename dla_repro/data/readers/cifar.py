"""CIFAR-100 from the pickles of the official ``cifar-100-python.tar.gz``.

On disk (as extracted from the archive)::

    <root>/cifar-100-python/train   pickle: {b"data": uint8 N×3072, b"fine_labels": [N],
    <root>/cifar-100-python/test             b"coarse_labels": [N], b"filenames": [N], ...}
    <root>/cifar-100-python/meta    pickle: {b"fine_label_names": [100], b"coarse_label_names": [20]}

The pickles were written by Python 2, so they are read with ``encoding="bytes"``
and their keys are ``bytes`` (``str`` keys, from a re-pickled copy, work too).
A row of ``data`` is the red, green then blue plane of a 32×32 image, each
row-major. ``root`` may also be the ``cifar-100-python`` folder itself.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from .layout import DatasetIdentity, DatasetLayoutError, find_dataset_dir

__all__ = ["CIFAR100", "CIFAR100_MEAN", "CIFAR100_STD"]

CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

_EXPECTED = """\
<root>/
  cifar-100-python/
    train      (pickle: b"data" uint8 N×3072, b"fine_labels", b"coarse_labels", b"filenames")
    test       (same keys)
    meta       (pickle: b"fine_label_names", b"coarse_label_names")
"""
_NUM = {"fine": 100, "coarse": 20}


def _load_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as e:
        raise DatasetLayoutError("CIFAR-100", path, f"not a readable CIFAR pickle ({e})", _EXPECTED) from e
    if not isinstance(obj, dict):
        raise DatasetLayoutError("CIFAR-100", path, f"pickle holds a {type(obj).__name__}, not a dict", _EXPECTED)
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _field(d: dict, key: str, path: Path) -> Any:
    if key not in d:
        raise DatasetLayoutError("CIFAR-100", path, f"pickle has no key b{key!r} (keys: {sorted(d)})", _EXPECTED)
    return d[key]


def _names(values: Sequence) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


class CIFAR100(DatasetIdentity, Dataset):
    """CIFAR-100 ``train`` (50 000) or ``test`` (10 000) images with fine (100) or coarse (20) labels.

    Items are ``(transform(PIL RGB image), label)``; without a transform, the PIL image.
    """

    def __init__(
        self, root: str | Path, split: str = "train", label_type: str = "fine", transform: Callable | None = None
    ):
        if split not in ("train", "test"):
            raise ValueError(f"CIFAR-100 split must be 'train' or 'test', got {split!r}")
        if label_type not in _NUM:
            raise ValueError(f"label_type must be 'fine' or 'coarse', got {label_type!r}")
        base = find_dataset_dir(
            "CIFAR-100", root, [split, "meta"], ["cifar-100-python", "cifar100/cifar-100-python"], _EXPECTED
        )
        self.root, self.split, self.label_type, self.transform = base, split, label_type, transform
        self.name = "cifar100" if label_type == "fine" else "cifar100_coarse"

        path = base / split
        d = _load_pickle(path)
        data = np.asarray(_field(d, "data", path))
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise DatasetLayoutError(
                "CIFAR-100", path, f"b'data' must be uint8 N×3072, got {data.dtype} {data.shape}", _EXPECTED
            )
        labels = np.asarray(_field(d, f"{label_type}_labels", path), dtype=np.int64)
        if labels.shape != (data.shape[0],):
            raise DatasetLayoutError(
                "CIFAR-100", path, f"{len(labels)} {label_type} labels for {data.shape[0]} images", _EXPECTED
            )
        if labels.size and (labels.min() < 0 or labels.max() >= _NUM[label_type]):
            raise DatasetLayoutError(
                "CIFAR-100", path, f"{label_type} labels outside 0..{_NUM[label_type] - 1}", _EXPECTED
            )
        self.images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # N×32×32×3 RGB
        self.targets = labels.tolist()
        self.filenames = _names(d.get("filenames", [f"{i}.png" for i in range(len(labels))]))

        meta_path = base / "meta"
        meta = _load_pickle(meta_path)
        self.classes = _names(_field(meta, f"{label_type}_label_names", meta_path))
        if len(self.classes) != _NUM[label_type]:
            raise DatasetLayoutError(
                "CIFAR-100", meta_path, f"{len(self.classes)} {label_type} label names, expected {_NUM[label_type]}",
                _EXPECTED,
            )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]

    def _identity_items(self) -> Sequence[str]:
        return self.filenames
