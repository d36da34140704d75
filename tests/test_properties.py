"""Mathematical properties of the rules and the equivalences the library promises.

* Nesterov momentum in torch's form has the iterates of Sutskever's look-ahead form.
* AdamW's decay is decoupled from the adaptive denominator, Adam + L2's is not.
* ``l1_proximal`` (ISTA) gives exact zeros, plain SGD does not.
* A chain composed by hand equals its named optimizer bit for bit.
* The compiled (``fused=True``) path equals the eager one.
* ``clip_by_global_norm`` / ``clip_by_value`` equal torch.nn.utils' clipping followed by SGD.

Errors are measured by :func:`reference.max_relative_error` (per tensor
``||a - b|| / max(||b||, tiny)``, maximum over tensors).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from reference import max_relative_error
from torch._inductor.utils import run_and_get_code

import optimlab as ol
from optimlab import transforms as T

# ----- tolerances -----------------------------------------------------------------------------
#: Two float64 computations of the same iterates in different algebraic forms (Nesterov's two
#: forms over 100 steps): a few roundings of 1e-16 per step, in a contracting iteration.
FORM_RTOL_F64 = 1e-10
#: One float64 optimizer step against its closed form (AdamW vs Adam + L2, the ISTA fixed
#: point): a handful of roundings of 1e-16.
CLOSED_FORM_RTOL_F64 = 1e-12
#: Compiled vs eager in float32 over 10 steps: inductor fuses the chain, may reorder or
#: contract (FMA) operations, and passes the per-step scalars as float32 tensors (eager keeps
#: them as doubles); a few roundings of 6e-8 per step.
FUSED_RTOL_F32 = 1e-6
#: Clipping + SGD against torch.nn.utils' clipping + torch.optim.SGD in float64: the same
#: formulas; the global norm may sum its per-tensor norms in another order.
CLIP_RTOL_F64 = 1e-12

F64 = torch.float64


def rng_tensors(seed: int, shapes: list[tuple[int, ...]], dtype: torch.dtype = F64,
                scale: float = 1.0) -> list[torch.Tensor]:
    """Standard normal tensors (times ``scale``) from a numpy generator, for reproducibility."""
    rng = np.random.default_rng(seed)
    return [torch.tensor(scale * rng.standard_normal(s), dtype=dtype) for s in shapes]


def random_spd(rng: np.random.Generator, n: int, lo: float, hi: float) -> np.ndarray:
    """A random symmetric matrix with eigenvalues spread uniformly in ``[lo, hi]``."""
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (q * rng.uniform(lo, hi, n)) @ q.T


# ----- Nesterov -------------------------------------------------------------------------------


@pytest.mark.parametrize("mu", [0.5, 0.9, 0.99])
def test_nesterov_sgd_is_the_lookahead_form(mu: float) -> None:
    """torch's Nesterov SGD has the iterates of the look-ahead form (Sutskever et al., 2013).

    Look-ahead form, ``v_0 = 0``, ``theta_0 = p_0``::

        v_t = mu v_{t-1} + lr grad(theta_{t-1} - mu v_{t-1});   theta_t = theta_{t-1} - v_t

    torch's form (optimlab's ``trace(nesterov=True)``), ``b_1 = g_1``::

        g_t = grad(p_{t-1});  b_t = mu b_{t-1} + g_t;  p_t = p_{t-1} - lr (g_t + mu b_t)

    Claim: ``p_t = theta_t - mu v_t`` (the stored parameter is the look-ahead point) and
    ``v_t = lr b_t``. Induction: at ``t = 0``, ``p_0 = theta_0`` and ``v_0 = 0 = lr b_0`` (torch's
    ``b_1 = g_1`` is ``mu * 0 + g_1``). If both hold at ``t - 1``, the two forms evaluate the
    gradient at the same point, so they see the same ``g_t``; then
    ``v_t = mu v_{t-1} + lr g_t = lr (mu b_{t-1} + g_t) = lr b_t``, and::

        theta_t - mu v_t = theta_{t-1} - v_t - mu v_t
                         = (p_{t-1} + mu v_{t-1}) - (mu v_{t-1} + lr g_t) - mu v_t
                         = p_{t-1} - lr g_t - mu lr b_t = p_t.

    Checked at every step to FORM_RTOL_F64 in float64, for three momenta.
    """
    rng = np.random.default_rng(1)
    n, lr, steps = 10, 0.05, 100
    a = random_spd(rng, n, 0.1, 2.0)
    b = rng.standard_normal(n)
    p0 = rng.standard_normal(n)

    p = torch.tensor(p0, dtype=F64, requires_grad=True)
    at, bt = torch.tensor(a), torch.tensor(b)
    opt = ol.SGD([p], lr=lr, momentum=mu, nesterov=True)
    theta, v = p0.copy(), np.zeros(n)
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * p @ at @ p - bt @ p).backward()
        opt.step()
        v = mu * v + lr * (a @ (theta - mu * v) - b)
        theta = theta - v
        assert max_relative_error([p.detach()], [theta - mu * v]) <= FORM_RTOL_F64
        buf = opt.state[p]["momentum_buffer"]
        assert max_relative_error([lr * buf], [v]) <= FORM_RTOL_F64
    # Not vacuous: the iterates travelled most of the way to the minimiser (measured: 0.4%,
    # 0.05% and 10% of the distance left for mu = 0.5, 0.9, 0.99: >= 5x below the bound; an
    # optimization error, set by the conditioning, not by rounding).
    p_star = np.linalg.solve(a, b)
    assert np.linalg.norm(p.detach().numpy() - p_star) < 0.5 * np.linalg.norm(p0 - p_star)


# ----- AdamW vs Adam + L2 ---------------------------------------------------------------------


def one_step(make: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
             params: list[torch.Tensor], grads: list[torch.Tensor]) -> list[torch.Tensor]:
    ps = [p.clone().requires_grad_(True) for p in params]
    opt = make(ps)
    for p, g in zip(ps, grads, strict=True):
        p.grad = g.clone()
    opt.step()
    return [p.detach() for p in ps]


def test_adamw_decay_is_decoupled_from_the_adaptive_denominator() -> None:
    """Loshchilov & Hutter (2019): after one step from zero moments (``m_hat = g``,
    ``v_hat = g^2``):

    * Adam + L2 adapts the decayed gradient ``g' = g + wd p``:
      ``p_1 = p - lr g' / (|g'| + eps)`` -- the decay ``wd p`` is divided by ``|g'| + eps``;
    * AdamW decays apart: ``p_1 = (1 - lr wd) p - lr g / (|g| + eps)``.

    A parameter whose gradient is zero is decayed by exactly ``lr wd p`` under AdamW, while
    under Adam + L2 it moves by ``lr wd p / (wd |p| + eps)``, about ``lr sign(p)``.
    """
    lr, wd, eps = 1e-2, 0.1, 1e-8
    p, q = rng_tensors(2, [(6,), (4,)])
    g = rng_tensors(3, [(6,)])[0]
    zero = torch.zeros_like(q)
    kw: dict[str, Any] = {"lr": lr, "weight_decay": wd, "eps": eps}

    l2 = one_step(lambda ps: ol.Adam(ps, **kw), [p, q], [g, zero])
    w = one_step(lambda ps: ol.AdamW(ps, **kw), [p, q], [g, zero])
    w2 = one_step(lambda ps: ol.Adam(ps, decoupled_weight_decay=True, **kw), [p, q], [g, zero])

    def closed_l2(p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        gd = g + wd * p
        return p - lr * gd / (gd.abs() + eps)

    def closed_w(p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return (1 - lr * wd) * p - lr * g / (g.abs() + eps)

    assert max_relative_error(l2, [closed_l2(p, g), closed_l2(q, zero)]) <= CLOSED_FORM_RTOL_F64
    assert max_relative_error(w, [closed_w(p, g), closed_w(q, zero)]) <= CLOSED_FORM_RTOL_F64
    for a, b in zip(w, w2, strict=True):
        assert torch.equal(a, b)

    # Zero gradient: AdamW's decay is exactly lr * wd * q ...
    assert torch.equal(w[1], q * (1 - lr * wd))
    assert max_relative_error([q - w[1]], [lr * wd * q]) <= CLOSED_FORM_RTOL_F64
    # ... while Adam + L2's is lr * wd * q divided by the adaptive denominator wd |q| + eps,
    decay_l2 = q - l2[1]
    assert max_relative_error([decay_l2], [lr * wd * q / (wd * q.abs() + eps)]) \
        <= CLOSED_FORM_RTOL_F64
    # which is about lr * sign(q), far from lr * wd * q (|q| is of order 1, wd = 0.1). "About":
    # decay_l2 = lr sign(q) / (1 + eps / (wd |q|)), a relative gap of (eps / wd) rms(1 / |q|)
    # = 2.6e-7 for these q (smallest |q| = 0.28), exact arithmetic, not rounding.
    assert max_relative_error([decay_l2], [lr * q.sign()]) <= 1e-6
    assert max_relative_error([decay_l2], [lr * wd * q]) > 1.0


# ----- L1 by proximal steps -------------------------------------------------------------------


def test_l1_proximal_gives_exact_zeros_where_sgd_gives_none() -> None:
    """ISTA (``l1_proximal`` after plain gradient steps) on a sparse least-squares problem
    sets the irrelevant coefficients to exactly 0.0, keeps the true support, and reaches the
    lasso optimum (its KKT conditions); plain SGD on the same data has no exact zero."""
    rng = np.random.default_rng(0)
    n, d, support = 100, 20, [2, 7, 13]
    x = rng.standard_normal((n, d))
    w_true = np.zeros(d)
    w_true[support] = [3.0, -2.0, 1.5]
    y = x @ w_true + 0.1 * rng.standard_normal(n)
    xt, yt = torch.tensor(x), torch.tensor(y)
    lr = 1.0 / np.linalg.eigvalsh(x.T @ x / n).max()  # 1 / L, L the gradient's Lipschitz const.
    l1, steps = 0.1, 500

    def fit(make: Callable[[list[torch.Tensor]], torch.optim.Optimizer]) -> torch.Tensor:
        w = torch.zeros(d, dtype=F64, requires_grad=True)
        opt = make([w])
        for _ in range(steps):
            opt.zero_grad()
            (0.5 * ((xt @ w - yt) ** 2).mean()).backward()
            opt.step()
        return w.detach()

    w_l1 = fit(lambda ps: ol.chain(ps, T.l1_proximal(l1), lr=lr))
    w_sgd = fit(lambda ps: ol.SGD(ps, lr=lr))

    zeros = w_l1 == 0
    # Exact zeros: the soft threshold sets w_j = 0 whenever |w_j - lr grad_j| <= lr l1, and off
    # the support |grad_j| <= 0.052 at the optimum, half of l1 = 0.1 (checked below), far
    # from any rounding. Measured 17 zeros.
    assert int(zeros.sum()) >= 12, w_l1  # most of the 17 irrelevant coefficients
    assert bool((w_l1[support] != 0).all()), w_l1
    assert torch.equal(w_l1[support].sign(), torch.tensor(w_true[support]).sign())
    assert int((w_sgd == 0).sum()) == 0, w_sgd

    # Lasso optimality of min 0.5 mean((xw - y)^2) + l1 |w|_1: grad_j = -l1 sign(w_j) on the
    # support, |grad_j| <= l1 off it. ISTA with step 1/L contracts linearly (rate 1 - mu/L on
    # the support): after 500 steps the KKT residual is measured 3e-15, at the float64
    # rounding floor of the gradient (~n eps |x| |residual| ~ 1e-14), so 1e-8 is ample; off the
    # support the measured max |grad_j| is 0.052, and 1e-8 only absorbs rounding at l1.
    grad = xt.T @ (xt @ w_l1 - yt) / n
    nz = ~zeros
    assert max_relative_error([grad[nz]], [-l1 * w_l1[nz].sign()]) <= 1e-8
    assert float(grad[zeros].abs().max()) <= l1 * (1 + 1e-8)


# ----- composed chains equal the named optimizers ---------------------------------------------

Chain = Callable[[], tuple[T.Transform, ...]]

#: (named optimizer, its arguments, the same rules composed by hand).
COMPOSED: list[tuple[str, dict[str, Any], Chain]] = [
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-2),
     lambda: (T.add_l2(1e-2), T.trace(0.9, 0.1, False))),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=1e-2, maximize=True),
     lambda: (T.add_l2(1e-2), T.trace(0.8, 0.0, True))),
    ("Adagrad", dict(lr=0.1, lr_decay=0.05, weight_decay=1e-2, initial_accumulator_value=0.1,
                     eps=1e-8),
     lambda: (T.add_l2(1e-2), T.scale_by_adagrad(1e-8, 0.1),
              T.scale_by_inverse_time_decay(0.05))),
    ("RMSprop", dict(lr=1e-2, alpha=0.95, eps=1e-6, weight_decay=1e-2, momentum=0.9,
                     centered=True),
     lambda: (T.add_l2(1e-2), T.scale_by_rms(0.95, 1e-6, True), T.trace(0.9, 0.0, False))),
    ("RMSprop", dict(lr=1e-2, weight_decay=1e-2, maximize=True),
     lambda: (T.add_l2(1e-2), T.scale_by_rms(0.99, 1e-8, False), T.trace(0.0, 0.0, False))),
    ("Adam", dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-2, amsgrad=True),
     lambda: (T.add_l2(1e-2), T.scale_by_adam(0.8, 0.99, 1e-6, True))),
    ("Adam", dict(lr=1e-2, weight_decay=1e-2, decoupled_weight_decay=True, maximize=True),
     lambda: (T.scale_by_adam(0.9, 0.999, 1e-8, False), T.add_decayed_weights(1e-2))),
    ("AdamW", dict(lr=1e-2, betas=(0.85, 0.995), weight_decay=0.05, amsgrad=True),
     lambda: (T.scale_by_adam(0.85, 0.995, 1e-8, True), T.add_decayed_weights(0.05))),
    ("NAdam", dict(lr=1e-2, weight_decay=1e-2, momentum_decay=5e-3),
     lambda: (T.add_l2(1e-2), T.scale_by_nadam(0.9, 0.999, 1e-8, 5e-3))),
    ("NAdam", dict(lr=1e-2, weight_decay=1e-2, decoupled_weight_decay=True),
     lambda: (T.scale_by_nadam(0.9, 0.999, 1e-8, 4e-3), T.add_decayed_weights(1e-2))),
    ("RAdam", dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=1e-2),
     lambda: (T.add_l2(1e-2), T.scale_by_radam(0.9, 0.99, 1e-8))),
    ("RAdam", dict(lr=1e-2, weight_decay=1e-2, decoupled_weight_decay=True, maximize=True),
     lambda: (T.scale_by_radam(0.9, 0.999, 1e-8), T.add_decayed_weights(1e-2))),
    ("Adadelta", dict(lr=0.5, rho=0.8, eps=1e-5, weight_decay=1e-2),
     lambda: (T.add_l2(1e-2), T.scale_by_adadelta(0.8, 1e-5))),
    ("Adamax", dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-2),
     lambda: (T.add_l2(1e-2), T.scale_by_adamax(0.8, 0.99, 1e-6))),
]

SHAPES = [(3,), (2, 3), (4, 1, 2)]


def run_steps(opt_factory: Callable[[list[torch.Tensor]], torch.optim.Optimizer], steps: int,
              dtype: torch.dtype = torch.float32, seed: int = 0, *, feedback: bool = True,
              device: str = "cpu") -> tuple[list[list[torch.Tensor]], torch.optim.Optimizer]:
    """Run ``steps`` steps; return the parameters after each step (on the CPU) and the optimizer.

    ``feedback=True``: the gradients are those of a random quadratic
    ``sum_i 0.5 |A_i vec(p_i) - c_i|^2``, taken by autograd at the iterates.
    ``feedback=False``: a fixed sequence of random gradients, independent of the iterates.
    """
    rng = np.random.default_rng(seed)
    params = [torch.tensor(rng.standard_normal(s), dtype=dtype, device=device,
                           requires_grad=True) for s in SHAPES]
    mats = [torch.tensor(rng.standard_normal((8, p.numel())) / 3, dtype=dtype, device=device)
            for p in params]
    targets = [torch.tensor(5 * rng.standard_normal(8), dtype=dtype, device=device)
               for _ in params]
    opt = opt_factory(params)
    out = []
    for _ in range(steps):
        opt.zero_grad()
        if feedback:
            loss = sum(0.5 * ((a @ p.reshape(-1) - c) ** 2).sum()
                       for p, a, c in zip(params, mats, targets, strict=True))
            loss.backward()
        else:
            for p in params:
                p.grad = torch.tensor(rng.standard_normal(p.shape), dtype=dtype, device=device)
        opt.step()
        out.append([p.detach().cpu().clone() for p in params])
    return out, opt


@pytest.mark.parametrize(("name", "kwargs", "rules"), COMPOSED,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(COMPOSED)])
def test_composed_chain_equals_named_optimizer_bitwise(name: str, kwargs: dict[str, Any],
                                                       rules: Chain) -> None:
    """``ol.chain`` of the documented rules == the named optimizer, bit for bit, 20 steps,
    parameters and state."""
    named, named_opt = run_steps(lambda ps: getattr(ol, name)(ps, **kwargs), 20)
    chain_kw = {"lr": kwargs["lr"], "maximize": kwargs.get("maximize", False)}
    composed, chain_opt = run_steps(lambda ps: ol.chain(ps, *rules(), **chain_kw), 20)
    for t, (a, b) in enumerate(zip(named, composed, strict=True), start=1):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert torch.equal(x, y), f"step {t}, parameter {i}: {(x - y).abs().max():.3g}"
    for pa, pb in zip(named_opt.param_groups[0]["params"], chain_opt.param_groups[0]["params"],
                      strict=True):
        sa, sb = named_opt.state[pa], chain_opt.state[pb]
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k


# ----- fused (compiled) vs eager --------------------------------------------------------------

#: One or two settings per named optimizer (each compiles; keep the list short).
FUSED_CASES: list[tuple[str, dict[str, Any]]] = [
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.1, maximize=True)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.05, weight_decay=1e-2, initial_accumulator_value=0.1)),
    ("RMSprop", dict(lr=1e-2, momentum=0.9, centered=True, weight_decay=1e-2)),
    ("Adam", dict(lr=1e-2, weight_decay=1e-2, amsgrad=True)),
    ("AdamW", dict(lr=1e-2, weight_decay=0.05, maximize=True)),
    ("NAdam", dict(lr=1e-2, weight_decay=1e-2, decoupled_weight_decay=True)),
    ("RAdam", dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=1e-2)),
    ("Adadelta", dict(lr=0.5, weight_decay=1e-2)),
    ("Adamax", dict(lr=1e-2, weight_decay=1e-2)),
]


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
@pytest.mark.parametrize(("name", "kwargs"), FUSED_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(FUSED_CASES)])
def test_fused_equals_eager(name: str, kwargs: dict[str, Any], device: str) -> None:
    """``fused=True`` (the chain compiled by torch.compile) == eager, float32, 10 steps, on the
    CPU and (where there is one) on a CUDA GPU.

    The gradients are a fixed random sequence, so the check isolates the arithmetic of the two
    paths. With gradients taken at the iterates, a one-ulp difference of the parameters changes
    the small gradient entries by much more than an ulp of themselves (cancellation in
    ``A^T (A p - c)``), and the adaptive rules divide by those entries' own scale: eager float32
    and eager float64 already part by ~5e-7 within 10 steps on such a problem.
    """
    eager, _ = run_steps(lambda ps: getattr(ol, name)(ps, **kwargs), 10, feedback=False,
                         device=device)
    torch._dynamo.reset()  # compile anew, so that the generated code is seen
    (fused, opt), code = run_and_get_code(
        run_steps, lambda ps: getattr(ol, name)(ps, fused=True, **kwargs), 10, feedback=False,
        device=device)
    assert opt._compiled is not None  # the compiled path really ran (private attribute)
    # A scalar read back to the host (``.item()``) would be a synchronization per step on GPUs.
    assert code and not any(".item()" in c for c in code)
    for t, (a, b) in enumerate(zip(fused, eager, strict=True), start=1):
        err = max_relative_error(a, b)
        assert err <= FUSED_RTOL_F32, f"step {t}: relative error {err:.3g}"


@pytest.mark.slow
def test_fused_chain_with_global_norm_clipping_equals_eager() -> None:
    """clip_by_global_norm -> scale_by_adam -> add_decayed_weights, fused vs eager; the
    published pre-clip norm equals clip_grad_norm_'s on the same gradients (both paths)."""
    shapes = [(3,), (2, 3), (4, 1, 2)]
    init = rng_tensors(4, shapes, torch.float32)
    # Gradient scales alternate so that the clip is active at some steps and not at others.
    grads = [rng_tensors(100 + t, shapes, torch.float32, scale=(3.0 if t % 2 else 0.1))
             for t in range(10)]

    def run(fused: bool) -> tuple[list[list[torch.Tensor]], list[torch.Tensor]]:
        ps = [p.clone().requires_grad_(True) for p in init]
        opt = ol.chain(ps, T.clip_by_global_norm(1.0), T.scale_by_adam(0.9, 0.99),
                       T.add_decayed_weights(0.05), lr=1e-2, fused=fused)
        traj, norms = [], []
        for gs in grads:
            for p, g in zip(ps, gs, strict=True):
                p.grad = g.clone()
            opt.step()
            traj.append([p.detach().clone() for p in ps])
            norms.append(opt.info["grad_norm"].detach().clone())
        return traj, norms

    eager, eager_norms = run(False)
    fused, fused_norms = run(True)
    for t, (a, b) in enumerate(zip(fused, eager, strict=True), start=1):
        err = max_relative_error(a, b)
        assert err <= FUSED_RTOL_F32, f"step {t}: relative error {err:.3g}"
    clipped_any = False
    for gs, en, fn in zip(grads, eager_norms, fused_norms, strict=True):
        # clip_grad_norm_ reads (and clips) the .grad of the tensors it is given.
        ps = [torch.zeros_like(g, requires_grad=True) for g in gs]
        for p, g in zip(ps, gs, strict=True):
            p.grad = g.clone()
        ref = torch.nn.utils.clip_grad_norm_(ps, 1.0)
        assert max_relative_error([en], [ref]) <= FUSED_RTOL_F32
        assert max_relative_error([fn], [ref]) <= FUSED_RTOL_F32
        clipped_any |= bool(ref > 1.0)
    assert clipped_any


