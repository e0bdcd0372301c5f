"""The built-in procedural dataset: one scene generator, three tasks.

No real dataset can be downloaded where this project is built, so every notebook
defaults to these scenes.  Each scene is designed so that the claim of each paper
has a way to show up -- or to fail to:

=====================  ==================================================  ==============
what is in a scene     why                                                 whose claim
=====================  ==================================================  ==============
one red **target**     image label = target *shape* × *position bin*       DLA: semantic
shape among coloured   (× optional *scale bin*): the label needs what       and spatial
distractor shapes      and where at once                                    fusion
background whose mean  per-pixel class of the *context shapes* (default     ParseNet,
colour encodes the     disk and cross) depends on the scene type: same      GALD (global
**scene type** under   local appearance, different class.  Locally the      context)
strong low-frequency   background colour barely tells the scene; the
colour variation       average over the whole image does
a wide striped         large regions next to 2-3 px **dots** and 1-2 px     GALD (small
**region**, thin       **lines**: big patterns beside small ones            patterns)
**lines**, small dots
exact masks            pixel = class of the last layer painted there;       DLA-Up
                       boundary = 1-px label-change map                     (segmentation,
                                                                            boundaries)
=====================  ==================================================  ==============

Painting order (later covers earlier): background → region → lines →
distractors → dots → target.  The target is painted last, so it is never
occluded.

**Per-pixel classes** (``SyntheticConfig.mask_names``): ``background``,
``region``, ``line``, ``dot``, then one class per shape -- or, for a context
shape, one class per scene type (``disk@scene0``, ``disk@scene1``).
**Image labels** (``label_names``): ``<shape>@<position>[/<scale>]``; position
bins split the image into ``position_bins × position_bins`` cells by the target's
centre, scale bins split ``object_size`` evenly by the target's size.

**Boundary** (``boundary``): pixel (i, j) is a boundary pixel when its class
differs from its right neighbour (i, j+1) or its lower neighbour (i+1, j).  Every
label change between two 4-neighbours is marked on exactly one side (the upper /
left one), so boundaries are one pixel thick.

**Scene cue.**  The background is ``0.5 + scene_strength · c_t + field + noise``
where ``c_t`` is a unit chroma direction of scene type t (directions evenly spaced
around the grey axis of RGB), and ``field`` is a smooth, isotropic random colour
field of standard deviation ``background_variation`` (uniform values on a
``(background_cells + 1)²`` grid, bilinearly upsampled).  A patch the size of
one grid cell sees the scene offset buried in a field of comparable size; the
image-wide mean averages ``(background_cells + 1)²`` independent field values.
The scene never changes anything but the background colour (region, lines, shapes
and dots are drawn from the same distributions in every scene): ``generate(...,
scene=t)`` renders the same sample in scene t with every other draw unchanged.

**Determinism.**  Sample ``index`` of split ``split`` under ``seed`` is drawn from
its own random stream, ``numpy.random.PCG64(SeedSequence([seed, key(split),
index]))``, then rendered with element-wise torch operations.  A sample is
therefore the same whatever batch, order or chunk size produced it, and different
split names give unrelated streams.

**Colours** are in [0, 1] before clipping; the returned image is normalised as
``(x - mean) / std`` with ``SyntheticConfig.mean`` / ``std``
(``denormalize`` undoes it for display).

Frozen defaults (``SYNTHETIC_VERSION``): the generator's default parameters were
calibrated once against the plain baseline (``dla_repro.models.plain``) only --
see ``dla_repro.experiments.calibration`` and ``results/tables/synthetic_calibration.csv``
-- and then frozen.  Changing a default changes the version string.

**Versions.**  ``SyntheticConfig()`` is ``synthetic-v1``, unchanged: same samples,
same digest.  ``SyntheticConfig.preset("synthetic-v2")`` is the redesign for
experiments that must be able to decide (fields added after v1 are neutral in v1
and stay out of its digest):

* **well-posed labels** -- ``label_margin`` pixels between the target's centre and
  every position-bin edge (and, with scale bins, between its size and every
  scale-bin edge): in v1 about one sample in eight sat within half a pixel of a
  quadrant edge, where the label is a coin flip; v2 also drops the scale bins
  (``scale_bins=1``: shape × quadrant);
* **a visibility floor** -- target contrast at least 0.35 (v1: 0.2, near the noise);
* **fine structures a stride-2 decoder can resolve** -- lines 2 px wide, dots 3 px;
* **nothing to memorise** -- :class:`SyntheticStream`: fresh training samples every
  epoch, from a stream of the run's own seed (``set_epoch(epoch, seed)``, called
  by the training engine), so seeds differ in the data they see while the arms
  of one seed share it.

The image size is the experiment's choice (the smallest that still expresses its
task, e.g. 32 px for the classification labels).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..labels import IGNORE_INDEX

__all__ = [
    "SYNTHETIC_VERSION",
    "SYNTHETIC_VERSIONS",
    "FRESH_BY_DEFAULT",
    "SyntheticStream",
    "dataset_version",
    "SHAPES",
    "STUFF_CLASSES",
    "TASKS",
    "SyntheticConfig",
    "SyntheticDataset",
    "SyntheticSplits",
    "generate",
    "generate_indices",
    "make_splits",
    "denormalize",
    "boundary_map",
    "class_statistics",
]

SYNTHETIC_VERSION = "synthetic-v1"
"""Version of the default ``SyntheticConfig()`` (the generator's code and frozen defaults); part of its ``digest()``."""
SYNTHETIC_VERSIONS = ("synthetic-v1", "synthetic-v2")
"""Every frozen version, each reproducible by name (:meth:`SyntheticConfig.preset`)."""
FRESH_BY_DEFAULT = {"synthetic-v1": False, "synthetic-v2": True}
"""Whether a version's training split is a :class:`SyntheticStream` (fresh samples each epoch) by design."""

# Fields added after synthetic-v1 and their v1 values: a config holding these values renders
# exactly v1's samples, and they stay out of its digest so v1 digests never change.
_V1_NEUTRAL = {"version": "synthetic-v1", "label_margin": 0.0}

# What each version changes from SyntheticConfig()'s v1 defaults (the image size is the experiment's).
_PRESETS: dict[str, dict[str, Any]] = {
    "synthetic-v1": {},
    "synthetic-v2": {
        "version": "synthetic-v2",
        "scale_bins": 1,  # shape x quadrant: no scale-bin edge to fall on
        "label_margin": 1.0,  # the target's centre >= 1 px from every quadrant edge
        "target_contrast": (0.35, 0.7),  # a visibility floor well above the pixel noise
        "thin_width": (2, 2),  # resolvable at a stride-2 decoder's output
        "small_size": (3, 3),
    },
}

TASKS = ("classification", "segmentation", "boundary")
STUFF_CLASSES = ("background", "region", "line", "dot")


def dataset_version(dataset: str) -> str | None:
    """The synthetic version a notebook's ``dataset`` parameter names (``"synthetic"`` is v1, as it always
    was; ``"synthetic-v2"`` …), or ``None`` for a real dataset."""
    name = str(dataset).lower()
    if name == "synthetic":
        return SYNTHETIC_VERSION
    return name if name in SYNTHETIC_VERSIONS else None


# ----------------------------------------------------------------------------- shapes
# Each shape is a predicate on coordinates normalised to its bounding box:
# u (right) and v (down) in [-1, 1] span the box of side ``size``.
def _square(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.maximum(u.abs(), v.abs()) <= 1.0


def _disk(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return u * u + v * v <= 1.0


def _triangle(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # apex at the top (v = -1), base at the bottom (v = 1)
    return (v <= 1.0) & (2.0 * u.abs() <= v + 1.0)


def _cross(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    au, av = u.abs(), v.abs()
    inside = torch.maximum(au, av) <= 1.0
    return inside & (torch.minimum(au, av) <= 0.34)


def _diamond(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return u.abs() + v.abs() <= 1.0


def _ring(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    r2 = u * u + v * v
    return (r2 <= 1.0) & (r2 >= 0.36)


SHAPES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "square": _square,
    "disk": _disk,
    "triangle": _triangle,
    "cross": _cross,
    "diamond": _diamond,
    "ring": _ring,
}
"""Shape name → inside-predicate on box-normalised coordinates (u, v) ∈ [-1, 1]²."""

# Target colour: red.  Distractor and dot colours: corners of the RGB cube other than
# red, pulled towards grey by the jitter, so no distractor is ever the target's colour.
_TARGET_RGB = (0.92, 0.08, 0.08)
_PALETTE_RGB = (
    (0.08, 0.85, 0.08),  # green
    (0.10, 0.20, 0.95),  # blue
    (0.95, 0.90, 0.10),  # yellow
    (0.10, 0.90, 0.90),  # cyan
    (0.90, 0.10, 0.90),  # magenta
    (0.97, 0.97, 0.97),  # white
    (0.03, 0.03, 0.03),  # black
)


# ----------------------------------------------------------------------------- config
@dataclass(frozen=True)
class SyntheticConfig:
    """Every knob of the generator.  Frozen: build variants with ``config.replace(...)``.

    Sizes of the target and distractor shapes are fractions of ``image_size``;
    dots and line widths are in pixels (a thin structure stays thin at any size).
    """

    image_size: int = 64
    """Height = width of the square images, in pixels (≥ 16)."""
    shapes: tuple[str, ...] = ("square", "disk", "triangle", "cross")
    """Shapes of the target and distractors (names from ``SHAPES``)."""
    context_shapes: tuple[str, ...] = ("disk", "cross")
    """Shapes whose per-pixel class depends on the scene type (one class per scene)."""
    num_scene_types: int = 2
    """Number of scene types (background chroma directions)."""
    position_bins: int = 2
    """Image label position bins per axis (2 → four quadrants)."""
    scale_bins: int = 2
    """Image label scale bins over ``object_size`` (1 → the label ignores scale)."""
    object_size: tuple[float, float] = (0.16, 0.32)
    """Side / diameter of target and distractors, as a fraction of ``image_size`` (uniform)."""
    n_distractors: int = 3
    """Distractor shapes per image (any shape, never red)."""
    n_small: int = 4
    """Small square objects ("dots") per image."""
    small_size: tuple[int, int] = (2, 3)
    """Side of a dot in pixels (inclusive integer range)."""
    n_thin: int = 2
    """Thin straight line segments per image."""
    thin_width: tuple[int, int] = (1, 2)
    """Line thickness in pixels, measured across the line's major axis (inclusive range)."""
    region_prob: float = 1.0
    """Probability that an image has the large striped region."""
    scene_strength: float = 0.055
    """Offset of the background's mean colour along the scene's chroma direction."""
    background_variation: float = 0.15
    """Standard deviation (per channel) of the smooth background colour field."""
    background_cells: int = 8
    """The smooth field is defined on a (cells + 1)² grid: its correlation length is image_size / cells."""
    color_jitter: float = 0.12
    """Per-channel uniform jitter (±) of the object colours."""
    target_contrast: tuple[float, float] = (0.2, 0.7)
    """Contrast a ~ U(min, max) of the target: its colour ← 0.5 + a · (colour − 0.5)."""
    distractor_contrast: tuple[float, float] = (1.0, 1.0)
    """Contrast a ~ U(min, max) of each distractor shape (as for the target)."""
    noise: float = 0.1
    """Standard deviation of the per-pixel uniform noise added to every channel."""
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    label_margin: float = 0.0
    """Pixels between the target's centre and every position-bin edge (and its size and every scale-bin
    edge): no label decided by a fraction of a pixel.  0 (v1): the centre is uniform over the image."""
    version: str = SYNTHETIC_VERSION
    """The frozen version these defaults come from (:meth:`preset`); part of the digest."""

    def __post_init__(self) -> None:
        # tuples, so that a config built from lists (YAML, JSON) is hashable and digests alike
        for name in ("shapes", "context_shapes", "object_size", "small_size", "thin_width", "target_contrast",
                     "distractor_contrast",
                     "mean", "std"):
            value = getattr(self, name)
            if not isinstance(value, (tuple, list)):
                raise TypeError(f"{name}={value!r}: expected a tuple")
            object.__setattr__(self, name, tuple(value))
        self._validate()

    def _validate(self) -> None:
        def fail(field: str, why: str) -> None:
            raise ValueError(f"SyntheticConfig.{field}={getattr(self, field)!r}: {why}")

        if not isinstance(self.image_size, int) or self.image_size < 16:
            fail("image_size", "must be an integer ≥ 16")
        if not self.shapes:
            fail("shapes", "need at least one shape")
        unknown = [s for s in self.shapes if s not in SHAPES]
        if unknown:
            fail("shapes", f"unknown {unknown}; known shapes: {sorted(SHAPES)}")
        if len(set(self.shapes)) != len(self.shapes):
            fail("shapes", "names must be unique")
        stray = [s for s in self.context_shapes if s not in self.shapes]
        if stray:
            fail("context_shapes", f"{stray} not among shapes {self.shapes}")
        if len(set(self.context_shapes)) != len(self.context_shapes):
            fail("context_shapes", "names must be unique")
        if self.num_scene_types < 1:
            fail("num_scene_types", "must be ≥ 1")
        if self.position_bins < 1:
            fail("position_bins", "must be ≥ 1")
        if self.scale_bins < 1:
            fail("scale_bins", "must be ≥ 1")
        lo, hi = self.object_size
        if not (0.0 < lo <= hi <= 0.5):
            fail("object_size", "need 0 < min ≤ max ≤ 0.5 (fractions of image_size)")
        if len(self.small_size) != 2 or not (1 <= self.small_size[0] <= self.small_size[1]):
            fail("small_size", "need integers 1 ≤ min ≤ max (pixels)")
        if lo * self.image_size < self.small_size[1] + 2:
            fail(
                "object_size",
                f"smallest shape ({lo * self.image_size:.1f} px at image_size={self.image_size}) must be at "
                f"least 2 px larger than the largest dot ({self.small_size[1]} px)",
            )
        if len(self.thin_width) != 2 or not (1 <= self.thin_width[0] <= self.thin_width[1] <= 2):
            fail("thin_width", "need integers 1 ≤ min ≤ max ≤ 2 (thin structures are at most 2 px)")
        for name in ("n_distractors", "n_small", "n_thin", "background_cells"):
            if getattr(self, name) < (1 if name == "background_cells" else 0):
                fail(name, "must be ≥ 1" if name == "background_cells" else "must be ≥ 0")
        if not (0.0 <= self.region_prob <= 1.0):
            fail("region_prob", "must be a probability in [0, 1]")
        for name in ("target_contrast", "distractor_contrast"):
            lo_c, hi_c = getattr(self, name) if len(getattr(self, name)) == 2 else (0, 0)
            if not (0.0 < lo_c <= hi_c <= 1.0):
                fail(name, "need two values 0 < min ≤ max ≤ 1")
        for name in ("scene_strength", "background_variation", "color_jitter", "noise"):
            if getattr(self, name) < 0:
                fail(name, "must be ≥ 0")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            fail("std", "mean and std need 3 values, std > 0")
        if self.version not in SYNTHETIC_VERSIONS:
            fail("version", f"unknown; known versions: {', '.join(SYNTHETIC_VERSIONS)}")
        if self.label_margin < 0:
            fail("label_margin", "must be ≥ 0")
        if self.label_margin > 0:
            bin_px = self.image_size / self.position_bins
            if self.object_size[1] * self.image_size / 2 + self.label_margin >= bin_px - self.label_margin:
                fail("label_margin", f"no room: a target of the largest size ({self.object_size[1]} × "
                                     f"{self.image_size} px) cannot sit {self.label_margin} px inside a "
                                     f"{bin_px:g}-px position bin and inside the image")
            if self.scale_bins > 1:
                scale_px = (self.object_size[1] - self.object_size[0]) * self.image_size / self.scale_bins
                if 2 * self.label_margin >= scale_px:
                    fail("label_margin", f"wider than half a scale bin ({scale_px:g} px)")
        if self.num_mask_classes > 255:
            fail("shapes", "too many per-pixel classes (at most 255)")

    # --------------------------------------------------------------- identity
    def replace(self, **changes: Any) -> SyntheticConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}

    @classmethod
    def preset(cls, version: str, **changes: Any) -> SyntheticConfig:
        """The frozen defaults of ``version`` (one of :data:`SYNTHETIC_VERSIONS`), with ``changes``
        (e.g. ``image_size``) on top."""
        if version not in _PRESETS:
            raise ValueError(f"unknown synthetic version {version!r}; known: {', '.join(SYNTHETIC_VERSIONS)}")
        return cls(**{**_PRESETS[version], **changes})

    def digest(self) -> str:
        """Stable 16-hex-digit hash of the config and its version (logged to MLflow).  Fields added
        after v1 enter it only when they differ from their v1 values, so v1 digests never change."""
        fields = {k: v for k, v in self.to_dict().items() if not (k in _V1_NEUTRAL and v == _V1_NEUTRAL[k])}
        payload = json.dumps({**fields, "version": self.version}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    # --------------------------------------------------------------- label spaces
    @property
    def num_positions(self) -> int:
        return self.position_bins**2

    @property
    def num_labels(self) -> int:
        """Image-level classes: shapes × position bins × scale bins."""
        return len(self.shapes) * self.num_positions * self.scale_bins

    @property
    def num_mask_classes(self) -> int:
        """Per-pixel classes: stuff classes + one per plain shape + scene types per context shape."""
        n_ctx = len(self.context_shapes)
        return len(STUFF_CLASSES) + len(self.shapes) - n_ctx + n_ctx * self.num_scene_types

    def position_names(self) -> list[str]:
        p = self.position_bins
        if p == 1:
            return ["anywhere"]
        if p == 2:
            return ["top-left", "top-right", "bottom-left", "bottom-right"]
        return [f"r{i}c{j}" for i in range(p) for j in range(p)]

    @property
    def label_names(self) -> list[str]:
        scales = [""] if self.scale_bins == 1 else [f"/scale{k}" for k in range(self.scale_bins)]
        return [f"{s}@{p}{z}" for s in self.shapes for p in self.position_names() for z in scales]

    @property
    def mask_names(self) -> list[str]:
        names = list(STUFF_CLASSES)
        for shape in self.shapes:
            if shape in self.context_shapes:
                names += [f"{shape}@scene{t}" for t in range(self.num_scene_types)]
            else:
                names.append(shape)
        return names

    def shape_class_table(self) -> torch.Tensor:
        """``(len(shapes), num_scene_types)`` long: per-pixel class of shape k in scene t."""
        table = torch.empty(len(self.shapes), self.num_scene_types, dtype=torch.long)
        c = len(STUFF_CLASSES)
        for k, shape in enumerate(self.shapes):
            if shape in self.context_shapes:
                table[k] = torch.arange(c, c + self.num_scene_types)
                c += self.num_scene_types
            else:
                table[k] = c
                c += 1
        return table

    def context_classes(self) -> list[int]:
        """Per-pixel classes that only the scene type tells apart."""
        table = self.shape_class_table()
        return [int(c) for k, s in enumerate(self.shapes) if s in self.context_shapes for c in table[k]]

    def context_scores(self, confusion: torch.Tensor) -> dict[str, float]:
        """How a segmenter reads the scene, from its confusion matrix (rows: truth, columns: prediction).

        Over the pixels of the context shapes: ``context_shape_recall`` -- the share
        given the right shape (any scene type); ``context_error`` -- among those,
        the share given the wrong scene type (chance ``1 - 1/num_scene_types``).
        The error is only defined where the shape is found at all (recall ≥ 1 %),
        else NaN; both are NaN without any context pixel.
        """
        table = self.shape_class_table()
        right_shape = wrong_scene = total = 0
        for k, shape in enumerate(self.shapes):
            if shape not in self.context_shapes:
                continue
            group = table[k]
            block = confusion[group][:, group]
            total += int(confusion[group].sum())
            right_shape += int(block.sum())
            wrong_scene += int(block.sum() - block.diag().sum())
        nan = float("nan")
        return {
            "context_shape_recall": right_shape / total if total else nan,
            "context_error": wrong_scene / right_shape if total and right_shape >= 0.01 * total else nan,
        }

    def label_of(self, shape: int, position: int, scale: int = 0) -> int:
        """Image label of a target of shape index ``shape`` in position bin ``position``, scale bin ``scale``."""
        return (shape * self.num_positions + position) * self.scale_bins + scale


# ----------------------------------------------------------------------- random layout
class _Layout:
    """Named slices of the per-sample uniform vector: every scalar decision has a fixed slot."""

    def __init__(self, cfg: SyntheticConfig):
        g = cfg.background_cells + 1
        parts = {
            "scene": (1,),
            "target": (9,),  # shape, size, cx, cy, 3 colour jitter, spare, contrast
            "distractor": (cfg.n_distractors, 9),  # shape, size, cx, cy, palette, 3 colour jitter, contrast
            "small": (cfg.n_small, 7),  # size, x, y, palette, 3 colour jitter
            "line": (cfg.n_thin, 7),  # angle, qx, qy, width, length, tone, tone jitter
            "region": (10,),  # present, angle, offset, curvature, period, stripe angle, phase, 3 base colour
            "field": (3, g, g),
        }
        self.slices: dict[str, tuple[slice, tuple[int, ...]]] = {}
        start = 0
        for name, shape in parts.items():
            size = math.prod(shape)
            self.slices[name] = (slice(start, start + size), shape)
            start += size
        self.size = start

    def get(self, u: torch.Tensor, name: str) -> torch.Tensor:
        sl, shape = self.slices[name]
        return u[:, sl].reshape(u.shape[0], *shape)


def _split_key(split: str) -> int:
    return int.from_bytes(hashlib.blake2b(split.encode(), digest_size=4).digest(), "little")


def _draw(cfg: SyntheticConfig, layout: _Layout, indices: Sequence[int], seed: int, split: str):
    """Per-sample random numbers: uniforms (B, D) float32 and pixel noise (B, 3, H, W) float32 in [0, 1)."""
    if seed < 0:
        raise ValueError(f"seed={seed}: must be ≥ 0")
    key = _split_key(split)
    h = cfg.image_size
    u = np.empty((len(indices), layout.size), dtype=np.float64)
    noise = np.empty((len(indices), 3, h, h), dtype=np.float32)
    for row, index in enumerate(indices):
        if index < 0:
            raise ValueError(f"sample index {index}: must be ≥ 0")
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, key, int(index)])))
        rng.random(out=u[row])
        rng.random(dtype=np.float32, out=noise[row])
    return torch.from_numpy(u).float(), torch.from_numpy(noise)


# ----------------------------------------------------------------------------- render
def _pick(u: torch.Tensor, n: int) -> torch.Tensor:
    return (u * n).long().clamp_(max=n - 1)


def _between(u: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * u


class _Canvas:
    """A batch of flattened images and masks, painted in place, layer after layer."""

    def __init__(self, image: torch.Tensor, mask: torch.Tensor):
        self.b, _, self.h, self.w = image.shape
        self.image = image.reshape(self.b, 3, self.h * self.w)
        self.mask = mask.reshape(self.b, self.h * self.w)

    def paint_full(self, inside: torch.Tensor, cls: torch.Tensor | int, color: torch.Tensor) -> None:
        """``inside`` (B, H, W) bool; ``color`` (B, 3) or (B, 3, H, W)."""
        inside = inside.reshape(self.b, -1)
        cls = torch.as_tensor(cls).reshape(-1, 1).expand(self.b, 1)
        self.mask.copy_(torch.where(inside, cls, self.mask))
        color = color.reshape(self.b, 3, -1)
        self.image.copy_(torch.where(inside[:, None], color, self.image))

    def paint_crop(self, oy, ox, size: int, inside: torch.Tensor, cls: torch.Tensor, color: torch.Tensor):
        """Paint a (B, size, size) window whose top-left pixel is (oy, ox), entirely inside the image."""
        k = torch.arange(size)
        idx = ((oy[:, None, None] + k[None, :, None]) * self.w + ox[:, None, None] + k[None, None, :])
        idx = idx.reshape(self.b, -1)
        inside = inside.reshape(self.b, -1)
        old = self.mask.gather(1, idx)
        self.mask.scatter_(1, idx, torch.where(inside, cls[:, None], old))
        idx3 = idx[:, None].expand(-1, 3, -1)
        old = self.image.gather(2, idx3)
        self.image.scatter_(2, idx3, torch.where(inside[:, None], color[:, :, None], old))


def _chroma_directions(n: int) -> torch.Tensor:
    """``n`` unit RGB directions orthogonal to grey, evenly spaced in angle (n = 2: ±(0, 1, -1)/√2)."""
    e1 = torch.tensor([2.0, -1.0, -1.0]) / math.sqrt(6.0)
    e2 = torch.tensor([0.0, 1.0, -1.0]) / math.sqrt(2.0)
    angle = math.pi / 2 + 2 * math.pi * torch.arange(n) / n
    return torch.cos(angle)[:, None] * e1 + torch.sin(angle)[:, None] * e2


def _jittered(base: torch.Tensor, u3: torch.Tensor, jitter: float) -> torch.Tensor:
    return (base + jitter * (2.0 * u3 - 1.0)).clamp(0.0, 1.0)


def _render(cfg: SyntheticConfig, layout: _Layout, u: torch.Tensor, noise: torch.Tensor,
            scene_override: int | None) -> dict[str, torch.Tensor]:
    b, h = u.shape[0], cfg.image_size
    w = h
    ys = torch.arange(h, dtype=torch.float32) + 0.5  # pixel centres
    xs = torch.arange(w, dtype=torch.float32) + 0.5
    yy, xx = ys.view(1, h, 1), xs.view(1, 1, w)

    # --- scene and background
    scene = _pick(layout.get(u, "scene")[:, 0], cfg.num_scene_types)
    if scene_override is not None:
        if not 0 <= scene_override < cfg.num_scene_types:
            raise ValueError(f"scene={scene_override}: must be in [0, {cfg.num_scene_types})")
        scene = torch.full_like(scene, scene_override)
    offset = cfg.scene_strength * _chroma_directions(cfg.num_scene_types)[scene]  # (B, 3)
    coarse = math.sqrt(3.0) * (2.0 * layout.get(u, "field") - 1.0) * cfg.background_variation
    field = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=True)
    image = (0.5 + offset[:, :, None, None] + field).contiguous()
    mask = torch.zeros(b, h, w, dtype=torch.long)
    canvas = _Canvas(image, mask)

    # --- large striped region: the far side of a gently curved line
    r = layout.get(u, "region")
    present = r[:, 0] < cfg.region_prob
    phi = 2 * math.pi * r[:, 1]
    nx, ny = torch.cos(phi).view(b, 1, 1), torch.sin(phi).view(b, 1, 1)
    dx, dy = xx - w / 2, yy - h / 2
    along = nx * dx + ny * dy
    across = -ny * dx + nx * dy
    d0 = (_between(r[:, 2], 0.0, 0.3) * h).view(b, 1, 1)
    bend = (_between(r[:, 3], -0.6, 0.6) / h).view(b, 1, 1)
    inside = (along - bend * across * across > d0) & present.view(b, 1, 1)
    period = _between(r[:, 4], 3.0, 6.0).view(b, 1, 1)
    psi = math.pi * r[:, 5]
    wave = torch.cos(psi).view(b, 1, 1) * xx + torch.sin(psi).view(b, 1, 1) * yy
    stripes = torch.sin(2 * math.pi * wave / period + 2 * math.pi * r[:, 6].view(b, 1, 1))
    base = _between(r[:, 7:10], 0.25, 0.75)
    color = base[:, :, None, None] + 0.2 * stripes[:, None]
    canvas.paint_full(inside, STUFF_CLASSES.index("region"), color)

    # --- thin lines: exactly `width` pixels per column (shallow) or per row (steep)
    if cfg.n_thin:
        line = layout.get(u, "line")
        for i in range(cfg.n_thin):
            p = line[:, i]
            theta = math.pi * p[:, 0]
            c, s = torch.cos(theta), torch.sin(theta)
            shallow = (c.abs() >= s.abs()).view(b, 1, 1)
            qx, qy = _between(p[:, 1], 0.15, 0.85) * w, _between(p[:, 2], 0.15, 0.85) * h
            width = (cfg.thin_width[0] + _pick(p[:, 3], cfg.thin_width[1] - cfg.thin_width[0] + 1)).view(b, 1, 1)
            half_len = (_between(p[:, 4], 0.3, 0.5) * h).view(b, 1, 1)
            # shallow: y = qy + tan·(x - qx); steep: x = qx + cot·(y - qy)
            slope = torch.where(shallow.view(b), s / c, c / s).view(b, 1, 1)  # |slope| ≤ 1
            major = torch.where(shallow, xx - qx.view(b, 1, 1), yy - qy.view(b, 1, 1))
            minor_pos = torch.where(shallow, qy.view(b, 1, 1), qx.view(b, 1, 1)) + slope * major
            pixel = torch.where(shallow, yy - 0.5, xx - 0.5)  # integer row / column index
            first = torch.ceil(minor_pos - width / 2.0 - 0.5)  # first pixel whose centre is on the line
            extent = half_len * torch.where(shallow, c.abs().view(b, 1, 1), s.abs().view(b, 1, 1))
            on = (pixel >= first) & (pixel < first + width) & (major.abs() <= extent)
            dark = p[:, 5] < 0.5
            tone = torch.where(dark, _between(p[:, 6], 0.02, 0.2), _between(p[:, 6], 0.8, 0.98))
            canvas.paint_full(on, STUFF_CLASSES.index("line"), tone[:, None].expand(b, 3))

    table = cfg.shape_class_table()
    palette = torch.tensor(_PALETTE_RGB)
    lo, hi = cfg.object_size[0] * h, cfg.object_size[1] * h
    crop = math.ceil(hi) + 2

    margin = cfg.label_margin

    def in_bin(u1: torch.Tensor, bins: int, start: float, stop: float, low: torch.Tensor | float,
               high: torch.Tensor | float) -> torch.Tensor:
        """A value uniform in one of ``bins`` equal bins of [start, stop] (the bin uniform too), at least
        ``margin`` inside its bin's edges and within [low, high]; the bin and the place in it both come
        from ``u1`` (its integer and fractional parts after scaling by ``bins``)."""
        k = _pick(u1, bins)
        frac = (u1 * bins - k).clamp(0.0, 1.0)
        width = (stop - start) / bins
        a = torch.clamp(start + k * width + margin, min=low)
        b = torch.clamp(start + (k + 1) * width - margin, max=high)
        return a + frac * (b - a)

    def paint_shapes(params: torch.Tensor, color: torch.Tensor, contrast_range,
                     labelled: bool = False) -> tuple[torch.Tensor, ...]:
        """params (B, 9): shape, size, cx, cy, …, contrast (column 8), in [0, 1).  Returns shape id, size, cx, cy.

        ``labelled`` (the target) with ``label_margin > 0``: size and centre keep the margin from
        the scale- and position-bin edges their label is read from."""
        shape = _pick(params[:, 0], len(cfg.shapes))
        if labelled and margin > 0:
            size = (in_bin(params[:, 1], cfg.scale_bins, lo, hi, lo, hi) if cfg.scale_bins > 1
                    else _between(params[:, 1], lo, hi))
            half = size / 2
            cx = in_bin(params[:, 2], cfg.position_bins, 0.0, float(w), half, w - half)
            cy = in_bin(params[:, 3], cfg.position_bins, 0.0, float(h), half, h - half)
        else:
            size = _between(params[:, 1], lo, hi)
            half = size / 2
            cx = half + params[:, 2] * (w - size)
            cy = half + params[:, 3] * (h - size)
        ox = torch.floor(cx - crop / 2).long().clamp(0, w - crop)
        oy = torch.floor(cy - crop / 2).long().clamp(0, h - crop)
        k = torch.arange(crop, dtype=torch.float32) + 0.5
        uu = (ox[:, None, None] + k.view(1, 1, crop) - cx[:, None, None]) / half[:, None, None]
        vv = (oy[:, None, None] + k.view(1, crop, 1) - cy[:, None, None]) / half[:, None, None]
        inside = torch.zeros(b, crop, crop, dtype=torch.bool)
        for sid, name in enumerate(cfg.shapes):
            sel = shape == sid
            if sel.any():
                inside[sel] = SHAPES[name](uu[sel], vv[sel])
        contrast = _between(params[:, 8], *contrast_range)[:, None]
        color = 0.5 + contrast * (color - 0.5)
        canvas.paint_crop(oy, ox, crop, inside, table[shape, scene], color)
        return shape, size, cx, cy

    # --- distractors: any shape, colours from the non-red palette
    dis = layout.get(u, "distractor")
    for i in range(cfg.n_distractors):
        p = dis[:, i]
        color = _jittered(palette[_pick(p[:, 4], len(palette))], p[:, 5:8], cfg.color_jitter)
        paint_shapes(p, color, cfg.distractor_contrast)

    # --- dots: small axis-aligned squares, a few pixels wide
    if cfg.n_small:
        small = layout.get(u, "small")
        smax = cfg.small_size[1]
        k = torch.arange(smax)
        for i in range(cfg.n_small):
            p = small[:, i]
            side = cfg.small_size[0] + _pick(p[:, 0], smax - cfg.small_size[0] + 1)
            x0 = _pick(p[:, 1], w - smax + 1)
            y0 = _pick(p[:, 2], h - smax + 1)
            inside = (k.view(1, smax, 1) < side.view(b, 1, 1)) & (k.view(1, 1, smax) < side.view(b, 1, 1))
            color = _jittered(palette[_pick(p[:, 3], len(palette))], p[:, 4:7], cfg.color_jitter)
            canvas.paint_crop(y0, x0, smax, inside, torch.full((b,), STUFF_CLASSES.index("dot")), color)

    # --- the target: red, painted last
    t = layout.get(u, "target")
    color = _jittered(torch.tensor(_TARGET_RGB).expand(b, 3), t[:, 4:7], cfg.color_jitter / 2)
    shape, size, cx, cy = paint_shapes(t, color, cfg.target_contrast, labelled=True)
    p = cfg.position_bins
    position = _pick(cy / h, p) * p + _pick(cx / w, p)
    scale = _pick((size - lo) / max(hi - lo, 1e-9), cfg.scale_bins)
    label = (shape * cfg.num_positions + position) * cfg.scale_bins + scale

    # --- noise, clipping, normalisation
    image = image + cfg.noise * math.sqrt(12.0) * (noise - 0.5)
    image = image.clamp_(0.0, 1.0)
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std).view(1, 3, 1, 1)
    image = (image - mean) / std
    box = torch.stack([cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2], dim=1)
    return {
        "image": image,
        "label": label,
        "mask": mask,
        "boundary": boundary_map(mask),
        "scene": scene,
        "target_shape": shape,
        "target_position": position,
        "target_scale": scale,
        "target_box": box,
    }


def boundary_map(mask: torch.Tensor) -> torch.Tensor:
    """1-px boundaries of a label map (..., H, W): 1 where a pixel's class differs from its right or lower neighbour."""
    edge = torch.zeros(mask.shape, dtype=torch.bool)
    edge[..., :, :-1] |= mask[..., :, :-1] != mask[..., :, 1:]
    edge[..., :-1, :] |= mask[..., :-1, :] != mask[..., 1:, :]
    return edge.to(torch.uint8)


# --------------------------------------------------------------------------- public API
def generate_indices(
    config: SyntheticConfig,
    indices: Iterable[int],
    seed: int = 0,
    split: str = "train",
    *,
    scene: int | None = None,
    chunk_size: int = 256,
) -> dict[str, torch.Tensor]:
    """Render the samples ``indices`` of stream ``(seed, split)``; see ``generate`` for the keys.

    Each sample depends only on ``(config, seed, split, index)`` (and ``scene`` if given),
    never on which other indices are in the call or on ``chunk_size``.
    """
    indices = [int(i) for i in indices]
    layout = _Layout(config)
    parts: list[dict[str, torch.Tensor]] = []
    for start in range(0, len(indices), chunk_size):
        u, noise = _draw(config, layout, indices[start : start + chunk_size], seed, split)
        parts.append(_render(config, layout, u, noise, scene))
    if not parts:
        parts.append(_render(config, layout, *_draw(config, layout, [0], seed, split), scene))
        return {k: v[:0] for k, v in parts[0].items()}
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def generate(
    config: SyntheticConfig | None = None,
    n: int = 1000,
    seed: int = 0,
    split: str = "train",
    *,
    start: int = 0,
    scene: int | None = None,
    chunk_size: int = 256,
) -> dict[str, torch.Tensor]:
    """Samples ``start … start + n - 1`` of the stream ``(seed, split)``.

    Returns a dict of tensors (N = ``n``, H = W = ``config.image_size``):

    * ``image`` (N, 3, H, W) float32, normalised with ``config.mean`` / ``std``;
    * ``label`` (N,) long, image-level class in ``[0, config.num_labels)``;
    * ``mask`` (N, H, W) long, per-pixel class in ``[0, config.num_mask_classes)``;
    * ``boundary`` (N, H, W) uint8, the 1-px label-change map of ``mask``;
    * ``scene`` (N,) long, scene type;
    * ``target_shape``, ``target_position``, ``target_scale`` (N,) long: the label's factors;
    * ``target_box`` (N, 4) float32: the target's box ``x0, y0, x1, y1`` in pixels.

    ``scene=t`` renders every sample in scene type t, with every other draw unchanged.
    """
    config = config or SyntheticConfig()
    if n < 0 or start < 0:
        raise ValueError(f"n={n}, start={start}: must be ≥ 0")
    return generate_indices(config, range(start, start + n), seed, split, scene=scene, chunk_size=chunk_size)


def denormalize(image: torch.Tensor, config: SyntheticConfig | None = None) -> torch.Tensor:
    """Undo the normalisation: (…, 3, H, W) → colours in [0, 1]."""
    config = config or SyntheticConfig()
    mean = torch.tensor(config.mean).view(3, 1, 1)
    std = torch.tensor(config.std).view(3, 1, 1)
    return (image * std + mean).clamp(0.0, 1.0)


# ----------------------------------------------------------------------------- dataset
class SyntheticDataset(Dataset):
    """A pre-generated split as ``(image, target)`` pairs for one task.

    ``task``: ``"classification"`` (target: image label, long scalar),
    ``"segmentation"`` (target: (H, W) long mask) or ``"boundary"`` (target: (H, W)
    long 0/1 map, for a two-class ``SegmentationTask``).  ``name`` / ``digest`` /
    ``source`` identify the data for ``dla_repro.engine.fit``'s MLflow record.
    """

    name = "synthetic"

    def __init__(
        self,
        config: SyntheticConfig | None = None,
        n: int = 1000,
        seed: int = 0,
        split: str = "train",
        task: str = "classification",
        *,
        data: Mapping[str, torch.Tensor] | None = None,
    ):
        if task not in TASKS:
            raise ValueError(f"task={task!r}: expected one of {TASKS}")
        self.config = config or SyntheticConfig()
        self.seed, self.split, self.task = seed, split, task
        data = data if data is not None else generate(self.config, n, seed, split)
        self.images = data["image"]
        self.labels = data["label"]
        self.masks = data["mask"].to(torch.uint8)  # compact storage; returned as long
        self.boundaries = data["boundary"].to(torch.uint8)
        self.scenes = data["scene"]
        self.n = len(self.images)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        image = self.images[index]
        if self.task == "classification":
            return image, self.labels[index]
        if self.task == "segmentation":
            return image, self.masks[index].long()
        return image, self.boundaries[index].long()

    def with_task(self, task: str) -> SyntheticDataset:
        """The same samples for another task (no regeneration)."""
        return SyntheticDataset(self.config, seed=self.seed, split=self.split, task=task, data=self.tensors())

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"image": self.images, "label": self.labels, "mask": self.masks.long(),
                "boundary": self.boundaries, "scene": self.scenes}

    @property
    def class_names(self) -> list[str]:
        if self.task == "classification":
            return self.config.label_names
        if self.task == "segmentation":
            return self.config.mask_names
        return ["non-boundary", "boundary"]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    _kind = ""  # what else identifies the data (a stream's "fresh per epoch …"), in digest and source

    @property
    def digest(self) -> str:
        payload = f"{self.config.digest()}|{self.split}|{self.seed}|{self.n}" + (f"|{self._kind}" if self._kind else "")
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    @property
    def source(self) -> str:
        return (f"dla_repro.data.synthetic {self.config.version} config={self.config.digest()} split={self.split} "
                f"seed={self.seed} n={self.n}" + (f" ({self._kind})" if self._kind else ""))


