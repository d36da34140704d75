"""The results store under faults: a database locked past the timeout (finished runs spooled,
never dropped), read-only files and folders, missing permissions, a corrupted file, and a
study name bound to its spec. Every fault is a StoreError of one line saying what to do."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from storeutil import corrupt_middle_page, permissions_enforced

from optimlab.cli import main
from optimlab.lab.execution import InlineExecutor
from optimlab.lab.spec import StudySpec
from optimlab.lab.store import StoreError, first_difference, open_store
from optimlab.lab.store_faults import error_kind, store_error
from optimlab.lab.store_sqlite import SQLiteStore
from optimlab.lab.study import plan, run_study


def _spec(**kw: Any) -> StudySpec:
    base = {"name": "s", "tasks": ["quadratic"], "optimizers": ["sgd", "adam"], "seeds": 2,
            "steps": 30, "batch_size": [8]}
    return StudySpec.from_mapping({**base, **kw})


def _one_line(e: pytest.ExceptionInfo[BaseException], *needles: str) -> str:
    text = str(e.value)
    assert "\n" not in text, text
    for needle in needles:
        assert needle in text, text
    return text


@pytest.fixture
def stored(tmp_path: Path) -> Path:
    """A database holding study 's' (4 runs), closed."""
    db = tmp_path / "data" / "r.db"
    with open_store(db) as store:
        run_study(_spec(), store, executor=InlineExecutor())
    return db


def _runs_in(db: Path) -> int:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT COUNT(*) FROM optimlab_runs").fetchone()[0]
    finally:
        con.close()


# --------------------------------------------------------------------------- locks


def test_a_locked_database_spools_finished_runs_and_says_how_to_resume(tmp_path: Path
                                                                        ) -> None:
    db = tmp_path / "r.db"
    spec = _spec(seeds=3)  # 6 runs
    planned = len(plan(spec))
    blocker = sqlite3.connect(tmp_path / "r.db", isolation_level=None)
    done: list[str] = []

    def progress(count: int, total: int, record: Any) -> None:
        done.append(record.key)
        if len(done) == 1:  # another process takes the write lock and keeps it
            blocker.execute("BEGIN IMMEDIATE")

    # the lock timeout is short here only so that the test does not wait a minute
    store = SQLiteStore(db, lock_timeout=0.2)
    with pytest.raises(StoreError) as e:
        # one run per item (populations would store an arm's seeds together), so that the
        # lock comes between two items
        run_study(spec, store, executor=InlineExecutor(), progress=progress, population="off")
    _one_line(e, "stayed locked", "1 finished run(s) are kept in", "r.db.spool",
              "run the same command again")
    # the run in flight when the lock came finished and was kept, not dropped; no new run
    # started after it
    assert len(done) == 2
    assert store.finished(done) == set(done)  # spooled runs count as finished
    assert sorted(p.stem for p in (tmp_path / "r.db.spool").glob("*.json")) == [done[1]]
    assert _runs_in(db) == 1
    store.close()
    blocker.execute("ROLLBACK")
    blocker.close()
    # the next opening for writing imports the spool; resuming runs only the rest
    with open_store(db) as store:
        assert not (tmp_path / "r.db.spool").exists()
        assert store.finished(done) == set(done) and _runs_in(db) == 2
        again = run_study(spec, store, executor=InlineExecutor())
        assert (again.skipped, again.executed) == (2, planned - 2)
        assert len(store.study_records("s")) == planned


def test_a_read_locked_on_open_database_is_read_only_with_the_reason(stored: Path) -> None:
    blocker = sqlite3.connect(stored, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        store = SQLiteStore(stored, lock_timeout=0.1)
        assert len(store.study_records("s")) == 4  # reading works (write-ahead log)
        with pytest.raises(StoreError) as e:
            run_study(_spec(), store, executor=InlineExecutor())
        _one_line(e, "cannot be written", "locked for more than 0.1 s", "nothing was run")
        store.close()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


# --------------------------------------------------------------------------- permissions


def test_a_read_only_file_is_read_and_never_written(stored: Path) -> None:
    before = stored.read_bytes()
    stored.chmod(0o444)
    ran: list[Any] = []
    try:
        with permissions_enforced():
            with open_store(stored) as store:
                assert len(store.study_records("s")) == 4
                with pytest.raises(StoreError) as e:
                    run_study(_spec(seeds=3), store, executor=InlineExecutor(),
                              progress=lambda *a: ran.append(a))
                _one_line(e, "cannot be written", "not writable", "--store")
            with pytest.raises(StoreError) as e:
                open_store(stored.parent / "other.db", readonly=True)
            _one_line(e, "no results database")
    finally:
        stored.chmod(0o644)
    assert ran == []  # refused before anything ran
    assert stored.read_bytes() == before


def test_a_read_only_folder_still_gives_reports(stored: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    folder = stored.parent
    assert not Path(f"{stored}-wal").exists()  # closed cleanly: the file is complete
    folder.chmod(0o555)
    try:
        with permissions_enforced():
            with open_store(stored) as store:  # falls back to reading the file as it is
                assert len(store.study_records("s")) == 4
                with pytest.raises(StoreError) as e:
                    store.save_study("t", {"name": "t"}, [])
                _one_line(e, "cannot be written")
            code = main(["report", "--store", f"sqlite:///{stored}"])
            out = capsys.readouterr()
            assert code == 0, out.err
            assert "s " in out.out and "4/4 runs finished" in out.out
            with pytest.raises(StoreError) as e:
                open_store(folder / "new.db")
            _one_line(e, "cannot create results database", "writable folder")
    finally:
        folder.chmod(0o755)


@pytest.mark.slow
def test_a_tuning_report_from_a_read_only_folder(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("optuna")
    from optimlab.lab.tune import TuneSpec, tune
    from optimlab.lab.tuning.run import close_storages

    folder = tmp_path / "data"
    tune(TuneSpec(tasks=["quadratic"], optimizers=["sgd"], trials=8, steps=30, name="t",
                  seeds=1), str(folder / "r.db"), workers=1)
    close_storages()  # as a new process finds it: no connection open, no -wal file
    folder.chmod(0o555)
    try:
        with permissions_enforced():
            code = main(["report", "--study", "t-best", "--store", str(folder / "r.db"),
                         "--out", str(tmp_path / "report")])
            err = capsys.readouterr().err
            assert code == 0, err
    finally:
        close_storages()
        folder.chmod(0o755)
    page = (tmp_path / "report" / "index.html").read_text(encoding="utf-8")
    assert 'id="tuning"' in page  # the trials were read from the read-only folder too


def test_an_unreadable_database_names_the_permission(stored: Path) -> None:
    stored.chmod(0o000)
    try:
        with permissions_enforced(), pytest.raises(StoreError) as e:
            open_store(stored)
        _one_line(e, "cannot read results database", "Permission denied")
    finally:
        stored.chmod(0o644)


# --------------------------------------------------------------------------- corruption


def test_a_mid_file_corruption_is_refused_before_any_write(stored: Path,
                                                           capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    # more runs, so that the file has pages enough for a middle one
    with open_store(stored) as store:
        run_study(_spec(name="more", seeds=6, optimizers=["sgd", "adam", "momentum"]), store,
                  executor=InlineExecutor())
    corrupt_middle_page(stored)
    before = stored.read_bytes()
    with pytest.raises(StoreError) as e:
        open_store(stored)
    _one_line(e, "is corrupt", "nothing was written", ".recover")
    # the command line: one line, exit 2, and still nothing written
    code = main(["compare", "--tasks", "quadratic", "--optimizers", "sgd", "--seeds", "1",
                 "--steps", "20", "--workers", "1", "--no-report", "--name", "new",
                 "--store", f"sqlite:///{stored}"])
    err = capsys.readouterr().err
    assert code == 2 and "is corrupt" in err and "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("optimlab: error")]
    assert stored.read_bytes() == before


def test_a_corrupt_record_is_named_when_read(stored: Path) -> None:
    con = sqlite3.connect(stored)
    key = con.execute("SELECT key FROM optimlab_runs LIMIT 1").fetchone()[0]
    con.execute("UPDATE optimlab_runs SET record=? WHERE key=?", ('{"status": "ok", ', key))
    con.commit()
    con.close()
    with open_store(stored) as store, pytest.raises(StoreError) as e:
        store.study_records("s")
    _one_line(e, f"run {key} is corrupt")


def test_sqlite_errors_are_classified() -> None:
    def error(name: str, text: str) -> sqlite3.OperationalError:
        e = sqlite3.OperationalError(text)
        e.sqlite_errorname = name  # type: ignore[attr-defined]
        return e

    assert error_kind(error("SQLITE_BUSY", "database is locked")) == "locked"
    assert error_kind(error("SQLITE_READONLY_DIRECTORY", "attempt to write")) == "readonly"
    assert error_kind(error("SQLITE_FULL", "database or disk is full")) == "full"
    assert error_kind(error("SQLITE_CORRUPT", "malformed")) == "corrupt"
    assert error_kind(sqlite3.OperationalError("database is locked")) == "locked"  # by its text
    full = store_error(Path("r.db"), error("SQLITE_FULL", "database or disk is full"),
                       "store run k", 60.0)
    assert "disk is full" in str(full) and "run the same command again" in str(full)


# --------------------------------------------------------------------------- names and specs


def test_a_study_name_is_bound_to_its_spec(tmp_path: Path) -> None:
    with open_store(tmp_path / "r.db") as store:
        spec = {"name": "s", "optimizers": ["sgd"], "hyperparams": {"sgd": {"lr": [0.1]}}}
        store.save_study("s", spec, [("k1", "sgd")])
        # the same spec resumes; what a study did (bookkeeping) may change
        store.save_study("s", {**spec, "heldout_choice": {"q": {"sgd": "sgd"}},
                               "description": "now described"}, [("k1", "sgd"), ("k2", "b")])
        store.save_study("s", spec, [("k1", "sgd")])  # a grid-only save keeps the rest
        # a field the stored spec lacks is newer than it: not a difference
        store.save_study("s", {**spec, "rank_by": "work"}, [("k1", "sgd")])
        saved = store.study_spec("s")
        assert saved["rank_by"] == "work"  # and is kept from now on
        assert saved["heldout_choice"] == {"q": {"sgd": "sgd"}}
        assert store.studies()[0]["runs"] == 2
        with pytest.raises(StoreError) as e:
            store.save_study("s", {**spec, "hyperparams": {"sgd": {"lr": [0.2]}}},
                             [("k3", "sgd")])
        _one_line(e, "study 's'", "hyperparams.sgd.lr[0]: 0.1 there, 0.2 now", "--name NEW",
                  "--replace")
        assert store.study_spec("s") == saved  # nothing changed
        store.save_study("s", {**spec, "optimizers": ["adam"]}, [("k3", "adam")],
                         replace=True)
        assert store.study_spec("s")["optimizers"] == ["adam"]
        assert store.studies()[0]["runs"] == 1


def test_first_difference() -> None:
    assert first_difference({"a": [1, 2]}, {"a": [1, 2]}) is None
    assert first_difference({"a": [1, 2]}, {"a": [1, 3]}) == ("a[1]", 2, 3)
    assert first_difference({"a": 1}, {"a": 1, "b": 2}) == ("b", "(absent)", 2)
    assert first_difference({"a": 1, "x": 1}, {"a": 1, "x": 2}, ignore=frozenset("x")) is None
    assert first_difference({"a": [1]}, {"a": [1, 2]}) == ("a", [1], [1, 2])


def test_the_cli_refuses_a_reused_name_and_replaces_on_request(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"

    def compare(optimizer: str, *extra: str) -> int:
        return main(["compare", "--tasks", "quadratic", "--optimizers", optimizer, "--seeds",
                     "1", "--steps", "20", "--workers", "1", "--no-report", "--name", "X",
                     "--store", url, *extra])

    assert compare("sgd") == 0
    with open_store(tmp_path / "r.db") as store:
        (sgd,) = store.study_records("X")
    capsys.readouterr()
    assert compare("adam") == 2
    err = capsys.readouterr().err
    assert "study 'X'" in err and "optimizers[0]: 'sgd' there, 'adam' now" in err
    assert "Traceback" not in err
    assert compare("sgd") == 0  # the same spec resumes
    assert compare("adam", "--replace") == 0
    with open_store(tmp_path / "r.db") as store:
        records = store.study_records("X")
        assert [r.optimizer for r in records] == ["adam"]
        assert store.get_run(sgd.key) is not None  # the replaced study's run stays stored
