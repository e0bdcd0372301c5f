"""Re-judge committed claims tables with the current verdict rule, without retraining.

Every notebook writes ``results/tables/<profile>/<experiment>_claims.csv`` with
the per-seed values of both sides of each claim (``values_a`` / ``values_b``).
When the rule of :mod:`dla_repro.analysis.claims` changes, :func:`rejudge`
judges those values again and rewrites the tables -- no model is trained.

What a claim *is* (``expect``, ``min_effect``, ``tolerance``, ``floor``,
``family``, ``paired``) is not read from the table: it comes from the paper
module's own ``claims(...)``, built with the parameters the notebook ran with --
its ``parameters`` cell at the commit the run's manifest records
(``results/manifest_<profile>.json``), ``pipeline.yaml``'s values for the profile
and the overrides the manifest records.  A row whose claim the module does not
declare (or declares with other sides) is an error, not a guess.

Only a table that recorded the pairing (a ``paired`` column) is re-judged as
paired; a claim declared ``paired`` over an older table falls back to Welch and
says so.  Claims tables without per-seed values (written before they were
kept) cannot be re-judged: :func:`rejudge` names them and leaves them alone.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..analysis.claims import INCONCLUSIVE, Verdict, claims_table, compare, holm
from ..paths import repo_root
from .study import Claim, undefined_verdict

__all__ = ["SUFFIX", "notebook_parameters_at", "declared_claims", "rejudge_table", "rejudge"]

SUFFIX = "_claims.csv"
_FIELDS = [f.name for f in dataclasses.fields(Verdict)]

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


def _parameters(name: str, profile: str, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters notebook ``name`` ran with: cell defaults < pipeline.yaml < the manifest's recorded values."""
    from ..pipeline import load_pipeline, resolve_parameters

    pipeline = load_pipeline()
    spec = next((nb for nb in pipeline.notebooks if nb.experiment == name or nb.name == name), None)
    if spec is None:
        raise KeyError(f"{name}: no notebook of pipeline.yaml writes this claims table")
    run = manifest.get("notebooks", {}).get(spec.name, {})
    declared = notebook_parameters_at(spec, run.get("git_commit"))
    recorded = {k: v for k, v in (run.get("parameters") or {}).items() if k != "profile"}
    resolved = resolve_parameters(pipeline, spec, profile, declared=declared)
    return {**{k: p.default for k, p in declared.items()}, **resolved, **recorded}


def _synthetic_config(params: Mapping[str, Any]):
    from ..data.synthetic import SyntheticConfig

    if str(params.get("dataset", "synthetic")).lower() != "synthetic":
        return None
    return SyntheticConfig(image_size=int(params["image_size"]))


# ---------------------------------------------------------------------- the claims
def _classification(params: Mapping[str, Any], tables: Path, table: pd.DataFrame) -> tuple[list[Claim], Post]:
    from .dla import classification as exp

    config = _synthetic_config(params)
    if config is None:
        raise ValueError("dla_classification on real data: its number of classes (the floor) is not recorded")
    num_classes = len(config.label_names)
    spec = exp.ModelSpec(params["variant"], num_classes, tuple(params["channels"]), tuple(params["deep_levels"]))
    floor = exp.learned_floor(num_classes)
    runs_path = tables / "dla_classification_runs.csv"
    runs = pd.read_csv(runs_path) if runs_path.is_file() else pd.DataFrame()

    def post(v: Verdict) -> Verdict:  # as judge_claims: the residual gains' floor applies to the four trees
        if v.a != "deep gain":
            return v
        if runs.empty:
            raise FileNotFoundError(f"{runs_path}: needed for the floor of the residual-gain claim")
        note = exp.residual_floor_note(runs, exp.METRIC, floor)
        return dataclasses.replace(v, verdict=INCONCLUSIVE, note=note) if note else v

    return exp.claims(spec, floor), post


