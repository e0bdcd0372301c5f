"""The papermill pipeline behind ``dla-repro run`` and ``make reproduce``.

``notebooks/pipeline.yaml`` says which notebooks run, in which order, and with
which parameters per profile. Parameters resolve, lowest precedence first, as

    notebook defaults  <  profile defaults  <  the notebook's per-profile values  <  ``-p``

and are **validated against each notebook's ``parameters`` cell before anything
executes**: an unknown name, or a value that does not fit the annotated type, is a
``ParameterError`` naming the parameter and listing the allowed ones (papermill
itself would only warn and run anyway).

Each execution gets an MLflow run created here, whose id reaches the notebook's
kernel through ``DLA_REPRO_PARENT_RUN_ID`` (see ``tracking.start_notebook_run``);
after papermill finishes, the executed notebook is logged to that same run and
the run's status set. Executed notebooks go to ``results/notebooks/<profile>/``
and a manifest of the whole run to ``results/manifest_<profile>.json``.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from . import tracking
from .paths import notebooks_dir, results_dir

PROFILES = ("smoke", "quick", "paper")
RESERVED = {"profile", "data_root"}  # filled in by the pipeline itself


class PipelineError(Exception):
    """A pipeline.yaml or command-line problem found before anything executed."""


class ParameterError(PipelineError):
    """An unknown parameter, or a value of the wrong type."""


# ------------------------------------------------------------------ pipeline.yaml
@dataclass(frozen=True)
class NotebookSpec:
    name: str
    path: Path
    experiment: str
    params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    description: str = ""


@dataclass(frozen=True)
class Pipeline:
    profiles: Mapping[str, Mapping[str, Any]]
    notebooks: tuple[NotebookSpec, ...]

    def select(self, names: Sequence[str] = ()) -> list[NotebookSpec]:
        if not names:
            return list(self.notebooks)
        known = {nb.name: nb for nb in self.notebooks}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise PipelineError(f"unknown notebook(s) {unknown}; pipeline.yaml lists {sorted(known)}")
        return [known[n] for n in names]


def load_pipeline(path: Path | None = None) -> Pipeline:
    path = path or notebooks_dir() / "pipeline.yaml"
    if not path.exists():
        raise PipelineError(f"pipeline file not found: {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    profiles = raw.get("profiles", {})
    missing = [p for p in PROFILES if p not in profiles]
    if missing:
        raise PipelineError(f"{path}: profiles {missing} are not defined")
    notebooks = []
    for entry in raw.get("notebooks", []):
        bad = set(entry.get("params", {})) - set(PROFILES) - {"all"}
        if bad:
            raise PipelineError(f"{path}: notebook {entry['name']!r} has params for unknown profiles {sorted(bad)}")
        notebooks.append(
            NotebookSpec(
                name=entry["name"],
                path=(path.parent / entry["path"]).resolve(),
                experiment=entry.get("experiment", entry["name"]),
                params=entry.get("params", {}) or {},
                description=entry.get("description", ""),
            )
        )
    return Pipeline(profiles=profiles, notebooks=tuple(notebooks))


# --------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class Parameter:
    name: str
    type: str
    default: Any
    help: str


def notebook_parameters(path: Path) -> dict[str, Parameter]:
    """The notebook's ``parameters`` cell, via ``papermill.inspect_notebook``."""
    import papermill

    if not Path(path).exists():
        raise PipelineError(f"notebook not found: {path}")
    out = {}
    for name, info in papermill.inspect_notebook(str(path)).items():
        try:
            default = ast.literal_eval(info["default"])
        except (ValueError, SyntaxError):
            default = info["default"]
        out[name] = Parameter(name, info["inferred_type_name"], default, info.get("help", ""))
    return out


_SCALARS = {"int": int, "float": float, "str": str, "bool": bool}


def _describe(params: Mapping[str, Parameter]) -> str:
    return ", ".join(f"{p.name}: {p.type}" for p in params.values())


