"""Population runs in studies: which runs train together (``lab/batching.py``), and that a
study run with populations stores exactly what it stores without them, resumes, shares its
runs with other processes and records failed members (``lab/study.py``, ``lab/claims.py``)."""

from __future__ import annotations

import concurrent.futures as cf
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from labutil import stable

from optimlab.cli import main
from optimlab.lab import batching
from optimlab.lab.batching import Grouping, PopulationRun
from optimlab.lab.claims import Owner, process_start, this_host
from optimlab.lab.execution import InlineExecutor, WorkerDied
from optimlab.lab.population import execute_population
from optimlab.lab.spec import StudySpec
from optimlab.lab.store import open_store
from optimlab.lab.study import PlannedRun, ProcessExecutor, plan, run_study

DIED = "worker process died twice: signal 9 (SIGKILL)"


@pytest.fixture(autouse=True)
def _small_populations(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests form populations of 2 and 3 members (a few seeds keep them quick); the
    lab's own minimum (batching.MIN_POPULATION, tested below) would run those one by one."""
    monkeypatch.setattr(batching, "MIN_POPULATION", 2)


def _spec(**kw: Any) -> StudySpec:
    base: dict[str, Any] = {"tasks": ("quadratic",), "optimizers": ("adam",), "seeds": (0, 1, 2),
                            "steps": 40, "name": "pop"}
    return StudySpec(**{**base, **kw})


class Recording(InlineExecutor):
    """Runs items in this process and remembers them; items of type ``die`` end as if their
    worker had died (every time they are submitted)."""

    def __init__(self, die: type | None = None) -> None:
        self.items: list[Any] = []
        self.die = die

    def submit(self, fn: Any, item: Any) -> cf.Future[Any]:
        self.items.append(item)
        if self.die is not None and isinstance(item, self.die):
            fut: cf.Future[Any] = cf.Future()
            fut.set_exception(WorkerDied(-signal.SIGKILL))
            return fut
        return super().submit(fn, item)


def _seeds(item: PlannedRun | PopulationRun) -> list[int]:
    runs = item.runs if isinstance(item, PopulationRun) else (item,)
    return [r.config.seed for r in runs]


def _close(a: Any, b: Any, where: str = "") -> None:
    """``a == b`` with floats to 1e-5 relative or 1e-6 absolute: a population's batched
    products may sum in another order than a run alone (rounding of ~6e-8 relative per fp32
    operation, ~1e-7 on an O(1) loss summed over a batch), the short runs here do not amplify
    it beyond 1e-5 relative, and the absolute floor covers differences of two such losses
    (the generalization gap: ~5e-3 known to ~2e-7); integers, strings and statuses exactly."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and not isinstance(b, bool):
        assert isinstance(b, (int, float)), where
        assert (math.isnan(a) and math.isnan(b)) or b == pytest.approx(a, rel=1e-5, abs=1e-6), \
            f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _comparable(record: Any) -> dict:
    """A record without its wall-clock fields and the population's size (a population
    member's only extra)."""
    out = stable(record)
    out["scalars"] = {k: v for k, v in out["scalars"].items() if k != "population_size"}
    return out


# --------------------------------------------------------------------------- grouping


def test_an_arms_seeds_form_one_population_and_the_rest_run_alone() -> None:
    spec = _spec(optimizers=("adam", "torch.optim:SGD"), batch_size=(32, "full"),
                 hyperparams={"torch.optim:SGD": {"lr": (0.1,)}})
    runs = plan(spec)
    grouping = Grouping(runs)
    items = grouping.items(runs)
    pops = [i for i in items if isinstance(i, PopulationRun)]
    assert [(p.runs[0].label, _seeds(p)) for p in pops] == [("adam bs=32", [0, 1, 2])]
    assert pops[0].key == pops[0].runs[0].key and len(set(pops[0].keys)) == 3
    alone = [i for i in items if isinstance(i, PlannedRun)]
    # adam with the full batch is deterministic (one seed); torch.optim's SGD is not batchable
    assert sorted((r.label, r.config.seed) for r in alone) == [
        ("adam bs=full", 0), *[(f"torch.optim:SGD bs={b}", s) for b in (32, "full")
                               for s in (0, 1, 2)]]
    # every run is in exactly one item, in the order of the plan's first members
    assert sorted(k for i in items for k in (i.keys if isinstance(i, PopulationRun)
                                             else (i.key,))) == sorted(r.key for r in runs)
    (note,) = grouping.notes()
    assert "not as a population" in note and "torch.optim:SGD bs=32 on quadratic" in note
    assert "adam" not in note


def test_a_large_group_is_split_into_near_equal_populations() -> None:
    runs = plan(_spec(seeds=tuple(range(10))))
    sizes = [len(_seeds(i)) for i in Grouping(runs, cap=4).items(runs)]
    assert sizes == [3, 3, 4]
    assert [len(_seeds(i)) for i in Grouping(runs).items(runs)] == [10]
    three = plan(_spec())
    assert [type(i) for i in Grouping(three, cap=2).items(three)] == [PlannedRun, PopulationRun]
    with pytest.raises(ValueError, match="at least 2"):
        Grouping(three, cap=1)
    with pytest.raises(ValueError, match="at least 2"):
        Grouping(three, cap=3, smallest=4)


def test_groups_smaller_than_the_minimum_run_one_at_a_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batching, "MIN_POPULATION", 4)  # the lab's own value
    three = plan(_spec())
    assert Grouping(three).items(three) == three  # three seeds: each alone
    four = plan(_spec(seeds=(0, 1, 2, 3)))
    assert [_seeds(i) for i in Grouping(four).items(four)] == [[0, 1, 2, 3]]
    # an lr sweep's arms differ only in hyperparameter values: 2 lrs x 2 seeds, one population
    sweep = plan(_spec(seeds=(0, 1), hyperparams={"adam": {"lr": (1e-3, 1e-2)}}))
    (pop,) = Grouping(sweep).items(sweep)
    assert isinstance(pop, PopulationRun) and len(pop.runs) == 4
    nine = plan(_spec(seeds=tuple(range(9))))
    assert [len(_seeds(i)) for i in Grouping(nine, cap=5).items(nine)] == [4, 5]
    # split into pieces of 3 (cap 4), each below the minimum: every run alone
    assert [len(_seeds(i)) for i in Grouping(nine, cap=4).items(nine)] == [1] * 9


