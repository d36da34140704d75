"""The eager step's fast paths equal the reference path, bit for bit.

On the CPU the eager step runs chains of elementwise rules one cache-sized tile at a time
(:mod:`optimlab._tiling`); the reference is the same rules on whole lists (``run_chains``).
Every element is computed by the same kernels from the same operands and scalars either way,
so the tests ask for exact equality (``torch.equal``), not a tolerance. The tile size is made
small (a few dozen elements) so that small tensors exercise every case: tensors cut into
slices, slices and whole tensors sharing a tile, tensors kept whole (not contiguous, scalar).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import optimlab as ol
import optimlab._tiling as tiling
from optimlab import transforms as T
from optimlab.transforms.base import Bucket, Deferred, Transform

# the module (``optimlab.chain`` the attribute is the function ``chain``)
chain_module = importlib.import_module("optimlab.chain")

#: Shapes with tensors above and below the tile size, a scalar and a vector.
SHAPES = [(37, 29), (5,), (), (64,), (3, 41)]
TILE = 48  # elements: (37, 29) is cut into 23 slices, the last one shared with (5,) and ()


def make_params(seed: int = 0, dtype: torch.dtype = torch.float32,
                transposed: bool = True) -> list[nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    ps = [nn.Parameter(torch.randn(s, generator=gen).to(dtype)) for s in SHAPES]
    if transposed:  # not contiguous: stepped whole, in a tile of its own
        ps.append(nn.Parameter(torch.randn(29, 13, generator=gen).to(dtype).t()))
    return ps


def set_grads(ps: list[Tensor], t: int) -> None:
    gen = torch.Generator().manual_seed(100 + t)
    for p in ps:
        noise = torch.randn(p.shape, generator=gen).to(p.dtype)
        p.grad = (p.detach() - 0.5) + noise  # a fresh tensor, as backward makes


def run(make: Callable[[list[nn.Parameter]], torch.optim.Optimizer], *, tiled: bool,
        monkeypatch: pytest.MonkeyPatch, steps: int = 4, **kw: Any
        ) -> tuple[list[Tensor], dict[Any, Any]]:
    """Parameters and state after ``steps`` steps, with or without tiles."""
    with monkeypatch.context() as m:
        m.setattr(tiling, "TILE_ELEMENTS", TILE)
        if not tiled:
            m.setattr(chain_module, "tileable", lambda buckets, chains: False)
        spy = _Spy()
        m.setattr(chain_module, "tiles", spy)
        ps = make_params(**kw)
        opt = make(ps)
        for t in range(steps):
            set_grads(ps, t)
            opt.step()
        assert (spy.calls > 0) is tiled  # the path under test was taken
        return [p.detach().clone() for p in ps], opt.state_dict()["state"]


def assert_identical(a: tuple[list[Tensor], dict[Any, Any]],
                     b: tuple[list[Tensor], dict[Any, Any]]) -> None:
    for i, (x, y) in enumerate(zip(a[0], b[0], strict=True)):
        assert torch.equal(x, y), f"parameter {i} differs: max {(x - y).abs().max().item()}"
    assert a[1].keys() == b[1].keys()
    for pid, st in a[1].items():
        assert st.keys() == b[1][pid].keys()
        for k, v in st.items():
            assert torch.equal(v, b[1][pid][k]), f"state {pid}/{k} differs"


NAMED: list[tuple[str, dict[str, Any]]] = [
    ("sgd", {"lr": 0.1}),
    ("sgd", {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}),
    ("sgd", {"lr": 0.1, "momentum": 0.9, "nesterov": True, "maximize": True}),
    ("sgd", {"lr": 0.1, "momentum": 0.9, "dampening": 0.3}),
    ("adagrad", {"lr": 0.1, "lr_decay": 0.01, "weight_decay": 0.1}),
    ("rmsprop", {"lr": 0.01}),
    ("rmsprop", {"lr": 0.01, "centered": True, "momentum": 0.9, "weight_decay": 0.1}),
    ("adam", {"lr": 0.01}),
    ("adam", {"lr": 0.01, "amsgrad": True, "weight_decay": 0.1}),
    ("adamw", {"lr": 0.01, "weight_decay": 0.1}),
    ("adamw", {"lr": 0.01, "amsgrad": True, "maximize": True}),
    ("nadam", {"lr": 0.01, "weight_decay": 0.1}),
    ("nadam", {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True}),
    ("radam", {"lr": 0.01}),  # rectified from step 6 on: both branches within 8 steps
    ("adamax", {"lr": 0.01, "weight_decay": 0.1}),
    ("adadelta", {"lr": 1.0, "weight_decay": 0.1}),
]


@pytest.mark.parametrize(("name", "kw"), NAMED, ids=[f"{n}-{i}" for i, (n, _) in
                                                     enumerate(NAMED)])
def test_named_optimizers_tiled_equal_untiled(name: str, kw: dict[str, Any],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def make(ps: list[nn.Parameter]) -> torch.optim.Optimizer:
        return ol.OPTIMIZERS[name](ps, **kw)
    steps = 8 if name == "radam" else 4
    assert_identical(run(make, tiled=True, monkeypatch=monkeypatch, steps=steps),
                     run(make, tiled=False, monkeypatch=monkeypatch, steps=steps))


@pytest.mark.parametrize("foreach", [None, False])
def test_two_groups_and_foreach_false_tiled_equal_untiled(
        foreach: bool | None, monkeypatch: pytest.MonkeyPatch) -> None:
    def make(ps: list[nn.Parameter]) -> torch.optim.Optimizer:
        return ol.AdamW([{"params": ps[:2]}, {"params": ps[2:], "lr": 0.1,
                                               "weight_decay": 0.0}],
                        lr=0.01, foreach=foreach)
    assert_identical(run(make, tiled=True, monkeypatch=monkeypatch),
                     run(make, tiled=False, monkeypatch=monkeypatch))


CHAINS: dict[str, Callable[[], tuple[Transform, ...]]] = {
    "value-clip-l1": lambda: (T.clip_by_value(0.5), T.scale_by_adam(), T.add_decayed_weights(0.1),
                              T.l1_proximal(0.01)),
    "l2-trace-scale": lambda: (T.add_l2(0.1), T.trace(0.9, nesterov=True), T.scale(0.5)),
    "rms-trace": lambda: (T.scale_by_rms(centered=True), T.trace(0.5, dampening=0.5),
                          T.scale_by_inverse_time_decay(0.1)),
    "lr-not-last": lambda: (T.scale_by_learning_rate(0.1), T.scale_by_adamax()),
}


@pytest.mark.parametrize("key", list(CHAINS))
def test_chains_tiled_equal_untiled(key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def make(ps: list[nn.Parameter]) -> torch.optim.Optimizer:
        return ol.chain(ps, *CHAINS[key](), lr=0.05)
    assert_identical(run(make, tiled=True, monkeypatch=monkeypatch),
                     run(make, tiled=False, monkeypatch=monkeypatch))


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex64])
def test_other_dtypes_tiled_equal_untiled(dtype: torch.dtype,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def make(ps: list[nn.Parameter]) -> torch.optim.Optimizer:
        return ol.Adam(ps, lr=0.01, weight_decay=0.1)
    kw = {"dtype": dtype, "transposed": False}
    assert_identical(run(make, tiled=True, monkeypatch=monkeypatch, **kw),
                     run(make, tiled=False, monkeypatch=monkeypatch, **kw))


# ----- when tiles are used ---------------------------------------------------------------------
class _Spy:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, b: Bucket, size: int | None = None) -> Any:
        self.calls += 1
        return tiling.tiles(b, size)


def _tile_calls(opt_factory: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
                monkeypatch: pytest.MonkeyPatch) -> int:
    spy = _Spy()
    monkeypatch.setattr(chain_module, "tiles", spy)
    ps = make_params()
    opt = opt_factory(ps)
    set_grads(ps, 0)
    opt.step()
    return spy.calls


class _RowNorm(Transform):
    """A rule that is not elementwise (normalizes each row): never run on slices."""

    def apply(self, u: list[Tensor], b: Bucket, sc: Any) -> list[Tensor]:
        return [x / (x.norm(dim=-1, keepdim=True) + 1) if x.dim() else x for x in u]


@pytest.mark.parametrize(("rules", "options", "expected"), [
    ((T.scale_by_adam(),), {}, True),
    ((T.clip_by_global_norm(1.0), T.scale_by_adam()), {}, False),  # a global statistic
    ((_RowNorm(),), {}, False),  # not elementwise
    ((T.scale_by_adam(),), {"state_dtype": torch.bfloat16}, False),  # salted by tensor index
    ((T.scale_by_adam(),), {"differentiable": True}, False),  # the recorded step
])
def test_tiles_only_where_the_result_cannot_change(rules: tuple[Transform, ...],
                                                   options: dict[str, Any], expected: bool,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def make(ps: list[nn.Parameter]) -> torch.optim.Optimizer:
        if options.get("differentiable"):
            ps = [p.detach().clone() for p in ps]  # non-leaf-free copies, updated in place
            for q, p in zip(ps, make_params()):
                q.grad = torch.ones_like(p)
        return ol.chain(ps, *rules, lr=0.01, **options)
    assert (_tile_calls(make, monkeypatch) > 0) is expected


def test_tiles_cover_every_element_once() -> None:
    gen = torch.Generator().manual_seed(0)
    params = [torch.zeros(s) for s in SHAPES] + [torch.zeros(29, 13).t()]
    grads = [torch.randn(p.shape, generator=gen) for p in params]
    state = {"m": [torch.zeros_like(p) for p in params],
             "scalar": [torch.tensor(float(i)) for i in range(len(params))]}
    b = Bucket(params, grads, state, 1)
    seen = 0
    for tile in tiling.tiles(b, TILE):
        assert tile.steps == []
        n = sum(p.numel() for p in tile.params)
        assert n <= TILE or len(tile.params) == 1  # a whole tensor larger than a tile
        for p, g, m, s in zip(tile.params, tile.grads, tile.state["m"], tile.state["scalar"]):
            assert p.shape == g.shape == m.shape and s.dim() == 0
            p.add_(1.0)
            m.copy_(g)
        seen += n
    assert seen == sum(p.numel() for p in params)
    (whole,) = tiling.tiles(b, 10**6)  # a bucket that fits one tile is that tile
    assert whole.params is b.params and whole.state is b.state and whole.steps == []
    for p, g, m in zip(params, grads, state["m"]):
        assert torch.equal(p, torch.ones_like(p))  # every element once: views, no copies
        assert torch.equal(m, g)  # each state slice lines up with its gradient slice


# ----- quotient updates added with addcdiv ------------------------------------------------------
@pytest.mark.parametrize("name", ["adagrad", "rmsprop", "adam", "adamw", "nadam", "radam",
                                  "adamax"])
def test_quotient_updates_reach_the_parameters_without_being_multiplied_out(
        name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The named optimizers' last rule leaves its update Deferred and the learning-rate step
    adds it with addcdiv (torch.optim's final step): the quotient is never computed alone."""
    calls = {"materialize": 0, "add_to": 0}
    for method in calls:
        original = getattr(Deferred, method)

        def counting(self: Deferred, *a: Any, _m: str = method, _f: Any = original) -> Any:
            calls[_m] += 1
            return _f(self, *a)
        monkeypatch.setattr(Deferred, method, counting)
    ps = make_params()
    opt = ol.OPTIMIZERS[name](ps, lr=0.01)
    for t in range(8):  # RAdam: unrectified, then rectified (from step 6)
        set_grads(ps, t)
        opt.step()
    assert calls["add_to"] > 0 and calls["materialize"] == 0


