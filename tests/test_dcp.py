"""Distributed checkpoints: optimizer state through ``torch.distributed.checkpoint`` (DCP).

For every optimizer of ``optimlab.OPTIMIZERS`` (its defaults; float32 and bfloat16 states):

1. **Save, 2 processes** (gloo, CPU): the MLP of :mod:`distutil` sharded by FSDP2
   (``fully_shard``) trains ``BEFORE`` steps; model and optimizer are saved with ``dcp.save``
   of ``get_model_state_dict`` / ``get_optimizer_state_dict`` (sharded: each rank writes its
   shards), and their gathered values are kept. The run goes on ``AFTER`` more steps; its
   gathered gradients, final parameters and states are kept.
2. **Load, 2 -> 2**: a fresh sharded model and optimizer load the checkpoint
   (``dcp.load`` into their own state dicts, then ``set_model_state_dict`` /
   ``set_optimizer_state_dict``) and take the same ``AFTER`` steps on the same data.
3. **Load, 2 -> 1** (this process, no process group): a plain, unsharded model and optimizer
   load the same checkpoint (DCP reshards: the files hold each tensor's global layout) and
   take the ``AFTER`` steps with the gradients the sharded run used.

The loaded parameters and states must equal the saved ones bit for bit (a checkpoint is a
copy), and the steps after loading the original run's, bit for bit: in 2 -> 2 the same
sharded computation on the same inputs; in 2 -> 1 the unsharded step fed the sharded run's
gradients, which equals the sharded step bit for bit for every elementwise rule (argument and
test in ``tests/test_fsdp.py``: each shard runs the whole tensor's kernel on its elements,
and bfloat16 stochastic rounding hashes the element's global index). The optimizers whose
step sums over whole tensors or groups (:data:`SUMMED`) all-reduce the shards' sums, in another
order than one process adds them: 2 -> 1 holds them to that rounding's bound instead.

**DCP's lr=0 step.** A fresh optimizer has no state for DCP to load into, so
``get_optimizer_state_dict`` and ``set_optimizer_state_dict`` first take one step with
all-zero gradients and every group's ``lr`` set to 0 (then restore the lr and set the
gradients to ``None``). That step must change no parameter and leave no NaN or inf in the
states: ``test_dcp_initial_step_changes_nothing`` checks it for every optimizer in one process,
and the 2 -> 2 load checks it on the sharded model. (It does advance the step counts to 1;
the load then overwrites them with the saved ones.)
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from distutil import (
    Case,
    assert_equal_states,
    batch,
    full,
    gloo_group,
    launch,
    loss_of,
    make_model,
    make_optimizer,
    named_cases,
    selected_ids,
    state_tensors,
    trained_params,
)
from reference import max_relative_error
from torch import Tensor, nn

BEFORE = 2
AFTER = 2
CASES = named_cases()
BY_ID = {c.id: c for c in CASES}


def sharded_model() -> nn.Module:
    """The MLP, each linear layer and the root sharded by FSDP2 over all the ranks."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    model = make_model()
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _values(params: list[Tensor]) -> list[Tensor]:
    return [full(p.detach()).clone() for p in params]


def _finite_states(opt: torch.optim.Optimizer) -> bool:
    return all(torch.isfinite(full(v)).all() for st in opt.state.values() for v in st.values()
               if isinstance(v, Tensor) and (v.is_floating_point() or v.is_complex()))


def load(model: nn.Module, opt: torch.optim.Optimizer, path: Path) -> dict[str, Any]:
    """Load the checkpoint at ``path`` into ``model`` and ``opt`` (fresh) the DCP way; what
    DCP's lr=0 initial step did (parameters unchanged, states finite)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    before = _values(list(model.parameters()))
    sd = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
    init = {"unchanged": all(torch.equal(a, b) for a, b in
                             zip(before, _values(list(model.parameters())))),
            "finite": _finite_states(opt)}
    dcp.load(sd, checkpoint_id=str(path))
    set_model_state_dict(model, sd["model"])
    set_optimizer_state_dict(model, opt, sd["optim"])
    return init


def _steps(model: nn.Module, opt: torch.optim.Optimizer, params: list[Tensor], rank: int,
           start: int, count: int) -> list[list[Tensor]]:
    """``count`` steps on rank ``rank``'s data from step ``start``; their gathered gradients."""
    grads = []
    for step in range(start, start + count):
        opt.zero_grad()
        loss_of(model, batch(rank, step)).backward()
        grads.append([full(p.grad).clone() for p in params])
        opt.step()
    return grads


