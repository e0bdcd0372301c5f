"""One seaborn figure per benchmark table (``results/benchmarks/<suite>_<hardware>.png``).

Each function takes the suite's table (as written to its CSV) and returns a
matplotlib figure; :func:`plot_suite` picks by suite name.  Columns an older
CSV lacks are simply not drawn.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; never a window

import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["FIGURES", "plot_suite"]


def _title(df, what: str) -> str:
    hardware = df["hardware"].iloc[0] if "hardware" in df and len(df) else "unknown hardware"
    return f"{what} -- {hardware}"


def plot_models(df):
    import seaborn as sns

    g = sns.catplot(data=df, x="setting", y="images_per_s", hue="impl", col="variant", kind="bar",
                    sharey=False, height=3.2, aspect=1.2)  # fmt: skip
    g.set_axis_labels("setting", "train-step images/s")
    g.figure.suptitle(_title(df, "train step: dla_repro vs timm"), y=1.03)
    return g.figure


def plot_kernels(df):
    import seaborn as sns
    from matplotlib.ticker import NullFormatter

    df = df.assign(config=df["shape"] + " " + df["dtype"].astype(str) + " " + df["layout"].astype(str))
    height = max(3.0, 0.32 * df.groupby("op")["config"].nunique().max())
    g = sns.catplot(data=df, y="config", x="fwd_bwd_ms", hue="impl", col="op", col_wrap=1, kind="bar",
                    sharey=False, sharex=False, height=height, aspect=7.0 / height)  # fmt: skip
    for ax in g.axes.flat:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.tick_params(axis="y", labelsize=8)
    g.set_axis_labels("forward + backward (ms, log)", "")
    g.figure.suptitle(_title(df, "kernel ops: forward + backward time"), y=1.01)
    g.figure.tight_layout()
    return g.figure


def plot_data(df):
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    sns.barplot(data=df, x="source", y="samples_per_s", ax=ax, color="tab:blue")
    rate = float(df["model_images_per_s"].iloc[0])
    ax.axhline(rate, color="tab:red", ls="--", label=f"{df['model'].iloc[0]} ({df['model_setting'].iloc[0]}) consumes")
    ax.set_yscale("log")
    ax.set_ylabel("samples/s (log)")
    ax.set_xlabel(f"source, {int(df['image_size'].iloc[0])} px")
    ax.legend(fontsize=8)
    ax.set_title(_title(df, "input pipeline vs model"), fontsize=9)
    fig.tight_layout()
    return fig


def plot_pipeline(df):
    import seaborn as sns

    height = 0.3 * df["notebook"].nunique() + 1.5
    fig, ax = plt.subplots(figsize=(6, height))
    sns.barplot(data=df, y="notebook", x="wall_seconds", hue="profile", ax=ax, orient="h")
    ax.set_xlabel("wall time per notebook (s)")
    ax.set_ylabel("")
    ax.set_title(_title(df, "pipeline"), fontsize=9)
    fig.tight_layout()
    return fig


FIGURES = {"models": plot_models, "kernels": plot_kernels, "data": plot_data, "pipeline": plot_pipeline}


def plot_suite(suite: str, df, path) -> None:
    """Draw ``suite``'s figure of ``df`` into ``path`` (PNG) and close it."""
    fig = FIGURES[suite](df)
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
