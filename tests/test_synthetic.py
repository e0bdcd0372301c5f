"""The synthetic generator: determinism, streams, label semantics, masks and boundaries."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dla_repro.data.synthetic import (
    STUFF_CLASSES,
    SYNTHETIC_VERSION,
    SyntheticConfig,
    SyntheticDataset,
    SyntheticStream,
    boundary_map,
    class_statistics,
    denormalize,
    generate,
    generate_indices,
    make_splits,
)

CFG = SyntheticConfig(image_size=32)
LINE, DOT = STUFF_CLASSES.index("line"), STUFF_CLASSES.index("dot")


@pytest.fixture(scope="module")
def batch():
    return generate(CFG, 48, seed=3)


def test_shapes_dtypes_and_ranges(batch):
    n, h = 48, CFG.image_size
    assert batch["image"].shape == (n, 3, h, h) and batch["image"].dtype == torch.float32
    assert batch["label"].shape == (n,) and batch["label"].dtype == torch.long
    assert batch["mask"].shape == (n, h, h) and batch["mask"].dtype == torch.long
    assert batch["boundary"].shape == (n, h, h) and batch["boundary"].dtype == torch.uint8
    assert batch["scene"].shape == (n,) and batch["scene"].dtype == torch.long
    assert 0 <= batch["label"].min() and batch["label"].max() < CFG.num_labels
    assert 0 <= batch["mask"].min() and batch["mask"].max() < CFG.num_mask_classes
    assert set(batch["boundary"].unique().tolist()) <= {0, 1}
    assert set(batch["scene"].unique().tolist()) <= set(range(CFG.num_scene_types))
    rgb = denormalize(batch["image"], CFG)
    assert rgb.min() >= 0 and rgb.max() <= 1 and torch.isfinite(batch["image"]).all()
    assert len(CFG.label_names) == CFG.num_labels and len(set(CFG.label_names)) == CFG.num_labels
    assert len(CFG.mask_names) == CFG.num_mask_classes
    assert generate(CFG, 0)["image"].shape == (0, 3, 32, 32)


def test_same_seed_and_index_give_the_same_sample_whatever_the_batch(batch):
    again = generate(CFG, 48, seed=3, chunk_size=7)
    picked = generate_indices(CFG, [40, 5, 17], seed=3)
    window = generate(CFG, 4, seed=3, start=20)
    for key, value in batch.items():
        assert torch.equal(value, again[key]), key
        assert torch.equal(value[[40, 5, 17]], picked[key]), key
        assert torch.equal(value[20:24], window[key]), key
    other_seed = generate(CFG, 8, seed=4)
    assert not torch.equal(other_seed["image"], batch["image"][:8])


def test_split_names_give_unrelated_streams(batch):
    val = generate(CFG, 48, seed=3, split="val")
    test = generate(CFG, 48, seed=3, split="test")
    flat = batch["image"].flatten(1)
    for other in (val, test):
        o = other["image"].flatten(1)
        # no image of one split equals any image of the other
        assert torch.cdist(flat, o).min() > 1.0
    assert not torch.equal(batch["label"], val["label"])
    splits = make_splits(CFG, 8, 8, seed=3)
    assert torch.equal(splits.train.images, batch["image"][:8])
    assert torch.equal(splits.val.images, val["image"][:8])
    assert splits.train.digest != splits.val.digest


def _label_changes(mask: torch.Tensor) -> torch.Tensor:
    """Reference: marks (i, j) when mask(i, j) ≠ mask(i, j+1) or mask(i, j) ≠ mask(i+1, j)."""
    n, h, w = mask.shape
    out = torch.zeros(n, h, w, dtype=torch.uint8)
    for i in range(h):
        for j in range(w):
            right = j + 1 < w and (mask[:, i, j] != mask[:, i, j + 1])
            down = i + 1 < h and (mask[:, i, j] != mask[:, i + 1, j])
            out[:, i, j] = (torch.as_tensor(right) | torch.as_tensor(down)).to(torch.uint8)
    return out


def test_boundary_is_exactly_the_one_sided_label_change_map(batch):
    assert torch.equal(batch["boundary"][:6], _label_changes(batch["mask"][:6]))
    # one pixel thick: a filled square's boundary is its right column and bottom row
    # plus the pixels just outside its top row and left column, nothing thicker
    mask = torch.zeros(1, 10, 10, dtype=torch.long)
    mask[0, 3:7, 3:7] = 5
    b = boundary_map(mask)[0].bool()
    expected = torch.zeros(10, 10, dtype=torch.bool)
    expected[2, 3:7] = True  # above the top edge (differs from the pixel below)
    expected[3:7, 2] = True  # left of the left edge
    expected[3:7, 6] = True  # the square's right column
    expected[6, 3:7] = True  # the square's bottom row
    assert torch.equal(b, expected)


def test_context_shapes_change_class_with_the_scene_only():
    cfg = CFG
    a = generate(cfg, 24, seed=1, scene=0)
    b = generate(cfg, 24, seed=1, scene=1)
    table = cfg.shape_class_table()
    shapes = a["mask"] >= len(STUFF_CLASSES)
    assert torch.equal(shapes, b["mask"] >= len(STUFF_CLASSES))
    # the objects look exactly the same in both scenes ...
    assert torch.equal(a["image"].permute(1, 0, 2, 3)[:, shapes], b["image"].permute(1, 0, 2, 3)[:, shapes])
    assert torch.equal(a["label"], b["label"])
    # ... but the context shapes get another class, the other shapes the same one
    saw_context = False
    for k, name in enumerate(cfg.shapes):
        where = a["mask"] == table[k, 0]
        if name in cfg.context_shapes:
            assert table[k, 0] != table[k, 1]
            assert (b["mask"][where] == table[k, 1]).all()
            saw_context |= bool(where.any())
        else:
            assert (b["mask"][where] == table[k, 0]).all()
    assert saw_context
    # the background is what differs
    assert not torch.equal(a["image"], b["image"])
    # in natural samples a context class only occurs in its own scene
    natural = generate(cfg, 64, seed=2)
    for k, name in enumerate(cfg.shapes):
        if name not in cfg.context_shapes:
            continue
        for t in range(cfg.num_scene_types):
            present = (natural["mask"] == table[k, t]).flatten(1).any(1)
            assert present.any()
            assert (natural["scene"][present] == t).all()


def test_scene_is_readable_from_the_whole_background():
    from dla_repro.experiments.calibration import scene_evidence

    data = generate(CFG, 64, seed=5)
    evidence = scene_evidence(data["image"], data["scene"], CFG, data["mask"], windows=(4, 32))
    assert evidence[32] > 0.85
    assert evidence[4] < evidence[32]


def test_thin_structures_are_present_and_at_most_two_pixels_thick():
    cfg = CFG.replace(n_thin=1, n_distractors=0, n_small=0)
    data = generate(cfg, 48, seed=0)
    line = (data["mask"] == LINE).float().unsqueeze(1)
    assert (line.flatten(1).sum(1) > 0).float().mean() > 0.9
    # no 3x3 block of line pixels anywhere: thickness ≤ 2 along every direction
    assert F.avg_pool2d(line, 3, stride=1).max() < 1.0
    # both widths occur: 1-px lines have no 2x2 block, 2-px lines do
    blocks = F.avg_pool2d(line, 2, stride=1).flatten(1).max(1).values == 1.0
    assert blocks.any() and not blocks.all()
    # the default config has thin lines too
    assert ((generate(CFG, 16, seed=0)["mask"] == LINE).flatten(1).any(1)).float().mean() > 0.9


def test_small_objects_are_present_and_small():
    cfg = CFG.replace(n_small=1, n_thin=0, n_distractors=0, region_prob=0.0)
    data = generate(cfg, 48, seed=0)
    pixels = (data["mask"] == DOT).flatten(1).sum(1)
    assert (pixels > 0).float().mean() > 0.8
    assert pixels.max() <= cfg.small_size[1] ** 2
    assert set(pixels[pixels > 0].tolist()) & {4, 9}
    shapes = generate(CFG, 16, seed=0)["mask"]
    assert (shapes == DOT).flatten(1).any(1).all()


def test_large_region_next_to_small_patterns(batch):
    region = (batch["mask"] == STUFF_CLASSES.index("region")).float().flatten(1).mean(1)
    assert region.mean() > 0.15 and region.max() > 0.3


def test_label_is_shape_times_position_times_scale(batch):
    cfg, b = CFG, batch
    expected = torch.tensor([cfg.label_of(int(s), int(p), int(z)) for s, p, z in
                             zip(b["target_shape"], b["target_position"], b["target_scale"])])
    assert torch.equal(b["label"], expected)
    # the position bin is where the target's centre is
    x0, y0, x1, y1 = b["target_box"].unbind(1)
    p = cfg.position_bins
    col = ((x0 + x1) / 2 / cfg.image_size * p).long()
    row = ((y0 + y1) / 2 / cfg.image_size * p).long()
    assert torch.equal(b["target_position"], row * p + col)
    # the same shape in different positions has different labels
    labels = {cfg.label_of(0, pos, 0) for pos in range(cfg.num_positions)}
    assert len(labels) == cfg.num_positions
    for shape in range(len(cfg.shapes)):
        sel = b["target_shape"] == shape
        by_pos = {}
        for pos, lab in zip(b["target_position"][sel].tolist(), b["label"][sel].tolist()):
            by_pos.setdefault(pos, set()).add(lab)
        for pa in by_pos:
            for pb in by_pos:
                if pa != pb:
                    assert not (by_pos[pa] & by_pos[pb])
    # the target is visible (painted last) with its shape's class inside its box
    table = cfg.shape_class_table()
    for i in range(8):
        box = b["target_box"][i].round().long().tolist()
        patch = b["mask"][i, box[1]:box[3], box[0]:box[2]]
        assert (patch == table[b["target_shape"][i], b["scene"][i]]).any()


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"image_size": 8}, "image_size"),
        ({"shapes": ("square", "hexagon")}, "shapes"),
        ({"context_shapes": ("ring",)}, "context_shapes"),
        ({"thin_width": (1, 3)}, "thin_width"),
        ({"object_size": (0.3, 0.2)}, "object_size"),
        ({"image_size": 16, "object_size": (0.1, 0.3)}, "object_size"),
        ({"noise": -0.1}, "noise"),
        ({"region_prob": 1.5}, "region_prob"),
        ({"target_contrast": (0.0, 0.5)}, "target_contrast"),
        ({"num_scene_types": 0}, "num_scene_types"),
    ],
)
def test_config_errors_name_the_field(changes, field):
    with pytest.raises(ValueError, match=rf"SyntheticConfig\.{field}="):
        SyntheticConfig(**changes)


def test_digest_is_stable_and_sensitive():
    a, b = SyntheticConfig(), SyntheticConfig(shapes=["square", "disk", "triangle", "cross"])
    assert a == b and a.digest() == b.digest() and len(a.digest()) == 16
    assert a.digest() != a.replace(noise=0.2).digest()
    assert SYNTHETIC_VERSION.startswith("synthetic-v")
    with pytest.raises(ValueError, match="seed"):
        generate(CFG, 1, seed=-1)
    with pytest.raises(ValueError, match="scene"):
        generate(CFG, 1, scene=5)


def test_dataset_tasks_and_statistics():
    data = generate(CFG, 16, seed=0)
    ds = SyntheticDataset(CFG, split="train", task="classification", data=data)
    x, y = ds[3]
    assert x.shape == (3, 32, 32) and y.dtype == torch.long and y.ndim == 0
    assert ds.num_classes == CFG.num_labels and ds.class_names == CFG.label_names
    seg = ds.with_task("segmentation")
    x, y = seg[3]
    assert y.shape == (32, 32) and y.dtype == torch.long and torch.equal(y, data["mask"][3])
    assert seg.num_classes == CFG.num_mask_classes
    edge = ds.with_task("boundary")
    assert edge.num_classes == 2 and set(edge[3][1].unique().tolist()) <= {0, 1}
    with pytest.raises(ValueError, match="task"):
        SyntheticDataset(CFG, task="detection", data=data)
    assert ds.name == "synthetic" and ds.digest and CFG.digest() in ds.source
    stats = class_statistics(ds)
    assert set(stats["space"]) == {"mask", "label", "boundary"}
    for _, group in stats.groupby("space"):
        assert abs(group["frequency"].sum() - 1.0) < 1e-9
    assert stats.loc[stats["space"] == "mask", "context"].sum() == len(CFG.context_classes())


# ------------------------------------------------------------------------- versions and streams
def test_v1_is_reproducible_by_name_with_its_digest_unchanged():
    v1 = SyntheticConfig.preset("synthetic-v1")
    assert v1 == SyntheticConfig() and v1.version == SYNTHETIC_VERSION == "synthetic-v1"
    assert v1.digest() == "2d498c36035e0413"  # the digest every v1 run logged, before versions existed
    a, b = generate(v1, 6, seed=3), generate(SyntheticConfig(), 6, seed=3)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_v2_labels_keep_their_margin_from_every_bin_edge_and_targets_are_visible():
    cfg = SyntheticConfig.preset("synthetic-v2", image_size=32)
    assert cfg.version == "synthetic-v2" and cfg.num_labels == len(cfg.shapes) * 4 and cfg.digest() != \
        SyntheticConfig(image_size=32).digest()
    d = generate(cfg, 2000, seed=1)
    box = d["target_box"]
    cx, cy = (box[:, 0] + box[:, 2]) / 2, (box[:, 1] + box[:, 3]) / 2
    half_image = cfg.image_size / 2
    assert (cx - half_image).abs().min() >= cfg.label_margin - 1e-4
    assert (cy - half_image).abs().min() >= cfg.label_margin - 1e-4
    assert box.min() >= 0 and box.max() <= cfg.image_size  # still inside the image
    quadrant = (cy >= half_image).long() * 2 + (cx >= half_image).long()
    assert torch.equal(d["target_position"], quadrant)
    assert torch.bincount(d["label"], minlength=cfg.num_labels).min() > 2000 / cfg.num_labels / 2  # all used
    # v1 put targets on the edge: the label there is a coin flip
    v1 = generate(SyntheticConfig(image_size=32), 2000, seed=1)["target_box"]
    assert (((v1[:, 0] + v1[:, 2]) / 2 - half_image).abs() < 0.5).float().mean() > 0.02


def test_margin_on_scale_bins_and_the_configs_it_refuses():
    cfg = SyntheticConfig(image_size=64, scale_bins=2, label_margin=1.0)
    size = generate(cfg, 1000, seed=2)["target_box"]
    side = size[:, 2] - size[:, 0]
    middle = (cfg.object_size[0] + cfg.object_size[1]) / 2 * cfg.image_size
    assert (side - middle).abs().min() >= 1.0 - 1e-4
    with pytest.raises(ValueError, match="label_margin"):
        SyntheticConfig(image_size=32, label_margin=6.0)
    with pytest.raises(ValueError, match="version"):
        SyntheticConfig(version="synthetic-v9")
    with pytest.raises(ValueError, match="unknown synthetic version"):
        SyntheticConfig.preset("v2")


def test_a_stream_gives_fresh_samples_each_epoch_per_run_seed_and_the_same_again():
    from dla_repro.engine import TrainConfig
    from dla_repro.engine.distributed import DistInfo
    from dla_repro.engine.loaders import make_loader, set_epoch

    cfg = SyntheticConfig.preset("synthetic-v2", image_size=32)
    splits = make_splits(cfg, n_train=16, n_val=8, fresh=True)
    stream = splits.train
    assert isinstance(stream, SyntheticStream) and not isinstance(splits.val, SyntheticStream)
    loader = make_loader(stream, TrainConfig(batch_size=16, seed=5), DistInfo(), torch.device("cpu"), train=True)

    def epoch_images(seed, epoch):
        set_epoch(loader, seed, epoch)
        return torch.cat([x for x, _ in loader])

    e0, e1 = epoch_images(5, 0), epoch_images(5, 1)
    assert not torch.equal(e0.sort(0).values, e1.sort(0).values)  # new samples, not a new order
    assert torch.equal(epoch_images(5, 0), e0)  # the same epoch again: the same batches
    assert not torch.equal(epoch_images(6, 0).sort(0).values, e0.sort(0).values)  # another run seed: other data
    # epoch 1 of run seed 5 is samples 16..31 of that seed's stream, whoever renders it (a resumed run)
    set_epoch(loader, 5, 1)
    assert torch.equal(stream.images, generate(cfg, 16, 0, "train/run5", start=16)["image"])
    again = SyntheticStream(cfg, 16, split="train")
    again.set_epoch(1, 5)
    assert torch.equal(again.images, stream.images)
    seg = stream.with_task("segmentation")
    assert seg[0][1].shape == (32, 32) and stream.task == "classification" and stream.digest != splits.val.digest
