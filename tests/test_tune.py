"""Tuning on Optuna (optimlab.lab.tune): reproducible trials, equal budgets, the minimum budget
and its space-filling start, the ranking objective, pruning, resumption after a kill, the re-run
of the best configurations, bad input, and the report's section."""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

optuna = pytest.importorskip("optuna")

from optimlab.lab.optimizers import LAB_OPTIMIZERS, build_optimizer  # noqa: E402
from optimlab.lab.report import aggregate, write_report  # noqa: E402
from optimlab.lab.store import open_store  # noqa: E402
from optimlab.lab.tune import (  # noqa: E402
    MIN_TRIALS,
    RANKING_OBJECTIVE,
    SEARCH_SPACES,
    Param,
    TuneError,
    TuneSpec,
    derive_seed,
    search_space,
    storage_url,
    tune,
    tuning_for_study,
    tuning_history,
)

TASK = "quadratic"  # 2-D: a 100-step run takes a few milliseconds
OPTS = ["sgd", "adam"]


def _trials(history: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """What must be identical between two tunings: the trials and everything they measured."""
    return [(h["task"], h["optimizer"], h["index"], h["state"], h["status"], h["value"],
             h["params"], h["intermediate"]) for h in history if h["index"] is not None]


def _spec(**kw: Any) -> TuneSpec:
    base: dict[str, Any] = {"tasks": [TASK], "optimizers": OPTS, "trials": MIN_TRIALS,
                            "steps": 100, "name": "t"}
    return TuneSpec(**{**base, **kw})


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TuneSpec, Any]:
    """One tuning with its re-run, in this process (shared by several tests)."""
    db = tmp_path_factory.mktemp("tune") / "results.db"
    spec = _spec(name="shared", seeds=3)
    events: list[Any] = []
    outcome = tune(spec, str(db), workers=1,
                   progress=lambda done, total, trial: events.append((done, total, trial)))
    return db, spec, (outcome, events)


@pytest.mark.slow
def test_reproducible_equal_budget_and_parallel(tmp_path: Path,
                                                tuned: tuple[Path, TuneSpec, Any]) -> None:
    db, spec, (outcome, events) = tuned
    first = tuning_history(spec, str(db))
    # the same seed and budget in a fresh database, this time one process per study
    again = tune(spec, str(tmp_path / "b.db"), workers=2, rerun=False)
    second = tuning_history(spec, str(tmp_path / "b.db"))
    assert _trials(first) == _trials(second)
    assert [(r.best_value, r.best_params) for r in outcome.results] == [
        (r.best_value, r.best_params) for r in again.results]
    # the budget: exactly `trials` finished trials per optimizer, all of the same length
    for opt in OPTS:
        mine = [h for h in first if h["optimizer"] == opt]
        assert [h["index"] for h in mine] == list(range(spec.trials))
        assert all(h["state"] in ("complete", "pruned", "fail") for h in mine)
        assert all(h["steps_done"] == 100 for h in mine if h["status"] == "ok")
        r = outcome.best(TASK, opt)
        assert r.complete + r.pruned + r.failed == spec.trials and r.ran == spec.trials
    # progress: a start call, then one call per trial, counting up to the total
    assert events[0] == (0, 2 * spec.trials, None)
    assert [e[0] for e in events[1:]] == list(range(1, 2 * spec.trials + 1))
    assert {e[2]["optimizer"] for e in events[1:]} == set(OPTS)
    # a different seed draws different hyperparameters
    tune(_spec(seed=7), str(tmp_path / "c.db"), workers=1, rerun=False)
    other = tuning_history(_spec(seed=7), str(tmp_path / "c.db"))
    assert [h["params"] for h in other] != [h["params"] for h in first]
    assert derive_seed(0, TASK, "sgd", 0) == derive_seed(0, TASK, "sgd", 0) != derive_seed(
        1, TASK, "sgd", 0)


