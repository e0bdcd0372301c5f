"""`dla-repro ui`: MLflow UI on 127.0.0.1 over the project's store, printing each experiment's URL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from dla_repro import cli, tracking


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dry_run_prints_urls_and_binds_loopback(capsys):
    exp_id = tracking.get_or_create_experiment("ui_demo")
    assert cli.main(["ui", "--dry-run", "--port", "5123"]) == 0
    out = capsys.readouterr().out
    assert f"http://127.0.0.1:5123/#/experiments/{exp_id}/runs" in out
    assert "--host 127.0.0.1" in out and tracking.tracking_uri() in out


@pytest.mark.timeout(120)
def test_busy_port_is_one_clear_line_and_a_nonzero_exit(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = cli.main(["ui", "--port", str(port)])
    captured = capsys.readouterr()
    assert code != 0
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "--port" in lines[0], captured.err
    assert "http://" not in captured.out  # no URLs of a UI that is not coming up
    assert cli.port_problem("127.0.0.1", port) is None  # free again once released


@pytest.mark.slow
def test_ui_serves_the_store():
    exp_id = tracking.get_or_create_experiment("ui_live")
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dla_repro.cli", "ui", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        body = None
        while time.monotonic() < deadline and body is None:
            try:
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/get-by-name?experiment_name=ui_live"
                )
                body = urllib.request.urlopen(req, timeout=2).read().decode()
            except OSError:
                time.sleep(0.5)
        assert body is not None, "MLflow UI did not come up"
        assert f'"experiment_id": "{exp_id}"' in body or f'"experiment_id":"{exp_id}"' in body
        assert "custom_model_development" in body
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        out = proc.communicate(timeout=30)[0]
    assert f"http://127.0.0.1:{port}/#/experiments/{exp_id}/runs" in out
