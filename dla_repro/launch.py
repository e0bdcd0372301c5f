"""``dla-repro train``: a pipeline entry's trainings on several processes, under ``torchrun`` (DDP).

    dla-repro train dla_segmentation --profile paper --data-root /data -p batch_size=16 --nproc 4
    # runs: python -m torch.distributed.run --standalone --nproc-per-node 4 --max-restarts 0 \\
    #           -m dla_repro.launch dla_segmentation --profile paper --data-root /data -p batch_size=16

    # two machines, 8 GPUs each: the same command on both, HOST being the first one
    dla-repro train dla_segmentation --profile paper --nproc 8 --nnodes 2 --node-rank R \\
        --rdzv-backend c10d --rdzv-endpoint HOST:29400

``--dry-run`` prints the ``torchrun`` command instead of running it. Parameters
(``-p``, ``--profile``, ``--data-root``, ``--resume``) are those of ``dla-repro
run`` and are checked before any process starts; ``batch_size`` is the **global**
batch and must be a multiple of the number of processes (each reads
``batch_size / N`` per update, see ``engine.distributed.per_rank_batch``).

**What each rank runs.** ``python -m dla_repro.launch`` (this module's
:func:`main`) on every rank executes the entry's *notebook*, through the same
path as ``dla-repro run`` (``pipeline.plan`` + ``pipeline.run``): the notebook's
kernel inherits torchrun's ``RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR`` variables,
and its first ``fit`` joins the process group (``engine.distributed.setup``).

* **Rank 0 is ``dla-repro run``**: its execution is the one recorded -- the
  notebook run in MLflow and every sweep and training run under it, the
  checkpoints, the executed notebook, ``results/``, the manifest, the terminal's
  progress lines. A failed or interrupted job leaves the same traces as a failed
  or interrupted ``dla-repro run`` (runs marked FAILED / KILLED, checkpoints kept),
  and ``--resume`` continues it the same way.
* **Every other rank executes the same notebook in a private scratch root**
  (MLflow store, results, checkpoints in a temporary folder, deleted when it ends;
  its log in ``logs/rank<k>/<profile>/``). ``fit`` itself never logs, checkpoints
  or reports off rank 0, and on resume it receives rank 0's checkpoint through the
  process group; whatever else the notebook writes on those ranks (figures,
  tables, its own runs) duplicates rank 0's and is thrown away. Its terminal
  output is only a failure line.
* Sweeps train one configuration at a time under DDP, in the rank's own process
  (``engine.sweep`` forces ``workers=1`` and the local executor): the ranks train
  each (trial, seed) together.
* One rank failing -- an exception, a dead kernel, a kill -- fails the job:
  torchrun (``--max-restarts 0``) stops the other ranks with SIGTERM, which each
  rank takes like Ctrl-C (its runs are marked KILLED), and exits non-zero. A
  collective whose peer died also fails at once on gloo (the peer's socket
  closes), so rank 0's runs are closed as FAILED or KILLED, never left RUNNING.

**Why the notebook rather than a separate study script.** A study is written
once, in its notebook: the cells choose the data, build the trial table,
pre-register the claims, train, evaluate and draw. A second, non-notebook entry
per paper would repeat that sequence in another place that could drift from the
notebook; executing the notebook keeps ``dla-repro train X`` the same experiment
as ``dla-repro run X``, with the same parameter checks, MLflow layout, resume and
results. All ranks must reach every collective (each ``fit``, each sharded
evaluation) in the same order, so every rank has to run the same code anyway;
executing the whole notebook on each rank is the simplest way to guarantee it.
The price is that ranks other than 0 also compute the notebook's non-training
cells (figures, tables): small next to training.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from . import pipeline

RENDEZVOUS_BACKENDS = ("c10d", "static")


# ------------------------------------------------------------------- the launcher
def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """What a rank needs to plan its job: the arguments ``dla-repro run`` takes for one execution."""
    p.add_argument("names", nargs="+", metavar="NAME", help="pipeline entries (notebook names in pipeline.yaml, "
                                                            "or their notebook's path)")
    p.add_argument("--profile", choices=pipeline.PROFILES, default="quick")
    p.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                   help="override a parameter (NOTEBOOK.KEY=VALUE targets one notebook)")
    p.add_argument("--data-root", help="root folder of a real dataset (passed as data_root)")
    p.add_argument("--resume", action="store_true",
                   help="continue the latest interrupted execution (same parameters) from its checkpoints")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``dla-repro train``'s arguments."""
    add_run_arguments(p)
    p.add_argument("--nproc", type=int, default=1, help="processes on this machine, one per GPU (torchrun "
                                                        "--nproc-per-node); on CPU each uses the gloo backend")
    p.add_argument("--nnodes", type=int, default=1, help="machines taking part (torchrun --nnodes)")
    p.add_argument("--node-rank", type=int, default=0, help="this machine's rank, 0 .. nnodes-1")
    p.add_argument("--rdzv-backend", choices=RENDEZVOUS_BACKENDS, default="c10d",
                   help="torchrun's rendezvous (several machines)")
    p.add_argument("--rdzv-endpoint", default="", metavar="HOST:PORT",
                   help="where the machines meet, e.g. the first machine's HOST:29400 (several machines)")
    p.add_argument("--rdzv-id", default="", help="a job id shared by every machine (torchrun --rdzv-id)")
    p.add_argument("--dry-run", action="store_true", help="print the torchrun command, start nothing")


