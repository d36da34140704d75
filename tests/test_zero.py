"""ZeroRedundancyOptimizer(optimizer_class=ol.X): every optimizer, sharded by parameter.

``torch.distributed.optim.ZeroRedundancyOptimizer`` gives each rank whole parameters (a
greedy partition by size): rank ``r`` builds ``ol.X`` over its share only, steps it with the
all-reduced gradients, then broadcasts its updated parameters to the others. Two processes
(gloo, CPU) train the DDP-wrapped MLP of :mod:`distutil` ``STEPS`` steps so, with every
optimizer of ``optimlab.OPTIMIZERS`` (its defaults, float32 states); rank 0 runs the
single-process reference in the same process, fed DDP's very gradients (bit for bit, see
:func:`distutil.global_grads`). An elementwise rule computes each element from that element
alone, so the step of a share is the step of the whole restricted to it, and the parameters
and states must agree with the reference bit for bit (a bound below the issue's 1e-6). The
consolidated state dict (``consolidate_state_dict`` then ``state_dict`` on rank 0) must be the
reference's, and load into a plain ``ol.X`` over the whole model.

**Cross-parameter statistics see only the rank's share.** A rule that reduces over all the
parameters of its optimizer (``transforms.clip_by_global_norm`` in ``ol.chain``, and any
shared preconditioner) reduces, under ZeRO, over the parameters of the rank's local optimizer:
each rank clips its share by its share's norm. The update then differs from the single-process
one whenever the clip is active (the per-share norms are each below the global one, so the
clip is weaker). The test ``test_global_norm_is_per_share`` pins that definition: ZeRO's
chain equals, share by share, the chain built over that share alone, and differs from the
chain over the whole model. To clip by the true global norm under ZeRO, clip in the training
loop (``torch.nn.utils.clip_grad_norm_`` over all the parameters, before ``zero.step()``; the
gradients are all-reduced and whole on every rank), as the lab's ``clip_norm`` does: it clips
in the closure, before the optimizer sees the gradients.

bfloat16 states are not compared here: their stochastic rounding hashes the element's
position in its optimizer's buckets, which differs between a share and the whole model, so
ZeRO's bfloat16 states are rounded with other (equally unbiased) noise than one process's.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
import torch
from distutil import (
    Case,
    assert_equal_states,
    batch,
    gather_objects,
    global_grads,
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
from torch import Tensor, nn

import optimlab as ol

STEPS = 3
#: Far below this MLP's gradient norms (~0.1 to 1): the clip is active at every step.
MAX_NORM = 1e-3
CHAIN_LR = 1e-2
CASES = named_cases(bf16=False)
BY_ID = {c.id: c for c in CASES}
CHAIN_ID = "chain-global-norm"


def clipped_adam(params: Any, lr: float = CHAIN_LR) -> torch.optim.Optimizer:
    """A chain with a cross-parameter statistic: global-norm clipping, then Adam."""
    T = ol.transforms
    return ol.chain(params, T.clip_by_global_norm(MAX_NORM), T.scale_by_adam(), lr=lr)


# ----- the two ranks --------------------------------------------------------------------------


def _train(zero: Any, ddp: nn.Module, rank: int) -> None:
    for step in range(STEPS):
        zero.zero_grad()
        loss_of(ddp, batch(rank, step)).backward()
        zero.step()


def _owned(zero: Any, params: list[Tensor]) -> list[int]:
    """The indices in ``params`` of the parameters of this rank's local optimizer."""
    mine = {id(p) for g in zero.optim.param_groups for p in g["params"]}
    return [i for i, p in enumerate(params) if id(p) in mine]


def _reference(model: nn.Module, opt: torch.optim.Optimizer, params: list[Tensor]) -> None:
    for step in range(STEPS):
        for p, g in zip(params, global_grads(model, params, step)):
            p.grad = g
        opt.step()


