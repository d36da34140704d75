"""Population runs (optimlab.lab.population): per-member records equal the sequential runs'."""

from __future__ import annotations

import math
from typing import Any

import pytest

from optimlab.chain import ChainOptimizer
from optimlab.lab.optimizers import LAB_OPTIMIZERS
from optimlab.lab.population import batchable, execute_population, group_key
from optimlab.lab.runs import EVALS_PER_RUN, RunConfig, execute

#: Relative tolerance on every measured value (losses, metrics, series, trajectories).
#: Why rounding at all: a member's loss and gradients are computed by vmapped (batched) matrix
#: products and reductions, which may sum in another order than the sequential run's unbatched
#: ones: each sum of n fp32 terms then differs by at most about log2(n) * 2^-24 relative
#: (n <= 1078 here: ~7e-7); measured on CPU (torch 2.13), the mini-batch losses differ by
#: <= 3.3e-7 relative and the parameters, hence every evaluation, not at all over a full
#: mlp-digits budget (lr sweeps included). 1e-5 leaves a margin of 10x over the worst per-sum
#: bound for the gradient differences that a training run may amplify over its budget (the
#: issue's bound).
REL = 1e-5
#: Below this magnitude values are compared absolutely (suboptimality near 0 on 2-D tasks,
#: update norms of a converged run): REL of the scale the run started from (losses O(1)-O(10)).
ABS = 1e-9

#: Fields that measure wall-clock time or process memory, not the run.
CLOCK = {"wall_seconds", "train_seconds", "warmup_seconds", "seconds_per_step",
         "time_to_target", "peak_memory_bytes"}


