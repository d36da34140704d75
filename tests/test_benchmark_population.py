"""``benchmarks/population.py`` and ``benchmarks/population_floor.py`` keep working (no timing
is asserted: the numbers are the scripts' output, recorded under ``benchmarks/results``)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> str:
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args],
                       capture_output=True, text=True, check=True, timeout=600)
    return r.stdout


def test_population_script_prints_rates_and_checks_the_records() -> None:
    out = _run("population.py", "--tasks", "mlp-digits", "--sizes", "2", "--rounds", "1",
               "--steps", "30", "--seq-runs", "1", "--threads", "1")
    assert re.search(r"^\s+2\s+[\d.]+\s+[\d.]+x", out, re.MULTILINE), out
    worst = float(re.search(r"same run alone: ([\d.e+-]+)", out).group(1))  # type: ignore[union-attr]
    assert worst <= 1e-5  # the records' tolerance (tests/test_population.py)


def test_population_floor_script_prints_the_floor_and_the_population() -> None:
    out = _run("population_floor.py", "--sizes", "2", "--seq-runs", "1")
    row = re.search(r"^\s+2(\s+[\d.]+x?){7}\s*$", out, re.MULTILINE)
    assert row is not None, out