def test_written_out_populations_form_from_two_members(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batching, "MIN_POPULATION", 4)  # the lab's own values
    monkeypatch.setattr(batching, "MIN_WRITTEN_OUT_POPULATION", 2)
    # mlp-digits (a plain MLP: written-out gradients) and quadratic (vmap), two seeds each
    runs = plan(_spec(tasks=("mlp-digits", "quadratic"), seeds=(0, 1)))
    grouping = Grouping(runs)
    items = grouping.items(runs)
    pops = [i for i in items if isinstance(i, PopulationRun)]
    assert [(p.runs[0].config.task, _seeds(p)) for p in pops] == [("mlp-digits", [0, 1])]
    assert sum(isinstance(i, PlannedRun) for i in items) == 2  # quadratic's runs alone
    # a CNN is differentiated with vmap: its two seeds run alone
    cnn = plan(_spec(tasks=("cnn-digits",), seeds=(0, 1)))
    assert Grouping(cnn).items(cnn) == cnn
    # an explicit minimum holds for every group
    assert Grouping(runs, smallest=3).items(runs) == runs


def test_population_off_runs_every_run_alone() -> None:
    runs = plan(_spec())
    grouping = Grouping(runs, "off")
    assert grouping.items(runs) == runs and grouping.notes() == []
    with pytest.raises(ValueError, match="auto, off"):
        Grouping(runs, "on")


# --------------------------------------------------------------------------- studies


