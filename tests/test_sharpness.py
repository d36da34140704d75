"""optimlab.sharpness: Hessian eigenvalues (Lanczos, power iteration) and trace (Hutchinson)
from Hessian-vector products, checked on quadratics with known spectra and against the dense
Hessian of a small network from torch.func."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call, hessian

from optimlab._symeig import lanczos
from optimlab.sharpness import (
    batch_mean,
    hessian_eigenvalues,
    hessian_trace,
    sharpness,
)

# ----------------------------------------------------------------------------- helpers


def _spd(eigenvalues: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """``Q diag(eigenvalues) Q'`` with a random orthogonal ``Q`` (float64)."""
    g = torch.Generator().manual_seed(seed)
    n = eigenvalues.numel()
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    a = (q * eigenvalues) @ q.T
    return 0.5 * (a + a.T)


def _quadratic(a: torch.Tensor, dtype: torch.dtype, seed: int = 1):
    """``L(w) = w'Aw / 2`` (Hessian ``A``) at a random point, as (closure, [w])."""
    g = torch.Generator().manual_seed(seed)
    a = a.to(dtype)
    w = torch.randn(a.shape[0], generator=g, dtype=dtype).requires_grad_()
    return (lambda: 0.5 * w @ (a @ w)), [w]


class _MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(3, 5)
        self.out = nn.Linear(5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.hidden(x)))


def _mlp_problem(seed: int = 0):
    """A float64 2-layer MLP (26 parameters) on 10 points, its loss closure and dense Hessian
    from torch.func.hessian (of the loss as a function of the flat parameter vector)."""
    torch.manual_seed(seed)
    model = _MLP().double()
    x = torch.randn(10, 3, dtype=torch.float64)
    y = torch.randn(10, 1, dtype=torch.float64)
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss_of(theta: torch.Tensor) -> torch.Tensor:
        pieces = theta.split([math.prod(s) for s in shapes])
        params = {n: t.view(s) for n, t, s in zip(names, pieces, shapes)}
        return ((functional_call(model, params, (x,)) - y) ** 2).mean()

    dense = hessian(loss_of)(flat)
    return model, (lambda: ((model(x) - y) ** 2).mean()), dense, (x, y)


# ----------------------------------------------------------------------------- quadratics

