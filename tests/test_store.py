"""The results store: typed records in and out, database versions, old databases."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from optimlab.lab.runs import RunConfig, execute
from optimlab.lab.schema import SCHEMA_VERSION, RunRecord
from optimlab.lab.store import DB_VERSION, StoreError, open_store

# The version-1 layout, written out here (not imported) so that the test keeps describing
# databases that exist on disk whatever the current code does.
V1_SCHEMA = """
CREATE TABLE optimlab_runs (key TEXT PRIMARY KEY, status TEXT NOT NULL, config TEXT NOT NULL,
                            record TEXT NOT NULL, finished REAL NOT NULL);
CREATE TABLE optimlab_studies (name TEXT PRIMARY KEY, spec TEXT NOT NULL, created REAL NOT NULL,
                               updated REAL NOT NULL);
CREATE TABLE optimlab_study_runs (study TEXT NOT NULL, key TEXT NOT NULL, label TEXT NOT NULL,
                                  pos INTEGER NOT NULL, PRIMARY KEY (study, key));
CREATE TABLE optimlab_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO optimlab_meta VALUES ('version', '1');
"""

#: A run record as the version-1 runner wrote it: no "schema" field, "extra", and a
#: steps_to_target that was the first evaluation at or below the target (step 10 here,
#: though the run is back above it at step 20 and settles only at step 30).
V1_RECORD: dict[str, Any] = {
    "key": "aaaaaaaaaaaaaaaaaaaa",
    "config": {"task": "quadratic", "optimizer": "nesterov", "hyperparams": {"lr": 0.005},
               "task_options": {}, "schedule": "constant", "batch_size": "full", "seed": 0,
               "steps": 40, "seconds": None, "eval_every": 10, "telemetry": False},
    "status": "ok", "error": None,
    "task_info": {"name": "quadratic", "kind": "2d", "description": "rotated quadratic",
                  "target": 1e-6, "target_metric": "suboptimality", "n_train": 1,
                  "options": {"noise": 0.0, "condition_number": 100.0}},
    "curve": {"step": [1, 40], "time": [0.001, 0.04], "train_loss": [2.0, 1e-8]},
    "evals": {"step": [0, 10, 20, 30, 40], "time": [0.0, 0.01, 0.02, 0.03, 0.04],
              "metrics": {"suboptimality": [2.0, 5e-7, 3e-6, 8e-7, 1e-8],
                          "train_loss": [2.0, 5e-7, 3e-6, 8e-7, 1e-8]}},
    "final": {"suboptimality": 1e-8, "train_loss": 1e-8},
    "steps_to_target": 10, "time_to_target": 0.01, "generalization_gap": None,
    "steps_done": 40, "train_seconds": 0.04, "wall_seconds": 0.1,
    "peak_memory_bytes": 123456, "memory_kind": "process peak RSS", "state_bytes": 24,
    "n_params": 2, "param_bytes": 16, "trajectory": [[2.0, 1.0], [0.0, 0.0]],
    "lr": {"step": [0], "value": [0.005]}, "telemetry": None,
    "extra": {"closure_evals": 40},
}


def make_v1_database(path: Path) -> None:
    db = sqlite3.connect(path)
    db.executescript(V1_SCHEMA)
    db.execute("INSERT INTO optimlab_runs VALUES (?, ?, ?, ?, ?)",
               (V1_RECORD["key"], "ok", json.dumps(V1_RECORD["config"], sort_keys=True),
                json.dumps(V1_RECORD), 1.0))
    db.execute("INSERT INTO optimlab_studies VALUES (?, ?, ?, ?)",
               ("old", json.dumps({"tasks": ["quadratic"]}), 1.0, 1.0))
    db.execute("INSERT INTO optimlab_study_runs VALUES (?, ?, ?, ?)",
               ("old", V1_RECORD["key"], "nesterov", 0))
    db.commit()
    db.close()


@pytest.fixture(scope="module")
def record() -> RunRecord:
    return execute(RunConfig("quadratic", "sgd", {"lr": 0.01}, batch_size="full", steps=20),
                   threads=1)


def test_typed_records_in_and_out(tmp_path: Path, record: RunRecord) -> None:
    with open_store(tmp_path / "r.db") as store:
        assert store.put_run(record)
        assert not store.put_run(record)  # a key is stored once
        back = store.get_run(record.key)
        assert isinstance(back, RunRecord)
        assert back.to_dict() == {**record.to_dict(), "label": None}
        assert store.get_run("no-such-key") is None
        store.save_study("s", {"name": "s"}, [(record.key, "sgd lr=0.01")])
        (rec,) = store.study_records("s")
        assert rec.label == "sgd lr=0.01" and rec.key == record.key
        assert store.get_run(record.key).label is None  # the arm belongs to the study
        with pytest.raises(TypeError, match="RunRecord"):
            store.put_run(record.to_dict())  # type: ignore[arg-type]


def test_a_version_1_database_is_migrated_on_open(tmp_path: Path, record: RunRecord) -> None:
    path = tmp_path / "old.db"
    make_v1_database(path)
    with open_store(path) as store:
        (rec,) = store.study_records("old")
        assert isinstance(rec, RunRecord) and rec.schema == SCHEMA_VERSION
        assert rec.label == "nesterov"
        assert rec.first_crossing == 10  # what version 1 called steps_to_target
        assert rec.steps_to_target == 30 and rec.target_resolution == 10 and rec.reached
        assert rec.scalars["closure_evals"] == 40
        assert store.get_run(V1_RECORD["key"]).steps_to_target == 30
        assert store.finished([V1_RECORD["key"], "x"]) == {V1_RECORD["key"]}
        assert store.put_run(record)  # new runs go into the migrated database
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM optimlab_meta WHERE name='version'"
                      ).fetchone()[0] == str(DB_VERSION)
    db.close()
    with open_store(path) as store:  # opens again as a current database
        assert len(store.finished([V1_RECORD["key"], record.key])) == 2


def test_a_newer_database_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    make_v1_database(path)
    db = sqlite3.connect(path)
    db.execute("UPDATE optimlab_meta SET value='99' WHERE name='version'")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match=r"version '99'.*reads versions 1 to \d.*Upgrade"):
        open_store(path)


def test_an_unreadable_record_names_the_run(tmp_path: Path) -> None:
    path = tmp_path / "bad.db"
    make_v1_database(path)
    bad = {**V1_RECORD, "steps_done": "forty"}
    db = sqlite3.connect(path)
    db.execute("UPDATE optimlab_runs SET record=?", (json.dumps(bad),))
    db.commit()
    db.close()
    with open_store(path) as store, pytest.raises(StoreError,
                                                  match=r"run aaaa.*steps_done"):
        store.get_run(V1_RECORD["key"])
