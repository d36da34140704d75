"""Runs per minute: P runs of one arm trained one at a time vs as one population.

For each task and population size P, in each round: the *sequential* side trains
``--seq-runs`` runs one after the other with :func:`optimlab.lab.runs.execute` (what a worker
does without populations; its rate does not depend on P, so it is measured once per round),
and the *population* side trains P runs (seeds 0 .. P-1) with
:func:`optimlab.lab.population.execute_population`. Both use the task's full budget (or
``--steps``), the same optimizer and batch size, and the same number of torch threads: each
setting of ``--threads`` (default 1,2) gets its own table (1 is what ``optimlab compare``'s
workers have: a process pool with one worker per core, one thread each). Rounds alternate
which side goes first, so a machine whose load changes biases both sides alike; the table
shows the median rates over rounds and the speed-up: the median over rounds of ``population
runs/min / sequential runs/min`` within the round (paired, so that a round slowed by other
work cancels).

As a check that the two sides did the same work, the script also prints the largest relative
difference between the final training loss of a population member and of the sequential run
of the same config (the records are equal up to rounding). With ``--lrs`` the runs sweep the
learning rates as well as the seeds, so a population's members train in several param groups.

    python benchmarks/population.py                      # mlp-digits and rosenbrock, P 4/16/64
    python benchmarks/population.py --sizes 4,16 --rounds 1 --steps 200   # a quick look
    python benchmarks/population.py --device cuda        # on a GPU
    python benchmarks/population.py --lrs 1e-3,3e-3,1e-2,3e-2   # members differ in lr too
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone

import torch

from optimlab.lab.population import batchable, execute_population
from optimlab.lab.runs import execute
from optimlab.lab.schema import RunConfig


def _configs(task: str, optimizer: str, n: int, steps: int | None, batch_size: int | str,
             lrs: list[float]) -> list[RunConfig]:
    """``n`` runs: seeds 0, 1, ...; with ``lrs``, run ``i`` has ``lrs[i % len(lrs)]`` and seed
    ``i // len(lrs)`` (a learning-rate sweep, its members in different param groups)."""
    k = max(len(lrs), 1)
    configs = [RunConfig(task=task, optimizer=optimizer, seed=i // k, batch_size=batch_size,
                         steps=steps, hyperparams={"lr": lrs[i % k]} if lrs else {}).resolved()
               for i in range(n)]
    reason = batchable(configs[0])
    if reason is not None:
        sys.exit(f"{task} with {optimizer} cannot train as a population: {reason}")
    return configs


def _sequential(configs: list[RunConfig], device: str, threads: int) -> tuple[float, dict]:
    t0 = time.perf_counter()
    records = [execute(c, device=device, threads=threads) for c in configs]
    return time.perf_counter() - t0, {r.key: r for r in records}


def _population(configs: list[RunConfig], device: str, threads: int) -> tuple[float, dict]:
    t0 = time.perf_counter()
    records = execute_population(configs, device=device, threads=threads)
    return time.perf_counter() - t0, {r.key: r for r in records}


def _final_loss(record: object) -> float | None:
    final = getattr(record, "final", {}) or {}
    return final.get("train_loss")


