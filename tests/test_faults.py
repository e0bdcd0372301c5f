"""Faults that lose nothing: parallel executions, Ctrl-C, kill -9 + --resume, an unreachable store,
and the pieces behind them (stale runs, staging, manifest, progress lines, checkpoint temp files).

The end-to-end tests run ``dla-repro run dla_segmentation --profile smoke`` as a real command in a
subprocess, against the test session's throw-away store and results folder.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from dla_repro import pipeline, recovery, tracking
from dla_repro.engine import progress
from dla_repro.engine.checkpoint import remove_stale_tmp
from dla_repro.execution import ProgressTail, promote, staging_dir, update_manifest
from dla_repro.paths import checkpoints_dir, results_dir

NOTEBOOK = "dla_segmentation"


# ----------------------------------------------------------------- subprocess helpers
def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Command:
    """``dla-repro run ...`` in its own session, with its output readable line by line while it runs."""

    def __init__(self, *args: str, env: dict | None = None):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dla_repro.cli", "run", *args], stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True, env={**os.environ, **(env or {})},
            # as typed in a terminal: a test suite started in the background (`cmd &`, nohup) ignores
            # SIGINT, and a child would inherit that; the command must see Ctrl-C as a user's would
            preexec_fn=_sigint_default,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def _lines(self, wait: float, until: float):
        """The output's next lines as they come, until it ends or the monotonic clock passes ``until``."""
        while time.monotonic() < until:
            try:
                line = self._queue.get(timeout=wait)
            except queue.Empty:
                continue
            if line is None:
                return
            self.lines.append(line)
            yield line

    def wait_for(self, pattern: str, timeout: float = 240) -> str:
        for line in self._lines(wait=1, until=time.monotonic() + timeout):
            if re.search(pattern, line):
                return line
        pytest.fail(f"no line matching {pattern!r}; output so far:\n" + "\n".join(self.lines))

    def finish(self, timeout: float = 300) -> tuple[int, str]:
        code = self.proc.wait(timeout=timeout)
        for _ in self._lines(wait=1, until=time.monotonic() + 10):
            pass
        return code, "\n".join(self.lines)


def _runs(experiment: str = NOTEBOOK) -> list:
    client = MlflowClient(tracking.configure())
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id], max_results=1000)


def _steps(run_id: str) -> list[int]:
    return sorted(m.step for m in MlflowClient(tracking.configure()).get_metric_history(run_id, "epoch_time_s"))


