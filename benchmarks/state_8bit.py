"""Final loss of AdamW with 8-bit block-wise states against float32 states, on a lab task.

``state_dtype=torch.uint8`` stores Adam's moments as 8-bit codes with one float32 absmax per
256 elements (:mod:`optimlab.quantization`; tensors under 4096 elements keep float32 states).
This script trains the same model from the same initialization and the same batches with both,
for several seeds, and prints the final losses and their relative difference. Acceptance:
the 8-bit mean final loss (training loss over the last ``--window`` steps, and the task's
validation loss) within 2% of the float32 one.

Usage::

    python benchmarks/state_8bit.py                               # transformer-charlm, CPU
    python benchmarks/state_8bit.py --steps 300 --seeds 3 > benchmarks/results/state_8bit-cpu.txt
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence

import torch

import optimlab
from optimlab.lab.tasks import make_task

ARMS = {"fp32": None, "8bit": torch.uint8}


def train(task_name: str, state_dtype: torch.dtype | None, seed: int, steps: int, lr: float,
          batch_size: int, window: int) -> tuple[float, dict[str, float], int, int]:
    """One run: mean training loss of the last ``window`` steps, the task's final metrics,
    and the optimizer's state bytes and the number of parameters."""
    task = make_task(task_name)
    task.setup(seed=seed, device="cpu")
    params = list(task.parameters())
    opt = optimlab.AdamW(params, lr=lr, state_dtype=state_dtype)
    batches = task.batches(batch_size, torch.Generator().manual_seed(seed))
    last: list[float] = []
    for step in range(1, steps + 1):
        opt.zero_grad()
        loss = task.loss(next(batches))
        loss.backward()
        opt.step()
        if step > steps - window:
            last.append(float(loss.detach()))
    return (statistics.fmean(last), task.evaluate(), opt.state_bytes(),
            sum(p.numel() for p in params))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="transformer-charlm")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--window", type=int, default=50, help="last steps averaged")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    train_loss: dict[str, list[float]] = {a: [] for a in ARMS}
    val_loss: dict[str, list[float]] = {a: [] for a in ARMS}
    sizes: dict[str, tuple[int, int]] = {}
    for seed in range(args.seeds):
        for arm, dtype in ARMS.items():
            tl, final, nbytes, n = train(args.task, dtype, seed, args.steps, args.lr,
                                         args.batch_size, args.window)
            train_loss[arm].append(tl)
            val_loss[arm].append(final["val_loss"])
            sizes[arm] = (nbytes, n)
            print(f"  seed {seed} {arm:<5} train {tl:.4f} val {final['val_loss']:.4f}",
                  file=sys.stderr, flush=True)
    print(f"{args.task}: AdamW lr {args.lr}, batch {args.batch_size}, {args.steps} steps, "
          f"seeds {list(range(args.seeds))}, cpu ({args.threads} threads), torch "
          f"{torch.__version__} "
          f"({time.perf_counter() - t0:.0f} s)")
    for arm, (nbytes, n) in sizes.items():
        print(f"state bytes {arm:<5} {nbytes} ({nbytes / n:.3f} per parameter, {n} parameters)")
    print(f"{'seed':>4} {'train fp32':>11} {'train 8bit':>11} {'val fp32':>9} {'val 8bit':>9}")
    for s in range(args.seeds):
        print(f"{s:>4} {train_loss['fp32'][s]:>11.4f} {train_loss['8bit'][s]:>11.4f} "
              f"{val_loss['fp32'][s]:>9.4f} {val_loss['8bit'][s]:>9.4f}")
    ok = True
    for name, losses in ((f"train (last {args.window} steps)", train_loss),
                         ("val", val_loss)):
        ref, q = statistics.fmean(losses["fp32"]), statistics.fmean(losses["8bit"])
        rel = (q - ref) / ref
        ok &= abs(rel) <= 0.02
        print(f"mean final {name}: fp32 {ref:.4f}, 8bit {q:.4f}, relative difference "
              f"{rel:+.2%}")
    print(f"acceptance (|relative difference| <= 2%): {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
