"""Figures of small-pattern scores (``dla_repro.metrics.small_patterns``) and of a spatial mask ``M``.

Every function returns a matplotlib ``Figure`` and draws nothing else; the
notebook adds the provenance caption and logs it (``plots.caption``,
``tracking.log_figure``).

* :func:`plot_size_bins` -- one group of bars per object-size bin, one bar per arm:
  the mean over seeds with its 95 % t-interval (``mean ± t(0.975, n−1)·sd/√n``,
  :func:`dla_repro.analysis.replication.arm_interval`; no bar of interval below
  two seeds), each seed's value as a dot, and the number of objects in the bin
  under its name.
* :func:`plot_mask_grid` -- rows = samples; columns = image, ground truth,
  prediction and the chosen channels of a mask ``M`` in [0, 1] (e.g. GALD's
  local-distribution mask), all channels on one colour scale with one colour bar.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch

from ..labels import IGNORE_INDEX
from .replication import arm_interval

__all__ = ["plot_size_bins", "plot_mask_grid"]


def plot_size_bins(
    frame: pd.DataFrame,
    value: str = "value",
    *,
    arm: str = "arm",
    seed: str = "seed",
    size_bin: str = "bin",
    count: str | None = "count",
    order: Sequence[str] | None = None,
    arms: Sequence[str] | None = None,
    ylabel: str = "local object IoU",
    ax=None,
):
    """Per-size-bin bars from a tidy frame of one row per (arm, seed, bin): columns ``arm``, ``seed``,
    ``size_bin``, ``value`` and ``count`` name them.

    ``order``: the bins left to right (default: as they first appear, e.g. the
    ascending rows of ``metrics.small_patterns.size_table``); ``arms``: the arms
    (default: as they appear).  ``count`` (or ``None``): a column with the number of
    objects in the bin per evaluation; the tick label shows its median over the
    rows of the bin (the same in every row when all runs share a test set).  A
    seed whose value is NaN (no object in the bin) is left out of its bar; a bar
    without any value is not drawn.
    """
    missing = [c for c in (arm, seed, size_bin, value, *([count] if count else [])) if c not in frame.columns]
    if missing:
        raise ValueError(f"the frame has no column {missing}; it has {list(frame.columns)}")
    order = list(order) if order is not None else list(dict.fromkeys(frame[size_bin]))
    arms = list(arms) if arms is not None else list(dict.fromkeys(frame[arm]))
    if ax is None:
        fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(order) * max(1, len(arms)) ** 0.5, 3.8))
    else:
        fig = ax.figure
    colors = sns.color_palette("colorblind", len(arms))
    width = 0.8 / len(arms)
    for j, name in enumerate(arms):
        mine = frame[frame[arm] == name]
        x = np.arange(len(order)) + (j - (len(arms) - 1) / 2) * width
        stats = [arm_interval(mine.loc[mine[size_bin] == b, value].dropna()) for b in order]
        means = np.array([s[0] for s in stats])
        low, high = np.array([s[1] for s in stats]), np.array([s[2] for s in stats])
        ax.bar(x, means, width * 0.9, color=colors[j], label=name, edgecolor="0.3", linewidth=0.5)
        ax.errorbar(x, means, yerr=[means - low, high - means], fmt="none", ecolor="0.15", capsize=3, lw=1)
        for i, b in enumerate(order):
            values = mine.loc[mine[size_bin] == b, value].dropna().to_numpy()
            ax.scatter(np.full(values.size, x[i]), values, s=9, color="0.15", zorder=3, linewidths=0)
    labels = []
    for b in order:
        n = frame.loc[frame[size_bin] == b, count].median() if count else None
        labels.append(f"{b} px²" + ("" if n is None or np.isnan(n) else f"\nn={int(round(n))}"))
    ax.set_xticks(np.arange(len(order)), labels)
    ax.set_xlabel("object area (objects per evaluation)" if count else "object area")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8, title=None, frameon=False)
    ax.set_title(f"{ylabel} by object size: mean over seeds, 95 % t-interval, dots = seeds", fontsize=9)
    fig.tight_layout()
    return fig


def _colorize(labels: torch.Tensor, colors: np.ndarray, ignore_index: int | None) -> np.ndarray:
    """``H×W`` class map → ``H×W×3`` RGB; the ignore label white."""
    labels = torch.as_tensor(labels).long().cpu().numpy()
    ignored = labels == ignore_index if ignore_index is not None else np.zeros(labels.shape, dtype=bool)
    if labels[~ignored].size and (labels[~ignored].min() < 0 or labels[~ignored].max() >= len(colors)):
        raise ValueError(f"labels must be in 0..{len(colors) - 1} (or {ignore_index}); pass one colour per class")
    out = colors[np.where(ignored, 0, labels)]
    out[ignored] = 1.0
    return out


def plot_mask_grid(
    images: torch.Tensor,
    targets: torch.Tensor,
    preds: torch.Tensor,
    masks: torch.Tensor,
    channels: Sequence[int] = (0, 1, 2),
    *,
    colors: Sequence[Sequence[float]] | None = None,
    n: int = 4,
    ignore_index: int | None = IGNORE_INDEX,
    cmap: str = "viridis",
):
    """A grid: rows = the first ``n`` samples; columns = image, ground truth, prediction, ``M[c]`` per channel.

    ``images``: ``N×3×H×W`` RGB (or ``N×H×W`` grey) in [0, 1] -- denormalise first
    (``data.synthetic.denormalize``); ``targets``, ``preds``: ``N×H×W`` labels
    (the ignore label white); ``masks``: ``N×K×h×w`` values in [0, 1], any
    resolution (shown as they are, stretched to the image's extent); ``colors``:
    one RGB per class (default: seaborn's ``tab20``; e.g.
    ``data.synthetic_plots.mask_colors(config)``).  Every ``M`` panel shares the
    colour scale [0, 1]; values outside it are an error rather than clipped.
    """
    masks = torch.as_tensor(masks).detach().float().cpu()
    if masks.ndim != 4:
        raise ValueError(f"masks must be N×K×h×w, got shape {tuple(masks.shape)}")
    if masks.numel() and (masks.min() < -1e-6 or masks.max() > 1 + 1e-6):
        raise ValueError(f"mask values must be in [0, 1] (apply the sigmoid), got {float(masks.min()):.3g}.."
                         f"{float(masks.max()):.3g}")
    channels = list(channels)
    bad = [c for c in channels if not 0 <= c < masks.shape[1]]
    if bad:
        raise ValueError(f"mask channels {bad} do not exist; M has {masks.shape[1]} channels")
    n = min(n, len(images))
    if colors is None:
        labels = torch.cat([torch.as_tensor(targets[:n]).flatten(), torch.as_tensor(preds[:n]).flatten()]).long()
        labels = labels[labels != ignore_index] if ignore_index is not None else labels
        colors = sns.color_palette("tab20", int(labels.max()) + 1 if labels.numel() else 1)
    palette = np.asarray(colors, dtype=float)[:, :3]
    cols = 3 + len(channels)
    fig, axes = plt.subplots(n, cols, figsize=(1.6 * cols + 0.6, 1.6 * n + 0.4), squeeze=False)
    shown = None
    for i in range(n):
        image = torch.as_tensor(images[i]).detach().float().cpu()
        image = image.permute(1, 2, 0).clamp(0, 1).numpy() if image.ndim == 3 else image.clamp(0, 1).numpy()
        h, w = image.shape[:2]
        axes[i, 0].imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
        axes[i, 1].imshow(_colorize(targets[i], palette, ignore_index), interpolation="nearest")
        axes[i, 2].imshow(_colorize(preds[i], palette, ignore_index), interpolation="nearest")
        for j, c in enumerate(channels):
            shown = axes[i, 3 + j].imshow(masks[i, c].numpy(), cmap=cmap, vmin=0.0, vmax=1.0,
                                          extent=(-0.5, w - 0.5, h - 0.5, -0.5), interpolation="nearest")
    for j, title in enumerate(["image", "ground truth", "prediction", *(f"M[{c}]" for c in channels)]):
        axes[0, j].set_title(title, fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    if shown is not None:
        fig.colorbar(shown, ax=axes[:, 3:].ravel().tolist(), fraction=0.05, pad=0.02, label="M (shared scale)")
    return fig
