"""The DLA paper's losses, built on the engine's tasks (losses live with the tasks, not in model files)."""

from __future__ import annotations

from ...engine import SegmentationTask
from ...labels import IGNORE_INDEX

__all__ = ["boundary_task"]


def boundary_task(edge_weight: float = 10.0, ignore_index: int = IGNORE_INDEX) -> SegmentationTask:
    """The boundary loss (arXiv 1707.06484 §5.4; ucbdrive/dla ``dla_up.py`` training of BSDS): 2-class
    cross-entropy with class weights ``(1, edge_weight)``; the official code uses ``edge_weight = 10``."""
    if not edge_weight > 0:
        raise ValueError(f"edge_weight must be positive, got {edge_weight!r}")
    return SegmentationTask(2, ignore_index=ignore_index, class_weights=[1.0, float(edge_weight)])
