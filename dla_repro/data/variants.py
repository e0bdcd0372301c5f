"""The DynOPool toy variants of a classification dataset: ``original``, ``stretch_v``, ``tile``, ``large``.

Jang, Chu, Kim, Han, "Pooling Revisited: Your Receptive Field is Suboptimal",
CVPR 2022, arXiv 2205.15254, the toy experiments (Table 1): VGG-16 is
trained on CIFAR-100 and on three variants of it whose best receptive field
differs from the original's --

* **CIFAR-stretch-V**: images stretched vertically, then randomly cropped back;
* **CIFAR-tile**: downscaled copies of an image tiled in a 4×4 grid;
* **CIFAR-large**: enlarged images.

The paper's stretch factor, crop rule, tile resampling and enlargement factor
are not available to us (paper: n/a), so every number below is **our choice**,
configurable through ``make_variant(dataset, name, **factors)``:

==============  ===================================================================  =========================
name            what an item becomes (``x``: ``C×H×W``)                               factors (default)
==============  ===================================================================  =========================
``original``    ``x`` unchanged                                                      --
``stretch_v``   ``x`` resized bilinearly to ``round(factor·H)×W`` (width kept), then   ``factor=2.0``
                a ``H×W`` window at a random row offset ``t ∈ {0 … round(factor·H)−H}``
``tile``        ``x`` downscaled to ``(H/grid)×(W/grid)`` (``area``: exact block mean  ``grid=4``, ``mode="area"``
                when ``grid`` divides the size; ``bilinear``: antialiased), then
                repeated ``grid×grid`` times: output ``H×W``, ``grid²`` copies
``large``       ``x`` resized bilinearly to ``round(factor·H)×round(factor·W)``        ``factor=2.0``
==============  ===================================================================  =========================

Why these: a 2× stretch or enlargement changes the scale of the content by
exactly one 2×2 pooling stage of VGG-16 along the stretched axes (vertical only
for ``stretch_v``), and a 4×4 tiling shrinks it by two stages, so a
hand-designed pooling schedule is off by a whole stage in each variant; the 4×4
grid is the one the paper names.  With ``factor=2`` a crop keeps half the stretched image, so
``stretch_v`` loses content (the random crop moves which half) while ``tile``
and ``large`` keep all of it.  Resizing uses ``align_corners=False`` throughout
(pixel centres, like PIL and timm).

**Size.**  ``original``, ``stretch_v`` and ``tile`` keep ``H×W``; ``large``
returns ``factor·H × factor·W``: build the base dataset at the experiment's
``image_size`` (32 for CIFAR) and the network sees ``factor·image_size`` (64),
so its MACs grow by about ``factor²``.  The content is the same image enlarged,
not rendered with more detail (for the synthetic data, generating at 64 px is a
different dataset).  :meth:`VariantTransform.output_size` gives the size a model
sees.

**Where in the pipeline.**  A variant wraps any dataset of ``(image, label)``
with ``image`` a ``C×H×W`` tensor (a PIL image or ``H×W×C`` array is converted
to ``[0, 1]`` first) -- the synthetic classification splits
(:func:`dla_repro.data.synthetic.make_splits`) or CIFAR-100 through
:func:`dla_repro.data.readers.build_classification_dataset` -- so it comes
*after* the base dataset's own augmentation and normalisation.  Bilinear and
area resampling are weighted means with weights summing to one, so they commute
with the per-channel ``(x − mean) / std``: resizing a normalised image equals
normalising the resized one.  Labels pass through untouched; a dense target
(a mask) is refused, since these variants would misalign it.

**Labels that encode position.**  The variants were made for CIFAR's object
labels, which no crop or tiling changes.  The synthetic classification label is
``shape@position`` (a quadrant of the image): ``stretch_v``'s crop moves the
target vertically and drops its centre from the window in about two samples of
five (factor 2, 32 px; target boxes of 400 synthetic-v1 / v2 samples), so the
label is then unseeable, and ``tile`` keeps the position only relative to each
tile.  Accuracy on those variants of the synthetic data is therefore not
comparable to CIFAR's; read it as a harder task, not as the paper's.

**Randomness** (only ``stretch_v``'s crop offset) follows the synthetic data's
convention (``dla_repro.data.synthetic``, "Determinism"): each item draws from
its own stream, so an item is the same whatever batch, order or worker produced
it.  A training wrapper (``per_epoch=True``) draws item ``index`` from
``SeedSequence([seed, 1, run_seed, epoch, index])``; ``set_epoch(epoch, seed)``
-- called by the training engine before every epoch
(``dla_repro.engine.loaders.set_epoch``) and forwarded to the base dataset --
moves it to a new crop per epoch and run seed.  An evaluation wrapper
(``per_epoch=False``) draws from ``SeedSequence([seed, 0, index])``: one fixed
random crop per item, the same distribution as training, the same every epoch
and every run.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .readers.transforms import image_to_tensor

__all__ = [
    "VARIANTS",
    "VARIANT_NAMES",
    "Variant",
    "VariantTransform",
    "VariantDataset",
    "VariantSplits",
    "variant_transform",
    "make_variant",
    "make_variant_splits",
    "output_sizes",
    "stretch_v",
    "tile",
    "large",
]


# ------------------------------------------------------------------------ the operations
def _check_image(image: torch.Tensor) -> None:
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or not image.is_floating_point():
        got = f"{type(image).__name__} {tuple(getattr(image, 'shape', ()))} {getattr(image, 'dtype', '')}"
        raise ValueError(f"a variant needs a float C×H×W image tensor, got {got}")


def original(image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The image itself."""
    _check_image(image)
    return image


