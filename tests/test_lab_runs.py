"""Runs: records, determinism, divergence, budgets, lab optimizer names."""

from __future__ import annotations

import json
import math

import pytest
import torch
from labutil import stable

from optimlab.lab.optimizers import (
    LAB_OPTIMIZERS,
    UnknownOptimizerError,
    build_optimizer,
    resolve_hyperparams,
)
from optimlab.lab.runs import SCHEDULES, RunConfig, execute, make_schedule


def test_a_record_has_every_field_and_is_json() -> None:
    r = execute(RunConfig("quadratic", "momentum", {"lr": 0.01}, batch_size="full", steps=300),
                threads=1)
    json.loads(json.dumps(r))
    assert r["status"] == "ok" and r["error"] is None
    assert r["steps_done"] == 300
    assert r["evals"]["step"][0] == 0 and r["evals"]["step"][-1] == 300
    # float64 heavy ball on a 2-D quadratic (cond 100) converges linearly: the suboptimality is
    # an optimization error (measured 5e-14, 2e7x below the bound), rounding adds ~1e-32; the
    # target 1e-6 is first reached at step 127 (2.4x inside 300).
    assert r["final"]["suboptimality"] < 1e-6
    assert r["steps_to_target"] is not None and 0 < r["steps_to_target"] <= 300
    assert r["time_to_target"] <= r["train_seconds"]
    # one float64 momentum buffer (16 bytes) and a 0-dim step counter
    assert r["n_params"] == 2 and 16 <= r["state_bytes"] <= 24
    assert len(r["trajectory"]) == 301
    assert r["config"]["hyperparams"]["momentum"] == 0.9  # the lab's "momentum" preset
    assert r["lr"]["value"][0] == pytest.approx(0.01)  # the configured float, recorded as is
    assert r["extra"]["closure_evals"] == 300
    assert r["key"] == RunConfig.from_dict(r["config"]).key()


def test_trajectory_starts_at_the_start_point_and_follows_the_steps() -> None:
    r = execute(RunConfig("rosenbrock", "sgd", {"lr": 1e-3}, steps=50), threads=1)
    from optimlab.lab.tasks import make_task
    start = list(make_task("rosenbrock").start)
    # The trajectory records the float64 parameter itself (measured equal); approx's 1e-6
    # relative only spares the comparison a float32 -> float64 round trip, were there one.
    assert r["trajectory"][0] == pytest.approx(start)
    assert len(r["trajectory"]) == 51
    assert r["trajectory"][-1] == pytest.approx([r["final"]["x"], r["final"]["y"]])


def test_runs_are_deterministic_for_a_seed_on_cpu() -> None:
    cfg = RunConfig("logreg-breast-cancer", "adam", {"lr": 0.01}, batch_size=16, steps=60,
                    seed=3)
    a, b = execute(cfg, threads=1), execute(cfg, threads=1)
    assert stable(a) == stable(b)
    c = execute(RunConfig(**{**cfg.to_dict(), "seed": 4}), threads=1)
    assert c["curve"]["train_loss"] != a["curve"]["train_loss"]


def test_a_diverging_run_is_recorded_as_diverged() -> None:
    r = execute(RunConfig("quadratic", "sgd", {"lr": 1.0}, batch_size="full", steps=200),
                threads=1)
    assert r["status"] == "diverged"
    assert "training loss" in r["error"]
    assert r["steps_done"] < 200
    json.loads(json.dumps(r))  # NaN/inf are written by Python's json; the store reads them


def test_a_nonfinite_gradient_refused_by_the_optimizer_is_divergence() -> None:
    # Exponential growth on least squares: sgd with a huge lr overflows float32 quickly.
    r = execute(RunConfig("least-squares-diabetes", "sgd", {"lr": 1e4},
                          task_options={"dtype": "float32"}, batch_size="full", steps=500),
                threads=1)
    assert r["status"] == "diverged"


def test_a_seconds_budget_stops_the_run() -> None:
    r = execute(RunConfig("rosenbrock", "adam", {"lr": 0.01}, steps=10**7, seconds=0.2),
                threads=1)
    assert r["status"] == "ok"
    assert 0 < r["steps_done"] < 10**7
    assert r["train_seconds"] < 2.0


@pytest.mark.parametrize("batch_size,expected", [("full", 1), (1, None), (64, None)])
def test_batch_size_full_one_and_k(batch_size, expected) -> None:
    r = execute(RunConfig("logreg-breast-cancer", "sgd", {"lr": 0.1}, batch_size=batch_size,
                          steps=20), threads=1)
    assert r["config"]["batch_size"] == batch_size
    assert r["status"] == "ok"


def test_full_batch_loss_is_the_training_objective() -> None:
    r = execute(RunConfig("logreg-breast-cancer", "sgd", {"lr": 0.1}, batch_size="full",
                          steps=1, eval_every=1), threads=1)
    # the loss of step 1 is computed at the initial point: the evaluation at step 0 (the same
    # float64 mean over the training set; even summed in another order it would differ by
    # ~1e-14 relative; measured equal)
    assert r["curve"]["train_loss"][0] == pytest.approx(r["evals"]["metrics"]["train_loss"][0],
                                                        rel=1e-6)


