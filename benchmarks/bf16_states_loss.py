"""Loss curves of AdamW with float32 states against bfloat16 states, on real lab tasks.

``state_dtype=torch.bfloat16`` stores Adam's moments in bfloat16 with stochastic rounding (see
:mod:`optimlab.chain`). This script trains the same model from the same initialization and
the same batches with both, for several seeds, and prints the training loss (mean and spread
over seeds) at evenly spaced steps, and the final full-objective metrics. "Same loss curve
within noise" means: at every checkpoint the bf16 mean lies within the fp32 curve's seed spread
(the printed ``|diff| / spread`` stays around or below 1). A third arm, ``bf16-nearest``,
rounds the bfloat16 states to nearest instead (what a plain ``.to(torch.bfloat16)`` of the states
would do), to show what stochastic rounding buys.

Usage::

    python benchmarks/bf16_states_loss.py                        # mlp-digits, CPU, 3 seeds
    python benchmarks/bf16_states_loss.py --task transformer-charlm --steps 400 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch

import optimlab
from optimlab.lab.tasks import make_task


class _NearestBF16AdamW(optimlab.AdamW):
    """AdamW whose bfloat16 states are rounded to nearest (comparison arm only)."""

    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        states = [(st, k) for st in self.state.values() for k, v in st.items()
                  if isinstance(v, torch.Tensor) and v.dtype == torch.bfloat16]
        wide = {(id(st), k): st[k].float() for st, k in states}
        for st, k in states:
            st[k] = wide[(id(st), k)]
        loss = super().step(closure)
        for st, k in states:
            st[k] = st[k].to(torch.bfloat16)
        if not states:  # first step: the states were just created in float32
            for st in self.state.values():
                for k, v in st.items():
                    if isinstance(v, torch.Tensor) and v.dim() > 0:
                        st[k] = v.to(torch.bfloat16)
        return loss


def train(task_name: str, arm: str, seed: int, steps: int, lr: float, batch_size: int,
          device: str, every: int) -> tuple[list[float], dict[str, float]]:
    """Train one arm for one seed; the training loss every ``every`` steps and final metrics."""
    task = make_task(task_name)
    task.setup(seed=seed, device=device)
    params = task.parameters()
    if arm == "fp32":
        opt: torch.optim.Optimizer = optimlab.AdamW(params, lr=lr)
    elif arm == "bf16":
        opt = optimlab.AdamW(params, lr=lr, state_dtype=torch.bfloat16)
    else:
        opt = _NearestBF16AdamW(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    batches = task.batches(batch_size, gen)
    curve, window = [], []
    for step in range(1, steps + 1):
        opt.zero_grad()
        loss = task.loss(next(batches))
        loss.backward()
        opt.step()
        window.append(float(loss))
        if step % every == 0:
            curve.append(statistics.fmean(window))
            window = []
    return curve, task.evaluate()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="mlp-digits")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--points", type=int, default=10, help="checkpoints printed")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    every = max(1, args.steps // args.points)
    arms = ("fp32", "bf16", "bf16-nearest")
    curves: dict[str, list[list[float]]] = {a: [] for a in arms}
    finals: dict[str, list[dict[str, float]]] = {a: [] for a in arms}
    t0 = time.perf_counter()
    for seed in range(args.seeds):
        for arm in arms:
            c, f = train(args.task, arm, seed, args.steps, args.lr, args.batch_size,
                         args.device, every)
            curves[arm].append(c)
            finals[arm].append(f)
            print(f"  seed {seed} {arm:<13} final {f}", file=sys.stderr, flush=True)
    print(f"{args.task}: AdamW lr {args.lr}, batch {args.batch_size}, {args.steps} steps, "
          f"{args.seeds} seeds, {args.device}, torch {torch.__version__} "
          f"({time.perf_counter() - t0:.0f} s)")
    print("training loss (mean over seeds of the mean over each window); diff/spread = "
          "|mean - fp32 mean| / (fp32 max - fp32 min over seeds)")
    print(f"{'step':>6} {'fp32':>9} {'bf16':>9} {'diff/spr':>9} {'nearest':>9} {'diff/spr':>9}")
    worst = {"bf16": 0.0, "bf16-nearest": 0.0}
    for i in range(len(curves["fp32"][0])):
        ref = [c[i] for c in curves["fp32"]]
        spread = max(max(ref) - min(ref), 1e-12)
        row = f"{(i + 1) * every:>6} {statistics.fmean(ref):>9.4f}"
        for arm in ("bf16", "bf16-nearest"):
            m = statistics.fmean(c[i] for c in curves[arm])
            r = abs(m - statistics.fmean(ref)) / spread
            worst[arm] = max(worst[arm], r)
            row += f" {m:>9.4f} {r:>9.2f}"
        print(row)
    for arm in arms:
        keys = sorted(finals[arm][0])
        text = ", ".join(f"{k} {statistics.fmean(f[k] for f in finals[arm]):.4f}" for k in keys)
        print(f"final {arm:<13} {text}")
    print(f"worst diff/spread: bf16 {worst['bf16']:.2f}, bf16-nearest "
          f"{worst['bf16-nearest']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
