"""Figures of the synthetic data for the data-tour notebook (``notebooks/00_data.ipynb``).

Every function returns a matplotlib ``Figure`` and draws nothing else; the notebook
adds the provenance caption and logs it (``plots.caption``, ``tracking.log_figure``).
Mask colours: a context shape's classes share a hue (dark in scene 0, light in
scene 1, …), so a legend shows at a glance which classes only the scene separates.
"""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch
from matplotlib.colors import ListedColormap, to_rgb
from matplotlib.patches import Patch, Rectangle

from .synthetic import STUFF_CLASSES, SyntheticConfig, denormalize, generate

__all__ = [
    "mask_colors",
    "colorize_mask",
    "plot_samples",
    "plot_class_statistics",
    "find_context_example",
    "plot_context_pair",
    "plot_scene_evidence",
    "plot_calibration",
]

_STUFF_COLORS = {"background": "#d9d9d9", "region": "#c9a36b", "line": "#222222", "dot": "#ff7f0e"}


def mask_colors(config: SyntheticConfig) -> list[tuple[float, float, float]]:
    """One RGB colour per per-pixel class (``config.mask_names`` order)."""
    colors = [to_rgb(_STUFF_COLORS[name]) for name in STUFF_CLASSES]
    hues = sns.color_palette("tab10", 10)
    hues = [h for i, h in enumerate(hues) if i not in (1, 7)]  # not orange (dot), not grey (background)
    for k, shape in enumerate(config.shapes):
        base = np.array(hues[k % len(hues)])
        if shape in config.context_shapes:
            for t in range(config.num_scene_types):
                mix = t / max(config.num_scene_types, 2)  # scene 0 full colour, later scenes lighter
                colors.append(tuple(base + (1 - base) * mix * 1.2 if mix else base))
        else:
            colors.append(tuple(base))
    return [tuple(float(min(max(c, 0.0), 1.0)) for c in rgb) for rgb in colors]


def colorize_mask(mask: torch.Tensor, config: SyntheticConfig) -> np.ndarray:
    """(H, W) class map → (H, W, 3) RGB image."""
    palette = np.array(mask_colors(config))
    return palette[mask.numpy()]


def _legend(fig, config: SyntheticConfig, classes=None, ncol: int = 5) -> None:
    """Class legend above the figure (the provenance caption goes below it)."""
    colors = mask_colors(config)
    names = config.mask_names
    keep = range(len(names)) if classes is None else sorted(classes)
    handles = [Patch(facecolor=colors[c], edgecolor="0.4", label=names[c]) for c in keep]
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=ncol, fontsize=8, frameon=False)


def plot_samples(data: Mapping[str, torch.Tensor], config: SyntheticConfig, n: int = 8):
    """A grid: image (title: image label, scene), per-pixel classes, 1-px boundaries; legend of classes."""
    n = min(n, len(data["image"]))
    fig, axes = plt.subplots(3, n, figsize=(1.7 * n, 5.6), squeeze=False)
    for i in range(n):
        axes[0, i].imshow(denormalize(data["image"][i], config).permute(1, 2, 0).numpy(), interpolation="nearest")
        x0, y0, x1, y1 = data["target_box"][i].tolist()
        axes[0, i].add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="w", lw=0.8, ls="--"))
        axes[0, i].set_title(f"{config.label_names[int(data['label'][i])]}\nscene {int(data['scene'][i])}",
                             fontsize=7)
        axes[1, i].imshow(colorize_mask(data["mask"][i], config), interpolation="nearest")
        axes[2, i].imshow(data["boundary"][i].numpy(), cmap="gray_r", interpolation="nearest")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for row, name in enumerate(["image (target boxed)", "per-pixel class", "boundary (1 px)"]):
        axes[row, 0].set_ylabel(name, fontsize=8)
    fig.tight_layout()
    _legend(fig, config)
    return fig


def plot_class_statistics(stats, data: Mapping[str, torch.Tensor], config: SyntheticConfig):
    """Three panels: pixel share per class (log), image-label histogram, per-image area of each class."""
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6), gridspec_kw={"width_ratios": [1.1, 1.6, 1.1]})
    colors = mask_colors(config)
    mask_stats = stats[stats["space"] == "mask"]
    sns.barplot(data=mask_stats, y="class_name", x="frequency", hue="class_name", palette=colors,
                legend=False, ax=axes[0], edgecolor="0.3")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("share of all pixels (log)")
    axes[0].set_ylabel("")
    axes[0].set_title("per-pixel classes")
    for label in axes[0].get_yticklabels():
        if label.get_text() in {config.mask_names[c] for c in config.context_classes()}:
            label.set_fontweight("bold")
    labels = stats[stats["space"] == "label"]
    sns.barplot(data=labels, x="class_name", y="count", color="C0", ax=axes[1])
    axes[1].axhline(labels["count"].sum() / len(labels), color="0.3", ls="--", lw=1, label="uniform")
    axes[1].tick_params(axis="x", rotation=90, labelsize=6)
    axes[1].set_xlabel("")
    axes[1].set_ylabel("images")
    axes[1].set_title("image labels (shape @ quadrant / scale bin)")
    axes[1].legend(fontsize=8)
    area = (torch.nn.functional.one_hot(data["mask"].flatten(1), config.num_mask_classes).float().mean(1)) * 100
    rows = [(config.mask_names[c], float(v)) for c in range(config.num_mask_classes) for v in area[:, c] if v > 0]
    import pandas as pd

    frame = pd.DataFrame(rows, columns=["class_name", "area_pct"])
    sns.boxplot(data=frame, y="class_name", x="area_pct", hue="class_name", palette=colors, legend=False,
                ax=axes[2], fliersize=1, order=config.mask_names)
    axes[2].set_xscale("log")
    axes[2].set_xlabel("% of the image, where present (log)")
    axes[2].set_ylabel("")
    axes[2].set_title("large regions next to small patterns")
    fig.tight_layout()
    return fig


