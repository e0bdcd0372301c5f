"""What the repository's own files promise: generated files are ignored by git, `make lab` works as root."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from dla_repro.paths import repo_root

ROOT = repo_root()

GENERATED = [
    # the MLflow store, its artifacts, MLflow's fallback artifact folder (also under a notebook's folder)
    "mlflow.db", "mlflow.db-wal", "mlflow.db-shm", "mlflow.db.lock",
    "mlartifacts/dla_classification/abc/artifacts/checkpoints/final.pt", "mlruns/0/abc/meta.yaml",
    "notebooks/dla/mlruns/0/abc/meta.yaml",
    # training state
    "checkpoints/dla_segmentation/fcn/seed0/last.pt", "checkpoints/x/seed0/.last.pt.123.tmp",
    "checkpoints/dla_segmentation/0123abcd/dla_segmentation/fcn/seed0/.last.pt.4242-x1y2.tmp",
    # per-execution staging, the results lock, console logs and partial notebooks of failed executions
    "results/.work/staging/dla_segmentation-0123abcd-4242/figures/quick/x.png", "results/.work/lock",
    "results/parsenet_extended/.work/lock", "logs/quick/dla_segmentation-0123abcd.log",
    "logs/quick/dla_segmentation-0123abcd.progress", "logs/quick/dla_segmentation-0123abcd.ipynb",
    # smoke profile: pipeline, report, and a results folder chosen with DLA_REPRO_RESULTS
    "results/notebooks/smoke/00_data.ipynb", "results/figures/smoke/data_samples.png",
    "results/tables/smoke/dla_classification_runs.csv", "results/manifest_smoke.json",
    "results/claims_smoke.md", "results/REPORT_smoke.md",
    "results/parsenet_extended/notebooks/smoke/05_global_context.ipynb",
    "results/parsenet_extended/manifest_smoke.json",
    # a failed (or any) paper-profile run
    "results/notebooks/paper/02_classification.ipynb", "results/figures/paper/dla_classification_curves.png",
    "results/tables/paper/dla_classification_runs.csv", "results/manifest_paper.json", "results/claims_paper.md",
    "results/REPORT_paper.md",
    # make lock's scratch environment, caches
    ".lock-venv/bin/python", ".venv/bin/python", ".pytest_cache/v/cache/nodeids",
    "notebooks/.ipynb_checkpoints/00_data-checkpoint.ipynb", "dla_repro/__pycache__/cli.cpython-311.pyc",
]
COMMITTED = [
    "results/notebooks/quick/00_data.ipynb", "results/figures/quick/data_samples.png",
    "results/manifest_quick.json", "results/claims_quick.md", "results/REPORT.md",
    "results/figures/quick/claims_forest.png", "results/tables/synthetic_calibration.csv",
    "results/parsenet_extended/manifest_quick.json", "dla_repro/data/synthetic.py", "notebooks/00_data.ipynb",
]


def _ignored(paths: list[str]) -> set[str]:
    out = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=ROOT, input="\n".join(paths),
                         capture_output=True, text=True, timeout=30)
    assert out.returncode in (0, 1), out.stderr
    return set(out.stdout.split())


@pytest.mark.skipif(not (ROOT / ".git").exists() or shutil.which("git") is None, reason="needs the git checkout")
def test_gitignore_covers_every_generated_file_and_no_committed_result():
    assert sorted(set(GENERATED) - _ignored(GENERATED)) == []
    assert sorted(_ignored(COMMITTED)) == []


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("user_id, flag", [("0", True), ("1000", False)])
def test_make_lab_allows_root_only_as_root(user_id, flag):
    out = subprocess.run(["make", "-n", "lab", f"USER_ID={user_id}"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    lab = [line for line in out.stdout.splitlines() if "jupyter lab" in line]
    assert len(lab) == 1 and lab[0].rstrip().endswith("--allow-root") == flag, out.stdout
