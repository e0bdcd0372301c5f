"""The ignore label, in one place.

``IGNORE_INDEX`` marks target pixels that no loss and no metric counts: void /
unlabelled regions of the real datasets (Cityscapes, CamVid, VOC borders,
PASCAL-Context "not evaluated", SiftFlow "unlabelled"), pixels that an
augmentation padded or rotated in, and boundary pixels the annotators disagreed
on. 255 is the convention of the datasets' own label PNGs and of mmsegmentation;
``torch.nn.functional.cross_entropy(..., ignore_index=IGNORE_INDEX)`` and
``dla_repro.metrics.segmentation`` skip it.

A leaf module: it imports nothing from the package, so data readers, models,
metrics and the engine can all import it.
"""

IGNORE_INDEX: int = 255

__all__ = ["IGNORE_INDEX"]