# Spectrum of the quadratic tests: n = 100, eigenvalues evenly spaced in [1, 10] (top gap
# 10/99 relative to the top ~1%: Lanczos needs a few dozen products; power iteration hundreds).
_N = 100
_SPECTRUM = torch.linspace(1.0, 10.0, _N, dtype=torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_top_eigenvalue_of_quadratic_within_1_percent(dtype: torch.dtype, method: str) -> None:
    closure, params = _quadratic(_spd(_SPECTRUM), dtype)
    result = hessian_eigenvalues(closure, params, k=1, method=method, max_iter=2000, tol=1e-3,
                                 generator=torch.Generator().manual_seed(0))
    # Converged means residual r <= 1e-3 * lambda, so an eigenvalue lies within 0.1% (Bauer-
    # Fike for symmetric matrices); float32 products carry relative errors ~ n * 2^-24 ~ 1e-5,
    # far below that. The acceptance bound is 1%.
    assert result.converged
    assert abs(float(result.values[0]) - 10.0) <= 0.01 * 10.0
    assert result.values.dtype == torch.float64 and result.vectors.dtype == dtype
    assert result.hvps == result.iterations > 0  # one product per Lanczos step / power step
    assert result.hvps < (_N if method == "lanczos" else 2000)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lanczos_top_three_of_quadratic(dtype: torch.dtype) -> None:
    closure, params = _quadratic(_spd(_SPECTRUM), dtype)
    result = hessian_eigenvalues(closure, params, k=3, tol=1e-3,
                                 generator=torch.Generator().manual_seed(0))
    assert result.converged
    expected = _SPECTRUM.flip(0)[:3]
    # residual <= 1e-3 * lambda bounds each value's error by 0.1% of it (see above)
    torch.testing.assert_close(result.values, expected, rtol=1e-3, atol=0)
    assert torch.all(result.values[:-1] >= result.values[1:])  # descending


def test_power_iteration_finds_largest_when_a_negative_eigenvalue_dominates() -> None:
    spectrum = torch.tensor([-10.0, -2.0, 0.5, 1.0, 3.0, 4.0], dtype=torch.float64)
    closure, params = _quadratic(_spd(spectrum), torch.float64)
    result = hessian_eigenvalues(closure, params, k=2, method="power", max_iter=5000, tol=1e-10,
                                 generator=torch.Generator().manual_seed(0))
    # The Rayleigh quotient of a pair with residual r is within r^2/gap of the eigenvalue:
    # (1e-10 * 4)^2 / 1 is far below the 1e-8 asserted.
    assert result.converged
    torch.testing.assert_close(result.values, torch.tensor([4.0, 3.0], dtype=torch.float64),
                               rtol=0, atol=1e-8)


def test_lanczos_restarts_on_repeated_eigenvalues_and_zero_hessian() -> None:
    # H = 2 I: the Krylov space of any start vector is 1-dimensional (breakdown after one
    # step); the restarts find the other copies, and since no breakdown may end the search,
    # it runs until the space is exhausted (n = 5 products).
    w = torch.randn(5, dtype=torch.float64, requires_grad=True)
    result = hessian_eigenvalues(lambda: (w * w).sum(), [w], k=3,
                                 generator=torch.Generator().manual_seed(0))
    assert result.converged and result.hvps == 5
    torch.testing.assert_close(result.values, torch.full((3,), 2.0, dtype=torch.float64))
    # a loss linear in w: the Hessian is zero
    linear = hessian_eigenvalues(lambda: w.sum() * 3, [w], k=2)
    assert linear.converged and torch.equal(linear.values, torch.zeros(2, dtype=torch.float64))
    # a parameter the loss does not use, and one it uses linearly: zero rows and columns
    unused = torch.randn(3, dtype=torch.float64, requires_grad=True)
    linear_in = torch.randn(2, dtype=torch.float64, requires_grad=True)
    mixed = hessian_eigenvalues(lambda: -(w * w).sum() + linear_in.sum(), [unused, w, linear_in],
                                k=5, tol=1e-12, generator=torch.Generator().manual_seed(0))
    # spectrum of blockdiag(0 (3), -2 I (5), 0 (2)): top five are 0, 0, 0, 0, 0
    torch.testing.assert_close(mixed.values, torch.zeros(5, dtype=torch.float64),
                               rtol=0, atol=1e-12)
    assert mixed.vectors.shape == (5, 10)


def test_trace_of_quadratic_within_5_percent() -> None:
    a = _spd(_SPECTRUM)
    closure, params = _quadratic(a, torch.float64)
    trace = float(_SPECTRUM.sum())  # 550
    # Per-probe variance of z'Az for Rademacher z: 2 ||A||_F^2 - 2 sum_i A_ii^2 (about 1.3e3
    # here, sd ~ 36, 6.6% of the trace). For the mean of m probes to lie within 5% with
    # 5 standard deviations to spare (normal approximation: failure probability ~6e-7 for a
    # random seed; this seed is fixed), m >= (5 sd / (0.05 trace))^2.
    variance = 2 * float((a * a).sum()) - 2 * float((a.diagonal() ** 2).sum())
    probes = math.ceil((5 * math.sqrt(variance) / (0.05 * trace)) ** 2)
    assert 20 <= probes <= 100  # the arithmetic above, for this spectrum
    result = hessian_trace(closure, params, probes=probes,
                           generator=torch.Generator().manual_seed(0))
    assert result.hvps == result.probes == probes == result.samples.numel()
    assert abs(result.estimate - trace) <= 0.05 * trace
    # The reported standard error estimates sqrt(variance / m); the sample sd of m ~ 40 probes
    # is within 50% of the true one except with negligible probability.
    assert 0.5 <= result.stderr / math.sqrt(variance / probes) <= 1.5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_trace_of_diagonal_hessian_is_exact(dtype: torch.dtype) -> None:
    # z'Dz = sum_i d_i z_i^2 = tr(D) for every Rademacher z: zero variance.
    d = torch.linspace(0.5, 3.0, 50, dtype=dtype)
    w = torch.randn(50, dtype=dtype, requires_grad=True)
    result = hessian_trace(lambda: 0.5 * (d * w * w).sum(), [w], probes=3)
    # float32: a sum of 50 terms ~ 1.75 with rounding 2^-24 each: relative error < 1e-5.
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert result.estimate == pytest.approx(float(d.double().sum()), rel=tol)
    assert result.stderr == pytest.approx(0.0, abs=tol * float(d.double().sum()))


def test_adaptive_is_spectrum_and_trace_of_scaled_hessian() -> None:
    a = _spd(torch.linspace(-1.0, 5.0, 12, dtype=torch.float64), seed=3)
    closure, params = _quadratic(a, torch.float64)
    eta = 0.01
    t = params[0].detach().abs() + eta
    scaled = t[:, None] * a * t[None, :]  # T A T
    result = hessian_eigenvalues(closure, params, k=2, adaptive=True, eta=eta, tol=1e-12,
                                 generator=torch.Generator().manual_seed(0))
    # Lanczos on 12 dimensions with full reorthogonalization: values exact to ~ n eps ||TAT||.
    torch.testing.assert_close(result.values, torch.linalg.eigvalsh(scaled).flip(0)[:2],
                               rtol=0, atol=1e-10 * float(scaled.norm()))
    # one probe is z'TATz for the Rademacher z the generator draws (entries 2 b - 1, b a fair
    # bit): float64 sums of 144 terms O(1) agree to ~1e-13
    tr = hessian_trace(closure, params, probes=1, adaptive=True, eta=eta,
                       generator=torch.Generator().manual_seed(7))
    bits = torch.randint(0, 2, (12,), generator=torch.Generator().manual_seed(7))
    z = (2 * bits - 1).double()
    assert tr.samples.numel() == 1 and math.isnan(tr.stderr)
    assert float(tr.samples[0]) == pytest.approx(float(z @ scaled @ z), rel=1e-12, abs=1e-12)
    # the trace estimate is unbiased: many probes land within 5 standard errors
    many = hessian_trace(closure, params, probes=400, adaptive=True, eta=eta,
                         generator=torch.Generator().manual_seed(1))
    assert abs(many.estimate - float(scaled.trace())) <= 5 * many.stderr


def test_adaptive_sharpness_is_invariant_to_rescaling_relu_units() -> None:
    # A ReLU unit's incoming weights and bias times c, its outgoing weights over c: the same
    # function. The Hessian's spectrum changes; T H T (eta = 0) does not (module docstring).
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)).double()
    x = torch.randn(12, 3, dtype=torch.float64)
    y = torch.randn(12, 1, dtype=torch.float64)

    def measure(adaptive: bool) -> torch.Tensor:
        return hessian_eigenvalues(lambda: ((net(x) - y) ** 2).mean(), list(net.parameters()),
                                   k=2, adaptive=adaptive, tol=0.0, max_iter=21,
                                   generator=torch.Generator().manual_seed(0)).values

    plain, adaptive = measure(False), measure(True)
    c = torch.tensor([4.0, 0.25, 3.0, 1.0], dtype=torch.float64)
    with torch.no_grad():
        net[0].weight.mul_(c[:, None])
        net[0].bias.mul_(c)
        net[2].weight.div_(c[None, :])
    # tol = 0, max_iter = n = 21: exact spectra; float64 round-off ~1e-15 relative, the
    # rescaling by 4 and 1/4 adds a few ulps: 1e-10 asserted
    torch.testing.assert_close(measure(True), adaptive, rtol=1e-10, atol=0)
    assert not torch.allclose(measure(False), plain, rtol=1e-2)


