"""``dla-repro``: run the notebook pipeline, list its parameters, open the MLflow UI, benchmark, report.

    dla-repro list [--profile P]
    dla-repro run [NAME ...] [--profile P] [-p key=value ...] [--data-root DIR] [--jobs N] [--keep-going] [--resume]
                  [--executor {local,ray}] [--address HOST:PORT]
    dla-repro train NAME ... --nproc N [--nnodes M --node-rank R --rdzv-endpoint HOST:PORT] [run's options]
    dla-repro ui [--host 127.0.0.1] [--port 5000]
    dla-repro ui --serve --backend-store-uri postgresql://USER@HOST:PORT/DB --artifacts-destination DIR [...]
    dla-repro bench {models,kernels,data,pipeline,all,readme,synthetic} [--preset P] [--op NAME ...] [...]
    dla-repro report [--profile P]
    dla-repro replication OTHER_RESULTS [--reference DIR] [--profile P]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from . import interrupts, launch, pipeline, tracking


def _cmd_list(args: argparse.Namespace) -> int:
    pipe = pipeline.load_pipeline(args.pipeline)
    for spec in pipe.select(args.names):
        params = pipeline.notebook_parameters(spec.path)
        resolved = pipeline.resolve_parameters(pipe, spec, args.profile, declared=params)
        rel = os.path.relpath(spec.path)
        print(f"{spec.name}  ({rel}, MLflow experiment {spec.experiment!r})")
        if spec.description:
            print(f"    {spec.description}")
        width = max((len(n) for n in params), default=0)
        for name, p in params.items():
            value = resolved.get(name, p.default)
            mark = "" if value == p.default else f"   [{args.profile}: {value!r}]"
            help_ = f"  # {p.help}" if p.help else ""
            print(f"    {name:<{width}} : {p.type:<10} = {p.default!r}{mark}{help_}")
        print()
    return 0


def executor_environ(args: argparse.Namespace) -> dict[str, str]:
    """What ``--executor`` / ``--address`` tell the notebooks' sweeps, through their kernels' environment."""
    from .engine import executors

    if args.address and args.executor != "ray":
        raise pipeline.PipelineError("--address HOST:PORT names a Ray cluster: use it with --executor ray")
    values = {executors.EXECUTOR_ENV: args.executor} if args.executor else {}
    if args.executor == "ray":
        executors.import_ray()  # not installed: say so before anything runs
        if args.address:
            values[executors.ADDRESS_ENV] = args.address
    return values


def _cmd_run(args: argparse.Namespace) -> int:
    from unittest import mock

    from . import recovery

    try:
        executor = executor_environ(args)
    except ImportError as exc:
        print(f"dla-repro: error: {exc}; nothing was run", file=sys.stderr)
        return 2
    pipe = pipeline.load_pipeline(args.pipeline)
    jobs = pipeline.plan(args.names, args.profile, args.param, args.data_root, pipeline=pipe, resume=args.resume)
    pipeline.check_machine(pipe, args.profile)
    for job in jobs:
        for warning in job.warnings:
            print(f"dla-repro: warning: {warning}", file=sys.stderr)
    problem = recovery.preflight()
    if problem is not None:
        print(f"dla-repro: error: {problem}; nothing was run (start the server, or unset MLFLOW_TRACKING_URI "
              f"to use the repository's store)", file=sys.stderr)
        return 2
    store = tracking.redacted_uri(tracking.tracking_uri())
    print(f"dla-repro: {len(jobs)} notebook(s), profile {args.profile!r}, MLflow store {store}"
          + (" (resuming)" if args.resume else "")
          + (f", sweeps as Ray tasks on {args.address or 'a local Ray instance per notebook'}"
             if args.executor == "ray" else ""))
    with interrupts.sigterm_as_interrupt(), mock.patch.dict(os.environ, executor) if executor else contextlib.nullcontext():
        results = pipeline.run(jobs, n_jobs=args.jobs, keep_going=args.keep_going)
    failed = [r for r in results if r.status == pipeline.FAILED]
    interrupted = [r for r in results if r.status == pipeline.INTERRUPTED]
    not_run = len(jobs) - len(results)
    if interrupted:
        names = " ".join(r.name for r in interrupted)
        print(f"dla-repro: interrupted during {names}: its runs are marked KILLED, results/ is unchanged; "
              f"continue with: dla-repro run {names} --profile {args.profile} --resume")
        return 130
    print(f"dla-repro: {len(results) - len(failed)} ok, {len(failed)} failed, {not_run} not run")
    return 1 if failed or not_run else 0


def port_problem(host: str, port: int) -> str | None:
    """Why a server could not listen on ``host:port`` (e.g. already in use), or None if it can."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        return f"cannot resolve host {host!r}: {exc}"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
        try:
            sock.bind(address)
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def _mlflow_bin() -> str:
    """The ``mlflow`` command of this environment (beside this Python), else the one on PATH."""
    return shutil.which("mlflow", path=os.path.dirname(sys.executable)) or shutil.which("mlflow") or "mlflow"