def resolve_names(names: list[str], pipe: pipeline.Pipeline) -> list[str]:
    """Entry names, accepting a notebook's path for its entry."""
    by_path = {spec.path: spec.name for spec in pipe.notebooks}
    out = []
    for name in names:
        path = Path(name).expanduser()
        if name.endswith(".ipynb") and path.resolve() in by_path:
            out.append(by_path[path.resolve()])
        else:
            out.append(name)
    return out


def rank_arguments(args: argparse.Namespace) -> list[str]:
    """The arguments of ``python -m dla_repro.launch`` on every rank."""
    out = [*args.names, "--profile", args.profile]
    for pair in args.param:
        out += ["-p", pair]
    if args.data_root:
        out += ["--data-root", str(args.data_root)]
    if args.resume:
        out.append("--resume")
    if getattr(args, "pipeline", None):
        out += ["--pipeline", str(Path(args.pipeline).resolve())]
    return out


def torchrun_command(args: argparse.Namespace) -> list[str]:
    """``python -m torch.distributed.run ... -m dla_repro.launch ...`` for ``args`` (no restarts)."""
    cmd = [sys.executable, "-m", "torch.distributed.run"]
    if args.nnodes == 1 and not args.rdzv_endpoint:
        cmd.append("--standalone")  # a local rendezvous on a free port
    else:
        cmd += ["--nnodes", str(args.nnodes), "--node-rank", str(args.node_rank),
                "--rdzv-backend", args.rdzv_backend, "--rdzv-endpoint", args.rdzv_endpoint]
        if args.rdzv_id:
            cmd += ["--rdzv-id", args.rdzv_id]
    return [*cmd, "--nproc-per-node", str(args.nproc), "--max-restarts", "0",
            "-m", "dla_repro.launch", *rank_arguments(args)]


def check(args: argparse.Namespace) -> list[pipeline.Job]:
    """The jobs every rank will run, validated here before any process starts (``PipelineError``)."""
    if args.nproc < 1 or args.nnodes < 1:
        raise pipeline.PipelineError(f"--nproc {args.nproc} --nnodes {args.nnodes}: both must be at least 1")
    if args.nnodes > 1 and not args.rdzv_endpoint:
        raise pipeline.PipelineError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT (the same on every machine)")
    if not 0 <= args.node_rank < args.nnodes:
        raise pipeline.PipelineError(f"--node-rank {args.node_rank}: expected 0 .. {args.nnodes - 1}")
    pipe = pipeline.load_pipeline(args.pipeline)
    args.names = resolve_names(args.names, pipe)
    jobs = pipeline.plan(args.names, args.profile, args.param, args.data_root, pipeline=pipe, resume=args.resume)
    pipeline.check_machine(pipe, args.profile)
    world = args.nproc * args.nnodes
    for job in jobs:
        declared = pipeline.notebook_parameters(Path(job.notebook)).get("batch_size")
        batch = job.parameters.get("batch_size", declared.default if declared is not None else None)
        if isinstance(batch, int) and batch % world:
            raise pipeline.PipelineError(
                f"{job.name}: batch_size={batch} is the global batch and must split evenly over the {world} "
                f"processes; choose a multiple of {world} (-p batch_size=...)")
    return jobs


def train(args: argparse.Namespace) -> int:
    """``dla-repro train``: check, then run ``torchrun`` and return its exit status."""
    jobs = check(args)
    cmd = torchrun_command(args)
    if args.dry_run:
        print(shlex.join(cmd))
        return 0
    world = args.nproc * args.nnodes
    print(f"dla-repro: {len(jobs)} notebook(s), profile {args.profile!r}, {world} process(es) "
          f"({args.nproc} on this machine) under torchrun", flush=True)
    proc = subprocess.Popen(cmd)

    def forward(signum, frame):  # a scheduler's SIGTERM: torchrun stops the ranks, which close their runs
        proc.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    interrupted = False
    try:
        while True:
            try:
                status = proc.wait()
                return 130 if interrupted else status  # as dla-repro run after Ctrl-C
            except KeyboardInterrupt:  # Ctrl-C reached torchrun too (same process group): wait for the ranks
                interrupted = True
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------------- each rank
_SCRATCH_VARS = {
    "DLA_REPRO_ARTIFACTS": "artifacts",
    "DLA_REPRO_RESULTS": "results",
    "DLA_REPRO_CHECKPOINTS": "checkpoints",
}