def _kernels_gone(timeout: float = 20) -> None:
    """Wait until no kernel started from this test session's store is left (killed with its pipeline)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["pgrep", "-f", "ipykernel_launcher"], capture_output=True, text=True)
        if not out.stdout.strip():
            return
        time.sleep(0.5)


# ------------------------------------------------------------------ end to end (smoke)
@pytest.mark.notebook
@pytest.mark.slow
def test_identical_executions_at_once_all_succeed_and_lose_no_metric_point():
    n = 2
    commands = [Command(NOTEBOOK, "--profile", "smoke", "-p", "epochs=2", "-p", "iterations=0", "-p", "sweep_workers=1",
                        env={"OMP_NUM_THREADS": "1"})
                for _ in range(n)]
    outcomes = [c.finish() for c in commands]
    assert [code for code, _ in outcomes] == [0] * n, "\n\n".join(out for _, out in outcomes)
    runs = _runs()
    notebooks = [r for r in runs if r.data.tags.get("kind") == "notebook"]
    fits = [r for r in runs if r.data.tags.get("kind") == "fit"]
    assert len(notebooks) == n and all(r.info.status == "FINISHED" for r in runs)
    assert len(fits) == 2 * n  # ida_up and skip per execution (the smoke trials)
    assert all(_steps(r.info.run_id) == [0, 1] for r in fits)  # every epoch of every training logged, once
    roots = {r.data.tags[recovery.ROOT_TAG] for r in fits}
    assert roots == {r.info.run_id for r in notebooks}  # each training belongs to its own execution
    manifest = json.loads((results_dir() / "manifest_smoke.json").read_text())
    assert manifest["notebooks"][NOTEBOOK]["status"] == "ok"
    assert manifest["notebooks"][NOTEBOOK]["mlflow_run_id"] in roots
    assert not list((results_dir() / ".work" / "staging").glob("*/*"))  # every staging folder promoted
    assert not list(checkpoints_dir().rglob("*.pt"))  # finished executions leave no checkpoints


@pytest.mark.notebook
@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_ctrl_c_marks_runs_killed_keeps_previous_results_and_says_one_line(workers):
    """Also with the sweep's trainings in two worker processes: they ignore SIGINT, are stopped by the sweep's
    process, mark their runs KILLED and print nothing."""
    previous = results_dir() / "notebooks" / "smoke" / "03_segmentation.ipynb"
    previous.parent.mkdir(parents=True, exist_ok=True)
    previous.write_text("the previous good execution")
    update_manifest("smoke", lambda m: m["notebooks"].update(
        {NOTEBOOK: {"status": "ok", "mlflow_run_id": "good-run", "finished_at": "then", "git_commit": "abc"}}))

    cmd = Command(NOTEBOOK, "--profile", "smoke", "-p", "epochs=40", "-p", "iterations=0",
                  "-p", f"sweep_workers={workers}")
    cmd.wait_for(r"ida_up seed=0  epoch 1/40")
    cmd.proc.send_signal(signal.SIGINT)
    code, out = cmd.finish()
    assert code == 130, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
    assert "interrupted during dla_segmentation" in out and "--resume" in out
    assert previous.read_text() == "the previous good execution"
    entry = json.loads((results_dir() / "manifest_smoke.json").read_text())["notebooks"][NOTEBOOK]
    assert entry["status"] == "interrupted" and entry["results_from"]["mlflow_run_id"] == "good-run"
    runs = _runs()
    assert runs and not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    notebook = next(r for r in runs if r.data.tags.get("kind") == "notebook")
    assert notebook.info.status == "KILLED"
    assert {r.info.status for r in runs if r.data.tags.get("kind") == "sweep"} == {"KILLED"}
    assert {r.info.status for r in runs if r.data.tags.get("kind") == "fit"} <= {"KILLED", "FINISHED"}


@pytest.mark.notebook
@pytest.mark.slow
def test_kill_9_then_resume_continues_the_same_runs_logging_each_step_once():
    sequential = ("-p", "epochs=6", "-p", "iterations=0", "-p", "sweep_workers=1")  # one training at a time
    cmd = Command(NOTEBOOK, "--profile", "smoke", *sequential)
    cmd.wait_for(r"skip seed=0  epoch 2/6")  # the second trial: the first one has finished
    os.kill(cmd.proc.pid, signal.SIGKILL)
    cmd.finish()
    _kernels_gone()
    before = {r.info.run_id: r for r in _runs()}
    assert any(r.info.status == "RUNNING" for r in before.values())  # what a kill leaves behind

    code, out = Command(NOTEBOOK, "--profile", "smoke", *sequential, "--resume").finish()
    assert code == 0, out
    assert "resuming run" in out and "KILLED that a killed process had left RUNNING" in out
    assert "ida_up seed=0  epoch" not in out  # the finished training is reused, not retrained
    after = {r.info.run_id: r for r in _runs()}
    assert set(after) == set(before)  # same runs: nothing new
    assert all(r.info.status == "FINISHED" for r in after.values())
    for run in after.values():
        if run.data.tags.get("kind") == "fit":
            assert _steps(run.info.run_id) == list(range(6)), run.info.run_name  # each step once


@pytest.mark.notebook
def test_unreachable_tracking_server_fails_in_seconds_with_one_line():
    t0 = time.monotonic()
    code, out = Command(NOTEBOOK, "--profile", "smoke", env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}).finish()
    assert code == 2 and time.monotonic() - t0 < 30
    assert "unreachable" in out and "nothing was run" in out and "Traceback" not in out
    assert len(out.strip().splitlines()) == 1, out


# ------------------------------------------------------------------------- pieces
def test_stale_checkpoint_tmp_of_a_live_writer_is_kept(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        live = tmp_path / f".last.pt.{sleeper.pid}-abc.tmp"
        dead = tmp_path / ".last.pt.999999999-abc.tmp"
        old_style = tmp_path / ".last.pt.abcdef.tmp"
        for path in (live, dead, old_style):
            path.write_bytes(b"x")
        assert sorted(remove_stale_tmp(tmp_path)) == sorted([dead, old_style])
        assert live.exists()
    finally:
        sleeper.kill()


def test_failing_line_is_the_line_that_raised_not_the_last_line():
    class Err:
        traceback = ["\x1b[0;31mValueError\x1b[0m Traceback (most recent call last)",
                     "Cell \x1b[0;32mIn[4], line 2\x1b[0m\n      1 x = 1\n\x1b[0;32m----> 2\x1b[0m fit(model)\n      3 y = 2",
                     "File loop.py:10, in fit()\n---> 10 raise ValueError"]

    assert pipeline.failing_line(Err()) == " line 2 `fit(model)`"
    assert pipeline.failing_line(object()) == ""


def test_asyncio_reports_after_an_interrupt_go_to_the_log_not_the_terminal(tmp_path, capfd):
    """What asyncio logs when papermill's pending tasks die with the kernel stays off the one-line report."""
    import logging

    logger = logging.getLogger("asyncio")
    saved = logger.handlers[:], logger.propagate
    try:
        pipeline._asyncio_messages_to(tmp_path / "first.log")
        pipeline._asyncio_messages_to(tmp_path / "second.log")  # the next execution's log replaces it
        logger.error("Task exception was never retrieved")
        for handler in logger.handlers:
            handler.flush()
        assert "never retrieved" not in capfd.readouterr().err
        assert "never retrieved" in (tmp_path / "second.log").read_text()
        assert not (tmp_path / "first.log").exists()
    finally:
        for handler in logger.handlers[:]:
            if handler not in saved[0]:
                logger.removeHandler(handler)
                handler.close()
        logger.propagate = saved[1]


