"""Muon: a reference written from the paper, parity with torch.optim.Muon, the compiled path,
checkpoints, refusals, and the Muon/AdamW parameter split on a small transformer-like model."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from optimlab import ops
from optimlab.optimizers.muon import Muon, muon_param_groups

COEFFS = (3.4445, -4.775, 2.0315)


# ----- a reference from the paper ----------------------------------------------------------------
def ns_bf16(m: Tensor, coeffs: tuple[float, float, float], steps: int, eps: float) -> Tensor:
    """Newton-Schulz as Keller Jordan's post specifies it, including its arithmetic: bfloat16
    throughout, the wide orientation, ``X / max(||X||, eps)``, then ``X <- aX + (bA + cA^2)X``
    with ``A = X X^T``, each sum a single bf16 rounding (addmm). A bf16 result is a
    discontinuous function of its input, so a reference must reproduce this arithmetic to be
    compared below bf16's 2**-8."""
    a, b, c = coeffs
    x = m.to(torch.bfloat16)
    wide = x.shape[0] <= x.shape[1]
    x = x if wide else x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return (x if wide else x.T).to(m.dtype)


def reference_run(p0: Tensor, grads: list[Tensor], *, lr: float, weight_decay: float,
                  momentum: float, nesterov: bool, ns_steps: int, eps: float,
                  adjust_lr_fn: str | None, maximize: bool) -> Tensor:
    """Muon from the paper, one matrix, in ``p0``'s dtype (float64: the formula as written;
    float32: the momentum evaluated by torch.lerp, whose rounding the optimizer shares, so
    that the bf16 input of Newton-Schulz is the same bits)."""
    p = p0.clone()
    buf = torch.zeros_like(p)
    rows, cols = p.shape
    factor = (0.2 * math.sqrt(max(rows, cols)) if adjust_lr_fn == "match_rms_adamw"
              else math.sqrt(max(1.0, rows / cols)))
    for g in grads:
        g = -g if maximize else g
        if p.dtype == torch.float64:
            buf = momentum * buf + (1 - momentum) * g
            m = (1 - momentum) * g + momentum * buf if nesterov else buf
        else:
            buf = torch.lerp(buf, g, 1 - momentum)
            m = torch.lerp(g, buf, momentum) if nesterov else buf
        o = ns_bf16(m, COEFFS, ns_steps, eps)
        p = p - lr * weight_decay * p - lr * factor * o
    return p


OPTIONS = st.fixed_dictionaries(dict(
    lr=st.sampled_from([0.01, 0.05, 0.2]), weight_decay=st.sampled_from([0.0, 0.1]),
    momentum=st.sampled_from([0.0, 0.5, 0.95]), nesterov=st.booleans(),
    ns_steps=st.sampled_from([1, 3, 5]), eps=st.sampled_from([1e-7, 1e-3]),
    adjust_lr_fn=st.sampled_from([None, "original", "match_rms_adamw"]),
    maximize=st.booleans()))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@settings(max_examples=20, deadline=None)
@given(kw=OPTIONS, rows=st.integers(1, 7), cols=st.integers(1, 7), seed=st.integers(0, 99))
def test_matches_reference_from_the_paper(dtype: torch.dtype, kw: dict[str, Any], rows: int,
                                          cols: int, seed: int) -> None:
    # Gradients do not depend on p, so both sides orthogonalize the same bf16 input
    # (float64: both momenta are within 1e-16 relative, and a bf16 rounding flips only for
    # an input within that of a rounding boundary, probability ~2**-44 per element). They
    # then differ only in how p is rounded: float64, a few ulps over 4 steps (1e-10 leaves
    # a margin of 10**5); float32, at most 2 roundings per step each side, 4 steps:
    # <= 8 ulp = 9.5e-7 |p|, inside 1e-6 (1 + |p|).
    gen = torch.Generator().manual_seed(seed)
    p0 = torch.randn(rows, cols, generator=gen, dtype=torch.float64).to(dtype)
    grads = [torch.randn(rows, cols, generator=gen, dtype=torch.float64).to(dtype)
             for _ in range(4)]
    p = nn.Parameter(p0.clone())
    opt = Muon([p], **kw)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    tol = 1e-10 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(p.detach(), reference_run(p0, grads, **kw), rtol=tol, atol=tol)