def _run_rank0(args: argparse.Namespace) -> int:
    from . import recovery, tracking

    pipe = pipeline.load_pipeline(args.pipeline)
    jobs = pipeline.plan(args.names, args.profile, args.param, args.data_root, pipeline=pipe, resume=args.resume)
    for job in jobs:
        for warning in job.warnings:
            print(f"dla-repro: warning: {warning}", file=sys.stderr)
    problem = recovery.preflight()
    if problem is not None:
        print(f"dla-repro: error: {problem}; nothing was run", file=sys.stderr)
        return 2
    world = os.environ.get("WORLD_SIZE", "1")
    print(f"dla-repro: rank 0 of {world}: MLflow store {tracking.tracking_uri()}"
          + (" (resuming)" if args.resume else ""), flush=True)
    results = pipeline.run(jobs)
    return _status(results, jobs, args)


def _run_other_rank(args: argparse.Namespace, rank: int) -> int:
    from .execution import Console
    from .paths import logs_dir

    logs = logs_dir() / f"rank{rank}"
    scratch = Path(tempfile.mkdtemp(prefix=f"dla_repro_rank{rank}_"))
    os.environ.update({var: str(scratch / sub) for var, sub in _SCRATCH_VARS.items()})
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_empty_store(scratch / 'mlflow.db')}"
    os.environ["DLA_REPRO_LOGS"] = str(logs)
    console = Console()

    def echo(line: str = "") -> None:  # only what says a notebook failed on this rank
        if "FAILED" in line or " failed in " in line or "INTERRUPTED" in line:
            console(f"dla-repro[rank {rank}]: {line.strip()}")

    try:
        pipe = pipeline.load_pipeline(args.pipeline)
        jobs = pipeline.plan(args.names, args.profile, args.param, args.data_root, pipeline=pipe,
                             resume=args.resume)
        results = pipeline.run(jobs, echo=echo)
        return _status(results, jobs, args, quiet=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _empty_store(path: Path) -> Path:
    """A new, empty MLflow SQLite store at ``path``: a copy of one made once per user and MLflow version in
    the temporary folder (creating a store runs MLflow's schema migrations: about 10 s on a busy CPU)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from .tracking import _file_lock

    template = Path(tempfile.gettempdir()) / f"dla_repro-empty-mlflow-{mlflow.__version__}-{os.getuid()}.db"
    with _file_lock(template.with_name(template.name + ".lock")):
        if not template.exists():
            fresh = template.with_name(f"{template.name}.{os.getpid()}.tmp")
            fresh.unlink(missing_ok=True)
            MlflowClient(f"sqlite:///{fresh}").search_experiments(max_results=1)
            os.replace(fresh, template)
    shutil.copyfile(template, path)
    return path


def _status(results: list[pipeline.JobResult], jobs: list[pipeline.Job], args: argparse.Namespace,
            quiet: bool = False) -> int:
    failed = [r for r in results if r.status == pipeline.FAILED]
    interrupted = [r for r in results if r.status == pipeline.INTERRUPTED]
    if interrupted:
        if not quiet:
            names = " ".join(r.name for r in interrupted)
            print(f"dla-repro: interrupted during {names}: its runs are marked KILLED, results/ is unchanged; "
                  f"continue with the same dla-repro train command and --resume", flush=True)
        return 130
    if not quiet:
        print(f"dla-repro: {len(results) - len(failed)} ok, {len(failed)} failed, "
              f"{len(jobs) - len(results)} not run", flush=True)
    return 1 if failed or len(results) < len(jobs) else 0


def main(argv: list[str] | None = None) -> int:
    """One rank of ``dla-repro train`` (what torchrun starts): rank 0 records, the others compute."""
    parser = argparse.ArgumentParser(prog="python -m dla_repro.launch", description="one rank of dla-repro train")
    add_run_arguments(parser)
    parser.add_argument("--pipeline", type=Path, default=None)
    args = parser.parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    from .interrupts import sigterm_as_interrupt  # torchrun stops the other ranks with SIGTERM when one fails

    rank = int(os.environ.get("RANK", "0"))
    try:
        with sigterm_as_interrupt():
            return _run_rank0(args) if rank == 0 else _run_other_rank(args, rank)
    except pipeline.PipelineError as exc:
        print(f"dla-repro[rank {rank}]: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
