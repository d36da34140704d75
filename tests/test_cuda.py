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


@pytest.mark.slow
@pytest.mark.parametrize("new_grads", [False, True], ids=["grads-in-place", "new-grads"])
def test_cuda_graph_replays_equal_the_eager_steps(new_grads: bool) -> None:
    """The compiled step, replayed as a CUDA graph, == the eager step over 30 steps, with the
    same gradient tensors every step (one capture) or new ones (recaptured when they move)."""
    gen = torch.Generator(device="cuda").manual_seed(1)
    init = [torch.randn(s, device="cuda", generator=gen) for s in [(64, 33), (33,), (5, 7)]]
    grads = [[torch.randn(p.shape, device="cuda", generator=gen) for p in init]
             for _ in range(30)]

    def run(fused: bool) -> tuple[list[torch.Tensor], torch.optim.Optimizer]:
        ps = [p.clone().requires_grad_(True) for p in init]
        opt = ol.AdamW(ps, lr=1e-2, fused=fused, nonfinite="ignore")
        for gs in grads:
            for p, g in zip(ps, gs, strict=True):
                if new_grads or p.grad is None:
                    p.grad = g.clone()
                else:
                    p.grad.copy_(g)
            opt.step()
        return ps, opt

    eager, _ = run(False)
    fused, opt = run(True)
    # Fixed gradients, no feedback: per step the compiled kernel (fused, FMA-contracted) rounds
    # p at most an ulp or two away from the eager one; the update's own differences are ulps
    # of |u| <= lr = 1e-2. 30 steps: <= 60 * 2**-24 ~ 3.6e-6 relative if every rounding fell
    # the same way, ~sqrt(30) ulps (~3e-7) for independent ones; 1e-6 of the norm.
    for a, b in zip(fused, eager, strict=True):
        err = float(((a - b).norm() / b.norm()).item())
        assert err <= 1e-6, err
    direct = opt._compiled._direct  # private: the graph was really used
    assert direct is not None and direct.captures >= 1
    if not new_grads:
        assert direct.captures == 1 and direct.graph is not None
