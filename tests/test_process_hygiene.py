"""Process hygiene: the workers die with the process that owns them, whatever ends it
(SIGKILL included, for every start method); SIGTERM and SIGHUP stop `compare` and `tune` the
way Ctrl-C does (exit 143 / 129, a resume hint, finished work kept, a rerun completes it).

Process trees are read from /proc (Linux). Waiting for a study to get going is generous (a
loaded CI machine starts a worker in seconds); the deaths themselves are the kernel's
(parent-death signal) or a pipe's end-of-file, so "gone within 5 s" holds under load.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from faultutil import alive, cli, cmdline, descendants, stored_runs, wait_until, workers_of

pytestmark = [pytest.mark.skipif(not sys.platform.startswith("linux"),
                                 reason="reads process trees from /proc"),
              pytest.mark.slow]

#: Seconds the killed process's tree has to disappear (the issue's bar).
GONE_S = 5.0
#: Seconds a study or tuning may take to get going on a loaded machine.
START_S = 180.0

ENV = dict(os.environ, PYTHONUNBUFFERED="1")


#: Seeds of the studies below, and their runs (two optimizers). Enough runs that a study
#: signalled once two are stored cannot finish first: on a quiet machine a 3000-step quadratic
#: run takes ~0.1-0.6 s, the first runs are stored a few at a time, and 4 seeds (8 runs) were
#: seen all stored by the time the signal arrived.
SEEDS = 12
RUNS = 2 * SEEDS


def _compare(db: Path, name: str, steps: int = 3000) -> list[str]:
    # quadratic (2-D: evaluated every step) at 3000 steps
    return cli("compare", "--tasks", "quadratic", "--optimizers", "sgd,adam", "--seeds", str(SEEDS),
               "--steps", str(steps), "--batch-size", "8", "--lr", "0.001", "--name", name,
               "--no-report", "--workers", "2", "--store", f"sqlite:///{db}")


def _tune(db: Path, name: str) -> list[str]:
    return cli("tune", "--tasks", "quadratic", "--optimizers", "sgd,adam", "--trials", "8",
               "--steps", "3000", "--batch-size", "8", "--workers", "2", "--name", name,
               "--seeds", "1", "--no-report", "--store", f"sqlite:///{db}")


def _trials(db: Path) -> int:
    """Finished Optuna trials in ``db`` (0 while there are none)."""
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(db, timeout=5)
        try:
            return con.execute("SELECT COUNT(*) FROM trials WHERE state IN "
                               "('COMPLETE', 'PRUNED', 'FAIL')").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def _start(cmd: list[str], busy: Callable[[], bool]) -> tuple[subprocess.Popen[str], list[int]]:
    """Start ``cmd`` and wait until its two workers run and ``busy()`` holds (work stored);
    returns the process and every process below it."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=ENV)
    started = wait_until(lambda: proc.poll() is not None
                         or (len(workers_of(proc.pid)) >= 2 and busy()), START_S, every=0.1)
    tree = descendants(proc.pid)
    if not started or proc.poll() is not None:
        proc.kill()
        pytest.fail(f"the command did not get going: {proc.communicate()[1][-2000:]}")
    return proc, tree


def _assert_gone(tree: list[int]) -> None:
    gone = wait_until(lambda: not any(alive(p) for p in tree), GONE_S)
    left = [(p, cmdline(p)[:80]) for p in tree if alive(p)]
    for p, _ in left:  # clean up before failing
        os.kill(p, signal.SIGKILL)
    assert gone, f"processes outlived their owner: {left}"


@pytest.mark.parametrize("command", ["compare", "tune"])
def test_sigkill_of_the_main_process_leaves_no_worker(tmp_path: Path, command: str) -> None:
    db = tmp_path / "r.db"
    cmd = _compare(db, "k") if command == "compare" else _tune(db, "k")
    busy = (lambda: stored_runs(db) >= 1) if command == "compare" else (lambda: _trials(db) >= 1)
    proc, tree = _start(cmd, busy)
    assert any("spawn_main" in cmdline(p) for p in tree)
    os.kill(proc.pid, signal.SIGKILL)  # the main process only, not its group
    proc.wait()
    _assert_gone(tree)
    # an orphan would keep writing: nothing changes once the tree is gone
    before = stored_runs(db) if command == "compare" else _trials(db)
    time.sleep(1.0)
    assert (stored_runs(db) if command == "compare" else _trials(db)) == before


@pytest.mark.parametrize("sig,status", [("SIGTERM", 143), ("SIGHUP", 129)])
def test_sigterm_and_sighup_stop_compare_like_ctrl_c(tmp_path: Path, sig: str,
                                                     status: int) -> None:
    db = tmp_path / "r.db"
    proc, tree = _start(_compare(db, "t"), lambda: stored_runs(db) >= 2)
    at_signal = stored_runs(db)
    os.kill(proc.pid, getattr(signal, sig))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == status, err[-2000:]
    assert f"interrupted by {sig}" in err and "run the same command again to resume" in err
    assert "Traceback" not in err, err[-4000:]
    _assert_gone(tree)
    kept = stored_runs(db)
    assert at_signal <= kept < RUNS  # finished runs kept, the study stopped mid-way
    if sig == "SIGTERM":
        again = subprocess.run(_compare(db, "t"), capture_output=True, text=True, env=ENV,
                               timeout=600, check=False)
        assert again.returncode == 0, again.stderr[-2000:]
        assert f"{kept} of {RUNS} runs already stored" in again.stderr
        assert stored_runs(db) == RUNS


