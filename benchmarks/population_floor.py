"""The best speed-up a population could reach on mlp-digits: its compute floor, against the
sequential runs and the populations as they are, measured in the same run.

A population saves per-operation overhead, not arithmetic: its members' matrix products,
evaluations and optimizer updates are still all computed. This script measures, on this
machine and with ``--threads`` torch threads, the cost of that arithmetic with no overhead
beyond one call per operation for all members, through the same functions a population
calls:

- **gradients**: the task's written-out gradients of P members at once
  (``task.population_gradients()``: batched matrix products forward and backward);
- **update**: one step of the lab optimizer over one flat ``(P, N)`` buffer (the
  population's layout);
- **evaluation**: the task's metrics of all P members at once (``task.population_metrics``:
  chunks of batched forward passes), as many times per run as a sequential run of the same
  config evaluates (its record says how many).

The *floor rate* is ``P`` runs in ``steps * (gradients + update) + evaluations * evaluation``
seconds; its ratio to the measured sequential rate is the largest speed-up a population could
show with these kernels, however its bookkeeping (each member's records, divergence rule,
evaluation grid, data stream, clipping) were cut. The measured population rate is printed
beside it.

    python benchmarks/population_floor.py                 # P 4,16,64, 1 thread
    python benchmarks/population_floor.py --threads 2
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone

import torch

from optimlab.lab.optimizers import build_optimizer
from optimlab.lab.population import execute_population
from optimlab.lab.population_stack import Layout
from optimlab.lab.runs import execute
from optimlab.lab.schema import RunConfig
from optimlab.lab.tasks import make_task


def _per_call(fn: Callable[[], object], repeat: int) -> float:
    """Median seconds per call over 5 blocks of ``repeat`` calls (after a warm-up)."""
    for _ in range(3):
        fn()
    blocks = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn()
        blocks.append((time.perf_counter() - t0) / repeat)
    return statistics.median(blocks)


def floor_seconds(config: RunConfig, p: int, evaluations: int) -> dict[str, float]:
    """Seconds of the floor's parts for a population of ``p`` members of ``config``."""
    tasks = []
    for seed in range(p):
        task = make_task(config.task, **config.task_options)
        task.setup(seed)
        tasks.append(task)
    gradients_of, metrics_of = tasks[0].population_gradients(), tasks[0].population_metrics(tasks)
    if gradients_of is None or metrics_of is None:
        sys.exit(f"{config.task} has no written-out population paths")
    params = [torch.stack(ps).detach() for ps in zip(*(t.parameters() for t in tasks),
                                                       strict=True)]
    batch = int(config.batch_size)
    xy = (torch.stack([t.x_train[:batch] for t in tasks]),
          torch.stack([t.y_train[:batch] for t in tasks]))
    (flat,) = Layout(tasks[0].parameters()).flatten(params)
    optimizer = build_optimizer(config.optimizer, [flat], {**config.hyperparams,
                                                           "nonfinite": "ignore"})
    flat.grad = torch.full_like(flat, 1e-3)
    rows = list(range(p))
    grad_s = _per_call(lambda: gradients_of(params, xy), 50)
    update_s = _per_call(optimizer.step, 50)
    eval_s = _per_call(lambda: metrics_of(params, rows), 10)
    steps = int(config.steps)
    total = steps * (grad_s + update_s) + evaluations * eval_s
    return {"gradients": grad_s, "update": update_s, "evaluation": eval_s, "total": total}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="4,16,64", help="population sizes (default 4,16,64)")
    parser.add_argument("--optimizer", default="adam", help="lab optimizer (default adam)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--seq-runs", type=int, default=4,
                        help="sequential runs measured (default 4)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    torch.set_num_threads(args.threads)
    print(f"# benchmarks/population_floor.py {' '.join(argv or sys.argv[1:])}".rstrip())
    print(f"# {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, torch {torch.__version__}, "
          f"python {platform.python_version()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs visible, {args.threads} torch thread(s)")
    configs = [RunConfig(task="mlp-digits", optimizer=args.optimizer, seed=i, batch_size=32)
               .resolved() for i in range(max(max(sizes), args.seq_runs))]
    execute(configs[0], threads=args.threads)  # warm-up
    t0 = time.perf_counter()
    records = [execute(c, threads=args.threads) for c in configs[:args.seq_runs]]
    seq_rate = args.seq_runs / (time.perf_counter() - t0) * 60
    evaluations = round(statistics.mean(len(r.evals["step"]) for r in records))
    print(f"mlp-digits ({args.optimizer}, batch 32, {configs[0].steps} steps, "
          f"{evaluations} evaluations per run): sequential {seq_rate:.1f} runs/min")
    print(f"  {'P':>4}  {'grad ms':>8}  {'update ms':>9}  {'eval ms':>8}  {'floor runs/min':>14}"
          f"  {'ceiling':>7}  {'population runs/min':>19}  {'measured':>8}")
    for p in sizes:
        part = floor_seconds(configs[0], p, evaluations)
        floor_rate = p / part["total"] * 60
        t0 = time.perf_counter()
        execute_population(configs[:p], threads=args.threads)
        pop_rate = p / (time.perf_counter() - t0) * 60
        print(f"  {p:>4}  {part['gradients'] * 1e3:>8.3f}  {part['update'] * 1e3:>9.3f}  "
              f"{part['evaluation'] * 1e3:>8.3f}  {floor_rate:>14.1f}  "
              f"{floor_rate / seq_rate:>6.2f}x  {pop_rate:>19.1f}  {pop_rate / seq_rate:>7.2f}x",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