def _close(a: Any, b: Any, where: str) -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {set(a) ^ set(b)}"
        for k in a:
            _close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            assert math.isnan(a) and math.isnan(b), f"{where}: {a} vs {b}"
        else:
            # A generalization gap and a loss noise (residuals of mini-batch losses about
            # their trend) are differences of O(1) losses, whose rounding (<= 3.1e-7
            # relative) they do not shrink: REL of the losses, absolutely.
            tol = REL if "generalization_gap" in where or "loss_noise" in where else ABS
            assert math.isclose(a, b, rel_tol=REL, abs_tol=tol), f"{where}: {a} vs {b}"
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def assert_same_record(seq: Any, pop: Any, size: int) -> None:
    """``pop`` (a population member's record) equals ``seq`` (the sequential run's) apart from
    clock fields, within :data:`REL`; ``steps_to_target`` within one evaluation interval."""
    a, b = seq.to_dict(), pop.to_dict()
    assert b["scalars"].pop("population_size") == size
    for d in (a, b):
        for name in CLOCK:
            d.pop(name)
        d["curve"].pop("time")
        d["evals"].pop("time")
        interval = max(1, d["config"]["steps"] // EVALS_PER_RUN)
        d.pop("steps_to_target")
    if seq.steps_to_target is None:
        assert pop.steps_to_target is None
    else:
        assert pop.steps_to_target is not None
        assert abs(seq.steps_to_target - pop.steps_to_target) <= interval
    _close(a, b, "record")


def _check(configs: list[RunConfig]) -> list[Any]:
    pop = execute_population(configs, threads=1)
    assert len(pop) == len(configs)
    for config, record in zip(configs, pop, strict=True):
        assert record.config.seed == config.seed
        assert_same_record(execute(config, threads=1), record, len(configs))
    return pop


def _configs(task: str, optimizer: str, seeds: range | list[int], **kw: Any) -> list[RunConfig]:
    return [RunConfig(task=task, optimizer=optimizer, seed=s, **kw) for s in seeds]


# Acceptance cases: SGD+momentum, Adam and AdamW with global-norm clipping (AdamW's clip is
# small enough to be active at every step; Adam's clips element values).
CASES = [("momentum", {}), ("adam", {"clip_value": 0.05}), ("adamw", {"clip_norm": 0.5})]


@pytest.mark.parametrize(("optimizer", "clip"), CASES)
def test_2d_members_equal_sequential_runs(optimizer: str, clip: dict[str, float]) -> None:
    # Gradient noise makes the seeds differ; every step is evaluated on 2-D tasks.
    pop = _check(_configs("saddle", optimizer, [0, 1, 2], steps=150,
                          task_options={"noise": 0.5}, **clip))
    assert len({tuple(r.trajectory[-1]) for r in pop}) == 3  # the members differ


@pytest.mark.parametrize(("optimizer", "clip"), CASES)
def test_mlp_digits_members_equal_sequential_runs(optimizer: str,
                                                  clip: dict[str, float]) -> None:
    pop = _check(_configs("mlp-digits", optimizer, [0, 1], steps=60, **clip))
    assert pop[0].final["train_loss"] != pop[1].final["train_loss"]


@pytest.mark.slow
@pytest.mark.parametrize(("optimizer", "clip"), CASES)
def test_full_budget_members_equal_sequential_runs(optimizer: str,
                                                   clip: dict[str, float]) -> None:
    # The tasks' full budgets: saddle 1000 steps, mlp-digits 1000 steps.
    _check(_configs("saddle", optimizer, [0, 1], task_options={"noise": 0.5}, **clip))
    pop = _check(_configs("mlp-digits", optimizer, [0, 1, 2], **clip))
    assert all(r.status == "ok" for r in pop)


@pytest.mark.parametrize("task", ["logreg-breast-cancer", "softmax-digits",
                                  "least-squares-diabetes"])
def test_convex_members_equal_sequential_runs(task: str) -> None:
    # the linear models' written-out gradients (float64), momentum, Nesterov and Adam with
    # clipping
    _check(_configs(task, "momentum", [0, 1], steps=150))
    _check(_configs(task, "nesterov", [0, 1], steps=40))
    pop = _check(_configs(task, "adam", [0, 1, 2], steps=150, clip_norm=0.5))
    assert len({r.final["train_loss"] for r in pop}) == 3


def test_diverging_member_is_recorded_and_the_others_go_on() -> None:
    # lr 2e-3 with gradient noise 10 on Rosenbrock: seed 4 diverges at step 7, 3 and 5 do not.
    configs = _configs("rosenbrock", "sgd", [3, 4, 5], steps=200, hyperparams={"lr": 2e-3},
                       task_options={"noise": 10.0})
    pop = _check(configs)
    assert [r.status for r in pop] == ["ok", "diverged", "ok"]
    assert pop[1].steps_done < 200 and pop[0].steps_done == pop[2].steps_done == 200


@pytest.mark.parametrize(("policy", "error"), [
    ("raise", "NonFiniteGradientError at step 2"), ("ignore", "training loss nan at step 2")])
def test_non_finite_gradient_stops_members_like_sequential_runs(policy: str,
                                                                error: str) -> None:
    # lr 1e30: the first step sends the weights to inf, the second step's gradient is NaN.
    # "raise": the sequential run's optimizer refuses it (NonFiniteGradientError), the
    # population's member stops with the same error while the population's optimizer does not
    # raise. "ignore": NaN flows into the member's slice and its loss diverges, as alone.
    configs = _configs("mlp-digits", "sgd", [0, 1], steps=20, eval_every=10,
                       hyperparams={"lr": 1e30, "nonfinite": policy})
    pop = _check(configs)
    assert all(r.status == "diverged" and r.error.startswith(error) for r in pop)


@pytest.mark.slow
def test_fused_optimizer_members_equal_sequential_runs() -> None:
    # fused=True (the compiled step) over the stacked tensors, in two param groups (two
    # learning rates, members reordered): a compile per side and group (~5 s each).
    _check(_sweep("mlp-digits", "adamw", [{"lr": 1e-3, "fused": True},
                                          {"lr": 3e-3, "fused": True}], [0, 1],
                  steps=30, clip_norm=0.5)[:3])


def test_group_key_ignores_the_seed_and_hyperparameter_values() -> None:
    a = RunConfig(task="mlp-digits", optimizer="adam", seed=0)
    for same in (RunConfig(task="mlp-digits", optimizer="adam", seed=7),
                 RunConfig(task="mlp-digits", optimizer="adam", hyperparams={"lr": 0.1}),
                 RunConfig(task="mlp-digits", optimizer="adam", seed=3,
                           hyperparams={"betas": [0.8, 0.9], "weight_decay": 0.1,
                                        "eps": 1e-6})):
        assert group_key(a) == group_key(same)
    clipped = RunConfig(task="mlp-digits", optimizer="adam", clip_norm=1.0)
    assert group_key(clipped) == group_key(RunConfig(task="mlp-digits", optimizer="adam",
                                                     clip_norm=0.1, seed=2))
    for other in (clipped,
                  RunConfig(task="mlp-digits", optimizer="adam", clip_value=1.0),
                  RunConfig(task="mlp-digits", optimizer="adam", hyperparams={"amsgrad": True}),
                  RunConfig(task="mlp-digits", optimizer="adamw"),
                  RunConfig(task="mlp-digits", optimizer="adam", batch_size=64),
                  RunConfig(task="mlp-digits", optimizer="adam", schedule="cosine"),
                  RunConfig(task="mlp-digits", optimizer="adam", steps=10),
                  RunConfig(task="mlp-digits", optimizer="adam", task_options={"width": 8})):
        assert group_key(a) != group_key(other)
    nesterov = RunConfig(task="mlp-digits", optimizer="sgd",
                         hyperparams={"momentum": 0.9, "nesterov": True})
    assert group_key(nesterov) != group_key(RunConfig(task="mlp-digits", optimizer="sgd",
                                                      hyperparams={"momentum": 0.9}))


def _sweep(task: str, optimizer: str, values: list[dict[str, Any]], seeds: list[int],
           **kw: Any) -> list[RunConfig]:
    """Every (hyperparameters, seed), interleaved so that equal hyperparameters are not
    contiguous: the population must order its members itself."""
    return [RunConfig(task=task, optimizer=optimizer, seed=s, hyperparams=v, **kw)
            for s in seeds for v in values]


@pytest.mark.parametrize(("optimizer", "values", "clip"), [
    ("momentum", [{"lr": 0.01}, {"lr": 0.05, "momentum": 0.8}, {"lr": 0.1}], {}),
    ("adam", [{"lr": 1e-3}, {"lr": 3e-3, "betas": [0.8, 0.99]},
              {"lr": 1e-2, "weight_decay": 1e-3}], {"clip_value": 0.05}),
])
def test_a_hyperparameter_sweep_as_one_population_equals_the_runs_alone(
        optimizer: str, values: list[dict[str, Any]], clip: dict[str, float]) -> None:
    configs = _sweep("mlp-digits", optimizer, values, [0, 1], steps=60, **clip)
    assert len({group_key(c) for c in configs}) == 1
    pop = _check(configs)
    assert len({r.final["train_loss"] for r in pop}) == len(configs)  # all members differ


def test_per_member_clipping_thresholds_and_schedules() -> None:
    # AdamW with global-norm clipping at a different threshold per member (both active at
    # most steps on this noisy saddle) and a cosine schedule per learning rate.
    configs = [RunConfig(task="saddle", optimizer="adamw", seed=s, steps=150,
                         task_options={"noise": 0.5}, schedule="cosine",
                         hyperparams={"lr": lr}, clip_norm=c)
               for s, lr, c in [(0, 0.05, 0.5), (1, 0.05, 0.2), (0, 0.1, 0.2), (2, 0.1, 1.0)]]
    pop = _check(configs)
    assert [r.lr["value"][0] for r in pop] == [0.05, 0.05, 0.1, 0.1]
    assert pop[2].lr["value"][-1] < 0.01  # annealed
    # Element values clipped at a different bound per member (small enough to bind).
    _check([RunConfig(task="saddle", optimizer="momentum", seed=s, steps=100,
                      task_options={"noise": 0.5}, clip_value=v)
            for s, v in [(0, 0.05), (1, 0.2), (2, 0.05), (0, 1.0)]])


def test_finished_members_leave_the_stack_and_the_others_go_on_exactly() -> None:
    # momentum at lr 1.0: seed 3 diverges at step 19 (alone too); the stack is then compacted
    # (its rows, the momentum buffers of its group, the cosine schedule continued), and every
    # other member's record still equals its run alone.
    configs = _sweep("mlp-digits", "momentum", [{"lr": 0.2}, {"lr": 1.0}], [0, 1, 2, 3],
                     steps=40, eval_every=10, schedule="cosine")
    pop = _check(configs)
    assert [(r.config.seed, r.status) for r in pop if r.status != "ok"] == [(3, "diverged")]
    assert pop[-1].steps_done == 19


@pytest.mark.slow
def test_full_budget_lr_sweep_equals_the_runs_alone() -> None:
    # An lr sweep of Adam on mlp-digits over the task's full budget (1000 steps).
    _check(_sweep("mlp-digits", "adam", [{"lr": 1e-3}, {"lr": 3e-3}], [0, 1], clip_norm=1.0))


#: The lab optimizers built from rules (the closure-driven second-order ones are not) whose
#: rules are all elementwise and that evaluate at their parameters: batchable.
RULE_OPTIMIZERS = [n for n, o in LAB_OPTIMIZERS.items() if issubclass(o.cls, ChainOptimizer)
                   and batchable(RunConfig(task="mlp-digits", optimizer=n)) is None]


def test_every_classic_and_elementwise_optimizer_is_batchable() -> None:
    assert {"sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw", "nadam",
            "radam", "adamax", "adadelta"} <= set(RULE_OPTIMIZERS)
    for name, o in LAB_OPTIMIZERS.items():
        if issubclass(o.cls, ChainOptimizer) and name not in RULE_OPTIMIZERS:
            # not batchable for a stated reason: a rule that reads whole tensors, or
            # parameters swapped for evaluation
            reason = batchable(RunConfig(task="mlp-digits", optimizer=name))
            assert reason is not None and any(w in reason for w in (
                "elementwise", "eval()", "8-bit")), (
                name, reason)


@pytest.mark.parametrize("name", RULE_OPTIMIZERS)
def test_named_optimizers_are_batchable_and_exact(name: str) -> None:
    _check(_configs("mlp-digits", name, [0, 1], steps=20, eval_every=10))


@pytest.mark.parametrize(("config", "words"), [
    (RunConfig(task="mlp-digits", optimizer="torch.optim:SGD", hyperparams={"lr": 0.1}),
     "not built from optimlab rules"),
    (RunConfig(task="mlp-digits", optimizer="torch.optim:LBFGS"), "not built from optimlab"),
    (RunConfig(task="mlp-digits", optimizer="adam", task_options={"dropout": 0.1}),
     "dropout"),
    (RunConfig(task="mlp-digits", optimizer="adam", task_options={"batchnorm": True}),
     "batch norm"),
    (RunConfig(task="mlp-digits", optimizer="adam", telemetry=True), "telemetry"),
    (RunConfig(task="mlp-digits", optimizer="adam", seconds=5.0), "wall-clock"),
    (RunConfig(task="gru-charlm", optimizer="adam"), "does not declare support"),
    (RunConfig(task="mlp-digits", optimizer="adam", hyperparams={"nonfinite": "skip"}),
     "nonfinite='skip'"),
])
def test_not_batchable_says_why(config: RunConfig, words: str) -> None:
    reason = batchable(config)
    assert reason is not None and words in reason


def test_population_refuses_mixed_groups_and_repeated_seeds() -> None:
    with pytest.raises(ValueError, match="differ only in seed"):
        execute_population([RunConfig(task="saddle", optimizer="adam", steps=3),
                            RunConfig(task="saddle", optimizer="sgd", steps=3, seed=1)])
    with pytest.raises(ValueError, match="distinct"):
        execute_population(_configs("saddle", "adam", [1, 1], steps=3))
    with pytest.raises(ValueError, match="not batchable"):  # checked for every lr
        execute_population([RunConfig(task="saddle", optimizer="adam", steps=3),
                            RunConfig(task="saddle", optimizer="adam", steps=3,
                                      hyperparams={"lr": -1.0})])
    with pytest.raises(ValueError, match="not batchable"):
        execute_population(_configs("mlp-digits", "adam", [0, 1], steps=3,
                                    task_options={"dropout": 0.5}))


def test_member_state_bytes_and_sizes_are_per_member() -> None:
    config = RunConfig(task="mlp-digits", optimizer="adam", steps=2)
    (one,) = execute_population([config])
    seq = execute(config)
    assert one.state_bytes == seq.state_bytes > 0
    assert one.n_params == seq.n_params and one.param_bytes == seq.param_bytes
    # Three members in two param groups (two learning rates): each its own share.
    configs = _sweep("mlp-digits", "adam", [{"lr": 1e-3}, {"lr": 1e-2}], [0, 1], steps=2)[:3]
    assert all(r.state_bytes == seq.state_bytes for r in execute_population(configs))
