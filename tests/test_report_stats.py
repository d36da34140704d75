"""Rankings by work, intervals over seeds and ties in the report's statistics
(:mod:`optimlab.lab.report.stats`) and its text outputs (:mod:`optimlab.lab.report.text`).

Records are synthetic :class:`RunRecord` objects built by :func:`run` with exactly the
numbers a test needs (settled step, final metric, timing), so these tests run no optimizer.
"""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from optimlab.lab.report.stats import (
    aggregate,
    by_task,
    ranking,
    ranking_definition,
    work_to_target,
)
from optimlab.lab.report.text import markdown_summary, summary_table
from optimlab.lab.schema import RunConfig, RunRecord, TaskFacts
from optimlab.lab.statistics import compare

TARGET = 0.1


def run(arm: str, seed: int, settled: int | None, *, task: str = "quad",
        final: float | None = None, status: str = "ok", steps: int = 1000,
        every: int = 10, evals_per_step: int = 1, sec_per_step: float = 1e-3,
        deterministic: bool = False, first_crossing: int | None = None,
        task_options: dict[str, Any] | None = None, jitter: float = 0.0) -> RunRecord:
    """A run of ``arm`` that settles at ``settled`` (``None``: never) on a grid of ``every``
    steps; its final target metric is ``final`` (default: half the target when settled, twice
    it otherwise). ``jitter`` adds that relative noise to the per-step times of its curve."""
    grid = list(range(0, steps + 1, every))
    if final is None:
        final = TARGET / 2 if settled is not None else 2 * TARGET
    values = [final if settled is not None and s >= settled else 1.0 for s in grid]
    values[-1] = final
    rng = random.Random(seed * 7919 + len(arm))
    times, t = [], 0.0
    for i, s in enumerate(grid):
        if i:
            t += (s - grid[i - 1]) * sec_per_step * (1 + jitter * rng.uniform(-1, 1))
        times.append(t)
    at = grid.index(settled) if settled is not None else None
    config = RunConfig(task=task, optimizer=arm.split()[0], hyperparams={"lr": 0.1},
                       task_options=task_options or {}, batch_size="full", seed=seed,
                       steps=steps, eval_every=every)
    return RunRecord(
        key=f"{task}-{arm}-{seed}", config=config, status=status,
        error=None if status == "ok" else "boom",
        task_info=TaskFacts(name=task, kind="convex", description="synthetic", target=TARGET,
                            target_metric="train_loss", n_train=100,
                            deterministic=deterministic),
        curve={"step": grid, "time": times, "train_loss": values},
        evals={"step": grid, "time": times, "grad_evals": [s * evals_per_step for s in grid],
               "examples": [s * 100 for s in grid], "metrics": {"train_loss": values}},
        final={"train_loss": final if status == "ok" else math.nan},
        steps_to_target=settled if status == "ok" else None,
        target_resolution=(every if settled else 0) if settled is not None else None,
        first_crossing=first_crossing if first_crossing is not None else settled,
        grad_evals_to_target=None if settled is None else settled * evals_per_step,
        examples_to_target=None if settled is None else settled * 100,
        time_to_target=None if at is None else times[at],
        reached=settled is not None and status == "ok", generalization_gap=None,
        steps_done=steps, grad_evals=steps * evals_per_step, examples=steps * 100,
        train_seconds=times[-1], warmup_seconds=0.0, seconds_per_step=sec_per_step,
        wall_seconds=times[-1], peak_memory_bytes=None, memory_kind="", state_bytes=8,
        n_params=1, param_bytes=8, trajectory=None, lr={"step": [], "value": []}, series={},
        scalars={"closure_evals": steps * evals_per_step}, telemetry=None, label=arm)


def _study(order: int = 1) -> list[RunRecord]:
    """Two tasks: on "quad" sgd and momentum overlap (tied), nesterov is clearly faster, adam
    settles on one seed of three; on "ridge" nobody settles and adam diverges."""
    recs = []
    for seed, (sgd, mom, nes, adam) in enumerate([(400, 380, 120, 300), (450, 470, 130, None),
                                                  (520, 500, 110, None)]):
        recs += [run("sgd", seed, sgd), run("momentum", seed, mom), run("nesterov", seed, nes),
                 run("adam", seed, adam)]
        recs += [run("sgd", seed, None, task="ridge", final=0.5 + 0.01 * seed),
                 run("momentum", seed, None, task="ridge", final=0.3 + 0.01 * seed),
                 run("nesterov", seed, None, task="ridge", final=0.31 - 0.01 * seed),
                 run("adam", seed, None, task="ridge", status="diverged")]
    return recs[::order]


