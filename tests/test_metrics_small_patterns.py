"""Small-pattern scores on hand-built maps whose answers are known: local object IoU by size, boundary-band
accuracy; and the two figures of them."""

from __future__ import annotations

import functools
import math
import pickle

import pytest
import torch
import torch.nn.functional as F

from dla_repro.labels import IGNORE_INDEX
from dla_repro.metrics.segmentation import SegmentationMetrics
from dla_repro.metrics.small_patterns import (
    BoundaryBandMetrics,
    MetricGroup,
    ObjectSizeMetrics,
    boundary_band,
    object_scores,
    size_table,
)


def _scene() -> torch.Tensor:
    """1×24×24: background 0, an 8×8 square of class 1 (64 px), two 3×3 dots of class 2 (9 px each)."""
    gt = torch.zeros(1, 24, 24, dtype=torch.long)
    gt[0, 2:10, 2:10] = 1
    gt[0, 14:17, 14:17] = 2
    gt[0, 19:22, 3:6] = 2
    return gt


def _sizes(pred, gt, **kw) -> dict[str, float]:
    m = ObjectSizeMetrics(**kw)
    m.update(pred, gt)
    return m.compute()


def _bands(pred, gt, num_classes=3, **kw) -> dict[str, float]:
    m = BoundaryBandMetrics(num_classes, **kw)
    m.update(pred, gt)
    return m.compute()


def test_missing_one_of_two_dots_halves_the_small_bin_and_leaves_the_big_one():
    gt = _scene()
    pred = gt.clone()
    pred[0, 19:22, 3:6] = 0  # the second dot: predicted as background
    perfect = _sizes(gt, gt, classes=[1, 2])
    missed = _sizes(pred, gt, classes=[1, 2])
    assert perfect["size_count@0-16"] == missed["size_count@0-16"] == 2
    assert perfect["size_count@64-256"] == missed["size_count@64-256"] == 1
    for score in ("iou", "recall"):
        assert perfect[f"size_{score}@0-16"] == 1.0
        assert missed[f"size_{score}@0-16"] == 0.5  # one dot scores 1, the other 0
        assert missed[f"size_{score}@64-256"] == perfect[f"size_{score}@64-256"] == 1.0
    rows = object_scores(pred, gt, classes=[1, 2])
    assert rows[["class", "area", "tp", "fp"]].values.tolist() == [[1, 64, 64, 0], [2, 9, 9, 0], [2, 9, 0, 0]]


def test_below_an_edge_pools_the_bins_under_it_as_one_bin_would():
    gt = _scene()
    gt[0, 11:13, 14:20] = 1  # a 12-px bar beside the two 9-px dots and the 64-px square
    pred = gt.clone()
    pred[0, 19:22, 3:6] = 0  # one dot missed
    pred[0, 11, 14:20] = 0  # half the bar missed
    binned = ObjectSizeMetrics((0, 10, 20, 100), classes=[1, 2])
    pooled = ObjectSizeMetrics((0, 20, math.inf), classes=[1, 2])
    for m in (binned, pooled):
        m.update(pred, gt)
    pooled_scores = pooled.compute()
    below = binned.below(20)
    assert below["count"] == pooled_scores["size_count@0-20"] == 3
    assert below["iou"] == pytest.approx(pooled_scores["size_iou@0-20"]) and below["iou"] == pytest.approx(1.5 / 3)
    assert below["recall"] == pytest.approx(pooled_scores["size_recall@0-20"])
    assert binned.below(10)["count"] == 2 and binned.below(100)["count"] == 4
    with pytest.raises(ValueError, match="upper edge"):
        binned.below(15)
    assert math.isnan(ObjectSizeMetrics((0, 20, 100)).below(20)["iou"])  # nothing seen yet


def test_a_smeared_dot_keeps_its_recall_and_loses_iou_by_its_false_alarms_nearby():
    gt = _scene()
    pred = gt.clone()
    pred[0, 13:18, 13:18] = 2  # the first dot drawn 5×5: 16 false-alarm pixels at distance 1
    rows = object_scores(pred, gt, classes=[2], radius=2)
    assert rows["recall"].tolist() == [1.0, 1.0]
    assert rows["fp"].tolist() == [16, 0]
    assert rows["iou"].tolist() == [9 / 25, 1.0]
    # the background object loses those 16 pixels from its recall
    background = object_scores(pred, gt, classes=[0])
    assert background["area"].tolist() == [24 * 24 - 64 - 18] and background["tp"].tolist() == [24 * 24 - 64 - 34]
    # radius 0: no neighbourhood, the local IoU is the recall
    assert object_scores(pred, gt, classes=[2], radius=0)["iou"].tolist() == [1.0, 1.0]
    # false alarms beyond the radius are not the dot's: a pixel of class 2 at distance 3
    far = gt.clone()
    far[0, 15, 20] = 2
    assert object_scores(far, gt, classes=[2], radius=2)["fp"].tolist() == [0, 0]
    assert object_scores(far, gt, classes=[2], radius=4)["fp"].tolist() == [1, 0]


