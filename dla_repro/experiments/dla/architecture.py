"""The DLA variants side by side: our parameter/MAC counts against timm and the reference numbers.

Everything is counted on the ``meta`` device (shapes only), so tabulating all
ten variants at 224x224 takes a few seconds on a CPU and needs no weights.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from ...metrics.complexity import count_complexity
from ...models.dla import VARIANTS, create_dla
from .reference import NA, REFERENCE

__all__ = ["architecture_table", "plot_params_vs_gmacs"]


def _pct(ours: float, ref) -> object:
    return round(100.0 * (ours / ref - 1.0), 3) if isinstance(ref, (int, float)) else NA


def architecture_table(variants: Optional[Sequence[str]] = None, image_size: int = 224):
    """One row per variant: configuration, our params/GMACs, timm's params (from
    timm's own model), the reference figures (``experiments/dla/reference.py``: timm's ImageNet results and benchmark tables, ``"n/a"`` where
    unknown) and the differences in percent.

    Columns: variant, levels, channels, block, cardinality, residual_root,
    params, params_timm, params_ref_m, params_diff_pct, gmacs, conv_gmacs,
    gmacs_ref, gmacs_diff_pct, top1_timm, top1_paper, image_size.
    """
    import pandas as pd
    import timm

    rows = []
    for variant in variants or list(VARIANTS):
        with torch.device("meta"):
            ours = create_dla(variant)
            theirs = timm.create_model(variant)
        c = count_complexity(ours, input_size=(3, image_size, image_size))
        ref = REFERENCE[variant]
        cfg = ours.dla_config
        at_224 = image_size == 224  # the reference GMACs are for 224x224
        rows.append(
            dict(
                variant=variant,
                levels="-".join(map(str, cfg["levels"])),
                channels="-".join(map(str, cfg["channels"])),
                block=cfg["block"],
                cardinality=cfg["cardinality"] or 1,
                residual_root=cfg["residual_root"],
                params=c["params"],
                params_timm=sum(p.numel() for p in theirs.parameters()),
                params_ref_m=ref["params_m"],
                params_diff_pct=_pct(c["params"] / 1e6, ref["params_m"]),
                gmacs=round(c["gmacs"], 4),
                conv_gmacs=round(c["conv_macs"] / 1e9, 4),
                gmacs_ref=ref["gmacs"] if at_224 else NA,
                gmacs_diff_pct=_pct(c["gmacs"], ref["gmacs"]) if at_224 else NA,
                top1_timm=ref["top1_timm"],
                top1_paper=ref["top1_paper"],
                image_size=image_size,
            )
        )
    return pd.DataFrame(rows)


def plot_params_vs_gmacs(table, ax=None):
    """Scatter of parameters (M) against GMACs, one point per variant, coloured by
    block, marker by residual root, each labelled with the reference top-1."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 4.5))
    df = table.assign(params_m=table["params"] / 1e6)
    sns.scatterplot(data=df, x="params_m", y="gmacs", hue="block", style="residual_root", s=70, ax=ax)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.margins(x=0.25, y=0.15)
    ax.autoscale_view()
    renderer = ax.figure.canvas.get_renderer()
    boxes = []  # label extents already drawn (display coordinates): move a new label down until it is clear
    for row in df.sort_values("gmacs", ascending=False).itertuples():
        top1 = f"{row.top1_timm:.2f}%" if isinstance(row.top1_timm, (int, float)) else "top-1 n/a"
        for step in range(12):
            label = ax.annotate(f"{row.variant} ({top1})", (row.params_m, row.gmacs), xytext=(7, -3 - 9 * step),
                                textcoords="offset points", fontsize=7)
            box = label.get_window_extent(renderer)
            if not any(box.overlaps(b) for b in boxes):
                break
            label.remove()
        boxes.append(box)
    ax.set_xlabel("parameters (M)")
    ax.set_ylabel(f"GMACs at {int(df['image_size'].iloc[0])}x{int(df['image_size'].iloc[0])}")
    ax.set_title("DLA variants: size, compute and top-1 (timm eval of the authors' weights)")
    return ax
