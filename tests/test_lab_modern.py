"""The modern optimizers in the lab: every one trains a lab task by name, and the lab evaluates
Schedule-Free runs at the averaged weights."""

from __future__ import annotations

import math

import pytest

import optimlab as ol
from optimlab.lab.optimizers import LAB_OPTIMIZERS
from optimlab.lab.population import batchable
from optimlab.lab.runs import execute
from optimlab.lab.schema import RunConfig

#: The lab names of the optimizers added with the public rule API.
MODERN = [n for n, o in LAB_OPTIMIZERS.items()
          if o.cls.__module__.split(".")[-1] not in ("classic", "quasi_newton", "second_order")
          and n not in ("sam", "asam")]


def test_the_modern_optimizers_are_in_the_lab() -> None:
    assert {"schedule-free-adamw", "schedule-free-sgd"} <= set(MODERN)


@pytest.mark.parametrize("name", MODERN)
def test_each_trains_mlp_digits_by_name(name: str) -> None:
    record = execute(RunConfig(task="mlp-digits", optimizer=name, seed=0, batch_size=32,
                               steps=60))
    assert record.status == "ok", record.error
    first, last = record.evals["metrics"]["train_loss"][0], record.final["train_loss"]
    assert math.isfinite(last) and last < first, (first, last)


def test_schedule_free_runs_are_evaluated_at_the_averaged_weights(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    cls = ol.ScheduleFreeAdamW
    eval_, train_ = cls.eval, cls.train

    def spy_eval(self: ol.ScheduleFreeAdamW) -> None:
        calls.append("eval")
        eval_(self)

    def spy_train(self: ol.ScheduleFreeAdamW) -> None:
        calls.append("train")
        train_(self)

    monkeypatch.setattr(cls, "eval", spy_eval)
    monkeypatch.setattr(cls, "train", spy_train)
    record = execute(RunConfig(task="mlp-digits", optimizer="schedule-free-adamw", seed=0,
                               batch_size=32, steps=40))
    assert record.status == "ok", record.error
    n = len(record.evals["step"])
    # every evaluation between an eval() and a train(), and training resumed at y
    assert calls == ["eval", "train"] * n


def test_schedule_free_is_not_batched_into_populations() -> None:
    config = RunConfig(task="mlp-digits", optimizer="schedule-free-sgd", seed=0,
                       batch_size=32, steps=10).resolved()
    reason = batchable(config)
    assert reason is not None and "eval()/train()" in reason
