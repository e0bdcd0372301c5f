"""CIFAR-100 and ImageFolder readers on fixtures in the real on-disk formats."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from dla_repro.data.readers import (
    CIFAR100,
    DatasetLayoutError,
    ImageFolderDataset,
    build_classification_dataset,
)
from fixtures_formats import write_cifar100, write_imagefolder


# ----------------------------------------------------------------------------- CIFAR-100
def test_cifar100_reads_the_python_pickles(tmp_path):
    written = write_cifar100(tmp_path, n_train=7, n_test=3)
    ds = CIFAR100(tmp_path, "train")
    assert len(ds) == 7 and ds.num_classes == 100 and ds.classes[3] == "fine3"
    image, label = ds[4]
    row = written["train"][b"data"][4]
    # planes R, G, B of 1024 values each, row-major 32×32
    expected = np.stack([row[:1024], row[1024:2048], row[2048:]], axis=-1).reshape(32, 32, 3)
    np.testing.assert_array_equal(np.asarray(image), expected)
    assert label == written["train"][b"fine_labels"][4]

    coarse = CIFAR100(tmp_path / "cifar-100-python", "test", label_type="coarse")  # the folder itself works too
    assert len(coarse) == 3 and coarse.num_classes == 20
    assert coarse[2][1] == written["test"][b"coarse_labels"][2]
    assert ds.digest != coarse.digest and len(ds.digest) == 16


def test_cifar100_builder_augments_train_only(tmp_path):
    write_cifar100(tmp_path, n_train=4, n_test=2)
    train, n = build_classification_dataset("cifar100", tmp_path, "train", 32, train=True)
    val, _ = build_classification_dataset("cifar100", tmp_path, "val", 32, train=False)  # val → test
    assert n == 100 and len(val) == 2
    x, y = train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)
    torch.manual_seed(0)
    a = train[0][0]
    draws = [train[0][0] for _ in range(8)]
    assert any(not torch.equal(a, d) for d in draws), "pad-crop/flip should vary the training image"
    assert torch.equal(val[1][0], val[1][0]), "evaluation transform must be deterministic"
    _, n_coarse = build_classification_dataset("cifar100_coarse", tmp_path, "test", 32, train=False)
    assert n_coarse == 20


def test_cifar100_missing_and_malformed(tmp_path):
    with pytest.raises(DatasetLayoutError, match="cifar-100-python") as err:
        CIFAR100(tmp_path, "train")
    assert "Expected layout" in str(err.value) and isinstance(err.value, FileNotFoundError)

    write_cifar100(tmp_path)
    (tmp_path / "cifar-100-python" / "test").write_bytes(b"not a pickle")
    with pytest.raises(DatasetLayoutError, match="not a readable CIFAR pickle"):
        CIFAR100(tmp_path, "test")

    with open(tmp_path / "cifar-100-python" / "test", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"fine_labels": [0, 1]}, f, protocol=2)
    with pytest.raises(DatasetLayoutError, match="N×3072"):
        CIFAR100(tmp_path, "test")

    with open(tmp_path / "cifar-100-python" / "test", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"coarse_labels": [0, 1]}, f, protocol=2)
    with pytest.raises(DatasetLayoutError, match="fine_labels"):
        CIFAR100(tmp_path, "test")
    with pytest.raises(ValueError, match="split"):
        CIFAR100(tmp_path, "val")


# ----------------------------------------------------------------------------- ImageFolder
def test_imagefolder_reads_classes_and_shares_indices_with_train(tmp_path):
    root = tmp_path / "CUB_200_2011"
    write_imagefolder(root, {"train": {"albatross": 2, "crow": 3, "wren": 1}, "val": {"crow": 1, "wren": 2}}, ext=".png")
    train, n = build_classification_dataset("cub", tmp_path, "train", 24, train=True)  # found under its alias
    val, _ = build_classification_dataset("cub", tmp_path, "val", 24, train=False)
    assert n == 3 and len(train) == 6 and len(val) == 3
    assert val.classes == train.classes == ["albatross", "crow", "wren"]
    assert sorted(t for _, t in val.samples) == [1, 2, 2], "val indices follow train's class list"
    x, y = val[0]
    assert x.shape == (3, 24, 24) and y == 1
    assert train[0][0].shape == (3, 24, 24)
    assert train.name == "cub" and train.digest != val.digest


def test_imagenet_eval_transform_is_resize_256_center_crop_224():
    from dla_repro.data.readers import classification_transform

    text = repr(classification_transform("imagenet", 224, train=False))
    assert "Resize(size=256" in text and "CenterCrop(size=(224, 224))" in text
    train = repr(classification_transform("imagenet", 224, train=True))
    assert "RandomResizedCrop" in train and "RandomHorizontalFlip" in train and "ColorJitter" not in train


def test_imagefolder_layout_errors(tmp_path):
    with pytest.raises(DatasetLayoutError, match="missing split folder"):
        ImageFolderDataset(tmp_path, "train")
    # ImageNet's val as shipped: flat JPEGs, no class folders
    write_imagefolder(tmp_path, {"train": {"n01440764": 1}})
    flat = tmp_path / "val"
    flat.mkdir()
    (tmp_path / "train" / "n01440764" / "img0.jpg").rename(flat / "ILSVRC2012_val_00000001.jpg")
    with pytest.raises(DatasetLayoutError, match="one folder per class") as err:
        ImageFolderDataset(tmp_path, "val")
    assert "<class_a>/" in str(err.value)
    # a class folder with no image
    with pytest.raises(DatasetLayoutError, match="no image"):
        ImageFolderDataset(tmp_path, "train")
    # a val class that train does not have
    write_imagefolder(tmp_path / "b", {"train": {"a": 1}, "val": {"a": 1, "zebra": 1}})
    with pytest.raises(DatasetLayoutError, match="zebra"):
        build_classification_dataset("imagefolder", tmp_path / "b", "val", 16, train=False)
    with pytest.raises(ValueError, match="unknown classification dataset"):
        build_classification_dataset("mnist", tmp_path, "train", 16, train=True)
