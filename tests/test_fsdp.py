"""FSDP2 (``torch.distributed.fsdp.fully_shard``): every optimizer steps DTensor parameters.

Two processes (gloo, CPU) shard a small MLP with ``fully_shard`` and train it a few steps with
each case of :data:`CASES`, each rank on its own data; rank 0 gathers, with
``DTensor.full_tensor()``, the initial parameters, every step's gradients (as FSDP2
reduce-scattered them: the average over the ranks) and the final parameters, states and weight
averages. The test replays the same gradients on an unsharded copy of the model in this process,
with torch.optim where it has the optimizer and the option, else with optimlab unsharded with
the same options (for ``fused=True`` with bfloat16 states, compiled too), and compares.

All cases run in one launch of the two processes (one start, one gloo set-up, one ``import
torch`` per rank), and only the cases of the selected tests: ``-m "not slow"`` leaves out the
compiled (``fused=True``) ones. A hang cannot stall CI: a collective times out after
``distutil.COLLECTIVE_TIMEOUT_S`` and the launch is killed after ``distutil.LAUNCH_TIMEOUT_S``.

Tolerances (errors are :func:`reference.max_relative_error`, per tensor ``||a - b|| / ||b||``):

* The reference is fed the very gradients the sharded run used, so the comparison measures the
  optimizer alone. Recomputing them unsharded would sum the batch in another order than FSDP2's
  average of the ranks' gradients: a relative error of a few ulps per gradient entry, unbounded
  for an entry that cancels to ~0, whose Adam step (``g / |g|`` at the first step) could flip
  sign: a difference of ``2 lr`` in one weight, far above any fp32 rounding bound.
* Against torch.optim, eager or compiled, and the EMA/SWA averages against
  ``torch.optim.swa_utils.AveragedModel``: the same formulas with a few operations in another
  order (or fused by inductor). Per step a weight gets one rounding of the addition (half an
  ulp, 2**-24 ~ 6e-8 relative) and the roundings of an update that is at most ~0.15 of the
  weight here (lr ~1e-2 against weights ~0.1), so at most ~1 ulp (1.2e-7) of difference per
  step even with every rounding aligned: <= 5e-7 after ``STEPS`` = 4 steps for optimlab eager
  against torch.optim, and compiling adds no more roundings than it fuses away. Bound
  ``1e-6``, as ``test_parity``'s over 50 steps (where the roundings walk at random).
* The chain against optimlab unsharded: the global gradient norm is summed shard by shard and
  then across the ranks. A cascade sum of <= 4096 squares errs by <= ~12 roundings, ~7e-7
  relative, half that on the norm: every update is scaled by ``1 +- 4e-7``, which moves a
  weight by <= 0.15 * 4e-7 per step, ~2.4e-7 in 4 steps. Bound ``1e-6`` on the weights, the
  states and the reported ``grad_norm``.
* Every other case against optimlab unsharded with the same options (bfloat16 states, eager or
  compiled; Lookahead): bit for bit. Each rule is elementwise and made of correctly rounded
  operations; a DTensor op runs on each local shard the kernel the unsharded step runs on the
  whole tensor (compiled: the kernel inductor generates from the same expression), and every
  shard holds a multiple of 32 elements (``distutil.WIDTH``), so each element takes the same
  vectorized code path, sharded or not: every element sees the same operations on the same
  inputs. The
  stochastic rounding of bfloat16 states hashes the element's index in the *global* tensor
  (``optimlab.precision``), so the noise is the same too; with the index within the shard,
  about half the elements of the second shard would round the other way.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from distutil import (
    batch,
    full,
    gloo_group,
    launch,
    make_model,
    selected_ids,
)
from reference import max_relative_error
from torch import Tensor, nn

import optimlab as ol

STEPS = 4
#: Parameters and weight averages against torch.optim / AveragedModel, eager or compiled.
TORCH_RTOL = 1e-6
#: The chain, whose gradient norm is summed shard by shard, against optimlab unsharded.
GLOBAL_NORM_RTOL = 1e-6


#: Optimizers whose step sums over whole tensors or a whole group, across the shards (see the
#: module docstring): the chain's global norm, the hypergradient's dot product, Prodigy's sums.
SUMMED = frozenset({"chain", "SGDHD", "AdamHD", "Prodigy"})


@dataclass(frozen=True)
class Case:
    """One optimizer configuration: how it is built, and what it is compared with."""

    id: str
    name: str  # the class in optimlab and (where it exists) torch.optim; "chain": chain_rules()
    kwargs: dict[str, Any] = field(default_factory=dict)
    fused: bool = False
    bf16: bool = False  # state_dtype=torch.bfloat16
    wrapper: str = ""  # "", "lookahead", "ema" or "swa"

    @property
    def options(self) -> dict[str, Any]:
        """optimlab's keyword arguments."""
        extra: dict[str, Any] = {"fused": True} if self.fused else {}
        if self.bf16:
            extra["state_dtype"] = torch.bfloat16
        return {**self.kwargs, **extra}

    @property
    def torch_reference(self) -> bool:
        """Whether torch.optim is the reference (else optimlab, unsharded, same options)."""
        return hasattr(torch.optim, self.name) and not self.bf16 and self.wrapper != "lookahead"

    @property
    def bit_exact(self) -> bool:
        """Whether the sharded run must equal its optimlab reference bit for bit (see module)."""
        return not self.torch_reference and self.name not in SUMMED


