"""Every verdict of a profile in one place: the notebooks' claims tables, a forest plot, the report.

Each notebook writes ``results/tables/<profile>/<experiment>_claims.csv``
(``claims.claims_table``); :func:`collect_claims` stacks them in pipeline order
and :func:`claims_report` renders them as one Markdown table with the run's
provenance (commit, hardware, wall time from ``results/manifest_<profile>.json``).

``dla-repro report`` (:func:`write_all`) writes

* ``results/claims_<profile>.md`` -- that one table;
* ``results/figures/<profile>/claims_forest.png`` -- :func:`forest_frame` /
  :func:`plot_forest`: one line per claim, Δ with its 95 % interval in units of
  the claim's margin, coloured by verdict, one panel per notebook;
* ``results/REPORT.md`` (``quick``) or ``results/REPORT_<profile>.md`` --
  :func:`report_markdown`: header (profile, data, seeds, hardware, commit, wall
  time), the forest plot, and per paper one row per claim with the paper's
  evidence, Δ [95 % CI], MDE, p, n, verdict, the MLflow run ids and the executed
  notebook; a notebook's paper is the ``paper`` of its ``notebooks/pipeline.yaml``
  entry (:func:`notebook_papers`; without one, the notebook's own name), so a new
  paper needs no change here;
* for ``quick`` in the repository's own ``results/``: the part of README.md's
  "What reproduced" between :data:`README_START` and :data:`README_END`
  (:func:`readme_section`), so the README cannot drift from the committed tables.

Nothing here needs the MLflow store: run ids come from the manifest (the
notebook's run) and from the ``*_runs.csv`` tables (trainings) when they have them.
"""

from __future__ import annotations

import json
import math
import os
import textwrap
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from .claims import DESCRIPTIVE, INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, RULE

__all__ = ["collect_claims", "claims_report", "write_report", "forest_frame", "plot_forest", "report_markdown",
           "readme_section", "update_readme", "report_path", "write_all", "README_START", "README_END"]

SUFFIX = "_claims.csv"
FOREST = "claims_forest.png"
README_START = "<!-- report:start -->"
README_END = "<!-- report:end -->"
VERDICT_COLOURS = {REPRODUCED: "#1b9e77", NOT_REPRODUCED: "#d95f02", INCONCLUSIVE: "#7f7f7f", DESCRIPTIVE: "#b3b3b3"}


def _pipeline_entries() -> list[Mapping[str, Any]] | None:
    """The ``notebooks`` entries of ``notebooks/pipeline.yaml`` (``None`` without that file).

    Read as plain YAML, not through ``dla_repro.pipeline``: this is a generic layer.
    """
    import yaml

    from ..paths import notebooks_dir

    path = notebooks_dir() / "pipeline.yaml"
    if not path.is_file():
        return None
    entries = (yaml.safe_load(path.read_text()) or {}).get("notebooks") or []
    return [entry for entry in entries if isinstance(entry, Mapping)]


def _order(manifest: Mapping[str, Any]) -> list[str]:
    """Notebook names in pipeline order (the ``notebooks`` list of ``notebooks/pipeline.yaml``), else in
    the order the last pipeline run executed them (which may have been a single notebook's rerun)."""
    entries = _pipeline_entries()
    if entries is not None:
        return [entry["name"] for entry in entries if "name" in entry]
    return list(manifest.get("last_run", {}).get("notebooks", [])) if manifest else []


def notebook_papers() -> dict[str, str]:
    """Notebook → the paper it reproduces: the ``paper`` of its ``notebooks/pipeline.yaml`` entry.

    Keyed by the entry's ``experiment`` (the stem of its tables, which is what a
    claims frame's ``notebook`` column holds) and by its ``name``; entries without
    a ``paper`` are left out.
    """
    out: dict[str, str] = {}
    for entry in _pipeline_entries() or []:
        paper = entry.get("paper")
        if not paper:
            continue
        for key in (entry.get("experiment"), entry.get("name")):
            if key:
                out.setdefault(str(key), str(paper))
    return out


