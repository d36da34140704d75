"""Faults never take a study down: the runner loop (failed items, worker deaths retried once,
unattributed breaks isolated, interruptions), failed records of runs that could not start, and
studies whose task fails through the Python API and the command line."""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pytest
from faultutil import TASK, cli, fault_env, study_file, write_fault_task

from optimlab.lab.execution import InlineExecutor, WorkerDied, execute_all
from optimlab.lab.pool import ProcessExecutor, describe_exit
from optimlab.lab.runs import describe_error, execute, failed_record
from optimlab.lab.schema import RunConfig, RunRecord
from optimlab.lab.spec import StudySpec
from optimlab.lab.store import open_store
from optimlab.lab.study import run_study


class Scripted:
    """An executor that runs items in this process, except that the first ``die[item]``
    submissions of an item end as if its worker had died (``WorkerDied``, SIGKILL)."""

    def __init__(self, slots: int = 2, die: dict[Any, int] | None = None) -> None:
        self.slots = slots
        self.die = dict(die or {})
        self.submitted: list[Any] = []
        self.aborted = 0

    def submit(self, fn: Any, item: Any) -> cf.Future[Any]:
        self.submitted.append(item)
        fut: cf.Future[Any] = cf.Future()
        if self.die.get(item, 0) > 0:
            self.die[item] -= 1
            fut.set_exception(WorkerDied(-signal.SIGKILL))
            return fut
        try:
            fut.set_result(fn(item))
        except Exception as e:
            fut.set_exception(e)
        return fut

    def abort(self) -> None:
        self.aborted += 1


class Breaking:
    """An executor like ``ProcessPoolExecutor``: items submitted together run together, and
    when one of them (the ``poison``) kills its worker, every item in flight fails with
    ``BrokenProcessPool`` (no one can tell which item did it)."""

    def __init__(self, poison: Any, slots: int = 3) -> None:
        self.poison, self.slots = poison, slots
        self.pending: list[tuple[Any, Any, cf.Future[Any]]] = []
        self.batches: list[list[Any]] = []
        self.lock = threading.Lock()
        self.timer: threading.Timer | None = None

    def submit(self, fn: Any, item: Any) -> cf.Future[Any]:
        fut: cf.Future[Any] = cf.Future()
        with self.lock:
            self.pending.append((fn, item, fut))
            if self.timer is not None:
                self.timer.cancel()
            self.timer = threading.Timer(0.05, self._run_batch)  # the burst of submissions
            self.timer.start()
        return fut

    def _run_batch(self) -> None:
        with self.lock:
            batch, self.pending = self.pending, []
        self.batches.append([item for _, item, _ in batch])
        broken = any(item == self.poison for _, item, _ in batch)
        for fn, item, fut in batch:
            if broken:
                fut.set_exception(BrokenProcessPool("a process died"))
            else:
                fut.set_result(fn(item))


def _double(x: int) -> int:
    return 2 * x


def _explode_on_3(x: int) -> int:
    if x == 3:
        raise ValueError("three is not allowed")
    return 2 * x


# --------------------------------------------------------------------------- the runner loop


def test_an_item_that_raises_becomes_a_failed_result_and_the_loop_goes_on() -> None:
    stored: list[tuple[int, Any]] = []
    counts: list[int] = []
    ran = execute_all(range(6), _explode_on_3, Scripted(slots=2),
                      sink=lambda i, r: stored.append((i, r)),
                      failed=lambda i, e: f"failed: {type(e).__name__}: {e}",
                      progress=lambda c, t, i, r: counts.append(c))
    assert ran == 6 and counts == [1, 2, 3, 4, 5, 6]
    assert dict(stored) == {0: 0, 1: 2, 2: 4, 3: "failed: ValueError: three is not allowed",
                            4: 8, 5: 10}
    with pytest.raises(ValueError, match="three"):  # without ``failed``: the old contract
        execute_all(range(6), _explode_on_3, Scripted(slots=2))