def chain_rules() -> list[ol.transforms.Transform]:
    """The other rules, in one chain: a global statistic (the gradient norm), elementwise
    clipping, Adam and an L1 proximal step (``clip_by_global_norm`` clips at every step here)."""
    T = ol.transforms
    return [T.clip_by_global_norm(0.05), T.clip_by_value(0.01), T.scale_by_adam(),
            T.l1_proximal(1e-2)]


SGD_MOMENTUM = dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=1e-2)
CASES = [
    Case("sgd", "SGD", dict(lr=0.1)),
    Case("sgd-momentum", "SGD", {**SGD_MOMENTUM, "maximize": True}),
    Case("sgd-nesterov", "SGD", dict(lr=0.1, momentum=0.9, nesterov=True)),
    Case("adagrad", "Adagrad", dict(lr=0.1, lr_decay=1e-2, weight_decay=1e-2,
                                    initial_accumulator_value=0.1)),
    Case("rmsprop-momentum", "RMSprop", dict(lr=1e-3, momentum=0.9, weight_decay=1e-2)),
    Case("rmsprop-centered", "RMSprop", dict(lr=1e-3, momentum=0.5, centered=True)),
    Case("adam", "Adam", dict(lr=1e-2, weight_decay=1e-2)),
    Case("adam-amsgrad", "Adam", dict(lr=1e-2, amsgrad=True)),
    Case("adamw", "AdamW", dict(lr=1e-2, weight_decay=0.1)),
    Case("nadam", "NAdam", dict(lr=1e-2, weight_decay=1e-2)),
    Case("radam", "RAdam", dict(lr=1e-2, weight_decay=1e-2, decoupled_weight_decay=True)),
    Case("adadelta", "Adadelta", dict(lr=1.0, weight_decay=1e-2)),
    Case("adamax", "Adamax", dict(lr=1e-2, weight_decay=1e-2)),
    Case("chain", "chain", dict(lr=1e-2)),
    Case("adamw-bf16", "AdamW", dict(lr=1e-2, weight_decay=0.1), bf16=True),
    Case("sgd-nesterov-bf16", "SGD", dict(lr=0.1, momentum=0.9, nesterov=True), bf16=True),
    Case("rmsprop-centered-bf16", "RMSprop", dict(lr=1e-3, momentum=0.5, centered=True),
         bf16=True),
    Case("adamax-bf16", "Adamax", dict(lr=1e-2), bf16=True),
    Case("lookahead", "SGD", SGD_MOMENTUM, wrapper="lookahead"),
    Case("ema", "SGD", SGD_MOMENTUM, wrapper="ema"),
    Case("swa", "Adam", dict(lr=1e-2), wrapper="swa"),
    # the modern optimizers (defaults); Muon is left to tests/test_dcp.py, which gives it the
    # matrices only (this model's biases belong to AdamW)
    Case("lion", "Lion", dict(lr=1e-3)),
    Case("rprop", "Rprop"),
    Case("asgd", "ASGD", dict(lr=1e-2, t0=2)),  # averaging from step 2: ax is exercised
    Case("adafactor", "Adafactor"),
    Case("sgdhd", "SGDHD", dict(lr=1e-2)),
    Case("adamhd", "AdamHD", dict(lr=1e-2)),
    Case("prodigy", "Prodigy", dict(d0=1e-3)),  # d0=1e-6 moves the weights too little here
    Case("schedulefreeadamw", "ScheduleFreeAdamW", dict(lr=1e-2)),
    Case("schedulefreesgd", "ScheduleFreeSGD", dict(lr=0.1)),
    # compiled: a few seconds to a minute of compiling each (slow)
    Case("adam-amsgrad-fused", "Adam", dict(lr=1e-2, amsgrad=True), fused=True),
    Case("adamw-fused-bf16", "AdamW", dict(lr=1e-2, weight_decay=0.1), fused=True, bf16=True),
]
BY_ID = {c.id: c for c in CASES}
EMA_DECAY = 0.5
LOOKAHEAD = dict(k=2, alpha=0.5)


def build(case: Case, model: nn.Module) -> tuple[Any, Any]:
    """optimlab's optimizer of ``case`` over ``model``, and its weight average (or ``None``)."""
    if case.name == "chain":
        opt: Any = ol.chain(model.parameters(), *chain_rules(), **case.options)
    else:
        opt = getattr(ol, case.name)(model.parameters(), **case.options)
    if case.wrapper == "lookahead":
        opt = ol.Lookahead(opt, **LOOKAHEAD)
    average = None
    if case.wrapper == "ema":
        average = ol.EMA(model, decay=EMA_DECAY)
    elif case.wrapper == "swa":
        average = ol.SWA(model)
    return opt, average