def load_manifest(results: Path, profile: str) -> dict[str, Any]:
    path = Path(results) / f"manifest_{profile}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def collect_claims(results: Path, profile: str, order: Sequence[str] = ()) -> pd.DataFrame:
    """Every ``*_claims.csv`` of ``profile`` in one frame, with a ``notebook`` column first.

    Raises ``FileNotFoundError`` naming the folder when the profile has no claims yet.
    """
    folder = Path(results) / "tables" / profile
    paths = sorted(folder.glob(f"*{SUFFIX}")) if folder.is_dir() else []
    if not paths:
        raise FileNotFoundError(
            f"no claims tables (*{SUFFIX}) in {folder}; run `dla-repro run --profile {profile}` first"
        )
    rank = {name: i for i, name in enumerate(order)}
    paths.sort(key=lambda p: (rank.get(p.name[: -len(SUFFIX)], len(rank)), p.name))
    frames = []
    for path in paths:
        frame = pd.read_csv(path)
        frame.insert(0, "notebook", path.name[: -len(SUFFIX)])
        frames.append(frame)
    out = pd.concat(frames, ignore_index=True)
    for col in ("note", "reading"):  # text columns; empty in every row reads back as float NaN
        out[col] = out[col].astype(object).where(out[col].notna(), "") if col in out else ""
    return out


def _num(x: Any, fmt: str = ".3f") -> str:
    try:
        value = float(x)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if math.isnan(value) else format(value, fmt)


def _p_text(row: Any) -> str:
    p, adjusted = getattr(row, "p", None), getattr(row, "p_adjusted", None)
    raw = _num(p)
    if raw == "n/a":
        return raw
    raw = "< 0.001" if float(p) < 0.001 else raw
    if _num(adjusted) == "n/a" or math.isclose(float(adjusted), float(p)):
        return raw
    return f"{'< 0.001' if float(adjusted) < 0.001 else _num(adjusted)} (Holm; alone {raw})"


def _delta_text(row: Any) -> str:
    """Δ with its 95 % interval; tables written before the interval existed show Δ ± SE."""
    if _num(getattr(row, "ci_low", None)) != "n/a":
        return f"{_num(row.delta, '+.3f')} [{_num(row.ci_low, '+.3f')}, {_num(row.ci_high, '+.3f')}]"
    if _test_text(row) == "n/a" and _num(row.se) != "n/a":
        return f"{_num(row.delta, '+.3f')} ± {_num(row.se)} (SE)"
    return _num(row.delta, "+.3f")


def _test_text(row: Any) -> str:
    test = getattr(row, "test", "")
    if not isinstance(test, str) or not test:
        return "n/a"
    kind = "paired" if str(getattr(row, "paired", False)).lower() == "true" else "Welch"
    return f"TOST ±{float(row.tolerance):g}, {kind}" if row.expect == "equal" else kind


def claims_report(claims: pd.DataFrame, profile: str, manifest: Mapping[str, Any] | None = None) -> str:
    """Markdown: provenance, one row per claim, and the count of each verdict."""
    manifest = manifest or {}
    lines = [f"# Claims — profile `{profile}`", ""]
    runs = manifest.get("notebooks", {})
    if runs:
        commits = sorted({r.get("git_commit", "?")[:12] for r in runs.values()})
        hw = manifest.get("hardware", {})
        hardware = f"{hw.get('cpu', '?')} ({hw.get('cpu_count', '?')} cores), GPU: {hw.get('gpu', '?')}"
        wall = sum(float(r.get("wall_seconds") or 0) for r in runs.values())
        lines += [f"Commit {', '.join(commits)} · {hardware}" + (f" · notebooks' wall time {wall:.0f} s" if wall else ""),
                  ""]
    lines += ["| notebook | claim | A vs B | Δ (A−B) [95 % CI] | p | seeds | test | MDE (80 %) | verdict |",
              "|---|---|---|---|---|---|---|---|---|"]
    for row in claims.itertuples(index=False):
        metric = f" ({row.metric})" if isinstance(row.metric, str) and row.metric else ""
        versus = f"{row.a} {_num(row.mean_a)} vs {row.b} {_num(row.mean_b)}{metric}"
        reading = getattr(row, "reading", "")
        why = " — ".join(x for x in (row.note, reading if isinstance(reading, str) else "") if x)
        why = f" — {why}" if why else ""
        lines.append(f"| {row.notebook} | {row.claim} | {versus} | {_delta_text(row)} | {_p_text(row)} | "
                     f"{row.n_a}/{row.n_b} | {_test_text(row)} | {_num(getattr(row, 'mde', None), '.3g')} | "
                     f"**{row.verdict}**{why} |")
    counts = claims["verdict"].value_counts()
    lines += ["", "Verdicts: " + ", ".join(f"{counts[v]} {v}" for v in _verdict_order(counts)) + ".", "", RULE]
    return "\n".join(lines) + "\n"