def _summary(stats: dict) -> dict[tuple[str, str], tuple[Any, ...]]:
    return {k: (s.rank, s.rank_time, s.is_best, s.tied_with_best,
                None if s.comparison_to_best is None else s.comparison_to_best.p_value)
            for k, s in stats.items()}


def test_ranking_by_work_with_ties() -> None:
    stats = aggregate(_study())
    quad = {a: s for (t, a), s in stats.items() if t == "quad"}
    assert quad["nesterov"].is_best and quad["nesterov"].rank == 1
    # sgd (400, 450, 520) and momentum (380, 470, 500) overlap: ranked, but both clearly
    # slower than nesterov, and tied with each other
    assert not quad["sgd"].tied_with_best and not quad["momentum"].tied_with_best
    assert quad["momentum"].rank == 2 and quad["sgd"].rank == 3
    sgd = {r.seed: work_to_target(r) for r in quad["sgd"].records}
    mom = {r.seed: work_to_target(r) for r in quad["momentum"].records}
    assert compare(mom, sgd).tied
    # adam settled on one seed of three: after every arm that settled on more than half,
    # its median work is not settled, its interval says so
    adam = quad["adam"]
    assert adam.rank == 4 and adam.n_reached == 1 and math.isinf(adam.work_to_target.center)
    assert adam.work_to_target.method == "order" and adam.work_to_target.n_censored == 2
    # the intervals over seeds: nesterov's mean 120 with a t interval
    nes = quad["nesterov"].work_to_target
    assert (nes.method, nes.center, nes.n) == ("t", 120.0, 3) and nes.low < 120 < nes.high
    # ridge: nobody settled; ranked by final target metric; momentum (0.30, 0.31, 0.32) and
    # nesterov (0.31, 0.30, 0.29) overlap and tie; the diverged adam comes last
    ridge = {a: s for (t, a), s in stats.items() if t == "ridge"}
    assert ridge["nesterov"].is_best and ridge["nesterov"].compared_on == "final"
    assert ridge["momentum"].tied_with_best and not ridge["sgd"].tied_with_best
    assert ridge["adam"].rank == 4 and not ridge["adam"].tied_with_best
    rows = {r.arm: r for r in ranking(stats)}
    assert ranking(stats)[0].arm == "nesterov"
    assert (rows["nesterov"].n_tied_first, rows["momentum"].n_tied_first) == (2, 1)
    assert rows["adam"].n_solved == 0 and rows["sgd"].n_solved == 1


def test_ranking_does_not_depend_on_record_order() -> None:
    forward = aggregate(_study())
    reverse = aggregate(_study(-1))
    assert _summary(forward) == _summary(reverse)
    shuffled = _study()
    random.Random(3).shuffle(shuffled)
    assert _summary(aggregate(shuffled)) == _summary(forward)
    assert [r.arm for r in ranking(reverse)] == [r.arm for r in ranking(forward)]
    assert [(r.mean_rank, r.n_tied_first) for r in ranking(reverse)] == [
        (r.mean_rank, r.n_tied_first) for r in ranking(forward)]


def test_stored_dicts_are_read_as_records() -> None:
    recs = _study()
    assert _summary(aggregate([r.to_dict() for r in recs])) == _summary(aggregate(recs))


def test_deterministic_arms_count_as_one_seed() -> None:
    # momentum 132 vs nesterov 136 steps on a deterministic task, evaluated every 4 steps
    recs = [run("momentum", s, 132, every=4, steps=400, deterministic=True) for s in range(3)]
    recs += [run("nesterov", s, 136, every=4, steps=400, deterministic=True) for s in range(3)]
    stats = aggregate(recs)
    mom, nes = stats[("quad", "momentum")], stats[("quad", "nesterov")]
    assert mom.deterministic and mom.n_seeds == 1 and mom.final["train_loss"].n == 1
    assert (mom.work_to_target.n, mom.work_to_target.method) == (1, "deterministic")
    # 4 steps apart on a 4-step grid: within the resolution, so tied
    assert mom.is_best and nes.tied_with_best
    assert nes.comparison_to_best is not None and nes.comparison_to_best.method == "exact"
    # 132 vs 96: an exact difference well beyond the grid: not tied
    recs = [run("momentum", 0, 132, every=4, steps=400, deterministic=True),
            run("nesterov", 0, 96, every=4, steps=400, deterministic=True)]
    stats = aggregate(recs)
    assert stats[("quad", "nesterov")].is_best
    assert not stats[("quad", "momentum")].tied_with_best
    # identical seeds without the flag are deterministic too; differing ones are not
    same = aggregate([run("sgd", s, 200) for s in range(3)])[("quad", "sgd")]
    assert same.deterministic and same.n_seeds == 1
    differ = aggregate([run("sgd", s, 200 + 10 * s) for s in range(3)])[("quad", "sgd")]
    assert not differ.deterministic and differ.n_seeds == 3


