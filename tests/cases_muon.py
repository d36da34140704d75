"""Contract cases of Muon (see ``tests/test_contract.py``): torch.optim.Muon is the reference.

Muon takes 2-D parameters only, so the contract's parameter shapes must all be matrices for
these cases (``Case.shapes`` below, read by the contract where it supports it).
"""

from __future__ import annotations

from typing import Any

import torch

from optimlab.optimizers.muon import Muon

#: Matrix shapes for Muon's contract runs (three, as the contract's default): tall, wide, square.
SHAPES = [(4, 3), (3, 5), (2, 2)]


def cases(Case: Any) -> list[Any]:
    """Muon against torch.optim.Muon, over its options (``alt``: a second group's)."""
    case = Case("muon", Muon, torch.optim.Muon,
                dict(lr=0.02, weight_decay=0.05, momentum=0.9),
                dict(lr=0.05, momentum=0.5, nesterov=False, weight_decay=0.0,
                     adjust_lr_fn="match_rms_adamw"),
                [dict(lr=0.02, weight_decay=0.05, ns_steps=3, eps=1e-3,
                      adjust_lr_fn="original"),
                 dict(lr=0.02, momentum=0.0, weight_decay=0.05)])
    case.shapes = SHAPES
    return [case]