# ----------------------------------------------------------------------------- a network


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_mlp_eigenvalues_match_dense_hessian(method: str) -> None:
    model, closure, dense, _ = _mlp_problem()
    n = dense.shape[0]
    exact = torch.linalg.eigvalsh(dense).flip(0)
    k = 3 if method == "lanczos" else 1
    result = hessian_eigenvalues(closure, list(model.parameters()), k=k, method=method,
                                 max_iter=n if method == "lanczos" else 20000, tol=1e-10,
                                 generator=torch.Generator().manual_seed(0))
    assert result.converged
    # float64: Ritz values with residual r <= 1e-10 |lambda| err by <= r (and ~r^2/gap); the
    # double-backward products agree with the dense Hessian to ~ n eps ||H||. 1e-8 ||H||
    # leaves room for both.
    scale = float(exact.abs().max())
    torch.testing.assert_close(result.values, exact[:k], rtol=0, atol=1e-8 * scale)
    for value, vector in zip(result.values, result.vectors):
        assert float(vector.norm()) == pytest.approx(1.0, abs=1e-12)
        assert float((dense @ vector - value * vector).norm()) <= 1e-6 * scale


def test_mlp_adaptive_and_trace_match_dense_hessian() -> None:
    model, closure, dense, _ = _mlp_problem(seed=1)
    params = list(model.parameters())
    t = torch.cat([p.detach().reshape(-1) for p in params]).abs()
    scaled = t[:, None] * dense * t[None, :]
    result = hessian_eigenvalues(closure, params, k=2, adaptive=True, tol=1e-10,
                                 max_iter=dense.shape[0],
                                 generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(result.values, torch.linalg.eigvalsh(scaled).flip(0)[:2],
                               rtol=0, atol=1e-8 * float(scaled.abs().max()))
    trace = hessian_trace(closure, params, probes=300, generator=torch.Generator().manual_seed(0))
    # unbiased estimate: within 5 standard errors of the dense trace
    assert abs(trace.estimate - float(dense.trace())) <= 5 * trace.stderr


@pytest.mark.slow  # ~60 products through BatchNorm's double backward: seconds on a loaded CPU
def test_sharpness_over_batches_is_the_full_data_hessian() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Dropout(0.5),
                          nn.Linear(6, 1)).double()
    model.train()
    with torch.no_grad():  # make the running statistics differ from any batch's statistics
        model[1].running_mean.fill_(0.3)
        model[1].running_var.fill_(2.0)
    x = torch.randn(11, 3, dtype=torch.float64)
    y = torch.randn(11, 1, dtype=torch.float64)
    batches = [(x[:4], y[:4]), (x[4:5], y[4:5]), (x[5:], y[5:])]  # unequal sizes: 4, 1, 6
    buffers = {k: v.clone() for k, v in model.state_dict().items()}

    def loss_fn(batch):
        xb, yb = batch
        return ((model(xb) - yb) ** 2).mean()

    result = sharpness(model, loss_fn, batches, k=2, probes=5, tol=1e-6,
                       generator=torch.Generator().manual_seed(0))
    # training flags restored, running statistics untouched (evaluated in eval mode)
    assert all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, buffers[k]), k
    # the batch-size weighted mean of the batch losses is the mean over all 11 examples
    model.eval()
    full = hessian_eigenvalues(lambda: ((model(x) - y) ** 2).mean(), list(model.parameters()),
                               k=2, tol=1e-6, generator=torch.Generator().manual_seed(0))
    model.train()
    with torch.no_grad():
        model.eval()
        full_loss = float(((model(x) - y) ** 2).mean())
        model.train()
    assert result.loss == pytest.approx(full_loss, rel=1e-14)
    assert result.examples == 11 and not result.adaptive
    # same start vector, same operator up to summation order: the same iterations, values
    # equal to round-off (float64; ~1e-15 per product, amplified by < 1e3 over the steps)
    assert result.eigen.iterations == full.iterations
    torch.testing.assert_close(result.eigen.values, full.values, rtol=1e-11, atol=0)
    assert result.top_eigenvalue == float(result.eigen.values[0])
    assert result.trace is not None and result.trace.probes == 5
    assert result.hvps == result.eigen.hvps + 5
    record = result.to_dict()
    assert record["top_eigenvalue"] == result.top_eigenvalue and record["hvps"] == result.hvps
    assert record["trace"] == result.trace.estimate and record["examples"] == 11
    one_probe = sharpness(model, loss_fn, batches, probes=1).to_dict()
    assert one_probe["trace_stderr"] is None  # nan (one sample) as None: JSON-able
    json.dumps(one_probe, allow_nan=False)
    without_trace = sharpness(model, loss_fn, batches, probes=0)
    assert without_trace.trace is None and without_trace.hvps == without_trace.eigen.hvps


