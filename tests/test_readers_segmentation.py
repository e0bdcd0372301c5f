"""Cityscapes, CamVid, VOC 2012, PASCAL-Context, BSDS500 and SiftFlow readers on fixtures in their real formats."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from dla_repro.data.readers import (
    BSDS500,
    VOC2012,
    CamVid,
    Cityscapes,
    DatasetLayoutError,
    PascalContext,
    SiftFlow,
    build_segmentation_dataset,
)
from dla_repro.data.readers.segmentation import CITYSCAPES_LABELID_TO_TRAINID
from fixtures_formats import (
    SIFTFLOW_SUBDIR,
    write_bsds500,
    write_camvid,
    write_cityscapes,
    write_pascal_context,
    write_siftflow,
    write_voc2012,
)


def raw(ds):
    """Untransformed masks of a dataset, as numpy."""
    return [ds.load_mask(i) for i in range(len(ds))]


# ----------------------------------------------------------------------------- Cityscapes
def test_cityscapes_maps_label_ids_to_19_train_ids(tmp_path):
    written = write_cityscapes(tmp_path / "cityscapes", "val", {"frankfurt": 2, "lindau": 1}, size=(8, 16))
    ds = Cityscapes(tmp_path, "val")  # found under <root>/cityscapes
    assert len(ds) == 3 and ds.num_classes == 19
    stems = [p.name[: -len("_leftImg8bit.png")] for p, _ in ds.samples]
    assert stems == sorted(written)
    for stem, mask in zip(stems, raw(ds)):
        ids = written[stem]
        assert mask[ids == 7].tolist() == [0] * int((ids == 7).sum())  # road
        assert (mask[ids == 33] == 18).all()  # bicycle
        assert (mask[np.isin(ids, [0, 1, 4, 6, 9, 10, 14, 15, 16, 18, 29, 30])] == 255).all()
    assert sorted(set(CITYSCAPES_LABELID_TO_TRAINID.tolist())) == list(range(19)) + [255]
    image, mask = ds[0]
    assert image.shape == (3, 8, 16) and image.dtype == torch.float32
    assert mask.shape == (8, 16) and mask.dtype == torch.long


def test_cityscapes_errors(tmp_path):
    with pytest.raises(DatasetLayoutError, match="leftImg8bit") as err:
        Cityscapes(tmp_path, "train")
    assert "gtFine/<split>/<city>" in str(err.value)
    write_cityscapes(tmp_path, "train", {"aachen": 1})
    with pytest.raises(DatasetLayoutError, match="missing split folder"):
        Cityscapes(tmp_path, "val")
    next((tmp_path / "gtFine" / "train" / "aachen").glob("*_labelIds.png")).unlink()
    with pytest.raises(DatasetLayoutError, match="missing label file") as err:
        Cityscapes(tmp_path, "train")
    assert "_gtFine_labelIds.png" in str(err.value)


# ----------------------------------------------------------------------------- CamVid
def test_camvid_void_is_ignored(tmp_path):
    written = write_camvid(tmp_path / "CamVid", {"train": 2, "val": 1, "test": 1})
    ds = CamVid(tmp_path, "train")
    assert len(ds) == 2 and ds.num_classes == 11
    for (img, _), mask in zip(ds.samples, raw(ds)):
        lbl = written[("train", img.name)]
        np.testing.assert_array_equal(mask, np.where(lbl == 11, 255, lbl))
    assert len(CamVid(tmp_path / "CamVid", "trainval")) == 3
    x, y = ds[1]
    assert x.shape == (3, 6, 8) and set(y.unique().tolist()) <= set(range(11)) | {255}


def test_camvid_errors(tmp_path):
    with pytest.raises(DatasetLayoutError, match="trainannot"):
        CamVid(tmp_path, "train")
    write_camvid(tmp_path, {"train": 1})
    name = next((tmp_path / "trainannot").glob("*.png"))
    Image.fromarray(np.full((6, 8), 40, np.uint8), "L").save(name)
    with pytest.raises(DatasetLayoutError, match="label value 40"):
        CamVid(tmp_path, "train")[0]
    Image.fromarray(np.zeros((6, 8, 3), np.uint8), "RGB").save(name)
    with pytest.raises(DatasetLayoutError, match="colour-coded"):
        CamVid(tmp_path, "train")[0]
    with pytest.raises(ValueError, match="split"):
        CamVid(tmp_path, "training")


# ----------------------------------------------------------------------------- VOC 2012
def test_voc_reads_palette_indices_not_colours(tmp_path):
    written = write_voc2012(tmp_path, {"train": 3, "val": 2})
    with Image.open(next((tmp_path / "VOCdevkit/VOC2012/SegmentationClass").glob("*.png"))) as im:
        assert im.mode == "P"  # the fixture really is a palette PNG
    ds = VOC2012(tmp_path, "val")  # found under VOCdevkit/VOC2012
    assert len(ds) == 2 and ds.num_classes == 21
    for (img, _), mask in zip(ds.samples, raw(ds)):
        np.testing.assert_array_equal(mask, written[img.stem])
    assert (raw(ds)[0][0] == 255).all()
    assert len(VOC2012(tmp_path / "VOCdevkit", "trainval")) == 5
    x, y = ds[0]
    assert x.shape == (3, 10, 12) and y.dtype == torch.long


def test_voc_errors(tmp_path):
    with pytest.raises(DatasetLayoutError, match="JPEGImages"):
        VOC2012(tmp_path)
    write_voc2012(tmp_path, {"train": 2})
    base = tmp_path / "VOCdevkit/VOC2012"
    with pytest.raises(DatasetLayoutError, match="missing image list"):
        VOC2012(tmp_path, "val")
    first = (base / "ImageSets/Segmentation/train.txt").read_text().split()[0]
    Image.open(base / "SegmentationClass" / f"{first}.png").convert("RGB").save(base / "SegmentationClass" / f"{first}.png")
    with pytest.raises(DatasetLayoutError, match="colour-coded"):
        VOC2012(tmp_path, "train")[0]
    Image.fromarray(np.full((10, 12), 30, np.uint8), "L").save(base / "SegmentationClass" / f"{first}.png")
    with pytest.raises(DatasetLayoutError, match=r"label values \[30\]"):
        VOC2012(tmp_path, "train")[0]
    (base / "SegmentationClass" / f"{first}.png").unlink()
    with pytest.raises(DatasetLayoutError, match="missing label file"):
        VOC2012(tmp_path, "train")


# ----------------------------------------------------------------------------- PASCAL-Context
def test_pascal_context_maps_0_to_ignore_and_shifts_the_59_classes(tmp_path):
    written = write_pascal_context(tmp_path, {"train": 3, "val": 2})
    ds = PascalContext(tmp_path, "val")  # found under VOCdevkit/VOC2010
    assert len(ds) == 2 and ds.num_classes == 59 and ds.classes[0] == "aeroplane" and ds.classes[-1] == "wood"
    for (img, _), mask in zip(ds.samples, raw(ds)):
        lbl = written[img.stem]
        assert (mask[lbl == 0] == 255).all()
        np.testing.assert_array_equal(mask[lbl > 0], lbl[lbl > 0] - 1)
        assert mask[-1, -1] == 58
    same, n = build_segmentation_dataset("pascal_context", tmp_path / "VOCdevkit" / "VOC2010", "train", train=False)
    assert n == 59 and len(same) == 3
    x, y = ds[0]
    assert x.shape == (3, 10, 12) and y.dtype == torch.long and int(y[y != 255].max()) <= 58 and (y[:, 0] == 255).all()


def test_pascal_context_errors(tmp_path):
    write_voc2012(tmp_path, {"train": 1})  # VOC 2012 is not PASCAL-Context
    with pytest.raises(DatasetLayoutError, match="SegmentationClassContext") as err:
        PascalContext(tmp_path)
    assert "ImageSets/SegmentationContext/train.txt" in str(err.value)
    write_pascal_context(tmp_path, {"train": 1})
    base = tmp_path / "VOCdevkit/VOC2010"
    label = next((base / "SegmentationClassContext").glob("*.png"))
    Image.fromarray(np.full((10, 12), 60, np.uint8), "L").save(label)
    with pytest.raises(DatasetLayoutError, match="label value 60 > 59"):
        PascalContext(tmp_path)[0]
    with pytest.raises(DatasetLayoutError, match="missing image list for split 'val'"):
        PascalContext(tmp_path, "val")


# ----------------------------------------------------------------------------- BSDS500
def test_bsds500_annotators_and_fused_target(tmp_path):
    written = write_bsds500(tmp_path, {"train": 2, "val": 1, "test": 1}, annotators=3)
    ds = BSDS500(tmp_path, "train")  # found under BSR/BSDS500; Thumbs.db ignored
    assert len(ds) == 2 and ds.num_classes == 2
    sid = ds.samples[0][0].stem
    gts = ds.annotator_boundaries(0)
    assert len(gts) == 3 and all(g.dtype == bool for g in gts)
    for got, want in zip(gts, written[sid]):
        np.testing.assert_array_equal(got, want)
    assert ds.annotators(0)[0]["Segmentation"].shape == (9, 12)

    frac = np.mean(written[sid], axis=0)
    mask = ds.load_mask(0)
    np.testing.assert_array_equal(mask == 1, frac >= 0.5)
    np.testing.assert_array_equal(mask == 0, frac == 0)
    np.testing.assert_array_equal(mask == 255, (frac > 0) & (frac < 0.5))
    union = BSDS500(tmp_path, "train", fuse_threshold=1e-6).load_mask(0)
    np.testing.assert_array_equal(union, (frac > 0).astype(np.uint8))
    assert len(BSDS500(tmp_path / "BSR", "trainval")) == 3
    x, y = BSDS500(tmp_path, "test")[0]
    assert x.shape == (3, 9, 12) and y.shape == (9, 12)


def test_bsds500_reads_a_struct_array_too(tmp_path):
    write_bsds500(tmp_path, {"val": 1}, annotators=2)
    ds = BSDS500(tmp_path, "val")
    path = ds.samples[0][1]
    seg = np.ones((9, 12), np.uint16)
    bnd = np.eye(9, 12, dtype=bool)
    rec = np.zeros((1, 2), dtype=[("Segmentation", object), ("Boundaries", object)])
    for k in range(2):
        rec[0, k] = (seg, bnd)
    scipy.io.savemat(path, {"groundTruth": rec})
    gts = ds.annotator_boundaries(0)
    assert len(gts) == 2 and (gts[1] == bnd).all()


def test_bsds500_errors(tmp_path):
    with pytest.raises(DatasetLayoutError, match="data/images/train") as err:
        BSDS500(tmp_path, "train")
    assert "groundTruth: 1×K cell of structs" in str(err.value)
    write_bsds500(tmp_path, {"train": 1})
    ds = BSDS500(tmp_path, "train")
    mat = ds.samples[0][1]
    scipy.io.savemat(mat, {"gt": np.zeros((2, 2))})
    with pytest.raises(DatasetLayoutError, match="no variable 'groundTruth'"):
        ds[0]
    cell = np.empty((1, 1), dtype=object)
    cell[0, 0] = {"Segmentation": np.ones((9, 12))}
    scipy.io.savemat(mat, {"groundTruth": cell})
    with pytest.raises(DatasetLayoutError, match="Boundaries"):
        ds.annotator_boundaries(0)
    mat.write_bytes(b"garbage")
    with pytest.raises(DatasetLayoutError, match="unreadable .mat"):
        ds[0]
    mat.unlink()
    with pytest.raises(DatasetLayoutError, match="missing label file"):
        BSDS500(tmp_path, "train")


# ----------------------------------------------------------------------------- SiftFlow
def test_siftflow_labels_and_splits(tmp_path):
    written = write_siftflow(tmp_path, n=5, test=2)
    all_ = SiftFlow(tmp_path, "all")
    test = SiftFlow(tmp_path, "test")
    train = SiftFlow(tmp_path / "SiftFlow", "train")
    assert (len(all_), len(test), len(train)) == (5, 2, 3) and all_.num_classes == 33
    assert {p.stem for p, _ in test.samples}.isdisjoint({p.stem for p, _ in train.samples})
    for (img, _), mask in zip(all_.samples, raw(all_)):
        s = written[img.stem]
        np.testing.assert_array_equal(mask, np.where(s == 0, 255, s - 1))
    x, y = test[0]
    assert x.shape == (3, 8, 8) and y.max() <= 255


def test_siftflow_own_lists_and_errors(tmp_path):
    write_siftflow(tmp_path, n=4, test_list="")
    with pytest.raises(DatasetLayoutError, match="no list of the 'test' images") as err:
        SiftFlow(tmp_path, "test")
    assert "TestSet1.txt" in str(err.value)
    (tmp_path / "SiftFlow" / "test.txt").write_text("coast_n000\nforest_n001.jpg\n")
    assert len(SiftFlow(tmp_path, "test")) == 2 and len(SiftFlow(tmp_path, "train")) == 2
    (tmp_path / "SiftFlow" / "test.txt").write_text("nowhere_n999\n")
    with pytest.raises(DatasetLayoutError, match="listed images not found"):
        SiftFlow(tmp_path, "test")
    mat = tmp_path / "SiftFlow" / "SemanticLabels" / SIFTFLOW_SUBDIR / "coast_n000.mat"
    scipy.io.savemat(mat, {"S": np.full((8, 8), 40.0)})
    with pytest.raises(DatasetLayoutError, match="outside 0..33"):
        SiftFlow(tmp_path, "all")[0]
    scipy.io.savemat(mat, {"L": np.zeros((8, 8))})
    with pytest.raises(DatasetLayoutError, match="no variable 'S'"):
        SiftFlow(tmp_path, "all")[0]
    with pytest.raises(DatasetLayoutError, match="SemanticLabels"):
        SiftFlow(tmp_path / "nowhere", "all")


# ----------------------------------------------------------------------------- factory
def test_build_segmentation_dataset_train_pipeline(tmp_path):
    write_cityscapes(tmp_path, "train", {"aachen": 2}, size=(16, 24))
    ds, n = build_segmentation_dataset("cityscapes", tmp_path, "train", train=True, crop_size=12, scale=2, rotate=10)
    assert n == 19
    torch.manual_seed(0)
    x, y = ds[0]
    assert x.shape == (3, 12, 12) and y.shape == (12, 12)
    assert set(y.unique().tolist()) <= set(range(19)) | {255}
    ev, _ = build_segmentation_dataset("cityscapes", tmp_path, "train", train=False)
    assert ev[0][0].shape == (3, 16, 24)
    write_bsds500(tmp_path, {"val": 1})
    bs, n = build_segmentation_dataset("bsds", tmp_path, "val", train=False, fuse_threshold=0.3)
    assert n == 2 and bs.fuse_threshold == 0.3
    with pytest.raises(ValueError, match="unknown segmentation dataset"):
        build_segmentation_dataset("ade20k", tmp_path, "train", train=False)