def test_newton_schulz_polynomial_in_float64() -> None:
    # The op in float64 against the quintic written out (no addmm): float64 rounding over
    # 5 steps of O(1) matrices, ~1e-15; 1e-12 leaves room. Then what the iteration is for:
    # the singular vectors are kept (U^T O V diagonal) and the singular values land in the
    # band the coefficients were tuned for (about [0.68, 1.13], Jordan 2024).
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(5, 9, generator=gen, dtype=torch.float64)
    out = ops.newton_schulz([g], COEFFS, 5, 1e-7, dtype=torch.float64)[0]
    a, b, c = COEFFS
    x = g / g.norm()
    for _ in range(5):
        s = x @ x.T
        x = a * x + b * s @ x + c * s @ s @ x
    torch.testing.assert_close(out, x, rtol=1e-12, atol=1e-12)
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    core = u.T @ out @ vh.T
    assert (core - torch.diag(torch.diagonal(core))).abs().max() < 1e-12
    sv = torch.diagonal(core)
    assert sv.min() > 0.6 and sv.max() < 1.2
    tall = ops.newton_schulz([g.T.contiguous()], COEFFS, 5, 1e-7, dtype=torch.float64)[0]
    torch.testing.assert_close(tall, out.T, rtol=1e-12, atol=1e-12)


# ----- torch.optim.Muon -------------------------------------------------------------------------
TORCH_OPTIONS = [dict(), dict(lr=0.05, weight_decay=0.01, momentum=0.5, nesterov=False),
                 dict(lr=0.02, ns_steps=3, eps=1e-3, adjust_lr_fn="match_rms_adamw"),
                 dict(lr=0.1, momentum=0.0, adjust_lr_fn="original", weight_decay=0.0)]
SHAPES = [(4, 6), (6, 4), (5, 5), (1, 3)]


def _params(dtype: torch.dtype, seed: int = 0) -> list[nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64).to(dtype))
            for s in SHAPES]


def _grads(params: list[Tensor], t: int, sign: float = 1.0) -> None:
    gen = torch.Generator().manual_seed(100 + t)
    for p in params:
        p.grad = sign * torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kw", TORCH_OPTIONS)
def test_matches_torch_muon_with_two_groups(dtype: torch.dtype, kw: dict[str, Any]) -> None:
    # Same momentum kernel (lerp) and the same bf16 Newton-Schulz ops, on gradients that do
    # not depend on p: the orthogonalized updates are the same bits. What differs is that
    # torch adds O with alpha = -lr * f rounded once, and we scale O by f, then by -lr: at most
    # 2 ulp of the update (lr * f * |O| < 0.2, so < 2 ulp of O(1) parameters) per step, 10
    # steps: 20 ulp of 2**-24 = 1.2e-6 absolute in the worst case; 2e-6 in float32,
    # 1e-12 in float64 (2**-52 * 20 steps * a few, with room).
    ps, qs = _params(dtype), _params(dtype)
    alt = dict(lr=0.03, momentum=0.9, weight_decay=0.2)
    ours = Muon([{"params": ps[:2]}, {"params": ps[2:], **alt}], **kw)
    ref = torch.optim.Muon([{"params": qs[:2]}, {"params": qs[2:], **alt}], **kw)
    for t in range(10):
        _grads(ps, t)
        _grads(qs, t)
        ours.step()
        ref.step()
    tol = 2e-6 if dtype == torch.float32 else 1e-12
    for p, q in zip(ps, qs):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=tol, atol=tol)
        assert torch.equal(ours.state[p]["momentum_buffer"], ref.state[q]["momentum_buffer"])


