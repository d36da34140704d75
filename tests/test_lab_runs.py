"""Runs: records, determinism, divergence, budgets, lab optimizer names."""

from __future__ import annotations

import itertools
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
from optimlab.lab.runs import (
    EVALS_PER_RUN,
    MAX_EVALS_KEPT,
    MAX_FINE_EVALS,
    SCHEDULES,
    SERIES,
    EvalGrid,
    RunConfig,
    execute,
    make_schedule,
)


def test_a_record_has_every_field_and_is_json() -> None:
    r = execute(RunConfig("quadratic", "momentum", {"lr": 0.01}, batch_size="full", steps=300),
                threads=1)
    json.loads(json.dumps(r.to_dict(), allow_nan=False))
    assert r.status == "ok" and r.error is None
    assert r.steps_done == 300
    assert r.evals["step"][0] == 0 and r.evals["step"][-1] == 300
    # float64 heavy ball on a 2-D quadratic (cond 100) converges linearly: the suboptimality is
    # an optimization error (measured 5e-14, 2e7x below the bound), rounding adds ~1e-32; the
    # run settles below the target 1e-6 at step 136 (2.2x inside 300).
    assert r.final["suboptimality"] < 1e-6
    assert r.steps_to_target is not None and 0 < r.steps_to_target <= 300
    assert r.time_to_target <= r.train_seconds
    # one float64 momentum buffer (16 bytes) and a 0-dim step counter
    assert r.n_params == 2 and 16 <= r.state_bytes <= 24
    assert len(r.trajectory) == 301
    assert r.config.hyperparams["momentum"] == 0.9  # the lab's "momentum" preset
    assert r.lr["value"][0] == pytest.approx(0.01)  # the configured float, recorded as is
    assert r.scalars["closure_evals"] == 300
    assert r.key == RunConfig.from_dict(r.config.to_dict()).key()


def test_trajectory_starts_at_the_start_point_and_follows_the_steps() -> None:
    r = execute(RunConfig("rosenbrock", "sgd", {"lr": 1e-3}, steps=50), threads=1)
    from optimlab.lab.tasks import make_task
    start = list(make_task("rosenbrock").start)
    # The trajectory records the float64 parameter itself (measured equal); approx's 1e-6
    # relative only spares the comparison a float32 -> float64 round trip, were there one.
    assert r.trajectory[0] == pytest.approx(start)
    assert len(r.trajectory) == 51
    assert r.trajectory[-1] == pytest.approx([r.final["x"], r.final["y"]])


def test_runs_are_deterministic_for_a_seed_on_cpu() -> None:
    cfg = RunConfig("logreg-breast-cancer", "adam", {"lr": 0.01}, batch_size=16, steps=60,
                    seed=3)
    a, b = execute(cfg, threads=1), execute(cfg, threads=1)
    assert stable(a) == stable(b)
    c = execute(RunConfig.from_dict({**cfg.to_dict(), "seed": 4}), threads=1)
    assert c.curve["train_loss"] != a.curve["train_loss"]


def test_a_diverging_run_is_recorded_as_diverged() -> None:
    r = execute(RunConfig("quadratic", "sgd", {"lr": 1.0}, batch_size="full", steps=200),
                threads=1)
    assert r.status == "diverged"
    assert "training loss" in r.error
    assert r.steps_done < 200
    json.loads(json.dumps(r.to_dict(), allow_nan=False))  # strict JSON: NaN/inf -> null


def test_a_nonfinite_gradient_refused_by_the_optimizer_is_divergence() -> None:
    # Exponential growth on least squares: sgd with a huge lr overflows float32 quickly.
    r = execute(RunConfig("least-squares-diabetes", "sgd", {"lr": 1e4},
                          task_options={"dtype": "float32"}, batch_size="full", steps=500),
                threads=1)
    assert r.status == "diverged"


def test_a_seconds_budget_stops_the_run() -> None:
    r = execute(RunConfig("rosenbrock", "adam", {"lr": 0.01}, steps=10**7, seconds=0.2),
                threads=1)
    assert r.status == "ok"
    assert 0 < r.steps_done < 10**7
    assert r.train_seconds < 2.0


