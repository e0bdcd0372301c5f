"""Readers for the real datasets, in their real on-disk formats.

Classification: ``CIFAR100`` (the python pickles), ``ImageFolderDataset``
(ImageNet, CUB, Cars, Aircraft, Food as one folder per class) and
``build_classification_dataset``. Dense prediction: ``Cityscapes``, ``CamVid``,
``VOC2012``, ``PascalContext``, ``BSDS500``, ``SiftFlow`` and ``build_segmentation_dataset``, with
the joint image/mask transforms of ``transforms``. A missing or malformed
dataset raises ``DatasetLayoutError`` (a ``FileNotFoundError``) that names the
path and prints the expected layout.
"""

from .cifar import CIFAR100
from .classification import CLASSIFICATION_DATASETS, build_classification_dataset, classification_transform
from .imagefolder import ImageFolderDataset
from .layout import DatasetLayoutError
from .segmentation import (
    BSDS500,
    SEGMENTATION_DATASETS,
    VOC2012,
    CamVid,
    PascalContext,
    Cityscapes,
    SegmentationDataset,
    SiftFlow,
    build_segmentation_dataset,
    read_bsds_ground_truth,
)
from .transforms import segmentation_eval_transform, segmentation_train_transform

__all__ = [
    "DatasetLayoutError",
    "CIFAR100",
    "ImageFolderDataset",
    "CLASSIFICATION_DATASETS",
    "build_classification_dataset",
    "classification_transform",
    "SegmentationDataset",
    "Cityscapes",
    "CamVid",
    "VOC2012",
    "PascalContext",
    "BSDS500",
    "SiftFlow",
    "SEGMENTATION_DATASETS",
    "build_segmentation_dataset",
    "read_bsds_ground_truth",
    "segmentation_train_transform",
    "segmentation_eval_transform",
]