def test_ignore_pixels_are_in_no_object_and_scored_nowhere():
    gt = _scene()
    pred = gt.clone()
    gt_ignored = gt.clone()
    gt_ignored[0, 2:10, 5] = IGNORE_INDEX  # cuts the square into 8×3 and 8×4
    pred[0, 2:10, 5] = 0  # wrong there: must not count
    pred[0, 0, 0] = 1  # wrong on an ignore pixel below
    gt_ignored[0, 0, 0] = IGNORE_INDEX
    rows = object_scores(pred, gt_ignored, classes=[1])
    assert rows["area"].tolist() == [24, 32] and rows["iou"].tolist() == [1.0, 1.0]
    scores = _sizes(pred, gt_ignored, classes=[1])
    assert scores["size_count@16-64"] == 2 and scores["size_iou@16-64"] == 1.0
    bands = _bands(pred, gt_ignored)
    assert all(bands[f"{s}@{k}px"] == 1.0 for s in ("band_acc", "offband_acc", "band_miou") for k in (1, 2, 4))


def test_four_and_eight_connectivity():
    gt = torch.zeros(1, 6, 6, dtype=torch.long)
    gt[0, 1, 1] = gt[0, 2, 2] = gt[0, 3, 3] = 1  # a diagonal of three pixels
    assert object_scores(gt, gt, classes=[1], connectivity=4)["area"].tolist() == [1, 1, 1]
    assert object_scores(gt, gt, classes=[1], connectivity=8)["area"].tolist() == [3]
    assert _sizes(gt, gt, classes=[1], connectivity=4)["size_count@0-16"] == 3
    assert _sizes(gt, gt, classes=[1], connectivity=8)["size_count@0-16"] == 1
    # components never join across images of a batch
    two = torch.zeros(2, 4, 4, dtype=torch.long)
    two[:, :, :2] = 1
    assert object_scores(two, two, classes=[1], connectivity=8)["image"].tolist() == [0, 1]


def test_boundary_band_on_a_straight_vertical_edge_has_the_exact_pixel_count():
    h, w = 10, 12
    gt = torch.zeros(1, h, w, dtype=torch.long)
    gt[..., 6:] = 1
    for k in (1, 2):
        band = boundary_band(gt, k)
        assert int(band.sum()) == 2 * k * h  # columns 6-k .. 5+k, every row
        assert band[0, :, 6 - k : 6 + k].all()
    assert _bands(gt, gt, widths=(1, 2))["band_share@1px"] == 2 * h / (h * w)
    # the border is not a boundary; ignore is no class: an ignore stripe beside a class makes no band
    flat = torch.zeros(1, h, w, dtype=torch.long)
    flat[..., :3] = IGNORE_INDEX
    assert int(boundary_band(flat, 2).sum()) == 0


def test_perfect_prediction_scores_one_and_an_all_wrong_one_zero():
    gt = _scene()
    perfect = {**_sizes(gt, gt), **_bands(gt, gt)}
    scored = {k: v for k, v in perfect.items() if not k.startswith(("size_count", "band_share"))}
    assert all(v == 1.0 for k, v in scored.items() if not math.isnan(v))
    assert not math.isnan(perfect["size_iou@0-16"]) and not math.isnan(perfect["band_acc@4px"])
    wrong = (gt + 1) % 3
    worst = {**_sizes(wrong, gt), **_bands(wrong, gt)}
    scored = {k: v for k, v in worst.items() if not k.startswith(("size_count", "band_share"))}
    assert all(v == 0.0 for v in scored.values() if not math.isnan(v))
    # logits with a class dimension give the same as labels
    logits = F.one_hot(wrong, 3).permute(0, 3, 1, 2).float()
    assert _sizes(logits, gt) == pytest.approx(_sizes(wrong, gt), nan_ok=True)
    assert _bands(logits, gt) == pytest.approx(_bands(wrong, gt), nan_ok=True)


def _blobs(n: int, seed: int, classes: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, classes, (n, 1, 6, 6), generator=g).float()
    return F.interpolate(coarse, size=(24, 24), mode="nearest")[:, 0].long()


def test_two_batches_accumulate_as_one_concatenated_batch():
    gt = torch.cat([_blobs(3, 0), _scene().repeat(2, 1, 1)])
    pred = _blobs(5, 1)
    pred[:, ::5] = gt[:, ::5]  # partly right
    gt[1, 3:7, 3:7] = IGNORE_INDEX
    for make in (functools.partial(ObjectSizeMetrics, radius=1.5), functools.partial(BoundaryBandMetrics, 4)):
        split, whole = make(), make()
        split.update(pred[:2], gt[:2])
        split.update(pred[2:], gt[2:])
        whole.update(pred, gt)
        assert split.compute() == pytest.approx(whole.compute(), nan_ok=True)


