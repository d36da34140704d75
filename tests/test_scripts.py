"""The runnable example and the benchmark script keep working (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_batch_sizes_example_runs_all_three_regimes() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "batch_sizes.py")],
                       capture_output=True, text=True, check=True, timeout=300)
    out = r.stdout
    assert "batch gradient descent" in out
    assert "stochastic" in out
    assert "mini-batch" in out


def test_step_time_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "step_time.py"), "--device", "cpu",
         "--params", "2e5", "--optimizers", "sgd,adamw", "--repeat", "2", "--warmup", "0",
         "--bandwidth-mib", "8", "--json", str(out)],
        capture_output=True, text=True, check=True, timeout=600)
    data = json.loads(out.read_text())
    text = json.dumps(data)
    assert "adamw" in text and "sgd" in text


def test_user_task_example_loads_by_import_path_and_reaches_its_target() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "user_task.py")],
                       capture_output=True, text=True, check=True, timeout=300)
    loss = float(r.stdout.split("->")[1].split()[0])
    assert loss < 0.02, r.stdout