def save_case(case: Case, rank: int, root: Path) -> dict[str, Any]:
    """Mode "save" for one case: train, save, go on (module docstring, 1)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    model = sharded_model()
    opt = make_optimizer(case, model)
    params = trained_params(case.name, model)
    _steps(model, opt, params, rank, 0, BEFORE)
    dcp.save({"model": get_model_state_dict(model),
              "optim": get_optimizer_state_dict(model, opt)}, checkpoint_id=str(root / case.id))
    saved = {"params": _values(params), "states": state_tensors(opt, params)}
    grads = _steps(model, opt, params, rank, BEFORE, AFTER)
    return {"saved": saved, "grads": grads, "params": _values(params),
            "states": state_tensors(opt, params)}


def load_case(case: Case, rank: int, root: Path) -> dict[str, Any]:
    """Mode "load" for one case: a fresh sharded run loads and goes on (module docstring, 2)."""
    model = sharded_model()
    opt = make_optimizer(case, model)
    params = trained_params(case.name, model)
    init = load(model, opt, root / case.id)
    loaded = {"params": _values(params), "states": state_tensors(opt, params)}
    _steps(model, opt, params, rank, BEFORE, AFTER)
    return {"init": init, "loaded": loaded, "params": _values(params),
            "states": state_tensors(opt, params)}


def worker(rank: int, store_path: str, mode: str, ids: list[str], root: str) -> None:
    """One rank: run ``mode`` ("save" or "load") for ``ids``; rank 0 saves the results."""
    run = save_case if mode == "save" else load_case
    with gloo_group(rank, store_path):
        results = {i: run(BY_ID[i], rank, Path(root)) for i in ids}
        if rank == 0:
            torch.save(results, Path(root) / f"{mode}.pt")


# ----- the tests ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
         ) -> dict[str, Any]:
    """Both launches (save, then load 2 -> 2) of every case selected in this session, and the
    checkpoints' folder."""
    ids = selected_ids(request)
    root = tmp_path_factory.mktemp("dcp")
    out: dict[str, Any] = {"root": root}
    for mode in ("save", "load"):
        launch(__file__, root, [mode, json.dumps(ids), str(root)], tag=mode)
        out[mode] = torch.load(root / f"{mode}.pt", weights_only=True)
    return out


@contextmanager
def one_thread() -> Iterator[None]:
    """One torch thread, as in the launched ranks (matrix products, such as Newton-Schulz
    iterations, may split their sums by thread)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _equal(got: list[Tensor], want: list[Tensor]) -> None:
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)


#: Optimizers whose step sums over whole tensors or a whole group (the hypergradient's dot
#: product, Prodigy's distance sums, Adafactor's column means and RMS norms): sharded, each rank
#: sums its shards and an all-reduce adds the ranks' sums, an order of additions other than the
#: unsharded sum's. A cascade sum of <= 4096 terms errs by ~12 roundings (~7e-7 relative); the
#: sum sets a scale of the update (the adapted rate, ``d``, a second-moment factor, a clipping or
#: parameter scale) and the update is a small fraction of the weights: as
#: ``tests/test_fsdp.py``'s global norm, ``1e-6`` relative on the parameters and states after
#: ``AFTER`` steps. With
#: bfloat16 states a value that far off may round to the neighbouring bf16 number (one bf16 ulp,
#: 2**-8 relative) at each of the ``AFTER`` steps: ``AFTER * 2**-8`` there.
SUMMED = frozenset({"sgdhd", "adamhd", "prodigy", "adafactor"})
SUMMED_RTOL = 1e-6


def _close(got: list[Tensor], want: list[Tensor], rtol: float) -> None:
    err = max_relative_error([a.double() for a in got], [b.double() for b in want])
    assert err <= rtol, f"relative error {err:.2e} > {rtol:.1e}"


def _close_states(got: list[dict[str, Any]], want: list[dict[str, Any]], rtol: float) -> None:
    assert [sorted(s) for s in got] == [sorted(s) for s in want]
    for a, b in zip(got, want, strict=True):
        for k, v in a.items():
            if isinstance(v, Tensor):
                assert v.dtype == b[k].dtype, k
                _close([v], [b[k]], rtol)
            else:
                assert v == b[k], k


# Each case takes well under a second in the launches, which cost ~15 s each whatever runs.
@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_dcp_two_to_two(case: Case, runs: dict[str, Any]) -> None:
    saved, loaded = runs["save"][case.id], runs["load"][case.id]
    assert loaded["init"] == {"unchanged": True, "finite": True}
    _equal(loaded["loaded"]["params"], saved["saved"]["params"])
    assert_equal_states(loaded["loaded"]["states"], saved["saved"]["states"])
    _equal(loaded["params"], saved["params"])
    assert_equal_states(loaded["states"], saved["states"])


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_dcp_two_to_one(case: Case, runs: dict[str, Any]) -> None:
    saved = runs["save"][case.id]
    with one_thread():
        model = make_model()
        opt = make_optimizer(case, model)
        params = trained_params(case.name, model)
        load(model, opt, runs["root"] / case.id)
        _equal(_values(params), saved["saved"]["params"])
        assert_equal_states(state_tensors(opt, params), saved["saved"]["states"])
        for grads in saved["grads"]:
            for p, g in zip(params, grads, strict=True):
                p.grad = g.clone()
            opt.step()
    if case.name in SUMMED:  # the sums' order differs (see SUMMED)
        rtol = AFTER * 2.0**-8 if case.bf16 else SUMMED_RTOL
        _close(_values(params), saved["params"], rtol)
        _close_states(state_tensors(opt, params), saved["states"], rtol)
        return
    _equal(_values(params), saved["params"])
    assert_equal_states(state_tensors(opt, params), saved["states"])


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_dcp_initial_step_changes_nothing(case: Case) -> None:
    """DCP's lr=0, zero-gradient step on a fresh optimizer (one process, unsharded)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    model = make_model()
    opt = make_optimizer(case, model)
    before = _values(list(model.parameters()))
    lr = [g["lr"] for g in opt.param_groups]
    get_optimizer_state_dict(model, opt)
    assert opt.state  # the step made the states
    _equal(_values(list(model.parameters())), before)
    assert _finite_states(opt)
    assert [g["lr"] for g in opt.param_groups] == lr
    assert all(p.grad is None for p in model.parameters())


if __name__ == "__main__":
    worker(int(sys.argv[1]), sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), sys.argv[5])