def test_an_arm_that_crosses_and_climbs_back_is_not_settled() -> None:
    # crossed the target at step 50, ended above it: never counted as reached
    osc = [run("nesterov", s, None, first_crossing=50, final=3 * TARGET) for s in range(3)]
    ok = [run("sgd", s, 400 + 10 * s) for s in range(3)]
    stats = aggregate(osc + ok)
    nes = stats[("quad", "nesterov")]
    assert nes.n_reached == 0 and math.isinf(nes.work_to_target.center)
    assert nes.first_crossing.center == 50 and nes.rank == 2
    text = summary_table(osc + ok)
    assert "not settled (0/3)" in text
    md = markdown_summary(stats, "t")
    assert "first crossing" in md and "| 50 |" in md


def test_work_counts_gradient_evaluations() -> None:
    # lbfgs settles in fewer steps but with 4 gradient evaluations per step
    recs = [run("lbfgs", s, 100 + 10 * s, evals_per_step=4) for s in range(3)]
    recs += [run("sgd", s, 300 + 10 * s) for s in range(3)]
    stats = aggregate(recs)
    lb = stats[("quad", "lbfgs")]
    assert lb.work_to_target.center == 440 and lb.steps_to_target.center == 110
    assert lb.work_resolution == 40  # a 10-step grid at 4 evaluations per step
    assert stats[("quad", "sgd")].is_best and lb.rank == 2
    assert "steps settled" in summary_table(recs)


def test_time_ranking_is_on_request_and_ties_within_timing_noise() -> None:
    # slow: fewer steps but 4 ms per step; fast: more steps at 1 ms per step
    recs = [run("slow", s, 100 + 10 * s, sec_per_step=4e-3) for s in range(3)]
    recs += [run("fast", s, 200 + 10 * s, sec_per_step=1e-3) for s in range(3)]
    by_work, by_time = aggregate(recs), aggregate(recs, rank_by="time")
    assert by_work[("quad", "slow")].is_best and by_work[("quad", "slow")].rank_time == 2
    assert by_time[("quad", "fast")].is_best and by_time[("quad", "fast")].rank_time == 1
    assert by_time[("quad", "fast")].rank == 2  # its rank by work is kept
    assert by_time[("quad", "slow")].compared_on == "time"
    # one run each, 10% apart in time, with +-30% jitter of the per-step times: within the
    # measured timing noise, so tied; without jitter the same difference is not
    a = run("a", 0, 100, sec_per_step=1.0e-3, jitter=0.3)
    b = run("b", 0, 100, sec_per_step=1.1e-3, jitter=0.3)
    noisy = aggregate([a, b], rank_by="time")
    assert noisy[("quad", "a")].is_best and noisy[("quad", "b")].tied_with_best
    assert noisy[("quad", "b")].timing_noise > 0.1
    a, b = run("a", 0, 100, sec_per_step=1.0e-3), run("b", 0, 100, sec_per_step=1.1e-3)
    assert not aggregate([a, b], rank_by="time")[("quad", "b")].tied_with_best
    with pytest.raises(ValueError, match="rank_by"):
        aggregate([a, b], rank_by="wall")


def test_task_options_split_tasks() -> None:
    recs = [run("sgd", 0, 100, task_options={"kappa": 10}),
            run("sgd", 0, 300, task_options={"kappa": 100})]
    assert set(by_task(aggregate(recs))) == {"quad kappa=10", "quad kappa=100"}


def test_text_outputs_state_the_ranking_and_intervals() -> None:
    recs = _study()
    text = summary_table(recs)
    assert text.startswith("Ranked by gradient evaluations to target")
    assert "120 [" in text  # nesterov's work with its interval
    assert "best" in text and "tied" in text and "not settled (1/3)" in text
    assert "overall ranking" in text
    md = markdown_summary(aggregate(recs), "study")
    assert ranking_definition("work") in md
    assert "## Ranking across tasks" in md and "| tied |" in md
    assert "evaluated every 10 steps" in md
    timed = summary_table(recs, rank_by="time")
    assert timed.startswith("Ranked by training seconds to target")
    assert summary_table([]) == "no runs"
