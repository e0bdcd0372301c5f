"""`dla-repro ui --serve`: a team tracking server (mlflow server over PostgreSQL, artifacts proxied).

The end-to-end test installs PostgreSQL when it is missing (Debian's package, as root with apt-get; skipped
elsewhere), starts a throw-away cluster on a free port of 127.0.0.1, a real server over it through
`dla-repro ui --serve`, runs two smoke notebooks in parallel against it (`dla-repro run --jobs 2` with
MLFLOW_TRACKING_URI=http://...), and reads everything back through MLflow's REST API.
"""

from __future__ import annotations

import csv
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from dla_repro import cli, server, tracking
from dla_repro.paths import repo_root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------- the command (fast)
def test_serve_dry_run_binds_loopback_and_keeps_the_password_off_the_command_line(capsys, tmp_path):
    uri = "postgresql://mlflow:s3cret@db.example:5432/mlflow"
    code = cli.main(["ui", "--serve", "--dry-run", "--port", "5123", "--backend-store-uri", uri,
                     "--artifacts-destination", str(tmp_path / "art"), "--workers", "2"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "s3cret" not in captured.out + captured.err
    command = captured.out.strip().splitlines()[-1]
    assert command.startswith("MLFLOW_BACKEND_STORE_URI='postgresql://mlflow:***@db.example:5432/mlflow' ")
    assert " server --serve-artifacts " in command and "--host 127.0.0.1 --port 5123" in command
    assert f"--artifacts-destination {tmp_path / 'art'}" in command and "--workers 2" in command
    assert "--backend-store-uri" not in command  # handed over in the environment, which `ps` does not show
    assert "export MLFLOW_TRACKING_URI=http://127.0.0.1:5123" in captured.out
    assert captured.err == ""  # no exposure warning on loopback
    assert not (tmp_path / "art").exists()  # a dry run creates nothing


def test_serve_reads_the_environment_and_warns_when_exposed(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_BACKEND_STORE_URI", "postgresql://mlflow@db:5432/mlflow")
    monkeypatch.setenv("MLFLOW_ARTIFACTS_DESTINATION", "s3://bucket/mlflow")
    assert cli.main(["ui", "--serve", "--dry-run", "--host", "0.0.0.0"]) == 0
    captured = capsys.readouterr()
    assert "--artifacts-destination s3://bucket/mlflow --host 0.0.0.0" in captured.out
    assert "no authentication" in captured.err and "0.0.0.0" in captured.err
    monkeypatch.chdir(tmp_path)
    cmd = server.server_command("mlflow", None, "relative/art", "127.0.0.1", 5000)
    assert cmd.argv[cmd.argv.index("--artifacts-destination") + 1] == str(tmp_path / "relative" / "art")
    assert cmd.env["MLFLOW_BACKEND_STORE_URI"] == "postgresql://mlflow@db:5432/mlflow"


@pytest.mark.parametrize("args, env, expected", [
    ([], {}, "--backend-store-uri"),
    (["--backend-store-uri", "postgresql://u@h/db"], {}, "--artifacts-destination"),
    (["--backend-store-uri", "http://team:5000", "--artifacts-destination", "/x"], {}, "is a tracking server"),
])
def test_serve_without_its_stores_is_one_line_and_status_2(capsys, monkeypatch, args, env, expected):
    monkeypatch.delenv("MLFLOW_BACKEND_STORE_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ARTIFACTS_DESTINATION", raising=False)
    assert cli.main(["ui", "--serve", *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], lines


def test_an_unreachable_database_is_one_line_before_anything_starts(capsys, tmp_path):
    port = _free_port()  # nothing listens there
    code = cli.main(["ui", "--serve", "--port", str(_free_port()), "--backend-store-uri",
                     f"postgresql://mlflow:pw@127.0.0.1:{port}/mlflow", "--artifacts-destination", str(tmp_path / "a")])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "cannot connect to postgresql://mlflow:***@127.0.0.1" in lines[0], captured.err
    assert "pw@" not in captured.err and not (tmp_path / "a").exists()


def test_a_missing_driver_names_the_team_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # `import psycopg` raises ImportError
    problem = server.backend_problem("postgresql://mlflow:pw@127.0.0.1:5432/mlflow")
    assert problem is not None and "team extra" in problem and "pip install -e '.[team]'" in problem


def test_uris_are_shown_without_passwords():
    assert tracking.redacted_uri("postgresql+psycopg://u:p%40ss@h:5432/db") == "postgresql+psycopg://u:***@h:5432/db"
    assert tracking.redacted_uri("http://alice:pw@mlflow:5000") == "http://alice:***@mlflow:5000"
    for plain in ("postgresql://u@h:5432/db", "postgresql://h:5432/db", "http://mlflow:5000", "sqlite:////a/b.db"):
        assert tracking.redacted_uri(plain) == plain


def test_databases_get_the_projects_artifact_folder_and_servers_choose_their_own():
    assert tracking._database_store("sqlite:////tmp/x.db")
    assert tracking._database_store("postgresql://u@h/db") and tracking._database_store("postgresql+psycopg://u@h/db")
    assert tracking._database_store("mysql+pymysql://u@h/db")
    assert not tracking._database_store("http://team:5000") and not tracking._database_store("https://team")
    assert not tracking._database_store("databricks")


# ------------------------------------------------------------------------------- PostgreSQL (slow)
def _postgres_bindir() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl`` (Debian keeps them in /usr/lib/postgresql/<major>/bin)."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    majors = [p for p in Path("/usr/lib/postgresql").glob("*/bin/pg_ctl") if p.parent.parent.name.isdigit()]
    majors.sort(key=lambda p: int(p.parent.parent.name))
    return majors[-1].parent if majors else None


def _install_postgres() -> float:
    """``apt-get install postgresql`` (as root, with apt); seconds taken. Skips where that is impossible."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None or shutil.which("runuser") is None:
        pytest.skip("PostgreSQL is not installed and cannot be installed here (needs root, apt-get and runuser; "
                    "on Debian/Ubuntu: apt-get install -y postgresql)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=300", "postgresql"]
    start = time.monotonic()
    out = subprocess.run(install, env=env, capture_output=True, text=True, timeout=1200)
    if out.returncode != 0:  # a fresh image has no package lists yet
        subprocess.run(["apt-get", "update", "-o", "DPkg::Lock::Timeout=300"], env=env, capture_output=True,
                       timeout=600)
        out = subprocess.run(install, env=env, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, f"apt-get install postgresql failed:\n{out.stdout[-1500:]}\n{out.stderr[-1500:]}"
    return time.monotonic() - start


class Cluster:
    """A throw-away PostgreSQL cluster on 127.0.0.1:``port``, run as the ``postgres`` system user.

    It lives in its own folder under the system's temporary directory, owned by ``postgres``:
    pytest's ``tmp_path`` sits below a folder only root may enter.
    """

    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="dla_repro_pg_"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.password = secrets.token_hex(16)
        self.started = False

    def _as_postgres(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        out = subprocess.run(["runuser", "-u", "postgres", "--", *args], capture_output=True, text=True,
                             timeout=timeout, cwd=self.root)
        assert out.returncode == 0, f"{' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
        return out

    def start(self) -> None:
        shutil.chown(self.root, "postgres", "postgres")
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        shutil.chown(pwfile, "postgres", "postgres")
        self._as_postgres(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "-E", "UTF8",
                          "--locale=C", "--auth=scram-sha-256", f"--pwfile={pwfile}", "--no-sync")
        # Throw-away and small: no fsync; TCP on loopback only, the Unix socket in this folder.
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=32MB")
        self.started = True
        self._as_postgres(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "postgres.log"),
                          "-o", options, "-w", "-t", "60", "start")

    def create_database(self, user: str, password: str, name: str) -> str:
        """A role and a database it owns (the README's recipe); the URI the server is given."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", password=self.password,
                             dbname="postgres", autocommit=True, connect_timeout=10) as conn:
            role = sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(user), sql.Literal(password))
            conn.execute(role)
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(user)))
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        try:
            if self.started and (self.data / "postmaster.pid").exists():
                out = subprocess.run(["runuser", "-u", "postgres", "--", str(self.bindir / "pg_ctl"), "-D",
                                      str(self.data), "-m", "fast", "-w", "-t", "60", "stop"],
                                     capture_output=True, text=True, timeout=90)
                if out.returncode != 0 and (self.data / "postmaster.pid").exists():
                    pid = int((self.data / "postmaster.pid").read_text().split()[0])
                    os.kill(pid, signal.SIGQUIT)  # immediate shutdown
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def postgres():
    apt_seconds = None
    if _postgres_bindir() is None:
        apt_seconds = _install_postgres()
    bindir = _postgres_bindir()
    assert bindir is not None, "apt-get installed postgresql, yet no pg_ctl was found"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.fail("psycopg is missing: install the team extra (pip install -e '.[team]'; `make setup` "
                    "installs it from requirements/lock.txt)")
    cluster = Cluster(bindir)
    cluster.apt_seconds = apt_seconds
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


class Server:
    """``dla-repro ui --serve`` in a process group of its own, its output in a file."""

    def __init__(self, backend_uri: str, artifacts: Path, log: Path):
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        env["MLFLOW_BACKEND_STORE_URI"] = backend_uri  # the README's way: the password stays off command lines
        with open(log, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dla_repro.cli", "ui", "--serve", "--port", str(self.port), "--workers", "1",
                 "--artifacts-destination", str(artifacts)],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_until_up(self, timeout: float = 150) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.base}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        pytest.fail(f"the server did not answer on {self.base} in {timeout:.0f} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> int | None:
        """SIGTERM to `dla-repro ui --serve`, which stops the whole server; its exit status."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


def _api(base: str, endpoint: str, payload: dict | None = None, **query) -> dict:
    url = f"{base}/api/2.0/mlflow/{endpoint}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _runs(base: str, experiment: str) -> tuple[dict, list[dict]]:
    exp = _api(base, "experiments/get-by-name", experiment_name=experiment)["experiment"]
    runs = _api(base, "runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 1000}).get("runs", [])
    return exp, runs


def _tags(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def _history(base: str, run: dict) -> dict[str, list[tuple[int, float]]]:
    """Every metric of ``run``: its points as ``(step, value)``, in step order."""
    out = {}
    for metric in run["data"].get("metrics", []):
        points = _api(base, "metrics/get-history", run_id=run["info"]["run_id"], metric_key=metric["key"],
                      max_results=25000)["metrics"]
        out[metric["key"]] = sorted((int(p["step"]), float(p["value"])) for p in points)
    return out


def _stat(pid: int | str) -> list[str]:
    """Fields of /proc/PID/stat after the command name: state, ppid, pgrp, ... ([] once gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    except OSError:
        return []


def _cmdline(pid: int | str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _pids() -> list[str]:
    return [p.name for p in Path("/proc").iterdir() if p.name.isdigit()]


def _children(pid: int) -> list[int]:
    return [int(p) for p in _pids() if (f := _stat(p)) and f[1] == str(pid)]


def _processes_in_group(pgid: int) -> list[str]:
    """The command lines of the live processes of group ``pgid``."""
    return [_cmdline(p) for p in _pids() if (f := _stat(p)) and f[2] == str(pgid) and f[0] != "Z"]


PROGRESS = re.compile(r"\d\d:\d\d:\d\d (?P<run>.+ seed=\d+)  epoch (?P<epoch>\d+)/(?P<epochs>\d+)  "
                      r"train_loss=(?P<train_loss>\S+) val_miou=(?P<val_miou>\S+)")


@pytest.mark.slow
@pytest.mark.notebook
@pytest.mark.timeout(1800)  # apt-get install included; the test itself: about 90 s of CPU (README: Tests)
def test_two_notebooks_at_once_on_a_postgres_server_lose_nothing(postgres, tmp_path, record_property):
    t0 = time.monotonic()
    if postgres.apt_seconds is not None:
        record_property("apt_install_seconds", round(postgres.apt_seconds, 1))
        print(f"apt-get install postgresql: {postgres.apt_seconds:.1f} s")
    db_password = secrets.token_hex(12)
    uri = postgres.create_database("mlflow", db_password, "mlflow")
    artifacts = tmp_path / "server-artifacts"
    srv = Server(uri, artifacts, tmp_path / "server.log")
    try:
        srv.wait_until_up()
        t_up = time.monotonic()
        # the database password is on no command line of the server's processes (`ps` shows those to anyone)
        (mlflow_pid,) = _children(srv.proc.pid)  # `mlflow server`, leader of the server's own process group
        serving = _processes_in_group(mlflow_pid)
        assert any("uvicorn" in line for line in serving), serving
        assert not [line for line in [*serving, _cmdline(srv.proc.pid)] if db_password in line]

        # two smoke notebooks in parallel, logging to the server
        local = tmp_path / "client"
        env = {**os.environ, "MLFLOW_TRACKING_URI": srv.base, "DLA_REPRO_RESULTS": str(local / "results"),
               "DLA_REPRO_CHECKPOINTS": str(local / "checkpoints"), "DLA_REPRO_LOGS": str(local / "logs"),
               "DLA_REPRO_ARTIFACTS": str(local / "mlartifacts"), "OMP_NUM_THREADS": "1"}
        env.pop("MLFLOW_BACKEND_STORE_URI", None)
        run = subprocess.run(
            [sys.executable, "-m", "dla_repro.cli", "run", "data_tour", "dla_segmentation", "--profile", "smoke",
             "--jobs", "2", "-p", "epochs=2", "-p", "iterations=0", "-p", "sweep_workers=1"],
            env=env, capture_output=True, text=True, timeout=600)
        t_run = time.monotonic()
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
        assert f"MLflow store {srv.base}" in run.stdout and "2 ok, 0 failed" in run.stdout
        manifest = json.loads((local / "results" / "manifest_smoke.json").read_text())
        assert manifest["tracking_uri"] == srv.base

        # data_tour: one notebook run, each of its metrics logged once, its executed notebook attached
        exp, runs = _runs(srv.base, "data_tour")
        assert exp["artifact_location"].startswith("mlflow-artifacts:")
        assert [r["info"]["run_id"] for r in runs] == [manifest["notebooks"]["data_tour"]["mlflow_run_id"]]
        (tour,) = runs
        assert tour["info"]["status"] == "FINISHED" and _tags(tour)["kind"] == "notebook"
        history = _history(srv.base, tour)
        assert "notebook_seconds" in history and any(k.startswith("scene_acc_window") for k in history)
        assert all(len(points) == 1 for points in history.values()), history

        # dla_segmentation: notebook run > sweep > one training per smoke trial, all FINISHED
        exp, runs = _runs(srv.base, "dla_segmentation")
        by_kind: dict[str, list[dict]] = {}
        for r in runs:
            by_kind.setdefault(_tags(r).get("kind"), []).append(r)
        assert sorted((k, len(v)) for k, v in by_kind.items()) == [("fit", 2), ("notebook", 1), ("sweep", 1)]
        (notebook,), (sweep,) = by_kind["notebook"], by_kind["sweep"]
        assert notebook["info"]["run_id"] == manifest["notebooks"]["dla_segmentation"]["mlflow_run_id"]
        assert _tags(sweep)["mlflow.parentRunId"] == notebook["info"]["run_id"]
        fits = {r["info"]["run_name"]: r for r in by_kind["fit"]}
        assert sorted(fits) == ["ida_up seed=0", "skip seed=0"]
        assert all(_tags(r)["mlflow.parentRunId"] == sweep["info"]["run_id"] for r in fits.values())
        assert all(r["info"]["status"] == "FINISHED" for r in runs)

        # every metric point of every training: each epoch of the progress lines the trainings printed ...
        progress = [m.groupdict() for log in (local / "logs" / "smoke").glob("dla_segmentation-*.progress")
                    for m in PROGRESS.finditer(log.read_text())]
        assert sorted((p["run"], p["epoch"]) for p in progress) == [
            (name, str(e)) for name in sorted(fits) for e in (1, 2)]
        histories = {name: _history(srv.base, r) for name, r in fits.items()}
        for p in progress:
            for key in ("train_loss", "val_miou"):
                step_values = dict(histories[p["run"]][key])
                assert f"{step_values[int(p['epoch']) - 1]:.4g}" == p[key], (p, histories[p["run"]][key])
        # ... and each per-epoch metric of the runs table, at every epoch once, ending on the table's value
        with open(local / "results" / "tables" / "smoke" / "dla_segmentation_runs.csv") as handle:
            table = {f"{row['trial']} seed={row['seed']}": row for row in csv.DictReader(handle)}
        assert sorted(table) == sorted(fits)
        for name, row in table.items():
            history = histories[name]
            per_epoch = [k for k in row if k in ("lr", "epoch_time_s") or k.startswith(("train_", "val_"))]
            per_epoch = [k for k in per_epoch if k != "train_seconds"]
            assert {"train_loss", "val_miou", "epoch_time_s"} <= set(per_epoch)
            for key in per_epoch:
                assert [s for s, _ in history[key]] == [0, 1], (name, key, history[key])
                assert history[key][-1][1] == pytest.approx(float(row[key]), rel=1e-9, abs=1e-12), (name, key)
            for key, points in history.items():  # no metric has a step twice
                steps = [s for s, _ in points]
                assert len(steps) == len(set(steps)), (name, key, points)

        # the runs are in PostgreSQL, their files went through the server into its artifact folder
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=postgres.port, user="mlflow", password=db_password,
                             dbname="mlflow") as conn:
            (count,) = conn.execute("SELECT count(*) FROM runs").fetchone()
        assert count == 5
        for r in [tour, notebook, *fits.values()]:
            assert r["info"]["artifact_uri"].startswith("mlflow-artifacts:/"), r["info"]["artifact_uri"]
        stored = artifacts / exp["experiment_id"]
        assert (stored / notebook["info"]["run_id"] / "artifacts" / "notebook" / "03_segmentation.ipynb").is_file()
        for r in fits.values():
            listed = _api(srv.base, "artifacts/list", run_id=r["info"]["run_id"], path="checkpoints")
            assert [f["path"] for f in listed.get("files", [])] == ["checkpoints/final.pt"]
            assert (stored / r["info"]["run_id"] / "artifacts" / "checkpoints" / "final.pt").is_file()
        assert not (local / "mlartifacts").exists()  # the project's local artifact folder is not used
        assert not list(repo_root().glob("notebooks/**/mlruns"))  # nor MLflow's ./mlruns in a notebook's folder

        # a clean stop: SIGTERM ends the server's whole process group, the port is free again
        assert srv.stop() == 0
        assert _processes_in_group(mlflow_pid) == []  # no worker left serving
        assert cli.port_problem("127.0.0.1", srv.port) is None
        print(f"server up in {t_up - t0:.1f} s, notebooks in {t_run - t_up:.1f} s, "
              f"checks in {time.monotonic() - t_run:.1f} s")
        record_property("pipeline_seconds", round(t_run - t_up, 1))
    finally:
        if srv.stop() is None or srv.proc.returncode != 0:
            print(srv.log.read_text()[-3000:])

