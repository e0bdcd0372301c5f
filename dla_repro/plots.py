"""Shared figure conventions for the notebooks (seaborn).

Every figure says what produced it: ``provenance(...)`` builds the caption line
(data, profile, epochs, seeds, hardware) that ``caption(fig, ...)`` puts under a
figure, so a PNG lifted out of ``results/`` still tells its story.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import seaborn as sns

from . import tracking


def setup_style() -> None:
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")
    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 130, "axes.titlesize": "medium"})


def provenance(
    dataset: str,
    profile: str | None = None,
    epochs: int | None = None,
    seeds: Sequence[int] | int | None = None,
    extra: str | None = None,
    iterations: int = 0,
) -> str:
    """``"data: synthetic (digest ab12) · profile: quick · 4 epochs · seeds 0,1 · CPU: … (2 cores)"``;
    with ``iterations`` > 0 (a run of that many updates) ``"600 updates"`` replaces the epochs."""
    parts = [f"data: {dataset}", f"profile: {profile or tracking.current_profile()}"]
    if iterations:
        parts.append(f"{iterations} update{'s' if iterations != 1 else ''}")
    elif epochs is not None:
        parts.append(f"{epochs} epoch{'s' if epochs != 1 else ''}")
    if seeds is not None:
        seeds = [seeds] if isinstance(seeds, int) else list(seeds)
        parts.append(f"seed{'s' if len(seeds) != 1 else ''} {','.join(map(str, seeds))}")
    if extra:
        parts.append(extra)
    parts.append(tracking.hardware_label())
    return " · ".join(parts)


def caption(fig, text: str, fontsize: float = 8) -> None:
    """Put ``text`` (usually ``provenance(...)``) under the figure."""
    fig.text(0.5, -0.01, text, ha="center", va="top", fontsize=fontsize, color="0.3", wrap=True)