def write_report(results: Path, profile: str) -> tuple[Path, str]:
    """Gather, render and write ``results/claims_<profile>.md``; returns the path and the text."""
    manifest = load_manifest(results, profile)
    text = claims_report(collect_claims(results, profile, _order(manifest)), profile, manifest)
    path = Path(results) / f"claims_{profile}.md"
    path.write_text(text)
    return path, text


# ------------------------------------------------------------------------------------ pieces
def paper_of(notebook: str, papers: Mapping[str, str] | None = None) -> str:
    """The paper ``notebook`` reproduces (``papers``, by default :func:`notebook_papers`), else its own name."""
    return (notebook_papers() if papers is None else papers).get(notebook, notebook)


def report_path(results: Path, profile: str) -> Path:
    """``results/REPORT.md`` for ``quick``, ``results/REPORT_<profile>.md`` for the others."""
    return Path(results) / ("REPORT.md" if profile == "quick" else f"REPORT_{profile}.md")


def _float(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _margin(row: Mapping[str, Any]) -> float:
    """The claim's margin: ``tolerance`` of an ≈ claim, else ``min_effect`` (nan when the table has neither)."""
    return _float(row.get("tolerance")) if row.get("expect") == "equal" else _float(row.get("min_effect"))


def forest_frame(claims: pd.DataFrame) -> pd.DataFrame:
    """One row per claim: what :func:`plot_forest` draws.

    ``x`` / ``x_low`` / ``x_high``: Δ and its 95 % interval divided by ``scale``,
    the claim's margin (``min_effect``, or the ± ``tolerance`` of an ≈ claim), so
    the margin sits at ±1 in every panel; a claim without a positive margin is
    drawn in its metric's units (``scale`` 1, ``scaled`` False).  ``margin_at``:
    where the margin is drawn (+1 for "greater", −1 for "less", nan for none;
    ≈ claims draw the band −1…+1).
    """
    rows = []
    papers = notebook_papers()
    for rec in claims.to_dict("records"):
        margin = _margin(rec)
        scaled = margin > 0
        scale = margin if scaled else 1.0
        expect = rec.get("expect", "greater")
        delta, lo, hi = (_float(rec.get(k)) for k in ("delta", "ci_low", "ci_high"))
        if math.isnan(lo) and not math.isnan(delta):
            lo = hi = delta  # no interval (no spread, one seed, or an old table): the point alone
        margin_at = math.nan if not scaled or expect == "equal" else (-1.0 if expect == "less" else 1.0)
        rows.append(dict(notebook=rec["notebook"], paper=paper_of(rec["notebook"], papers), claim=rec["claim"],
                         metric=rec.get("metric", ""), expect=expect, verdict=rec["verdict"], delta=delta,
                         ci_low=lo, ci_high=hi, margin=margin, scaled=scaled, scale=scale, x=delta / scale,
                         x_low=lo / scale, x_high=hi / scale, margin_at=margin_at))
    return pd.DataFrame(rows, columns=["notebook", "paper", "claim", "metric", "expect", "verdict", "delta", "ci_low",
                                       "ci_high", "margin", "scaled", "scale", "x", "x_low", "x_high", "margin_at"])


def _forest_label(r: Any) -> str:
    claim = textwrap.shorten(str(r.claim), 70, placeholder="…")
    if math.isnan(r.delta):
        numbers = f"{r.metric}: no value"
    else:
        numbers = f"{r.metric}: Δ {r.delta:+.3g} [{r.ci_low:+.3g}, {r.ci_high:+.3g}]"
        numbers += f", {'±' if r.expect == 'equal' else 'margin '}{r.margin:g}" if r.scaled else " (raw units)"
    return f"{textwrap.fill(claim, 44)}\n{numbers}"


def forest_caption(profile: str) -> str:
    return (f"Profile {profile}. One line per claim: Δ (A−B) with its 95 % confidence interval, divided by the "
            "claim's margin (its smallest effect of interest, or the ± tolerance of an ≈ claim), so the margin "
            "(dashed tick; shaded band for ≈ claims) sits at ±1 in every panel and effects on different metrics "
            "(top-1, mIoU, IoU, ODS) share one unit. Symmetric-log x axis, linear within ±1; each panel has its "
            "own range. The labels give Δ in the metric's own units. Colour: verdict.")


def plot_forest(frame: pd.DataFrame, profile: str = ""):
    """The forest plot of :func:`forest_frame`'s rows: one panel per notebook (pipeline order), own x range."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")
    groups = [(nb, g.reset_index(drop=True)) for nb, g in frame.groupby("notebook", sort=False)]
    heights = [max(len(g), 1) * 0.62 + 0.6 for _, g in groups]
    fig, axes = plt.subplots(len(groups), 1, figsize=(10, sum(heights) + 1.2), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, (nb, g) in zip(axes[:, 0], groups):
        ys = list(range(len(g)))
        for y, r in zip(ys, g.itertuples(index=False)):
            colour = VERDICT_COLOURS.get(r.verdict, "#7570b3")
            if r.scaled and r.expect == "equal":
                ax.fill_betweenx([y - 0.38, y + 0.38], -1, 1, color="#4c72b0", alpha=0.15, lw=0)
            elif not math.isnan(r.margin_at):
                ax.plot([r.margin_at] * 2, [y - 0.38, y + 0.38], ls="--", color="#4c72b0", lw=1.2)
            if math.isnan(r.x):
                ax.text(0, y, "  no value", va="center", ha="left", fontsize=8, color="0.4")
                continue
            ax.plot([r.x_low, r.x_high], [y, y], color=colour, lw=2.2, solid_capstyle="butt")
            ax.scatter([r.x], [y], color=colour, s=46, zorder=3, edgecolor="white", linewidth=0.6)
        ax.axvline(0, color="black", lw=1)
        ax.set_xscale("symlog", linthresh=1.0)
        finite = pd.concat([g["x_low"], g["x_high"], g["x"]]).abs().replace(float("inf"), math.nan).dropna()
        reach = max([1.5] + [float(finite.max()) * 1.6] if len(finite) else [1.5])
        ax.set_xlim(-reach, reach)
        ax.set_yticks(ys, [_forest_label(r) for r in g.itertuples(index=False)], fontsize=7.5)
        ax.set_ylim(len(g) - 0.5, -0.5)
        ax.set_title(f"{g['paper'].iloc[0]} — {nb}", loc="left", fontsize=10)
        ax.set_xlabel("Δ / margin", fontsize=8)
        ax.tick_params(axis="x", labelsize=7.5)
    handles = [Line2D([], [], marker="o", color=c, lw=2.2, label=v) for v, c in VERDICT_COLOURS.items()]
    handles += [Line2D([], [], ls="--", color="#4c72b0", label="margin (smallest effect of interest)"),
                Patch(color="#4c72b0", alpha=0.15, label="≈ claim: ± tolerance")]
    fig.legend(handles=handles, loc="upper center", ncol=3, fontsize=8, frameon=False, bbox_to_anchor=(0.5, 1.0))
    fig.suptitle(f"Claims — profile {profile}" if profile else "Claims", y=1.03, fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.text(0.5, -0.005, textwrap.fill(forest_caption(profile), 150), ha="center", va="top", fontsize=7, color="0.3")
    return fig


def write_forest(claims: pd.DataFrame, results: Path, profile: str) -> Path:
    import matplotlib.pyplot as plt

    path = Path(results) / "figures" / profile / FOREST
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = plot_forest(forest_frame(claims), profile)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def paper_evidence(row: Mapping[str, Any]) -> str:
    """What the paper offers for the claim: the table's ``paper_evidence`` when it has one; a reference
    row (our own baseline) is "n/a"; otherwise "statement only" (with the paper's sentence when the table
    records it in ``paper``).  No number is made up here."""
    given = row.get("paper_evidence")
    if isinstance(given, str) and given:
        return given
    if str(row.get("claim", "")).startswith("Reference:"):
        return "n/a (our own baseline, not a paper claim)"
    statement = row.get("paper")
    return f"statement only: “{statement}”" if isinstance(statement, str) and statement else "statement only"


def _notebook_link(entry: Mapping[str, Any], results: Path, profile: str) -> str:
    from ..paths import repo_root

    output = entry.get("output")
    if not output:
        return ""
    path = Path(output) if Path(output).is_absolute() else repo_root() / output
    rel = os.path.relpath(path, Path(results).resolve())
    if rel.startswith(".."):
        rel = f"notebooks/{profile}/{Path(output).name}"
    return f"[{Path(output).name}]({rel})"


def _training_runs(results: Path, profile: str, notebook: str) -> dict[str, list[str]]:
    """``trial → run ids`` from ``<notebook>_runs.csv`` when it has a ``run_id`` column."""
    path = Path(results) / "tables" / profile / f"{notebook}_runs.csv"
    if not path.is_file():
        return {}
    runs = pd.read_csv(path)
    if not {"trial", "run_id"} <= set(runs.columns):
        return {}
    runs = runs.dropna(subset=["run_id"])
    return {str(t): list(dict.fromkeys(g["run_id"].astype(str))) for t, g in runs.groupby("trial", sort=False)}


def _seeds(results: Path, profile: str, notebooks: Sequence[str]) -> list[int]:
    seeds: set[int] = set()
    for nb in notebooks:
        path = Path(results) / "tables" / profile / f"{nb}_runs.csv"
        if path.is_file():
            runs = pd.read_csv(path)
            if "seed" in runs:
                seeds |= {int(s) for s in runs["seed"].dropna()}
    return sorted(seeds)


def _data_text(manifest: Mapping[str, Any]) -> str:
    roots = sorted({str(e.get("parameters", {}).get("data_root")) for e in manifest.get("notebooks", {}).values()
                    if e.get("parameters", {}).get("data_root")})
    if roots:
        return f"real datasets under {', '.join(roots)}"
    return ("**synthetic** (the procedural generator `dla_repro.data.synthetic`, `notebooks/00_data.ipynb`) — "
            "not ImageNet, Cityscapes, BSDS or SiftFlow")


def _esc(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def report_markdown(claims: pd.DataFrame, profile: str, manifest: Mapping[str, Any] | None = None,
                    results: Path | None = None, figure: Path | None = None) -> str:
    """The report: header, forest plot, and per paper one row per claim (see the module docstring)."""
    from ..paths import results_dir

    results = Path(results) if results is not None else results_dir()
    manifest = manifest or {}
    entries = manifest.get("notebooks", {})
    notebooks = list(dict.fromkeys(claims["notebook"]))
    lines = [f"# Report — profile `{profile}`", "",
             f"Generated by `dla-repro report --profile {profile}` from `tables/{profile}/*{SUFFIX}` and "
             f"`manifest_{profile}.json`; do not edit by hand.", ""]
    seeds = _seeds(results, profile, notebooks)
    n = sorted({int(x) for x in pd.concat([claims["n_a"], claims["n_b"]]).dropna() if int(x) > 0})
    lines += ["| | |", "|---|---|", f"| profile | `{profile}` |", f"| data | {_data_text(manifest)} |",
              f"| seeds | {', '.join(map(str, seeds)) if seeds else 'n/a'} (per side of a claim: n = "
              f"{', '.join(map(str, n)) or 'n/a'}) |"]
    if entries:
        hw = manifest.get("hardware", {})
        lines.append(f"| hardware | {hw.get('cpu', '?')} ({hw.get('cpu_count', '?')} cores, "
                     f"{hw.get('torch_threads', '?')} torch threads), GPU: {hw.get('gpu', '?')} |")
        commits = sorted({e.get("git_commit", "?")[:12] + (" (uncommitted changes)" if str(e.get("git_dirty"))
                                                           .lower() == "true" else "") for e in entries.values()})
        lines.append(f"| git commit | {', '.join(commits)} |")
        last = manifest.get("last_run", {})
        # the pipeline's wall time only when its last run covered every notebook shown here
        wall = last.get("wall_seconds") if set(entries) <= set(last.get("notebooks", [])) else None
        per = ", ".join(f"{nb} {float(e.get('wall_seconds') or 0):.0f} s" for nb, e in entries.items())
        lines.append(f"| wall time | {f'{float(wall):.0f} s for the pipeline; ' if wall else ''}{per} |")
        env = manifest.get("environment", {})
        if env:
            lines.append(f"| environment | Python {env.get('python', '?')}, torch {env.get('torch', '?')}, "
                         f"timm {env.get('timm', '?')} |")
        if manifest.get("tracking_uri"):
            lines.append(f"| MLflow store | `{manifest['tracking_uri']}` |")
    else:
        lines.append(f"| provenance | no `manifest_{profile}.json`: commit, hardware, wall time and run ids unknown |")
    counts = claims["verdict"].value_counts()
    lines += ["", "Verdicts: " + ", ".join(f"{counts[v]} {v}" for v in _verdict_order(counts)) + ".", ""]
    if figure is not None:
        rel = os.path.relpath(Path(figure).resolve(), results.resolve())
        lines += ["## Forest plot", "", f"![claims forest plot]({rel})", "", forest_caption(profile), ""]
    papers = notebook_papers()
    for paper in dict.fromkeys(paper_of(nb, papers) for nb in notebooks):
        lines += [f"## {paper}", "",
                  "| notebook | claim | paper's evidence | ours: A vs B | Δ (A−B) [95 % CI] | MDE (80 %) | p | n | "
                  "verdict | MLflow run | executed notebook |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        trainings: list[str] = []
        for nb in [nb for nb in notebooks if paper_of(nb, papers) == paper]:
            entry = entries.get(nb, {})
            run_id = entry.get("mlflow_run_id")
            run = f"`{run_id}` (notebook)" if run_id else "n/a"
            link = _notebook_link(entry, results, profile) or "n/a"
            runs = _training_runs(results, profile, nb)
            for rec in claims[claims["notebook"] == nb].to_dict("records"):
                metric = f" ({rec['metric']})" if isinstance(rec.get("metric"), str) and rec["metric"] else ""
                versus = f"{rec['a']} {_num(rec['mean_a'])} vs {rec['b']} {_num(rec['mean_b'])}{metric}"
                row = pd.Series(rec)
                why = " — ".join(x for x in (rec.get("note", ""), rec.get("reading", "")) if isinstance(x, str) and x)
                sides = [s for s in (rec["a"], rec["b"]) if str(s) in runs]
                trained = ", ".join(f"{s} ×{len(runs[str(s)])}" for s in sides)
                behind = run + (f"; trainings: {trained}" if sides else "")
                lines.append(f"| {nb} | {_esc(rec['claim'])} | {_esc(paper_evidence(rec))} | {_esc(versus)} | "
                             f"{_delta_text(row)} | {_num(rec.get('mde'), '.3g')} | {_p_text(row)} | "
                             f"{rec['n_a']}/{rec['n_b']} | **{rec['verdict']}**{f' — {_esc(why)}' if why else ''} | "
                             f"{behind} | {link} |")
            for trial, ids in runs.items():
                if any(str(s) == trial for s in pd.concat([claims.loc[claims["notebook"] == nb, "a"],
                                                           claims.loc[claims["notebook"] == nb, "b"]])):
                    trainings.append(f"- {nb} `{trial}`: " + ", ".join(f"`{i}`" for i in ids))
        if trainings:
            lines += ["", "Training runs behind those claims (MLflow run ids, one per seed):", "", *trainings]
        lines.append("")
    lines += ["## The rule", "", RULE, "",
              "Full statement: the docstring of `dla_repro/analysis/claims.py`. p is one-sided for a directional "
              "claim (so a *reproduced* row can show a 95 % interval that touches 0) and the larger TOST p for an ≈ "
              "claim; \"(Holm; alone …)\" gives the Holm-adjusted p of a family of claims and the claim's own p."]
    return "\n".join(lines) + "\n"


def _verdict_order(counts: pd.Series) -> list[str]:
    first = [REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, DESCRIPTIVE]
    return [v for v in first if v in counts] + sorted(set(counts.index) - set(first))


def readme_section(claims: pd.DataFrame, profile: str = "quick") -> str:
    """README's generated block (between the markers, markers excluded): one row per claim and the links."""
    figure = f"results/figures/{profile}/{FOREST}"
    report = report_path(Path("results"), profile).as_posix()
    lines = [f"<!-- generated by `dla-repro report --profile {profile}` from results/tables/{profile}/*{SUFFIX}; "
             "edit the tables' code, not this block -->",
             "| paper | claim | ours: A vs B | Δ (A−B) [95 % CI] | p | verdict |", "|---|---|---|---|---|---|"]
    papers = notebook_papers()
    for rec in claims.to_dict("records"):
        metric = f" ({rec['metric']})" if isinstance(rec.get("metric"), str) and rec["metric"] else ""
        versus = f"{rec['a']} {_num(rec['mean_a'])} vs {rec['b']} {_num(rec['mean_b'])}{metric}"
        verdict = rec["verdict"]
        shown = f"**{verdict}**" if verdict in (REPRODUCED, NOT_REPRODUCED) else verdict
        row = pd.Series(rec)
        lines.append(f"| {paper_of(rec['notebook'], papers)} | {_esc(rec['claim'])} | {_esc(versus)} | "
                     f"{_delta_text(row)} | {_p_text(row)} | {shown} |")
    counts = claims["verdict"].value_counts()
    lines += ["", "Verdicts: " + ", ".join(f"{counts[v]} {v}" for v in _verdict_order(counts)) + ". "
              f"Every row with the paper's evidence, MDE, seeds, MLflow run ids and the executed notebook: "
              f"[{report}]({report}); forest plot: [{figure}]({figure})."]
    return "\n".join(lines)


def update_readme(readme: Path, section: str) -> bool:
    """Replace the text between :data:`README_START` and :data:`README_END` with ``section``.

    Returns whether the file changed; raises ``ValueError`` when the markers are missing or out of order.
    """
    text = Path(readme).read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"{readme}: no {README_START} … {README_END} block")
    new = text[: start + len(README_START)] + "\n" + section + "\n" + text[end:]
    if new == text:
        return False
    Path(readme).write_text(new)
    return True


def readme_block(readme: Path) -> str:
    """The text between the markers now in ``readme`` (without the markers and their line breaks)."""
    text = Path(readme).read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"{readme}: no {README_START} … {README_END} block")
    return text[start + len(README_START): end].strip("\n")


def write_all(results: Path, profile: str, readme: Path | None = None) -> dict[str, Any]:
    """``dla-repro report``: the claims table, the forest plot, the report, and (given ``readme``) its block.

    Returns ``{"claims": path, "figure": path, "report": path, "readme": path or None, "readme_changed": bool,
    "text": the claims table}``.  Raises ``FileNotFoundError`` when the profile has no claims tables.
    """
    manifest = load_manifest(results, profile)
    claims = collect_claims(results, profile, _order(manifest))
    text = claims_report(claims, profile, manifest)
    claims_md = Path(results) / f"claims_{profile}.md"
    claims_md.write_text(text)
    figure = write_forest(claims, results, profile)
    report = report_path(results, profile)
    report.write_text(report_markdown(claims, profile, manifest, results, figure))
    changed = update_readme(readme, readme_section(claims, profile)) if readme is not None else False
    return {"claims": claims_md, "figure": figure, "report": report, "readme": readme, "readme_changed": changed,
            "text": text}