def test_schedules_are_applied_and_recorded() -> None:
    r = execute(RunConfig("quadratic", "sgd", {"lr": 0.01}, schedule="cosine", steps=100),
                threads=1)
    values = r["lr"]["value"]
    # Python-float schedules, recorded as computed: equal (approx: 1e-6 relative)
    assert values[0] == pytest.approx(0.01)
    assert values[-1] < 1e-4  # 0.01 (1 + cos(pi 99 / 100)) / 2 = 2.5e-6, exact arithmetic
    sched = make_schedule("cosine", 0.01, 100)
    for step, value in zip(r["lr"]["step"], values):
        assert value == pytest.approx(sched(step))
    for name in SCHEDULES:
        s = make_schedule(name, 0.1, 50)
        assert 0 <= s(49) <= 0.1 + 1e-12  # 1e-12: room for float64 rounding of values <= 0.1


def test_telemetry_is_recorded_when_asked() -> None:
    r = execute(RunConfig("mnist1d-cnn", "adam", steps=3, telemetry=True, batch_size=8),
                threads=1)
    assert r["status"] == "ok"
    assert isinstance(r["telemetry"], dict) and r["telemetry"]
    json.dumps(r["telemetry"])


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        RunConfig("quadratic", "sgd", batch_size=0)
    with pytest.raises(ValueError, match="schedule"):
        RunConfig("quadratic", "sgd", schedule="zigzag")
    with pytest.raises(ValueError, match="steps"):
        RunConfig("quadratic", "sgd", steps=-1)
    with pytest.raises(ValueError, match="seconds"):
        RunConfig("quadratic", "sgd", seconds=math.nan)
    with pytest.raises(ValueError, match="seed"):
        RunConfig("quadratic", "sgd", seed=-2)
    with pytest.raises(ValueError, match="no hyperparameter 'mommentum'"):
        RunConfig("quadratic", "sgd", {"mommentum": 0.9}).resolved()
    with pytest.raises(ValueError, match="unknown task"):
        RunConfig("quadratix", "sgd").resolved()


def test_lab_optimizers_resolve_and_build() -> None:
    p = torch.zeros(3, requires_grad=True)
    for name, lab in LAB_OPTIMIZERS.items():
        hp = resolve_hyperparams(name)
        assert "lr" in hp
        for k, v in lab.fixed.items():
            assert hp[k] == v
        opt = build_optimizer(name, [p])
        assert isinstance(opt, lab.cls)
        json.dumps(hp)
    assert resolve_hyperparams("adam", {"lr": 0.5})["lr"] == 0.5
    assert resolve_hyperparams("adam")["betas"] == [0.9, 0.999]
    with pytest.raises(UnknownOptimizerError, match="known optimizers"):
        resolve_hyperparams("adma")
    with pytest.raises(ValueError, match="lr"):
        build_optimizer("adam", [p], {"lr": -1.0})


def test_a_torch_optimizer_by_import_path() -> None:
    r = execute(RunConfig("quadratic", "torch.optim:SGD", {"lr": 0.01, "momentum": 0.9},
                          batch_size="full", steps=200), threads=1)
    ours = execute(RunConfig("quadratic", "momentum", {"lr": 0.01}, batch_size="full",
                             steps=200), threads=1)
    assert r["status"] == "ok"
    # float64 heavy ball on a 2-D quadratic is a linear, contracting iteration: a rounding
    # difference (1.1e-16 of |x|) decays with the iterate itself, after a transient growth of
    # ~1 / (1 - 0.9) = 10, so 200 steps stay below ~200 * 10 * 1.1e-16 = 2e-13 relative
    # (measured equal); 1e-9 is 5000x that.
    assert r["final"]["x"] == pytest.approx(ours["final"]["x"], rel=1e-9, abs=1e-300)
    with pytest.raises(UnknownOptimizerError, match=r"not a torch\.optim\.Optimizer"):
        resolve_hyperparams("math:sqrt")


def test_closure_driven_optimizer_runs_unchanged() -> None:
    r = execute(RunConfig("logreg-breast-cancer", "torch.optim:LBFGS", {"lr": 1.0},
                          batch_size="full", steps=5), threads=1)
    assert r["status"] == "ok"
    assert r["extra"]["closure_evals"] > 5  # L-BFGS evaluates several times per step
    assert r["final"]["suboptimality"] < 1e-3  # measured 1.5e-10: an optimization error


def test_on_eval_sees_every_evaluation_and_can_prune() -> None:
    from optimlab.lab.runs import RunPruned
    seen = []
    r = execute(RunConfig("quadratic", "sgd", {"lr": 1e-3}, steps=100, eval_every=10),
                threads=1, on_eval=lambda step, m: seen.append((step, m["train_loss"])))
    assert [s for s, _ in seen] == list(range(10, 101, 10))
    assert seen[-1][1] == r["final"]["train_loss"]

    def prune(step: int, metrics: dict) -> None:
        if step >= 30:
            raise RunPruned("hopeless")

    p = execute(RunConfig("quadratic", "sgd", {"lr": 1e-3}, steps=100, eval_every=10),
                threads=1, on_eval=prune)
    assert p["status"] == "pruned" and p["steps_done"] == 30
    assert "hopeless" in p["error"]