def test_sigterm_stops_tune_and_a_rerun_completes_it(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    proc, tree = _start(_tune(db, "t"), lambda: _trials(db) >= 2)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "interrupted by SIGTERM" in err and "Traceback" not in err
    _assert_gone(tree)
    done = _trials(db)
    assert 2 <= done < 16
    again = subprocess.run(_tune(db, "t"), capture_output=True, text=True, env=ENV,
                           timeout=600, check=False)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "of 16 trials already stored" in again.stderr  # it resumed
    assert _trials(db) >= 16  # the budget (trials a kill interrupted are failed and redone)


#: A pool owner for the start-method test: two workers busy for ten minutes, then "ready".
OWNER = """if True:
    import sys, time
    from optimlab.lab.pool import ProcessExecutor
    if __name__ == "__main__":
        pool = ProcessExecutor(2, start_method=sys.argv[1])
        futures = [pool.submit(time.sleep, 600) for _ in range(2)]
        while len(pool.pids()) < 2:
            time.sleep(0.05)
        time.sleep(1.0)  # both workers past their start, in time.sleep(600)
        print("ready", flush=True)
        time.sleep(600)
"""


@pytest.mark.parametrize("method", ["spawn", "forkserver", "fork"])
def test_workers_die_with_their_owner_for_every_start_method(tmp_path: Path,
                                                            method: str) -> None:
    script = tmp_path / "owner.py"
    script.write_text(OWNER)
    proc = subprocess.Popen([sys.executable, str(script), method], stdout=subprocess.PIPE,
                            text=True, env=ENV)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        tree = descendants(proc.pid)
        workers = [p for p in tree if p != proc.pid and "resource_tracker" not in cmdline(p)]
        # spawn, fork: two workers; forkserver: the server and its two workers
        assert len(workers) == (3 if method == "forkserver" else 2), [cmdline(p) for p in tree]
    finally:
        proc.kill()
        proc.wait()
    _assert_gone(tree)


def test_abort_kills_the_workers_mid_item_and_returns_with_them_gone() -> None:
    from optimlab.lab.pool import ProcessExecutor, WorkerDied

    pool = ProcessExecutor(2)
    futures = [pool.submit(time.sleep, 600) for _ in range(3)]
    assert wait_until(lambda: len(pool.pids()) == 2, START_S)
    pids = pool.pids()
    time.sleep(0.5)
    pool.abort()
    assert not any(alive(p) for p in pids)  # gone when abort returns, not later
    assert all(isinstance(f.exception(timeout=0), WorkerDied) for f in futures[:2])
    assert futures[2].cancelled()
    with pytest.raises(RuntimeError, match="closed"):
        pool.submit(time.sleep, 1)


def test_an_interrupted_close_aborts_and_leaves_no_worker_or_thread() -> None:
    """Ctrl-C (or a termination signal) while ``close()`` waits for the item in flight: the
    interruption propagates, and the pool aborts on its way out (as when a study is signalled
    just as it finishes)."""
    from optimlab.lab.pool import ProcessExecutor, WorkerDied

    class Stop(Exception):
        """What the signal handler raises (as ``interrupt_on_signals`` raises Interrupted)."""

    def handler(signum: int, frame: object) -> None:
        raise Stop

    pool = ProcessExecutor(1)
    future = pool.submit(time.sleep, 600)
    assert wait_until(lambda: len(pool.pids()) == 1, START_S)
    pids = pool.pids()
    time.sleep(0.5)  # the worker is in time.sleep(600)
    # a real signal (SIGUSR1, not pytest's SIGINT): it wakes the main thread's join
    old = signal.signal(signal.SIGUSR1, handler)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGUSR1))
    timer.start()
    try:
        with pytest.raises(Stop):
            pool.close()  # waits for the item: interrupted
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR1, old)
    assert not any(alive(p) for p in pids)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("optimlab-worker")]
    assert isinstance(future.exception(timeout=0), WorkerDied)


#: A process whose child runs the parent-pid watchdog alone (no prctl, no lifeline), and
#: writes the file named by its argument once the watchdog runs.
WATCHED = """if True:
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", '''if True:
        import os, pathlib, sys, time
        from optimlab.lab.pool import watch_parent
        watch_parent(os.getppid(), interval=0.05)
        pathlib.Path(sys.argv[1]).write_text("watching")
        time.sleep(600)
    ''', sys.argv[1]])
    print(child.pid, flush=True)
    time.sleep(600)
"""


def test_the_parent_watchdog_ends_a_process_whose_parent_died(tmp_path: Path) -> None:
    marker = tmp_path / "watching"
    proc = subprocess.Popen([sys.executable, "-c", WATCHED, str(marker)],
                            stdout=subprocess.PIPE, text=True, env=ENV)
    assert proc.stdout is not None
    child = int(proc.stdout.readline())
    assert wait_until(marker.exists, START_S)
    assert alive(child)
    proc.kill()
    proc.wait()
    _assert_gone([child])