def coerce(param: Parameter, value: Any, notebook: str) -> Any:
    """``value`` converted to ``param``'s annotated type, or ``ParameterError``.

    Strings (from ``-p key=value``) are parsed; values from YAML must already fit.
    """
    kind = param.type.replace(" ", "")
    base, _, inner = kind.partition("[")
    inner = inner.rstrip("]")

    def fail(reason: str) -> ParameterError:
        return ParameterError(
            f"{notebook}: parameter {param.name!r} expects {param.type}, got {value!r} ({reason})"
        )

    if isinstance(value, str) and base != "str":
        if base == "bool":
            lowered = value.strip().lower()
            if lowered in {"true", "1", "yes", "on"}:
                return True
            if lowered in {"false", "0", "no", "off"}:
                return False
            raise fail("not a boolean")
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise fail(f"unparsable: {exc}") from None
    if base in _SCALARS:
        expected = _SCALARS[base]
        if base == "float" and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if base == "int" and isinstance(value, float) and value.is_integer():
            return int(value)
        if not isinstance(value, expected) or (base == "int" and isinstance(value, bool)):
            raise fail(f"a {type(value).__name__}")
        return value
    if base in {"list", "tuple"}:
        if not isinstance(value, (list, tuple)):
            value = [value]  # `-p seeds=3` means [3]
        value = list(value)
        if inner in _SCALARS:
            item = Parameter(param.name, inner, None, "")
            return [coerce(item, v, notebook) for v in value]
        return value
    if base == "dict":
        if not isinstance(value, dict):
            raise fail(f"a {type(value).__name__}")
        return value
    if base in {"None", "Any", "NoneType"}:
        return value
    raise fail(f"unsupported annotation {param.type!r}; annotate parameters with int/float/str/bool/list/dict")


def resolve_parameters(
    pipeline: Pipeline,
    spec: NotebookSpec,
    profile: str,
    overrides: Mapping[str, str] | None = None,
    data_root: str | None = None,
    declared: Mapping[str, Parameter] | None = None,
) -> dict[str, Any]:
    """Typed, validated parameters for one notebook (see the module docstring for precedence)."""
    if profile not in PROFILES:
        raise PipelineError(f"unknown profile {profile!r}; choose one of {list(PROFILES)}")
    declared = declared if declared is not None else notebook_parameters(spec.path)
    values: dict[str, Any] = {}
    # profile defaults are offered to every notebook, taken where the notebook declares them
    for key, value in (pipeline.profiles[profile].get("defaults") or {}).items():
        if key in declared:
            values[key] = value
    for source in ("all", profile):
        for key, value in (spec.params.get(source) or {}).items():
            if key not in declared:
                raise ParameterError(
                    f"pipeline.yaml sets unknown parameter {key!r} for notebook {spec.name!r}; "
                    f"it declares: {_describe(declared)}"
                )
            values[key] = value
    for key, value in (overrides or {}).items():
        values[key] = value  # unknown names were rejected by validate_overrides
    if "profile" in declared:
        values["profile"] = profile
    if data_root is not None and "data_root" in declared:
        values["data_root"] = str(data_root)
    return {k: coerce(declared[k], v, spec.name) for k, v in values.items()}


