"""The main job end to end: `optimlab compare` as a user runs it, and the batch-size study."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # end to end: the CLI in subprocesses, whole studies


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "optimlab.cli", *args], cwd=cwd,
                          capture_output=True, text=True, check=False)


def _plots(html: str) -> list[str]:
    return re.findall(r'data-plot="([a-z0-9_-]+)"', html)


def test_default_compare_writes_the_report_and_resumes(tmp_path: Path) -> None:
    r = _cli(tmp_path, "compare")
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "optimlab-results" / "default"
    html = (out / "index.html").read_text()
    plots = _plots(html)
    assert plots.count("loss-steps") == 4 and plots.count("loss-time") == 4
    assert plots.count("trajectories") == 2  # rosenbrock and the quadratic
    for name in ("profile-work", "profile-time", "memory"):
        assert name in plots
    from optimlab.lab.spec import DEFAULT_STUDY, StudySpec
    from optimlab.lab.study import plan

    n = len(plan(StudySpec.load(DEFAULT_STUDY)))  # deterministic tasks run one seed
    assert 7 * 4 <= n < 7 * 4 * 3
    assert "one seed" in r.stderr  # the plan says so
    records = json.loads((out / "results.json").read_text())["records"]
    assert len(records) == n
    assert {r["config"]["optimizer"] for r in records} == {
        "sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw"}
    assert all(r["status"] in ("ok", "diverged") for r in records)
    csv_rows = (out / "results.csv").read_text().strip().splitlines()
    assert len(csv_rows) == 1 + n
    assert "report:" in r.stdout
    assert (out / "summary.md").read_text().startswith("#")

    again = _cli(tmp_path, "compare", "--no-report")
    assert again.returncode == 0
    assert f"{n} of {n} runs already stored" in again.stderr


def test_the_batch_size_trade_off(tmp_path: Path) -> None:
    r = _cli(tmp_path, "compare", "--tasks", "mlp-digits", "--optimizers", "sgd,adam",
             "--batch-size", "full,1,32", "--steps", "150", "--seeds", "2",
             "--out", "bs-report")
    assert r.returncode == 0, r.stderr[-2000:]
    html = (tmp_path / "bs-report" / "index.html").read_text()
    plots = _plots(html)
    for name in ("batch-steps", "batch-time", "batch-gap"):
        assert name in plots
    for label in ("sgd bs=full", "sgd bs=1", "sgd bs=32", "adam bs=full", "adam bs=1",
                  "adam bs=32"):
        assert label in r.stdout
