"""What SAM costs beyond its base optimizer: its own work, and a whole training step.

What it measures
----------------
* ``own work``: over a transformer-like parameter set (per layer: qkv, out-proj and 4x MLP
  weights and biases, two LayerNorms; ``--layers`` layers of width ``--width``) with fixed random
  gradients, ``sam.first_step()`` followed by ``sam.second_step()`` (perturb, restore, base step)
  against the base optimizer's ``step()`` alone. The ratio minus 1 is SAM's own work (the norm,
  the perturbation, the copies) in base steps.
* ``training step``: a small MLP (``--width`` hidden units, batch ``--batch``) trained by
  ``sam.step(closure)`` against ``base.step(closure)``. SAM evaluates the gradient twice, so the
  ratio is about 2 plus its own work; the gradient evaluations dominate.

Both are timed with ``time.perf_counter``, one step of each side in turn in alternating order
(interleaved rounds), and reported as the median of the per-round ratios, so a shared or
drifting machine affects both sides alike.

Usage::

    python benchmarks/sam_overhead.py                      # CPU, SGD momentum and AdamW bases
    python benchmarks/sam_overhead.py --rounds 50 --layers 4 --width 512
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import optimlab as ol
from optimlab.sam import SAM


def _param_set(layers: int, width: int, seed: int) -> list[nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    d = width
    shapes = []
    for _ in range(layers):
        shapes += [(3 * d, d), (3 * d,), (d, d), (d,), (4 * d, d), (4 * d,), (d, 4 * d), (d,),
                   (d,), (d,), (d,), (d,)]
    params = [nn.Parameter(torch.randn(s, generator=g) * 0.02) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * 0.01
    return params


def _median_ratio(sam_step: Callable[[], object], base_step: Callable[[], object],
                  rounds: int) -> tuple[float, float, float]:
    """Median per-round time ratio sam/base, and the two median times in ms."""
    for _ in range(3):  # warm-up: state allocation
        sam_step()
        base_step()
    ratios, ts, tb = [], [], []
    for r in range(rounds):
        order = [(sam_step, ts), (base_step, tb)]
        if r % 2:
            order.reverse()
        times = {}
        for step, out in order:
            t0 = time.perf_counter()
            step()
            times[id(out)] = time.perf_counter() - t0
            out.append(times[id(out)])
        ratios.append(times[id(ts)] / times[id(tb)])
    return statistics.median(ratios), 1e3 * statistics.median(ts), 1e3 * statistics.median(tb)


BASES = {
    "sgd-momentum": lambda ps: ol.SGD(ps, lr=0.01, momentum=0.9),
    "adamw": lambda ps: ol.AdamW(ps, lr=1e-3, weight_decay=0.01),
    "torch-sgd-momentum": lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9),
}


def own_work(name: str, layers: int, width: int, rounds: int) -> tuple[float, float, float]:
    make = BASES[name]
    a, b = _param_set(layers, width, 0), _param_set(layers, width, 0)
    sam, base = SAM(a, make(a), rho=0.05), make(b)

    def sam_step() -> None:  # gradients stay as they are: fixed
        sam.first_step()
        sam.second_step()
    return _median_ratio(sam_step, base.step, rounds)


def training_step(name: str, width: int, batch: int, rounds: int) -> tuple[float, float, float]:
    make = BASES[name]
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(batch, 64, generator=g), torch.randint(0, 10, (batch,), generator=g)

    def model() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                             nn.Linear(width, 10))
    ma, mb = model(), model()
    sam, base = SAM(ma.parameters(), make(list(ma.parameters())), rho=0.05), \
        make(list(mb.parameters()))

    def closure_for(m: nn.Module, opt: torch.optim.Optimizer) -> Callable[[], torch.Tensor]:
        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(m(x), y)
            loss.backward()
            return loss
        return closure
    ca, cb = closure_for(ma, sam), closure_for(mb, base)
    return _median_ratio(lambda: sam.step(ca), lambda: base.step(cb), rounds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n = sum(p.numel() for p in _param_set(args.layers, args.width, 0))
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.rounds} interleaved rounds, "
          f"medians")
    print(f"own work: {12 * args.layers} tensors, {n / 1e6:.2f}M parameters; "
          f"first_step+second_step vs base.step()")
    for name in BASES:
        ratio, ts, tb = own_work(name, args.layers, args.width, args.rounds)
        print(f"  {name:20s} SAM {ts:8.2f} ms  base {tb:8.2f} ms  ratio {ratio:5.2f}x")
    print(f"training step: MLP 64-{args.width}-{args.width}-10, batch {args.batch}; "
          f"sam.step(closure) vs base.step(closure)")
    for name in BASES:
        ratio, ts, tb = training_step(name, args.width, args.batch, args.rounds)
        print(f"  {name:20s} SAM {ts:8.2f} ms  base {tb:8.2f} ms  ratio {ratio:5.2f}x")


if __name__ == "__main__":
    main()
