"""Shared helpers of the multi-process tests (DDP, ZeroRedundancyOptimizer, DCP).

A test module launches its own file as ``WORLD`` processes (``python FILE RANK STORE ARGS...``)
with :func:`launch`; each process joins a gloo group with :func:`init_gloo` and runs the cases
the module's selected tests need (:func:`selected_ids`), all in one launch: one start, one gloo
set-up and one ``import torch`` per rank, about 15 s on 2 cores whatever runs in it.

Nothing can hang CI: a collective times out after ``COLLECTIVE_TIMEOUT_S``, a rank that fails
ends the others at once (they would otherwise wait in a collective until it times out), and the
whole launch is killed after its ``timeout_s``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import optimlab as ol

WORLD = 2
#: The seconds a rank waits in a collective for the others (a compile on a loaded CI machine
#: can take a minute), and the seconds a whole launch may take by default.
COLLECTIVE_TIMEOUT_S = 300
LAUNCH_TIMEOUT_S = 600


def rank_env() -> dict[str, str]:
    """The environment of a launched rank: one thread each (two ranks share 2 cores), and
    gloo on the loopback (no name resolution needed)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCHINDUCTOR_COMPILE_THREADS": "1"}
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    return env


def launch(script: str | Path, tmp: Path, args: list[str], *, world: int = WORLD,
           timeout_s: float = LAUNCH_TIMEOUT_S, tag: str = "rank") -> None:
    """Run ``python script RANK STORE *args`` as ``world`` processes and wait for them.

    ``STORE`` is a ``torch.distributed.FileStore`` path in ``tmp``, fresh for this launch. Each
    rank's output goes to ``tmp/{tag}{rank}.log``; the assertion on failure shows its end.
    """
    store = tmp / f"{tag}-store"
    if store.exists():
        store.unlink()
    logs = [tmp / f"{tag}{rank}.log" for rank in range(world)]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for rank, log in enumerate(logs):
            with open(log, "w") as f:
                procs.append(subprocess.Popen(
                    [sys.executable, str(script), str(rank), str(store), *args],
                    stdout=f, stderr=subprocess.STDOUT, env=rank_env()))
        deadline = time.monotonic() + timeout_s
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    # The rank that failed by itself first (a positive status, or a signal other than our
    # SIGKILL): the others were killed because of it, and their logs say nothing.
    order = sorted(range(world), key=lambda r: procs[r].returncode in (0, -signal.SIGKILL))
    for rank in order:
        p, log = procs[rank], logs[rank]
        assert p.returncode == 0, (f"rank {rank} exited with {p.returncode} (negative: killed "
                                   f"by that signal; -9 after a hang or another rank's "
                                   f"failure):\n{log.read_text()[-4000:]}")


def init_gloo(rank: int, store_path: str, world: int = WORLD) -> None:
    """Join the gloo process group of a :func:`launch` (CPU; collectives time out)."""
    import torch.distributed as dist

    store = dist.FileStore(store_path, world)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world,
                            timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))


@contextmanager
def gloo_group(rank: int, store_path: str, world: int = WORLD) -> Iterator[None]:
    """The gloo process group of a :func:`launch` for the ``with`` block's body; the ranks leave
    it together (a barrier, then ``destroy_process_group``).

    Without the barrier a rank that finished first destroyed its group and exited while the
    other was still working (rank 0 pickling the results), and could abort at exit in gloo's
    C++ teardown ("terminate called without an active exception", SIGABRT: seen on a loaded
    2-core CI machine, not on an idle one). On an error the barrier is skipped: the launcher
    ends the other rank.
    """
    import torch.distributed as dist

    init_gloo(rank, store_path, world)
    try:
        yield
        dist.barrier()
    finally:
        dist.destroy_process_group()


def selected_ids(request: pytest.FixtureRequest, param: str = "case") -> list[str]:
    """The ``.id`` of every ``param`` value of this module's selected tests, in order, once
    each (so that ``-k`` and ``-m`` selections launch only what they test)."""
    wanted = [item.callspec.params[param].id for item in request.session.items
              if item.module is request.module and hasattr(item, "callspec")
              and param in item.callspec.params]
    return list(dict.fromkeys(wanted))


