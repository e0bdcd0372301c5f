"""Joint image / label-map transforms for dense prediction.

Every transform takes and returns ``(image, mask)`` -- ``image`` a float tensor
``C×H×W``, ``mask`` a long tensor ``H×W`` -- and an optional ``torch.Generator``
from which it draws all its randomness, so a pipeline is deterministic given the
generator. Without one they draw from torch's global generator, which the engine
reseeds every epoch and a DataLoader seeds per worker.

Geometry is applied to both with the interpolation each needs: bilinear for the
image, nearest for the mask (a label is never blended). Pixels that a transform
invents (rotated-in corners, crop padding) are ``fill`` (0) in the image and
``ignore_index`` (255) in the mask, so the loss and the metrics skip them.

The training pipeline of the DLA segmentation recipe (ucbdrive/dla ``segment.py``;
Cityscapes: random scale 2, rotate 10, crop 832) is
``segmentation_train_transform(crop_size=832, scale=2, rotate=10)``:
random scale in [1/2, 2] → random rotation in [-10°, 10°] → random crop (padded
if smaller) → horizontal flip → normalise.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from ...labels import IGNORE_INDEX

__all__ = [
    "JointCompose",
    "ToTensor",
    "RandomScale",
    "RandomRotate",
    "RandomCrop",
    "RandomHorizontalFlip",
    "Normalize",
    "segmentation_train_transform",
    "segmentation_eval_transform",
    "image_to_tensor",
    "mask_to_tensor",
]

Pair = tuple[torch.Tensor, torch.Tensor]


def _uniform(lo: float, hi: float, generator: torch.Generator | None) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=generator))


def image_to_tensor(image) -> torch.Tensor:
    """PIL image, ``H×W×C`` uint8 array or tensor → float ``C×H×W`` in [0, 1]."""
    if isinstance(image, torch.Tensor):
        return image.float() / 255 if image.dtype == torch.uint8 else image.float()
    if isinstance(image, Image.Image):
        image = np.array(image.convert("RGB"))  # a writable copy
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if not arr.flags.writeable:
        arr = arr.copy()
    t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)
    return t.float() / 255 if arr.dtype == np.uint8 else t.float()


def mask_to_tensor(mask) -> torch.Tensor:
    """PIL image, array or tensor of labels → long ``H×W``."""
    if isinstance(mask, torch.Tensor):
        return mask.long()
    return torch.from_numpy(np.array(mask, dtype=np.int64))


class JointCompose:
    """Apply transforms in order, all drawing from the same generator."""

    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, image, mask, generator: torch.Generator | None = None) -> Pair:
        for t in self.transforms:
            image, mask = t(image, mask, generator)
        return image, mask

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(t) for t in self.transforms)
        return f"{type(self).__name__}([\n  {inner}\n])"


class ToTensor:
    """PIL/array image and mask → float ``C×H×W`` in [0, 1] and long ``H×W``."""

    def __call__(self, image, mask, generator: torch.Generator | None = None) -> Pair:
        image, mask = image_to_tensor(image), mask_to_tensor(mask)
        if image.shape[-2:] != mask.shape[-2:]:
            raise ValueError(f"image {tuple(image.shape[-2:])} and mask {tuple(mask.shape[-2:])} differ in size")
        return image, mask

    def __repr__(self) -> str:
        return "ToTensor()"


class RandomScale:
    """Resize by a factor drawn uniformly from ``scale`` (a number s means [1/s, s])."""

    def __init__(self, scale: float | Sequence[float]):
        if isinstance(scale, (int, float)):
            if scale <= 0:
                raise ValueError(f"scale must be positive, got {scale}")
            scale = (min(scale, 1 / scale), max(scale, 1 / scale))
        self.scale = (float(scale[0]), float(scale[1]))

    def __call__(self, image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None) -> Pair:
        s = _uniform(*self.scale, generator)
        h, w = mask.shape[-2:]
        size = (max(1, round(h * s)), max(1, round(w * s)))
        if size == (h, w):
            return image, mask
        image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=s < 1)[0]
        mask = F.interpolate(mask[None, None].float(), size=size, mode="nearest-exact")[0, 0].long()
        return image, mask

    def __repr__(self) -> str:
        return f"RandomScale({self.scale})"


class RandomRotate:
    """Rotate about the centre by an angle drawn uniformly from [-degrees, degrees] (same size)."""

    def __init__(self, degrees: float, fill: float = 0.0, ignore_index: int = IGNORE_INDEX):
        self.degrees, self.fill, self.ignore_index = float(degrees), float(fill), int(ignore_index)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None) -> Pair:
        if self.degrees == 0:
            return image, mask
        angle = _uniform(-self.degrees, self.degrees, generator)
        image = TF.rotate(image, angle, interpolation=InterpolationMode.BILINEAR, fill=self.fill)
        mask = TF.rotate(mask[None], angle, interpolation=InterpolationMode.NEAREST, fill=self.ignore_index)[0]
        return image, mask

    def __repr__(self) -> str:
        return f"RandomRotate({self.degrees})"


class RandomCrop:
    """A random ``size`` crop; a smaller input is first padded at the bottom/right."""

    def __init__(self, size: int | Sequence[int], fill: float = 0.0, ignore_index: int = IGNORE_INDEX):
        self.size = (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[0]), int(size[1]))
        self.fill, self.ignore_index = float(fill), int(ignore_index)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None) -> Pair:
        th, tw = self.size
        h, w = mask.shape[-2:]
        ph, pw = max(th - h, 0), max(tw - w, 0)
        if ph or pw:
            image = F.pad(image, (0, pw, 0, ph), value=self.fill)
            mask = F.pad(mask, (0, pw, 0, ph), value=self.ignore_index)
            h, w = h + ph, w + pw
        top = int(torch.randint(h - th + 1, (), generator=generator))
        left = int(torch.randint(w - tw + 1, (), generator=generator))
        return image[..., top : top + th, left : left + tw], mask[top : top + th, left : left + tw]

    def __repr__(self) -> str:
        return f"RandomCrop({self.size})"


class RandomHorizontalFlip:
    """Mirror left-right with probability ``p``."""

    def __init__(self, p: float = 0.5):
        self.p = float(p)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None) -> Pair:
        if float(torch.rand((), generator=generator)) < self.p:
            return image.flip(-1), mask.flip(-1)
        return image, mask

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Normalize:
    """``(image - mean) / std`` per channel; the mask is untouched."""

    def __init__(self, mean: Sequence[float] = IMAGENET_DEFAULT_MEAN, std: Sequence[float] = IMAGENET_DEFAULT_STD):
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]

    def __call__(self, image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None) -> Pair:
        return (image - self.mean) / self.std, mask

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"


def segmentation_train_transform(
    crop_size: int | Sequence[int] | None,
    scale: float | Sequence[float] | None = 2.0,
    rotate: float = 0.0,
    flip: bool = True,
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
    ignore_index: int = IGNORE_INDEX,
) -> JointCompose:
    """Scale → rotate → crop → flip → normalise (any step off with ``None`` / 0 / False)."""
    steps: list[Callable] = [ToTensor()]
    if scale is not None and not (isinstance(scale, (int, float)) and math.isclose(scale, 1.0)):
        steps.append(RandomScale(scale))
    if rotate:
        steps.append(RandomRotate(rotate, ignore_index=ignore_index))
    if crop_size is not None:
        steps.append(RandomCrop(crop_size, ignore_index=ignore_index))
    if flip:
        steps.append(RandomHorizontalFlip())
    steps.append(Normalize(mean, std))
    return JointCompose(steps)


def segmentation_eval_transform(
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN, std: Sequence[float] = IMAGENET_DEFAULT_STD
) -> JointCompose:
    """Full image, no randomness: to tensor and normalise."""
    return JointCompose([ToTensor(), Normalize(mean, std)])
