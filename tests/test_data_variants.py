"""DynOPool's toy dataset variants (original, stretch_v, tile, large) over any classification dataset."""

from __future__ import annotations

import pickle

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

from dla_repro.data.readers import CIFAR100, build_classification_dataset
from dla_repro.data.synthetic import SyntheticConfig, SyntheticDataset, make_splits
from dla_repro.data.variants import (
    VARIANT_NAMES,
    VARIANTS,
    make_variant,
    make_variant_splits,
    output_sizes,
    variant_transform,
)
from dla_repro.engine.loaders import as_bundle, dataset_identity
from fixtures_formats import write_cifar100

matplotlib.use("Agg")

H = W = 32


def smooth_image(h=H, w=W, seed=0) -> torch.Tensor:
    """A 3×h×w image of low-frequency colour (a few random cosines)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.linspace(0, 1, h)[:, None]
    x = torch.linspace(0, 1, w)[None, :]
    chans = []
    for _ in range(3):
        a, b, p, q = torch.rand(4, generator=g).tolist()
        chans.append(torch.cos(2 * torch.pi * (a * 1.5 * y + b * 1.5 * x + p)) * 0.5 + q)
    return torch.stack(chans)


def rows_ramp(h=H, w=W) -> torch.Tensor:
    """Each pixel holds its row number, so a vertical crop's offset can be read from pixel (0, 0)."""
    return torch.arange(h, dtype=torch.float32)[None, :, None].expand(3, h, w).clone()


# ----------------------------------------------------------------------------- shapes, registry
@pytest.mark.parametrize("size", [(32, 32), (16, 24)])
def test_shapes_and_dtypes_per_variant(size):
    h, w = size
    image = torch.rand(3, h, w)
    expected = {"original": (3, h, w), "stretch_v": (3, h, w), "tile": (3, h, w), "large": (3, 2 * h, 2 * w)}
    assert set(expected) == set(VARIANT_NAMES)
    for name in VARIANT_NAMES:
        out = variant_transform(name)(image, torch.Generator().manual_seed(0))
        assert out.shape == expected[name], name
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert variant_transform("large", factor=1.5)(image).shape == (3, round(1.5 * h), round(1.5 * w))
    assert output_sizes(32) == {"original": (32, 32), "stretch_v": (32, 32), "tile": (32, 32), "large": (64, 64)}
    assert output_sizes(32, ["large"], large={"factor": 3.0}) == {"large": (96, 96)}
    assert torch.equal(variant_transform("original")(image), image)


def test_unknown_variant_and_bad_factors_are_clear_errors():
    with pytest.raises(ValueError, match="unknown dataset variant 'stretch_h'") as err:
        make_variant([], "stretch_h")
    for name in VARIANT_NAMES:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="no factor 'scale'.*its factors: grid, mode"):
        variant_transform("tile", scale=2)
    with pytest.raises(ValueError, match="no factor 'factor'.*none"):
        variant_transform("original", factor=2)
    with pytest.raises(ValueError, match="factor must be a number ≥ 1"):
        variant_transform("stretch_v", factor=0.5)
    with pytest.raises(ValueError, match="grid must be an integer"):
        variant_transform("tile", grid=2.5)
    with pytest.raises(ValueError, match="mode must be"):
        variant_transform("tile", mode="nearest")
    with pytest.raises(ValueError, match="grid=3 must divide the image size 32×32"):
        variant_transform("tile", grid=3)(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match="float C×H×W image tensor"):
        variant_transform("large")(torch.rand(32, 32))


# ----------------------------------------------------------------------------- stretch_v
def test_stretch_v_stretches_rows_and_keeps_columns():
    # Horizontal lines one pixel high, every 8 rows: after a 2× vertical stretch each is 2 rows thick.
    image = torch.zeros(3, H, W)
    image[:, 4::8, :] = 1.0
    transform = variant_transform("stretch_v")
    for seed in range(4):
        out = transform(image, torch.Generator().manual_seed(seed))
        profile = out[0, :, 0]
        assert torch.equal(out, profile[None, :, None].expand_as(out)), "rows stay constant across the width"
        thick = (profile > 0.5).int().tolist()
        runs, r = [], 0
        for i, v in enumerate(thick + [0]):
            if v:
                r += 1
            elif r:
                runs.append((i - r, r))
                r = 0
        inner = [length for start, length in runs if start > 0 and start + length < H]
        assert inner and all(length == 2 for length in inner), runs
        assert len(runs) in (2, 3), "a 32-row window of the 64 stretched rows holds 2 (or a cut 3rd) lines"
    # A structure that varies only across columns is unchanged: its horizontal profile survives exactly.
    columns = torch.rand(3, 1, W).expand(3, H, W).contiguous()
    assert torch.allclose(transform(columns, torch.Generator().manual_seed(1)), columns, atol=1e-6)
    # factor 1: no stretch, no crop
    image = torch.rand(3, H, W)
    assert torch.equal(variant_transform("stretch_v", factor=1.0)(image, torch.Generator()), image)