@pytest.mark.parametrize("batch_size,expected", [("full", 1), (1, None), (64, None)])
def test_batch_size_full_one_and_k(batch_size, expected) -> None:
    r = execute(RunConfig("logreg-breast-cancer", "sgd", {"lr": 0.1}, batch_size=batch_size,
                          steps=20), threads=1)
    assert r.config.batch_size == batch_size
    assert r.status == "ok"


def test_full_batch_loss_is_the_training_objective() -> None:
    r = execute(RunConfig("logreg-breast-cancer", "sgd", {"lr": 0.1}, batch_size="full",
                          steps=1, eval_every=1), threads=1)
    # the loss of step 1 is computed at the initial point: the evaluation at step 0 (the same
    # float64 mean over the training set; even summed in another order it would differ by
    # ~1e-14 relative; measured equal)
    assert r.curve["train_loss"][0] == pytest.approx(r.evals["metrics"]["train_loss"][0],
                                                        rel=1e-6)


def test_schedules_are_applied_and_recorded() -> None:
    r = execute(RunConfig("quadratic", "sgd", {"lr": 0.01}, schedule="cosine", steps=100),
                threads=1)
    values = r.lr["value"]
    # Python-float schedules, recorded as computed: equal (approx: 1e-6 relative)
    assert values[0] == pytest.approx(0.01)
    assert values[-1] < 1e-4  # 0.01 (1 + cos(pi 99 / 100)) / 2 = 2.5e-6, exact arithmetic
    sched = make_schedule("cosine", 0.01, 100)
    for step, value in zip(r.lr["step"], values):
        assert value == pytest.approx(sched(step))
    for name in SCHEDULES:
        s = make_schedule(name, 0.1, 50)
        assert 0 <= s(49) <= 0.1 + 1e-12  # 1e-12: room for float64 rounding of values <= 0.1


def test_telemetry_is_recorded_when_asked() -> None:
    r = execute(RunConfig("mnist1d-cnn", "adam", steps=3, telemetry=True, batch_size=8),
                threads=1)
    assert r.status == "ok"
    assert isinstance(r.telemetry, dict) and r.telemetry
    json.dumps(r.telemetry)


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
    assert r.status == "ok"
    # float64 heavy ball on a 2-D quadratic is a linear, contracting iteration: a rounding
    # difference (1.1e-16 of |x|) decays with the iterate itself, after a transient growth of
    # ~1 / (1 - 0.9) = 10, so 200 steps stay below ~200 * 10 * 1.1e-16 = 2e-13 relative
    # (measured equal); 1e-9 is 5000x that.
    assert r.final["x"] == pytest.approx(ours.final["x"], rel=1e-9, abs=1e-300)
    with pytest.raises(UnknownOptimizerError, match=r"not a torch\.optim\.Optimizer"):
        resolve_hyperparams("math:sqrt")


def test_closure_driven_optimizer_runs_unchanged() -> None:
    r = execute(RunConfig("logreg-breast-cancer", "torch.optim:LBFGS", {"lr": 1.0},
                          batch_size="full", steps=5), threads=1)
    assert r.status == "ok"
    assert r.scalars["closure_evals"] > 5  # L-BFGS evaluates several times per step
    assert r.final["suboptimality"] < 1e-3  # measured 1.5e-10: an optimization error


def test_on_eval_sees_every_evaluation_and_can_prune() -> None:
    from optimlab.lab.runs import RunPruned
    seen = []
    r = execute(RunConfig("quadratic", "sgd", {"lr": 1e-3}, steps=100, eval_every=10),
                threads=1, on_eval=lambda step, m: seen.append((step, m["train_loss"])))
    assert [s for s, _ in seen] == list(range(10, 101, 10))
    assert seen[-1][1] == r.final["train_loss"]

    def prune(step: int, metrics: dict) -> None:
        if step >= 30:
            raise RunPruned("hopeless")

    p = execute(RunConfig("quadratic", "sgd", {"lr": 1e-3}, steps=100, eval_every=10),
                threads=1, on_eval=prune)
    assert p.status == "pruned" and p.steps_done == 30
    assert "hopeless" in p.error