def test_empty_bins_are_nan_with_count_zero():
    gt = _scene()
    scores = _sizes(gt, gt, classes=[2])  # only the two dots
    for name in ("16-64", "64-256", "256-1024", "1024-inf"):
        assert scores[f"size_count@{name}"] == 0
        assert math.isnan(scores[f"size_iou@{name}"]) and math.isnan(scores[f"size_recall@{name}"])
    assert scores["size_count@0-16"] == 2
    fresh = ObjectSizeMetrics(edges=(0, 32**2, math.inf)).compute()
    assert fresh["size_count@0-1024"] == 0 and math.isnan(fresh["size_iou@1024-inf"])
    table = size_table(scores)
    assert table["bin"].tolist() == ["0-16", "16-64", "64-256", "256-1024", "1024-inf"]
    assert table["count"].tolist() == [2, 0, 0, 0, 0] and table["iou"].isna().tolist() == [False] + [True] * 4
    empty = BoundaryBandMetrics(3).compute()
    assert math.isnan(empty["band_acc@1px"]) and math.isnan(empty["band_share@4px"])


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="increasing"):
        ObjectSizeMetrics(edges=(0, 64, 16))
    with pytest.raises(ValueError, match="connectivity"):
        ObjectSizeMetrics(connectivity=6)
    with pytest.raises(ValueError, match="radius"):
        ObjectSizeMetrics(radius=-1)
    with pytest.raises(ValueError, match="band width"):
        BoundaryBandMetrics(3, widths=(0,))


def test_a_metric_group_merges_its_members_and_is_a_picklable_task_evaluator():
    gt = _scene()
    factory = functools.partial(MetricGroup, functools.partial(SegmentationMetrics, 3), ObjectSizeMetrics,
                                functools.partial(BoundaryBandMetrics, 3, widths=(2,)))
    group = pickle.loads(pickle.dumps(factory))()
    group.update(gt, gt)
    group.sync()  # no process group: a no-op
    scores = group.compute()
    assert scores["miou"] == 1.0 and scores["size_iou@0-16"] == 1.0 and scores["band_acc@2px"] == 1.0
    with pytest.raises(ValueError, match="report"):
        twice = MetricGroup(ObjectSizeMetrics, ObjectSizeMetrics)
        twice.update(gt, gt)
        twice.compute()


# ------------------------------------------------------------------------------------- figures
def test_size_bin_bars_one_per_arm_and_bin_with_counts_in_the_tick_labels():
    import matplotlib.pyplot as plt
    import pandas as pd

    from dla_repro.analysis.small_patterns_plots import plot_size_bins

    rows = []
    for arm, shift in (("psp", 0.0), ("psp+gald", 0.1)):
        for seed in range(3):
            table = size_table(_sizes(_scene(), _scene()))
            table["value"] = table["iou"] - shift - 0.01 * seed
            rows.append(table.assign(arm=arm, seed=seed))
    frame = pd.concat(rows, ignore_index=True)
    fig = plot_size_bins(frame)
    (ax,) = fig.axes
    assert len(ax.patches) == 2 * 5  # arms × bins (empty bins: NaN, nothing visible)
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[0] == "0-16 px²\nn=2" and labels[1] == "16-64 px²\nn=0"
    bar = ax.patches[5]  # first bin of the second arm: mean over its seeds
    assert bar.get_height() == pytest.approx(1.0 - 0.1 - 0.01)
    with pytest.raises(ValueError, match="column"):
        plot_size_bins(frame.drop(columns="seed"))
    plt.close(fig)


def test_mask_grid_has_image_truth_prediction_and_each_channel_per_sample_on_one_scale():
    import matplotlib.pyplot as plt

    from dla_repro.analysis.small_patterns_plots import plot_mask_grid

    gt = _scene().repeat(3, 1, 1)
    gt[0, 0, :4] = IGNORE_INDEX
    images = torch.rand(3, 3, 24, 24)
    masks = torch.rand(3, 8, 12, 12)  # M at half resolution
    fig = plot_mask_grid(images, gt, gt, masks, channels=(0, 5), n=2)
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == 2 * (3 + 2) and len(fig.axes) == len(panels) + 1  # one shared colour bar
    assert {im.get_clim() for ax in panels[3:5] + panels[8:10] for im in ax.get_images()} == {(0.0, 1.0)}
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        plot_mask_grid(images, gt, gt, masks * 3)
    with pytest.raises(ValueError, match="channels"):
        plot_mask_grid(images, gt, gt, masks, channels=(8,))
    plt.close("all")