class SyntheticStream(SyntheticDataset):
    """Fresh samples every epoch: ``n`` per epoch from a stream of the training run's own seed.

    Epoch ``e`` of a run seeded ``s`` holds samples ``e·n … (e+1)·n − 1`` of the
    stream ``(seed, f"{split}/run{s}")`` -- rendered by :meth:`set_epoch`, which
    the training engine calls before each epoch (``engine.loaders.set_epoch``).
    So no sample is seen twice (nothing to memorise), two seeds see different data
    (the seed spread includes the data's), the arms of one seed see the same
    data in the same order, and a resumed run re-renders exactly what it saw.
    Until the first ``set_epoch`` it holds epoch 0 of run seed 0.
    """

    _kind = "n per epoch, fresh each epoch from the run seed's stream"

    def __init__(self, config: SyntheticConfig | None = None, n: int = 1000, seed: int = 0, split: str = "train",
                 task: str = "classification"):
        self.config = config or SyntheticConfig()
        self.seed, self.split, self.task, self.n = seed, split, task, n
        self.epoch = self.run_seed = None
        self.set_epoch(0, 0)

    def set_epoch(self, epoch: int, seed: int = 0) -> None:
        """Hold epoch ``epoch`` of the run seeded ``seed`` (re-rendered only when it changes)."""
        if (epoch, seed) == (self.epoch, self.run_seed):
            return
        if epoch < 0 or seed < 0:
            raise ValueError(f"epoch={epoch}, seed={seed}: must be ≥ 0")
        data = generate(self.config, self.n, self.seed, f"{self.split}/run{seed}", start=epoch * self.n)
        self.images, self.labels = data["image"], data["label"]
        self.masks, self.boundaries = data["mask"].to(torch.uint8), data["boundary"].to(torch.uint8)
        self.scenes = data["scene"]
        self.epoch, self.run_seed = epoch, seed

    def with_task(self, task: str) -> SyntheticStream:
        other = SyntheticStream.__new__(SyntheticStream)
        other.__dict__.update(self.__dict__)
        other.task = task
        return other