def test_state_dict_round_trip_and_interchange_with_torch() -> None:
    ps, qs = _params(torch.float32), _params(torch.float32)
    ours = Muon(ps, lr=0.02)
    for t in range(3):
        _grads(ps, t)
        ours.step()
    saved = copy.deepcopy(ours.state_dict())
    snapshot = [p.detach().clone() for p in ps]
    for t in range(3, 6):
        _grads(ps, t)
        ours.step()
    # our checkpoint, loaded by a fresh Muon and by torch.optim.Muon, continues identically
    for cls in (Muon, torch.optim.Muon):
        with torch.no_grad():
            for q, s in zip(qs, snapshot):
                q.copy_(s)
        other = cls(qs, lr=0.02)
        other.load_state_dict(copy.deepcopy(saved))
        for t in range(3, 6):
            _grads(qs, t)
            other.step()
        tol = 0.0 if cls is Muon else 2e-6  # torch's lr folding: see the test above
        for p, q in zip(ps, qs):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=tol, atol=tol)


def test_maximize_equals_minimizing_the_negated_gradient() -> None:
    ps, qs = _params(torch.float32), _params(torch.float32)
    up, down = Muon(ps, lr=0.05, maximize=True), Muon(qs, lr=0.05)
    for t in range(3):
        _grads(ps, t)
        _grads(qs, t, sign=-1.0)
        up.step()
        down.step()
    for p, q in zip(ps, qs):
        assert torch.equal(p, q)


def test_bfloat16_state_runs_and_descends() -> None:
    # A least-squares problem ||W X - Y||^2: bf16 momentum (2**-8 relative) is coarse, but
    # the step direction only needs to be a descent direction to halve the loss.
    gen = torch.Generator().manual_seed(0)
    x, w_true = torch.randn(8, 32, generator=gen), torch.randn(6, 8, generator=gen)
    w = nn.Parameter(torch.zeros(6, 8))
    opt = Muon([w], lr=0.05, state_dtype=torch.bfloat16)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = ((w @ x - w_true @ x) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert opt.state[w]["momentum_buffer"].dtype == torch.bfloat16
    assert math.isfinite(losses[-1]) and losses[-1] < 0.5 * losses[0]


@pytest.mark.slow
@pytest.mark.parametrize("momentum", [0.0, 0.95])
def test_compiled_step_equals_eager(momentum: float) -> None:
    # The compiled step runs the same bf16 Newton-Schulz ops (ops.newton_schulz keeps eager's
    # roundings under inductor) but gets lr, decay and momentum as float32 0-dim tensors, so
    # ops.lerp_ takes its ``x + w (y - x)`` form: the momentum buffers may differ by an ulp
    # per step (1e-6 relative covers 3 steps). With momentum 0 the Nesterov input is exactly
    # g on both paths, the bf16 inputs are the same bits, and p differs only in the final
    # add: <= 2 ulp of 2**-24 per step, 3 steps: 2e-6. With momentum, an ulp in the input
    # can flip one bf16 rounding (odds ~2**-15 per element), which moves O by bf16 ulps,
    # 2**-8 of its O(1) entries: the bound is then 3 steps * lr * f * 2**-5, 8 such ulps.
    ps, qs = _params(torch.float32), _params(torch.float32)
    kw = dict(lr=0.05, momentum=momentum, adjust_lr_fn="match_rms_adamw")
    alt = {"weight_decay": 0.2, "adjust_lr_fn": "original"}
    eager = Muon([{"params": ps[:2]}, {"params": ps[2:], **alt}], **kw)
    fused = Muon([{"params": qs[:2]}, {"params": qs[2:], **alt}], fused=True, **kw)
    for t in range(3):
        _grads(ps, t)
        _grads(qs, t)
        eager.step()
        fused.step()
    tol = 2e-6 if momentum == 0 else 3 * 0.05 * 0.2 * math.sqrt(6) * 2**-5
    for p, q in zip(ps, qs):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=tol, atol=tol)
        torch.testing.assert_close(eager.state[p]["momentum_buffer"],
                                   fused.state[q]["momentum_buffer"], rtol=1e-6, atol=1e-6)


