"""Figure of the DynOPool toy variants (arXiv 2205.15254, toy experiments, Table 1) for the notebooks.

Like ``synthetic_plots``, the function returns a matplotlib ``Figure`` and draws
nothing else; the notebook adds the provenance caption (``plots.caption``) and logs it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import torch

from .variants import VARIANT_NAMES, make_variant

__all__ = ["plot_variants"]


def _display(image: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> torch.Tensor:
    """``C×H×W`` → ``H×W×3`` in [0, 1]: undo ``(x − mean) / std`` if given, else stretch min..max."""
    image = image.detach().float()
    if mean is not None and std is not None:
        image = image * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)
    else:
        lo, hi = image.min(), image.max()
        image = (image - lo) / (hi - lo).clamp_min(1e-8)
    image = image.clamp(0, 1)
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    return image[:3].permute(1, 2, 0)


def plot_variants(
    dataset,
    names: Sequence[str] = VARIANT_NAMES,
    n: int = 4,
    *,
    indices: Sequence[int] | None = None,
    factors: Mapping[str, Mapping[str, Any]] | None = None,
    seed: int = 0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
):
    """One row per variant in ``names``, one column per example (``indices``, default the first ``n``).

    ``factors`` maps a variant name to its factor overrides (``make_variant``).  Every
    panel shares one pixel scale (the largest variant's size), so ``large`` shows bigger.
    ``mean`` / ``std``: the dataset's normalisation, undone for display (otherwise
    each image is stretched to its own min..max).  Column titles: the label (a name
    from ``class_names`` when given); row labels: the variant and its output size.
    """
    factors = factors or {}
    indices = list(range(min(n, len(dataset))) if indices is None else indices)
    if not names or not indices:
        raise ValueError("plot_variants needs at least one variant name and one example")
    rows = []
    for name in names:
        variant = make_variant(dataset, name, seed=seed, per_epoch=False, **dict(factors.get(name, {})))
        rows.append((variant, [variant[i] for i in indices]))
    height = max(img.shape[-2] for _, items in rows for img, _ in items)
    width = max(img.shape[-1] for _, items in rows for img, _ in items)
    fig, axes = plt.subplots(len(names), len(indices), figsize=(1.8 * len(indices) + 0.8, 1.8 * len(names)),
                             squeeze=False)
    for r, (variant, items) in enumerate(rows):
        for c, (image, label) in enumerate(items):
            ax = axes[r, c]
            h, w = image.shape[-2:]
            ax.imshow(_display(image, mean, std).numpy(), interpolation="nearest", extent=(0, w, h, 0))
            ax.set_xlim(0, width)
            ax.set_ylim(height, 0)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                label = int(label)
                ax.set_title(class_names[label] if class_names is not None else f"label {label}", fontsize=8)
            if c == 0:
                ax.set_ylabel(f"{variant.transform.describe()}\n{h}×{w}", fontsize=7)
    fig.tight_layout()
    return fig