def full(t: Any) -> Any:
    """A DTensor gathered to one plain tensor; anything else as it is."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


# ----- the model, the data and the optimizers every distributed test uses ---------------------

#: Hidden and output width of the MLP: every parameter, and every shard of one under FSDP2 on
#: 2 ranks, is a multiple of 32 elements, so each element takes the same vectorized code path
#: sharded or not (see ``tests/test_fsdp.py``).
WIDTH = 64
#: Optimizers defined to refuse parameters that are not matrices (Muon: biases and norms
#: belong to AdamW); they get the model's 2-D parameters only.
MATRIX_ONLY = frozenset({"muon"})


def make_model() -> nn.Module:
    """The MLP the tests train (the same initial weights in every process)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, WIDTH), nn.Tanh(), nn.Linear(WIDTH, WIDTH))


def batch(rank: int, step: int) -> tuple[Tensor, Tensor]:
    """Rank ``rank``'s data at ``step`` (data parallel: each rank has its own)."""
    gen = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(16, 8, generator=gen), torch.randn(16, WIDTH, generator=gen)


def loss_of(model: nn.Module, data: tuple[Tensor, Tensor]) -> Tensor:
    """The mean squared error of ``model`` on ``data``."""
    x, y = data
    return nn.functional.mse_loss(model(x), y)


def global_grads(model: nn.Module, params: list[Tensor], step: int) -> list[Tensor]:
    """The gradient DDP forms at ``step``, bit for bit, in one process: each rank's half by
    its own forward and backward pass, times ``1 / WORLD`` (exact: a power of two), summed
    (with two ranks one addition per element, ``a + b == b + a``, as gloo's all-reduce)."""
    halves = []
    for rank in range(WORLD):
        model.zero_grad(set_to_none=True)
        loss_of(model, batch(rank, step)).backward()
        halves.append([p.grad.clone() for p in params])
    model.zero_grad(set_to_none=True)
    assert WORLD == 2  # more ranks: gloo's ring adds in its own order
    return [torch.mul(a, 1 / WORLD) + torch.mul(b, 1 / WORLD) for a, b in zip(*halves)]


def gather_objects(obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (pickled through the process group)."""
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


@dataclass(frozen=True)
class Case:
    """One optimizer of ``optimlab.OPTIMIZERS`` with its defaults and engine options."""

    id: str
    name: str  # a key of optimlab.OPTIMIZERS
    fused: bool = False
    bf16: bool = False  # state_dtype=torch.bfloat16

    @property
    def options(self) -> dict[str, Any]:
        """The engine options of the case."""
        out: dict[str, Any] = {"fused": True} if self.fused else {}
        if self.bf16:
            out["state_dtype"] = torch.bfloat16
        return out


def named_cases(bf16: bool = True) -> list[Case]:
    """A case per name of ``optimlab.OPTIMIZERS`` (read now: optimizers registered later
    join by themselves), and one with bfloat16 states per name when ``bf16``."""
    names = list(ol.OPTIMIZERS)
    cases = [Case(n, n) for n in names]
    if bf16:
        cases += [Case(f"{n}-bf16", n, bf16=True) for n in names]
    return cases


def trained_params(name: str, model: nn.Module) -> list[nn.Parameter]:
    """The parameters of ``model`` the optimizer ``name`` trains (see :data:`MATRIX_ONLY`)."""
    params = list(model.parameters())
    return [p for p in params if p.ndim == 2] if name in MATRIX_ONLY else params


def make_optimizer(case: Case, model: nn.Module, **kwargs: Any) -> torch.optim.Optimizer:
    """``optimlab.OPTIMIZERS[case.name]`` over ``model`` with its defaults, the case's
    options and ``kwargs``."""
    cls = ol.OPTIMIZERS[case.name]
    return cls(trained_params(case.name, model), **{**case.options, **kwargs})


def state_tensors(opt: torch.optim.Optimizer, params: list[Tensor]) -> list[dict[str, Any]]:
    """A copy of each parameter's state, tensors gathered whole (:func:`full`), by name."""
    return [{k: full(v).clone() if isinstance(v, Tensor) else v
             for k, v in sorted(opt.state[p].items())} for p in params]


def assert_equal_states(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    """The two lists of states are the same, bit for bit and dtype for dtype."""
    assert [sorted(s) for s in got] == [sorted(s) for s in want]
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        for k, v in a.items():
            if isinstance(v, Tensor):
                assert v.dtype == b[k].dtype, (i, k)
                assert torch.equal(v, b[k]), (i, k)
            else:
                assert v == b[k], (i, k)
