"""Does a re-run elsewhere give the committed verdicts?  Two results folders, claim by claim and arm by arm.

    dla-repro replication OTHER_RESULTS [--reference results] [--profile quick]

Trainings on a CPU are deterministic on one machine, but another CPU (other vector units, other kernels) rounds
differently, and a chaotic training amplifies that: the same seed can land elsewhere.  What must carry over is
what the project claims -- the verdicts, and per-arm means that a fresh set of seeds would plausibly give.  So
for every claim of the reference (the committed ``results/``) this compares

* the **verdict** of the re-run with the reference's, and
* each arm's **per-seed mean** in the re-run with the reference arm's 95 % t-interval for its mean
  (``mean ± t(0.975, n-1) · sd / √n`` over the reference seeds).

The re-run is a full results folder written by ``dla-repro run`` with ``DLA_REPRO_RESULTS`` pointing elsewhere
(``make replicate`` does both steps).  Each folder's manifest names the hardware it ran on.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .report import collect_claims, load_manifest

__all__ = ["arm_interval", "compare_arms", "compare_verdicts", "replication_markdown", "write_replication"]

LEVEL = 0.95
_KEY = ["notebook", "claim"]


def arm_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float, float]:
    """``(mean, low, high)``: the t-interval for the mean of ``values`` (NaN bounds below two values)."""
    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if x.size < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return mean, mean - half, mean + half


def _values(text: Any) -> list[float]:
    """A claims table's ``values_a`` / ``values_b`` cell, ``"(0.31, 0.29)"``, as floats (empty when absent)."""
    if not isinstance(text, str) or not text.strip():
        return []
    parsed = ast.literal_eval(text)
    return [float(v) for v in (parsed if isinstance(parsed, (tuple, list)) else [parsed])]


def compare_verdicts(reference: pd.DataFrame, rerun: pd.DataFrame) -> pd.DataFrame:
    """One row per reference claim: both verdicts and whether they agree (a claim missing from the re-run
    has verdict ``"missing"`` and does not agree)."""
    new = rerun.drop_duplicates(_KEY).set_index(_KEY)["verdict"]
    rows = []
    for r in reference.itertuples(index=False):
        theirs = new.get((r.notebook, r.claim), "missing")
        rows.append({"notebook": r.notebook, "claim": r.claim, "metric": r.metric, "a": r.a, "b": r.b,
                     "reference": r.verdict, "rerun": theirs, "same": r.verdict == theirs})
    return pd.DataFrame(rows)


def compare_arms(reference: pd.DataFrame, rerun: pd.DataFrame, level: float = LEVEL) -> pd.DataFrame:
    """One row per arm and metric of the reference's claims (an arm in several claims counts once): the
    reference's per-seed mean and its ``level`` interval, the re-run's mean, and whether it lies inside.

    ``inside`` is NA where the reference has fewer than two seeds or no values (no interval to check)."""
    def arms(frame: pd.DataFrame) -> dict[tuple, list[float]]:
        out: dict[tuple, list[float]] = {}
        for r in frame.itertuples(index=False):
            for side in ("a", "b"):
                out.setdefault((r.notebook, getattr(r, side), r.metric), _values(getattr(r, f"values_{side}")))
        return out

    theirs = arms(rerun)
    rows = []
    for (notebook, arm, metric), values in arms(reference).items():
        mean, low, high = arm_interval(values, level)
        other = theirs.get((notebook, arm, metric), [])
        rerun_mean = float(np.mean(other)) if other else math.nan
        checkable = not (math.isnan(low) or math.isnan(rerun_mean))
        rows.append({"notebook": notebook, "arm": arm, "metric": metric, "n_reference": len(values),
                     "reference_mean": mean, "low": low, "high": high, "n_rerun": len(other),
                     "rerun_mean": rerun_mean, "shift": rerun_mean - mean,
                     "inside": bool(low <= rerun_mean <= high) if checkable else pd.NA})
    return pd.DataFrame(rows)


def _hardware(manifest: dict) -> str:
    hw = manifest.get("hardware") or {}
    if not hw:
        return "hardware not recorded"
    isa = f", PyTorch CPU kernels {hw['cpu_capability']}" if hw.get("cpu_capability") else ""
    if hw.get("isa_caps"):
        isa += f", instruction sets capped: {hw['isa_caps']}"
    return f"{hw.get('cpu', '?')} ({hw.get('cpu_count', '?')} cores{isa}), GPU: {hw.get('gpu', '?')}"


def replication_markdown(verdicts: pd.DataFrame, arms: pd.DataFrame, profile: str, reference: str, rerun: str,
                         reference_hw: str, rerun_hw: str, level: float = LEVEL) -> str:
    same, total = int(verdicts["same"].sum()), len(verdicts)
    checked = arms[arms["inside"].notna()]
    inside = int(checked["inside"].astype(bool).sum())
    pct = f"{level:.0%}".replace("%", " %")
    lines = [
        f"# Replication — profile `{profile}`",
        "",
        f"Reference `{reference}` ({reference_hw}) · re-run `{rerun}` ({rerun_hw})",
        "",
        f"**Same verdict: {same} of {total} claims. Per-arm means inside the reference's {pct} interval: "
        f"{inside} of {len(checked)}** ({len(arms) - len(checked)} arms without an interval).",
        "",
        "| notebook | claim | reference | re-run | same |",
        "|---|---|---|---|---|",
    ]
    for r in verdicts.itertuples(index=False):
        lines.append(f"| {r.notebook} | {r.claim} | {r.reference} | {r.rerun} | {'yes' if r.same else '**no**'} |")
    lines += ["", f"| notebook | arm | metric | reference mean [{pct}] | seeds | re-run mean | shift | inside |",
              "|---|---|---|---|---|---|---|---|"]
    for r in arms.itertuples(index=False):
        interval = "" if math.isnan(r.low) else f" [{r.low:.3f}, {r.high:.3f}]"
        mark = "n/a" if pd.isna(r.inside) else ("yes" if r.inside else "**no**")
        lines.append(f"| {r.notebook} | {r.arm} | {r.metric} | {r.reference_mean:.3f}{interval} | "
                     f"{r.n_reference}/{r.n_rerun} | {r.rerun_mean:.3f} | {r.shift:+.3f} | {mark} |")
    return "\n".join(lines) + "\n"


def write_replication(reference: Path, rerun: Path, profile: str = "quick") -> dict[str, Any]:
    """Compare the claims of ``rerun`` with those of ``reference``; write ``<rerun>/REPLICATION_<profile>.md``
    and the two tables beside it.  ``ok``: every verdict the same and every checkable mean inside."""
    reference, rerun = Path(reference), Path(rerun)
    ref_claims, new_claims = collect_claims(reference, profile), collect_claims(rerun, profile)
    verdicts, arms = compare_verdicts(ref_claims, new_claims), compare_arms(ref_claims, new_claims)
    text = replication_markdown(verdicts, arms, profile, str(reference), str(rerun),
                                _hardware(load_manifest(reference, profile)), _hardware(load_manifest(rerun, profile)))
    path = rerun / f"REPLICATION_{profile}.md"
    path.write_text(text)
    verdicts.to_csv(rerun / f"replication_{profile}_verdicts.csv", index=False)
    arms.to_csv(rerun / f"replication_{profile}_arms.csv", index=False)
    ok = bool(verdicts["same"].all()) and bool(arms["inside"].dropna().astype(bool).all())
    return {"text": text, "path": path, "ok": ok, "verdicts": verdicts, "arms": arms}
