"""Helpers of the fault tests: a user task module that fails on demand, and process trees.

The task package is written to a folder of the test (``write_fault_task``) and named through
the command line as ``faultpkg.tasks:make`` with ``OPTIMLAB_ALLOW_IMPORT=faultpkg`` and the
folder on ``PYTHONPATH`` (:func:`fault_env`).
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path

#: The user task: the built-in quadratic, whose setup appends a line to ``$FAULT_LOG`` (seed,
#: pid, time) and then raises for ``fail_seed``, or SIGKILLs its own (worker) process for
#: ``die_seed``; ``build_fail`` makes the factory itself raise.
FAULT_TASK = '''
import multiprocessing
import os
import signal
import time

from optimlab.lab.tasks import Task, make_task


class Marked(Task):
    def __init__(self, fail_seed=-1, die_seed=-1, build_fail=False):
        if build_fail:
            raise RuntimeError("the factory cannot build this task")
        self.inner = make_task("quadratic")
        self.info = self.inner.info
        self.optimum = self.inner.optimum
        self.fail_seed, self.die_seed = fail_seed, die_seed

    def setup(self, seed=0, device="cpu"):
        log = os.environ.get("FAULT_LOG")
        if log:
            with open(log, "a") as f:
                f.write(f"{seed} {os.getpid()} {time.time():.6f}\\n")
        if seed == self.fail_seed:
            raise RuntimeError(f"setup failed for seed {seed}")
        if seed == self.die_seed:
            if multiprocessing.current_process().name != "optimlab-worker":
                raise RuntimeError("die_seed outside a worker process")
            os.kill(os.getpid(), signal.SIGKILL)
        self.inner.setup(seed, device)
        self.model, self.n_train = self.inner.model, self.inner.n_train

    def batches(self, batch_size, generator):
        return self.inner.batches(batch_size, generator)

    def loss(self, batch):
        return self.inner.loss(batch)

    def full_loss(self):
        return self.inner.full_loss()

    def evaluate(self):
        return self.inner.evaluate()


def make(**options):
    return Marked(**options)
'''

TASK = "faultpkg.tasks:make"


def write_fault_task(folder: Path) -> Path:
    """Write the ``faultpkg`` package into ``folder``; returns ``folder``."""
    pkg = folder / "faultpkg"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "tasks.py").write_text(FAULT_TASK)
    return folder


def fault_env(folder: Path, log: Path | None = None) -> dict[str, str]:
    """The environment of a CLI subprocess that may name ``faultpkg`` tasks."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(folder), *filter(None, [os.environ.get("PYTHONPATH")])]),
        OPTIMLAB_ALLOW_IMPORT="faultpkg", PYTHONUNBUFFERED="1")
    if log is not None:
        env["FAULT_LOG"] = str(log)
    return env


def study_file(path: Path, *, name: str, seeds: int = 3, steps: int = 50,
               optimizers: tuple[str, ...] = ("sgd", "adam"), **options: object) -> Path:
    """A study TOML of the fault task with task ``options`` (integers)."""
    opts = ", ".join(f"{k} = {v}" for k, v in options.items())
    path.write_text(f'name = "{name}"\ntasks = ["{TASK}"]\n'
                    f"optimizers = {list(optimizers)!r}\nseeds = {seeds}\nsteps = {steps}\n"
                    f'batch_size = [8]\nheldout_seeds = 0\n\n[task."{TASK}"]\n'
                    f"options = {{{opts}}}\n".replace("'", '"'))
    return path


def cli(*args: str) -> list[str]:
    """The command line of ``optimlab ARGS`` in this interpreter."""
    return [sys.executable, "-m", "optimlab.cli", *args]


# --------------------------------------------------------------------------- processes


def _parents() -> dict[int, int]:
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat", encoding="utf-8", errors="replace") as f:
                    out[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    return out


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux ``/proc``)."""
    children: dict[int, list[int]] = {}
    for child, parent in _parents().items():
        children.setdefault(parent, []).append(child)
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not: it holds no memory, pipes or locks, only an
    entry its new parent reaps)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def workers_of(pid: int) -> list[int]:
    """The pool workers below ``pid`` (spawned or forked by a fork server)."""
    return [p for p in descendants(pid)
            if "spawn_main" in cmdline(p) or "forkserver" in cmdline(p)]


def wait_until(condition: Callable[[], bool], timeout: float, every: float = 0.05) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass; whether it held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every)
    return condition()


def stored_runs(db: Path) -> int:
    """Runs in a results database (0 while it does not exist or is busy)."""
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