def stretch_v(image: torch.Tensor, generator: torch.Generator | None = None, *, factor: float = 2.0) -> torch.Tensor:
    """Stretch rows by ``factor`` (bilinear, width kept), then crop ``H`` rows at a random offset."""
    _check_image(image)
    h, w = image.shape[-2:]
    tall = max(h, round(h * factor))
    if tall != h:
        image = F.interpolate(image[None], size=(tall, w), mode="bilinear", align_corners=False)[0]
    top = int(torch.randint(tall - h + 1, (), generator=generator))
    return image[:, top : top + h, :]


def tile(image: torch.Tensor, generator: torch.Generator | None = None, *, grid: int = 4,
         mode: str = "area") -> torch.Tensor:
    """``grid×grid`` copies of the image downscaled by ``grid``; same size as the input."""
    _check_image(image)
    h, w = image.shape[-2:]
    if h % grid or w % grid:
        raise ValueError(f"tile: grid={grid} must divide the image size {h}×{w}")
    size = (h // grid, w // grid)
    if mode == "area":
        small = F.interpolate(image[None], size=size, mode="area")[0]
    else:
        small = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    return small.repeat(1, grid, grid)


def large(image: torch.Tensor, generator: torch.Generator | None = None, *, factor: float = 2.0) -> torch.Tensor:
    """Resize bilinearly to ``round(factor·H) × round(factor·W)``."""
    _check_image(image)
    h, w = image.shape[-2:]
    size = (max(1, round(h * factor)), max(1, round(w * factor)))
    if size == (h, w):
        return image
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=factor < 1)[0]


# ----------------------------------------------------------------------------- registry
def _positive_number(name: str, lo: float = 0.0, inclusive: bool = False) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or value < lo or (value == lo and not inclusive):
            raise ValueError(f"{name} must be a number {'≥' if inclusive else '>'} {lo}, got {value!r}")
    return check


def _grid(value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"grid must be an integer ≥ 1, got {value!r}")


def _mode(value: Any) -> None:
    if value not in ("area", "bilinear"):
        raise ValueError(f"mode must be 'area' or 'bilinear', got {value!r}")


@dataclass(frozen=True)
class Variant:
    """A registered variant: its operation, its factors' defaults and checks, whether it is random."""

    name: str
    op: Callable[..., torch.Tensor]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    checks: Mapping[str, Callable[[Any], None]] = field(default_factory=dict)
    random: bool = False
    summary: str = ""


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("original", original, summary="the images as they are"),
        Variant("stretch_v", stretch_v, {"factor": 2.0}, {"factor": _positive_number("factor", 1.0, True)},
                random=True, summary="stretched vertically, randomly cropped back"),
        Variant("tile", tile, {"grid": 4, "mode": "area"}, {"grid": _grid, "mode": _mode},
                summary="downscaled copies in a grid×grid tiling"),
        Variant("large", large, {"factor": 2.0}, {"factor": _positive_number("factor")},
                summary="enlarged by factor"),
    )
}
VARIANT_NAMES: tuple[str, ...] = tuple(VARIANTS)