@dataclass
class SyntheticSplits:
    """A train and a validation split; ``dla_repro.engine.fit`` accepts it as ``data``."""

    train: SyntheticDataset
    val: SyntheticDataset
    name: str = "synthetic"

    @property
    def digest(self) -> str:
        return hashlib.sha256(f"{self.train.digest}|{self.val.digest}".encode()).hexdigest()[:16]

    @property
    def source(self) -> str:
        return f"{self.train.source}; val n={self.val.n} seed={self.val.seed}"

    def with_task(self, task: str) -> SyntheticSplits:
        return SyntheticSplits(self.train.with_task(task), self.val.with_task(task), self.name)


def make_splits(
    config: SyntheticConfig | None = None,
    n_train: int = 2000,
    n_val: int = 500,
    seed: int = 0,
    task: str = "classification",
    *,
    fresh: bool = False,
) -> SyntheticSplits:
    """Train (split ``"train"``) and validation (split ``"val"``) sets: unrelated streams, same config.

    ``fresh=True``: the training split is a :class:`SyntheticStream` (``n_train`` new samples every
    epoch, from the run seed's stream); the validation set stays fixed."""
    config = config or SyntheticConfig()
    train = (SyntheticStream if fresh else SyntheticDataset)(config, n_train, seed, "train", task)
    return SyntheticSplits(train, SyntheticDataset(config, n_val, seed, "val", task))