def run_case(case: Case, rank: int) -> dict[str, Any] | None:
    """ZeRO with ``ol.OPTIMIZERS[case.name]``; on rank 0, the run and its reference."""
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = make_model()
    ddp = DDP(model)
    params = trained_params(case.name, model)
    zero = ZeroRedundancyOptimizer(params, optimizer_class=ol.OPTIMIZERS[case.name],
                                   **case.options)
    _train(zero, ddp, rank)
    owners = gather_objects(_owned(zero, params))
    zero.consolidate_state_dict(to=0)
    if rank != 0:
        return None
    consolidated = zero.state_dict()
    ref_model = make_model()
    ref = make_optimizer(case, ref_model)
    ref_params = trained_params(case.name, ref_model)
    _reference(ref_model, ref, ref_params)
    plain_model = make_model()
    plain = make_optimizer(case, plain_model)
    plain.load_state_dict(consolidated)
    return {"params": [p.detach() for p in params], "owners": owners,
            "consolidated": state_tensors(plain, trained_params(case.name, plain_model)),
            "ref_params": [p.detach() for p in ref_params],
            "ref_states": state_tensors(ref, ref_params)}


def run_chain(rank: int) -> dict[str, Any] | None:
    """ZeRO with :func:`clipped_adam`; on rank 0, the run, the shares and two references: the
    chain over each share alone, and the chain over the whole model."""
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = make_model()
    ddp = DDP(model)
    params = list(model.parameters())
    zero = ZeroRedundancyOptimizer(params, optimizer_class=clipped_adam, lr=CHAIN_LR)
    _train(zero, ddp, rank)
    owners = gather_objects(_owned(zero, params))
    if rank != 0:
        return None
    per_share = make_model()
    share_params = list(per_share.parameters())
    shares = [clipped_adam([share_params[i] for i in owned]) for owned in owners]
    for step in range(STEPS):
        for p, g in zip(share_params, global_grads(per_share, share_params, step)):
            p.grad = g
        for opt in shares:
            opt.step()
    whole = make_model()
    _reference(whole, clipped_adam(whole.parameters()), list(whole.parameters()))
    return {"params": [p.detach() for p in params], "owners": owners,
            "per_share": [p.detach() for p in share_params],
            "whole": [p.detach() for p in whole.parameters()]}


def worker(rank: int, store_path: str, ids: list[str], out_path: str) -> None:
    """One rank: run ``ids`` in order; rank 0 saves the results to ``out_path``."""
    with gloo_group(rank, store_path):
        results = {i: run_chain(rank) if i == CHAIN_ID else run_case(BY_ID[i], rank)
                   for i in ids}
        if rank == 0:
            torch.save(results, out_path)


# ----- the tests ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
         ) -> dict[str, Any]:
    """The ZeRO runs of every case selected in this session, from one launch."""
    ids = selected_ids(request)
    if any(item.module is request.module and item.name == "test_global_norm_is_per_share"
           for item in request.session.items):
        ids.append(CHAIN_ID)
    tmp = tmp_path_factory.mktemp("zero")
    launch(__file__, tmp, [json.dumps(ids), str(tmp / "results.pt")])
    return torch.load(tmp / "results.pt", weights_only=True)


def _check_partition(owners: list[list[int]], n: int) -> None:
    """Every parameter is owned by exactly one rank, and each rank owns some."""
    assert sorted(i for owned in owners for i in owned) == list(range(n))
    assert all(owners)


#: Optimizers with a statistic over all of a group's elements (hypergradient dot products,
#: Prodigy's distance estimate): under ZeroRedundancyOptimizer each rank's optimizer sees
#: only its share of the parameters, so the statistic is the share's.
GROUP_STATISTICS = {"sgdhd", "adamhd", "prodigy"}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_zero_step_matches_single_process(case: Case, runs: dict[str, Any]) -> None:
    run = runs[case.id]
    _check_partition(run["owners"], len(run["params"]))
    if case.name in GROUP_STATISTICS:
        # their rate / distance estimate is a statistic over the group, which under ZeRO is
        # the rank's share: a different (documented) optimizer than on the whole model
        assert all(torch.isfinite(p).all() for p in run["params"])
        assert any(not torch.equal(a, b) for a, b in zip(run["params"], run["ref_params"]))
        return
    for a, b in zip(run["params"], run["ref_params"], strict=True):
        assert torch.equal(a, b)
    assert_equal_states(run["consolidated"], run["ref_states"])


def test_global_norm_is_per_share(runs: dict[str, Any]) -> None:
    run = runs[CHAIN_ID]
    _check_partition(run["owners"], len(run["params"]))
    for a, b in zip(run["params"], run["per_share"], strict=True):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(run["params"], run["whole"]))


if __name__ == "__main__":
    worker(int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]), sys.argv[4])