def test_batch_mean_weights_by_batch_size() -> None:
    batches = [torch.arange(3.0), torch.arange(5.0)]
    closure = batch_mean(lambda b: b.mean(), batches)
    assert float(closure()) == pytest.approx(float(torch.cat(batches).mean()), rel=1e-7)
    dicts = [{"x": torch.ones(2, 1)}, {"x": torch.ones(6, 1) * 3}]
    assert float(batch_mean(lambda b: b["x"].mean(), dicts)()) == pytest.approx(2.5)
    assert float(batch_mean(lambda b: b, [torch.tensor(1.0), torch.tensor(3.0)],
                            examples=lambda b: 3 if b > 2 else 1)()) == pytest.approx(2.5)
    with pytest.raises(ValueError, match="no batches"):
        batch_mean(lambda b: b, [])
    with pytest.raises(ValueError, match="examples="):
        batch_mean(lambda b: b, [object()])


# ----------------------------------------------------------------------------- contract


def test_only_hessian_vector_products_no_dense_hessian(monkeypatch: pytest.MonkeyPatch) -> None:
    # n = 1000: a dense Hessian would take 1000 products (or a 1000 x 1000 tensor). Count every
    # autograd.grad call and check each differentiates with a vector shaped as the parameters.
    n = 1000
    d = torch.linspace(0.1, 5.0, n, dtype=torch.float64)
    w = torch.randn(n, dtype=torch.float64, requires_grad=True)
    calls: list[tuple[int, ...] | None] = []
    real = torch.autograd.grad

    def counting(outputs, inputs, grad_outputs=None, **kwargs):
        calls.append(None if grad_outputs is None else tuple(grad_outputs[0].shape))
        return real(outputs, inputs, grad_outputs=grad_outputs, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting)
    result = hessian_eigenvalues(lambda: 0.5 * (d * w * w).sum() + torch.sin(w).sum(), [w],
                                 generator=torch.Generator().manual_seed(0))
    assert result.converged
    assert len(calls) == 1 + result.hvps  # one gradient, then one call per product
    assert calls[0] is None and all(shape == (n,) for shape in calls[1:])
    assert result.hvps <= 60  # Lanczos, tol 1e-3: a few dozen products, not n
    trace = hessian_trace(lambda: 0.5 * (d * w * w).sum(), [w], probes=4)
    assert trace.hvps == 4 and len(calls) == 1 + result.hvps + 1 + 4


