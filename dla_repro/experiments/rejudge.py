"""Re-judge committed claims tables with the current verdict rule, without retraining.

Every notebook writes ``results/tables/<profile>/<experiment>_claims.csv`` with
the per-seed values of both sides of each claim (``values_a`` / ``values_b``).
When the rule of :mod:`dla_repro.analysis.claims` changes, :func:`rejudge`
judges those values again and rewrites the tables -- no model is trained.

What a claim *is* (``expect``, ``min_effect``, ``tolerance``, ``floor``,
``family``, ``paired``) is not read from the table: it comes from the paper's
experiment module, the ``module`` of the notebook's ``notebooks/pipeline.yaml``
entry (the one whose ``experiment`` is the table's name), through its hook

    rejudge_claims(params, tables, table) -> (claims, post)

``params`` are the parameters the notebook ran with -- its ``parameters`` cell at
the commit the run's manifest records (``results/manifest_<profile>.json``),
``pipeline.yaml``'s values for the profile and the overrides the manifest
records; ``tables`` is the folder of the claims table and ``table`` the table
itself.  The hook returns the claims the module declares for such a run (its
own ``claims(...)``) and ``post``, what the notebook does to each verdict after
``study.judge`` (:func:`unchanged` when nothing).  Nothing here knows a paper:
adding one is its module's hook and its pipeline.yaml entry.  A notebook without
a ``module``, or a module without ``rejudge_claims``, is an error naming it; a
row whose claim the module does not declare (or declares with other sides) is an
error, not a guess.

Only a table that recorded the pairing (a ``paired`` column) is re-judged as
paired; a claim declared ``paired`` over an older table falls back to Welch and
says so.

Claims tables without per-seed values (written before they were kept) are
re-judged from the runs table beside them (``<experiment>_runs.csv``: one row
per trial and seed) by :func:`rejudge_from_runs`: each claim's sides are taken
from the runs as the notebook takes them (:func:`dla_repro.experiments.study.judge`,
with the groups the notebook derives from the runs: the module's optional hook
``runs_groups(runs) -> {side: values}``, values a sequence or ``{seed: value}``,
e.g. the classification's per-seed residual gains).  A claim the runs table cannot give back -- a side
that is no trial of it, a metric it lacks, or values whose count or means differ
from the table's -- keeps its row with the verdict :data:`NOT_REJUDGED` and a
``note`` saying why; nothing is guessed.  A table with neither per-seed values
nor a runs table is named and left alone.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import json
import math
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd

from ..analysis.claims import Verdict, claims_table, compare, holm
from ..paths import repo_root
from . import study
from .study import Claim, described, undefined_verdict

__all__ = ["SUFFIX", "RUNS_SUFFIX", "NOT_REJUDGED", "HOOK", "GROUPS_HOOK", "notebook_parameters_at",
           "synthetic_config", "unchanged", "paper_module", "declared_claims", "runs_groups", "rejudge_table",
           "rejudge_from_runs", "rejudge"]

SUFFIX = "_claims.csv"
RUNS_SUFFIX = "_runs.csv"  # the per-(trial, seed) table beside a claims table
NOT_REJUDGED = "not re-judged"  # the verdict of a row the runs table cannot re-derive (``note`` says why)
_FIELDS = [f.name for f in dataclasses.fields(Verdict)]
HOOK = "rejudge_claims"  # a paper module's (params, tables, table) -> (claims, post)
GROUPS_HOOK = "runs_groups"  # its optional (runs) -> {side: per-seed values, or {seed: value}}

Post = Callable[[Verdict], Verdict]


# ------------------------------------------------------------------------ parameters
def notebook_parameters_at(spec: Any, commit: str | None) -> dict[str, Any]:
    """The notebook's ``parameters`` cell (name → ``pipeline.Parameter``) at ``commit``.

    The working tree's when ``commit`` is ``None`` or not in this repository.
    """
    from ..pipeline import notebook_parameters

    path = Path(spec.path)
    if commit:
        rel = path.resolve().relative_to(repo_root())
        shown = subprocess.run(["git", "show", f"{commit}:{rel.as_posix()}"], cwd=repo_root(), capture_output=True,
                               text=True)
        if shown.returncode == 0:
            with tempfile.TemporaryDirectory() as tmp:
                old = Path(tmp) / path.name
                old.write_text(shown.stdout)
                return notebook_parameters(old)
    return notebook_parameters(path)


def _notebook(name: str) -> tuple[Any, Any]:
    """``(pipeline, spec)``: ``notebooks/pipeline.yaml`` and its entry for the table ``name`` (its experiment)."""
    from ..pipeline import load_pipeline

    pipeline = load_pipeline()
    spec = next((nb for nb in pipeline.notebooks if nb.experiment == name or nb.name == name), None)
    if spec is None:
        raise KeyError(f"{name}: no notebook of pipeline.yaml writes this claims table")
    return pipeline, spec


def _parameters(name: str, profile: str, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters notebook ``name`` ran with: cell defaults < pipeline.yaml < the manifest's recorded values."""
    from ..pipeline import resolve_parameters

    pipeline, spec = _notebook(name)
    run = manifest.get("notebooks", {}).get(spec.name, {})
    declared = notebook_parameters_at(spec, run.get("git_commit"))
    recorded = {k: v for k, v in (run.get("parameters") or {}).items() if k != "profile"}
    resolved = resolve_parameters(pipeline, spec, profile, declared=declared)
    return {**{k: p.default for k, p in declared.items()}, **resolved, **recorded}


