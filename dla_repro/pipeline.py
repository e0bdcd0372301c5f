"""The papermill pipeline behind ``dla-repro run`` and ``make reproduce``.

``notebooks/pipeline.yaml`` says which notebooks run, in which order, and with
which parameters per profile; an entry may also name the ``paper`` it reproduces
(the report's grouping) and the ``module`` declaring its claims (what
``experiments.rejudge`` imports; checked here only to be a dotted name). Parameters resolve, lowest precedence first, as

    notebook defaults  <  profile defaults  <  the notebook's per-profile values  <  ``-p``

and are **validated against each notebook's ``parameters`` cell before anything
executes**: an unknown name, or a value that does not fit the annotated type, is a
``ParameterError`` naming the parameter and listing the allowed ones (papermill
itself would only warn and run anyway).

Each execution gets an MLflow run created here, whose id reaches the notebook's
kernel through ``DLA_REPRO_PARENT_RUN_ID`` (see ``tracking.start_notebook_run``);
after papermill finishes, the executed notebook is logged to that same run and
the run's status set. Executed notebooks go to ``results/notebooks/<profile>/``
and one entry per notebook to ``results/manifest_<profile>.json``.

Executions are independent of each other (see ``execution`` and ``recovery``):
each has its own checkpoint folder (``checkpoints/<experiment>/<run id>/``) and
its own staging folder for results, promoted to ``results/`` only on success, so
any number can run at once on one clone. Ctrl-C (or SIGTERM) ends the command with
one line and marks the execution's open runs KILLED; runs left RUNNING by a killed
process are closed by the next ``dla-repro run``; ``--resume`` continues the latest
interrupted execution of a notebook with the same parameters, in the same runs.
"""

from __future__ import annotations

import ast
import contextlib
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from . import interrupts, tracking
from .execution import Console, ProgressTail, folder_size, output_to_log, promote, staging_dir, update_manifest
from .paths import notebooks_dir, results_dir

PROFILES = ("smoke", "quick", "extended", "paper", "gpu")
REQUIRED_PROFILES = ("smoke", "quick", "paper")  # a pipeline file must define these; `extended` and `gpu` are optional
REQUIREMENTS = ("cuda",)  # what a profile may require of the machine (its `requires:`)
RESERVED = {"profile", "data_root", "resume"}  # filled in by the pipeline itself (--profile, --data-root, --resume)


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
    paper: str = ""  # the paper it reproduces, as the report names it ("" for none)
    module: str = ""  # the dotted name of the experiment module declaring its claims ("" when it judges none)


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


_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")  # a module's dotted name; imported only when used