def test_reproducible_with_a_generator() -> None:
    model, closure, _, _ = _mlp_problem()
    params = list(model.parameters())
    for method in ("lanczos", "power"):
        a = hessian_eigenvalues(closure, params, k=2, method=method,
                                generator=torch.Generator().manual_seed(5))
        b = hessian_eigenvalues(closure, params, k=2, method=method,
                                generator=torch.Generator().manual_seed(5))
        assert torch.equal(a.values, b.values) and a.hvps == b.hvps
    s = hessian_trace(closure, params, probes=4, generator=torch.Generator().manual_seed(5))
    t = hessian_trace(closure, params, probes=4, generator=torch.Generator().manual_seed(5))
    assert torch.equal(s.samples, t.samples)


def test_bad_input_is_refused_clearly() -> None:
    w = torch.randn(4, dtype=torch.float64, requires_grad=True)

    def loss():
        return (w ** 4).sum()

    for k in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="k must be"):
            hessian_eigenvalues(loss, [w], k=k)
    with pytest.raises(ValueError, match="exceeds the number of parameters"):
        hessian_eigenvalues(loss, [w], k=5)
    with pytest.raises(ValueError, match="max_iter >= k"):
        hessian_eigenvalues(loss, [w], k=3, max_iter=2)
    with pytest.raises(ValueError, match="method"):
        hessian_eigenvalues(loss, [w], method="arnoldi")
    with pytest.raises(ValueError, match="tol"):
        hessian_eigenvalues(loss, [w], tol=math.nan)
    with pytest.raises(ValueError, match="max_iter"):
        hessian_eigenvalues(loss, [w], max_iter=0)
    with pytest.raises(ValueError, match="probes"):
        hessian_trace(loss, [w], probes=0)
    with pytest.raises(ValueError, match="eta"):
        hessian_trace(loss, [w], adaptive=True, eta=-1.0)
    with pytest.raises(ValueError, match="no parameters requiring grad"):
        hessian_eigenvalues(loss, [w.detach()])
    with pytest.raises(ValueError, match="one-element tensor"):
        hessian_eigenvalues(lambda: w ** 2, [w])
    with pytest.raises(ValueError, match="one-element tensor"):
        hessian_trace(lambda: 1.0, [w])
    with pytest.raises(ValueError, match="does not depend on the parameters"):
        hessian_eigenvalues(lambda: (w.detach() ** 2).sum(), [w])
    with pytest.raises(ValueError, match="one dtype and device"):
        hessian_eigenvalues(loss, [w, torch.ones(2, requires_grad=True)])
    with pytest.raises(FloatingPointError, match="loss is not finite"):
        hessian_eigenvalues(lambda: (w ** 2).sum() * math.inf, [w])
    # finite loss and gradient, but an infinite second derivative: |w|^1.5 at w = 0
    z = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    with pytest.raises(FloatingPointError, match="Hessian-vector product 1 is not finite"):
        hessian_eigenvalues(lambda: z.abs().pow(1.5).sum(), [z])
    with pytest.raises(ValueError, match="probes"):
        sharpness([w], lambda b: loss(), [torch.ones(1)], probes=-1)


