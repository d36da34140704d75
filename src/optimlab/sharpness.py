r"""Sharpness: the Hessian's top eigenvalues and its trace, from Hessian-vector products only.

For a scalar loss :math:`L(w)` over the parameters :math:`w \in \mathbb{R}^n` (those given that
require grad, concatenated in order: the *flat* layout of every vector here), the Hessian
:math:`H = \nabla^2 L(w)` is never formed: every quantity below is computed from products
:math:`v \mapsto Hv`, whose number is reported (``hvps``), so the cost of a measurement is known
(one product costs about two gradient evaluations).

**Hessian-vector products.** Double backward: the gradient :math:`g = \nabla L` is computed once
with its graph (``torch.autograd.grad(loss, params, create_graph=True)``), and each product is
one more backward pass through it, :math:`Hv = \nabla_w (g \cdot v)`. It works on any closure
(modules with hooks, in-place operations, operations without forward-mode derivatives) and
evaluates the loss once per measurement, however many products follow. Forward-over-reverse
(``torch.func.jvp`` of ``torch.func.grad``) needs the loss as a pure function of the
parameters and re-runs the forward and backward passes for every product; its advantage, not
holding the gradient's graph between products, matters only when that graph does not fit in
memory (then measure on fewer examples).

**Adaptive sharpness** (``adaptive=True``): the scale-invariant curvature of ASAM (Kwon et al.
2021, "ASAM: Adaptive Sharpness-Aware Minimization for Scale-Invariant Learning of Deep Neural
Networks"). With :math:`T = \operatorname{diag}(|w| + \eta)` the operator measured is

.. math:: \tilde H = T H T,

the Hessian of :math:`u \mapsto L(T u)` at :math:`u = T^{-1} w` (``T`` held fixed): curvature
per unit of relative change of each weight. For ``eta = 0`` it is invariant under every
function-preserving positive diagonal rescaling :math:`w' = S w` (e.g. a ReLU unit's incoming
weights times ``c``, its outgoing ones over ``c``): :math:`H' = S^{-1} H S^{-1}` and :math:`T' =
S T`, so :math:`T' H' T' = T H T`, where the plain Hessian's spectrum changes. ``eta = 0`` (the
default) gives :math:`\operatorname{diag}(|w|)\, H
\operatorname{diag}(|w|)`; ``eta = 0.01`` matches the :math:`T` of :class:`optimlab.sam.SAM`'s
adaptive mode. Trace: :math:`\operatorname{tr}(THT) = \sum_i (|w_i| + \eta)^2 H_{ii}`.

**Top eigenvalues** (:func:`hessian_eigenvalues`), the ``k`` algebraically largest, in
descending order:

* ``method="lanczos"`` (default): Lanczos from a Gaussian start vector with full
  reorthogonalization (every new vector is orthogonalized twice against all previous ones, so
  the basis stays orthonormal to round-off and no spurious copies appear). After ``j`` steps
  the tridiagonal :math:`T_j` has eigenpairs :math:`(\theta_i, s_i)`; the Ritz vector
  :math:`y_i = Q_j s_i` has residual :math:`\|H y_i - \theta_i y_i\| = \beta_{j+1}\,|e_j^\top
  s_i|` (exact in exact arithmetic; reported as ``residuals``). If the basis becomes invariant
  (:math:`\beta_{j+1}` at round-off level), its Ritz pairs are exact but the rest of the
  space is unseen: Lanczos does not stop there but restarts from a new random vector orthogonal
  to the basis. One product per step; the basis holds ``max_iter`` vectors of size ``n`` at
  most. A single start vector sees each *distinct* eigenvalue once: further copies of a
  repeated eigenvalue appear only through the restarts (or, without an exact breakdown,
  through round-off), so with ``k > 1`` and a repeated top eigenvalue the search may stop
  with a copy missing; ``tol=0`` with ``max_iter >= n`` is exact, copies included.
* ``method="power"``: power iteration on :math:`H` with Rayleigh quotient
  :math:`\lambda = v^\top H v` (``v`` unit). If the dominant eigenvalue found is negative, the
  largest one is found by a second power iteration on :math:`H - \mu I` (:math:`\mu` the
  negative dominant eigenvalue, so that operator is positive semidefinite). For ``k > 1``, each
  next eigenvalue by deflation: the iterate is kept orthogonal to the eigenvectors found
  (the operator :math:`P H P`, :math:`P = I - U U^\top`). ``max_iter`` products per power
  iteration at most; the residual :math:`\|Hv - \lambda v\|` of each pair is computed exactly.
  Convergence is linear in the ratio of the two largest eigenvalues (in magnitude): Lanczos
  needs far fewer products for the same accuracy.

**Stopping rule** (both methods): stop as soon as every one of the ``k`` pairs has residual
:math:`r_i \le \text{tol}\cdot|\lambda_i|` (``converged=True``), or when the Krylov space is the
whole space (Lanczos after ``n`` steps: exact), else after ``max_iter`` steps
(``converged=False``, the current estimates returned). For a symmetric matrix a residual
:math:`r` puts an eigenvalue within :math:`r` of :math:`\lambda` (and within :math:`r^2 /
\text{gap}` for a Ritz value), so converged values are within a relative ``tol`` of an eigenvalue
of :math:`H`, but not necessarily of the top one: a residual test cannot tell the second
eigenvalue from the first while the start vector has almost no component along the first's
eigenvector. With a random start that is rare (4 in 3000 random symmetric test matrices of
size <= 24 at ``tol=1e-3``, each with a top gap of 3.3% or less); a smaller ``tol``, or a second
run from another generator, guards against it. An eigenvalue at or near zero may not meet a
relative tolerance: its pair then runs to ``max_iter``. ``tol=0`` disables the early stop.

**Trace** (:func:`hessian_trace`): Hutchinson's estimator with Rademacher probes
:math:`z \in \{-1, 1\}^n`, :math:`\widehat{\operatorname{tr}} = \frac1m \sum_{j=1}^m z_j^\top H
z_j`, unbiased, with per-probe variance :math:`2\|H\|_F^2 - 2\sum_i H_{ii}^2` (zero for a
diagonal Hessian); the standard error reported is the sample standard deviation over
:math:`\sqrt m`.

Both run in the parameters' dtype (float32 or float64; the tridiagonal eigenproblem and the
sums of the estimates in float64). :func:`sharpness` measures a model over a data subset given
as batches; :func:`batch_mean` builds the closure it uses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from optimlab._symeig import lanczos, power_iteration

__all__ = ["HessianEigenResult", "HessianTraceResult", "SharpnessResult", "batch_mean",
           "hessian_eigenvalues", "hessian_trace", "sharpness"]

METHODS = ("lanczos", "power")


@dataclass(frozen=True)
class HessianEigenResult:
    """The outcome of :func:`hessian_eigenvalues`.

    Attributes:
        values: ``(k,)`` float64, the ``k`` algebraically largest eigenvalues, descending.
        vectors: ``(k, n)`` unit eigenvector estimates in the flat layout (parameters' dtype).
        residuals: ``(k,)`` float64, ``||H v_i - values[i] v_i||`` (Lanczos: its estimate
            ``beta |e' s_i|``; power iteration: computed).
        converged: whether every pair met ``residual <= tol * |value|`` (or Lanczos exhausted
            the space).
        iterations: Lanczos steps, or power iterations over all phases.
        hvps: Hessian-vector products used.
        method: ``"lanczos"`` or ``"power"``.
    """

    values: Tensor
    vectors: Tensor
    residuals: Tensor
    converged: bool
    iterations: int
    hvps: int
    method: str


@dataclass(frozen=True)
class HessianTraceResult:
    """The outcome of :func:`hessian_trace`.

    Attributes:
        estimate: the mean of ``samples``, an unbiased estimate of the trace.
        stderr: its standard error, ``std(samples, ddof=1) / sqrt(probes)`` (nan for 1 probe).
        probes: the number of Rademacher probes.
        hvps: Hessian-vector products used (one per probe).
        samples: ``(probes,)`` float64, ``z' H z`` per probe.
    """

    estimate: float
    stderr: float
    probes: int
    hvps: int
    samples: Tensor


@dataclass(frozen=True)
class SharpnessResult:
    """The outcome of :func:`sharpness`.

    Attributes:
        top_eigenvalue: the largest eigenvalue (of ``T H T`` when adaptive).
        eigen: the eigenvalue computation.
        trace: the trace estimate (``None`` when ``probes=0``).
        loss: the loss the Hessian is of (the batch-size weighted mean over the batches).
        examples: the number of examples in the batches.
        hvps: Hessian-vector products used in all (eigenvalues and trace).
        adaptive: whether the operator is the adaptive ``T H T``.
    """

    top_eigenvalue: float
    eigen: HessianEigenResult
    trace: HessianTraceResult | None
    loss: float
    examples: int
    hvps: int
    adaptive: bool

    def to_dict(self) -> dict[str, Any]:
        """Plain numbers: ``top_eigenvalue``, ``eigenvalues``, ``residuals``, ``converged``,
        ``trace``, ``trace_stderr``, ``probes`` (the trace ones ``None`` without a trace),
        ``loss``, ``examples``, ``hvps``, ``eigen_hvps``, ``adaptive``, ``method``; non-finite
        numbers (the standard error of a single probe) as ``None``, so it is JSON-able."""
        def number(x: float | None) -> float | None:
            return x if x is None or math.isfinite(x) else None

        record = {
            "top_eigenvalue": self.top_eigenvalue,
            "eigenvalues": [float(v) for v in self.eigen.values],
            "residuals": [float(r) for r in self.eigen.residuals],
            "converged": self.eigen.converged,
            "trace": None if self.trace is None else self.trace.estimate,
            "trace_stderr": None if self.trace is None else self.trace.stderr,
            "probes": None if self.trace is None else self.trace.probes,
            "loss": self.loss, "examples": self.examples, "hvps": self.hvps,
            "eigen_hvps": self.eigen.hvps, "adaptive": self.adaptive, "method": self.eigen.method,
        }
        return {key: [number(v) for v in value] if isinstance(value, list)
                else number(value) if isinstance(value, float) else value
                for key, value in record.items()}


class _HessianOperator:
    """``v -> H v`` (or ``T H T v``) on flat vectors, from one evaluation of the loss."""

    def __init__(self, loss_fn: Callable[[], Tensor], params: Iterable[Tensor], *,
                 adaptive: bool, eta: float) -> None:
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("sharpness: no parameters requiring grad were given")
        dtypes = {p.dtype for p in self.params}
        devices = {p.device for p in self.params}
        if len(dtypes) > 1 or len(devices) > 1:
            raise ValueError(f"sharpness: the parameters must share one dtype and device, got "
                             f"{sorted(map(str, dtypes))} on {sorted(map(str, devices))}")
        if not self.params[0].dtype.is_floating_point:
            raise ValueError(f"sharpness: parameters must be floating point, got "
                             f"{self.params[0].dtype}")
        if not (math.isfinite(eta) and eta >= 0):
            raise ValueError(f"sharpness: eta must be finite and >= 0, got {eta}")
        self.dtype, self.device = self.params[0].dtype, self.params[0].device
        self.numels = [p.numel() for p in self.params]
        self.n = sum(self.numels)
        self.hvps = 0
        with torch.enable_grad():
            loss = loss_fn()
            if not isinstance(loss, Tensor) or loss.numel() != 1:
                shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
                raise ValueError(f"sharpness: the loss must be a one-element tensor, got {shape}")
            self.loss = float(loss.detach())
            if not math.isfinite(self.loss):
                raise FloatingPointError(f"sharpness: the loss is not finite ({self.loss})")
            if not loss.requires_grad:
                raise ValueError("sharpness: the loss does not depend on the parameters through "
                                 "autograd (computed under no_grad, or from detached tensors?)")
            grads = torch.autograd.grad(loss.reshape(()), self.params, create_graph=True,
                                        allow_unused=True)
        # A gradient without a graph is constant in w (the loss is at most linear in that
        # parameter): its Hessian rows are zero, and it takes no part in the products.
        self.live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        self.grads = [grads[i] for i in self.live]
        self.scale: Tensor | None = None
        if adaptive:
            w = torch.cat([p.detach().reshape(-1) for p in self.params])
            self.scale = w.abs() + eta

    def random(self, generator: torch.Generator | None, rademacher: bool = False) -> Tensor:
        """A Gaussian (or Rademacher) flat vector drawn from ``generator``."""
        where = generator.device if generator is not None else torch.device("cpu")
        if rademacher:
            v = torch.randint(0, 2, (self.n,), generator=generator, device=where)
            v = v.to(self.dtype).mul_(2).sub_(1)
        else:
            v = torch.randn(self.n, generator=generator, device=where, dtype=self.dtype)
        return v.to(self.device)

    def __call__(self, v: Tensor) -> Tensor:
        self.hvps += 1
        u = v if self.scale is None else v * self.scale
        out = torch.zeros_like(v)
        if self.live:
            pieces = u.split(self.numels)
            hv = torch.autograd.grad(self.grads, self.params,
                                     grad_outputs=[pieces[i].view_as(self.grads[j])
                                                   for j, i in enumerate(self.live)],
                                     retain_graph=True, allow_unused=True)
            chunks = out.split(self.numels)
            for chunk, h in zip(chunks, hv):
                if h is not None:
                    chunk.copy_(h.reshape(-1))
        if self.scale is not None:
            out.mul_(self.scale)
        if not bool(torch.isfinite(out).all()):
            raise FloatingPointError(f"sharpness: Hessian-vector product {self.hvps} is not "
                                     f"finite")
        return out


def _check_eigen_args(k: int, method: str, max_iter: int, tol: float, n: int) -> None:
    if method not in METHODS:
        raise ValueError(f"hessian_eigenvalues: method must be one of {METHODS}, got {method!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"hessian_eigenvalues: k must be an integer >= 1, got {k!r}")
    if k > n:
        raise ValueError(f"hessian_eigenvalues: k={k} exceeds the number of parameters n={n}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"hessian_eigenvalues: max_iter must be an integer >= 1, got "
                         f"{max_iter!r}")
    if method == "lanczos" and min(max_iter, n) < k:
        raise ValueError(f"hessian_eigenvalues: Lanczos needs max_iter >= k, got max_iter="
                         f"{max_iter}, k={k}")
    if not (isinstance(tol, int | float) and math.isfinite(tol) and tol >= 0):
        raise ValueError(f"hessian_eigenvalues: tol must be a finite number >= 0, got {tol!r}")


def _eigen(op: _HessianOperator, k: int, method: str, max_iter: int, tol: float,
           generator: torch.Generator | None) -> HessianEigenResult:
    _check_eigen_args(k, method, max_iter, tol, op.n)
    start = op.hvps
    solve = lanczos if method == "lanczos" else power_iteration
    pairs = solve(op, lambda: op.random(generator), k, max_iter=max_iter, tol=tol)
    return HessianEigenResult(values=pairs.values, vectors=pairs.vectors,
                              residuals=pairs.residuals, converged=pairs.converged,
                              iterations=pairs.iterations, hvps=op.hvps - start, method=method)


def _trace(op: _HessianOperator, probes: int, generator: torch.Generator | None
           ) -> HessianTraceResult:
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
        raise ValueError(f"hessian_trace: probes must be an integer >= 1, got {probes!r}")
    samples = torch.empty(probes, dtype=torch.float64)
    for j in range(probes):
        z = op.random(generator, rademacher=True)
        samples[j] = (z.double() @ op(z).double()).item()
    stderr = float(samples.std() / math.sqrt(probes)) if probes > 1 else math.nan
    return HessianTraceResult(estimate=float(samples.mean()), stderr=stderr, probes=probes,
                              hvps=probes, samples=samples)


def hessian_eigenvalues(loss_fn: Callable[[], Tensor], params: Iterable[Tensor], k: int = 1, *,
                        method: str = "lanczos", max_iter: int = 100, tol: float = 1e-3,
                        adaptive: bool = False, eta: float = 0.0,
                        generator: torch.Generator | None = None) -> HessianEigenResult:
    """The ``k`` largest eigenvalues of the Hessian of ``loss_fn()`` w.r.t. ``params``.

    Args:
        loss_fn: a closure returning the scalar loss (a one-element tensor) on the data the
            Hessian should be of; called once (not calling ``backward``).
        params: the parameters; those requiring grad are used, in order (the flat layout of
            ``vectors``).
        k: how many eigenvalues (``1 <= k <= n``).
        method: ``"lanczos"`` or ``"power"`` (see the module docstring).
        max_iter: Lanczos steps (and basis vectors stored) at most; for power iteration,
            products per power iteration at most.
        tol: stop when every pair's residual ``||Hv - lambda v|| <= tol * |lambda|``.
        adaptive: measure ``T H T``, ``T = diag(|w| + eta)`` (ASAM's scale-invariant sharpness).
        eta: the offset in ``T`` (``>= 0``).
        generator: draws the start vectors (reproducible results); the global RNG if None.

    Returns:
        values (descending), unit vectors, residuals, ``converged``, and ``hvps``.

    Raises:
        ValueError: bad ``k``/``method``/``max_iter``/``tol``, no parameter requiring grad, or a
            loss that is not a one-element tensor depending on the parameters.
        FloatingPointError: a non-finite loss or Hessian-vector product.
    """
    op = _HessianOperator(loss_fn, params, adaptive=adaptive, eta=eta)
    return _eigen(op, k, method, max_iter, tol, generator)


def hessian_trace(loss_fn: Callable[[], Tensor], params: Iterable[Tensor], *, probes: int = 100,
                  adaptive: bool = False, eta: float = 0.0,
                  generator: torch.Generator | None = None) -> HessianTraceResult:
    """Hutchinson's estimate of the trace of the Hessian of ``loss_fn()`` w.r.t. ``params``.

    ``tr(H) ~ (1/m) sum_j z_j' H z_j`` over ``m = probes`` Rademacher vectors ``z_j`` (entries
    +-1 with equal probability); per-probe variance ``2 ||H||_F^2 - 2 sum_i H_ii^2``, so the
    relative error falls as ``1/sqrt(probes)``. ``adaptive``/``eta``: the trace of ``T H T``,
    ``T = diag(|w| + eta)``. Arguments and errors as :func:`hessian_eigenvalues`.
    """
    op = _HessianOperator(loss_fn, params, adaptive=adaptive, eta=eta)
    return _trace(op, probes, generator)


def _examples(batch: Any) -> int:
    """The leading dimension of the batch's first tensor."""
    if isinstance(batch, Tensor):
        return batch.shape[0] if batch.dim() else 1
    items = batch.values() if isinstance(batch, Mapping) else batch
    if isinstance(items, Iterable) and not isinstance(items, str | bytes):
        for item in items:
            if isinstance(item, Tensor) and item.dim():
                return item.shape[0]
    raise ValueError(f"sharpness: cannot tell the number of examples of a batch of type "
                     f"{type(batch).__name__}; pass examples=")


def batch_mean(loss_fn: Callable[[Any], Tensor], batches: Iterable[Any], *,
               examples: Callable[[Any], int] | None = None) -> Callable[[], Tensor]:
    """A closure returning the loss over several batches as one mean over their examples.

    ``L = sum_b n_b L_b / sum_b n_b``, where ``L_b = loss_fn(b)`` is the mean loss over batch
    ``b``'s examples and ``n_b = examples(b)`` (default: the leading dimension of the batch's
    first tensor; a batch may be a tensor, a tuple/list, or a dict of tensors). It equals the
    mean loss over all the examples. The batches are read once, here, and kept.
    """
    return _batch_mean(loss_fn, batches, examples)[0]


def _batch_mean(loss_fn: Callable[[Any], Tensor], batches: Iterable[Any],
                examples: Callable[[Any], int] | None) -> tuple[Callable[[], Tensor], int]:
    """:func:`batch_mean`'s closure and the number of examples."""
    held = list(batches)
    if not held:
        raise ValueError("batch_mean: no batches given")
    count = examples or _examples
    sizes = [int(count(b)) for b in held]
    if any(s < 1 for s in sizes):
        raise ValueError(f"batch_mean: every batch needs >= 1 example, got sizes {sizes}")
    total = sum(sizes)

    def closure() -> Tensor:
        loss = None
        for b, size in zip(held, sizes):
            term = loss_fn(b) * (size / total)
            loss = term if loss is None else loss + term
        return loss  # type: ignore[return-value]

    return closure, total


def sharpness(model: nn.Module | Iterable[Tensor], loss_fn: Callable[[Any], Tensor],
              batches: Iterable[Any], *, k: int = 1, method: str = "lanczos",
              max_iter: int = 100, tol: float = 1e-3, probes: int = 32,
              adaptive: bool = False, eta: float = 0.0,
              examples: Callable[[Any], int] | None = None,
              generator: torch.Generator | None = None) -> SharpnessResult:
    """The sharpness of a model at its current weights on a data subset.

    The loss is :func:`batch_mean` of ``loss_fn`` over ``batches`` (``loss_fn(batch)`` returns
    the mean loss over the batch, computed with the model), evaluated once with its gradient's
    graph; the top ``k`` eigenvalues (:func:`hessian_eigenvalues`) and, if ``probes > 0``, the
    trace (:func:`hessian_trace`) are both of its Hessian, from the same graph. A module is put
    in ``eval()`` mode meanwhile (no dropout, BatchNorm on its running statistics and not
    updating them) and its modules' training flags are restored after. Its parameters requiring
    grad are measured; ``model`` may also be the parameters themselves. The graph of all the
    batches is held until the end: measure on a subset that fits in memory.

    Returns:
        the top eigenvalue, the eigen and trace results, the loss, the number of examples, and
        ``hvps``, all the Hessian-vector products used.
    """
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 0:
        raise ValueError(f"sharpness: probes must be an integer >= 0, got {probes!r}")
    closure, total = _batch_mean(loss_fn, batches, examples)
    modules = list(model.modules()) if isinstance(model, nn.Module) else []
    params = model.parameters() if isinstance(model, nn.Module) else model
    flags = [m.training for m in modules]
    try:
        if isinstance(model, nn.Module):
            model.eval()
        op = _HessianOperator(closure, params, adaptive=adaptive, eta=eta)
        eigen = _eigen(op, k, method, max_iter, tol, generator)
        trace = _trace(op, probes, generator) if probes else None
    finally:
        for m, flag in zip(modules, flags):
            m.training = flag
    return SharpnessResult(top_eigenvalue=float(eigen.values[0]), eigen=eigen, trace=trace,
                           loss=op.loss, examples=total, hvps=op.hvps, adaptive=adaptive)
