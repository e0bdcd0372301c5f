"""``dla-repro``: run the notebook pipeline, list its parameters, open the MLflow UI, benchmark, report.

    dla-repro list [--profile P]
    dla-repro run [NAME ...] [--profile P] [-p key=value ...] [--data-root DIR] [--jobs N] [--keep-going] [--resume]
    dla-repro ui [--host 127.0.0.1] [--port 5000]
    dla-repro ui --serve --backend-store-uri postgresql://USER@HOST:PORT/DB --artifacts-destination DIR [...]
    dla-repro bench {models,synthetic,kernels} [--op NAME ...] [...]
    dla-repro report [--profile P]
    dla-repro replication OTHER_RESULTS [--reference DIR] [--profile P]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import shutil
import subprocess
import sys
from pathlib import Path

from . import pipeline, tracking


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


def _cmd_run(args: argparse.Namespace) -> int:
    from . import recovery

    pipe = pipeline.load_pipeline(args.pipeline)
    jobs = pipeline.plan(args.names, args.profile, args.param, args.data_root, pipeline=pipe, resume=args.resume)
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
          + (" (resuming)" if args.resume else ""))
    with _sigterm_as_interrupt():
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


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (``kill``, a scheduler's timeout) ends a run like Ctrl-C: recorded, runs closed."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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


def _cmd_ui(args: argparse.Namespace) -> int:
    if args.serve:
        return _cmd_serve(args)
    if not args.dry_run:
        problem = port_problem(args.host, args.port)
        if problem is not None:
            print(f"dla-repro ui: cannot listen on {args.host}:{args.port}: {problem} "
                  f"(another MLflow UI?); choose a free port with --port N", file=sys.stderr)
            return 1
    uri = tracking.configure()
    base = f"http://{args.host}:{args.port}"
    print(f"MLflow UI on {base} over {tracking.redacted_uri(uri)}")
    for name, url in tracking.experiment_urls(base):
        print(f"  {name:<28} {url}")
    mlflow_bin = shutil.which("mlflow", path=os.path.dirname(sys.executable)) or shutil.which("mlflow")
    cmd = [mlflow_bin or "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host, "--port", str(args.port)]
    if tracking._database_store(uri):
        cmd += ["--default-artifact-root", tracking.artifact_root().as_uri()]
    if args.dry_run:
        print(" ".join(cmd))
        return 0
    return subprocess.call(cmd)


def _cmd_serve(args: argparse.Namespace) -> int:
    """``ui --serve``: a team tracking server (``dla_repro.server``)."""
    from . import server

    mlflow_bin = shutil.which("mlflow", path=os.path.dirname(sys.executable)) or shutil.which("mlflow")
    try:
        command = server.server_command(mlflow_bin or "mlflow", args.backend_store_uri, args.artifacts_destination,
                                        args.host, args.port, args.workers, args.allowed_hosts)
    except server.ServeError as exc:
        print(f"dla-repro ui: error: {exc}", file=sys.stderr)
        return 2
    if not args.dry_run:
        problem = port_problem(args.host, args.port)
        if problem is not None:
            print(f"dla-repro ui: cannot listen on {args.host}:{args.port}: {problem}; choose a free port with "
                  f"--port N", file=sys.stderr)
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
    if args.what == "models":
        from .bench import bench_models

        df = bench_models(
            variants=args.variants, device=args.device, batch_size=args.batch_size,
            image_size=args.image_size or 224, steps=args.steps,
        )
        name = args.name or f"models_{df.device.iloc[0]}"
    elif args.what == "synthetic":
        from .bench import bench_synthetic

        df = bench_synthetic(image_sizes=[args.image_size] if args.image_size else [32, 64, 128])
        name = args.name or "synthetic_cpu"
    else:  # kernels
        from .bench.kernels import bench_kernels, selection

        try:
            selection(args.op, args.impls, args.device)
        except ValueError as exc:
            print(f"dla-repro: error: {exc}", file=sys.stderr)
            return 2
        df = bench_kernels(args.op, args.device, image_size=args.image_size, impls=args.impls)
        name = args.name or f"kernels_{df.device.iloc[0]}"
    print(df.to_string(index=False))
    print(f"wrote {write_benchmark(df, name)}")
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
    p.set_defaults(func=_cmd_run)

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

    p = sub.add_parser("bench", help="throughput benchmarks, written to results/benchmarks/")
    p.add_argument("what", choices=["models", "synthetic", "kernels"])
    p.add_argument("--variants", nargs="+", default=["dla34", "dla46_c"])
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-size", type=int, default=None,
                   help="models: 224; synthetic: 32, 64 and 128; kernels: H = W of each op's default shapes")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--op", nargs="+", default=None, metavar="NAME", help="kernels: ops of the table (default: all)")
    p.add_argument("--impls", nargs="+", default=None, metavar="IMPL",
                   help="kernels: triton, eager, compile (default: all on CUDA, eager and compile on CPU)")
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