def _port_refused(args: argparse.Namespace, hint: str = "") -> bool:
    """Print why ``args.host:args.port`` cannot be listened on (True), or return False."""
    problem = port_problem(args.host, args.port)
    if problem is not None:
        print(f"dla-repro ui: cannot listen on {args.host}:{args.port}: {problem}{hint}; choose a free port "
              f"with --port N", file=sys.stderr)
    return problem is not None


def _cmd_ui(args: argparse.Namespace) -> int:
    if args.serve:
        return _cmd_serve(args)
    if not args.dry_run and _port_refused(args, " (another MLflow UI?)"):
        return 1
    uri = tracking.configure()
    base = f"http://{args.host}:{args.port}"
    print(f"MLflow UI on {base} over {tracking.redacted_uri(uri)}")
    for name, url in tracking.experiment_urls(base):
        print(f"  {name:<28} {url}")
    cmd = [_mlflow_bin(), "ui", "--backend-store-uri", uri, "--host", args.host, "--port", str(args.port)]
    if tracking._database_store(uri):
        cmd += ["--default-artifact-root", tracking.artifact_root().as_uri()]
    if args.dry_run:
        print(" ".join(cmd))
        return 0
    return subprocess.call(cmd)


def _cmd_serve(args: argparse.Namespace) -> int:
    """``ui --serve``: a team tracking server (``dla_repro.server``)."""
    from . import server

    try:
        command = server.server_command(_mlflow_bin(), args.backend_store_uri, args.artifacts_destination,
                                        args.host, args.port, args.workers, args.allowed_hosts)
    except server.ServeError as exc:
        print(f"dla-repro ui: error: {exc}", file=sys.stderr)
        return 2
    if not args.dry_run:
        if _port_refused(args):
            return 1
        problem = server.backend_problem(command.backend_store_uri)
        if problem is not None:
            print(f"dla-repro ui: error: backend store: {problem}", file=sys.stderr)
            return 2
    for line in server.describe(command, args.host, args.port):
        print(line)
    warning = server.exposure_warning(args.host)
    if warning:
        print(warning, file=sys.stderr)
    if args.dry_run:
        print(command.shown())
        return 0
    return server.run(command)


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import write_benchmark

    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.what == "synthetic":  # the generator alone, its own table (bench data compares it with the model)
        from .bench import bench_synthetic

        df = bench_synthetic(image_sizes=[args.image_size] if args.image_size else [32, 64, 128])
        print(df.to_string(index=False))
        print(f"wrote {write_benchmark(df, args.name or 'synthetic_cpu')}")
        return 0
    if args.what == "readme":
        return _bench_readme()
    from .bench import suite

    try:
        if args.what == "all":
            suite.run_all(args.preset, args.device, run_pipeline=args.run)
            return _bench_readme()
        if args.what == "kernels":
            from .bench.kernels import selection

            selection(args.op, args.impls, args.device)
        overrides = dict(
            models=dict(variants=args.variants, batch_size=args.batch_size, image_size=args.image_size,
                        steps=args.steps, settings=args.settings),
            kernels=dict(ops=args.op, image_size=args.image_size, impls=args.impls),
            data=dict(image_size=args.image_size, batch_size=args.batch_size, num_workers=args.workers),
            pipeline=dict(run=args.run),
        )[args.what]  # fmt: skip
        df = suite.run_suite(args.what, args.preset, args.device, **overrides)
    except (ValueError, RuntimeError) as exc:
        print(f"dla-repro: error: {exc}", file=sys.stderr)
        return 2
    print(df.to_string(index=False))
    out = suite.write_suite(args.what, df, args.name, args.device)
    print(f"wrote {out['csv']}" + (f" and {out['figure']}" if out["figure"] else ""))
    return 0


