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
          and n not in ("sam", "asam")] + ["adamw-8bit"]


def test_the_modern_optimizers_are_in_the_lab() -> None:
    assert {"schedule-free-adamw", "schedule-free-sgd", "lion", "rprop", "asgd", "adafactor",
            "muon", "sgdhd", "adamhd", "prodigy", "adamw-8bit"} <= set(MODERN)


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


def test_adamw_8bit_stores_its_states_in_8_bits() -> None:
    record = execute(RunConfig(task="mlp-digits", optimizer="adamw-8bit", seed=0,
                               batch_size=32, steps=20))
    fp32 = execute(RunConfig(task="mlp-digits", optimizer="adamw", seed=0, batch_size=32,
                             steps=20))
    assert record.status == "ok" and record.config.hyperparams["state_dtype"] == "uint8"
    # mlp-digits' two 64x64 weights (4096 elements each) are quantized, every smaller tensor
    # keeps fp32 states: fewer bytes than fp32 AdamW's, more than a quarter of them
    assert fp32.state_bytes / 4 < record.state_bytes < fp32.state_bytes


def test_muon_lab_optimizer_splits_matrices_from_the_rest() -> None:
    from torch import nn

    from optimlab.lab.optimizers import build_optimizer

    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                          nn.Linear(16, 3))
    opt = build_optimizer("muon", model.parameters())
    hidden = {id(p) for g in opt.muon.param_groups for p in g["params"]}
    assert hidden == {id(model[0].weight), id(model[2].weight)}  # the head goes to AdamW
    assert opt.muon.param_groups[0]["adjust_lr_fn"] == "match_rms_adamw"
