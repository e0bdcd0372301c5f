"""BSDS500 boundary scores: thinning, one-to-one matching, ODS / OIS / AP on hand-computed cases."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage

from dla_repro.metrics.boundary import (
    _LUT_FIRST,
    _LUT_SECOND,
    BoundaryMetrics,
    boundary_counts,
    boundary_scores,
    boundary_thresholds,
    matching_radius,
    thin,
    tolerance_text,
)


def line(shape, row, cols):
    m = np.zeros(shape, bool)
    m[row, cols[0] : cols[1]] = True
    return m


# ----------------------------------------------------------------------------- thinning
def test_thinning_shapes():
    bar = np.zeros((9, 14), bool)
    bar[3:6, 2:12] = True
    t = thin(bar)
    assert t[4, 3:11].all() and t.sum() == 8, "a 3-pixel-wide bar thins to its middle row"
    square = np.zeros((11, 11), bool)
    square[2:9, 2:9] = True
    assert thin(square).sum() == 1, "a filled square thins to one pixel"
    ring = np.zeros((12, 12), bool)
    ring[2:10, 2:10] = True
    ring[4:8, 4:8] = False
    t = thin(ring)
    assert ndimage.label(~t)[1] == 2, "the hole survives: the ring stays closed"
    lonely = np.zeros((5, 5), bool)
    lonely[2, 2] = True
    assert thin(lonely).sum() == 1


def test_thinning_properties_on_random_blobs():
    rng = np.random.default_rng(0)
    eight = np.ones((3, 3), bool)
    for _ in range(5):
        blob = ndimage.gaussian_filter(rng.random((40, 40)), 2) > 0.5
        t = thin(blob)
        assert not (t & ~blob).any(), "thinning only removes pixels"
        assert ndimage.label(t, eight)[1] == ndimage.label(blob, eight)[1], "8-connected components kept"
        assert np.array_equal(thin(t), t), "idempotent"
        two_by_two = t[:-1, :-1] & t[1:, :-1] & t[:-1, 1:] & t[1:, 1:]
        assert not two_by_two.any(), "one pixel wide"


def test_second_subiteration_is_the_first_rotated_by_180_degrees():
    codes = np.arange(256, dtype=np.uint16)
    rotated = ((codes << 4) | (codes >> 4)) & 0xFF  # x_k -> x_{k+4}
    assert np.array_equal(_LUT_SECOND[rotated], _LUT_FIRST)


# ----------------------------------------------------------------------------- matching
def test_perfect_prediction_scores_one():
    gt = line((100, 100), 50, (10, 90))
    s = boundary_scores([gt.astype(float)], [[gt]], thresholds=9)
    assert s["ods"] == pytest.approx(1.0) and s["ois"] == pytest.approx(1.0)
    assert s["curve"]["precision"].eq(1).all() and s["curve"]["recall"].eq(1).all()
    # A binary map gives the same point at every threshold: a one-point curve, AP 0 as in the benchmark.
    assert s["ap"] == 0.0


def test_graded_perfect_prediction_has_ap_099():
    gt = line((20, 210), 10, (5, 206))  # 201 pixels
    pred = np.zeros(gt.shape)
    pred[10, 5:206] = (np.arange(201) + 0.5) / 201
    s = boundary_scores([pred], [[gt]])  # 99 thresholds
    assert (s["curve"]["precision"] == 1).all()
    assert s["curve"]["recall"].max() == pytest.approx(199 / 201) and s["curve"]["recall"].min() == pytest.approx(2 / 201)
    # recall spans [0.00995, 0.990]: grid points 0.01 … 0.99 at precision 1, 0 and 1 outside → 99 × 0.01
    assert s["ap"] == pytest.approx(0.99)
    assert s["ods"] == pytest.approx(2 * (199 / 201) / (1 + 199 / 201))


def test_one_pixel_shift_matches_within_tolerance_and_two_do_not():
    gt = line((100, 100), 50, (10, 90))  # tolerance 0.0075 × 141.4 = 1.06 px
    one = np.roll(gt, 1, axis=0).astype(float)
    two = np.roll(gt, 2, axis=0).astype(float)
    assert boundary_scores([one], [[gt]], thresholds=5)["ods"] == pytest.approx(1.0)
    assert boundary_scores([two], [[gt]], thresholds=5)["ods"] == 0.0
    assert boundary_scores([two], [[gt]], thresholds=5, max_dist=0.015)["ods"] == pytest.approx(1.0)
    small = line((40, 40), 20, (5, 35))  # 0.0075 × 56.6 = 0.42 px: only exact hits
    assert boundary_scores([np.roll(small, 1, 0).astype(float)], [[small]], thresholds=3)["ods"] == 0.0


def _label_change(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both sides of every label change: the pixels whose right / lower neighbour differs (the synthetic
    ground truth's convention) and the pixels whose left / upper neighbour differs (the other side)."""
    first, other = np.zeros(mask.shape, bool), np.zeros(mask.shape, bool)
    first[:, :-1] |= mask[:, :-1] != mask[:, 1:]
    first[:-1, :] |= mask[:-1, :] != mask[1:, :]
    other[:, 1:] |= mask[:, 1:] != mask[:, :-1]
    other[1:, :] |= mask[1:, :] != mask[:-1, :]
    return first, other