def test_dead_kernel_is_recognised():
    class DeadKernelError(RuntimeError):
        pass

    assert pipeline._kernel_died(DeadKernelError("Kernel died"))
    assert not pipeline._kernel_died(ValueError("bad"))


def test_data_root_with_a_synthetic_dataset_warns(tmp_path):
    jobs = pipeline.plan([NOTEBOOK, "dla_architecture"], "smoke", data_root=str(tmp_path))
    warnings = {job.name: job.warnings for job in jobs}
    assert "ignored" in warnings[NOTEBOOK][0] and "synthetic" in warnings[NOTEBOOK][0]
    assert "not used" in warnings["dla_architecture"][0]
    real = pipeline.plan([NOTEBOOK], "smoke", ["dataset=camvid"], data_root=str(tmp_path))
    assert real[0].warnings == []


def test_resume_is_set_by_the_pipeline_not_by_p():
    jobs = pipeline.plan([NOTEBOOK, "dla_architecture"], "smoke", resume=True)
    assert jobs[0].parameters["resume"] is True and "resume" not in jobs[1].parameters
    with pytest.raises(pipeline.ParameterError, match="--resume"):
        pipeline.plan([NOTEBOOK], "smoke", ["resume=true"])


def test_preflight(tmp_path):
    assert recovery.preflight(f"sqlite:///{tmp_path / 'mlflow.db'}") is None
    assert "does not exist" in recovery.preflight(f"sqlite:///{tmp_path / 'nope' / 'mlflow.db'}")
    t0 = time.monotonic()
    assert "unreachable" in recovery.preflight("http://127.0.0.1:9")
    assert time.monotonic() - t0 < 5


def test_stale_runs_of_dead_processes_are_closed_live_ones_kept():
    client = MlflowClient(tracking.configure())
    exp = tracking.get_or_create_experiment("faults")
    dead_token = f"999999999:{recovery._start_time(os.getpid())}"
    live = client.create_run(exp, tags=tracking.owner_tags("root"))
    dead = client.create_run(exp, tags={**tracking.owner_tags("root"), recovery.PROCESS_TAG: dead_token})
    elsewhere = client.create_run(exp, tags={recovery.HOST_TAG: "another-machine", recovery.PROCESS_TAG: dead_token})
    assert recovery.close_stale_runs([exp]) == [dead.info.run_id]
    status = {r: client.get_run(r).info.status for r in (live.info.run_id, dead.info.run_id, elsewhere.info.run_id)}
    assert status == {live.info.run_id: "RUNNING", dead.info.run_id: "KILLED", elsewhere.info.run_id: "RUNNING"}
    assert "ended without closing it" in client.get_run(dead.info.run_id).data.tags[recovery.CLOSED_TAG]


def test_process_token_detects_a_recycled_pid():
    token = recovery.process_token()
    assert recovery.process_alive(token)
    pid, _, started = token.partition(":")
    if started:
        assert not recovery.process_alive(f"{pid}:{int(started) + 1}")


def test_find_resumable_matches_profile_and_parameters():
    client = MlflowClient(tracking.configure())
    exp = tracking.get_or_create_experiment("nb")
    gone = {recovery.PROCESS_TAG: "999999999:1"}

    def notebook_run(profile, epochs, status):
        run = client.create_run(exp, tags={"kind": "notebook", "profile": profile, **gone})
        client.log_param(run.info.run_id, "epochs", str(epochs))
        client.set_terminated(run.info.run_id, status=status)
        return run.info.run_id

    notebook_run("smoke", 3, "FINISHED")
    wanted = notebook_run("smoke", 3, "KILLED")
    notebook_run("smoke", 4, "FAILED")
    notebook_run("quick", 3, "FAILED")
    assert recovery.find_resumable("nb", "smoke", {"epochs": 3}).info.run_id == wanted
    assert recovery.find_resumable("nb", "smoke", {"epochs": 5}) is None
    assert recovery.find_resumable("absent", "smoke", {}) is None