def _bench_readme() -> int:
    """Redraw each suite's figure from its CSV and regenerate README's performance tables."""
    import pandas as pd

    from .bench.figures import plot_suite
    from .bench.readme import SUITES, render, suite_csvs, update_readme
    from .paths import repo_root, results_dir

    folder = results_dir() / "benchmarks"
    for name in SUITES:
        for csv in suite_csvs(folder, name):
            df = pd.read_csv(csv)
            if len(df):
                plot_suite(name, df, csv.with_suffix(".png"))
                print(f"drew {csv.with_suffix('.png')}")
    block = render(folder)
    readme = repo_root() / "README.md"
    # Only the committed tables may rewrite README (not a results folder chosen with DLA_REPRO_RESULTS).
    if results_dir() == (repo_root() / "results").resolve() and readme.is_file():
        changed = update_readme(readme, block)
        print(f"{'updated' if changed else 'unchanged'}: {readme} (performance tables)")
    else:
        print(block)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .analysis.report import write_all
    from .paths import repo_root, results_dir

    results = results_dir()
    # README's "What reproduced" block shows the committed quick results: only they may rewrite it
    # (not a results folder chosen with DLA_REPRO_RESULTS, nor another profile).
    readme = repo_root() / "README.md"
    own = args.profile == "quick" and results == (repo_root() / "results").resolve() and readme.is_file()
    try:
        out = write_all(results, args.profile, readme if own else None)
    except (FileNotFoundError, ValueError) as exc:
        print(f"dla-repro: error: {exc}", file=sys.stderr)
        return 2
    print(out["text"])
    for key in ("claims", "figure", "report"):
        print(f"wrote {out[key]}")
    if out["readme"] is not None:
        print(f"{'updated' if out['readme_changed'] else 'unchanged'}: {out['readme']} (What reproduced)")
    return 0