def _segmentation(params: Mapping[str, Any], tables: Path, table: pd.DataFrame) -> tuple[list[Claim], Post]:
    from .dla import segmentation as seg

    config = _synthetic_config(params)
    baseline_path = tables / "dla_segmentation_plain_baseline.csv"
    baseline = pd.read_csv(baseline_path) if baseline_path.is_file() else None
    names = config.mask_names if config is not None else None
    return seg.claims(params["fine_classes"], names, baseline), _same


def _boundaries(params: Mapping[str, Any], tables: Path, table: pd.DataFrame) -> tuple[list[Claim], Post]:
    from .dla import boundaries as B

    trials = {B.trial_name(d, w) for d, w in B.parse_trials(params["trials"])}
    baselines = sorted({b for b in table["b"] if b not in trials})  # the no-learning edge maps compared with
    return B.claims(params["trials"], baselines), _same


def _parsenet(params: Mapping[str, Any], tables: Path, table: pd.DataFrame) -> tuple[list[Claim], Post]:
    from .parsenet import global_context as pn

    return pn.claims(float(params["equal_tolerance"])), _same


def _same(v: Verdict) -> Verdict:
    return v


DECLARED: dict[str, Callable[[Mapping[str, Any], Path, pd.DataFrame], tuple[list[Claim], Post]]] = {
    "dla_classification": _classification,
    "dla_segmentation": _segmentation,
    "dla_boundaries": _boundaries,
    "parsenet": _parsenet,
}


def declared_claims(name: str, params: Mapping[str, Any], tables: Path,
                    table: pd.DataFrame) -> tuple[list[Claim], Post]:
    """The claims the paper module declares for ``name``'s run, and what the notebook does after ``judge``."""
    if name not in DECLARED:
        raise KeyError(f"{name}: no paper module declares claims for this table; known: {', '.join(DECLARED)}")
    return DECLARED[name](params, tables, table)


# --------------------------------------------------------------------------- judging
def _values(cell: Any) -> tuple[float, ...]:
    """Per-seed values as a table holds them: a tuple in memory, its text ``"(0.1, 0.2)"`` in a CSV."""
    if isinstance(cell, str):
        cell = ast.literal_eval(cell)
    return tuple(float(x) for x in cell) if isinstance(cell, (tuple, list)) else ()


def _recorded_paired(row: Mapping[str, Any]) -> bool:
    return str(row.get("paired", "")).strip().lower() == "true"


def rejudge_table(table: pd.DataFrame, claims: Sequence[Claim], post: Post = _same) -> pd.DataFrame:
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
            verdicts.append(undefined_verdict(c, xa, xb, names, label))
            continue
        paired = c.paired and _recorded_paired(row) and len(xa) == len(xb)
        v = compare(c.text, xa, xb, metric=label, names=names, expect=c.expect, min_effect=c.min_effect,
                    tolerance=c.tolerance, floor=c.floor, paired=paired, family=c.family)
        if c.paired and not paired:
            why = "not paired: the table does not record that both sides ran the same seeds (Welch instead)"
            v = dataclasses.replace(v, note="; ".join(n for n in (v.note, why) if n))
        verdicts.append(v)
    out = claims_table([post(v) for v in holm(verdicts)])
    if "plan_sha256" in table:  # the plan the claims were pre-registered under: the rule changed, not the plan
        out["plan_sha256"] = table["plan_sha256"].fillna("").astype(str).to_numpy()
    extra = [col for col in table.columns if col not in _FIELDS]
    for i, col in enumerate(extra):
        out.insert(i, col, table[col].to_numpy())
    return out


def _manifest(results: Path, profile: str) -> dict[str, Any]:
    path = Path(results) / f"manifest_{profile}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def rejudge(results: Path, profile: str, *, write: bool = True) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """Every ``*_claims.csv`` of ``results/tables/<profile>`` judged again: ``{name: (old, new)}``.

    ``write``: replace the tables by the new ones.  Tables without per-seed
    values are reported as ``(old, None)`` and left alone.
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
        if "values_a" not in old or "values_b" not in old:
            out[name] = (old, None)
            continue
        claims, post = declared_claims(name, _parameters(name, profile, manifest), folder, old)
        new = rejudge_table(old, claims, post)
        if write:
            new.to_csv(path, index=False)
        out[name] = (old, new)
    return out
