"""The OptimizerInfo-style parity matrix for the nine named optimizers.

For every named optimizer, hypothesis draws a point of its option grid (every flag torch.optim
exposes, learning rates in sensible ranges) and a random problem (one to three parameter tensors
of different shapes; gradients either random at every step or those of a random least-squares
loss evaluated by autograd). Each case runs ``STEPS`` steps and checks, at every step:

(a) optimlab equals ``torch.optim.<same name>(..., foreach=True)`` (float32 and float64);
(b) optimlab in float64 equals the scalar float64 reference of ``tests/reference.py``, fed the
    very gradients optimlab saw;
(c) ``foreach=False`` (one tensor at a time) equals the default multi-tensor path, bit for bit.

Errors are measured by :func:`reference.max_relative_error` (per tensor
``||a - b|| / max(||b||, tiny)``, maximum over tensors), applied to each parameter's whole path
(its 50 iterates stacked; see :func:`trajectory_error`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import REFERENCES, max_relative_error

import optimlab as ol

# ----- tolerances and sizes -------------------------------------------------------------------
#: (a) optimlab vs torch.optim in float32. Both run the same formulas with a few operations in
#: another order (e.g. Adam divides by ``bc1 * denom`` where torch scales the step by
#: ``lr / bc1``; torch's NAdam adds its two terms to the parameters one after the other, a
#: second rounding of the parameter per step). The parameters then differ by a random walk of
#: about half an ulp (2^-24 ~ 6e-8 relative) per step: ~4e-7 after 50 steps. Observed worst
#: cases in a survey of the grid: ~5e-7 for NAdam on a scalar parameter, <= 3e-7 for the others.
#: The regression problems feed a difference back only linearly (their gradient is
#: ``X^T X dp / BATCH``, and FAR keeps the adaptive steps away from the noise-dominated
#: optimum), so nothing amplifies it; and the elementwise operations are IEEE-exact, so the
#: error does not depend on the CPU: the 25 examples' worst (NAdam 3.5e-7, Adagrad 1.6e-7,
#: AdamW 1.5e-7, others <= 1e-7) are identical under AVX-512 and AVX2 kernels, with 1 or 2
#: threads and MKL's AVX-512 or AVX2 code paths.
TORCH_RTOL_F32 = 1e-6
#: (a) optimlab vs torch.optim in float64: the same reorderings cost ~1e-16 per step.
TORCH_RTOL_F64 = 1e-10
#: (b) optimlab in float64 vs the scalar float64 reference. For NAdam this holds only with
#: ``torch.get_default_dtype() == float64``: under the float32 default, torch.optim (and
#: optimlab, which keeps torch's state format) stores ``mu_product`` as a float32 scalar, whose
#: rounding (~6e-8 relative) enters the NAdam step coefficients directly. The NAdam reference case
#: therefore runs with the default dtype switched to float64 (restored afterwards) and keeps the
#: same 1e-10 bound.
REFERENCE_RTOL_F64 = 1e-10
#: Steps per case.
STEPS = 50
#: Hypothesis examples per optimizer and property (9 optimizers x 3 properties).
MAX_EXAMPLES = 25

SETTINGS = settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])

NAMES = ["SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "NAdam", "RAdam", "Adadelta", "Adamax"]

# ----- option grids ---------------------------------------------------------------------------


def log_uniform(lo: float, hi: float) -> st.SearchStrategy[float]:
    """Floats spread evenly in log scale over ``[lo, hi]``."""
    return st.floats(math.log10(lo), math.log10(hi)).map(lambda e: 10.0**e)


def zero_or(strategy: st.SearchStrategy[float]) -> st.SearchStrategy[float]:
    """Either exactly 0.0 (the option switched off) or a value of ``strategy``."""
    return st.one_of(st.just(0.0), strategy)


WEIGHT_DECAY = zero_or(log_uniform(1e-4, 1e-1))
BETA1 = st.one_of(st.sampled_from([0.0, 0.9]), st.floats(0.5, 0.99))
#: Range of b2: RAdam's rho_t crosses 5 after a few steps anywhere in it, so both of its
#: branches run (checked by test_radam_grid_reaches_both_branches).
B2_RANGE = (0.9, 0.9999)
BETAS = st.tuples(BETA1, st.floats(*B2_RANGE))
ADAM_EPS = st.sampled_from([1e-8, 1e-6, 1e-3])


@st.composite
def sgd_options(draw: st.DrawFn) -> dict[str, Any]:
    nesterov = draw(st.booleans())
    momentum = draw(st.floats(0.1, 0.95) if nesterov else zero_or(st.floats(0.1, 0.95)))
    # torch.optim.SGD: Nesterov needs momentum > 0 and no dampening.
    dampening = 0.0 if nesterov else draw(zero_or(st.floats(0.05, 0.9)))
    return {"lr": draw(log_uniform(1e-3, 0.2)), "momentum": momentum, "dampening": dampening,
            "weight_decay": draw(WEIGHT_DECAY), "nesterov": nesterov,
            "maximize": draw(st.booleans())}


OPTIONS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "SGD": sgd_options(),
    "Adagrad": st.fixed_dictionaries({
        "lr": log_uniform(1e-3, 0.5),
        "lr_decay": zero_or(log_uniform(1e-3, 0.5)),
        "weight_decay": WEIGHT_DECAY,
        "initial_accumulator_value": zero_or(log_uniform(1e-2, 1.0)),
        "eps": st.sampled_from([1e-10, 1e-6]),
        "maximize": st.booleans(),
    }),
    "RMSprop": st.fixed_dictionaries({
        "lr": log_uniform(1e-4, 1e-2),
        # alpha >= 0.9: with a small alpha, centered RMSprop's E - gbar^2 (a weighted variance
        # over the last ~1/(1 - alpha) gradients) is a small difference of large numbers once
        # the gradients settle, and magnifies every rounding, in any precision.
        "alpha": st.floats(0.9, 0.999),
        "eps": st.sampled_from([1e-8, 1e-6]),
        "weight_decay": WEIGHT_DECAY,
        "momentum": zero_or(st.floats(0.1, 0.95)),
        "centered": st.booleans(),
        "maximize": st.booleans(),
    }),
    "Adam": st.fixed_dictionaries({
        "lr": log_uniform(1e-4, 1e-1),
        "betas": BETAS,
        "eps": ADAM_EPS,
        "weight_decay": WEIGHT_DECAY,
        "amsgrad": st.booleans(),
        "decoupled_weight_decay": st.booleans(),
        "maximize": st.booleans(),
    }),
    "AdamW": st.fixed_dictionaries({
        "lr": log_uniform(1e-4, 1e-1),
        "betas": BETAS,
        "eps": ADAM_EPS,
        "weight_decay": st.one_of(st.just(1e-2), WEIGHT_DECAY),
        "amsgrad": st.booleans(),
        "maximize": st.booleans(),
    }),
    "NAdam": st.fixed_dictionaries({
        "lr": log_uniform(1e-4, 1e-1),
        "betas": BETAS,
        "eps": ADAM_EPS,
        "weight_decay": WEIGHT_DECAY,
        "momentum_decay": st.one_of(st.just(4e-3), st.floats(0.0, 1e-2)),
        "decoupled_weight_decay": st.booleans(),
        "maximize": st.booleans(),
    }),
    "RAdam": st.fixed_dictionaries({
        "lr": log_uniform(1e-4, 1e-1),
        "betas": BETAS,
        "eps": ADAM_EPS,
        "weight_decay": WEIGHT_DECAY,
        "decoupled_weight_decay": st.booleans(),
        "maximize": st.booleans(),
    }),
    "Adadelta": st.fixed_dictionaries({
        "lr": log_uniform(0.1, 1.0),
        "rho": st.floats(0.5, 0.99),
        "eps": st.sampled_from([1e-6, 1e-4]),
        "weight_decay": WEIGHT_DECAY,
        "maximize": st.booleans(),
    }),
    "Adamax": st.fixed_dictionaries({
        "lr": log_uniform(1e-4, 1e-1),
        "betas": BETAS,
        "eps": ADAM_EPS,
        "weight_decay": WEIGHT_DECAY,
        "maximize": st.booleans(),
    }),
}

# ----- problems -------------------------------------------------------------------------------

SHAPES = [(), (5,), (2, 3), (3, 1, 2), (4, 4)]
#: Rows of each tensor's least-squares data set, and rows of the minibatch of each step.
ROWS, BATCH = 40, 8
#: Distance of the least-squares solution from the start, per coordinate (between FAR and
#: 2 * FAR; the parameters start at scale 1). The adaptive methods move about ``lr`` per
#: coordinate and step, so with the drawn learning rates they are still travelling after
#: ``STEPS`` steps. Near a solution their update ``g / (sqrt(v) + eps)`` becomes a ratio of
#: rounding noise: the iterates turn chaotic, two correct implementations (or one in two
#: precisions) part at order one, and no parity check could hold there.
FAR = 20.0


@dataclass(frozen=True)
class Problem:
    """A random problem, described by a few drawn numbers (its arrays are built from them).

    ``kind == "random"``: the gradients are ``grad_scale * N(0, 1)`` draws, fixed in advance.

    ``kind == "regression"``: minibatch least squares. Parameter ``p_i`` has a data set
    ``(X_i, y_i)`` of ``ROWS`` rows with ``y_i = X_i w_i + noise`` and ``w_i`` ``FAR`` away; the
    loss at step ``t`` is ``sum_i 0.5 * mean_{r in B_t} (X_i[r] vec(p_i) - y_i[r])^2`` over a
    fixed random minibatch ``B_t`` of ``BATCH`` rows, its gradient taken by autograd at the
    current iterate (negated loss under ``maximize``, so the maximizer follows the same path).
    The minibatch noise keeps the gradients varying from step to step, as in training; with
    nearly constant gradients centered RMSprop's ``E - gbar^2`` is a small difference of large
    numbers that magnifies every rounding.
    """

    kind: str
    shapes: tuple[tuple[int, ...], ...]
    seed: int
    grad_scale: float = 1.0

    def arrays(self) -> dict[str, Any]:
        """float64 numpy arrays: ``init``; ``grads`` per step (random), or ``xs``, ``ys`` and
        ``batches`` (the row indices of each step) for regression."""
        rng = np.random.default_rng(self.seed)
        init = [rng.standard_normal(s) for s in self.shapes]
        if self.kind == "random":
            grads = [[self.grad_scale * rng.standard_normal(s) for s in self.shapes]
                     for _ in range(STEPS)]
            return {"init": init, "grads": grads}
        xs = [rng.standard_normal((ROWS, int(np.prod(s, dtype=int)))) for s in self.shapes]
        ys = []
        for p0, x in zip(init, xs, strict=True):
            away = rng.choice([-1.0, 1.0], x.shape[1]) * rng.uniform(FAR, 2 * FAR, x.shape[1])
            ys.append(x @ (p0.reshape(-1) + away) + 0.1 * rng.standard_normal(ROWS))
        batches = [rng.choice(ROWS, BATCH, replace=False) for _ in range(STEPS)]
        return {"init": init, "xs": xs, "ys": ys, "batches": batches}


@st.composite
def problems(draw: st.DrawFn) -> Problem:
    shapes = draw(st.lists(st.sampled_from(SHAPES), min_size=1, max_size=3, unique=True))
    kind = draw(st.sampled_from(["random", "regression"]))
    seed = draw(st.integers(0, 2**32 - 1))
    if kind == "random":
        return Problem(kind, tuple(shapes), seed, draw(st.sampled_from([1e-2, 1.0, 1e2])))
    return Problem(kind, tuple(shapes), seed)


Factory = Callable[[list[torch.Tensor]], torch.optim.Optimizer]
Trajectory = list[list[torch.Tensor]]


def run(factory: Factory, problem: Problem, dtype: torch.dtype, *, maximize: bool
        ) -> tuple[Trajectory, list[list[np.ndarray]]]:
    """Run ``STEPS`` steps; return the parameters after each step and the gradients fed."""
    arr = problem.arrays()
    params = [torch.tensor(a, dtype=dtype, requires_grad=True) for a in arr["init"]]
    if problem.kind == "regression":
        xs = [torch.tensor(x, dtype=dtype) for x in arr["xs"]]
        ys = [torch.tensor(y, dtype=dtype) for y in arr["ys"]]
    opt = factory(params)
    trajectory: Trajectory = []
    fed: list[list[np.ndarray]] = []
    for t in range(STEPS):
        opt.zero_grad()
        if problem.kind == "random":
            for p, g in zip(params, arr["grads"][t], strict=True):
                p.grad = torch.tensor(g, dtype=dtype)
        else:
            rows = torch.from_numpy(arr["batches"][t])
            loss = sum(0.5 * ((x[rows] @ p.reshape(-1) - y[rows]) ** 2).mean()
                       for p, x, y in zip(params, xs, ys, strict=True))
            (-loss if maximize else loss).backward()
        fed.append([p.grad.detach().numpy().astype(np.float64) for p in params])
        opt.step()
        trajectory.append([p.detach().clone() for p in params])
    return trajectory, fed


def trajectory_error(actual: Trajectory | list[list[np.ndarray]],
                     expected: Trajectory | list[list[np.ndarray]]) -> float:
    """:func:`max_relative_error` of two trajectories, each tensor taken over all its steps.

    The path of parameter ``i`` is stacked into one ``(steps, *shape)`` array, so its error is
    ``||A_i - B_i|| / ||B_i||`` over the whole path. A per-step ratio would be meaningless for a
    tensor whose norm passes near zero at some step (a scalar parameter crossing zero: one
    float32 ulp of its typical size, divided by its value at that step); a bug that changes any
    step moves the whole remaining path and still shows.
    """
    assert len(actual) == len(expected)

    def paths(traj: Trajectory | list[list[np.ndarray]]) -> list[np.ndarray]:
        return [np.stack([np.asarray(step[i], dtype=np.float64) for step in traj])
                for i in range(len(traj[0]))]

    return max_relative_error(paths(actual), paths(expected))


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Switch ``torch.get_default_dtype()`` inside the block, restoring it afterwards."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def optimlab_factory(name: str, options: dict[str, Any], **extra: Any) -> Factory:
    return lambda params: getattr(ol, name)(params, **options, **extra)


def torch_factory(name: str, options: dict[str, Any]) -> Factory:
    return lambda params: getattr(torch.optim, name)(params, **options, foreach=True)


# ----- the three properties -------------------------------------------------------------------


@pytest.mark.slow  # hypothesis matrix against torch.optim, ~2 s each
@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(data=st.data())
def test_matches_torch_optim(name: str, data: st.DataObject) -> None:
    """(a) optimlab == torch.optim (foreach=True), float32 and float64, at every step."""
    options = data.draw(OPTIONS[name], label="options")
    problem = data.draw(problems(), label="problem")
    mx = options["maximize"]
    for dtype, rtol in ((torch.float32, TORCH_RTOL_F32), (torch.float64, TORCH_RTOL_F64)):
        ours, _ = run(optimlab_factory(name, options), problem, dtype, maximize=mx)
        theirs, _ = run(torch_factory(name, options), problem, dtype, maximize=mx)
        err = trajectory_error(ours, theirs)
        assert err <= rtol, f"{name}{options} {dtype}: relative error {err:.3g} > {rtol:g}"


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(data=st.data())
def test_matches_reference(name: str, data: st.DataObject) -> None:
    """(b) optimlab in float64 == the scalar float64 reference, fed the same gradients."""
    options = data.draw(OPTIONS[name], label="options")
    problem = data.draw(problems(), label="problem")
    # NAdam's float32 mu_product under the float32 default: see REFERENCE_RTOL_F64.
    ctx = default_dtype(torch.float64) if name == "NAdam" else contextlib.nullcontext()
    with ctx:
        ours, fed = run(optimlab_factory(name, options), problem, torch.float64,
                        maximize=options["maximize"])
    expected = REFERENCES[name](problem.arrays()["init"], fed, **options)
    err = trajectory_error(ours, expected)
    assert err <= REFERENCE_RTOL_F64, (
        f"{name}{options}: relative error {err:.3g} > {REFERENCE_RTOL_F64:g}")


@pytest.mark.slow  # hypothesis matrix against torch.optim, ~2 s each
@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(data=st.data())
def test_foreach_false_equals_default(name: str, data: st.DataObject) -> None:
    """(c) ``foreach=False`` (one tensor at a time) == the default path, bit for bit: on the
    CPU torch's ``_foreach_*`` kernels loop over the per-tensor kernels, so both paths run the
    very same operations in the same order."""
    options = data.draw(OPTIONS[name], label="options")
    problem = data.draw(problems(), label="problem")
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]), label="dtype")
    mx = options["maximize"]
    single, _ = run(optimlab_factory(name, options, foreach=False), problem, dtype, maximize=mx)
    default, _ = run(optimlab_factory(name, options), problem, dtype, maximize=mx)
    for t, (a, b) in enumerate(zip(single, default, strict=True), start=1):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert torch.equal(x, y), (
                f"{name}{options} {dtype}: step {t}, parameter {i} differs by "
                f"{(x - y).abs().max().item():.3g}")


def test_radam_grid_reaches_both_branches() -> None:
    """With b2 anywhere in the drawn range, RAdam starts unrectified (rho_1 = 1 <= 5) and is
    rectified (rho_t > 5) within ``STEPS`` steps, so the matrix runs both of its branches."""
    for b2 in B2_RANGE:
        rho_inf = 2.0 / (1.0 - b2) - 1.0
        rho = [rho_inf - 2.0 * t * b2**t / (1.0 - b2**t) for t in range(1, STEPS + 1)]
        assert rho[0] <= 5.0 < rho[-1]