# ----------------------------------------------------------------------------- time to target


def test_settled_not_first_crossing_on_an_oscillating_arm() -> None:
    # Nesterov (lr 0.005, momentum 0.9) on the float64 quadratic (kappa 100) oscillates: the
    # suboptimality dips to 2.5e-7 at step 50, climbs back to 1.7e-3, and stays below the
    # target 1e-6 only from step 136 (step 135: 1.016e-6, step 136: 0.980e-6). Those margins
    # (1.6% and 2%) are ~1e12 times the float64 rounding of 136 steps of a contracting linear
    # iteration, so the steps are exact; 2-D tasks are evaluated at every step (resolution 1).
    r = execute(RunConfig("quadratic", "nesterov", {"lr": 0.005}, batch_size="full"),
                threads=1)
    assert r.status == "ok" and r.reached
    assert r.first_crossing == 50
    assert r.steps_to_target == 136
    assert r.target_resolution == 1
    assert r.grad_evals_to_target == 136 and r.examples_to_target == 136  # 1 per step
    assert r.task_info.deterministic  # noise-free 2-D task: the seed changes nothing
    # 2001 evaluations are thinned in the record, keeping those that fix the answer
    assert len(r.evals["step"]) <= MAX_EVALS_KEPT + 4
    assert {49, 50, 135, 136, 2000} <= set(r.evals["step"])
    assert 0 < r.time_to_target <= r.train_seconds


def test_a_run_ending_above_its_target_is_never_reached() -> None:
    # RMSprop with a constant lr does not converge on the quadratic: it crosses the target
    # (first at step 454) and ends 2300x above it (measured 2.3e-3 vs 1e-6; float64, exact).
    r = execute(RunConfig("quadratic", "rmsprop", {"lr": 0.01}, batch_size="full"), threads=1)
    assert r.first_crossing is not None
    assert r.final["suboptimality"] > r.task_info.target
    assert not r.reached
    assert r.steps_to_target is None and r.time_to_target is None
    assert r.grad_evals_to_target is None and r.examples_to_target is None


def test_the_default_grid_refines_near_the_target() -> None:
    grid = EvalGrid(1000, "neural", target=0.02)
    assert grid.coarse == 1000 // EVALS_PER_RUN and grid.fine == max(1, grid.coarse // 10)
    steps = [0]
    while steps[-1] < 1000:  # a loss decaying by 0.5% per step from 2.0: crosses at step 919
        nxt = grid.next_after(steps[-1], 2.0 * 0.995 ** steps[-1])
        steps.append(nxt)
    gaps = {b - a for a, b in itertools.pairwise(steps[:-1])}
    assert gaps == {grid.coarse, grid.fine}  # coarse far from the target, fine near it
    assert 0 < steps[-1] - steps[-2] <= grid.coarse  # the last step, whatever the grid
    crossing = next(s for s in steps if 2.0 * 0.995 ** s <= 0.02)
    before = steps[steps.index(crossing) - 1]
    assert crossing - before == grid.fine  # the crossing is resolved by the fine grid
    assert steps[-1] == 1000
    # fixed intervals and 2-D tasks
    assert EvalGrid(100, "neural", 0.1, eval_every=7).next_after(14, 1.0) == 21
    assert EvalGrid(100, "2d", 1e-6).next_after(14, 1.0) == 15


def test_the_fine_grid_has_a_budget() -> None:
    grid = EvalGrid(100_000, "neural", target=1.0)
    step, fine, i = 0, 0, 0
    while step < 100_000:  # a value swinging about the target at each evaluation: "near"
        nxt = grid.next_after(step, 1.5 if i % 2 else 0.5)
        fine += nxt - step == grid.fine
        step, i = nxt, i + 1
    assert fine == MAX_FINE_EVALS