def synthetic_config(params: Mapping[str, Any]):
    """The ``SyntheticConfig`` a notebook ran with, from its parameters; ``None`` for a real dataset."""
    from ..data.synthetic import SyntheticConfig, dataset_version

    version = dataset_version(params.get("dataset", "synthetic"))
    if version is None:
        return None
    return SyntheticConfig.preset(version, image_size=int(params["image_size"]))


# ---------------------------------------------------------------------- the claims
def unchanged(v: Verdict) -> Verdict:
    """The ``post`` of a notebook that does nothing to a verdict after ``study.judge``."""
    return v


def paper_module(name: str) -> ModuleType:
    """The experiment module declaring the claims of table ``name``: its notebook's pipeline.yaml ``module``.

    ``KeyError`` when no notebook writes the table, when its entry names no
    ``module``, when that module does not exist, or when it has no
    ``rejudge_claims``.
    """
    _, spec = _notebook(name)
    where = f"notebook {spec.name!r} of pipeline.yaml"
    if not spec.module:
        raise KeyError(f"{name}: {where} names no `module:` (the experiment module declaring its claims), so its "
                       "claims cannot be re-judged")
    try:
        module = importlib.import_module(spec.module)
    except ModuleNotFoundError as exc:
        if exc.name and (spec.module == exc.name or spec.module.startswith(exc.name + ".")):
            raise KeyError(f"{name}: {where} names module {spec.module!r}, which does not exist") from exc
        raise
    if not callable(getattr(module, HOOK, None)):
        raise KeyError(f"{name}: {spec.module} ({where}) has no {HOOK}(params, tables, table) -> (claims, post), "
                       "so its claims cannot be re-judged")
    return module


def declared_claims(name: str, params: Mapping[str, Any], tables: Path,
                    table: pd.DataFrame) -> tuple[list[Claim], Post]:
    """The claims the paper module declares for ``name``'s run, and what the notebook does after ``judge``."""
    return getattr(paper_module(name), HOOK)(params, tables, table)


def runs_groups(name: str, runs: pd.DataFrame) -> dict[str, Sequence[float] | Mapping[Any, float]]:
    """The groups (sides that are not trials) notebook ``name`` derives from its runs table for
    :func:`study.judge`: its module's ``runs_groups(runs)``, or none without that hook.

    Groups measured elsewhere (a calibration baseline, the no-learning edge maps)
    are not among them: a claim on them is not re-judged from the runs.
    """
    hook = getattr(paper_module(name), GROUPS_HOOK, None)
    return dict(hook(runs)) if callable(hook) else {}


# --------------------------------------------------------------------------- judging
def _values(cell: Any) -> tuple[float, ...]:
    """Per-seed values as a table holds them: a tuple in memory, its text ``"(0.1, 0.2)"`` in a CSV."""
    if isinstance(cell, str):
        cell = ast.literal_eval(cell)
    return tuple(float(x) for x in cell) if isinstance(cell, (tuple, list)) else ()