def _study_records(tmp_path: Path, name: str, spec: StudySpec, mode: str,
                   executor: Any = None) -> dict[str, Any]:
    with open_store(tmp_path / f"{name}.db") as store:
        outcome = run_study(spec, store, executor=executor or InlineExecutor(),
                            population=mode)
        assert outcome.executed == outcome.planned
        return {r.key: r for r in store.study_records(spec.resolved_name)}


def test_a_study_with_populations_stores_the_same_records_as_without(tmp_path: Path) -> None:
    # SGD with momentum, Adam and AdamW with clipping, on a 2-D task and a convex one, with a
    # swept lr (so the held-out re-runs form populations too)
    spec = _spec(tasks=("rosenbrock", "quadratic"), optimizers=("momentum", "adam", "adamw"),
                 seeds=(0, 1), clip_norm=1.0, steps=30,
                 hyperparams={"adamw": {"lr": (1e-3, 1e-2)}})
    executor = Recording()
    auto = _study_records(tmp_path, "auto", spec, "auto", executor)
    off = _study_records(tmp_path, "off", spec, "off")
    assert auto.keys() == off.keys()
    pops = [i for i in executor.items if isinstance(i, PopulationRun)]
    # every arm's 2 seeds, the two lrs of adamw's sweep as one population of 4 (they differ
    # only in hyperparameter values), then the held-out seeds
    assert len(pops) == 2 * 3 + 2 * 3
    swept = [p for p in pops if len(p.runs) == 4]
    assert len(swept) == 2 and all(
        sorted({r.config.hyperparams["lr"] for r in p.runs}) == [1e-3, 1e-2] for p in swept)
    assert sorted(k for p in pops for k in p.keys) == sorted(auto)
    for key, record in off.items():
        assert auto[key].label == record.label
        _close(_comparable(auto[key]), _comparable(record), key)


@pytest.mark.slow
def test_populations_on_a_process_pool_match_the_runs_alone(tmp_path: Path) -> None:
    spec = _spec(tasks=("mlp-digits",), optimizers=("momentum", "adamw"), steps=20,
                 clip_norm=1.0)
    with ProcessExecutor(2) as pool:
        auto = _study_records(tmp_path, "auto", spec, "auto", pool)
    off = _study_records(tmp_path, "off", spec, "off")
    assert auto.keys() == off.keys()
    for key, record in off.items():
        _close(_comparable(auto[key]), _comparable(record), key)


def test_a_resumed_study_runs_only_the_members_not_stored(tmp_path: Path) -> None:
    with open_store(tmp_path / "s.db") as store:
        run_study(_spec(seeds=(0, 1), name="part"), store, executor=InlineExecutor())
        executor = Recording()
        outcome = run_study(_spec(seeds=(0, 1, 2, 3)), store, executor=executor)
        assert (outcome.skipped, outcome.executed) == (2, 2)
        assert [_seeds(i) for i in executor.items] == [[2, 3]]
        assert sorted(r.seed for r in store.study_records("pop")) == [0, 1, 2, 3]
        again = Recording()
        assert run_study(_spec(seeds=(0, 1, 2, 3)), store, executor=again).executed == 0
        assert again.items == []


def test_a_population_whose_worker_dies_twice_gives_each_member_a_failed_record(
        tmp_path: Path) -> None:
    spec = _spec(batch_size=(32, "full"))
    executor = Recording(die=PopulationRun)
    with open_store(tmp_path / "s.db") as store:
        outcome = run_study(spec, store, executor=executor)
        records = store.study_records("pop")
    assert outcome.executed == outcome.planned == 4
    assert [type(i) for i in executor.items].count(PopulationRun) == 2  # retried once
    failed = sorted((r.seed, r.error) for r in records if r.status == "failed")
    assert failed == [(0, DIED), (1, DIED), (2, DIED)]
    assert [r.status for r in records if r.config.batch_size == "full"] == ["ok"]


