"""The typed records: round trips, run keys, migration of version-1 records, schema errors."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import numpy as np
import pytest

from optimlab.lab import schema
from optimlab.lab.runs import execute
from optimlab.lab.schema import (
    ENGINE_OPTIONS,
    KEY_VERSION,
    SCHEMA_VERSION,
    RunConfig,
    RunRecord,
    SchemaError,
    json_safe,
    migrate,
    settle,
    steady_time,
)


@pytest.fixture(scope="module")
def record() -> RunRecord:
    return execute(RunConfig("quadratic", "momentum", {"lr": 0.01}, batch_size="full",
                             steps=30), threads=1)


# ----------------------------------------------------------------------------- round trips


def test_a_record_round_trips_through_strict_json(record: RunRecord) -> None:
    d = record.to_dict()
    text = json.dumps(d, allow_nan=False)  # strict JSON: NaN and inf written as null
    back = RunRecord.from_dict(json.loads(text))
    assert back.to_dict() == d
    assert back.config == record.config
    assert back.schema == SCHEMA_VERSION and d["schema"] == SCHEMA_VERSION
    assert back.seed == 0 and back.optimizer == "momentum" and back.task == "quadratic"
    assert back.ok and back.metric("suboptimality") == record.final["suboptimality"]
    assert math.isnan(back.metric("no_such_metric"))


def test_nan_survives_a_round_trip_as_nan(record: RunRecord) -> None:
    d = record.to_dict()
    d["final"]["train_loss"] = None  # how strict JSON stores a NaN
    d["evals"]["metrics"]["train_loss"][-1] = None
    back = RunRecord.from_dict(d)
    assert math.isnan(back.final["train_loss"]) and math.isnan(back.metric("train_loss"))
    assert math.isnan(back.evals["metrics"]["train_loss"][-1])


def test_a_config_round_trips_and_refuses_unknown_fields() -> None:
    c = RunConfig("quadratic", "adam", {"lr": 0.1, "betas": (0.9, 0.99)}, clip_norm=1,
                  lr_scaling="sqrt", base_batch_size=64, epochs=3, seed=2)
    back = RunConfig.from_dict(json.loads(json.dumps(c.to_dict())))
    assert back.key() == c.key()
    assert back.clip_norm == 1.0 and isinstance(back.clip_norm, float)
    with pytest.raises(ValueError, match="no field 'stepz'"):
        RunConfig.from_dict({"task": "quadratic", "optimizer": "sgd", "stepz": 3})


@pytest.mark.parametrize("field,value", [("clip_norm", 0.0), ("clip_value", -1.0),
                                         ("clip_norm", math.inf), ("lr_scaling", "cubic"),
                                         ("base_batch_size", 0), ("examples", 0),
                                         ("epochs", -1.0), ("telemetry", "yes")])
def test_config_fields_are_validated(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        RunConfig("quadratic", "sgd", **{field: value})


# ----------------------------------------------------------------------------- keys


def test_the_key_is_stable() -> None:
    c = RunConfig("quadratic", "sgd", {"lr": 0.1, "momentum": 0.0}, steps=10)
    same = RunConfig("quadratic", "sgd", {"momentum": 0.0, "lr": 0.1}, steps=10)
    assert c.key() == same.key()
    # A golden value: if this changes, every stored run is orphaned. Change it only together
    # with KEY_VERSION, deliberately.
    assert c.key() == "e2830604b3d6e019b947"


def test_the_key_hashes_its_version(monkeypatch: pytest.MonkeyPatch) -> None:
    c = RunConfig("quadratic", "sgd", {"lr": 0.1}, steps=10)
    assert c.key_fields()["v"] == KEY_VERSION
    before = c.key()
    monkeypatch.setattr(schema, "KEY_VERSION", KEY_VERSION + 1)
    assert c.key() != before


def test_engine_options_are_not_in_the_key() -> None:
    base = RunConfig("quadratic", "adam", {"lr": 0.1}, steps=10)
    engine = {"foreach": True, "fused": False, "capturable": False, "differentiable": False,
              "nonfinite": "skip", "master_weights": True, "stochastic_rounding": True}
    assert set(engine) == set(ENGINE_OPTIONS)
    with_engine = RunConfig("quadratic", "adam", {"lr": 0.1, **engine}, steps=10)
    assert with_engine.key() == base.key()
    assert not set(ENGINE_OPTIONS) & set(with_engine.key_fields()["hyperparams"])
    assert with_engine.to_dict()["hyperparams"]["nonfinite"] == "skip"  # still recorded


def test_clipping_scaling_and_budgets_are_in_the_key() -> None:
    base = RunConfig("quadratic", "sgd", {"lr": 0.1}, steps=10)
    variants = [RunConfig("quadratic", "sgd", {"lr": 0.1}, steps=10, clip_norm=1.0),
                RunConfig("quadratic", "sgd", {"lr": 0.1}, steps=10, clip_value=1.0),
                RunConfig("quadratic", "sgd", {"lr": 0.1}, steps=10, lr_scaling="linear"),
                RunConfig("quadratic", "sgd", {"lr": 0.1}, steps=10, base_batch_size=64),
                RunConfig("quadratic", "sgd", {"lr": 0.1}, examples=10),
                RunConfig("quadratic", "sgd", {"lr": 0.1}, epochs=10)]
    keys = {v.key() for v in variants}
    assert len(keys) == len(variants) and base.key() not in keys
    # fields new in version 2 stay out of the key at their defaults
    assert not {"clip_norm", "clip_value", "lr_scaling", "base_batch_size", "examples",
                "epochs"} & set(base.key_fields())
    # with a budget in examples, the steps the runner derives do not change the key
    assert (RunConfig("quadratic", "sgd", examples=100, steps=5).key()
            == RunConfig("quadratic", "sgd", examples=100).key())


# ----------------------------------------------------------------------------- time to target


def test_settle() -> None:
    steps = [0, 10, 20, 30, 40]
    values = [2.0, 0.5, 2.0, 0.5, 0.1]
    s = settle(steps, values, 1.0)
    assert (s.step, s.resolution, s.first_crossing, s.index) == (30, 10, 10, 3)
    assert settle(steps, values, 1.0, ok=False).step is None  # diverged runs never settle
    assert settle(steps, [*values[:-1], math.nan], 1.0).step is None
    assert settle(steps, [0.5] * 5, 1.0).resolution == 0  # at or below from the start
    assert settle(steps, [2.0] * 5, 1.0) == schema.Settled(None, None, None, None)


def test_steady_time_counts_warmup_steps_at_the_median() -> None:
    # 5 warm-up steps took 1.0 s, later steps 0.01 s each: at step 20 the clock says
    # 1.0 + 15 * 0.01 = 1.15 s, of which the steady-state time is 20 * 0.01 = 0.2 s (a few
    # float64 operations on O(1) values: ~1e-16 relative error, so 1e-12 is generous)
    assert steady_time(1.15, 20, 5, 1.0, 0.01) == pytest.approx(0.2, rel=1e-12)
    assert steady_time(0.4, 2, 5, 1.0, 0.01) == pytest.approx(0.02, rel=1e-12)
    assert steady_time(1.15, 20, 5, 1.0, None) == 1.15  # no median: nothing to replace


def test_json_safe() -> None:
    out = json_safe({"a": (1, 2.5, math.nan), 3: np.float32(0.5), "b": np.int64(4),
                     "c": [math.inf, None, "x"], "d": np.array([1.0, np.nan])})
    assert out == {"a": [1, 2.5, None], "3": 0.5, "b": 4, "c": [None, None, "x"],
                   "d": [1.0, None]}
    json.dumps(out, allow_nan=False)


# ----------------------------------------------------------------------------- version 1


def v1_record(values: list[float], *, status: str = "ok") -> dict[str, Any]:
    """A record as the version-1 runner wrote it (no "schema"; first-crossing steps)."""
    steps = [0, 10, 20, 30, 40][:len(values)]
    first = next((s for s, v in zip(steps, values) if v <= 1e-6), None)
    config = {"task": "quadratic", "optimizer": "sgd", "hyperparams": {"lr": 0.01},
              "task_options": {}, "schedule": "constant", "batch_size": 8, "seed": 1,
              "steps": 40, "seconds": None, "eval_every": 10, "telemetry": False}
    return {
        "key": "0123456789abcdef0123", "config": config, "status": status, "error": None,
        "task_info": {"name": "quadratic", "kind": "2d", "description": "quadratic",
                      "target": 1e-6, "target_metric": "suboptimality", "n_train": 1,
                      "options": {"noise": 0.0}},
        "curve": {"step": [1, 40], "time": [0.01, 0.4], "train_loss": [1.0, 0.1]},
        "evals": {"step": steps, "time": [0.1 * s for s in steps],
                  "metrics": {"suboptimality": values, "train_loss": values}},
        "final": {"suboptimality": values[-1], "train_loss": values[-1]},
        "steps_to_target": first, "time_to_target": None if first is None else 0.1 * first,
        "generalization_gap": None, "steps_done": steps[-1], "train_seconds": 4.0,
        "wall_seconds": 5.0, "peak_memory_bytes": 1000, "memory_kind": "rss",
        "state_bytes": 16, "n_params": 2, "param_bytes": 16,
        "trajectory": [[2.0, 1.0], [0.0, 0.0]], "lr": {"step": [0], "value": [0.01]},
        "telemetry": None, "extra": {"closure_evals": steps[-1]},
    }


def test_a_v1_record_is_migrated_with_settled_steps() -> None:
    # oscillating: first at or below 1e-6 at step 10, above again at 20, settled from 30
    old = v1_record([1.0, 1e-7, 1e-3, 5e-7, 1e-8])
    original = copy.deepcopy(old)
    r = RunRecord.from_dict(old)
    assert old == original  # the stored dict is not modified
    assert r.schema == SCHEMA_VERSION
    assert r.first_crossing == 10
    assert r.steps_to_target == 30 and r.target_resolution == 10 and r.reached
    # the evaluation clock at step 30, 0.1 * 30 in float64 (exact to ~1e-16; approx's 1e-6)
    assert r.time_to_target == pytest.approx(3.0)
    assert r.evals["grad_evals"] == [0, 10, 20, 30, 40]  # one closure per step
    assert r.grad_evals_to_target == 30
    assert r.examples_to_target == 30  # 2-D: one "example" per step (n_train = 1)
    assert r.scalars == {"closure_evals": 40}
    assert r.series == {} and r.warmup_seconds == 0.0 and r.seconds_per_step is None
    assert r.key == "0123456789abcdef0123"  # the old key: new studies never pick it up
    assert r.config.clip_norm is None and r.config.lr_scaling == "none"
    assert r.to_dict()["schema"] == SCHEMA_VERSION
    assert migrate(old)["first_crossing"] == 10


def test_a_v1_record_ending_above_target_is_not_reached() -> None:
    r = RunRecord.from_dict(v1_record([1.0, 1e-7, 1e-3]))
    assert r.first_crossing == 10 and r.steps_to_target is None and not r.reached
    d = RunRecord.from_dict(v1_record([1.0, 1e-7, 1e-8], status="diverged"))
    assert d.first_crossing == 10 and not d.reached


def test_v1_examples_and_gradient_evaluations_are_derived() -> None:
    old = v1_record([1.0, 1e-7, 1e-8])
    old["task_info"]["n_train"] = 100
    old["extra"]["closure_evals"] = 40  # two closures per step (e.g. SAM)
    r = RunRecord.from_dict(old)
    assert r.evals["grad_evals"] == [0, 20, 40]
    assert r.evals["examples"] == [0, 80, 160]  # batches of 8
    assert r.grad_evals_to_target == 20 and r.examples_to_target == 80


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("path,value,field", [
    (("steps_done",), "many", "steps_done"),
    (("status",), "exploded", "status"),
    (("task_info", "target"), "low", "task_info.target"),
    (("reached",), 1, "reached"),
    (("evals", "grad_evals"), None, "evals.grad_evals"),
    (("evals", "metrics", "train_loss"), [1.0], "evals.metrics.train_loss"),
    (("config", "stepz"), 3, "config"),
    (("series",), [], "series"),
])
def test_a_malformed_record_names_the_field(record: RunRecord, path: tuple[str, ...],
                                            value: Any, field: str) -> None:
    d = record.to_dict()
    target = d
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = value
    with pytest.raises(SchemaError, match=field.replace(".", r"\W+")):
        RunRecord.from_dict(d)


def test_a_missing_field_and_a_newer_schema_are_refused(record: RunRecord) -> None:
    d = record.to_dict()
    del d["steps_done"]
    with pytest.raises(SchemaError, match="steps_done"):
        RunRecord.from_dict(d)
    newer = {**record.to_dict(), "schema": SCHEMA_VERSION + 1}
    with pytest.raises(SchemaError, match="newer"):
        RunRecord.from_dict(newer)
    with pytest.raises(SchemaError):
        RunRecord.from_dict([1, 2])  # type: ignore[arg-type]
    assert issubclass(SchemaError, ValueError)