def parse_overrides(pairs: Sequence[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ParameterError(f"-p expects key=value, got {pair!r}")
        out[key.strip()] = value
    return out


def split_overrides(
    overrides: Mapping[str, str], declared: Mapping[str, Mapping[str, Parameter]]
) -> dict[str, dict[str, str]]:
    """Route ``-p`` values to notebooks. ``-p nb.key=v`` targets one notebook;
    ``-p key=v`` goes to every selected notebook declaring ``key``. A key that no
    selected notebook declares is an error listing what they do declare."""
    routed: dict[str, dict[str, str]] = {name: {} for name in declared}
    for key, value in overrides.items():
        if key in RESERVED:
            raise ParameterError(f"{key!r} is set by the pipeline: use --{key.replace('_', '-')} instead")
        nb, dot, pname = key.partition(".")
        if dot and nb in declared:
            if pname not in declared[nb]:
                raise ParameterError(
                    f"unknown parameter {pname!r} for notebook {nb!r}; allowed: {_describe(declared[nb])}"
                )
            routed[nb][pname] = value
            continue
        takers = [name for name, params in declared.items() if key in params]
        if not takers:
            allowed = "; ".join(f"{name}: {_describe(p)}" for name, p in declared.items())
            raise ParameterError(f"unknown parameter {key!r}; allowed parameters are — {allowed}")
        for name in takers:
            routed[name][key] = value
    return routed


# ---------------------------------------------------------------------- execution
@dataclass
class Job:
    name: str
    notebook: str
    output: str
    experiment: str
    profile: str
    parameters: dict[str, Any]


@dataclass
class JobResult:
    name: str
    ok: bool
    seconds: float
    run_id: str
    output: str
    error: str = ""


def plan(
    names: Sequence[str] = (),
    profile: str = "quick",
    overrides: Sequence[str] = (),
    data_root: str | None = None,
    pipeline: Pipeline | None = None,
) -> list[Job]:
    """Resolve and validate every selected notebook's parameters; execute nothing."""
    pipeline = pipeline or load_pipeline()
    if profile not in PROFILES:
        raise PipelineError(f"unknown profile {profile!r}; choose one of {list(PROFILES)}")
    if data_root is not None and not Path(data_root).is_dir():
        raise PipelineError(f"--data-root {data_root!r} does not exist or is not a directory")
    specs = pipeline.select(names)
    declared = {spec.name: notebook_parameters(spec.path) for spec in specs}
    routed = split_overrides(parse_overrides(overrides), declared)
    jobs = []
    for spec in specs:
        params = resolve_parameters(pipeline, spec, profile, routed[spec.name], data_root, declared[spec.name])
        output = results_dir() / "notebooks" / profile / f"{spec.path.stem}.ipynb"
        jobs.append(Job(spec.name, str(spec.path), str(output), spec.experiment, profile, params))
    return jobs


def _execute(job: Job) -> JobResult:
    """Run one notebook under papermill inside its pre-created MLflow run."""
    import papermill
    from mlflow.tracking import MlflowClient

    logging.basicConfig(level=logging.INFO, format=f"[{job.name}] %(message)s", force=True)
    client = MlflowClient(tracking.configure())
    exp_id = tracking.get_or_create_experiment(job.experiment)
    run = client.create_run(exp_id, run_name=f"{job.name}-{job.profile}", tags={"kind": "notebook", "profile": job.profile, "pipeline": "dla-repro run"})
    run_id = run.info.run_id
    # The kernel inherits this process's environment: hand it its run, and none
    # of the experiment/run ids MLflow may have exported for other work here.
    stale = {var: os.environ.pop(var) for var in tracking.MLFLOW_PROCESS_VARS if var in os.environ}
    os.environ[tracking.PARENT_RUN_ENV] = run_id
    os.environ[tracking.PROFILE_ENV] = job.profile
    Path(job.output).parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    error = ""
    try:
        papermill.execute_notebook(
            job.notebook,
            job.output,
            parameters=job.parameters,
            cwd=str(Path(job.notebook).parent),
            kernel_name="python3",
            log_output=True,
            progress_bar=False,
            request_save_on_cell_execute=True,
        )
    except papermill.PapermillExecutionError as exc:
        error = f"cell #{exc.cell_index}{_cell_excerpt(job.output, exc.cell_index)}: {exc.ename}: {exc.evalue}"
    except Exception as exc:  # kernel died, notebook unreadable, ...
        error = f"{type(exc).__name__}: {exc}"
    finally:
        os.environ.pop(tracking.PARENT_RUN_ENV, None)
        os.environ.update(stale)
    seconds = time.monotonic() - start
    if Path(job.output).exists():
        tracking.log_notebook(run_id, job.output)
    client.log_metric(run_id, "notebook_seconds", seconds)
    if error:
        client.set_tag(run_id, "failure", error[:5000])
    client.set_terminated(run_id, status="FAILED" if error else "FINISHED")
    return JobResult(job.name, not error, seconds, run_id, job.output, error)


def _cell_excerpt(notebook: str, index: int) -> str:
    """`` `last line of the failing cell` `` from the executed notebook, to point at the failure."""
    try:
        import nbformat

        for cell in nbformat.read(notebook, as_version=4).cells:
            if any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
                lines = cell.source.strip().splitlines()
                return f" `{lines[-1][:80]}`" if lines else ""
    except Exception:  # the excerpt is a convenience; never mask the real error
        pass
    return ""


def write_manifest(profile: str, jobs: Sequence[Job], results: Sequence[JobResult], wall: float) -> Path:
    """Merge this run into ``results/manifest_<profile>.json`` (one entry per notebook)."""
    path = results_dir() / f"manifest_{profile}.json"
    manifest = json.loads(path.read_text()) if path.exists() else {"notebooks": {}}
    git = tracking.git_state()
    by_name = {r.name: r for r in results}
    for job in jobs:
        if job.name not in by_name:
            continue
        res = by_name[job.name]
        manifest["notebooks"][job.name] = {
            "notebook": os.path.relpath(job.notebook, results_dir().parent),
            "output": os.path.relpath(res.output, results_dir().parent),
            "parameters": job.parameters,
            "status": "ok" if res.ok else "failed",
            "error": res.error,
            "wall_seconds": round(res.seconds, 1),
            "mlflow_run_id": res.run_id,
            "mlflow_experiment": job.experiment,
            "git_commit": git["git_commit"],
            "git_dirty": git["git_dirty"],
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
    manifest.update(
        profile=profile,
        last_run={"wall_seconds": round(wall, 1), "notebooks": [j.name for j in jobs]},
        hardware=tracking.hardware(),
        environment=tracking.environment(),
        tracking_uri=tracking.tracking_uri(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
    return path


def run(jobs: Sequence[Job], n_jobs: int = 1, keep_going: bool = False, echo=print) -> list[JobResult]:
    """Execute planned jobs; stop at the first failure unless ``keep_going``."""
    results: list[JobResult] = []
    total = len(jobs)
    t0 = time.monotonic()

    def report(i: int, res: JobResult) -> None:
        status = "ok" if res.ok else "FAILED"
        echo(f"[{i}/{total}] {res.name}: {status} in {res.seconds:.1f} s -> {res.output}")
        if not res.ok:
            echo(f"    notebook {res.name} failed in {res.error}")

    if n_jobs <= 1:
        for i, job in enumerate(jobs, 1):
            echo(f"[{i}/{total}] {job.name}: running {Path(job.notebook).name} ({job.profile})")
            res = _execute(job)
            results.append(res)
            report(i, res)
            if not res.ok and not keep_going:
                skipped = [j.name for j in jobs[i:]]
                if skipped:
                    echo(f"stopping: {skipped} not run (use --keep-going to run them anyway)")
                break
    else:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=n_jobs, mp_context=ctx) as pool:
            futures = {pool.submit(_execute, job): job for job in jobs}
            for job in jobs:
                echo(f"[queued] {job.name}: {Path(job.notebook).name} ({job.profile})")
            done = 0
            for fut in as_completed(futures):
                if fut.cancelled():
                    continue
                res = fut.result()
                done += 1
                results.append(res)
                report(done, res)
                if not res.ok and not keep_going:
                    cancelled = [futures[f].name for f in futures if f.cancel()]
                    if cancelled:
                        echo(f"stopping: {cancelled} not run (use --keep-going to run them anyway)")
    write_manifest(jobs[0].profile if jobs else "quick", jobs, results, time.monotonic() - t0)
    return results