def test_a_population_that_raises_gives_each_member_a_failed_record(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(configs: Any, **kw: Any) -> Any:
        raise RuntimeError("the population broke")

    monkeypatch.setattr(batching, "execute_population", broken)
    with open_store(tmp_path / "s.db") as store:
        run_study(_spec(), store, executor=InlineExecutor())
        records = store.study_records("pop")
    assert sorted(r.seed for r in records) == [0, 1, 2]
    assert all(r.status == "failed" and "the population broke" in (r.error or "")
               for r in records)


def test_members_another_process_holds_are_left_out_of_a_population(tmp_path: Path) -> None:
    spec = _spec(seeds=(0, 1, 2, 3))
    held = next(r for r in plan(spec) if r.config.seed == 1)
    other = Owner(this_host(), os.getpid(), process_start(os.getpid()), "another")
    executor = Recording()
    with open_store(tmp_path / "s.db") as store:
        assert store.claim([held.key], other, lease_s=1.0) == [held.key]
        # the other process's lease lapses after a second: this one then runs its run
        outcome = run_study(spec, store, executor=executor, lease_s=5.0)
        assert sorted(r.seed for r in store.study_records("pop")) == [0, 1, 2, 3]
    assert [_seeds(i) for i in executor.items] == [[0, 2, 3], [1]]
    assert isinstance(executor.items[1], PlannedRun)
    assert outcome.executed == 4


# --------------------------------------------------------------------------- command line


def test_compare_has_population_auto_and_off(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    populations: list[int] = []

    def counted(configs: Any, **kw: Any) -> Any:
        populations.append(len(configs))
        return execute_population(configs, **kw)

    monkeypatch.setattr(batching, "execute_population", counted)
    assert main(["compare", "--help"]) == 0
    assert "--population {auto,off}" in capsys.readouterr().out
    stores = {}
    for mode in ("off", "auto"):
        url = str(tmp_path / f"{mode}.db")
        assert main(["compare", "--tasks", "quadratic", "--optimizers", "momentum",
                     "--seeds", "2", "--batch-size", "32", "--steps", "20", "--workers", "1",
                     "--no-report", "--store", url, "--population", mode]) == 0
        with open_store(url) as store:
            (study,) = store.studies()
            stores[mode] = {r.key: r for r in store.study_records(study["name"])}
        assert populations == ([] if mode == "off" else [2])
    assert stores["auto"].keys() == stores["off"].keys()
    for key, record in stores["off"].items():
        _close(_comparable(stores["auto"][key]), _comparable(record), key)
    capsys.readouterr()
    assert main(["compare", "--population", "on"]) == 2
    assert "invalid choice: 'on'" in capsys.readouterr().err


@pytest.mark.slow
def test_the_population_benchmark_runs() -> None:
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "population.py"
    r = subprocess.run([sys.executable, str(script), "--tasks", "rosenbrock", "--sizes", "2,3",
                        "--rounds", "2", "--steps", "20", "--seq-runs", "1", "--threads", "1"],
                       capture_output=True, text=True, check=True, timeout=300)
    lines = r.stdout.splitlines()
    assert lines[2] == "## 1 torch thread(s) on both sides"
    lines = lines[1:]
    assert lines[2].startswith("rosenbrock (adam, batch 32, 20 steps per run): sequential")
    assert [line.split()[0] for line in lines[4:6]] == ["2", "3"]
    assert all(line.split()[2].endswith("x") and len(line.split()) == 5 for line in lines[4:6])
    # the members' final losses equal the runs' alone to rounding (see _close)
    assert "population member vs the same run alone:" in lines[6]
    assert float(lines[6].rsplit(":", 1)[1]) <= 1e-5


def test_a_study_that_is_one_population_runs_it_in_this_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import optimlab.lab.study as study

    def no_pool(*args: Any, **kw: Any) -> Any:
        raise AssertionError("a process pool for a single work item")

    monkeypatch.setattr(study, "ProcessExecutor", no_pool)
    with open_store(tmp_path / "s.db") as store:
        assert run_study(_spec(), store).executed == 3
    with open_store(tmp_path / "t.db") as store, \
            pytest.raises(AssertionError, match="single work item"):  # 3 runs alone: a pool
        run_study(_spec(), store, population="off")