def load_pipeline(path: Path | None = None) -> Pipeline:
    path = path or notebooks_dir() / "pipeline.yaml"
    if not path.exists():
        raise PipelineError(f"pipeline file not found: {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    profiles = raw.get("profiles", {})
    missing = [p for p in REQUIRED_PROFILES if p not in profiles]
    if missing:
        raise PipelineError(f"{path}: profiles {missing} are not defined")
    notebooks = []
    for entry in raw.get("notebooks", []):
        bad = set(entry.get("params", {})) - set(PROFILES) - {"all"}
        if bad:
            raise PipelineError(f"{path}: notebook {entry['name']!r} has params for unknown profiles {sorted(bad)}")
        module = entry.get("module") or ""
        if not (isinstance(module, str) and (not module or _DOTTED.fullmatch(module))):
            raise PipelineError(f"{path}: notebook {entry['name']!r} has module {module!r}; expected a dotted "
                                "module name such as dla_repro.experiments.dla.segmentation")
        notebooks.append(
            NotebookSpec(
                name=entry["name"],
                path=(path.parent / entry["path"]).resolve(),
                experiment=entry.get("experiment", entry["name"]),
                params=entry.get("params", {}) or {},
                description=entry.get("description", ""),
                paper=str(entry.get("paper") or ""),
                module=module,
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


def check_machine(pipeline: Pipeline, profile: str, cuda: bool | None = None) -> None:
    """A :class:`PipelineError` when this machine lacks what ``profile`` requires (its ``requires:`` in the
    pipeline file; ``cuda``: a CUDA device, e.g. the ``gpu`` profile) -- raised before anything runs."""
    required = (pipeline.profiles.get(profile) or {}).get("requires")
    if required is None:
        return
    if required not in REQUIREMENTS:
        raise PipelineError(f"profile {profile!r} requires {required!r}; known requirements: {list(REQUIREMENTS)}")
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if not cuda:
        raise PipelineError(f"profile {profile!r} needs a CUDA device and this machine has none "
                            "(torch.cuda.is_available() is False); nothing was run")


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
    resume: bool = False,
) -> dict[str, Any]:
    """Typed, validated parameters for one notebook (see the module docstring for precedence)."""
    if profile not in PROFILES:
        raise PipelineError(f"unknown profile {profile!r}; choose one of {list(PROFILES)}")
    declared = declared if declared is not None else notebook_parameters(spec.path)
    values: dict[str, Any] = {}
    # profile defaults are offered to every notebook, taken where the notebook declares them
    if profile not in pipeline.profiles:
        raise PipelineError(f"profile {profile!r} is not defined in the pipeline file (it defines "
                            f"{sorted(pipeline.profiles)})")
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
    if resume and "resume" in declared:
        values["resume"] = True
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
    resume: bool = False
    warnings: list[str] = field(default_factory=list)


OK, FAILED, INTERRUPTED = "ok", "failed", "interrupted"


@dataclass
class JobResult:
    name: str
    status: str  # ok | failed | interrupted
    seconds: float
    run_id: str
    output: str  # the executed notebook: under results/ when ok, else beside the log
    error: str = ""
    started_at: str = ""
    finished_at: str = ""
    log: str = ""
    resumed: bool = False
    kept_checkpoints: int = 0  # bytes left for --resume (failed / interrupted executions)

    @property
    def ok(self) -> bool:
        return self.status == OK


def plan(
    names: Sequence[str] = (),
    profile: str = "quick",
    overrides: Sequence[str] = (),
    data_root: str | None = None,
    pipeline: Pipeline | None = None,
    resume: bool = False,
) -> list[Job]:
    """Resolve and validate every selected notebook's parameters; execute nothing.

    A ``data_root`` given to a notebook that reads synthetic data is reported in
    the job's ``warnings`` (it would be silently ignored).
    """
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
        params = resolve_parameters(pipeline, spec, profile, routed[spec.name], data_root, declared[spec.name],
                                    resume=resume)
        output = results_dir() / "notebooks" / profile / f"{spec.path.stem}.ipynb"
        warnings = []
        if data_root is not None:
            dataset = params.get("dataset", declared[spec.name].get("dataset", Parameter("", "", None, "")).default)
            if "data_root" not in declared[spec.name]:
                warnings.append(f"{spec.name} reads no dataset from disk: --data-root is not used")
            elif isinstance(dataset, str) and dataset.startswith("synthetic"):
                warnings.append(f"{spec.name} uses dataset={dataset!r}: --data-root {data_root} is ignored "
                                f"(choose a real dataset with -p {spec.name}.dataset=NAME)")
        jobs.append(Job(spec.name, str(spec.path), str(output), spec.experiment, profile, params, resume, warnings))
    return jobs


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _logged_parameters(params: Mapping[str, Any]) -> dict[str, Any]:
    from .notebook import NOT_LOGGED

    return {k: v for k, v in params.items() if k not in NOT_LOGGED}


@interrupts.deferred()
def _open_run(job: Job, echo: Callable[[str], None]):
    """The notebook run of this execution: the interrupted one to continue (``job.resume``) or a new one."""
    from mlflow.tracking import MlflowClient

    from . import recovery

    client = MlflowClient(tracking.configure())
    exp_id = tracking.get_or_create_experiment(job.experiment)
    previous = None
    if job.resume:
        previous = recovery.find_resumable(job.experiment, job.profile, _logged_parameters(job.parameters))
        if previous is None:
            echo(f"    {job.name}: no interrupted execution with these parameters to resume; starting a new one")
    if previous is not None:
        run_id = previous.info.run_id
        client.update_run(run_id, status="RUNNING")
        echo(f"    {job.name}: resuming run {run_id} (status was {previous.info.status})")
    else:
        run_id = client.create_run(exp_id, run_name=f"{job.name}-{job.profile}", tags={
            "kind": "notebook", "profile": job.profile, "pipeline": "dla-repro run",
            "notebook": os.path.relpath(job.notebook, notebooks_dir())}).info.run_id
    for key, value in tracking.owner_tags(run_id).items():
        client.set_tag(run_id, key, value)
    return client, exp_id, run_id, previous is not None


def _kernel_env(job: Job, run_id: str, staging: Path, progress_file: Path) -> dict[str, str]:
    """What the notebook's kernel is told through its environment."""
    from .engine.progress import PROGRESS_ENV
    from .paths import WORKDIR_ENV, execution_dir

    return {
        tracking.PARENT_RUN_ENV: run_id,
        tracking.PROFILE_ENV: job.profile,
        WORKDIR_ENV: str(execution_dir(job.experiment, run_id)),
        "DLA_REPRO_RESULTS": str(staging),  # outputs land in results/ only if the execution succeeds
        PROGRESS_ENV: str(progress_file),
    }


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    # The kernel inherits this process's environment: hand it its run, and none of
    # the experiment/run ids MLflow may have exported for other work here.
    saved = {var: os.environ.get(var) for var in (*values, *tracking.MLFLOW_PROCESS_VARS)}
    for var in tracking.MLFLOW_PROCESS_VARS:
        os.environ.pop(var, None)
    os.environ.update(values)
    try:
        yield
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Ctrl-C ignored while an interrupted execution records what happened (a second Ctrl-C
    would otherwise leave runs open and the manifest unwritten)."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _execute(job: Job, echo: Callable[[str], None] | None = None) -> JobResult:
    """Run one notebook under papermill inside its MLflow run; never raises for a notebook's failure.

    The kernel writes into a staging folder (promoted to ``results/`` on success),
    keeps checkpoints in the execution's own folder (removed on success, kept for
    ``--resume`` otherwise), and its console output goes to ``logs/<profile>/``;
    the terminal gets one progress line per epoch. Ctrl-C ends the execution as
    ``interrupted``: its runs are marked KILLED.
    """
    import papermill

    from . import recovery
    from .paths import execution_dir, logs_dir

    echo = echo or Console()
    started_at, start = _now(), time.monotonic()
    client, exp_id, run_id, resumed = _open_run(job, echo)
    key = f"{job.name}-{run_id[:8]}-{os.getpid()}"
    staging = staging_dir(key)
    staged_output = staging / Path(job.output).relative_to(results_dir())
    staged_output.parent.mkdir(parents=True, exist_ok=True)
    log = logs_dir() / job.profile / f"{job.name}-{run_id[:8]}.log"
    progress_file = log.with_suffix(".progress")
    status, error = OK, ""
    _asyncio_messages_to(log)
    with _environment(_kernel_env(job, run_id, staging, progress_file)), \
            ProgressTail(progress_file, echo, prefix=f"    [{job.name}] "):
        try:
            with output_to_log(log):
                logging.basicConfig(level=logging.INFO, format=f"[{job.name}] %(message)s", force=True)
                papermill.execute_notebook(
                    job.notebook, str(staged_output), parameters=job.parameters,
                    cwd=str(Path(job.notebook).parent), kernel_name="python3",
                    log_output=True, progress_bar=False, request_save_on_cell_execute=True,
                )
        except papermill.PapermillExecutionError as exc:
            status, error = FAILED, f"cell #{exc.cell_index}{failing_line(exc)}: {exc.ename}: {exc.evalue}"
        except KeyboardInterrupt:
            status, error = INTERRUPTED, "interrupted (Ctrl-C or SIGTERM)"
        except Exception as exc:  # kernel died, notebook unreadable, ...
            status, error = FAILED, f"{type(exc).__name__}: {exc}"
            if _kernel_died(exc):
                error += (" -- the notebook's kernel died; running out of memory is the likely cause "
                          "(lower batch_size / image_size, run fewer --jobs, check `dmesg`)")
    with _interrupts_deferred():
        seconds = time.monotonic() - start
        if staged_output.exists():
            tracking.log_notebook(run_id, staged_output)
        client.log_metric(run_id, "notebook_seconds", seconds)
        work = execution_dir(job.experiment, run_id)
        kept = 0
        if status == OK:
            promote(staging)
            output = job.output
            if not os.environ.get("DLA_REPRO_KEEP_CHECKPOINTS"):
                shutil.rmtree(work, ignore_errors=True)
                with contextlib.suppress(OSError):
                    work.parent.rmdir()  # the experiment's folder, if no other execution uses it
        else:
            # Keep the partial notebook beside the log; results/ keeps the last good outputs.
            output = str(log.with_suffix(".ipynb"))
            if staged_output.exists():
                os.replace(staged_output, output)
            shutil.rmtree(staging, ignore_errors=True)
            run_status = "KILLED" if status == INTERRUPTED else "FAILED"
            recovery.close_execution_runs(exp_id, run_id, run_status, f"execution {status}: {error}")
            client.set_tag(run_id, "failure", error[:5000])
            kept = folder_size(work)
        client.set_terminated(run_id, status={OK: "FINISHED", FAILED: "FAILED", INTERRUPTED: "KILLED"}[status])
        result = JobResult(job.name, status, seconds, run_id, output, error, started_at, _now(),
                           _shown(log), resumed, kept)
        record(job, result)
    return result


def _asyncio_messages_to(log: Path) -> None:
    """Send the ``asyncio`` logger's messages to ``log`` only, not to the terminal.

    When Ctrl-C stops papermill, jupyter_client's pending tasks end with ``DeadKernelError``;
    asyncio reports them ("Task exception was never retrieved", with a traceback) whenever they
    are garbage-collected -- possibly after the console is restored. They belong in the
    execution's log, not on the one-line interrupt report.
    """
    logger = logging.getLogger("asyncio")
    for handler in [h for h in logger.handlers if getattr(h, "_dla_repro", False)]:
        logger.removeHandler(handler)
        handler.close()
    handler = logging.FileHandler(log, delay=True)
    handler._dla_repro = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.propagate = False


def _kernel_died(exc: BaseException) -> bool:
    name = type(exc).__name__
    return name == "DeadKernelError" or "kernel died" in str(exc).lower()


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def failing_line(exc: Any) -> str:
    """`` line N `code` `` of the cell line that raised, from the error's IPython traceback ("" if not found).

    IPython marks the executing line of each frame with an arrow (``----> 12 fit(...)``);
    the first arrow is in the cell itself.
    """
    for text in getattr(exc, "traceback", None) or []:
        for line in _ANSI.sub("", text).splitlines():
            match = re.match(r"^\s*-+>\s*(\d+)\s(.*)$", line)
            if match:
                return f" line {match.group(1)} `{match.group(2).strip()[:100]}`"
    return ""


def _shown(path: Path | str) -> str:
    """``path`` relative to the repository when under it (what a manifest in git may show)."""
    from .paths import repo_root

    try:
        return str(Path(path).resolve().relative_to(repo_root()))
    except ValueError:
        return str(path)


def record(job: Job, res: JobResult) -> Path:
    """Write this execution into ``results/manifest_<profile>.json`` now (real per-notebook times).

    A failed or interrupted execution does not replace the outputs in ``results/``:
    its entry says so, and ``results_from`` names the execution they come from.
    """
    git = tracking.git_state()

    def change(manifest: dict) -> None:
        previous = manifest["notebooks"].get(job.name, {})
        entry = {
            "notebook": os.path.relpath(job.notebook, results_dir().parent),
            "output": _shown(res.output),
            "parameters": job.parameters,
            "status": res.status,
            "error": res.error,
            "wall_seconds": round(res.seconds, 1),
            "started_at": res.started_at,
            "finished_at": res.finished_at,
            "resumed": res.resumed,
            "mlflow_run_id": res.run_id,
            "mlflow_experiment": job.experiment,
            "git_commit": git["git_commit"],
            "git_dirty": git["git_dirty"],
            "log": res.log,
        }
        if not res.ok and previous:
            origin = previous.get("results_from") or (
                {k: previous.get(k) for k in ("mlflow_run_id", "finished_at", "git_commit")}
                if previous.get("status") == OK else None)
            if origin:
                entry["results_from"] = origin
        manifest["notebooks"][job.name] = entry
        manifest.update(profile=job.profile, hardware=tracking.hardware(), environment=tracking.environment(),
                        tracking_uri=_shown_uri(tracking.tracking_uri()))

    return update_manifest(job.profile, change)


def _shown_uri(uri: str) -> str:
    db = tracking._sqlite_path(uri)
    return f"sqlite:///{_shown(db)}" if db is not None else tracking.redacted_uri(uri)


def write_manifest(profile: str, jobs: Sequence[Job], results: Sequence[JobResult], wall: float) -> Path:
    """Record the pipeline run itself (each notebook's entry was written when it ended)."""
    def change(manifest: dict) -> None:
        manifest.update(profile=profile, last_run={
            "wall_seconds": round(wall, 1), "notebooks": [j.name for j in jobs],
            "status": {r.name: r.status for r in results},
            "not_run": [j.name for j in jobs if j.name not in {r.name for r in results}],
        })

    return update_manifest(profile, change)


def close_stale(jobs: Sequence[Job], echo: Callable[[str], None]) -> None:
    """Close runs of these notebooks' experiments left RUNNING by processes that are gone."""
    from mlflow.tracking import MlflowClient

    from . import recovery

    client = MlflowClient(tracking.configure())
    ids = [e.experiment_id for e in (client.get_experiment_by_name(j.experiment) for j in jobs) if e is not None]
    closed = recovery.close_stale_runs(dict.fromkeys(ids))
    if closed:
        echo(f"dla-repro: marked {len(closed)} run(s) KILLED that a killed process had left RUNNING")


def _worker(job: Job) -> JobResult:
    """``_execute`` in a pool worker: a Ctrl-C reaches the worker too and ends its job as interrupted."""
    return _execute(job, Console())


def run(jobs: Sequence[Job], n_jobs: int = 1, keep_going: bool = False,
        echo: Callable[[str], None] | None = None) -> list[JobResult]:
    """Execute planned jobs; stop at the first failure unless ``keep_going``; stop at an interrupt.

    Each notebook's manifest entry is written when it ends; the pipeline's own line
    reports each one. Returns the results of the jobs that ran.
    """
    echo = echo or Console()
    results: list[JobResult] = []
    total = len(jobs)
    t0 = time.monotonic()
    if jobs:
        close_stale(jobs, echo)

    def report(i: int, res: JobResult) -> None:
        label = {OK: "ok", FAILED: "FAILED", INTERRUPTED: "INTERRUPTED"}[res.status]
        where = res.output if res.ok else f"partial notebook {res.output}, log {res.log}"
        echo(f"[{i}/{total}] {res.name}: {label} in {res.seconds:.1f} s -> {where}")
        if res.status == FAILED:
            echo(f"    notebook {res.name} failed in {res.error}")
        if not res.ok and res.kept_checkpoints:
            echo(f"    checkpoints kept for --resume: {res.kept_checkpoints / 1e6:.1f} MB")

    def stop_after(i: int, res: JobResult) -> bool:
        rest = [j.name for j in jobs[i:]]
        if res.status == INTERRUPTED:
            if rest:
                echo(f"stopping: {rest} not run")
            return True
        if not res.ok and not keep_going:
            if rest:
                echo(f"stopping: {rest} not run (use --keep-going to run them anyway)")
            return True
        return False

    try:
        if n_jobs <= 1:
            for i, job in enumerate(jobs, 1):
                echo(f"[{i}/{total}] {job.name}: running {Path(job.notebook).name} ({job.profile})")
                res = _execute(job, echo)
                results.append(res)
                report(i, res)
                if stop_after(i, res):
                    break
        else:
            _run_parallel(jobs, n_jobs, keep_going, echo, results, report)
    finally:
        write_manifest(jobs[0].profile if jobs else "quick", jobs, results, time.monotonic() - t0)
    return results


def _run_parallel(jobs, n_jobs, keep_going, echo, results, report) -> None:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=n_jobs, mp_context=ctx) as pool:
        futures = {pool.submit(_worker, job): job for job in jobs}
        for job in jobs:
            echo(f"[queued] {job.name}: {Path(job.notebook).name} ({job.profile})")
        done = 0
        try:
            for fut in as_completed(futures):
                if fut.cancelled():
                    continue
                res = fut.result()
                done += 1
                results.append(res)
                report(done, res)
                if res.status == INTERRUPTED or (not res.ok and not keep_going):
                    cancelled = [futures[f].name for f in futures if f.cancel()]
                    if cancelled:
                        echo(f"stopping: {cancelled} not run")
        except KeyboardInterrupt:
            # The workers got the same Ctrl-C: let them record their executions as interrupted.
            with _interrupts_deferred():
                for f in futures:
                    f.cancel()
                for f, job in futures.items():
                    if not f.cancelled():
                        with contextlib.suppress(Exception):
                            res = f.result()
                            results.append(res)
                            report(len(results), res)