def _largest_context_object(mask: torch.Tensor, config: SyntheticConfig) -> tuple[int, tuple[int, int, int, int]]:
    """(pixel count, box x0, y0, x1, y1) of the largest connected region of one context class."""
    from scipy import ndimage

    best = (0, (0, 0, 0, 0))
    for c in config.context_classes():
        labels, count = ndimage.label((mask == c).numpy())
        for j, sl in enumerate(ndimage.find_objects(labels), start=1):
            area = int((labels[sl] == j).sum())
            if area > best[0]:
                best = (area, (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop))
    return best


def find_context_example(config: SyntheticConfig, seed: int = 0, split: str = "tour", limit: int = 200) -> int:
    """The first index with a clearly visible context-shape object (a full-contrast distractor or the target)."""
    if not config.context_shapes:
        raise ValueError("config has no context_shapes")
    data = generate(config, limit, seed=seed, split=split, scene=0)
    want = 0.5 * (config.object_size[1] * config.image_size) ** 2  # about half the largest box
    for i in range(limit):
        if _largest_context_object(data["mask"][i], config)[0] >= want:
            return i
    raise ValueError(f"no large context-shape object among the first {limit} samples")


def plot_context_pair(config: SyntheticConfig, index: int, seed: int = 0, split: str = "tour"):
    """One sample rendered in every scene type: same object pixels, different per-pixel class.

    Rows: scene types.  Columns: the image, a zoom on the largest context-shape
    object (pixel for pixel the same in every scene), the per-pixel classes.
    """
    scenes = range(config.num_scene_types)
    renders = [generate(config, 1, seed=seed, split=split, start=index, scene=t) for t in scenes]
    _, (x0, y0, x1, y1) = _largest_context_object(renders[0]["mask"][0], config)
    pad = max(2, int(0.3 * (x1 - x0)))
    h = config.image_size
    box = [max(x0 - pad, 0), max(y0 - pad, 0), min(x1 + pad, h), min(y1 + pad, h)]
    cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
    fig, axes = plt.subplots(len(renders), 3, figsize=(8.2, 2.9 * len(renders)), squeeze=False)
    for t, data in enumerate(renders):
        rgb = denormalize(data["image"][0], config).permute(1, 2, 0).numpy()
        cls = int(data["mask"][0, cy, cx]) if data["mask"][0, cy, cx] >= len(STUFF_CLASSES) else None
        axes[t, 0].imshow(rgb, interpolation="nearest")
        axes[t, 0].add_patch(Rectangle((box[0] - 0.5, box[1] - 0.5), box[2] - box[0], box[3] - box[1],
                                       fill=False, ec="w", lw=1.2))
        axes[t, 0].set_title(f"scene {t}: whole image", fontsize=9)
        axes[t, 1].imshow(rgb[box[1]:box[3], box[0]:box[2]], interpolation="nearest")
        axes[t, 1].set_title("zoom: object pixels identical", fontsize=9)
        axes[t, 2].imshow(colorize_mask(data["mask"][0], config), interpolation="nearest")
        axes[t, 2].add_patch(Rectangle((box[0] - 0.5, box[1] - 0.5), box[2] - box[0], box[3] - box[1],
                                       fill=False, ec="k", lw=1.2))
        axes[t, 2].set_title(f"class: {config.mask_names[cls]}" if cls is not None else "per-pixel class",
                             fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    _legend(fig, config, classes=config.context_classes(), ncol=4)
    return fig


def plot_scene_evidence(evidence: Mapping[int, float], config: SyntheticConfig):
    """Scene accuracy of the untrained mean-background-colour rule against the window size."""
    sizes = sorted(evidence)
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    ax.plot(sizes, [evidence[k] for k in sizes], marker="o")
    ax.axhline(1 / config.num_scene_types, color="0.4", ls="--", lw=1, label="chance")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(k) for k in sizes])
    ax.set_ylim(0.4, 1.02)
    ax.set_xlabel("window side (pixels)")
    ax.set_ylabel("scene type accuracy")
    ax.set_title("the scene cue is global: mean background colour per window")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_calibration(table):
    """Plain-baseline calibration: each metric beside its chance level, one dot per seed."""
    rows = table[table["metric"].isin(
        ["top1", "shape_acc", "position_acc", "miou", "pixel_acc", "context_error",
         "scene_acc_window8", "scene_acc_whole_image"])].copy()
    rows["name"] = rows["task"].str.replace("classification", "cls").str.replace("segmentation", "seg") \
        + ": " + rows["metric"] + " @" + rows["image_size"].astype(str) + "px"
    order = list(dict.fromkeys(rows["name"]))
    fig, ax = plt.subplots(figsize=(7.5, 0.38 * len(order) + 1.2))
    sns.stripplot(data=rows, y="name", x="value", order=order, color="C0", size=7, ax=ax, label="plain / probe")
    chance = rows.groupby("name", sort=False)["chance"].first().reindex(order)
    ax.scatter(chance.values, range(len(order)), marker="|", s=300, color="C3", label="chance / majority")
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    ax.legend(uniq.values(), uniq.keys(), fontsize=8, loc="lower right")
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("value (context_error: lower is better)")
    ax.set_ylabel("")
    ax.set_title("calibration of the frozen defaults against the plain baseline")
    fig.tight_layout()
    return fig
