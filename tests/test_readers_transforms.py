"""Joint image/mask transforms: alignment, label handling, padding, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dla_repro.data.readers.transforms import (
    JointCompose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    RandomRotate,
    RandomScale,
    ToTensor,
    segmentation_train_transform,
)


def labelled_pair(h=24, w=32, seed=0):
    """A mask of blocks with labels 0..5 and an image whose channels all equal label/255."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 6, size=(h // 8, w // 8))
    mask = np.kron(blocks, np.ones((8, 8), dtype=np.int64)).astype(np.uint8)
    image = Image.fromarray(np.repeat(mask[:, :, None], 3, axis=2))
    return image, mask


def test_flip_and_crop_keep_image_and_mask_aligned():
    image, mask = labelled_pair()
    t = JointCompose([ToTensor(), RandomCrop((16, 20)), RandomHorizontalFlip(p=1.0)])
    x, y = t(image, mask, torch.Generator().manual_seed(3))
    assert x.shape == (3, 16, 20) and y.shape == (16, 20)
    assert torch.equal((x[0] * 255).round().long(), y)


def test_crop_pads_mask_with_ignore_and_image_with_zero():
    image, mask = labelled_pair(8, 8)
    x, y = JointCompose([ToTensor(), RandomCrop(12)])(image, mask, torch.Generator().manual_seed(0))
    assert x.shape == (3, 12, 12)
    assert (y[8:, :] == 255).all() and (y[:, 8:] == 255).all() and (x[:, 8:, :] == 0).all()
    assert torch.equal(y[:8, :8], torch.from_numpy(mask).long())


def test_scale_uses_nearest_for_labels_and_bilinear_for_images():
    image, mask = labelled_pair()
    x, y = JointCompose([ToTensor(), RandomScale((1.5, 1.5))])(image, mask)
    assert y.shape == (36, 48) and x.shape == (3, 36, 48)
    assert set(y.unique().tolist()) <= set(np.unique(mask).tolist()), "no blended labels"
    values = set((x[0] * 255).round().unique().tolist())
    assert len(values) > len(np.unique(mask)), "bilinear image has in-between values"
    assert RandomScale(2).scale == (0.5, 2.0)


def test_rotation_fills_ignore_and_zero_and_keeps_labels():
    image, mask = labelled_pair()
    x, y = JointCompose([ToTensor(), RandomRotate(30)])(image, mask, torch.Generator().manual_seed(1))
    assert y.shape == mask.shape
    assert (y == 255).any(), "rotated-in corners are ignore"
    assert set(y.unique().tolist()) <= set(np.unique(mask).tolist()) | {255}
    assert (x[:, y == 255] < 0.02).float().mean() > 0.9, "image corners are filled with 0"


def test_pipeline_is_deterministic_given_a_generator():
    image, mask = labelled_pair()
    t = segmentation_train_transform(crop_size=16, scale=2, rotate=10)
    a = t(image, mask, torch.Generator().manual_seed(7))
    b = t(image, mask, torch.Generator().manual_seed(7))
    c = t(image, mask, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not (torch.equal(a[0], c[0]) and torch.equal(a[1], c[1]))
    torch.manual_seed(5)
    d = t(image, mask)
    torch.manual_seed(5)
    e = t(image, mask)
    assert torch.equal(d[1], e[1]), "without a generator: torch's global RNG"
    assert a[0].shape == (3, 16, 16) and a[1].dtype == torch.long


def test_normalize_and_size_mismatch():
    image, mask = labelled_pair()
    x, _ = JointCompose([ToTensor(), Normalize((0.5,) * 3, (0.25,) * 3)])(image, mask)
    ref = (torch.from_numpy(mask).float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(x[1], ref)
    with pytest.raises(ValueError, match="differ in size"):
        ToTensor()(image, mask[:-1])