def test_a_pixel_tolerance_scores_the_other_side_of_a_label_change():
    yy, xx = np.mgrid[:64, :64]
    gt, other = _label_change(xx >= 30)  # a vertical change: columns 29 (ground truth) and 30 (the other side)
    assert not (gt & other).any()
    exact = boundary_scores([other.astype(float)], [[gt]], thresholds=5)  # 0.0075 × 90.5 = 0.68 px at 64 px
    tolerant = boundary_scores([other.astype(float)], [[gt]], thresholds=5, max_dist_px=1)
    assert exact["ods"] == 0.0 and tolerant["ods"] == pytest.approx(1.0)
    assert (exact["tolerance"], tolerant["tolerance"]) == ("0.0075 × diagonal", "1 px")
    # a curved change: exact hits only where the two sides coincide; with 1 px nearly all of it
    gt, other = _label_change((yy - 30) ** 2 + (xx - 33) ** 2 <= 15**2)
    exact = boundary_scores([other.astype(float)], [[gt]], thresholds=5)["ods"]
    assert exact < 0.4 < 0.85 < boundary_scores([other.astype(float)], [[gt]], thresholds=5, max_dist_px=1)["ods"]
    # far off (6 px) is a miss with either tolerance
    gt, _ = _label_change(xx >= 30)
    far = np.roll(gt, 6, axis=1).astype(float)
    assert boundary_scores([far], [[gt]], thresholds=5)["ods"] == 0.0
    assert boundary_scores([far], [[gt]], thresholds=5, max_dist_px=1)["ods"] == 0.0
    assert boundary_scores([far], [[gt]], thresholds=5, max_dist_px=2)["ods"] == 0.0


def test_the_bsds_tolerance_stays_the_default():
    assert matching_radius((321, 481)) == pytest.approx(0.0075 * np.hypot(321, 481))  # 4.3 px
    assert matching_radius((64, 64)) == pytest.approx(0.68, abs=0.01)
    assert matching_radius((64, 64), max_dist_px=1) == matching_radius((321, 481), max_dist_px=1) == 1.0
    assert tolerance_text() == "0.0075 × diagonal" and tolerance_text(0.0075, 2.0) == "2 px"
    gt = line((100, 100), 50, (10, 90))
    pred = np.roll(gt, 1, axis=0).astype(float)
    assert boundary_counts(pred, [gt], [0.5]).tolist() == boundary_counts(pred, [gt], [0.5], 0.0075, True,
                                                                            None).tolist()
    assert BoundaryMetrics().max_dist_px is None
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="max_dist_px"):
            BoundaryMetrics(max_dist_px=bad)


