"""Tiny datasets written in the real datasets' on-disk formats, for the reader tests.

Each ``write_*`` lays out a few small random images and labels exactly as the
distributed dataset does (file names, folders, pickle keys, PNG modes, MATLAB
structures) and returns what it wrote, so a test can compare a reader's output
with the ground truth it should recover.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

# The PASCAL VOC colour map (bit-interleaved), as the devkit builds it.
def voc_palette(n: int = 256) -> list[int]:
    palette = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def _rgb(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _save_rgb(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, "RGB").save(path)


def _save_gray(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8), "L").save(path)


# ----------------------------------------------------------------------------- CIFAR-100
def write_cifar100(root: Path, n_train: int = 12, n_test: int = 6, seed: int = 0) -> dict:
    """``<root>/cifar-100-python/{train,test,meta}`` pickles with bytes keys (protocol 2, like the originals)."""
    rng = np.random.default_rng(seed)
    base = Path(root) / "cifar-100-python"
    base.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        fine = rng.integers(0, 100, n).tolist()
        d = {
            b"filenames": [f"img_{split}_{i}.png".encode() for i in range(n)],
            b"batch_label": f"{split} batch 1 of 1".encode(),
            b"fine_labels": fine,
            b"coarse_labels": [f // 5 for f in fine],
            b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        }
        with open(base / split, "wb") as f:
            pickle.dump(d, f, protocol=2)
        out[split] = d
    meta = {
        b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
    }
    with open(base / "meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)
    out["meta"] = meta
    return out


# ----------------------------------------------------------------------------- ImageFolder
def write_imagefolder(
    root: Path,
    classes: dict[str, dict[str, int]],
    size: tuple[int, int] = (20, 24),
    ext: str = ".jpg",
    seed: int = 0,
) -> Path:
    """``<root>/<split>/<class>/img<k><ext>``; ``classes = {split: {class: count}}``."""
    rng = np.random.default_rng(seed)
    for split, counts in classes.items():
        for cls, n in counts.items():
            d = Path(root) / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                _save_rgb(d / f"img{k}{ext}", _rgb(rng, *size))
    return Path(root)


# ----------------------------------------------------------------------------- Cityscapes
def write_cityscapes(
    root: Path, split: str = "train", cities: dict[str, int] | None = None, size=(8, 16), seed: int = 0
) -> dict[str, np.ndarray]:
    """``leftImg8bit/<split>/<city>/..._leftImg8bit.png`` + ``gtFine/.../..._gtFine_labelIds.png``.

    Returns ``{stem: labelIds}``; label ids are drawn from 0..33 (train and non-train ids).
    """
    rng = np.random.default_rng(seed)
    cities = cities or {"aachen": 2, "bremen": 1}
    written = {}
    for city, n in cities.items():
        for k in range(n):
            stem = f"{city}_{k:06d}_000019"
            _save_rgb(Path(root) / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", _rgb(rng, *size))
            ids = rng.integers(0, 34, size=size, dtype=np.uint8)
            _save_gray(Path(root) / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", ids)
            # the other gtFine files that ship alongside (must be ignored by the reader)
            _save_gray(Path(root) / "gtFine" / split / city / f"{stem}_gtFine_instanceIds.png", ids)
            written[stem] = ids
    return written


# ----------------------------------------------------------------------------- CamVid
def write_camvid(root: Path, splits: dict[str, int] | None = None, size=(6, 8), seed: int = 0) -> dict:
    """SegNet's CamVid: ``<split>/<name>.png`` frames and ``<split>annot/<name>.png`` labels 0..11."""
    rng = np.random.default_rng(seed)
    splits = splits or {"train": 3, "val": 2, "test": 2}
    written = {}
    for split, n in splits.items():
        for k in range(n):
            name = f"0001TP_{split}_{k:06d}.png"
            _save_rgb(Path(root) / split / name, _rgb(rng, *size))
            lbl = rng.integers(0, 12, size=size, dtype=np.uint8)
            _save_gray(Path(root) / f"{split}annot" / name, lbl)
            written[(split, name)] = lbl
    return written