def _bench_task(task: str, args: argparse.Namespace) -> list[str]:
    seq_configs = _configs(task, args.optimizer, args.seq_runs, args.steps,
                           args.batch_size, args.lrs)
    pops = {p: _configs(task, args.optimizer, p, args.steps, args.batch_size, args.lrs)
            for p in args.sizes}
    seq_rates: list[float] = []
    pop_rates: dict[int, list[float]] = {p: [] for p in args.sizes}
    ratios: dict[int, list[float]] = {p: [] for p in args.sizes}
    worst = 0.0
    # one untimed warm-up of each side (first-call costs: imports, allocator, vmap tracing)
    _sequential(seq_configs[:1], args.device, args.threads)
    _population(pops[args.sizes[0]][:2], args.device, args.threads)
    for rnd in range(args.rounds):
        sides = ["seq"] + [f"pop{p}" for p in args.sizes]
        if rnd % 2:
            sides.reverse()
        seq_records: dict = {}
        pop_records: dict[int, dict] = {}
        for side in sides:
            if side == "seq":
                secs, seq_records = _sequential(seq_configs, args.device, args.threads)
                seq_rates.append(len(seq_configs) / secs * 60)
            else:
                p = int(side[3:])
                secs, pop_records[p] = _population(pops[p], args.device, args.threads)
                pop_rates[p].append(p / secs * 60)
            print(f"  {task} round {rnd + 1}/{args.rounds}: {side} {secs:.2f} s",
                  file=sys.stderr, flush=True)
        for p in args.sizes:
            ratios[p].append(pop_rates[p][-1] / seq_rates[-1])
        for recs in pop_records.values():
            for key, rec in seq_records.items():
                a, b = _final_loss(rec), _final_loss(recs.get(key))
                if a is not None and b is not None and a != 0:
                    worst = max(worst, abs(a - b) / abs(a))
    seq = statistics.median(seq_rates)
    steps = seq_configs[0].steps
    sweep = f", lr sweep {','.join(f'{v:g}' for v in args.lrs)}" if args.lrs else ""
    lines = [f"{task} ({args.optimizer}{sweep}, batch {args.batch_size}, {steps} steps per run): "
             f"sequential {seq:.1f} runs/min (median of {args.rounds} rounds of "
             f"{args.seq_runs} runs)",
             f"  {'P':>4}  {'population runs/min':>20}  {'speed-up':>8}  per round"]
    for p in args.sizes:
        rate = statistics.median(pop_rates[p])
        each = " ".join(f"{r:.2f}" for r in ratios[p])
        lines.append(f"  {p:>4}  {rate:>20.1f}  {statistics.median(ratios[p]):>7.2f}x  {each}")
    lines.append(f"  largest relative difference of a final train loss, population member "
                 f"vs the same run alone: {worst:.1e}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="mlp-digits,rosenbrock",
                        help="comma-separated tasks (default mlp-digits,rosenbrock)")
    parser.add_argument("--sizes", default="4,16,64", help="population sizes (default 4,16,64)")
    parser.add_argument("--optimizer", default="adam", help="lab optimizer (default adam)")
    parser.add_argument("--batch-size", default=32, type=lambda s: s if s == "full" else int(s),
                        help="batch size (default 32)")
    parser.add_argument("--lrs", default="",
                        help="comma-separated learning rates: the runs sweep them (run i has "
                             "lr i mod k, seed i div k), so a population's members differ in "
                             "lr (param groups); default: the optimizer's lr, seeds only")
    parser.add_argument("--steps", type=int, default=None,
                        help="steps per run (default: the task's full budget)")
    parser.add_argument("--seq-runs", type=int, default=4,
                        help="runs of the sequential side per round (default 4)")
    parser.add_argument("--rounds", type=int, default=3, help="paired rounds (default 3)")
    parser.add_argument("--threads", default="1,2",
                        help="torch thread settings, one table each (default 1,2; a pool "
                             "worker of optimlab compare has 1)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    args = parser.parse_args(argv)
    args.sizes = [int(p) for p in args.sizes.split(",")]
    thread_settings = [int(t) for t in args.threads.split(",")]
    args.lrs = [float(v) for v in args.lrs.split(",") if v]
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no GPU is available")
    if min(args.sizes) < 2 or args.seq_runs < 1 or args.rounds < 1 or min(thread_settings) < 1:
        parser.error("population sizes must be >= 2, --seq-runs, --rounds and --threads >= 1")
    device = (torch.cuda.get_device_name(args.device) if args.device.startswith("cuda")
              else platform.processor() or platform.machine())
    print(f"# benchmarks/population.py {' '.join(argv or sys.argv[1:])}".rstrip())
    print(f"# {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, torch {torch.__version__}, "
          f"python {platform.python_version()}, device {args.device} ({device}), "
          f"{os.cpu_count()} CPUs visible")
    for threads in thread_settings:
        args.threads = threads
        print(f"## {threads} torch thread(s) on both sides")
        for task in args.tasks.split(","):
            for line in _bench_task(task, args):
                print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
