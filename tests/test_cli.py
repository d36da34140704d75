"""The console script and the README's two commands."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import optimlab
from optimlab._interrupts import Interrupted
from optimlab.cli import main
from optimlab.lab.pool import WorkerDied

ROOT = Path(__file__).resolve().parents[1]


def test_list_names_every_optimizer_and_transform(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for cls in optimlab.OPTIMIZERS.values():  # under a lab name ("schedule-free-adamw")
        assert f"optimlab.{cls.__name__}" in out  # Muon: within MuonAdamW
    for name in ("scale_by_adam", "trace", "clip_by_global_norm", "l1_proximal"):
        assert name in out


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "optimlab.cli", *args], capture_output=True,
                          text=True, check=False, cwd=cwd)


@pytest.mark.parametrize("command", ["list", "run", "compare", "report", "lr-find", "tune",
                                     "advise"])
def test_every_command_has_help_with_examples(command: str) -> None:
    r = _cli(command, "--help")
    assert r.returncode == 0
    assert "examples:" in r.stdout and f"optimlab {command}" in r.stdout


def test_help_says_what_the_ranking_means() -> None:
    r = _cli("compare", "--help")
    assert "ranking:" in r.stdout and "gradient evaluations" in r.stdout
    assert "settles" in r.stdout and "tied" in r.stdout and "--rank-by" in r.stdout
    for flag in ("--clip", "--clip-value", "--examples", "--epochs", "--lr-scaling",
                 "--base-batch-size", "--heldout-seeds"):
        assert flag in r.stdout
    assert "at least 8" in _cli("tune", "--help").stdout


@pytest.mark.slow  # two gru-charlm studies: 15-20 s on 2 cores
def test_clipping_from_the_command_line_is_in_the_run_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from optimlab.lab.store import open_store

    db = f"sqlite:///{tmp_path / 'r.db'}"
    common = ["compare", "--tasks", "gru-charlm", "--optimizers", "sgd", "--lr", "5",
              "--steps", "3", "--seeds", "1", "--no-report", "--workers", "1",
              "--store", db]
    assert main([*common, "--clip", "1.0", "--name", "clipped"]) == 0
    assert main([*common, "--name", "plain"]) == 0
    with open_store(db) as store:
        (clipped,) = store.study_records("clipped")
        (plain,) = store.study_records("plain")
    assert clipped.config.clip_norm == 1.0 and plain.config.clip_norm is None
    assert clipped.config.key_fields()["clip_norm"] == 1.0
    assert clipped.key == clipped.config.key() != plain.key
    capsys.readouterr()


def test_list_shows_tasks_optimizers_and_schedules(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for word in ("momentum", "nesterov", "rosenbrock", "logreg-breast-cancer", "warmup-cosine"):
        assert word in out


@pytest.mark.parametrize("args,needle", [
    (["run", "--task", "quadratic", "--optimizer", "adma"], "unknown optimizer 'adma'"),
    (["run", "--task", "quadx", "--optimizer", "sgd"], "unknown task 'quadx'"),
    (["run", "--task", "quadratic", "--optimizer", "sgd", "--lr", "-1"], "lr must be"),
    (["run", "--task", "quadratic", "--optimizer", "sgd", "--hp", "foo=1"],
     "no hyperparameter 'foo'"),
    (["run", "--task", "quadratic", "--optimizer", "sgd", "--hp", "momentum"], "KEY=VALUE"),
    (["run", "--task", "quadratic", "--optimizer", "sgd", "--batch-size", "0"], "batch_size"),
    (["run", "--task", "quadratic", "--optimizer", "sgd", "--task-option", "bogus=1"],
     "bogus"),
    (["compare", "--tasks", "quadratic", "--optimizers", "sgd", "--lr", "x"], "--lr"),
    (["compare", "--tasks", "quadratic", "--optimizers", "sgd", "--workers", "0"],
     "--workers"),
    (["compare", "--study", "missing.toml"], "cannot read study file"),
    (["report", "--study", "nope"], "no study 'nope'"),
    (["lr-find", "--task", "quadratic", "--start-lr", "1", "--end-lr", "0.1"], "start_lr"),
    (["lr-find", "--task", "quadratic", "--rule", "guess"], "rule"),
    (["advise", "--task", "quadratic", "--budget", "0"], "budget must be a positive"),
    (["advise", "--task", "quadratic", "--optimizers", "sgd,adma"], "unknown optimizer 'adma'"),
    (["advise", "--task", "quadratic", "--seeds", "0"], "seeds must be a positive integer"),
    (["compare", "--tasks", "quadratic", "--optimizers", "sgd", "--steps", "10", "--epochs",
      "1"], "epochs cannot be combined with steps"),
    (["compare", "--tasks", "quadratic", "--optimizers", "sgd", "--clip", "-1"], "clip_norm"),
    (["compare", "--tasks", "quadratic", "--optimizers", "sgd", "--heldout-seeds", "-1"],
     "heldout_seeds"),
    (["run", "--task", "quadratic", "--optimizer", "sgd", "--clip-value", "0"], "clip_value"),
    (["advise"], "advise needs --task"),
    (["tune", "--tasks", "quadratic", "--optimizers", "sgd", "--trials", "0"], "trials"),
    (["tune", "--tasks", "quadratic", "--optimizers", "sgd", "--trials", "3"],
     "trials must be >= 8"),
    (["tune", "--tasks", "quadratic", "--optimizers", "adma"], "unknown optimizer 'adma'"),
    (["report", "--store", "mysql://x/y"], "unsupported results-store URL"),
])
def test_bad_input_is_one_clear_error_line(tmp_path: Path, args: list[str], needle: str,
                                           capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    if "--store" not in args and args[0] != "lr-find":
        args = [*args, "--store", f"sqlite:///{tmp_path / 'r.db'}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    # progress lines may come first; the error is one line, then one hint line, and no more
    errors = [i for i, line in enumerate(lines) if line.startswith("optimlab: error:")]
    assert errors == [len(lines) - 2], err
    assert needle in lines[-2], err
    assert lines[-1].strip().startswith("hint:")


@pytest.mark.parametrize("args", [
    ["compare", "--tasks"],                        # an option without its value
    ["compare", "--seeds", "x"],                   # a value of the wrong type
    ["compare", "--bogus"],                        # an unknown option
    ["run", "--task", "quadratic"],                # a required option missing
    ["run", "--task", "quadratic", "--optimizer"],
    ["lr-find", "--steps"],
    ["tune", "--tasks", "quadratic"],
    ["advise", "--space", "everything"],           # not one of the choices
    ["compare", "--rank-by", "luck"],
    ["report", "--study"],
    ["list", "nothing"],
])
def test_usage_errors_end_with_what_to_do(args: list[str],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("optimlab: error:")
    assert lines[1].strip() == f"hint: run 'optimlab {args[0]} --help' for the options"


@pytest.mark.parametrize("args", [["bogus"], ["--bogus"]])
def test_top_level_usage_errors_point_to_the_commands(args: list[str],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("optimlab: error:"), lines
    assert lines[1].strip() == "hint: run 'optimlab --help' for the commands"


def test_version_and_help_do_not_import_torch() -> None:
    """``import optimlab`` is light and the CLI imports torch only in commands that need it."""
    code = """if True:
        import contextlib, io, sys
        from optimlab.cli import main
        with contextlib.redirect_stdout(io.StringIO()) as out:
            assert main(["--version"]) == 0
            for command in ([], ["list"], ["run"], ["compare"], ["lr-find"], ["tune"],
                            ["advise"], ["report"]):
                assert main([*command, "--help"]) == 0
        assert out.getvalue().startswith("optimlab 0."), out.getvalue()
        heavy = [m for m in ("torch", "numpy", "optimlab._api", "optimlab.lab")
                 if m in sys.modules]
        assert not heavy, heavy
    """
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0, r.stderr


@pytest.mark.slow
def test_lazy_package_exports_every_name() -> None:
    """``import optimlab`` defers its imports; every name of __all__ still resolves, and a
    submodule imported first (``optimlab.chain``) does not hide the public name it shares."""
    code = """if True:
        import sys, types
        import optimlab as ol
        assert "torch" not in sys.modules
        import optimlab.chain
        from optimlab.chain import ChainOptimizer
        assert isinstance(ol.chain, types.FunctionType), ol.chain
        assert ol.AdamW.__name__ == "AdamW" and ol.OPTIMIZERS["adamw"] is ol.AdamW
        for name in ol.__all__:
            exec(f"from optimlab import {name}")
        namespace = {}
        exec("from optimlab import *", namespace)
        assert set(ol.__all__) <= set(namespace) and set(ol.__all__) <= set(dir(ol))
        modules = {n for n in ol.__all__ if isinstance(getattr(ol, n), types.ModuleType)}
        assert modules == set(ol._SUBMODULES), modules
        assert ol.chain is sys.modules["optimlab.chain"].chain
        assert ChainOptimizer is ol.ChainOptimizer
    """
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0, r.stderr


@pytest.mark.slow
def test_malformed_study_file_is_one_error_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("tasks = [\n")
    r = _cli("compare", "--study", str(bad), "--store", f"sqlite:///{tmp_path / 'r.db'}")
    assert r.returncode == 2 and "malformed TOML" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_run_then_report(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'r.db'}"
    r = _cli("run", "--task", "quadratic", "--optimizer", "nesterov", "--lr", "0.01",
             "--batch-size", "full", "--steps", "300", "--name", "one", "--store", db)
    assert r.returncode == 0, r.stderr
    assert "nesterov on quadratic" in r.stdout and "reached suboptimality" in r.stdout
    assert "settled from step" in r.stdout
    listing = _cli("report", "--store", db)
    assert "one" in listing.stdout and "1/1 runs finished" in listing.stdout


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


@pytest.mark.slow
def test_lr_find_writes_its_plot(tmp_path: Path) -> None:
    r = _cli("lr-find", "--task", "logreg-breast-cancer", "--batch-size", "full", "--steps",
             "40", "--end-lr", "1000", "--out", str(tmp_path / "lrf"))
    assert r.returncode == 0, r.stderr
    assert "suggested lr" in r.stdout and "optimlab run --task logreg-breast-cancer" in r.stdout
    assert (tmp_path / "lrf" / "lr_find.png").stat().st_size > 1000
    assert (tmp_path / "lrf" / "lr_find.json").exists()


@pytest.mark.slow
def test_tune_then_report_shows_the_tuning(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'r.db'}"
    r = _cli("tune", "--tasks", "quadratic", "--optimizers", "sgd,adam", "--trials", "8",
             "--steps", "100", "--batch-size", "full", "--workers", "1", "--name", "tq",
             "--store", db, "--out", str(tmp_path / "rep"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "tuning 'tq'" in r.stdout and "quadratic" in r.stdout
    html = (tmp_path / "rep" / "index.html").read_text()
    assert 'data-plot="tune-history"' in html
    again = _cli("tune", "--tasks", "quadratic", "--optimizers", "sgd,adam", "--trials", "8",
                 "--steps", "100", "--batch-size", "full", "--workers", "1", "--name", "tq",
                 "--store", db, "--no-report", cwd=tmp_path)
    assert again.returncode == 0 and "16 of 16 trials already stored" in again.stderr


# --------------------------------------------------------------------------- faults


def test_help_documents_the_exit_status() -> None:
    for command in ("compare", "tune"):
        out = _cli(command, "--help").stdout
        assert "exit status:" in out
        for code in ("0 ", "3 ", "2 ", "1 ", "130"):
            assert f"\n  {code}" in out, (command, code)
        assert "143 by SIGTERM" in out and "129 by SIGHUP" in out


def _one_error(err: str) -> str:
    """The error line of a command's stderr, checking it is one line and a hint."""
    assert "Traceback" not in err and "internal error" not in err, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    errors = [i for i, line in enumerate(lines) if line.startswith("optimlab: error:")]
    assert errors == [len(lines) - 2] and lines[-1].strip().startswith("hint:"), err
    return lines[-2]