def _lookup(name: str) -> Variant:
    if name not in VARIANTS:
        raise ValueError(f"unknown dataset variant {name!r}; known: {', '.join(VARIANT_NAMES)}")
    return VARIANTS[name]


@dataclass(frozen=True)
class VariantTransform:
    """``transform(image, generator=None)``: one variant with its factors fixed."""

    name: str
    factors: Mapping[str, Any]

    def __call__(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return VARIANTS[self.name].op(image, generator, **self.factors)

    @property
    def random(self) -> bool:
        return VARIANTS[self.name].random

    def output_size(self, height: int, width: int | None = None) -> tuple[int, int]:
        """The ``(H, W)`` a model sees for a ``height × width`` base image."""
        width = height if width is None else width
        return tuple(self(torch.zeros(1, height, width), torch.Generator().manual_seed(0)).shape[-2:])

    def describe(self) -> str:
        """``"stretch_v(factor=2.0)"``."""
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in self.factors.items())})"


def variant_transform(name: str, **factors: Any) -> VariantTransform:
    """The transform of variant ``name`` (see ``VARIANTS``) with ``factors`` over its defaults."""
    variant = _lookup(name)
    unknown = sorted(set(factors) - set(variant.defaults))
    if unknown:
        allowed = ", ".join(variant.defaults) or "none"
        raise ValueError(f"variant {name!r} has no factor {', '.join(map(repr, unknown))}; its factors: {allowed}")
    merged = {**variant.defaults, **factors}
    for key, value in merged.items():
        variant.checks[key](value)
    return VariantTransform(name, merged)


# ------------------------------------------------------------------------------ datasets
def _stream_seed(*entropy: int) -> int:
    words = np.random.SeedSequence([int(e) for e in entropy]).generate_state(2, dtype=np.uint32)
    return int(words[0]) | (int(words[1]) << 32)


