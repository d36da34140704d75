"""``optimlab worker`` processes sharing one study in PostgreSQL (tests/pgutil.py starts the
server): every run executes and is stored exactly once, a SIGKILLed worker's run is taken
over, and populations are the unit of work where they apply."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from pgutil import Server, postgres_server

from optimlab.lab.spec import StudySpec
from optimlab.lab.store import open_store
from optimlab.lab.study import plan

#: Generous bound for processes on a slow, loaded CI machine (not a timing).
PROCESS_TIMEOUT = 300

#: A user task that logs "<pid> <seed>" to $COUNT_LOG at each execution; the first execution
#: of each process first writes its pid to $COUNT_READY and waits for the file $COUNT_GO, so
#: the test can hold every worker inside a claimed run at once.
COUNTING_TASK = '''
import os, time
from pathlib import Path
from optimlab.lab.tasks import make_task

_first = [True]


def counting(**options):
    task = make_task("quadratic", **options)
    setup = task.setup

    def counted_setup(seed=0, device="cpu"):
        if _first[0]:
            _first[0] = False
            with open(os.environ["COUNT_READY"], "a") as f:
                f.write(f"{os.getpid()}\\n")
            deadline = time.monotonic() + 600
            while not Path(os.environ["COUNT_GO"]).exists() and time.monotonic() < deadline:
                time.sleep(0.02)
        with open(os.environ["COUNT_LOG"], "a") as f:
            f.write(f"{os.getpid()} {seed}\\n")
        setup(seed, device)

    task.setup = counted_setup
    return task
'''


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with postgres_server() as s:
        yield s


def _env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The workers' environment; the counting task importable here too."""
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "countmod").mkdir(exist_ok=True)
    (tmp_path / "countmod" / "__init__.py").write_text(COUNTING_TASK)
    path = os.pathsep.join([str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**os.environ, "PYTHONPATH": path, "OPTIMLAB_ALLOW_IMPORT": "countmod",
            "PYTHONUNBUFFERED": "1", "COUNT_LOG": str(tmp_path / "executions.log"),
            "COUNT_READY": str(tmp_path / "ready.log"), "COUNT_GO": str(tmp_path / "go")}


def _saved_study(url: str, **settings: object) -> StudySpec:
    """Save a study in the store (as ``optimlab compare`` does before it runs), run nothing."""
    spec = StudySpec.from_mapping({"name": "shared", "steps": 40, "batch_size": [8],
                                   **settings}, allow_import=["countmod"])
    with open_store(url) as store:
        store.save_study("shared", {**spec.to_dict(), "name": "shared",
                                    "heldout_seeds": spec.n_heldout}, [])
    return spec


def _worker(url: str, env: dict[str, str], *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "optimlab.cli", "worker", "--store", url,
                             "--study", "shared", "--workers", "1", *extra], env=env,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)


def _wait_ready(tmp_path: Path, n: int, procs: list[subprocess.Popen[str]]) -> set[int]:
    ready = tmp_path / "ready.log"
    deadline = time.monotonic() + PROCESS_TIMEOUT
    while True:
        pids = {int(x) for x in ready.read_text().split()} if ready.exists() else set()
        if len(pids) >= n:
            return pids
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"a worker ended early: {p.communicate()}")
        assert time.monotonic() < deadline, "the workers did not reach the barrier"
        time.sleep(0.05)


def _executions(tmp_path: Path) -> list[tuple[int, int]]:
    text = (tmp_path / "executions.log").read_text()
    return [(int(pid), int(seed)) for pid, seed in (line.split() for line in text.splitlines())]


def _finish(procs: list[subprocess.Popen[str]]) -> list[tuple[str, str]]:
    try:
        return [p.communicate(timeout=PROCESS_TIMEOUT) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)


@pytest.mark.slow
def test_four_workers_run_every_run_of_a_study_exactly_once(
        server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = server.create_database(f"w_{uuid.uuid4().hex[:10]}")
    env = _env(tmp_path, monkeypatch)
    spec = _saved_study(url, tasks=["countmod:counting"], optimizers=["sgd", "adam"],
                        seeds=4)
    keys = {r.key for r in plan(spec)}
    procs = [_worker(url, env, "--population", "off") for _ in range(4)]
    pids = _wait_ready(tmp_path, 4, procs)  # all four inside a claimed run at once
    (tmp_path / "go").touch()
    outs = _finish(procs)
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err
    runs = _executions(tmp_path)
    assert len(runs) == len(keys) == 8, runs  # each run executed exactly once ...
    assert {pid for pid, _ in runs} == pids  # ... and every worker did some
    with open_store(url) as store:
        records = store.study_records("shared")
    assert sorted(r.key for r in records) == sorted(keys)  # each stored once
    assert all(r.status != "failed" for r in records), [r.error for r in records]
    assert all("all 8 runs stored" in out for out, _ in outs)


@pytest.mark.slow
def test_a_sigkilled_workers_run_is_taken_over_and_stored_once(
        server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = server.create_database(f"w_{uuid.uuid4().hex[:10]}")
    env = _env(tmp_path, monkeypatch)
    spec = _saved_study(url, tasks=["countmod:counting"], optimizers=["sgd"], seeds=3)
    keys = {r.key for r in plan(spec)}
    procs = [_worker(url, env, "--population", "off") for _ in range(2)]
    try:
        _wait_ready(tmp_path, 2, procs)  # each holds a claim, inside its run
        victim, survivor = procs
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait(timeout=PROCESS_TIMEOUT)
        (tmp_path / "go").touch()
        _, err = survivor.communicate(timeout=PROCESS_TIMEOUT)
    finally:
        _finish(procs)
    assert survivor.returncode == 0, err
    runs = _executions(tmp_path)
    # the victim died before its run was logged: the survivor ran every run, once each
    assert len(runs) == 3 and {pid for pid, _ in runs} == {survivor.pid}
    with open_store(url) as store:
        records = store.study_records("shared")
        assert sorted(r.key for r in records) == sorted(keys)
        assert store.holders(sorted(keys)) == {}  # no claim left behind


@pytest.mark.slow
def test_workers_take_populations_where_they_apply(server: Server, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    url = server.create_database(f"w_{uuid.uuid4().hex[:10]}")
    env = _env(tmp_path, monkeypatch)
    spec = _saved_study(url, tasks=["quadratic"], optimizers=["sgd", "adam"], seeds=4)
    keys = {r.key for r in plan(spec)}
    procs = [_worker(url, env) for _ in range(2)]
    outs = _finish(procs)
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err
    with open_store(url) as store:
        records = store.study_records("shared")
    assert sorted(r.key for r in records) == sorted(keys)
    # an arm's 4 seeds trained as one population (of 4), whichever worker took it
    sizes = Counter(r.scalars.get("population_size") for r in records)
    assert sizes == {4: 8}, sizes


def test_a_worker_on_an_unknown_study_is_one_line(server: Server, tmp_path: Path) -> None:
    url = server.create_database(f"w_{uuid.uuid4().hex[:10]}")
    open_store(url).close()
    done = subprocess.run([sys.executable, "-m", "optimlab.cli", "worker", "--store", url,
                           "--study", "nope"], capture_output=True, text=True,
                          timeout=PROCESS_TIMEOUT)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("optimlab: error: no study 'nope'")