# ----------------------------------------------------------------------------- PASCAL VOC 2012
def write_voc2012(
    root: Path, splits: dict[str, int] | None = None, size=(10, 12), seed: int = 0
) -> dict[str, np.ndarray]:
    """``VOCdevkit/VOC2012/{JPEGImages,SegmentationClass,ImageSets/Segmentation}`` with palette PNG labels."""
    rng = np.random.default_rng(seed)
    base = Path(root) / "VOCdevkit" / "VOC2012"
    splits = splits or {"train": 3, "val": 2}
    written, lists = {}, {}
    for split, n in splits.items():
        ids = [f"2007_{split[:1]}{k:05d}" for k in range(n)]
        lists[split] = ids
        for i in ids:
            _save_rgb(base / "JPEGImages" / f"{i}.jpg", _rgb(rng, *size))
            lbl = rng.integers(0, 21, size=size, dtype=np.uint8)
            lbl[0, :] = 255  # object borders / difficult regions are 255
            im = Image.fromarray(lbl, "L")
            im.putpalette(voc_palette())  # becomes a "P" image holding the indices
            (base / "SegmentationClass").mkdir(parents=True, exist_ok=True)
            im.save(base / "SegmentationClass" / f"{i}.png")
            written[i] = lbl
    lists["trainval"] = [i for ids in lists.values() for i in ids]
    (base / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    for split, ids in lists.items():
        (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return written


def write_pascal_context(
    root: Path, splits: dict[str, int] | None = None, size=(10, 12), seed: int = 0
) -> dict[str, np.ndarray]:
    """``VOCdevkit/VOC2010/{JPEGImages,SegmentationClassContext,ImageSets/SegmentationContext}``:
    8-bit label PNGs, 0 = outside the 59 classes, 1..59 the classes."""
    rng = np.random.default_rng(seed)
    base = Path(root) / "VOCdevkit" / "VOC2010"
    splits = splits or {"train": 3, "val": 2}
    written = {}
    (base / "ImageSets" / "SegmentationContext").mkdir(parents=True, exist_ok=True)
    for split, n in splits.items():
        ids = [f"2008_{split[:1]}{k:05d}" for k in range(n)]
        for i in ids:
            _save_rgb(base / "JPEGImages" / f"{i}.jpg", _rgb(rng, *size))
            lbl = rng.integers(0, 60, size=size, dtype=np.uint8)
            lbl[:, 0] = 0  # unlabelled / outside the 59 classes
            lbl[-1, -1] = 59
            _save_gray(base / "SegmentationClassContext" / f"{i}.png", lbl)
            written[i] = lbl
        (base / "ImageSets" / "SegmentationContext" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return written


# ----------------------------------------------------------------------------- BSDS500
def bsds_ground_truth_cell(annotators: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """A 1×K object array of structs: ``savemat`` writes it as BSDS's ``groundTruth`` cell array."""
    cell = np.empty((1, len(annotators)), dtype=object)
    for k, (seg, bnd) in enumerate(annotators):
        cell[0, k] = {"Segmentation": seg.astype(np.uint16), "Boundaries": bnd.astype(bool)}
    return cell


def write_bsds500(
    root: Path, splits: dict[str, int] | None = None, annotators: int = 3, size=(9, 12), seed: int = 0
) -> dict[str, list[np.ndarray]]:
    """``BSR/BSDS500/data/{images,groundTruth}/<split>/<id>.{jpg,mat}``; returns ``{id: [boundaries...]}``."""
    rng = np.random.default_rng(seed)
    base = Path(root) / "BSR" / "BSDS500" / "data"
    splits = splits or {"train": 2, "val": 1, "test": 1}
    written = {}
    for s, (split, n) in enumerate(splits.items()):
        for k in range(n):
            sid = str(100007 + 1000 * s + k)  # numeric ids, unique across splits, like 100007.jpg
            _save_rgb(base / "images" / split / f"{sid}.jpg", _rgb(rng, *size))
            ann = []
            for a in range(annotators):
                seg = rng.integers(1, 4, size=size)
                bnd = rng.random(size) < 0.2
                ann.append((seg, bnd))
            (base / "groundTruth" / split).mkdir(parents=True, exist_ok=True)
            scipy.io.savemat(base / "groundTruth" / split / f"{sid}.mat", {"groundTruth": bsds_ground_truth_cell(ann)})
            written[sid] = [b for _, b in ann]
        (base / "images" / split / "Thumbs.db").write_bytes(b"\0")  # shipped in the real archive
    return written


# ----------------------------------------------------------------------------- SiftFlow
SIFTFLOW_SUBDIR = "spatial_envelope_256x256_static_8outdoorcategories"


def write_siftflow(
    root: Path, n: int = 5, test: int = 2, size=(8, 8), seed: int = 0, test_list: str = "TestSet1.txt"
) -> dict[str, np.ndarray]:
    """``SiftFlow/{Images,SemanticLabels}/<subdir>/<name>.{jpg,mat}`` (``S``: 0..33) + the test list."""
    rng = np.random.default_rng(seed)
    base = Path(root) / "SiftFlow"
    written = {}
    names = [f"{cat}_n{k:03d}" for k, cat in zip(range(n), ["coast", "forest", "highway", "insidecity", "mountain"] * n)]
    for name in names:
        _save_rgb(base / "Images" / SIFTFLOW_SUBDIR / f"{name}.jpg", _rgb(rng, *size))
        s = rng.integers(0, 34, size=size).astype(np.float64)  # stored as double, like the originals
        (base / "SemanticLabels" / SIFTFLOW_SUBDIR).mkdir(parents=True, exist_ok=True)
        names_cell = np.empty((33, 1), dtype=object)
        for c in range(33):
            names_cell[c, 0] = f"class{c + 1}"
        scipy.io.savemat(base / "SemanticLabels" / SIFTFLOW_SUBDIR / f"{name}.mat", {"S": s, "names": names_cell})
        written[name] = s
    if test_list:
        lines = [f"Images\\{SIFTFLOW_SUBDIR}\\{name}.jpg" for name in names[:test]]
        (base / test_list).write_text("\n".join(lines) + "\n")
    return written