def test_stretch_v_crop_matches_a_window_of_the_stretched_image():
    image = smooth_image()
    tall = F.interpolate(image[None], size=(2 * H, W), mode="bilinear", align_corners=False)[0]
    out = variant_transform("stretch_v")(image, torch.Generator().manual_seed(5))
    windows = [t for t in range(H + 1) if torch.allclose(tall[:, t : t + H], out, atol=1e-6)]
    assert len(windows) == 1


def test_stretch_v_crop_is_reproducible_per_index_and_epoch():
    base = [(rows_ramp(), k % 3) for k in range(24)]  # the same image at every index

    def offsets(ds):
        # the stretched ramp's row t is (t + 0.5) / 2 - 0.5 (clamped at 0): recover t from pixel (0, 0)
        return [round(2 * (float(ds[i][0][0, 0, 0]) + 0.5) - 0.5) if float(ds[i][0][0, 0, 0]) > 0 else 0
                for i in range(len(ds))]

    train = make_variant(base, "stretch_v", seed=7)
    first = offsets(train)
    assert first == offsets(make_variant(base, "stretch_v", seed=7)), "same seed, index, epoch: same crop"
    assert all(torch.equal(train[i][0], train[i][0]) for i in range(3))
    assert len(set(first)) >= 8, "different indices get different crops"
    assert all(0 <= t <= H for t in first)
    assert first != offsets(make_variant(base, "stretch_v", seed=8)), "the seed matters"
    train.set_epoch(1, 0)
    second = offsets(train)
    assert second != first, "a new epoch draws new crops"
    train.set_epoch(0, 0)
    assert offsets(train) == first, "epoch 0 again: the same crops"
    train.set_epoch(0, 3)
    assert offsets(train) != first, "another run seed: other crops"

    val = make_variant(base, "stretch_v", seed=7, per_epoch=False)
    fixed = offsets(val)
    val.set_epoch(5, 2)
    assert offsets(val) == fixed and len(set(fixed)) >= 8, "evaluation: one fixed random crop per item"
    assert [lab for _, lab in (train[i] for i in range(len(base)))] == [lab for _, lab in base]


# ----------------------------------------------------------------------------- tile, large
def test_tile_holds_sixteen_downscaled_copies():
    image = torch.rand(3, H, W)
    out = variant_transform("tile")(image)
    small = F.avg_pool2d(image[None], 4)[0]  # area downscale by 4 = the mean of each 4×4 block
    tiles = out.unfold(1, 8, 8).unfold(2, 8, 8)  # 3 × 4 × 4 × 8 × 8
    assert tiles.shape[1:3] == (4, 4)
    for i in range(4):
        for j in range(4):
            assert torch.allclose(tiles[:, i, j], small, atol=1e-6), (i, j)
    assert not torch.allclose(out, image, atol=0.1)
    # antialiased bilinear resampling: PIL's bilinear downscale (a triangle filter), still 16 equal copies
    bil = variant_transform("tile", mode="bilinear")(image)
    bil_tiles = bil.unfold(1, 8, 8).unfold(2, 8, 8)
    assert torch.equal(bil_tiles, bil_tiles[:, :1, :1].expand_as(bil_tiles))
    for c in range(3):
        pil = Image.fromarray(image[c].numpy(), mode="F").resize((8, 8), Image.BILINEAR)
        assert np.allclose(bil_tiles[c, 0, 0].numpy(), np.asarray(pil), atol=1e-4)
    assert not torch.allclose(bil_tiles[:, 0, 0], small, atol=1e-3), "not the block mean"
    two = variant_transform("tile", grid=2)(image)
    assert torch.allclose(two[:, :16, 16:], F.avg_pool2d(image[None], 2)[0], atol=1e-6)


def test_large_doubles_the_size_and_downscales_back_to_the_original():
    image = smooth_image()
    out = variant_transform("large")(image)
    assert out.shape == (3, 2 * H, 2 * W)
    back = F.avg_pool2d(out[None], 2)[0]
    err = (back - image).abs()
    assert err.max() < 0.02, float(err.max())
    # the enlargement is an interpolation: a 1-px horizontal line becomes 2 px thick, a constant stays constant
    line = torch.zeros(1, 8, 8)
    line[:, 4] = 1
    big = variant_transform("large")(line)
    assert (big[0, :, 5] > 0.5).nonzero().flatten().tolist() == [8, 9]
    assert torch.allclose(variant_transform("large")(torch.full((3, 5, 7), 0.3)), torch.full((3, 10, 14), 0.3))
    # noise is not recovered exactly (so the tolerance above is a real test)
    noise = torch.rand(3, H, W)
    assert (F.avg_pool2d(variant_transform("large")(noise)[None], 2)[0] - noise).abs().max() > 0.05


