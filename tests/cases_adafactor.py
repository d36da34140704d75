"""Contract cases of Adafactor (loaded by tests/test_contract.py): torch.optim.Adafactor is the
reference, so only its arguments appear here (the paper's variant is tested in
tests/test_adafactor.py against a float64 reference of its own)."""

from __future__ import annotations

from typing import Any

import torch

from optimlab.optimizers.adafactor import Adafactor


def cases(Case: Any) -> list[Any]:
    """Adafactor's contract case: factored (4, 3) and (2, 2, 2) tensors and a (3,) vector."""
    return [
        Case("adafactor", Adafactor, torch.optim.Adafactor,
             dict(lr=0.05, weight_decay=0.01, d=2.0),
             dict(lr=0.02, beta2_decay=-0.5, eps=(1e-6, 1e-2), weight_decay=0.0),
             [dict(lr=0.05, weight_decay=0.1, foreach=True),
              dict(lr=1.0, d=1.0, eps=(None, 1e-1))]),
    ]