# ----------------------------------------------------------------------------- the solvers


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 24), k=st.integers(1, 4), seed=st.integers(0, 2**31 - 1),
       repeats=st.integers(1, 3))
def test_solvers_on_random_symmetric_matrices(n: int, k: int, seed: int, repeats: int) -> None:
    # Random spectra with repeated eigenvalues (each drawn value used `repeats` times), as an
    # explicit matrix A = Q diag Q'; the solvers see only v -> A v.
    k = min(k, n)
    g = torch.Generator().manual_seed(seed)
    distinct = torch.randn((n + repeats - 1) // repeats, generator=g, dtype=torch.float64)
    spectrum = distinct.repeat_interleave(repeats)[:n]
    a = _spd(spectrum, seed=seed % 1000)
    exact = torch.linalg.eigvalsh(a).flip(0)[:k]
    scale = float(spectrum.abs().max())

    def draw() -> torch.Tensor:
        return torch.randn(n, generator=g, dtype=torch.float64)

    # tol = 0: Lanczos runs n steps and ends exact, copies included (the restarts complete
    # the basis): Ritz values of a float64 orthonormal basis err by ~ n eps ||A||; 1e-9 ||A||
    # asserted.
    pairs = lanczos(lambda v: a @ v, draw, k, max_iter=n, tol=0.0)
    assert pairs.converged and pairs.iterations == n
    torch.testing.assert_close(pairs.values, exact, rtol=0, atol=1e-9 * scale)
    gram = pairs.vectors @ pairs.vectors.T
    torch.testing.assert_close(gram, torch.eye(k, dtype=torch.float64), rtol=0, atol=1e-8)
    # a tolerance: an eigenvalue of A lies within the residual r <= tol |value| of the value
    # (Bauer-Fike for symmetric A; the residual estimate beta |e's| is exact up to round-off
    # ~ n eps ||A||). Not necessarily the largest one: see the module docstring.
    top = lanczos(lambda v: a @ v, draw, 1, max_iter=n, tol=1e-3)
    value, residual = float(top.values[0]), float(top.residuals[0])
    assert top.converged and residual <= 1e-3 * abs(value)
    distance = float((torch.linalg.eigvalsh(a) - value).abs().min())
    assert distance <= residual + 1e-10 * scale