# ----------------------------------------------------------------------------- real project datasets
def test_variants_of_the_synthetic_classification_splits():
    splits = make_splits(SyntheticConfig(image_size=32), n_train=6, n_val=4, seed=1)
    digests = set()
    for name in VARIANT_NAMES:
        v = make_variant_splits(splits, name, seed=2)
        assert v.name == f"synthetic+{name}" and v.val is not None
        assert v.train.num_classes == splits.train.num_classes
        assert v.train.class_names == splits.train.class_names
        for base, var in ((splits.train, v.train), (splits.val, v.val)):
            assert len(var) == len(base)
            for i in range(len(base)):
                x, y = var[i]
                assert torch.equal(y, base[i][1]) and y.dtype == torch.long
                assert x.shape == ((3, 64, 64) if name == "large" else (3, 32, 32))
        if name == "original":
            assert torch.equal(v.train[0][0], splits.train[0][0])
        x, y = next(iter(DataLoader(v.train, batch_size=3)))
        assert x.shape[0] == 3 and torch.equal(y, splits.train.labels[:3])
        name_, digest, source = dataset_identity(as_bundle(v))  # what fit records in MLflow
        assert name_ == v.name and name in source and digest == make_variant_splits(splits, name, seed=2).digest
        digests.add(digest)
    assert len(digests) == len(VARIANT_NAMES)


def test_set_epoch_reaches_a_fresh_synthetic_stream():
    splits = make_splits(SyntheticConfig(image_size=32), n_train=3, n_val=2, seed=0, fresh=True)
    v = make_variant_splits(splits, "tile")
    before = v.train[0][0].clone()
    v.train.set_epoch(1, 0)
    assert splits.train.epoch == 1, "the base stream moved to epoch 1"
    assert not torch.equal(v.train[0][0], before)
    assert torch.allclose(v.train[0][0][:, :8, :8], F.avg_pool2d(splits.train[0][0][None], 4)[0], atol=1e-6)


def test_masks_are_refused():
    seg = SyntheticDataset(SyntheticConfig(image_size=32), n=2, task="segmentation")
    with pytest.raises(ValueError, match="for classification"):
        make_variant(seg, "stretch_v")[0]


def test_variants_of_cifar100_in_its_real_format(tmp_path):
    written = write_cifar100(tmp_path, n_train=4, n_test=3)
    ds, num_classes = build_classification_dataset("cifar100", tmp_path, "val", 32, train=False)
    assert num_classes == 100
    tiled, big = make_variant(ds, "tile"), make_variant(ds, "large")
    assert tiled.class_names == ds.classes and tiled.num_classes == 100
    for i in range(len(ds)):
        x, y = ds[i]
        assert y == written["test"][b"fine_labels"][i] == tiled[i][1] == big[i][1]
        assert torch.allclose(tiled[i][0][:, 8:16, 24:32], F.avg_pool2d(x[None], 4)[0], atol=1e-5)
        assert big[i][0].shape == (3, 64, 64)
    # the reader without a transform gives PIL images: converted to [0, 1] tensors first
    raw = make_variant(CIFAR100(tmp_path, "train"), "original")
    x, y = raw[2]
    rgb = written["train"][b"data"][2].reshape(3, 32, 32).astype(np.float32) / 255
    assert torch.allclose(x, torch.from_numpy(rgb)) and y == written["train"][b"fine_labels"][2]
    stretched = make_variant(CIFAR100(tmp_path, "train"), "stretch_v", seed=0)
    clone = pickle.loads(pickle.dumps(stretched))  # spawn-started DataLoader workers pickle the dataset
    assert all(torch.equal(clone[i][0], stretched[i][0]) for i in range(4))


# ----------------------------------------------------------------------------- plot
def test_plot_variants_has_one_row_per_variant():
    from dla_repro.data.variant_plots import plot_variants

    splits = make_splits(SyntheticConfig(image_size=32), n_train=3, n_val=1)
    cfg = splits.train.config
    names = list(VARIANT_NAMES)
    fig = plot_variants(splits.train, n=3, mean=cfg.mean, std=cfg.std, class_names=cfg.label_names)
    try:
        axes = np.array(fig.axes).reshape(len(names), 3)
        for r, name in enumerate(names):
            assert axes[r, 0].get_ylabel().startswith(name)
            size = (64, 64) if name == "large" else (32, 32)
            assert axes[r, 0].images[0].get_array().shape[:2] == size
            assert axes[r, 0].get_xlim() == (0, 64), "one pixel scale for every panel"
        assert axes[0, 1].get_title() == cfg.label_names[int(splits.train[1][1])]
    finally:
        matplotlib.pyplot.close(fig)
    fig = plot_variants(splits.train, ["tile", "stretch_v"], indices=[2], factors={"tile": {"grid": 2}})
    try:
        assert len(fig.axes) == 2 and "grid=2" in fig.axes[0].get_ylabel()
    finally:
        matplotlib.pyplot.close(fig)
    with pytest.raises(ValueError, match="unknown dataset variant"):
        plot_variants(splits.train, ["nope"])
    assert set(VARIANTS) == set(names)