@pytest.mark.parametrize("rule", [lambda: T.scale_by_adam(), lambda: T.scale_by_nadam(),
                                  lambda: T.scale_by_radam(), lambda: T.scale_by_adamax(),
                                  lambda: T.scale_by_rms(), lambda: T.scale_by_adagrad()])
def test_deferred_step_equals_the_multiplied_out_update(rule: Callable[[], Transform],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The same rule with a rule after it that does not fold into the step (``scale(1.0)``,
    which gets the update multiplied out) and without (the update added by ``addcdiv``).

    Gradients are fixed (not taken at the iterates), so the states are computed by the same
    operations on both sides and only the final ``p + alpha * num / den`` is rounded
    differently: multiplied out, the quotient, its scale and ``-lr`` are three more float32
    roundings of the update (each 2**-24 relative) and the addition one of ``p``, so after
    ``n`` steps the parameters differ by at most ``n * 2**-24 * (|p| + 4 |lr * update|)``;
    with ``|update| <= 10`` here (|m / sqrt(v)| is bounded by ``1 / sqrt(1 - b2)`` ~ 32 only
    for adversarial sequences) ``1e-6 * (1 + |p|)`` bounds it with room."""
    n = 8
    runs = []
    materialized = []
    original = Deferred.materialize
    calls = [0]

    def counting(self: Deferred) -> list[Tensor]:
        calls[0] += 1
        return original(self)
    monkeypatch.setattr(Deferred, "materialize", counting)
    for extra in ((), (T.scale(1.0),)):
        calls[0] = 0
        ps = make_params(transposed=False)
        opt = ol.chain(ps, rule(), *extra, lr=0.01)
        for t in range(n):
            set_grads(ps, t)
            opt.step()
        runs.append([p.detach() for p in ps])
        materialized.append(calls[0])
    assert materialized[0] == 0 and materialized[1] > 0  # the two paths under comparison
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