def test_matching_is_one_to_one():
    gt = line((100, 100), 50, (10, 90))
    pred = (line(gt.shape, 49, (10, 90)) | line(gt.shape, 51, (10, 90))).astype(float)
    c = boundary_counts(pred, [gt], thresholds=[0.5])[0]
    assert c.tolist() == [80, 80, 80, 160], "each gt pixel takes one of its two candidates"


def test_matching_has_maximum_cardinality():
    # radius 1: prediction a=(5,1) reaches gt x=(5,0) and y=(5,2); b=(5,0) reaches only x.
    # Greedy a→x would leave b unmatched; the maximum matching is a→y, b→x.
    pred = np.zeros((10, 10))
    pred[5, 0:2] = 1.0
    gt = np.zeros((10, 10), bool)
    gt[5, [0, 2]] = True
    c = boundary_counts(pred, [gt], thresholds=[0.5], max_dist=1 / np.hypot(10, 10))[0]
    assert c.tolist() == [2, 2, 2, 2]


def test_empty_prediction_and_empty_ground_truth():
    gt = line((100, 100), 50, (10, 90))
    s = boundary_scores([np.zeros((100, 100))], [[gt]], thresholds=9)
    assert s["ods"] == 0 and s["ois"] == 0 and s["ap"] == 0
    s = boundary_scores([gt.astype(float)], [[np.zeros_like(gt)]], thresholds=9)
    assert s["ods"] == 0 and s["curve"]["precision"].eq(0).all()


def test_two_annotators_by_hand():
    shape = (100, 100)  # tolerance 1.06 px; all segments are straight, 1 px wide, ≥ 10 px apart
    a = line(shape, 50, (10, 90))  # 80 px
    b = line(shape, 50, (10, 30)) | line(shape, 60, (10, 50))  # 20 + 40 = 60 px
    pred = line(shape, 50, (10, 90)) | line(shape, 60, (30, 50)) | line(shape, 80, (10, 30))  # 80 + 20 + 20
    c = boundary_counts(pred.astype(float), [a, b], thresholds=[0.5])[0]
    # recall: a 80/80, b 20 (row 50) + 20 (row 60) = 40/60 → 120/140
    # precision: row 50 (80, matched to a -- and cols 10..29 to b too, counted once) + row 60 (20) → 100/120
    assert c.tolist() == [120, 140, 100, 120]
    s = boundary_scores([pred.astype(float)], [[a, b]], thresholds=[0.5])
    p, r = 100 / 120, 120 / 140
    assert s["ods_precision"] == pytest.approx(p) and s["ods_recall"] == pytest.approx(r)
    assert s["ods"] == pytest.approx(2 * p * r / (p + r)) == pytest.approx(60 / 71)
    assert s["ois"] == pytest.approx(60 / 71)


# ----------------------------------------------------------------------------- dataset scores
def two_images():
    shape = (100, 100)
    gt = line(shape, 50, (10, 90))  # 80 px each
    noise = line(shape, 80, (10, 50))  # 40 px, far from the gt
    img1 = 0.3 * (gt | noise)  # best F 0.8 at t ≤ 0.3, nothing above
    img2 = 0.8 * gt + 0.5 * noise  # P 2/3 at t ≤ 0.5, perfect in (0.5, 0.8]
    return [img1, img2], [[gt], [gt]]