# ----- refusals -----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(3,), (2, 2, 2), ()])
def test_non_matrix_parameters_are_refused_with_the_helper_named(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"muon_param_groups") as info:
        Muon([nn.Parameter(torch.zeros(2, 3)), nn.Parameter(torch.zeros(shape))])
    assert str(tuple(shape)) in str(info.value)
    opt = Muon([nn.Parameter(torch.zeros(2, 3))])
    with pytest.raises(ValueError, match="shape"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(shape))]})
    assert len(opt.param_groups) == 1
    with pytest.raises(RuntimeError, match="complex"):  # torch.optim.Muon's type
        Muon([nn.Parameter(torch.zeros(2, 3, dtype=torch.complex64))])


@pytest.mark.parametrize("kw, key", [
    (dict(lr=-1.0), "lr"), (dict(momentum=1.5), "momentum"), (dict(weight_decay=-0.1),
                                                                "weight_decay"),
    (dict(ns_steps=100), "ns_steps"), (dict(ns_steps=2.5), "ns_steps"), (dict(eps=0.0), "eps"),
    (dict(adjust_lr_fn="bogus"), "adjust_lr_fn"), (dict(ns_coefficients=(1.0, 2.0)),
                                                   "ns_coefficients"),
    (dict(nesterov=1), "nesterov")])
def test_bad_hyperparameters_name_the_argument(kw: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=key):
        Muon([nn.Parameter(torch.zeros(2, 3))], **kw)


# ----- the Muon/AdamW split -----------------------------------------------------------------------
class TinyLM(nn.Module):
    """Embedding, a pre-norm MLP block with a residual, a final norm and a head."""

    def __init__(self, vocab: int = 16, dim: int = 32, tie: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, 2 * dim)
        self.down = nn.Linear(2 * dim, dim, bias=False)
        self.norm2 = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        if tie:
            self.head.weight = self.embed.weight

    def forward(self, tokens: Tensor) -> Tensor:
        h = self.embed(tokens)
        h = h + self.down(torch.nn.functional.gelu(self.up(self.norm1(h))))
        return self.head(self.norm2(h))


def _ids(ps: list[nn.Parameter]) -> set[int]:
    return {id(p) for p in ps}


def test_split_puts_hidden_matrices_in_muon_and_the_rest_in_adamw() -> None:
    model = TinyLM()
    muon, adamw = muon_param_groups(model)
    assert _ids(muon) == {id(model.up.weight), id(model.down.weight)}
    assert _ids(adamw) == _ids(list(model.parameters())) - _ids(muon)
    # a named head, a parameter name, a tied embedding, frozen parameters, no head at all
    assert _ids(muon_param_groups(model, head=["up"])[0]) == {id(model.down.weight),
                                                              id(model.head.weight)}
    assert id(model.down.weight) in _ids(muon_param_groups(model, head=["down.weight"])[1])
    assert len(muon_param_groups(model, head=())[0]) == 3
    tied = TinyLM(tie=True)
    m, a = muon_param_groups(tied, head=())
    assert id(tied.embed.weight) in _ids(a) and id(tied.embed.weight) not in _ids(m)
    assert len(m) + len(a) == len(list(tied.parameters()))
    model.up.weight.requires_grad_(False)
    assert id(model.up.weight) not in _ids(muon_param_groups(model)[0])
    with pytest.raises(ValueError, match="nope"):
        muon_param_groups(model, head=["nope"])


def test_muon_plus_adamw_trains_a_tiny_language_model() -> None:
    # Next token of t -> (3t + 1) mod 16: a lookup the model learns to near zero loss from
    # log(16) = 2.77; halving it in 60 steps is a loose bar for a working optimizer pair.
    torch.manual_seed(0)
    model = TinyLM()
    muon, adamw = muon_param_groups(model)
    opts = [Muon(muon, lr=0.02), torch.optim.AdamW(adamw, lr=3e-3)]
    gen = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(60):
        tokens = torch.randint(0, 16, (32, 8), generator=gen)
        target = (3 * tokens + 1) % 16
        loss = nn.functional.cross_entropy(model(tokens).reshape(-1, 16), target.reshape(-1))
        for o in opts:
            o.zero_grad()
        loss.backward()
        for o in opts:
            o.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::10]
