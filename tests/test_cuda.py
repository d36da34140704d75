"""CUDA-only properties of the compiled (``fused=True``) step; skipped without a CUDA GPU.

The equality of the compiled and the eager path on CUDA is in test_properties.py and
test_state_dtype.py (their ``device`` parameter); this file checks what only a GPU can show.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import optimlab as ol

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

#: Every named optimizer with the settings of benchmarks/step_time.py.
SETTINGS: list[tuple[str, dict[str, Any]]] = [
    ("SGD", dict(lr=1e-2, momentum=0.9)),
    ("Adagrad", dict(lr=1e-2)),
    ("RMSprop", dict(lr=1e-3)),
    ("Adam", dict(lr=1e-3)),
    ("AdamW", dict(lr=1e-3, weight_decay=1e-2)),
    ("AdamW", dict(lr=1e-3, weight_decay=1e-2, state_dtype=torch.bfloat16)),
    ("NAdam", dict(lr=2e-3)),
    ("RAdam", dict(lr=1e-3)),
    ("Adadelta", dict(lr=1.0)),
    ("Adamax", dict(lr=2e-3)),
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "kwargs"), SETTINGS,
                         ids=[f"{n}-{i}" for i, (n, _) in enumerate(SETTINGS)])
def test_compiled_step_never_synchronizes_with_the_host(name: str, kwargs: dict[str, Any]
                                                        ) -> None:
    """After the first (compiling) steps, a fused step queues its work and returns: no
    device-to-host copy, no stream synchronization (with ``nonfinite="ignore"``; the inf/NaN
    check needs one read-back per step by design). A synchronization per step would leave the
    GPU idle while Python prepares the next step."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    params = [torch.randn(s, device="cuda", generator=gen, requires_grad=True)
              for s in [(256, 64), (64,), (3, 5, 7)]]
    for p in params:
        p.grad = torch.randn(p.shape, device="cuda", generator=gen)
    opt = getattr(ol, name)(params, fused=True, nonfinite="ignore", **kwargs)
    for _ in range(3):
        opt.step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert all(bool(torch.isfinite(p).all()) for p in params)