def test_ois_sums_counts_at_each_images_best_threshold():
    preds, gts = two_images()
    s = boundary_scores(preds, gts, thresholds=9)
    # OIS: img1 at 0.1 → (80, 80, 80, 120); img2 at 0.6 → (80, 80, 80, 80); P = 160/200, R = 1
    assert s["ois"] == pytest.approx(8 / 9) and s["ois_precision"] == pytest.approx(0.8)
    assert s["ois"] != pytest.approx((0.8 + 1.0) / 2), "not a mean of per-image F"
    # ODS: t ≤ 0.3 gives P = 160/240, R = 1, F = 0.8 (first reached at 0.1); interpolating
    # towards 0.4 only lowers F
    assert s["ods"] == pytest.approx(0.8) and s["ods_threshold"] == pytest.approx(0.1)
    curve = s["curve"]
    assert list(curve.columns[:4]) == ["threshold", "precision", "recall", "f"] and len(curve) == 9
    assert curve.loc[4, ["cnt_r", "sum_r", "cnt_p", "sum_p"]].tolist() == [80, 160, 80, 120]  # t = 0.5


def test_ods_interpolates_between_thresholds():
    shape = (100, 100)
    gt = line(shape, 50, (0, 100))
    pred = np.zeros(shape)
    pred[50, :20] = 0.9
    pred[50, 20:] = 0.5
    for row in (70, 75, 85, 90):
        pred[row, :] = 0.5  # 400 unmatched pixels
    s = boundary_scores([pred], [[gt]], thresholds=[0.25, 0.75])
    # endpoints (R 1, P 0.2) and (R 0.2, P 1) both have F = 1/3; halfway R = P = 0.6
    assert s["curve"]["f"].max() == pytest.approx(1 / 3)
    assert s["ods"] == pytest.approx(0.6, abs=1e-3) and s["ods_threshold"] == pytest.approx(0.5, abs=0.01)


def test_streaming_matches_batch_and_validates():
    preds, gts = two_images()
    m = BoundaryMetrics(thresholds=9)
    m.update(preds[:1], gts[:1])
    m.update(np.stack(preds[1:]), gts[1:])
    s = boundary_scores(preds, gts, thresholds=9)
    assert m.compute() == {"ods": s["ods"], "ois": s["ois"], "ap": s["ap"]}
    with pytest.raises(ValueError, match=r"image 0: annotator 0 map is \(5, 5\)"):
        boundary_scores([preds[0]], [[np.zeros((5, 5), bool)]])
    with pytest.raises(ValueError, match="probabilities"):
        boundary_scores([preds[0] * 4], [gts[0]])
    with pytest.raises(ValueError, match="2 predictions but ground truth for 1"):
        boundary_scores(preds, gts[:1])
    assert boundary_thresholds(99)[[0, 49, 98]] == pytest.approx([0.01, 0.5, 0.99])


def test_bsds_fixture_end_to_end(tmp_path):
    from dla_repro.data.readers import BSDS500
    from fixtures_formats import write_bsds500

    write_bsds500(tmp_path, {"val": 2}, annotators=3, size=(20, 30))
    ds = BSDS500(tmp_path, "val")
    gts = [ds.annotator_boundaries(i) for i in range(len(ds))]
    preds = [np.mean(g, axis=0) for g in gts]  # the annotators' agreement as a soft map
    s = boundary_scores(preds, gts, thresholds=9, thin_pred=False)
    assert 0 < s["ods"] <= 1 and s["ois"] >= s["ods"] - 1e-12
    assert s["curve"]["sum_r"].iloc[0] == sum(int(b.sum()) for g in gts for b in g)


def test_speed_64px_images_99_thresholds():
    rng = np.random.default_rng(0)
    preds, gts = [], []
    for _ in range(20):
        ann = []
        for _ in range(3):
            m = np.zeros((64, 64), bool)
            m[rng.integers(5, 60), :] = True
            m[:, rng.integers(5, 60)] = True
            ann.append(m)
        soft = ndimage.gaussian_filter(np.mean(ann, 0), 1.5)
        preds.append(np.clip(soft / soft.max() * 0.9 + 0.1 * rng.random((64, 64)), 0, 1))
        gts.append(ann)
    start = time.perf_counter()
    s = boundary_scores(preds, gts, max_dist=0.03)
    elapsed = time.perf_counter() - start
    assert elapsed < 10, f"{elapsed:.1f} s"
    assert 0.5 < s["ods"] <= s["ois"] <= 1
