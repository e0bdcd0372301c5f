"""One table of every verdict: the notebooks' claims tables gathered for a profile.

Each notebook writes ``results/tables/<profile>/<experiment>_claims.csv``
(``claims.claims_table``); :func:`collect_claims` stacks them in pipeline order
and :func:`claims_report` renders them as Markdown with the run's provenance
(commit, hardware, wall time from ``results/manifest_<profile>.json``).
``dla-repro report`` prints it and writes ``results/claims_<profile>.md``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from .claims import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, RULE

__all__ = ["collect_claims", "claims_report", "write_report"]

SUFFIX = "_claims.csv"


def _order(manifest: Mapping[str, Any]) -> list[str]:
    """Notebook names in the order the last pipeline run executed them."""
    return list(manifest.get("last_run", {}).get("notebooks", [])) if manifest else []


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
    order = [REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE] + sorted(set(counts.index) - {REPRODUCED, NOT_REPRODUCED,
                                                                                     INCONCLUSIVE})
    lines += ["", "Verdicts: " + ", ".join(f"{counts[v]} {v}" for v in order if v in counts) + ".", "", RULE]
    return "\n".join(lines) + "\n"


def write_report(results: Path, profile: str) -> tuple[Path, str]:
    """Gather, render and write ``results/claims_<profile>.md``; returns the path and the text."""
    manifest = load_manifest(results, profile)
    text = claims_report(collect_claims(results, profile, _order(manifest)), profile, manifest)
    path = Path(results) / f"claims_{profile}.md"
    path.write_text(text)
    return path, text
