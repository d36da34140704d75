"""Optimizer-state bytes per parameter, for every registered optimizer and state storage.

For each optimizer of ``optimlab.OPTIMIZERS`` (iterated: newly registered ones appear by
themselves), one step on 4 float32 1024 x 1024 matrices, with ``state_dtype`` None
(states in float32), ``torch.bfloat16`` and ``torch.uint8`` (8-bit block-wise), then
``ChainOptimizer.state_bytes()`` (every state tensor: per-element states, 8-bit codes and
their per-block absmaxes, scalar states such as ``step``) divided by the number of
parameters. Printed as a markdown table. Acceptance: 8-bit AdamW <= 2.1 bytes per parameter
(two 1-byte moments, 4/256 bytes of absmax each, four 4-byte step counts).

Usage::

    python benchmarks/state_memory.py > benchmarks/results/state_memory-cpu.md
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import torch

import optimlab

#: Options that give an optimizer its per-element states (SGD without momentum keeps none).
STATEFUL: dict[str, dict[str, Any]] = {"sgd": {"momentum": 0.9}}
STORAGE = {"fp32": None, "bf16": torch.bfloat16, "8-bit": torch.uint8}
#: Four 1024 x 1024 weight matrices, where a model's parameters are (every optimizer takes
#: them: Muon steps matrices only; Adafactor factors them into a row and a column).
SHAPES = [(1024, 1024)] * 4


def bytes_per_param(cls: type, options: dict[str, Any], state_dtype: torch.dtype | None) -> str:
    """State bytes per parameter after one step (or why there is no number)."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen).requires_grad_(True) for s in SHAPES]
    try:
        opt = cls(params, state_dtype=state_dtype, **options)
    except (TypeError, ValueError) as e:
        return f"n/a ({type(e).__name__})"

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = sum(((p - 0.5) ** 2).sum() for p in params)
        loss.backward()
        return loss

    opt.step(closure)
    n = sum(p.numel() for p in params)
    if not hasattr(opt, "state_bytes"):
        return "n/a (no state_bytes)"
    return f"{opt.state_bytes() / n:.3f}"


def main(argv: Sequence[str] | None = None) -> int:
    del argv
    n = sum(torch.Size(s).numel() for s in SHAPES)
    print(f"Optimizer-state bytes per parameter after one step, 4 float32 1024 x 1024 "
          f"matrices ({n} parameters), torch {torch.__version__}, CPU\n")
    print("| optimizer | options | " + " | ".join(STORAGE) + " |")
    print("|---|---|" + "---:|" * len(STORAGE))
    adamw_8bit = None
    for name, cls in optimlab.OPTIMIZERS.items():
        options = STATEFUL.get(name, {})
        cells = [bytes_per_param(cls, options, dtype) for dtype in STORAGE.values()]
        if name == "adamw":
            adamw_8bit = cells[2]
        text = ", ".join(f"{k}={v}" for k, v in options.items()) or "defaults"
        print(f"| {name} | {text} | " + " | ".join(cells) + " |")
    print(f"\n8-bit AdamW: {adamw_8bit} bytes per parameter (acceptance: <= 2.1)")
    return 0 if adamw_8bit is not None and float(adamw_8bit) <= 2.1 else 1


if __name__ == "__main__":
    sys.exit(main())