def test_a_dead_worker_is_retried_once_then_its_item_failed() -> None:
    ex = Scripted(slots=2, die={"b": 1, "c": 2})
    stored: dict[str, Any] = {}
    errors: list[BaseException] = []

    def failed(item: str, error: BaseException) -> str:
        errors.append(error)
        return f"FAILED: {error}"

    ran = execute_all(["a", "b", "c", "d"], str.upper, ex,
                      sink=lambda i, r: stored.__setitem__(i, r), failed=failed)
    assert ran == 4
    assert stored == {"a": "A", "b": "B", "d": "D",
                      "c": "FAILED: worker process died twice: signal 9 (SIGKILL)"}
    assert Counter(ex.submitted) == {"a": 1, "b": 2, "c": 2, "d": 1}  # retried once, no more
    (error,) = errors
    assert isinstance(error, WorkerDied) and error.exitcode == -9 and error.times == 2
    # without ``failed`` a second death stops the loop, and says so
    with pytest.raises(WorkerDied, match="died twice: signal 9"):
        execute_all(["a", "c"], str.upper, Scripted(slots=1, die={"c": 2}))


def test_a_break_no_one_can_attribute_reruns_the_items_alone_to_find_the_culprit() -> None:
    ex = Breaking(poison=4, slots=3)
    stored: dict[int, Any] = {}
    execute_all(range(7), _double, ex, sink=lambda i, r: stored.__setitem__(i, r),
                failed=lambda i, e: f"FAILED: {e}")
    assert stored.pop(4).startswith("FAILED: worker process died twice")
    assert stored == {i: 2 * i for i in (0, 1, 2, 3, 5, 6)}  # nothing else blamed
    # the items of the broken batch ran again one at a time; the culprit ran alone twice
    runs_of_4 = [b for b in ex.batches if 4 in b]
    assert runs_of_4[0] != [4] and runs_of_4[1:] == [[4], [4]]
    innocent = set(runs_of_4[0]) - {4}
    for item in innocent:
        assert [item] in ex.batches