class VariantDataset(Dataset):
    """``(transform(image), label)`` for each ``(image, label)`` of ``dataset``.

    Build it with :func:`make_variant`.  ``name`` / ``digest`` / ``source`` extend
    the base dataset's (when it has them) with the variant and its factors, so
    ``dla_repro.engine.fit`` records which variant a run trained on.
    """

    def __init__(self, dataset: Dataset, transform: VariantTransform, seed: int = 0, per_epoch: bool = True):
        self.dataset, self.transform, self.seed, self.per_epoch = dataset, transform, int(seed), bool(per_epoch)
        self.epoch, self.run_seed = 0, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int, seed: int = 0) -> None:
        """Hold epoch ``epoch`` of the run seeded ``seed`` (and move the base dataset there too)."""
        if epoch < 0 or seed < 0:
            raise ValueError(f"epoch={epoch}, seed={seed}: must be ≥ 0")
        base_set_epoch = getattr(self.dataset, "set_epoch", None)
        if callable(base_set_epoch):
            base_set_epoch(epoch, seed)
        self.epoch, self.run_seed = int(epoch), int(seed)

    def generator(self, index: int) -> torch.Generator:
        """The stream item ``index`` draws from now (see the module docstring)."""
        if self.per_epoch:
            entropy = (self.seed, 1, self.run_seed, self.epoch, index)
        else:
            entropy = (self.seed, 0, index)
        return torch.Generator().manual_seed(_stream_seed(*entropy))

    def __getitem__(self, index: int):
        index = int(index)
        if index < 0:
            index += len(self)
        image, label = self.dataset[index]
        if isinstance(label, torch.Tensor) and label.ndim > 0:
            raise ValueError(f"dataset variants are for classification; item {index} has a "
                             f"{tuple(label.shape)} target (a mask?)")
        if not isinstance(image, torch.Tensor):
            image = image_to_tensor(image)
        generator = self.generator(index) if self.transform.random else None
        return self.transform(image, generator), label

    # identity and class names, as the base dataset has them
    @property
    def name(self) -> str:
        return f"{getattr(self.dataset, 'name', type(self.dataset).__name__)}+{self.transform.name}"

    @property
    def digest(self) -> str | None:
        base = getattr(self.dataset, "digest", None)
        if base is None:
            return None
        payload = json.dumps([str(base), self.transform.name, dict(self.transform.factors), self.seed,
                              self.per_epoch], sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    @property
    def source(self) -> str:
        base = getattr(self.dataset, "source", None) or getattr(self.dataset, "name", type(self.dataset).__name__)
        crop = ""
        if self.transform.random:
            crop = f", crop seed {self.seed} " + ("per epoch" if self.per_epoch else "fixed per item")
        return f"{base}; variant {self.transform.describe()}{crop}"

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    @property
    def class_names(self) -> list[str]:
        names = getattr(self.dataset, "class_names", None) or getattr(self.dataset, "classes", None)
        if names is None:
            raise AttributeError(f"{type(self.dataset).__name__} has no class_names / classes")
        return list(names)


def make_variant(dataset: Dataset, name: str, *, seed: int = 0, per_epoch: bool = True,
                 **factors: Any) -> VariantDataset:
    """Variant ``name`` (one of ``VARIANT_NAMES``) of a classification ``dataset``.

    ``factors`` override the variant's defaults (``VARIANTS[name].defaults``);
    ``seed`` and ``per_epoch`` fix ``stretch_v``'s crops: a new crop per item and
    epoch for training (``per_epoch=True``), one fixed crop per item for evaluation.
    """
    return VariantDataset(dataset, variant_transform(name, **factors), seed=seed, per_epoch=per_epoch)


@dataclass
class VariantSplits:
    """A variant's train and validation splits; ``dla_repro.engine.fit`` accepts it as ``data``."""

    train: VariantDataset
    val: VariantDataset | None
    name: str
    digest: str | None
    source: str


def make_variant_splits(data: Any, name: str, *, seed: int = 0, **factors: Any) -> VariantSplits:
    """The variant of a train/validation pair: anything with ``.train`` / ``.val``
    (``SyntheticSplits``, a ``DataBundle``, ``StudyData.data``) or a ``(train, val)`` tuple.

    The training split gets new ``stretch_v`` crops every epoch, the validation split
    one fixed crop per item.  ``name`` / ``digest`` / ``source`` extend the pair's."""
    if isinstance(data, (tuple, list)) and len(data) == 2:
        train, val, base_name, base_digest, base_source = *data, None, None, None
    elif hasattr(data, "train"):
        train, val = data.train, getattr(data, "val", None)
        base_name, base_digest = getattr(data, "name", None), getattr(data, "digest", None)
        base_source = getattr(data, "source", None)
    else:
        raise TypeError(f"expected a (train, val) pair or an object with .train/.val, got {type(data).__name__}")
    transform = variant_transform(name, **factors)
    train_v = VariantDataset(train, transform, seed=seed, per_epoch=True)
    val_v = None if val is None else VariantDataset(val, transform, seed=seed, per_epoch=False)
    base_name = base_name or getattr(train, "name", None) or type(train).__name__
    base_digest = base_digest or getattr(train, "digest", None)
    digest = None
    if base_digest is not None:
        payload = json.dumps([str(base_digest), transform.name, dict(transform.factors), seed], default=str)
        digest = hashlib.sha256(payload.encode()).hexdigest()[:16]
    source = f"{base_source or base_name}; variant {transform.describe()}, seed {seed}"
    return VariantSplits(train_v, val_v, f"{base_name}+{name}", digest, source)


def output_sizes(image_size: int, names: Sequence[str] = VARIANT_NAMES, **factors: Mapping[str, Any]) -> dict:
    """``{name: (H, W)}`` a model sees per variant for a square ``image_size`` base;
    ``factors`` maps a variant name to its factor overrides."""
    return {n: variant_transform(n, **dict(factors.get(n, {}))).output_size(image_size) for n in names}
