"""Studies and the results store: grids, labels, validation, resuming, SIGKILL safety."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from labutil import stable

from optimlab.lab.store import SQLiteStore, StoreError, open_store
from optimlab.lab.study import (
    InlineExecutor,
    StudyError,
    load_study_file,
    normalize_spec,
    plan,
    run_study,
)


def _spec(**kw) -> dict:
    base = {"name": "s", "tasks": ["quadratic"], "optimizers": ["sgd", "adam"], "seeds": 2,
            "steps": 40}
    base.update(kw)
    return normalize_spec(base)


def test_the_grid_and_its_labels() -> None:
    spec = _spec(batch_size=["full", 8], hyperparams={"sgd": {"lr": [0.01, 0.1]}},
                 tasks=["quadratic", "logreg-breast-cancer"])
    runs = plan(spec)
    # per task: sgd 2 lr x 2 bs x 2 seeds + adam 2 bs x 2 seeds = 12
    assert len(runs) == 24
    assert len({r.key for r in runs}) == 24
    labels = {r.label for r in runs}
    assert labels == {"sgd lr=0.01 bs=full", "sgd lr=0.01 bs=8", "sgd lr=0.1 bs=full",
                      "sgd lr=0.1 bs=8", "adam bs=full", "adam bs=8"}
    # the same arm on two tasks carries the same label
    by_task = {t: {r.label for r in runs if r.config.task == t} for t in spec["tasks"]}
    assert by_task["quadratic"] == by_task["logreg-breast-cancer"]
    # configs are resolved: every hyperparameter explicit
    assert all("lr" in r.config.hyperparams for r in runs)


def test_tuple_valued_hyperparameters_and_sweeps_of_them() -> None:
    one = plan(_spec(optimizers=["adam"], hyperparams={"adam": {"betas": [0.8, 0.9]}}))
    assert len(one) == 2 and one[0].config.hyperparams["betas"] == [0.8, 0.9]
    two = plan(_spec(optimizers=["adam"],
                     hyperparams={"adam": {"betas": [[0.8, 0.9], [0.9, 0.99]]}}))
    assert len(two) == 4 and {r.label for r in two} == {"adam betas=(0.8,0.9)",
                                                        "adam betas=(0.9,0.99)"}


def test_per_task_settings_override_the_study_ones() -> None:
    spec = _spec(tasks=["quadratic", "rosenbrock"], hyperparams={"sgd": {"lr": 0.01}},
                 task={"rosenbrock": {"hyperparams": {"sgd": {"lr": 0.001}}, "steps": 7,
                                      "options": {"noise": 0.1}}})
    cfg = {(r.config.task, r.config.optimizer): r.config for r in plan(spec)}
    assert cfg["quadratic", "sgd"].hyperparams["lr"] == 0.01
    assert cfg["rosenbrock", "sgd"].hyperparams["lr"] == 0.001
    assert cfg["rosenbrock", "sgd"].steps == 7
    assert cfg["rosenbrock", "sgd"].task_options == {"noise": 0.1}
    assert {r.label for r in plan(spec)} == {"sgd", "adam"}


@pytest.mark.parametrize("spec,field", [
    ({"tasks": ["quadratic"]}, "optimizers"),
    ({"tasks": ["quadratic"], "optimizers": ["adma"]}, "optimizers[0]"),
    ({"tasks": ["quadratic", "nope"], "optimizers": ["sgd"]}, "tasks[1]"),
    ({"tasks": ["quadratic"], "optimizers": ["sgd"], "seeds": 0}, "seeds"),
    ({"tasks": ["quadratic"], "optimizers": ["sgd"], "seeds": [1, 1]}, "seeds"),
    ({"tasks": ["quadratic"], "optimizers": ["sgd"], "batch_size": [0]}, "batch_size"),
    ({"tasks": ["quadratic"], "optimizers": ["sgd"], "schedule": "zig"}, "schedule"),
    ({"tasks": ["quadratic"], "optimizers": ["sgd"], "stepz": 3}, "stepz"),
    ({"tasks": ["quadratic"], "optimizers": ["sgd"], "hyperparams": {"sgd": {"lrr": 1}}},
     "hyperparams.sgd.lrr"),
    ({"tasks": ["quadratic"], "optimizers": ["sgd"], "hyperparams": {"adam": {"lr": 1}}},
     "hyperparams.adam"),
    ({"tasks": ["quadratic"], "optimizers": ["sgd"], "hyperparams": {"sgd": {"lr": []}}},
     "hyperparams.sgd.lr"),
    ({"tasks": ["quadratic"], "optimizers": ["sgd"],
      "task": {"quadratic": {"options": {"condition_number": 0}}}}, "task.quadratic.options"),
    ({"tasks": ["quadratic"], "optimizers": ["sgd"], "task": {"rosenbrock": {}}},
     "task.rosenbrock"),
])
def test_invalid_specs_name_the_field(spec, field) -> None:
    with pytest.raises(StudyError) as e:
        normalize_spec(spec)
    assert field in str(e.value)
    assert "\n" not in str(e.value)


def test_invalid_hyperparameter_values_are_caught_before_anything_runs() -> None:
    with pytest.raises(StudyError, match="lr"):
        plan(_spec(hyperparams={"sgd": {"lr": [0.1, -1.0]}}))


def test_study_files(tmp_path: Path) -> None:
    good = tmp_path / "mine.toml"
    good.write_text('tasks = ["quadratic"]\noptimizers = ["sgd"]\nseeds = [0, 5]\n'
                    '[hyperparams.sgd]\nlr = [0.01, 0.02]\n'
                    '[task.quadratic]\nbatch_size = "full"\nsteps = 10\n')
    spec = load_study_file(good)
    assert spec["name"] == "mine" and spec["seeds"] == [0, 5]
    assert len(plan(spec)) == 4
    bad = tmp_path / "bad.toml"
    bad.write_text('tasks = ["quadratic"\n')
    with pytest.raises(StudyError, match=r"bad\.toml: malformed TOML"):
        load_study_file(bad)
    with pytest.raises(StudyError, match="cannot read study file"):
        load_study_file(tmp_path / "missing.toml")
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('tasks = "quadratic"\noptimizers = [1]\n')
    with pytest.raises(StudyError, match=r"wrong\.toml: optimizers\[0\]"):
        load_study_file(wrong)


def test_the_default_study_file_is_valid() -> None:
    path = Path(__file__).resolve().parents[1] / "src/optimlab/lab/studies/default.toml"
    spec = load_study_file(path)
    assert spec["optimizers"] == ["sgd", "momentum", "nesterov", "adagrad", "rmsprop",
                                  "adam", "adamw"]
    assert len(spec["seeds"]) == 3
    assert len(plan(spec)) == 7 * len(spec["tasks"]) * 3


def test_a_study_resumes_and_a_diverging_run_does_not_stop_it(tmp_path: Path) -> None:
    spec = _spec(hyperparams={"sgd": {"lr": [0.01, 1.0]}}, batch_size="full")
    store = open_store(tmp_path / "r.db")
    seen = []
    out = run_study(spec, store, executor=InlineExecutor(),
                    progress=lambda d, t, r: seen.append((d, t, r["status"])))
    assert (out.planned, out.skipped, out.executed) == (6, 0, 6)
    assert [d for d, _, _ in seen] == [1, 2, 3, 4, 5, 6]
    records = store.study_records("s")
    status = {(r["label"], r["config"]["seed"]): r["status"] for r in records}
    assert status["sgd lr=1", 0] == "diverged" and status["sgd lr=0.01", 0] == "ok"
    assert status["adam", 1] == "ok"
    again = run_study(spec, store, executor=InlineExecutor())
    assert (again.skipped, again.executed) == (6, 0)
    bigger = run_study(_spec(hyperparams={"sgd": {"lr": [0.01, 1.0]}}, batch_size="full",
                             seeds=3), store, executor=InlineExecutor())
    assert (bigger.skipped, bigger.executed) == (6, 3)
    assert len(store.study_records("s")) == 9


@pytest.mark.slow
def test_parallel_execution_gives_the_same_records(tmp_path: Path) -> None:
    from optimlab.lab.study import ProcessExecutor
    spec = _spec()
    a = open_store(tmp_path / "a.db")
    b = open_store(tmp_path / "b.db")
    run_study(spec, a, executor=InlineExecutor())
    run_study(spec, b, executor=ProcessExecutor(2))
    ra = sorted(a.study_records("s"), key=lambda r: r["key"])
    rb = sorted(b.study_records("s"), key=lambda r: r["key"])
    assert [stable(r) for r in ra] == [stable(r) for r in rb]


def test_the_store(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "x" / "r.db")
    assert store.studies() == []
    record = {"key": "k1", "status": "ok", "config": {"a": 1}, "x": float("nan")}
    assert store.put_run(record) is True
    assert store.put_run(record) is False  # never twice
    store.save_study("st", {"name": "st"}, [("k1", "lab"), ("k2", "lab2")])
    assert store.finished(["k1", "k2"]) == {"k1"}
    got = store.study_records("st")
    assert len(got) == 1 and got[0]["label"] == "lab"
    assert store.studies() == [{"name": "st", "updated": pytest.approx(time.time(), abs=60),
                                "runs": 2, "finished": 1}]
    with pytest.raises(StoreError, match=r"no study 'other'.*st"):
        store.study_records("other")
    store.close()
    # reopening by URL sees the same data
    again = open_store(f"sqlite:///{tmp_path / 'x' / 'r.db'}")
    assert again.finished(["k1"]) == {"k1"}


def test_store_urls_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="unsupported results-store URL scheme 'postgresql'"):
        open_store("postgresql://localhost/db")
    with pytest.raises(StoreError, match="bad SQLite URL"):
        open_store("sqlite://relative.db")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="not a usable results database"):
        open_store(junk)
    assert junk.read_bytes() == b"this is not a database" * 100  # nothing lost


def _compare_cmd(db: Path) -> list[str]:
    return [sys.executable, "-m", "optimlab.cli", "compare", "--tasks", "quadratic",
            "--optimizers", "sgd,momentum,adam", "--seeds", "6", "--steps", "2000",
            "--batch-size", "full", "--name", "killed", "--no-report", "--workers", "2",
            "--store", f"sqlite:///{db}"]


def _count(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(db, timeout=5)
        try:
            return con.execute("SELECT COUNT(*) FROM optimlab_runs").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_a_study_killed_with_sigkill_resumes_to_exactly_the_uninterrupted_runs(
        tmp_path: Path) -> None:
    killed_db, clean_db = tmp_path / "killed.db", tmp_path / "clean.db"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(_compare_cmd(killed_db), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, env=env)
    deadline = time.time() + 120
    while _count(killed_db) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    at_kill = _count(killed_db)
    assert 3 <= at_kill < 18, "the study must be killed mid-way for this test to mean anything"

    resumed = subprocess.run(_compare_cmd(killed_db), capture_output=True, text=True,
                             env=env, check=False)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{at_kill} of 18 runs already stored" in resumed.stderr
    clean = subprocess.run(_compare_cmd(clean_db), capture_output=True, text=True, env=env,
                           check=False)
    assert clean.returncode == 0, clean.stderr

    with open_store(killed_db) as k, open_store(clean_db) as c:
        rk, rc = k.study_records("killed"), c.study_records("killed")
    assert len(rk) == len(rc) == 18
    assert len({r["key"] for r in rk}) == 18  # none duplicated
    assert [stable(r) for r in rk] == [stable(r) for r in rc]