def test_progress_lines_reach_the_console(tmp_path, monkeypatch):
    path = tmp_path / "p.progress"
    monkeypatch.setenv(progress.PROGRESS_ENV, str(path))
    line = progress.format_epoch("fcn seed=0", 1, 4, {"train_loss": 0.5, "val_miou": 0.25}, [2.0, 4.0],
                                 keys=["train_loss", "val_miou"])
    assert line == "fcn seed=0  epoch 2/4  train_loss=0.5 val_miou=0.25  3.0 s/epoch  ETA 6s"
    shown: list[str] = []
    with ProgressTail(path, shown.append, prefix="[nb] ", interval=0.05):
        progress.report(line)
        time.sleep(0.3)
    assert len(shown) == 1 and shown[0].startswith("[nb] ") and shown[0].endswith(line)


def test_promote_moves_every_file_and_replaces_older_ones():
    target = results_dir()
    (target / "figures" / "quick").mkdir(parents=True)
    (target / "figures" / "quick" / "a.png").write_text("old")
    staging = staging_dir("x")
    (staging / "figures" / "quick").mkdir(parents=True)
    (staging / "figures" / "quick" / "a.png").write_text("new")
    (staging / "tables" / "quick").mkdir(parents=True)
    (staging / "tables" / "quick" / "b.csv").write_text("b")
    written = promote(staging)
    assert len(written) == 2 and not staging.exists()
    assert (target / "figures" / "quick" / "a.png").read_text() == "new"


def _bump(args):
    name, n = args
    for i in range(n):
        update_manifest("quick", lambda m: m["notebooks"].setdefault(name, {}).update(count=i + 1))


def test_parallel_manifest_writers_lose_no_entry():
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        pool.map(_bump, [(f"nb{k}", 15) for k in range(4)])
    manifest = json.loads((results_dir() / "manifest_quick.json").read_text())
    assert {k: v["count"] for k, v in manifest["notebooks"].items()} == {f"nb{k}": 15 for k in range(4)}


def test_notebook_trainings_keep_checkpoints_in_their_execution_folder(monkeypatch):
    from dla_repro.paths import WORKDIR_ENV, execution_dir, work_dir

    assert work_dir() == checkpoints_dir()
    run = tracking.start_notebook_run("nbx", {"epochs": 1}, profile="smoke")
    try:
        assert work_dir() == execution_dir("nbx", run.info.run_id)
        assert os.environ[WORKDIR_ENV] == str(work_dir())
    finally:
        tracking.end_notebook_run()
    assert work_dir() == checkpoints_dir()
    assert Path(execution_dir("nbx", "r1")).parent == checkpoints_dir() / "nbx"


@pytest.mark.slow
def test_a_sweep_killed_with_9_leaves_no_worker_training(tmp_path):
    """kill -9 of the process that runs a parallel sweep: its workers notice within a second, mark their
    trainings KILLED and exit -- no orphan keeps training and writing beside a later --resume."""
    tests = Path(__file__).parent
    script = tmp_path / "parallel_sweep.py"
    script.write_text(
        "import functools, sys\n"
        f"sys.path.insert(0, {str(tests)!r})\n"
        "from test_engine import toy_data\n"
        "from test_sweep import _model\n"
        "from dla_repro.engine import TrainConfig, Trial, sweep\n"
        "if __name__ == '__main__':  # spawned workers import this file as __mp_main__\n"
        "    trials = [Trial(f'w={w}', {'width': w}, functools.partial(_model, w)) for w in (2, 3)]\n"
        "    cfg = TrainConfig(epochs=500, batch_size=8, lr=0.01, schedule='constant', progress=False)\n"
        "    sweep('orphans', trials, toy_data(64, 8, delay=0.01), cfg, seeds=[0], workers=2)\n"
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    client = MlflowClient(tracking.configure())

    def fits() -> list:
        exp = client.get_experiment_by_name("scratch")
        if exp is None:
            return []
        return [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("kind") == "fit"]

    deadline = time.monotonic() + 120
    while len([r for r in fits() if r.info.status == "RUNNING"]) < 2:
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "the two trainings never started"
        time.sleep(0.5)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 30
    while {r.info.status for r in fits()} != {"KILLED"}:
        assert time.monotonic() < deadline, [(r.info.run_name, r.info.status) for r in fits()]
        time.sleep(0.5)
    pids = {int(r.data.tags["dla_repro.process"].split(":")[0]) for r in fits()}
    time.sleep(1)
    assert not [pid for pid in pids if _alive(pid)], "a worker outlived its sweep"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as handle:  # a zombie is dead
        return handle.read().split(")")[-1].split()[0] != "Z"
