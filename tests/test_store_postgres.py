"""The results store on a real PostgreSQL server (tests/pgutil.py starts one): the SQLite
store's semantics (records, study/spec binding, claims), claims under concurrency, one-line
errors, and Optuna tunings that share a PostgreSQL storage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pgutil import Server, free_port, postgres_server

from optimlab.lab.claims import Owner, this_host
from optimlab.lab.execution import InlineExecutor
from optimlab.lab.spec import StudySpec
from optimlab.lab.store import StoreError, open_store
from optimlab.lab.study import plan, run_study

#: Generous bound for a process on a slow, loaded CI machine (not a timing).
PROCESS_TIMEOUT = 300


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with postgres_server() as s:
        yield s


@pytest.fixture
def url(server: Server) -> str:
    """A fresh database on the server, for one test."""
    return server.create_database(f"t_{uuid.uuid4().hex[:12]}")


def _spec(**extra: object) -> StudySpec:
    return StudySpec.from_mapping({"name": "s", "tasks": ["quadratic"], "optimizers": ["sgd"],
                                   "seeds": 2, "steps": 5, "batch_size": [8], **extra})


def _dead_owner() -> Owner:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return Owner(this_host(), child.pid, "", "dead")


# --------------------------------------------------------------------------- semantics


def test_claims_are_exclusive_renewed_released_and_skip_stored_runs(url: str) -> None:
    me, peer = Owner.current(), Owner(this_host(), os.getpid(), "", "peer")  # both alive
    with open_store(url) as store:
        assert store.claim(["a", "b", "c"], me, 60.0, limit=2) == ["a", "b"]
        assert store.claim(["a", "b", "c"], peer, 60.0) == ["c"]
        assert store.claim(["a", "b"], me, 60.0) == ["a", "b"]  # my own: renewed
        assert set(store.holders(["a", "b", "c", "d"])) == {"a", "b", "c"}
        assert store.renew(me, 60.0) == {"a", "b"}
        store.release(me, ["a"])
        assert store.claim(["a", "b"], peer, 60.0) == ["a"]
        store.release(me)
        assert store.renew(me, 60.0) == set()
        # an expired lease and a dead owner's lease are taken over
        assert store.claim(["x"], peer, -1.0) == ["x"] and store.claim(["x"], me, 60.0) == ["x"]
        assert store.claim(["y"], _dead_owner(), 3600.0) == ["y"]
        assert store.claim(["y"], me, 60.0) == ["y"]
        # a stored run cannot be claimed, and storing it ends its claim
        spec = _spec()
        keys = [r.key for r in plan(spec)]
        assert store.claim(keys, peer, 60.0) == keys
        store.release(peer)
        run_study(spec, store, executor=InlineExecutor())
        assert store.claim(keys, me, 60.0) == [] and store.holders(keys) == {}


def test_records_are_stored_once_and_a_study_name_is_bound_to_its_spec(url: str) -> None:
    with open_store(url) as store:
        out = run_study(_spec(), store, executor=InlineExecutor())
        assert (out.planned, out.executed) == (2, 2)
        records = store.study_records("s")
        assert [r.label for r in records] == ["sgd", "sgd"]
        assert store.put_run(records[0]) is False  # its key is there: nothing written
        assert store.get_run(records[0].key).final == records[0].final
        assert store.finished([r.key for r in records] + ["nope"]) == {r.key for r in records}
        again = run_study(_spec(), store, executor=InlineExecutor())
        assert (again.skipped, again.executed) == (2, 0)  # resumed: nothing ran
        with pytest.raises(StoreError, match=r"saved with another spec \(steps: 5 there, 6"):
            run_study(_spec(steps=6), store, executor=InlineExecutor())
        run_study(_spec(steps=6), store, executor=InlineExecutor(), replace=True)
        assert [s["runs"] for s in store.studies()] == [2]
    with open_store(url, readonly=True) as store:
        assert len(store.study_records("s")) == 2
        with pytest.raises(StoreError, match="cannot be written"):
            store.check_writable()


def test_concurrent_claimers_never_share_a_key(url: str) -> None:
    """Four threads, each an owner with its own connection, claim from the same 200 keys
    until none is left: every key is granted exactly once."""
    keys = [f"k{i:03d}" for i in range(200)]
    got: dict[str, list[str]] = {}
    errors: list[BaseException] = []

    def claimer(i: int) -> None:
        owner = Owner(this_host(), os.getpid(), "", f"t{i}")
        mine = got.setdefault(owner.token, [])
        try:
            with open_store(url) as store:
                deadline = time.monotonic() + PROCESS_TIMEOUT
                while time.monotonic() < deadline:
                    # (its own keys are left out: claiming them again would renew them)
                    taken = store.claim([k for k in keys if k not in mine], owner, 600.0,
                                        limit=3)
                    if not taken and len(store.holders(keys)) == len(keys):
                        return
                    mine.extend(taken)
        except BaseException as e:
            errors.append(e)

    open_store(url).close()  # the tables, before the threads race
    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=PROCESS_TIMEOUT)
    assert not errors, errors
    granted = [k for owned in got.values() for k in owned]
    assert sorted(granted) == keys  # each once
    assert sum(bool(owned) for owned in got.values()) >= 2  # they did compete


# --------------------------------------------------------------------------- faults


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "optimlab.cli", *args], capture_output=True,
                          text=True, timeout=PROCESS_TIMEOUT)


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("optimlab: error: ") and "Traceback" not in done.stderr
    return lines[0]


def test_an_unreachable_server_a_failed_login_and_a_missing_database_are_one_line(
        server: Server) -> None:
    down = f"postgresql://u:hidden-pw@127.0.0.1:{free_port()}/x"
    line = _one_line(_cli("report", "--store", down))
    assert "cannot reach the PostgreSQL server" in line and "hidden-pw" not in line
    line = _one_line(_cli("report", "--store", server.url(password="wrong-pw")))
    assert "cannot log in" in line and "wrong-pw" not in line
    line = _one_line(_cli("report", "--store", server.url("no_such_db")))
    assert "does not exist" in line and "createdb" in line


def test_a_missing_driver_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg now fails
    with pytest.raises(StoreError, match=r"pip install 'optimlab\[distributed\]'"):
        open_store("postgresql://u:p@127.0.0.1:1/x")


# --------------------------------------------------------------------------- Optuna


def test_a_stale_trial_is_failed_and_marked_interrupted(url: str) -> None:
    """Optuna's heartbeat (as tuning configures it, with a short grace period): a RUNNING trial
    whose process stopped beating is failed, and the callback marks it interrupted, so it is
    not counted and its index runs again."""
    optuna = pytest.importorskip("optuna")
    import warnings

    from optimlab.lab.tuning import run

    options = {**run._heartbeat_options(), "heartbeat_interval": 1, "grace_period": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental, "meant for optimize"
        storage = optuna.storages.RDBStorage(run._sqlalchemy_url(url), **options)
        study = optuna.create_study(study_name="hb", storage=storage)
        done = study.ask()
        study.tell(done, 1.0)
        trial = study.ask()
        storage.record_heartbeat(trial._trial_id)  # then the process "dies": no more beats
        time.sleep(2.5)  # > grace_period (1 s) + 1 s: the heartbeat row's clock resolution
        optuna.storages.fail_stale_trials(study)
    assert study.get_trials()[1].state.name == "FAIL"
    assert study.user_attrs[run.STALE_ATTR] == [1]
    assert [t.number for t in run.counted_trials(study)] == [0]  # the stale one not counted


TUNE = '''
import json, sys
from optimlab.lab.tune import TuneSpec, tune
out = tune(TuneSpec(**json.loads(sys.argv[2])), sys.argv[1], workers=1, rerun=False)
print(json.dumps([[r.optimizer, r.best_value, r.ran] for r in out.results]))
'''


@pytest.mark.slow
def test_four_tuning_processes_on_postgresql_run_every_trial_once(url: str, tmp_path: Path
                                                                  ) -> None:
    """Four ``tune`` processes share one study's Optuna studies and results on the server: the
    budget is spent exactly (each trial index once per optimizer), none lost or run twice, and
    every process reports the same best trial."""
    from optimlab.lab.tune import TuneSpec, tuning_history

    settings = {"tasks": ["quadratic"], "optimizers": ["sgd", "adam"], "trials": 8,
                "steps": 60, "seeds": 1, "name": "pg"}
    open_store(url).close()
    procs = [subprocess.Popen([sys.executable, "-c", TUNE, url, json.dumps(settings)],
                              text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(4)]
    try:
        outs = [p.communicate(timeout=PROCESS_TIMEOUT) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err
    history = tuning_history(TuneSpec(**settings), url)
    assert len(history) == 16  # the budget exactly
    for opt in settings["optimizers"]:
        assert [h["index"] for h in history if h["optimizer"] == opt] == list(range(8))
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert sum(row[2] for result in results for row in result) == 16  # each trial ran once
    assert all(r[0][:2] == results[0][0][:2] for r in results)  # all report the same best