def test_an_interrupt_aborts_the_executor_and_stores_what_had_finished() -> None:
    ex = Scripted(slots=3)
    stored: list[int] = []

    def progress(count: int, total: int, item: int, result: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        execute_all(range(10), _double, ex, sink=lambda i, r: stored.append(i),
                    progress=progress)
    assert ex.aborted == 1
    assert stored == [0, 1, 2]  # the three finished results, nothing started after
    assert ex.submitted == [0, 1, 2]


def test_a_sink_fault_aborts_and_stores_nothing_more() -> None:
    ex = Scripted(slots=3)
    calls: list[int] = []

    def sink(item: int, result: int) -> None:
        calls.append(item)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        execute_all(range(10), _double, ex, sink=sink)
    assert ex.aborted == 1 and calls == [0]


# --------------------------------------------------------------------------- failed records


@pytest.fixture
def fault_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.syspath_prepend(str(write_fault_task(tmp_path / "pkgs")))
    return TASK


def test_a_task_whose_setup_raises_gives_a_failed_record(fault_task: str,
                                                         tmp_path: Path) -> None:
    config = RunConfig(fault_task, "sgd", {"lr": 0.01}, task_options={"fail_seed": 1}, seed=1,
                       steps=20, batch_size=8).resolved()
    record = execute(config, threads=1)
    assert record.status == "failed" and record.key == config.key()
    # the error: where, the type, the message, and the last frames (the task's own line)
    assert record.error.startswith("task setup: RuntimeError: setup failed for seed 1 | ")
    assert "tasks.py:" in record.error and "in setup" in record.error
    assert record.task_info.kind == "2d"  # the task was built: its facts are known
    assert record.steps_done == 0 and record.final == {}
    again = RunRecord.from_dict(record.to_dict())
    assert again.status == "failed" and again.error == record.error
    with open_store(tmp_path / "r.db") as store:
        assert store.put_run(record) and store.get_run(record.key).error == record.error
    ok = execute(RunConfig(fault_task, "sgd", {"lr": 0.01}, task_options={"fail_seed": 1},
                           seed=0, steps=20, batch_size=8), threads=1)
    assert ok.status == "ok", ok.error


def test_a_factory_that_raises_gives_a_failed_record_with_placeholder_facts(
        fault_task: str) -> None:
    config = RunConfig(fault_task, "sgd", {"lr": 0.01}, task_options={"build_fail": True},
                       steps=20).resolved()
    record = execute(config)
    assert record.status == "failed" and record.key == config.key()
    assert record.error.startswith("building the task: RuntimeError: the factory cannot build")
    assert record.task_info.name == fault_task and record.task_info.kind == "unknown"
    assert record.to_dict()["task_info"]["target"] is None  # NaN, stored as null


def test_a_factory_that_raises_is_bad_input_of_a_spec_naming_the_field(
        fault_task: str, tmp_path: Path) -> None:
    from optimlab.cli import main
    from optimlab.lab.spec import StudyError
    from optimlab.lab.tuning import TuneError, TuneSpec

    with pytest.raises(StudyError, match=r"task\..*options.*building it raised RuntimeError"):
        StudySpec.from_mapping({"tasks": [fault_task], "optimizers": ["sgd"],
                                "task": {fault_task: {"options": {"build_fail": True}}}},
                               source="s.toml", allow_import=["faultpkg"])
    with pytest.raises(TuneError, match=r"tasks\[0\].*building it raised RuntimeError"):
        TuneSpec([fault_task], ["sgd"], task_options={fault_task: {"build_fail": True}})
    # the command line: exit 2 and the field, not "internal error"
    study = study_file(tmp_path / "b.toml", name="buildfail", build_fail="true")
    assert main(["compare", "--study", str(study), "--store", str(tmp_path / "b.db"),
                 "--allow-import", "faultpkg", "--no-report"]) == 2


def test_the_advisor_and_the_lr_finder_say_a_task_setup_failed(fault_task: str) -> None:
    from optimlab.lab.advice import calibrate
    from optimlab.lab.lrfind import find_lr

    with pytest.raises(ValueError, match=r"calibration run of sgd .* failed: task setup: "
                                         r"RuntimeError: setup failed for seed 0"):
        calibrate(fault_task, "sgd", steps=20, task_options={"fail_seed": 0}, runs=1)
    with pytest.raises(ValueError, match="its setup raised RuntimeError: setup failed"):
        find_lr(fault_task, "sgd", task_options={"fail_seed": 0}, num_steps=10)


def test_a_run_whose_optimizer_refuses_the_task_is_failed_not_raised() -> None:
    config = RunConfig("quadratic", "torch.optim:SGD", {"lr": -1.0}, steps=5).resolved()
    record = execute(config)
    assert record.status == "failed", record.error
    assert record.error.startswith("building the optimizer: ValueError: ")
    assert "Invalid learning rate: -1.0" in record.error


def test_the_record_of_a_dead_worker_names_the_signal() -> None:
    config = RunConfig("quadratic", "sgd", {"lr": 0.01}, steps=5).resolved()
    record = failed_record(config, WorkerDied(-9, times=2))
    assert record.error == "worker process died twice: signal 9 (SIGKILL)"
    assert record.key == config.key() and record.status == "failed"
    assert describe_exit(3) == "exit status 3" and describe_exit(-15) == \
        "signal 15 (SIGTERM)"


def test_describe_error_is_one_line_with_the_innermost_frames() -> None:
    def inner() -> None:
        raise KeyError("a\nmultiline\nmessage")

    try:
        inner()
    except KeyError as e:
        text = describe_error(e, "training")
    assert "\n" not in text
    assert text.startswith("training: KeyError: ") and text.endswith("in inner")


def test_a_study_whose_setup_fails_for_one_seed_completes(fault_task: str,
                                                          tmp_path: Path) -> None:
    spec = StudySpec.from_mapping({
        "name": "faulty", "tasks": [fault_task], "optimizers": ["sgd", "adam"], "seeds": 3,
        "steps": 30, "batch_size": [8], "heldout_seeds": 0,
        "task": {fault_task: {"options": {"fail_seed": 1}}}}, allow_import=["faultpkg"])
    with open_store(tmp_path / "r.db") as store:
        out = run_study(spec, store, executor=InlineExecutor())
        records = store.study_records("faulty")
        from optimlab.lab.report import write_report
        index = write_report(records, tmp_path / "report", title="faulty")
    assert out.executed == 6 and len(records) == 6
    status = {(r.optimizer, r.seed): r.status for r in records}
    assert {k for k, s in status.items() if s == "failed"} == {("sgd", 1), ("adam", 1)}
    assert all(s in ("ok", "diverged") for k, s in status.items() if k[1] != 1)
    assert index.exists()  # the report renders failed records that never trained
    assert "setup failed for seed 1" in (tmp_path / "report" / "results.json").read_text()


# --------------------------------------------------------------------------- real processes


def _die_on_2(x: int) -> int:
    if x == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return x * x


@pytest.mark.slow
def test_a_killed_worker_is_replaced_and_only_its_item_fails() -> None:
    stored: dict[int, Any] = {}
    with ProcessExecutor(2) as pool:
        execute_all(range(6), _die_on_2, pool, sink=lambda i, r: stored.__setitem__(i, r),
                    failed=lambda i, e: str(e))
        # the dead worker was replaced: the pool still runs items (its live pids are not
        # asserted: a replacement may start only when the next item needs it)
        assert pool.submit(_die_on_2, 7).result(timeout=120) == 49
    assert stored == {0: 0, 1: 1, 3: 9, 4: 16, 5: 25,
                      2: "worker process died twice: signal 9 (SIGKILL)"}


# --------------------------------------------------------------------------- the CLI


def _compare(tmp_path: Path, study: Path, log: Path | None = None
             ) -> subprocess.CompletedProcess[str]:
    db = tmp_path / "r.db"
    return subprocess.run(cli("compare", "--study", str(study), "--store", f"sqlite:///{db}",
                              "--workers", "2", "--out", str(tmp_path / "report")),
                          capture_output=True, text=True, check=False, cwd=tmp_path,
                          env=fault_env(write_fault_task(tmp_path / "pkgs"), log),
                          timeout=600)


@pytest.mark.slow
def test_compare_records_a_failing_setup_and_exits_3(tmp_path: Path) -> None:
    study = study_file(tmp_path / "s.toml", name="setupfail", fail_seed=1)
    r = _compare(tmp_path, study)
    assert r.returncode == 3, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
    assert "2 of 6 runs failed" in r.stderr and "setup failed for seed 1" in r.stderr
    assert (tmp_path / "report" / "index.html").exists()  # the report is still written
    with open_store(tmp_path / "r.db") as store:
        records = store.study_records("setupfail")
    assert sorted((r.optimizer, r.seed) for r in records if r.status == "failed") == [
        ("adam", 1), ("sgd", 1)]
    assert sum(r.status in ("ok", "diverged") for r in records) == 4


@pytest.mark.slow
def test_compare_retries_a_run_whose_worker_dies_once_then_records_it_failed(
        tmp_path: Path) -> None:
    log = tmp_path / "executions.log"
    study = study_file(tmp_path / "s.toml", name="deaths", die_seed=1)
    r = _compare(tmp_path, study, log)
    assert r.returncode == 3, r.stderr[-3000:]
    assert "worker process died twice: signal 9 (SIGKILL)" in r.stderr
    with open_store(tmp_path / "r.db") as store:
        records = store.study_records("deaths")
    assert len(records) == 6
    failed = {(r.optimizer, r.seed): r.error for r in records if r.status == "failed"}
    assert failed == {("sgd", 1): "worker process died twice: signal 9 (SIGKILL)",
                      ("adam", 1): "worker process died twice: signal 9 (SIGKILL)"}
    # each dying run started twice (retried once), every other run once
    seeds = Counter(int(line.split()[0]) for line in log.read_text().splitlines())
    assert seeds == {0: 2, 1: 4, 2: 2}


@pytest.mark.slow
def test_the_fault_injection_script_finds_nothing_lost(tmp_path: Path) -> None:
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "fault_injection.py"
    r = subprocess.run([sys.executable, str(script), "--kills", "2", "--sigterm-every", "2",
                        "--seeds", "4", "--seed", "3", "--out", str(tmp_path)],
                       capture_output=True, text=True, check=False, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for line in ("runs lost: 0", "runs duplicated: 0", "orphans: 0",
                 "SIGTERM exits 143 with a resume hint: 1/1", "8/8 runs stored",
                 "store equal to clean run: yes"):
        assert line in r.stdout, r.stdout