# ----------------------------------------------------------------------------- divergence


def test_sustained_growth_is_divergence_before_a_1000x_blow_up() -> None:
    # SGD with lr 0.0205 > 2 / L (L = 100) on the quadratic: the stiff component grows by
    # |1 - 2.05| = 1.05 per step, the loss by 1.1025: 10x the initial loss after ~24 steps, 1000x
    # after ~71. The rule (10x for max(5, 2000 // 100) = 20 consecutive steps) stops it at
    # ~44, well before the 1000x rule would.
    r = execute(RunConfig("quadratic", "sgd", {"lr": 0.0205}, batch_size="full"), threads=1)
    assert r.status == "diverged"
    assert "consecutive steps" in r.error
    assert 30 < r.steps_done < 60
    assert not r.reached


# ----------------------------------------------------------------------------- vocabulary


def _initial_gradient(task_name: str) -> torch.Tensor:
    from optimlab.lab.tasks import make_task
    task = make_task(task_name)
    task.setup(0)
    task.full_loss().backward()
    return task.parameters()[0].grad.clone()


def test_clip_norm_clips_the_global_gradient_norm() -> None:
    g = _initial_gradient("quadratic")
    lr, clip = 0.01, 0.1
    assert float(g.norm()) > 10 * clip  # the clip is active at the first step
    r = execute(RunConfig("quadratic", "sgd", {"lr": lr}, batch_size="full", steps=5,
                          clip_norm=clip), threads=1)
    # plain SGD moves by lr * the clipped gradient, of norm clip * |g| / (|g| + 1e-6) (torch's
    # clip_grad_norm_ adds 1e-6 to the norm it divides by: 7e-8 relative here). Float64
    # rescaling errs by ~1e-16; 1e-12 leaves room for the norm's summation order.
    gn = float(g.norm())
    assert r.series["update_norm"]["value"][0] == pytest.approx(lr * clip * gn / (gn + 1e-6),
                                                                rel=1e-12)
    assert r.series["grad_norm"]["value"][0] == pytest.approx(float(g.norm()), rel=1e-12)
    assert r.series["effective_lr"]["value"][0] == pytest.approx(lr * clip / (gn + 1e-6),
                                                                 rel=1e-12)
    unclipped = RunConfig("quadratic", "sgd", {"lr": lr}, batch_size="full", steps=5)
    assert RunConfig.from_dict(r.config.to_dict()).key() != unclipped.resolved().key()


def test_clip_value_clips_each_gradient_element() -> None:
    g = _initial_gradient("quadratic")
    lr, clip = 0.01, 1.0
    assert float(g.abs().max()) > clip
    r = execute(RunConfig("quadratic", "sgd", {"lr": lr}, batch_size="full", steps=1,
                          clip_value=clip), threads=1)
    start = torch.tensor(r.trajectory[0], dtype=torch.float64)
    expected = start - lr * g.clamp(-clip, clip)
    # one float64 SGD step from the same start and clipped gradient: equal up to rounding
    assert r.trajectory[1] == pytest.approx(expected.tolist(), rel=1e-14)


@pytest.mark.parametrize("rule,factor", [("none", 1.0), ("linear", 2.0),
                                         ("sqrt", math.sqrt(2.0))])
def test_lr_scaling_with_batch_size(rule: str, factor: float) -> None:
    r = execute(RunConfig("logreg-breast-cancer", "sgd", {"lr": 0.1}, batch_size=64, steps=3,
                          lr_scaling=rule, base_batch_size=32), threads=1)
    assert r.status == "ok"
    # the lr used is 0.1 * (64 / 32) ** p (Python floats; approx for the power's rounding)
    assert r.lr["value"][0] == pytest.approx(0.1 * factor, rel=1e-12)
    assert r.config.hyperparams["lr"] == 0.1  # the config keeps the lr it was given


