"""Concurrency by design: claims in the store, so that any number of `compare` or `tune`
processes on one study share its work, never run a piece twice, and take over the work of a
process that died."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from optimlab.lab.claims import Heartbeat, Owner, process_alive, process_start, this_host
from optimlab.lab.execution import InlineExecutor
from optimlab.lab.spec import StudySpec
from optimlab.lab.store import open_store
from optimlab.lab.study import plan, run_study

#: Generous bounds for process tests on a slow, loaded CI machine (not timings).
PROCESS_TIMEOUT = 300


def _dead_pid() -> int:
    """The pid of a process that has exited (and was reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _other(pid: int, host: str | None = None, started: str | None = None) -> Owner:
    return Owner(host or this_host(), pid,
                 process_start(pid) if started is None else started, "other")


# --------------------------------------------------------------------------- claims


def test_claims_are_exclusive_until_released_and_skip_finished_runs(tmp_path: Path) -> None:
    me, peer = Owner.current(), _other(os.getpid())  # a live owner: this very process
    assert me.id != peer.id and not peer.is_dead()
    with open_store(tmp_path / "r.db") as store:
        assert store.claim(["a", "b", "c"], me, 60.0, limit=2) == ["a", "b"]
        assert store.claim(["a", "b", "c"], peer, 60.0) == ["c"]  # a, b are mine
        assert store.claim(["a", "b"], me, 60.0) == ["a", "b"]  # my own: renewed
        assert set(store.holders(["a", "b", "c", "d"])) == {"a", "b", "c"}
        assert store.renew(me, 60.0) == {"a", "b"}
        store.release(me, ["a"])
        assert store.claim(["a", "b"], peer, 60.0) == ["a"]
        store.release(me)
        assert store.claim(["b"], peer, 60.0) == ["b"] and store.renew(me, 60.0) == set()
        # a finished run cannot be claimed, and storing it ends its claim
        spec = StudySpec.from_mapping({"name": "s", "tasks": ["quadratic"],
                                       "optimizers": ["sgd"], "seeds": 1, "steps": 5})
        run_study(spec, store, executor=InlineExecutor())
        (key,) = [r.key for r in plan(spec)]
        assert store.claim([key, "z"], me, 60.0) == ["z"]
        assert key not in store.holders([key])


def test_expired_leases_and_dead_owners_are_taken_over(tmp_path: Path) -> None:
    me = Owner.current()
    dead = _other(_dead_pid())
    reused = _other(os.getpid(), started="0")  # this pid, but another process's start stamp
    far = _other(os.getpid(), host="elsewhere|0|0")  # alive as far as we can know
    assert dead.is_dead() and reused.is_dead() and not far.is_dead()
    assert not process_alive(dead.pid) and process_alive(os.getpid(), process_start(os.getpid()))
    with open_store(tmp_path / "r.db") as store:
        assert store.claim(["d"], dead, 60.0) == ["d"]
        assert store.claim(["r"], reused, 60.0) == ["r"]
        assert store.claim(["f"], far, 60.0) == ["f"]
        assert store.claim(["x"], far, 0.0) == ["x"]  # a lease of 0 s has expired at once
        assert store.claim(["d", "r", "f", "x"], me, 60.0) == ["d", "r", "x"]
        assert store.holders(["f"])["f"].owner == far


def test_a_heartbeat_renews_leases_and_releases_them_at_the_end() -> None:
    class Recorder:
        def __init__(self) -> None:
            self.renewed: list[float] = []
            self.released: list[Any] = []

        def renew(self, owner: Owner, lease_s: float) -> set[str]:
            self.renewed.append(lease_s)
            if len(self.renewed) == 1:
                raise RuntimeError("database is locked")  # tried again at the next beat
            return {"k"}

        def release(self, owner: Owner, keys: Any = None) -> None:
            self.released.append(keys)

    store, owner = Recorder(), Owner.current()
    with Heartbeat(store, owner, lease_s=0.2) as beat:  # type: ignore[arg-type]
        deadline = time.monotonic() + PROCESS_TIMEOUT
        while len(store.renewed) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert store.renewed[:2] == [0.2, 0.2] and beat.held == {"k"}
    assert store.released == [None]  # everything it held


def test_a_study_takes_over_the_runs_of_a_dead_process_at_once(tmp_path: Path) -> None:
    spec = StudySpec.from_mapping({"name": "s", "tasks": ["quadratic"],
                                   "optimizers": ["sgd", "adam"], "seeds": 2, "steps": 20,
                                   "batch_size": [8]})
    keys = [r.key for r in plan(spec)]
    with open_store(tmp_path / "r.db") as store:
        # a killed process left claims on every run (with an hour's lease)
        assert store.claim(keys, _other(_dead_pid()), 3600.0) == keys
        messages: list[str] = []
        out = run_study(spec, store, executor=InlineExecutor(), message=messages.append)
        assert (out.executed, out.elsewhere) == (len(keys), 0)
        assert messages == []  # nobody to wait for
        assert store.holders(keys) == {}


# --------------------------------------------------------------------------- processes

#: A user task that counts its executions: quadratic, whose setup appends "<pid> <seed>" to
#: $COUNT_LOG. The first setup of each process first says it is ready ($COUNT_READY) and
#: waits for the file $COUNT_GO, so that the test can hold every process inside its first
#: claimed run at once.
COUNTING_TASK = '''
import os
import time
from pathlib import Path

from optimlab.lab.tasks import make_task

_first = [True]


def _barrier():
    if not _first[0] or "COUNT_READY" not in os.environ:
        return
    _first[0] = False
    with open(os.environ["COUNT_READY"], "a") as f:
        f.write(f"{os.getpid()}\\n")
    deadline = time.monotonic() + 600
    while not Path(os.environ["COUNT_GO"]).exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def counting(**options):
    task = make_task("quadratic", **options)
    setup = task.setup

    def counted_setup(seed=0, device="cpu"):
        _barrier()
        with open(os.environ["COUNT_LOG"], "a") as f:
            f.write(f"{os.getpid()} {seed}\\n")
        setup(seed, device)

    task.setup = counted_setup
    return task
'''


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    pkg = tmp_path / "countmod"
    pkg.mkdir(exist_ok=True)
    (pkg / "__init__.py").write_text(COUNTING_TASK)
    path = os.pathsep.join([str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**os.environ, "PYTHONPATH": path, "OPTIMLAB_ALLOW_IMPORT": "countmod",
            "PYTHONUNBUFFERED": "1", "COUNT_LOG": str(tmp_path / "executions.log"),
            "COUNT_READY": str(tmp_path / "ready.log"), "COUNT_GO": str(tmp_path / "go"),
            **extra}


def _wait_ready(tmp_path: Path, n: int, procs: list[subprocess.Popen[str]]) -> set[int]:
    """Wait until ``n`` processes sit at the barrier (each holding a claim)."""
    ready = tmp_path / "ready.log"
    deadline = time.monotonic() + PROCESS_TIMEOUT
    while True:
        pids = {int(x) for x in ready.read_text().split()} if ready.exists() else set()
        if len(pids) >= n:
            return pids
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"a process ended early: {p.communicate()}")
        assert time.monotonic() < deadline, "the processes did not reach the barrier"
        time.sleep(0.05)


def _compare(tmp_path: Path, out: str) -> list[str]:
    return [sys.executable, "-m", "optimlab.cli", "compare", "--tasks", "countmod:counting",
            "--optimizers", "sgd,adam", "--lr", "0.01,0.05", "--seeds", "2", "--steps", "60",
            "--batch-size", "8", "--workers", "1", "--name", "shared",
            "--store", f"sqlite:///{tmp_path / 'r.db'}", "--out", str(tmp_path / out)]


def _executions(tmp_path: Path) -> list[tuple[int, int]]:
    text = (tmp_path / "executions.log").read_text()
    return [(int(pid), int(seed)) for pid, seed in (line.split() for line in text.splitlines())]


def _release_together(tmp_path: Path, n: int, procs: list[subprocess.Popen[str]]
                      ) -> tuple[set[int], list[tuple[str, str]]]:
    """Wait until ``n`` of ``procs`` sit at the barrier, open it, and check that every process
    ends with status 0; the pids that were at the barrier and each process's (stdout,
    stderr)."""
    try:
        pids = _wait_ready(tmp_path, n, procs)
        (tmp_path / "go").touch()
        outs = [p.communicate(timeout=PROCESS_TIMEOUT) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err
    return pids, outs


@pytest.mark.slow
def test_two_compare_processes_share_a_study_and_run_every_run_once(tmp_path: Path) -> None:
    env = _env(tmp_path)
    procs = [subprocess.Popen(_compare(tmp_path, f"report-{i}"), env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for i in range(2)]
    pids, outs = _release_together(tmp_path, 2, procs)  # both inside a run at once
    with open_store(tmp_path / "r.db") as store:
        records = store.study_records("shared")
    # 2 optimizers x 2 lrs x 2 seeds, then each optimizer's best lr on 2 held-out seeds
    assert len(records) == len({r.key for r in records}) == 12
    runs = _executions(tmp_path)
    assert len(runs) == 12, runs  # every run executed exactly once, by one process or other
    assert {pid for pid, _ in runs} == pids  # both did some
    # both wrote the report of the whole study: the same summary
    tables = [out.split("\nreport:")[0] for out, _ in outs]
    assert tables[0] == tables[1] and "sgd best" in tables[0] and "adam best" in tables[0]


@pytest.mark.slow
def test_a_killed_compare_process_is_taken_over_by_the_one_still_running(tmp_path: Path
                                                                          ) -> None:
    env = _env(tmp_path)
    procs = [subprocess.Popen(_compare(tmp_path, f"report-{i}"), env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              start_new_session=True)
             for i in range(2)]
    try:
        _wait_ready(tmp_path, 2, procs)
        victim, survivor = procs
        os.killpg(victim.pid, signal.SIGKILL)  # dies holding a claim, mid-run
        victim.wait(timeout=PROCESS_TIMEOUT)
        (tmp_path / "go").touch()
        _, err = survivor.communicate(timeout=PROCESS_TIMEOUT)
    finally:
        for p in procs:
            p.kill()
    assert survivor.returncode == 0, err
    runs = _executions(tmp_path)
    # the victim died before its first run was counted: the survivor ran all 12, once each
    assert len(runs) == 12 and {pid for pid, _ in runs} == {survivor.pid}
    again = subprocess.run(_compare(tmp_path, "report-again"), env=env, text=True,
                           capture_output=True, timeout=PROCESS_TIMEOUT)
    assert again.returncode == 0, again.stderr
    assert "runs already stored" in again.stderr
    assert len(_executions(tmp_path)) == 12


#: A tuning process whose runs count themselves: every trial and re-run appends a line to
#: $TUNE_LOG; the first run of each process waits at the barrier as the counting task does.
TUNE_SCRIPT = '''
import json, os, sys, time
from pathlib import Path
import optimlab.lab.batching as batching
import optimlab.lab.tuning.run as run
from optimlab.lab.tune import TuneSpec, tune

first = [True]


def counted(execute):
    def wrapper(config, **kwargs):  # a run's config, or a population's list of them
        if first[0]:
            first[0] = False
            with open(os.environ["COUNT_READY"], "a") as f:
                f.write(f"{os.getpid()}\\n")
            deadline = time.monotonic() + 600
            while not Path(os.environ["COUNT_GO"]).exists() and time.monotonic() < deadline:
                time.sleep(0.02)
        with open(os.environ["COUNT_LOG"], "a") as f:
            for c in config if isinstance(config, list) else [config]:
                f.write(json.dumps([c.optimizer, c.hyperparams, c.seed]) + "\\n")
        return execute(config, **kwargs)
    return wrapper


run.execute = counted(run.execute)
batching.execute = counted(batching.execute)
batching.execute_population = counted(batching.execute_population)
spec = TuneSpec(**json.loads(sys.argv[2]))
out = tune(spec, sys.argv[1], workers=1, rerun=True)
print(json.dumps([[r.optimizer, r.best_value, r.best_params, r.ran] for r in out.results]))
'''


@pytest.mark.slow
def test_four_tune_processes_run_every_trial_once_and_agree_with_one(tmp_path: Path) -> None:
    from optimlab.lab.tune import TuneSpec, tune, tuning_history

    settings = {"tasks": ["quadratic"], "optimizers": ["sgd", "adam"], "trials": 10,
                "steps": 150, "seeds": 2, "name": "t"}
    db = str(tmp_path / "r.db")
    env = _env(tmp_path)
    procs = [subprocess.Popen([sys.executable, "-c", TUNE_SCRIPT, db, json.dumps(settings)],
                              env=env, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
             for _ in range(4)]
    _, outs = _release_together(tmp_path, 2, procs)  # a trial of each study runs, 2 wait
    spec = TuneSpec(**settings)
    history = tuning_history(spec, db)
    # every trial index once: the budget exactly, nothing interrupted, nothing repeated
    assert len(history) == 20
    for opt in settings["optimizers"]:
        assert [h["index"] for h in history if h["optimizer"] == opt] == list(range(10))
    executions = Counter(line for line in (tmp_path / "executions.log").read_text()
                         .splitlines())
    assert sum(executions.values()) == 20 + 2 * 2  # trials, then 2 re-runs per optimizer
    # one process alone gives the same trials (the chain rule: trial k sees 0..k-1) ...
    alone = tune(spec, str(tmp_path / "alone.db"), workers=1, rerun=False)
    reference = tuning_history(spec, str(tmp_path / "alone.db"))

    def trials(h: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [(x["optimizer"], x["index"], x["state"], x["value"], x["params"]) for x in h]

    assert trials(history) == trials(reference)
    # ... and every process reports the same best results as it, having run a share
    best = [[r.optimizer, r.best_value, r.best_params] for r in alone.results]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert all([row[:3] for row in result] == best for result in results)
    assert sum(row[3] for result in results for row in result) == 20