@pytest.mark.slow
def test_trials_are_recorded(tuned: tuple[Path, TuneSpec, Any]) -> None:
    db, spec, (outcome, _) = tuned
    history = tuning_history(spec, str(db))
    for h in history:
        assert h["objective"] == RANKING_OBJECTIVE == "work to target"
        assert h["schedule"] == "constant"
        # the ranking objective: a settled run scores its work fraction (<= 1), one that
        # never settled above 1
        if h["status"] == "ok":
            assert (h["value"] <= 1.0) == (h["steps_to_target"] is not None)
        assert len(h["intermediate"]["step"]) <= 51  # at most about 50 reports per trial
        assert h["status"] != "ok" or h["intermediate"]["step"][-1] == 100
        lr = h["hyperparams"]["lr"]
        low, high = SEARCH_SPACES[h["optimizer"]]["lr"].low, SEARCH_SPACES[h["optimizer"]][
            "lr"].high
        assert low <= lr <= high and h["params"] == {"lr": lr}
        if h["status"] == "diverged":  # diverged: a complete trial with the worst value
            assert h["state"] == "complete" and h["value"] is None
    # the Optuna studies live in the results store's database, beside optimlab's tables
    tables = {r[0] for r in sqlite3.connect(db).execute(
        "SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"studies", "trials", "optimlab_runs"} <= tables
    names = optuna.study.get_all_study_names(storage_url(str(db)))
    assert sorted(names) == [f"shared/{TASK}/adam", f"shared/{TASK}/sgd"]
    best = outcome.best(TASK, "adam")
    values = [h["value"] for h in history if h["optimizer"] == "adam" and h["value"] is not None]
    assert best.best_value == min(values)


def test_the_start_fills_the_search_range(tuned: tuple[Path, TuneSpec, Any]) -> None:
    db, spec, _ = tuned
    history = tuning_history(spec, str(db))
    for opt in OPTS:
        p = SEARCH_SPACES[opt]["lr"]
        lrs = [h["hyperparams"]["lr"] for h in history if h["optimizer"] == opt][:MIN_TRIALS]
        # one trial in each eighth of the log range (a scrambled Halton start)
        eighths = sorted(int(8 * (math.log(lr) - math.log(p.low))
                             / (math.log(p.high) - math.log(p.low))) for lr in lrs)
        assert eighths == list(range(8)), (opt, lrs)


def test_pruned_trial_is_recorded_as_pruned(tmp_path: Path) -> None:
    prune_all = optuna.pruners.ThresholdPruner(upper=-1.0)  # prunes at the first report
    spec = _spec(optimizers=["adam"], pruner=prune_all)
    out = tune(spec, str(tmp_path / "r.db"), workers=1, rerun=False)
    history = tuning_history(spec, str(tmp_path / "r.db"))
    assert [h["state"] for h in history] == ["pruned"] * MIN_TRIALS
    assert all(h["status"] == "pruned" and len(h["intermediate"]["step"]) == 1
               for h in history)
    assert out.results[0].pruned == MIN_TRIALS and out.results[0].best_value is None
    study = optuna.load_study(study_name=f"t/{TASK}/adam", storage=storage_url(
        str(tmp_path / "r.db")))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.PRUNED] * MIN_TRIALS


@pytest.mark.slow
def test_median_pruner_prunes_hopeless_trials(tmp_path: Path) -> None:
    spec = _spec(optimizers=["sgd"], trials=10, steps=60, seed=3)
    out = tune(spec, str(tmp_path / "r.db"), workers=1, rerun=False)
    r = out.results[0]
    assert r.complete + r.pruned + r.failed == 10
    # with this seed, slow learning rates are stopped early (measured 3 pruned); the pruner
    # compares float64 quadratic losses of different learning rates, orders of magnitude
    # apart, so rounding cannot change its decisions
    assert r.pruned >= 1
    history = tuning_history(spec, str(tmp_path / "r.db"))
    for h in history:
        if h["state"] == "pruned":
            assert h["steps_done"] < 60 and h["steps_done"] >= 15  # after the warm-up quarter


def test_running_trial_left_behind_is_failed_and_rerun(tmp_path: Path) -> None:
    db = str(tmp_path / "r.db")
    spec = _spec(optimizers=["sgd"])
    tune(spec, db, workers=1, rerun=False)
    before = tuning_history(spec, db)
    # a process died in the middle of a trial: it is left RUNNING in the storage
    study = optuna.load_study(study_name=f"t/{TASK}/sgd", storage=storage_url(db))
    study.ask().suggest_float("lr", 1e-4, 1.0, log=True)
    more = MIN_TRIALS + 1
    out = tune(_spec(optimizers=["sgd"], trials=more), db, workers=1, rerun=False)
    after = tuning_history(spec, db)
    lost = [h for h in after if h["status"] == "interrupted"]
    assert len(lost) == 1 and lost[0]["state"] == "fail" and lost[0]["index"] is None
    counted = [h for h in after if h["index"] is not None]
    assert [h["index"] for h in counted] == list(range(more))
    assert _trials(before) == _trials(counted[:MIN_TRIALS])
    assert out.results[0].ran == 1 and out.results[0].interrupted == 1
    # nothing left to do: a third call runs no trial
    assert tune(_spec(optimizers=["sgd"], trials=more), db, workers=1, rerun=False
                ).results[0].ran == 0


_KILLED = """
import sys
from optimlab.lab.tune import TuneSpec, tune
spec = TuneSpec(tasks=["quadratic"], optimizers=["momentum"], trials=8, steps=1500, name="k")
tune(spec, sys.argv[1], workers=1, rerun=False)
"""


def _count(db: Path, state: str) -> int:
    try:
        with sqlite3.connect(db, timeout=30) as con:
            return con.execute("SELECT COUNT(*) FROM trials WHERE state=?",
                               (state,)).fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


@pytest.mark.slow
def test_killed_tuning_resumes_with_no_trial_lost(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED, str(db)], cwd=tmp_path,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    try:
        deadline = time.monotonic() + 120
        while not (_count(db, "COMPLETE") >= 2 and _count(db, "RUNNING") >= 1):
            assert proc.poll() is None, "the tuning ended before it could be killed"
            assert time.monotonic() < deadline, "no trial finished in time"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    spec = TuneSpec(tasks=[TASK], optimizers=["momentum"], trials=8, steps=1500, name="k")
    before = [h for h in tuning_history(spec, str(db)) if h["state"] != "running"]
    running = _count(db, "RUNNING")
    out = tune(spec, str(db), workers=1, rerun=False)
    after = tuning_history(spec, str(db))
    counted = [h for h in after if h["index"] is not None]
    assert [h["index"] for h in counted] == list(range(8))  # exactly the budget
    assert _trials(before) == _trials(counted[: len(before)])  # earlier trials unchanged
    assert out.results[0].interrupted == running
    assert sum(h["status"] == "interrupted" for h in after) == running
    # and the same trials as a tuning that was never killed
    tune(spec, str(tmp_path / "ref.db"), workers=1, rerun=False)
    assert _trials(counted) == _trials(tuning_history(spec, str(tmp_path / "ref.db")))


@pytest.mark.slow
def test_best_configurations_rerun_with_three_seeds(tuned: tuple[Path, TuneSpec, Any]
                                                    ) -> None:
    db, spec, (outcome, _) = tuned
    assert outcome.rerun is not None and outcome.rerun.name == "shared-best"
    assert outcome.rerun.planned == 3 * len(OPTS)
    with open_store(str(db)) as store:
        records = store.study_records("shared-best")
        history = tuning_for_study(store, "shared-best")
    assert history is not None and _trials(history) == _trials(tuning_history(spec, str(db)))
    assert len(records) == 3 * len(OPTS)
    for opt in OPTS:
        mine = [r for r in records if r.label == f"{opt} best"]
        assert sorted(r.seed for r in mine) == [1, 2, 3]  # held out from tuning
        best = outcome.best(TASK, opt).best_hyperparams
        assert all(r.config.hyperparams["lr"] == best["lr"] for r in mine)
        assert all(r.config.steps == 100 for r in mine)
    stats = aggregate(records)
    for s in stats.values():
        if s.status_counts.get("ok", 0) == 3:
            assert math.isfinite(s.final["suboptimality"].mean)
    # resuming the whole tuning reruns nothing
    again = tune(spec, str(db), workers=1)
    assert all(r.ran == 0 for r in again.results)
    assert again.rerun is not None and again.rerun.executed == 0


def test_the_objective_is_the_ranking_objective_unless_named(tmp_path: Path) -> None:
    spec = TuneSpec(tasks=["mlp-digits"], optimizers=["adam"], trials=MIN_TRIALS, steps=10,
                    name="n", pruner="none")
    out = tune(spec, str(tmp_path / "r.db"), workers=1, rerun=False)
    assert out.results[0].objective == RANKING_OBJECTIVE
    history = tuning_history(spec, str(tmp_path / "r.db"))
    assert len(history) == MIN_TRIALS and all(h["value"] is not None for h in history
                                              if h["status"] == "ok")
    named = TuneSpec(tasks=["mlp-digits"], optimizers=["adam"], trials=MIN_TRIALS, steps=10,
                     name="v", objective="val_loss", pruner="none")
    assert tune(named, str(tmp_path / "r.db"), workers=1, rerun=False
                ).results[0].objective == "val_loss"


def _one_line(excinfo: pytest.ExceptionInfo[BaseException], *needles: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message
    return message


def test_bad_input_gives_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as e:
        _spec(optimizers=["sgd", "nope"])
    _one_line(e, "optimizers[1]", "unknown optimizer 'nope'")
    with pytest.raises(ValueError) as e:
        _spec(space={"sgd": {}})
    _one_line(e, "search space for 'sgd' is empty")
    with pytest.raises(ValueError) as e:
        _spec(trials=0)
    _one_line(e, "trials must be a positive integer")
    with pytest.raises(ValueError) as e:
        _spec(trials=MIN_TRIALS - 1)
    _one_line(e, f"trials must be >= {MIN_TRIALS}", "MIN_TRIALS")
    with pytest.raises(ValueError) as e:
        _spec(tasks=["no-such-task"])
    _one_line(e, "tasks[0]", "no-such-task")
    with pytest.raises(ValueError) as e:
        _spec(steps=0)
    _one_line(e, "steps must be a positive integer")
    with pytest.raises(ValueError) as e:
        _spec(space={"adam": {"momentum": (0.1, 0.9)}})
    _one_line(e, "space.adam", "momentum")
    with pytest.raises(ValueError) as e:
        _spec(space={"adam": {"lr": (0.1, 0.01)}})
    _one_line(e, "space.adam.lr", "low must be < high")
    with pytest.raises(ValueError) as e:
        _spec(space="everything")
    _one_line(e, "space")
    with pytest.raises(ValueError) as e:
        _spec(schedules=["constant", "sometimes"])
    _one_line(e, "unknown schedule 'sometimes'")
    with pytest.raises(ValueError) as e:
        _spec(optimizers=["torch.optim:SGD"])
    _one_line(e, "no search space for optimizer 'torch.optim:SGD'")
    assert isinstance(e.value, TuneError)
    # a tuning resumed under the same name with other settings is refused
    db = str(tmp_path / "r.db")
    tune(_spec(optimizers=["sgd"], steps=20), db, workers=1, rerun=False)
    with pytest.raises(ValueError) as e:
        tune(_spec(optimizers=["sgd"], steps=50), db, workers=1, rerun=False)
    _one_line(e, "other settings", "steps")


def test_search_spaces() -> None:
    assert set(SEARCH_SPACES) == set(LAB_OPTIMIZERS)
    for opt, space in SEARCH_SPACES.items():
        assert space["lr"].log and space["lr"].transform == "identity"
        assert [p.name for p in search_space(opt, "lr")] == ["lr"]
        assert search_space(opt, "full") == list(space.values())
    full = {p.key: p for p in search_space("adamw", "full")}
    assert set(full) == {"lr", "1-beta1", "1-beta2", "eps", "weight_decay"}
    assert full["1-beta1"].value(0.1) == pytest.approx(0.9)  # 1 - 0.1 in floats: an ulp off
    assert {p.name for p in search_space("rmsprop", "full")} == {"lr", "alpha", "eps"}
    assert {p.name for p in search_space("momentum", "full")} == {"lr", "momentum"}
    # a custom space: ranges as pairs; optimizers it does not name get the lr preset
    custom = {"adam": {"lr": (1e-4, 1e-2), "betas.1": Param("betas.1", 1e-3, 1e-1,
                                                           transform="one_minus")}}
    params = search_space("adam", custom)
    assert [p.key for p in params] == ["lr", "1-beta2"]
    assert search_space("sgd", custom) == [SEARCH_SPACES["sgd"]["lr"]]
    # every preset's extremes build
    import torch

    for opt in SEARCH_SPACES:
        for p in search_space(opt, "full"):
            hyper = {p.name: p.value(p.low)} if "." not in p.name else {}
            build_optimizer(opt, [torch.zeros(1, requires_grad=True)], hyper)


def test_schedule_as_a_categorical(tmp_path: Path) -> None:
    spec = _spec(optimizers=["sgd"], steps=30, schedules=["constant", "cosine"])
    tune(spec, str(tmp_path / "r.db"), workers=1, rerun=False)
    history = tuning_history(spec, str(tmp_path / "r.db"))
    assert all(h["params"]["schedule"] == h["schedule"] for h in history)
    assert {h["schedule"] for h in history} == {"constant", "cosine"}  # the start tries both


@pytest.mark.slow
def test_report_has_a_tuning_section(tmp_path: Path, tuned: tuple[Path, TuneSpec, Any]
                                     ) -> None:
    db, spec, _ = tuned
    history = tuning_history(spec, str(db))
    with open_store(str(db)) as store:
        records = store.study_records("shared-best")
    evil = [dict(h, optimizer="<b>x</b>" if h["optimizer"] == "sgd" else h["optimizer"])
            for h in history]
    index = write_report(records, tmp_path / "rep", tuning=evil, title="tuned")
    page = index.read_text(encoding="utf-8")
    assert page.count('data-plot="tune-history"') == 1
    assert page.count('data-plot="tune-lr"') == 1
    assert 'id="tuning"' in page and "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page
    payload = json.loads((tmp_path / "rep" / "results.json").read_text(encoding="utf-8"))
    assert len(payload["tuning"]) == len(history)
    # without records (tuning only) the page still renders, and without tuning nothing changes
    page = write_report([], tmp_path / "only", tuning=history).read_text(encoding="utf-8")
    assert 'data-plot="tune-history"' in page
    page = write_report(records, tmp_path / "none").read_text(encoding="utf-8")
    assert 'id="tuning"' not in page