def test_lr_scaling_with_the_full_batch_uses_the_training_set_size() -> None:
    r = execute(RunConfig("logreg-breast-cancer", "sgd", {"lr": 0.01}, batch_size="full",
                          steps=2, lr_scaling="linear", base_batch_size=31), threads=1)
    assert r.lr["value"][0] == pytest.approx(0.01 * r.task_info.n_train / 31, rel=1e-12)
    assert r.scalars["lr_scale"] == pytest.approx(r.task_info.n_train / 31, rel=1e-12)


def test_budgets_in_examples_and_epochs_become_steps() -> None:
    # logreg-breast-cancer trains on round(0.6 * 569) = 341 examples; batches of 32 make
    # epochs of 10 batches of 32 and one of 21.
    e = execute(RunConfig("logreg-breast-cancer", "sgd", {"lr": 0.1}, batch_size=32,
                          epochs=2), threads=1)
    n = e.task_info.n_train
    assert n == 341
    assert e.config.steps == e.steps_done == math.ceil(2 * n / 32) == 22
    assert e.examples == 2 * n  # exactly two passes
    assert e.evals["examples"][-1] == e.examples
    assert e.key == RunConfig("logreg-breast-cancer", "sgd", {"lr": 0.1}, batch_size=32,
                              epochs=2).resolved().key()
    x = execute(RunConfig("logreg-breast-cancer", "sgd", {"lr": 0.1}, batch_size=32,
                          examples=1000), threads=1)
    assert x.steps_done == math.ceil(1000 / 32) == 32
    assert x.examples == 2 * n + 10 * 32  # two epochs (22 batches), then 10 full batches
    with pytest.raises(ValueError, match="at most one"):
        RunConfig("quadratic", "sgd", examples=10, epochs=1.0)


def test_series_are_recorded_at_evaluation_steps() -> None:
    r = execute(RunConfig("logreg-breast-cancer", "adam", {"lr": 0.01}, batch_size=32,
                          steps=200, eval_every=20), threads=1)
    assert set(r.series) == set(SERIES)
    for name, s in r.series.items():
        assert s["step"] == r.evals["step"][1:], name
        assert all(math.isfinite(v) and v > 0 for v in s["value"]), name
    assert r.evals["grad_evals"] == r.evals["step"]  # Adam: one closure per step
    assert r.warmup_seconds > 0 and r.seconds_per_step > 0


def test_gradient_evaluations_to_target_count_every_closure() -> None:
    r = execute(RunConfig("logreg-breast-cancer", "torch.optim:LBFGS", {"lr": 1.0},
                          batch_size="full", steps=10, eval_every=1), threads=1)
    assert r.reached
    assert r.grad_evals_to_target > r.steps_to_target  # several closures per L-BFGS step
    assert r.grad_evals == r.scalars["closure_evals"] == r.evals["grad_evals"][-1]


def test_escape_step_on_the_saddle() -> None:
    r = execute(RunConfig("saddle", "sgd", {"lr": 0.01}, batch_size="full"), threads=1)
    k = int(r.scalars["escape_step"])
    # the task's definition (start y = 1e-3): escaped once |y| > max(10 * 1e-3, 0.01)
    ys = [abs(p[1]) for p in r.trajectory]  # one point per step (1000 steps <= 2000)
    assert ys[k] > 0.01 >= max(ys[:k])
    q = execute(RunConfig("quadratic", "sgd", {"lr": 0.01}, batch_size="full", steps=10),
                threads=1)
    assert "escape_step" not in q.scalars  # no saddle, no escape


def test_determinism_flag() -> None:
    full = execute(RunConfig("quadratic", "sgd", {"lr": 0.01}, batch_size="full", steps=2),
                   threads=1)
    noisy = execute(RunConfig("quadratic", "sgd", {"lr": 0.01}, batch_size="full", steps=2,
                              task_options={"noise": 0.1}), threads=1)
    convex = execute(RunConfig("logreg-breast-cancer", "sgd", {"lr": 0.01},
                               batch_size="full", steps=2), threads=1)
    assert full.task_info.deterministic and full.deterministic
    assert not noisy.task_info.deterministic
    assert not convex.task_info.deterministic  # the seed draws the split and the init