def _cmd_replication(args: argparse.Namespace) -> int:
    from .analysis.replication import write_replication
    from .paths import repo_root

    reference = args.reference or repo_root() / "results"
    try:
        out = write_replication(reference, args.rerun, args.profile)
    except (FileNotFoundError, ValueError, SyntaxError) as exc:
        print(f"dla-repro: error: {exc}", file=sys.stderr)
        return 2
    print(out["text"])
    print(f"wrote {out['path']}")
    return 0 if out["ok"] else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dla-repro", description=__doc__.split("\n")[0])
    parser.add_argument("--pipeline", type=Path, default=None, help="pipeline file (default: notebooks/pipeline.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="notebooks in pipeline.yaml with their parameters")
    p.add_argument("names", nargs="*")
    p.add_argument("--profile", choices=pipeline.PROFILES, default="quick")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("run", help="execute notebooks with papermill, log to MLflow")
    p.add_argument("names", nargs="*", help="notebook names from pipeline.yaml (default: all)")
    p.add_argument("--profile", choices=pipeline.PROFILES, default="quick")
    p.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                   help="override a parameter (NOTEBOOK.KEY=VALUE targets one notebook)")
    p.add_argument("--data-root", help="root folder of a real dataset (passed as data_root)")
    p.add_argument("--jobs", type=int, default=1, help="notebooks executed in parallel")
    p.add_argument("--keep-going", action="store_true", help="run the remaining notebooks after a failure")
    p.add_argument("--resume", action="store_true",
                   help="continue the latest interrupted execution of each notebook (same parameters) "
                        "from its checkpoints, in the same MLflow runs")
    p.add_argument("--executor", choices=("local", "ray"), default=None,
                   help="where a notebook's sweeps train: local processes (the default) or Ray tasks "
                        "(needs the 'scale' extra)")
    p.add_argument("--address", default=None, metavar="HOST:PORT",
                   help="with --executor ray: the Ray cluster to use (default: a local Ray instance per notebook)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("train", help="a notebook's trainings on several processes or machines (torchrun, DDP; "
                                     "see dla_repro/launch.py)")
    launch.add_arguments(p)
    p.set_defaults(func=launch.train)

    p = sub.add_parser("ui", help="MLflow UI over the project's store (127.0.0.1)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--dry-run", action="store_true", help="print the URLs and the command, start nothing")
    p.add_argument("--serve", action="store_true",
                   help="a team tracking server instead: mlflow server (REST API, UI, artifact proxy) over a "
                        "database; clients set MLFLOW_TRACKING_URI=http://HOST:PORT (README: Team tracking server)")
    p.add_argument("--backend-store-uri", metavar="URI", default=None,
                   help="--serve: the runs' database, e.g. postgresql://USER@HOST:5432/DB "
                        "(default: $MLFLOW_BACKEND_STORE_URI)")
    p.add_argument("--artifacts-destination", metavar="DIR|URI", default=None,
                   help="--serve: where the server keeps the runs' files (default: $MLFLOW_ARTIFACTS_DESTINATION)")
    p.add_argument("--workers", type=int, default=None, help="--serve: server worker processes (MLflow's default: 4)")
    p.add_argument("--allowed-hosts", default=None, metavar="HOSTS",
                   help="--serve: Host headers the server accepts, e.g. mlflow.example:5000 (MLflow's default: "
                        "localhost and private addresses)")
    p.set_defaults(func=_cmd_ui)

    p = sub.add_parser("bench", help="benchmarks: CSV + figure per suite in results/benchmarks/, README's tables")
    p.add_argument("what", choices=["models", "kernels", "data", "pipeline", "all", "readme", "synthetic"],
                   help="a suite; all: every suite, then readme; readme: figures and README's tables from the "
                        "CSVs; synthetic: the data generator alone")
    p.add_argument("--preset", choices=["ci", "cpu", "gpu"], default=None,
                   help="sizes of every suite (dla_repro/bench/suite.py; default: gpu on CUDA, else cpu)")
    p.add_argument("--variants", nargs="+", default=None)
    p.add_argument("--settings", nargs="+", default=None,
                   help="models: fp32 bf16 channels_last compile fast_path (default: all on CUDA, fp32 on CPU)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--image-size", type=int, default=None,
                   help="models, data: pixels; synthetic: 32, 64 and 128; kernels: H = W of each op's shapes")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--op", nargs="+", default=None, metavar="NAME", help="kernels: ops of the table (default: all)")
    p.add_argument("--impls", nargs="+", default=None, metavar="IMPL",
                   help="kernels: triton, eager, compile (default: all on CUDA, eager and compile on CPU)")
    p.add_argument("--workers", type=int, default=None, help="data: DataLoader workers")
    p.add_argument("--run", action="store_true",
                   help="pipeline, all: also run the smoke profile now, isolated in a scratch folder")
    p.add_argument("--name", default=None, help="output file stem")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("report", help="every notebook's verdicts: results/REPORT.md (quick) or REPORT_<profile>.md, "
                                      "a forest plot, results/claims_<profile>.md; quick also refreshes README's "
                                      "What reproduced")
    p.add_argument("--profile", choices=pipeline.PROFILES, default="quick")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("replication", help="compare another results folder (a re-run elsewhere) with the committed "
                                           "one: same verdicts? each arm's mean inside the committed 95 %% interval? "
                                           "exit status 1 when not")
    p.add_argument("rerun", type=Path, help="the re-run's results folder (written with DLA_REPRO_RESULTS=...)")
    p.add_argument("--reference", type=Path, default=None, help="the reference results folder (default: results/)")
    p.add_argument("--profile", choices=pipeline.PROFILES, default="quick")
    p.set_defaults(func=_cmd_replication)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Our lines in order with MLflow's and the kernels' even when piped to a file.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # not MLflow's INFO lines on a new store
    try:
        return args.func(args)
    except pipeline.PipelineError as exc:
        print(f"dla-repro: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