# ----- the two ranks --------------------------------------------------------------------------


def run_sharded(case: Case, rank: int) -> dict[str, Any]:
    """Train the FSDP2-sharded model with ``case``; the gathered tensors of the run."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (torch.distributed.get_world_size(),))
    model = make_model()
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt, average = build(case, model)
    params = list(model.parameters())
    out: dict[str, Any] = {"init": [full(p.detach()) for p in params], "grads": []}
    for step in range(STEPS):
        x, y = batch(rank, step)
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        out["grads"].append([full(p.grad) for p in params])
        opt.step()
        if average is not None:
            average.update()
    out["params"] = [full(p.detach()) for p in params]
    inner = opt.optimizer if case.wrapper == "lookahead" else opt
    out["states"] = [{k: full(v) for k, v in sorted(inner.state[p].items())} for p in params]
    out["info"] = {k: full(v) for k, v in getattr(inner, "info", {}).items()}
    if average is not None:
        out["averages"] = [full(average.averages[n]) for n, _ in model.named_parameters()]
    return out


def worker(rank: int, store_path: str, case_ids: list[str], out_path: str) -> None:
    """One rank: run ``case_ids`` in order; rank 0 saves the results to ``out_path``."""
    with gloo_group(rank, store_path):
        results = {cid: run_sharded(BY_ID[cid], rank) for cid in case_ids}
        if rank == 0:
            torch.save(results, out_path)


# ----- the test -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sharded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> dict[str, Any]:
    """The sharded runs of every case selected in this session, from one launch of the two
    ranks (a rank that fails ends the other, which would otherwise wait in a collective)."""
    tmp = tmp_path_factory.mktemp("fsdp")
    launch(__file__, tmp, [json.dumps(selected_ids(request)), str(tmp / "results.pt")])
    return torch.load(tmp / "results.pt", weights_only=True)


def replay(case: Case, run: dict[str, Any], library: Any) -> tuple[nn.Module, Any, Any]:
    """The unsharded model stepped by ``library``'s optimizer with the sharded run's
    gradients; returns the model, the optimizer and the weight average."""
    model = make_model()
    with torch.no_grad():
        for p, p0 in zip(model.parameters(), run["init"], strict=True):
            p.copy_(p0)
    swa_utils = torch.optim.swa_utils
    if library is ol:
        opt, average = build(case, model)
    else:
        opt = getattr(library, case.name)(model.parameters(), **case.kwargs)
        average = None
        if case.wrapper == "ema":
            average = swa_utils.AveragedModel(
                model, multi_avg_fn=swa_utils.get_ema_multi_avg_fn(EMA_DECAY))
        elif case.wrapper == "swa":
            average = swa_utils.AveragedModel(model)
    for grads in run["grads"]:
        for p, g in zip(model.parameters(), grads, strict=True):
            p.grad = g.clone()
        opt.step()
        if isinstance(average, swa_utils.AveragedModel):
            average.update_parameters(model)
        elif average is not None:
            average.update()
    return model, opt, average


def _values(model: nn.Module) -> list[Tensor]:
    return [p.detach() for p in model.parameters()]


# Every case is slow: one launch of two gloo processes costs ~15 s on 2 cores whatever runs
# in it (the quick loop, -m "not slow", stays under a minute); CI runs them all.
@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_sharded_step_matches_unsharded(case: Case, sharded: dict[str, Any]) -> None:
    run = sharded[case.id]
    params = run["params"]
    assert max_relative_error(params, run["init"]) > 1e-3  # the steps did move the weights
    if case.torch_reference:
        model, _, average = replay(case, run, torch.optim)
        assert max_relative_error(params, _values(model)) <= TORCH_RTOL
        if average is not None:
            assert max_relative_error(run["averages"], _values(average.module)) <= TORCH_RTOL
        return
    model, opt, _ = replay(case, run, ol)
    inner = opt.optimizer if case.wrapper == "lookahead" else opt
    states = [inner.state[p] for p in model.parameters()]
    assert [st.keys() for st in run["states"]] == [st.keys() for st in states]
    if not case.bit_exact:  # the chain: a global norm summed in another order (see module)
        assert max_relative_error(params, _values(model)) <= GLOBAL_NORM_RTOL
        for got, want in zip(run["states"], states, strict=True):
            assert max_relative_error([got[k] for k in want], list(want.values())) \
                <= GLOBAL_NORM_RTOL
        if case.name == "chain":
            assert abs(float(run["info"]["grad_norm"]) / float(opt.info["grad_norm"]) - 1) \
                <= GLOBAL_NORM_RTOL
        return
    for got, want in zip(params, _values(model), strict=True):
        assert torch.equal(got, want)
    for got, want in zip(run["states"], states, strict=True):
        for k, v in got.items():
            assert v.dtype == want[k].dtype, k
            if case.bf16 and v.dim() > 0:
                assert v.dtype == torch.bfloat16, k
            assert torch.equal(v, want[k]), k


if __name__ == "__main__":
    worker(int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]), sys.argv[4])