@pytest.mark.parametrize("args", [
    ["compare", "--tasks", "quadratic", "--optimizers", "sgd", "--steps", "5", "--seeds", "1"],
    ["run", "--task", "quadratic", "--optimizer", "sgd", "--steps", "5"],
    ["tune", "--tasks", "quadratic", "--optimizers", "sgd", "--trials", "8", "--steps", "5"],
    ["report", "--study", "x"],
    ["report"],
])
def test_a_store_fault_is_one_line_and_exit_2(tmp_path: Path, args: list[str],
                                             capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    assert main([*args, "--store", f"sqlite:///{junk}"]) == 2
    line = _one_error(capsys.readouterr().err)
    assert "junk.db" in line or "database" in line
    assert junk.read_bytes() == b"this is not a database" * 100  # nothing written


def test_an_unwritable_report_folder_is_one_line_and_the_runs_are_stored(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from optimlab.lab.store import open_store

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    db = f"sqlite:///{tmp_path / 'r.db'}"
    code = main(["compare", "--tasks", "quadratic", "--optimizers", "sgd", "--steps", "5",
                 "--seeds", "1", "--workers", "1", "--name", "ro", "--store", db,
                 "--out", str(blocker / "report")])
    assert code == 2
    line = _one_error(capsys.readouterr().err)
    assert "cannot write the report to" in line
    with open_store(db) as store:
        assert len(store.study_records("ro")) == 1  # the run was stored before the report


def test_a_failed_run_exits_3_with_its_error(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from faultutil import TASK, write_fault_task

    monkeypatch.syspath_prepend(str(write_fault_task(tmp_path)))
    monkeypatch.setenv("OPTIMLAB_ALLOW_IMPORT", "faultpkg")
    code = main(["run", "--task", TASK, "--optimizer", "sgd", "--steps", "5",
                 "--task-option", "fail_seed=0", "--store", f"sqlite:///{tmp_path / 'r.db'}"])
    captured = capsys.readouterr()
    assert code == 3
    assert "failed - task setup: RuntimeError: setup failed for seed 0" in captured.out
    assert "1 of 1 runs failed" in captured.err and "Traceback" not in captured.err


def _raising(error: BaseException) -> Any:
    def command(args: Any) -> int:
        raise error
    return command


@pytest.mark.parametrize("error,status,needle", [
    (sqlite3.OperationalError("database is locked"), 2, "the database failed"),
    (WorkerDied(-9), 1, "a worker process was lost: worker process died: signal 9"),
    (KeyboardInterrupt(), 130, "interrupted (Ctrl-C)"),
    (Interrupted(signal.SIGHUP), 129, "interrupted by SIGHUP"),
])
def test_faults_outside_the_runs_are_one_line_with_their_status(
        error: BaseException, status: int, needle: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import optimlab.cli as cli_module

    monkeypatch.setattr(cli_module, "_cmd_compare", _raising(error))
    assert main(["compare", "--store", f"sqlite:///{tmp_path / 'r.db'}"]) == status
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err, err
    assert "run the same command again to resume" in err


def test_sigterm_during_a_command_exits_143_and_restores_the_handler(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    import optimlab.cli as cli_module

    def command(args: Any) -> int:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(60)  # interrupted at once by the handler
        return 0

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(cli_module, "_cmd_compare", command)
    assert main(["compare", "--store", f"sqlite:///{tmp_path / 'r.db'}"]) == 143
    assert "interrupted by SIGTERM" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) == before