def _recorded_paired(row: Mapping[str, Any]) -> bool:
    return str(row.get("paired", "")).strip().lower() == "true"


def rejudge_table(table: pd.DataFrame, claims: Sequence[Claim], post: Post = unchanged) -> pd.DataFrame:
    """``table`` (a claims table with per-seed values) judged again; extra leading columns are kept."""
    declared = {c.text: c for c in claims}
    verdicts = []
    for row in table.to_dict("records"):
        c = declared.get(row["claim"])
        if c is None:
            raise KeyError(f"claim {row['claim']!r} is not declared by the paper module with these parameters")
        names, label = (str(row["a"]), str(row["b"])), str(row["metric"])
        if names != (c.labels or (c.a, c.b)):
            raise ValueError(f"claim {c.text!r}: the table compares {names}, the module declares "
                             f"{c.labels or (c.a, c.b)}")
        xa, xb = _values(row["values_a"]), _values(row["values_b"])
        if len(xa) != row["n_a"] or len(xb) != row["n_b"]:
            raise ValueError(f"claim {c.text!r}: {len(xa)}/{len(xb)} per-seed values for n = {row['n_a']}/{row['n_b']}")
        if not xa or not xb:
            verdicts.append(described(c, undefined_verdict(c, xa, xb, names, label)))
            continue
        paired = c.paired and _recorded_paired(row) and len(xa) == len(xb)
        v = compare(c.text, xa, xb, metric=label, names=names, expect=c.expect, min_effect=c.min_effect,
                    tolerance=c.tolerance, floor=c.floor, paired=paired, family=c.family)
        if c.paired and not paired:
            why = "not paired: the table does not record that both sides ran the same seeds (Welch instead)"
            v = dataclasses.replace(v, note="; ".join(n for n in (v.note, why) if n))
        verdicts.append(described(c, v))
    out = claims_table([post(v) for v in holm(verdicts)])
    if "plan_sha256" in table:  # the plan the claims were pre-registered under: the rule changed, not the plan
        plan = table["plan_sha256"].astype(object)  # an all-empty column reads back from a CSV as float NaN
        out["plan_sha256"] = plan.where(plan.notna(), "").astype(str).to_numpy()
    extra = [col for col in table.columns if col not in _FIELDS]
    for i, col in enumerate(extra):
        out.insert(i, col, table[col].to_numpy())
    return out


def _label(c: Claim) -> str:
    return c.label or (c.metric if isinstance(c.metric, str) else ", ".join(c.metric))


def _same_number(x: Any, y: float) -> bool:
    x = float(x)
    return (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12)


def _why_not_from_runs(row: Mapping[str, Any], c: Claim, runs: pd.DataFrame,
                       groups: Mapping[str, Sequence[float]], source: str) -> str:
    """Why ``row`` cannot be re-derived from ``runs`` ("" when it can): missing sides, metric, or other values."""
    trials = set(runs["trial"].astype(str)) if "trial" in runs else set()
    for side, n, mean in ((c.a, row["n_a"], row["mean_a"]), (c.b, row["n_b"], row["mean_b"])):
        if side in groups:
            xs = [v for _, v in study._group_values(groups[side])]
        elif "trial" not in runs:
            return f"{source} has no trial column"
        elif side not in trials:
            return f"{side!r} is not a trial of {source}"
        elif not study._has(runs, c.metric):
            missing = [m for m in ([c.metric] if isinstance(c.metric, str) else c.metric) if m not in runs]
            return f"{source} has no column {', '.join(missing)}"
        else:
            xs = study._values(runs, side, c.metric)
        if len(xs) != int(n):
            return f"{source} gives {len(xs)} finite values of {side!r}, the table counted {int(n)}"
        if not _same_number(mean, float(np.mean(xs)) if xs else math.nan):
            return f"the mean of {side!r} in {source} is not the table's ({mean})"
    return ""