# -------------------------------------------------------------------------- statistics
def class_statistics(data: Mapping[str, torch.Tensor] | SyntheticDataset, config: SyntheticConfig | None = None):
    """Class frequencies as a tidy ``pandas.DataFrame``.

    One row per class of each label space: ``space`` (``"mask"``, ``"label"``,
    ``"boundary"``), ``class_id``, ``class_name``, ``count`` (pixels for masks and
    boundaries, images for labels), ``frequency`` (share of the space's total),
    ``images`` (how many images contain the class), ``context`` (mask classes that
    only the scene type decides).
    """
    import pandas as pd

    if isinstance(data, SyntheticDataset):
        config = config or data.config
        data = data.tensors()
    config = config or SyntheticConfig()
    mask, label, boundary = data["mask"].long(), data["label"].long(), data["boundary"].long()
    n = len(label)
    rows = []
    context = set(config.context_classes())
    pixels = torch.bincount(mask.flatten(), minlength=config.num_mask_classes)
    present = torch.zeros(config.num_mask_classes, dtype=torch.long)
    for c in range(config.num_mask_classes):
        present[c] = (mask == c).flatten(1).any(1).sum()
    for c, name in enumerate(config.mask_names):
        rows.append(("mask", c, name, int(pixels[c]), float(pixels[c]) / max(mask.numel(), 1),
                     int(present[c]), c in context))
    counts = torch.bincount(label, minlength=config.num_labels)
    for c, name in enumerate(config.label_names):
        rows.append(("label", c, name, int(counts[c]), float(counts[c]) / max(n, 1), int(counts[c]), False))
    edge = int(boundary.sum())
    for c, name in enumerate(["non-boundary", "boundary"]):
        count = edge if c else boundary.numel() - edge
        images = int((boundary.flatten(1) == c).any(1).sum()) if n else 0
        rows.append(("boundary", c, name, count, count / max(boundary.numel(), 1), images, False))
    return pd.DataFrame(rows, columns=["space", "class_id", "class_name", "count", "frequency", "images", "context"])