# ----- clipping against torch.nn.utils --------------------------------------------------------


@pytest.mark.parametrize("foreach", [None, False])
@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
def test_clip_by_global_norm_matches_clip_grad_norm_then_sgd(norm_type: float,
                                                             foreach: bool | None) -> None:
    """Two param groups with their own learning rates: one global norm over both groups
    (``opt.info["grad_norm"]``), then SGD; equals clip_grad_norm_ over all parameters followed
    by torch.optim.SGD with the same groups. The gradients themselves are left untouched."""
    shapes_a, shapes_b = [(3,), (2, 2)], [(5,)]
    init = rng_tensors(5, shapes_a + shapes_b)
    max_norm = 1.0

    def groups(ps: list[torch.Tensor]) -> list[dict[str, Any]]:
        return [{"params": ps[:2], "lr": 0.1}, {"params": ps[2:], "lr": 0.05}]

    ours = [p.clone().requires_grad_(True) for p in init]
    theirs = [p.clone().requires_grad_(True) for p in init]
    opt = ol.chain(groups(ours), T.clip_by_global_norm(max_norm, norm_type), lr=0.1,
                   foreach=foreach)
    sgd = torch.optim.SGD(groups(theirs), lr=0.1, foreach=True)
    clipped = unclipped = 0
    for t in range(12):
        gs = rng_tensors(200 + t, shapes_a + shapes_b, scale=(2.0 if t % 2 else 0.05))
        for p, q, g in zip(ours, theirs, gs, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        for p, g in zip(ours, gs, strict=True):
            assert torch.equal(p.grad, g)
        total = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type=norm_type)
        sgd.step()
        assert max_relative_error([opt.info["grad_norm"]], [total]) <= CLIP_RTOL_F64
        assert max_relative_error([p.detach() for p in ours], [q.detach() for q in theirs]) \
            <= CLIP_RTOL_F64
        # The norm is global: for the 1- and 2-norms it exceeds each group's own norm (strictly,
        # by the other group's share: >= 8.9% here, 1e14 times float64 rounding).
        if norm_type != math.inf:
            for part in (gs[:2], gs[2:]):
                own = torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in part]),
                                               norm_type)
                assert float(own) < float(opt.info["grad_norm"])
        clipped += bool(total > max_norm)
        unclipped += bool(total <= max_norm)
    assert clipped and unclipped


def test_clip_by_value_matches_clip_grad_value_then_sgd() -> None:
    """``clip_by_value(c)`` then SGD == clip_grad_value_(c) then torch.optim.SGD, bit for bit."""
    shapes = [(3,), (2, 3)]
    init = rng_tensors(6, shapes)
    ours = [p.clone().requires_grad_(True) for p in init]
    theirs = [p.clone().requires_grad_(True) for p in init]
    opt = ol.chain(ours, T.clip_by_value(0.5), lr=0.1)
    sgd = torch.optim.SGD(theirs, lr=0.1, foreach=True)
    for t in range(10):
        gs = rng_tensors(300 + t, shapes)
        for p, q, g in zip(ours, theirs, gs, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        torch.nn.utils.clip_grad_value_(theirs, 0.5)
        sgd.step()
        for p, q in zip(ours, theirs, strict=True):
            assert torch.equal(p, q)