def rejudge_from_runs(table: pd.DataFrame, claims: Sequence[Claim], runs: pd.DataFrame,
                      groups: Mapping[str, Sequence[float]] | None = None, post: Post = unchanged, *,
                      source: str = "the runs table") -> pd.DataFrame:
    """``table`` (a claims table without per-seed values) judged again from ``runs`` (one row per trial and seed).

    Each row's claim must be declared in ``claims`` with the same sides and metric
    label (else ``KeyError`` / ``ValueError``, as :func:`rejudge_table`).  The
    re-derivable claims are judged together by :func:`study.judge` (seeds in
    increasing order, paired by seed when declared and the seeds agree, Holm
    within each family among them) with ``groups`` for the sides that are not
    trials, then ``post``.  The others keep their row with verdict
    :data:`NOT_REJUDGED`, their old numbers and a ``note`` saying why.  Rows stay
    in the table's order; extra leading columns are kept.
    """
    groups = dict(groups or {})
    declared = {c.text: c for c in claims}
    rows = table.to_dict("records")
    why: dict[str, str] = {}
    for row in rows:
        c = declared.get(row["claim"])
        if c is None:
            raise KeyError(f"claim {row['claim']!r} is not declared by the paper module with these parameters")
        names = (str(row["a"]), str(row["b"]))
        if names != (c.labels or (c.a, c.b)):
            raise ValueError(f"claim {c.text!r}: the table compares {names}, the module declares "
                             f"{c.labels or (c.a, c.b)}")
        if str(row["metric"]) != _label(c):
            raise ValueError(f"claim {c.text!r}: the table's metric is {row['metric']!r}, the module's {_label(c)!r}")
        why[c.text] = _why_not_from_runs(row, c, runs, groups, source)
    judgeable = [declared[row["claim"]] for row in rows if not why[row["claim"]]]
    judged = {v.claim: post(v) for v in study.judge(judgeable, runs, groups)} if judgeable else {}
    verdicts = []
    for row in rows:
        c = declared[row["claim"]]
        if c.text in judged:
            verdicts.append(judged[c.text])
            continue
        reason = why[c.text] or "study.judge found no values for it"
        old = row.get("verdict")
        note = f"{NOT_REJUDGED}: {reason}" + (f" (the old rule said: {old})" if isinstance(old, str) and old else "")
        verdicts.append(Verdict(c.text, str(row["metric"]), str(row["a"]), str(row["b"]), float(row["mean_a"]),
                                float(row["mean_b"]), float(row["delta"]), float(row.get("se", math.nan)),
                                int(row["n_a"]), int(row["n_b"]), c.expect, NOT_REJUDGED, note=note,
                                min_effect=c.min_effect, tolerance=c.tolerance, family=c.family))
    out = claims_table(verdicts)
    extra = [col for col in table.columns if col not in _FIELDS]
    for i, col in enumerate(extra):
        out.insert(i, col, table[col].to_numpy())
    return out


def _manifest(results: Path, profile: str) -> dict[str, Any]:
    path = Path(results) / f"manifest_{profile}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def rejudge(results: Path, profile: str, *, write: bool = True) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """Every ``*_claims.csv`` of ``results/tables/<profile>`` judged again: ``{name: (old, new)}``.

    ``write``: replace the tables by the new ones.  A table without per-seed
    values is re-judged from ``<name>_runs.csv`` in the same folder
    (:func:`rejudge_from_runs`); without that either, it is reported as
    ``(old, None)`` and left alone.
    """
    folder = Path(results) / "tables" / profile
    paths = sorted(folder.glob(f"*{SUFFIX}")) if folder.is_dir() else []
    if not paths:
        raise FileNotFoundError(f"no claims tables (*{SUFFIX}) in {folder}")
    manifest = _manifest(results, profile)
    out: dict[str, tuple[pd.DataFrame, pd.DataFrame | None]] = {}
    for path in paths:
        name = path.name[: -len(SUFFIX)]
        old = pd.read_csv(path)
        runs_path = folder / f"{name}{RUNS_SUFFIX}"
        per_seed = "values_a" in old and "values_b" in old
        if not per_seed and not runs_path.is_file():
            out[name] = (old, None)
            continue
        claims, post = declared_claims(name, _parameters(name, profile, manifest), folder, old)
        if per_seed:
            new = rejudge_table(old, claims, post)
        else:
            runs = pd.read_csv(runs_path)
            new = rejudge_from_runs(old, claims, runs, runs_groups(name, runs), post, source=runs_path.name)
        if write:
            new.to_csv(path, index=False)
        out[name] = (old, new)
    return out
