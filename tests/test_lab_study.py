"""Studies: the typed spec, grids and labels, validation, merging, interleaving, the runner
loop, held-out seeds, order independence, resuming and SIGKILL safety."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from faultutil import stored_runs
from labutil import stable

from optimlab.lab.execution import InlineExecutor, execute_all, interleave
from optimlab.lab.report.stats import aggregate
from optimlab.lab.spec import DEFAULT_STUDY, StudyError, StudySpec, load_study_file
from optimlab.lab.store import SQLiteStore, StoreError, open_store
from optimlab.lab.study import (
    count_runs,
    heldout_label,
    is_heldout,
    plan,
    plan_notes,
    run_study,
)
from optimlab.lab.tasks import make_task
from optimlab.lab.validate import ValidationError


def _spec(**kw: Any) -> StudySpec:
    base = {"name": "s", "tasks": ["quadratic"], "optimizers": ["sgd", "adam"], "seeds": 2,
            "steps": 40}
    base.update(kw)
    return StudySpec.from_mapping(base)


# --------------------------------------------------------------------------- the spec


def test_the_grid_and_its_labels() -> None:
    spec = _spec(batch_size=["full", 8], hyperparams={"sgd": {"lr": [0.01, 0.1]}},
                 tasks=["quadratic", "logreg-breast-cancer"], seeds=[0, 1])
    runs = plan(spec)
    det = {t: make_task(t).info.deterministic_with_full_batch for t in spec.tasks}
    # per task: sgd 2 lr x (full: 1 or 2 seeds, 8: 2 seeds) + adam the same with 1 lr
    expected = sum(3 * ((1 if det[t] else 2) + 2) for t in spec.tasks)
    assert len(runs) == expected == len({r.key for r in runs})
    labels = {r.label for r in runs}
    assert labels == {"sgd lr=0.01 bs=full", "sgd lr=0.01 bs=8", "sgd lr=0.1 bs=full",
                      "sgd lr=0.1 bs=8", "adam bs=full", "adam bs=8"}
    # the same arm on two tasks carries the same label
    by_task = {t: {r.label for r in runs if r.config.task == t} for t in spec.tasks}
    assert by_task["quadratic"] == by_task["logreg-breast-cancer"]
    # configs are resolved: every hyperparameter explicit
    assert all("lr" in r.config.hyperparams for r in runs)
    # full-batch runs of a deterministic task run one seed, and the plan says so
    for r in runs:
        assert r.deterministic == (det[r.config.task] and r.config.batch_size == "full")
    if any(det.values()):
        assert any("one seed" in n for n in plan_notes(spec, runs))


def test_tuple_valued_hyperparameters_and_sweeps_of_them() -> None:
    one = plan(_spec(optimizers=["adam"], hyperparams={"adam": {"betas": [0.8, 0.9]}}))
    assert len(one) == 2 and one[0].config.hyperparams["betas"] == [0.8, 0.9]
    two = plan(_spec(optimizers=["adam"],
                     hyperparams={"adam": {"betas": [[0.8, 0.9], [0.9, 0.99]]}}))
    assert len(two) == 4 and {r.label for r in two} == {"adam betas=(0.8,0.9)",
                                                        "adam betas=(0.9,0.99)"}


def test_per_task_settings_override_the_study_ones() -> None:
    spec = _spec(tasks=["quadratic", "rosenbrock"], hyperparams={"sgd": {"lr": 0.01}},
                 clip_norm=2.0,
                 task={"rosenbrock": {"hyperparams": {"sgd": {"lr": 0.001}}, "epochs": 7,
                                      "options": {"noise": 0.1}, "clip_norm": 0.5}})
    cfg = {(r.config.task, r.config.optimizer): r.config for r in plan(spec)}
    assert cfg["quadratic", "sgd"].hyperparams["lr"] == 0.01
    assert cfg["quadratic", "sgd"].steps == 40 and cfg["quadratic", "sgd"].clip_norm == 2.0
    assert cfg["rosenbrock", "sgd"].hyperparams["lr"] == 0.001
    # a per-task budget replaces the study's budget as a whole
    assert cfg["rosenbrock", "sgd"].epochs == 7 and cfg["rosenbrock", "sgd"].steps is None
    assert cfg["rosenbrock", "sgd"].clip_norm == 0.5
    assert cfg["rosenbrock", "sgd"].task_options == {"noise": 0.1}
    assert {r.label for r in plan(spec)} == {"sgd", "adam"}


def test_new_settings_reach_the_run_config_and_key() -> None:
    plain = plan(_spec(optimizers=["sgd"]))[0]
    clipped = plan(_spec(optimizers=["sgd"], clip_norm=1.0, clip_value=0.5,
                         lr_scaling="sqrt", base_batch_size=64))[0]
    c = clipped.config
    assert (c.clip_norm, c.clip_value, c.lr_scaling, c.base_batch_size) == (1.0, 0.5, "sqrt", 64)
    assert clipped.key != plain.key
    assert plan(_spec(optimizers=["sgd"], steps=None, examples=640))[0].config.examples == 640


@pytest.mark.parametrize("spec,field", [
    ({"tasks": ["quadratic"]}, "optimizers"),
    ({"tasks": ["quadratic"], "optimizers": ["adma"]}, "optimizers[0]"),
    ({"tasks": ["quadratic", "nope"], "optimizers": ["sgd"]}, "tasks[1]"),
    ({"tasks": ["quadratic"], "optimizers": ["sgd"], "seeds": 0}, "seeds"),
    ({"tasks": ["quadratic"], "optimizers": ["sgd"], "seeds": [1, 1]}, "seeds"),
    ({"tasks": ["quadratic"], "optimizers": ["sgd"], "seeds": [0, -1]}, "seeds[1]"),
    ({"tasks": ["quadratic"], "optimizers": ["sgd"], "batch_size": [0]}, "batch_size"),
    ({"tasks": ["quadratic"], "optimizers": ["sgd"], "schedule": "zig"}, "schedule"),
    ({"tasks": ["quadratic"], "optimizers": ["sgd"], "stepz": 3}, "stepz"),
    ({"tasks": ["quadratic"], "optimizers": ["sgd"], "steps": 0}, "steps"),
    ({"tasks": ["quadratic"], "optimizers": ["sgd"], "steps": 10, "epochs": 1}, "epochs"),
    ({"tasks": ["quadratic"], "optimizers": ["sgd"], "examples": 1.5}, "examples"),
    ({"tasks": ["quadratic"], "optimizers": ["sgd"], "clip_norm": -1.0}, "clip_norm"),
    ({"tasks": ["quadratic"], "optimizers": ["sgd"], "clip_value": "big"}, "clip_value"),
    ({"tasks": ["quadratic"], "optimizers": ["sgd"], "lr_scaling": "cubic"}, "lr_scaling"),
    ({"tasks": ["quadratic"], "optimizers": ["sgd"], "base_batch_size": 0}, "base_batch_size"),
    ({"tasks": ["quadratic"], "optimizers": ["sgd"], "rank_by": "speed"}, "rank_by"),
    ({"tasks": ["quadratic"], "optimizers": ["sgd"], "heldout_seeds": -1}, "heldout_seeds"),
    ({"tasks": ["quadratic"], "optimizers": ["sgd"], "telemetry": "yes"}, "telemetry"),
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
    ({"tasks": ["quadratic"], "optimizers": ["sgd"], "task": {"quadratic": {"stepz": 1}}},
     "task.quadratic.stepz"),
    ({"tasks": ["quadratic"], "optimizers": ["sgd"],
      "task": {"quadratic": {"clip_norm": 0}}}, "task.quadratic.clip_norm"),
])
def test_invalid_specs_name_the_field(spec: dict, field: str) -> None:
    with pytest.raises(StudyError) as e:
        StudySpec.from_mapping(spec)
    assert field in str(e.value)
    assert "\n" not in str(e.value)
    assert isinstance(e.value, ValidationError) and isinstance(e.value, ValueError)


def test_invalid_hyperparameter_values_are_caught_before_anything_runs() -> None:
    with pytest.raises(StudyError, match="lr"):
        plan(_spec(hyperparams={"sgd": {"lr": [0.1, -1.0]}}))


def test_to_dict_round_trips() -> None:
    spec = _spec(hyperparams={"adam": {"betas": [[0.8, 0.9], [0.9, 0.99]], "lr": 0.01}},
                 task={"quadratic": {"batch_size": "full", "clip_value": 1.0}},
                 rank_by="time", heldout_seeds=2)
    again = StudySpec.from_mapping(spec.to_dict())
    assert again == spec
    assert [r.key for r in plan(again)] == [r.key for r in plan(spec)]


def test_study_files(tmp_path: Path) -> None:
    good = tmp_path / "mine.toml"
    good.write_text('tasks = ["quadratic"]\noptimizers = ["sgd"]\nseeds = [0, 5]\n'
                    'clip_norm = 1.0\n[hyperparams.sgd]\nlr = [0.01, 0.02]\n'
                    '[task.quadratic]\nsteps = 10\n')
    spec = load_study_file(good)
    assert spec.name == "mine" and spec.seeds == (0, 5) and spec.clip_norm == 1.0
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
    spec = load_study_file(DEFAULT_STUDY)
    assert spec.optimizers == ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam",
                               "adamw")
    assert len(spec.seeds) == 3 and spec.n_heldout == 0  # nothing swept
    det = [t for t in spec.tasks if (spec.settings(t).batch_size or spec.batch_size)
           == ("full",) and make_task(t).info.deterministic_with_full_batch]
    assert len(plan(spec)) == 7 * (3 * len(spec.tasks) - 2 * len(det))
    assert count_runs(spec) == len(plan(spec))


def test_merging_overrides_into_a_study() -> None:
    default = load_study_file(DEFAULT_STUDY)
    merged = default.merged_with({"tasks": ["quadratic", "mlp-digits"],
                                  "optimizers": ["sgd", "adam"], "steps": 50,
                                  "clip_norm": 1.0})
    assert merged.name is None and merged.resolved_name.startswith("study-")
    assert merged.tasks == ("quadratic", "mlp-digits") and merged.optimizers == ("sgd", "adam")
    # per-task settings carry over for the remaining tasks and optimizers ...
    assert set(merged.task) == {"quadratic", "mlp-digits"}
    assert set(merged.task["quadratic"].hyperparams) == {"sgd", "adam"}
    assert merged.task["quadratic"].batch_size == ("full",)
    # ... except what the overrides set
    cfg = {(r.config.task, r.config.optimizer): r.config for r in plan(merged)}
    assert all(c.steps == 50 and c.clip_norm == 1.0 for c in cfg.values())
    assert cfg["quadratic", "sgd"].hyperparams["lr"] == 1e-2
    lr = default.merged_with({"optimizers": ["sgd"], "hyperparams": {"sgd": {"lr": [0.5]}}})
    assert {r.config.hyperparams["lr"] for r in plan(lr)} == {0.5}  # per-task lrs dropped
    bs = default.merged_with({"batch_size": [8]})
    assert all(t.batch_size is None for t in bs.task.values())
    named = default.merged_with({"seeds": 2, "name": "mine"})
    assert named.name == "mine" and named.seeds == (0, 1)
    with pytest.raises(StudyError, match="unknown field 'bogus'"):
        default.merged_with({"bogus": 1})
    with pytest.raises(StudyError, match="rank_by"):
        default.merged_with({"rank_by": "luck"})


def test_heldout_seeds_default_to_the_study_seeds_when_sweeping() -> None:
    assert _spec().n_heldout == 0
    swept = _spec(hyperparams={"sgd": {"lr": [0.01, 0.1]}})
    assert swept.n_heldout == 2 and swept.heldout_seed_list == (2, 3)
    assert _spec(hyperparams={"sgd": {"lr": [0.01, 0.1]}}, heldout_seeds=0).n_heldout == 0
    assert _spec(seeds=[3, 9], heldout_seeds=1).heldout_seed_list == (10,)
    assert heldout_label("sgd") == "sgd best" and is_heldout("sgd best")
    assert not is_heldout("sgd lr=0.1") and not is_heldout(None)


# --------------------------------------------------------------------------- execution


def test_interleaving_is_round_robin_deterministic_and_salted() -> None:
    items = [(arm, seed) for arm in "abcde" for seed in range(3)]
    order = interleave(items, group=lambda x: x[0], rank=lambda x: x[1], salt="s")
    assert sorted(order) == sorted(items)
    assert [s for _, s in order] == [0] * 5 + [1] * 5 + [2] * 5  # seed-major rounds
    assert order == interleave(list(reversed(items)), group=lambda x: x[0],
                               rank=lambda x: x[1], salt="s")  # input order is irrelevant
    rounds = [[a for a, s in order if s == r] for r in range(3)]
    assert len({tuple(r) for r in rounds}) > 1  # positions change from round to round
    assert order != interleave(items, group=lambda x: x[0], rank=lambda x: x[1], salt="t")


def test_the_runner_loop_runs_chains_and_counts() -> None:
    seen: list[tuple[int, int, Any]] = []
    stored: list[Any] = []
    ran = execute_all(["a0", "b0"], lambda x: x.upper(), InlineExecutor(),
                      sink=lambda item, result: stored.append(result),
                      then=lambda item, result: [item[0] + str(int(item[1]) + 1)]
                      if item[1] < "2" else [],
                      progress=lambda c, t, item, result: seen.append((c, t, item)), done=4)
    assert ran == 6
    # a chain's follow-ups go first, so one chain completes before the next starts
    assert stored == ["A0", "A1", "A2", "B0", "B1", "B2"]
    assert [c for c, _, _ in seen] == [5, 6, 7, 8, 9, 10]
    assert seen[-1][1] == 10
    with pytest.raises(ZeroDivisionError):
        execute_all([1, 0], lambda x: 1 / x, InlineExecutor())


def test_a_study_resumes_and_a_diverging_run_does_not_stop_it(tmp_path: Path) -> None:
    spec = _spec(hyperparams={"sgd": {"lr": [0.01, 1.0]}}, heldout_seeds=0)
    store = open_store(tmp_path / "r.db")
    seen = []
    out = run_study(spec, store, executor=InlineExecutor(), population="off",
                    progress=lambda d, t, r: seen.append((d, t, r.status, r.label)))
    assert (out.planned, out.skipped, out.executed) == (6, 0, 6)
    assert [d for d, _, _, _ in seen] == [1, 2, 3, 4, 5, 6]
    # interleaved: seed-major rounds, every arm once per round
    assert len({label for _, _, _, label in seen[:3]}) == 3
    records = store.study_records("s")
    status = {(r.label, r.seed): r.status for r in records}
    assert status["sgd lr=1", 0] == "diverged" and status["sgd lr=0.01", 0] == "ok"
    assert status["adam", 1] == "ok"
    again = run_study(spec, store, executor=InlineExecutor())
    assert (again.skipped, again.executed) == (6, 0)
    # more seeds is another spec: refused under the same name, ...
    more = {"hyperparams": {"sgd": {"lr": [0.01, 1.0]}}, "seeds": 3, "heldout_seeds": 0}
    with pytest.raises(StoreError, match=r"study 's' .*another spec \(seeds: \[0, 1\] there, "
                                         r"\[0, 1, 2\] now\).*--name NEW.*--replace"):
        run_study(_spec(**more), store, executor=InlineExecutor())
    # ... and under a new name it reuses the stored runs (runs are shared by key)
    bigger = run_study(_spec(name="s3", **more), store, executor=InlineExecutor())
    assert (bigger.skipped, bigger.executed) == (6, 3)
    assert len(store.study_records("s3")) == 9 and len(store.study_records("s")) == 6


def test_heldout_seeds_rerun_each_optimizers_best_arm(tmp_path: Path) -> None:
    spec = _spec(hyperparams={"sgd": {"lr": [1.0, 0.01, 0.05]}}, heldout_seeds=2)
    with open_store(tmp_path / "r.db") as store:
        out = run_study(spec, store, executor=InlineExecutor())
        records = store.study_records("s")
        saved = store.study_spec("s")
    assert out.planned == 3 * 2 + 2 + 2 * 2 and out.executed == out.planned
    best = [r for r in records if is_heldout(r.label)]
    assert sorted({r.label for r in best}) == ["adam best", "sgd best"]
    assert {r.seed for r in best} == {2, 3}  # fresh seeds, none of the study's
    # the choice is the ranking's: the sweep arm that settled with the least work
    sweep = aggregate([r for r in records if not is_heldout(r.label)
                       and r.optimizer == "sgd"])
    winner = next(s.arm for s in sweep.values() if s.is_best)
    assert saved["heldout_choice"] == {"quadratic": {"sgd": winner, "adam": "adam"}}
    assert saved["heldout_seeds"] == 2
    lr = {"sgd lr=1": 1.0, "sgd lr=0.01": 0.01, "sgd lr=0.05": 0.05}[winner]
    assert all(r.config.hyperparams["lr"] == lr for r in best if r.optimizer == "sgd")
    # resuming runs nothing
    with open_store(tmp_path / "r.db") as store:
        again = run_study(spec, store, executor=InlineExecutor())
    assert again.executed == 0 and again.planned == out.planned


def _ranks(spec: StudySpec, db: Path) -> dict[tuple[str, str], tuple[float, bool, bool]]:
    with open_store(db) as store:
        run_study(spec, store, executor=InlineExecutor())
        records = store.study_records(spec.resolved_name)
    return {k: (s.rank, s.is_best, s.tied_with_best) for k, s in aggregate(records).items()}


def test_an_order_reversed_study_plans_and_ranks_the_same(tmp_path: Path) -> None:
    opts = ["sgd", "momentum", "nesterov", "adam"]
    base = {"tasks": ["quadratic", "logreg-breast-cancer"], "seeds": 2, "steps": 150,
            "hyperparams": {"sgd": {"lr": 0.01}, "momentum": {"lr": 0.01},
                            "nesterov": {"lr": 0.01}, "adam": {"lr": 0.05}}}
    forward = StudySpec.from_mapping({**base, "optimizers": opts, "name": "f"})
    reverse = StudySpec.from_mapping({**base, "optimizers": opts[::-1], "name": "r",
                                      "tasks": base["tasks"][::-1]})
    pf, pr = plan(forward), plan(reverse)
    assert sorted((r.key, r.label) for r in pf) == sorted((r.key, r.label) for r in pr)
    assert _ranks(forward, tmp_path / "f.db") == _ranks(reverse, tmp_path / "r.db")


@pytest.mark.slow
def test_parallel_execution_gives_the_same_records(tmp_path: Path) -> None:
    from optimlab.lab.execution import ProcessExecutor
    spec = _spec()
    a = open_store(tmp_path / "a.db")
    b = open_store(tmp_path / "b.db")
    run_study(spec, a, executor=InlineExecutor())
    with ProcessExecutor(2) as pool:
        run_study(spec, b, executor=pool)
    ra = sorted(a.study_records("s"), key=lambda r: r.key)
    rb = sorted(b.study_records("s"), key=lambda r: r.key)
    assert [stable(r) for r in ra] == [stable(r) for r in rb]


# --------------------------------------------------------------------------- the store


def test_the_store_keeps_study_runs(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "x" / "r.db")
    assert store.studies() == []
    spec = _spec(optimizers=["sgd"], seeds=1, steps=5)
    run_study(spec, store, executor=InlineExecutor())
    (record,) = store.study_records("s")
    assert record.label == "sgd"
    assert store.put_run(record) is False  # never twice
    store.save_study("st", {"name": "st"}, [(record.key, "lab"), ("k2", "lab2")])
    assert store.finished([record.key, "k2"]) == {record.key}
    got = store.study_records("st")
    assert len(got) == 1 and got[0].label == "lab"
    names = {s["name"]: s for s in store.studies()}
    assert names["st"] == {"name": "st", "updated": pytest.approx(time.time(), abs=60),
                           "runs": 2, "finished": 1}
    with pytest.raises(StoreError, match=r"no study 'other'.*st"):
        store.study_records("other")
    store.close()
    # reopening by URL sees the same data
    again = open_store(f"sqlite:///{tmp_path / 'x' / 'r.db'}")
    assert again.finished([record.key]) == {record.key}


def test_store_urls_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="unsupported results-store URL scheme 'mysql'"):
        open_store("mysql://localhost/db")
    with pytest.raises(StoreError, match="bad SQLite URL"):
        open_store("sqlite://relative.db")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="not a usable results database"):
        open_store(junk)
    assert junk.read_bytes() == b"this is not a database" * 100  # nothing lost


def _compare_cmd(db: Path) -> list[str]:
    return [sys.executable, "-m", "optimlab.cli", "compare", "--tasks", "quadratic",
            "--optimizers", "sgd,momentum,adam", "--seeds", "6", "--steps", "600",
            "--batch-size", "8", "--name", "killed", "--no-report", "--workers", "2",
            "--store", f"sqlite:///{db}"]




@pytest.mark.slow
def test_a_study_killed_with_sigkill_resumes_to_exactly_the_uninterrupted_runs(
        tmp_path: Path) -> None:
    killed_db, clean_db = tmp_path / "killed.db", tmp_path / "clean.db"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(_compare_cmd(killed_db), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, env=env)
    deadline = time.time() + 120
    while stored_runs(killed_db) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    at_kill = stored_runs(killed_db)
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
    assert len({r.key for r in rk}) == 18  # none duplicated
    assert [stable(r) for r in sorted(rk, key=lambda r: r.key)] == [
        stable(r) for r in sorted(rc, key=lambda r: r.key)]
