"""What every reader shares: the layout error, finding a dataset's folder, identity.

A reader is given a ``root`` and looks for its dataset there: either ``root`` is the
dataset's own folder, or the dataset sits under ``root`` in its conventional
folder name (``/data/cityscapes``, ``/data/VOCdevkit/VOC2012``, ...), so one
``--data-root`` serves every dataset. When nothing matches, the error names the
folders it tried and draws the tree it expected.
"""

from __future__ import annotations

import hashlib
from functools import cached_property
from pathlib import Path
from typing import Iterable, Sequence

__all__ = ["DatasetLayoutError", "find_dataset_dir", "require_dir", "require_file", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".tif", ".tiff", ".webp")


class DatasetLayoutError(FileNotFoundError):
    """A dataset is missing or not laid out as its reader expects.

    The message names the offending path and prints the expected tree.
    """

    def __init__(self, dataset: str, path: str | Path, problem: str, expected: str):
        self.dataset, self.path, self.problem, self.expected = dataset, Path(path), problem, expected
        super().__init__(f"{dataset}: {problem}\n  at: {path}\nExpected layout:\n{expected.rstrip()}")

    def __reduce__(self):  # picklable across DataLoader workers
        return (type(self), (self.dataset, self.path, self.problem, self.expected))


def find_dataset_dir(
    dataset: str, root: str | Path, markers: Sequence[str], aliases: Iterable[str], expected: str
) -> Path:
    """The first of ``root`` and ``root/<alias>`` that holds every path in ``markers``.

    Raises ``DatasetLayoutError`` naming what was tried, with the expected tree.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetLayoutError(dataset, root, "the data root does not exist", expected)
    tried = []
    for base in [root, *(root / a for a in aliases)]:
        if all((base / m).exists() for m in markers):
            return base
        if base.is_dir():
            missing = [m for m in markers if not (base / m).exists()]
            tried.append(f"{base} (missing: {', '.join(missing)})")
    detail = "; ".join(tried) if tried else str(root)
    raise DatasetLayoutError(dataset, root, f"no folder with the expected layout; looked in {detail}", expected)


def require_dir(dataset: str, path: Path, expected: str, what: str = "folder") -> Path:
    if not path.is_dir():
        raise DatasetLayoutError(dataset, path, f"missing {what}", expected)
    return path


def require_file(dataset: str, path: Path, expected: str, what: str = "file") -> Path:
    if not path.is_file():
        raise DatasetLayoutError(dataset, path, f"missing {what}", expected)
    return path


class DatasetIdentity:
    """``name`` / ``digest`` / ``source`` attributes the engine records as the run's dataset.

    The digest hashes the split and the sorted relative paths of the samples (not
    their contents, so it is cheap even for ImageNet); subclasses provide
    ``_identity_items()``.
    """

    name: str = "dataset"
    split: str = ""
    root: Path

    def _identity_items(self) -> Sequence[str]:  # pragma: no cover - overridden
        raise NotImplementedError

    @cached_property
    def digest(self) -> str:
        h = hashlib.sha256(f"{self.name}|{self.split}|".encode())
        for item in self._identity_items():
            h.update(item.encode())
            h.update(b"\n")
        return h.hexdigest()[:16]

    @property
    def source(self) -> str:
        return str(self.root)
