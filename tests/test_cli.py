"""The console script and the README's two commands."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import optimlab
from optimlab.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_list_names_every_optimizer_and_transform(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name, cls in optimlab.OPTIMIZERS.items():
        assert name in out and cls.__name__ in out
    for name in ("scale_by_adam", "trace", "clip_by_global_norm", "l1_proximal"):
        assert name in out


def test_compare_says_plainly_that_the_lab_is_not_there_yet(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare"]) == 0
    assert "not part of" in capsys.readouterr().out


def test_unknown_command_is_one_clear_error_line() -> None:
    r = subprocess.run([sys.executable, "-m", "optimlab.cli", "bogus"], capture_output=True,
                       text=True, check=False)
    assert r.returncode == 2
    assert "invalid choice: 'bogus'" in r.stderr
    assert "Traceback" not in r.stderr


def _command_after(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(re.escape(marker) + r"\n```bash\n(.+)\n```", text)
    assert m, f"README.md has no bash block after {marker}"
    return m.group(1)


def test_readme_has_the_two_commands_and_ci_runs_the_test_one() -> None:
    main_cmd = _command_after("<!-- main-command -->")
    test_cmd = _command_after("<!-- test-command -->")
    assert "optimlab compare" in main_cmd and "pip install" in main_cmd
    assert "pytest" in test_cmd and "pip install" in test_cmd
    ci = (ROOT / ".ci" / "run").read_text()
    assert "<!-- test-command -->" in ci
    # The extraction in .ci/run yields exactly the README's command.
    r = subprocess.run(["awk", '/<!-- test-command -->/{getline; getline; print; exit}',
                        str(ROOT / "README.md")], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == test_cmd


def test_readme_python_examples_run() -> None:
    """Every ```python block of the README runs as written (each in a fresh namespace)."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 2
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {"__name__": "readme"})
