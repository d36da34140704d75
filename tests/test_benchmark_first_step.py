"""``benchmarks/first_step.py`` keeps working (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # two compiles in subprocesses
def test_first_step_script_times_a_cold_and_a_warm_compile(tmp_path: Path) -> None:
    out = tmp_path / "first.json"
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "first_step.py"), "--optimizers", "sgd",
         "--params", "2e4", "--rounds", "1", "--json", str(out)],
        capture_output=True, text=True, check=True, timeout=600)
    assert "first fused step: cold" in r.stdout
    res = json.loads(out.read_text())["results"]["sgd"]
    assert len(res["cold_s"]) == len(res["warm_s"]) == 1 and len(res["step_ms"]) == 2
    assert all(t > 0 for t in res["cold_s"] + res["warm_s"] + res["step_ms"])
