"""2-D test functions as tasks: gradients, minima, noise, options."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from optimlab.lab.tasks import TASKS, Task, make_task
from optimlab.lab.tasks.functions2d import Function2DTask

NAMES = ["rosenbrock", "beale", "himmelblau", "rastrigin", "saddle", "quadratic"]


def _task(name: str, **options: object) -> Function2DTask:
    task = make_task(name, **options)
    assert isinstance(task, Function2DTask)
    task.setup(seed=0)
    return task


def _grad(task: Function2DTask, point: torch.Tensor) -> torch.Tensor:
    p = point.clone().requires_grad_(True)
    task.f(p).backward()
    assert p.grad is not None
    return p.grad


def _random_points(task: Function2DTask, n: int, seed: int) -> torch.Tensor:
    xmin, xmax, ymin, ymax = task.function.box
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, 2, generator=g, dtype=torch.float64)
    lo = torch.tensor([xmin, ymin], dtype=torch.float64)
    hi = torch.tensor([xmax, ymax], dtype=torch.float64)
    return lo + u * (hi - lo)


def test_all_registered() -> None:
    for name in NAMES:
        assert name in TASKS
        task = make_task(name)
        assert isinstance(task, Task)
        assert task.info.kind == "2d"
        assert task.info.target_metric == "suboptimality"
        assert task.info.target > 0 and task.info.steps > 0
        assert task.n_train == 1
        assert task.optimum == task.function.f_star


@pytest.mark.parametrize("name", NAMES)
def test_gradient_matches_finite_differences(name: str) -> None:
    task = _task(name)
    h = 1e-6
    for point in _random_points(task, 8, seed=NAMES.index(name)):
        grad = _grad(task, point)
        fd = torch.empty(2, dtype=torch.float64)
        for i in range(2):
            e = torch.zeros(2, dtype=torch.float64)
            e[i] = h
            fd[i] = (task.f(point + e) - task.f(point - e)) / (2 * h)
        scale = max(1.0, float(grad.abs().max()))
        # float64 central difference: truncation h**2 |f'''| / 6 ~ 2e-13 |f'''| plus rounding
        # eps |f| / h ~ 1.1e-10 |f| (|f| < 3e4 at these points, and large |f| comes with
        # large |grad|); measured at most 4.6e-4 of the bound.
        assert torch.allclose(grad, fd, rtol=0, atol=1e-6 * scale), (point, grad, fd)


@pytest.mark.parametrize("name", NAMES)
def test_minima(name: str) -> None:
    task = _task(name)
    for m in task.function.minima:
        point = torch.tensor(m, dtype=torch.float64)
        # The minima are given to full float64 precision: f - f* is a few roundings of terms of
        # size <= ~50 (measured <= 2.2e-16), the gradient H dx with dx ~ 1e-16 plus rounding
        # (measured <= 1.2e-14)
        assert float(task.f(point)) == pytest.approx(task.function.f_star, abs=1e-12)
        assert float(_grad(task, point).abs().max()) < 1e-8
        # Evaluate at the minimum: zero suboptimality and distance.
        with torch.no_grad():
            task.model.p.copy_(point)
        metrics = task.evaluate()
        assert metrics["suboptimality"] == pytest.approx(0.0, abs=1e-12)
        assert metrics["distance_to_minimum"] == pytest.approx(0.0, abs=1e-12)
        assert (metrics["x"], metrics["y"]) == m


@pytest.mark.parametrize("name", NAMES)
def test_minima_are_lowest_on_grid(name: str) -> None:
    task = _task(name)
    xmin, xmax, ymin, ymax = task.function.box
    x, y = np.meshgrid(np.linspace(xmin, xmax, 201), np.linspace(ymin, ymax, 201))
    # f* is the global minimum: grid values can undercut it by rounding only (~1e-15)
    assert task.function.f_numpy(x, y).min() >= task.function.f_star - 1e-9


@pytest.mark.parametrize("name", NAMES)
def test_f_numpy_agrees_with_torch(name: str) -> None:
    task = _task(name)
    points = _random_points(task, 50, seed=1)
    torch_values = torch.stack([task.f(p) for p in points]).numpy()
    numpy_values = task.function.f_numpy(points[:, 0].numpy(), points[:, 1].numpy())
    # The same float64 formulas in numpy and torch (their pow/cos may differ by an ulp): a few
    # ulps of terms <= |f|, ~1e-15 |f| (measured <= 4.2e-4 of the bound)
    np.testing.assert_allclose(numpy_values, torch_values, rtol=1e-12, atol=1e-12)
    # Broadcasting over a mesh (contour plots).
    x, y = np.meshgrid(np.linspace(-1, 1, 5), np.linspace(-1, 1, 7))
    assert task.function.f_numpy(x, y).shape == (7, 5)


@pytest.mark.parametrize("name", NAMES)
def test_setup_deterministic_and_at_start(name: str) -> None:
    a, b = _task(name), _task(name)
    assert torch.equal(a.model.p, b.model.p)
    assert tuple(a.model.p.tolist()) == a.function.start
    assert a.model.p.dtype == torch.float64
    assert a.parameters() == [a.model.p]
    metrics = a.evaluate()
    assert set(metrics) == {"train_loss", "suboptimality", "distance_to_minimum", "x", "y"}
    # the same float64 function at the same point (measured equal; approx: 1e-6 relative)
    assert metrics["train_loss"] == pytest.approx(a.full_loss().item())
    assert metrics["suboptimality"] == pytest.approx(metrics["train_loss"] - a.optimum)
    # Exact variant: batches are None and loss(None) == full_loss().
    batch = next(iter(a.batches(1, torch.Generator().manual_seed(0))))
    assert batch is None
    assert torch.equal(a.loss(batch), a.full_loss())


def test_noisy_batches_deterministic() -> None:
    a, b = _task("rosenbrock", noise=0.1), _task("rosenbrock", noise=0.1)
    stream_a = a.batches(1, torch.Generator().manual_seed(3))
    stream_b = b.batches(1, torch.Generator().manual_seed(3))
    za = [next(stream_a) for _ in range(5)]
    zb = [next(stream_b) for _ in range(5)]
    assert not torch.equal(za[0], za[1])
    for x, y in zip(za, zb):
        assert x.shape == (2,)
        assert torch.equal(x, y)
    assert torch.equal(a.full_loss(), _task("rosenbrock").full_loss())


@pytest.mark.parametrize("name", ["rosenbrock", "quadratic"])
def test_noisy_gradient_unbiased(name: str) -> None:
    sigma, n = 0.5, 2000
    task = _task(name, noise=sigma)
    exact = _grad(task, task.model.p.detach())
    stream = task.batches(None, torch.Generator().manual_seed(0))
    grads = []
    for _ in range(n):
        task.model.p.grad = None
        task.loss(next(stream)).backward()
        grads.append(task.model.p.grad.clone())
    g = torch.stack(grads)
    mean, std = g.mean(0), g.std(0)
    # The noise is N(0, sigma^2 I): std ~ sigma, mean within 4 standard errors. The sample std
    # of n = 2000 has standard error sigma / sqrt(2 n) = 1.6%: 10% is 6 of them (measured 2.9%
    # and 2.5%); 4 standard errors of the mean fail with odds 6e-5 (measured 0.9 and 0.2). The
    # noise comes from a seeded generator: the same on every CPU.
    assert torch.allclose(std, torch.full((2,), sigma, dtype=torch.float64), rtol=0.1)
    assert ((mean - exact).abs() < 4 * sigma / math.sqrt(n)).all(), (mean, exact)


def test_gradient_descent_on_quadratic_converges() -> None:
    kappa = 100.0
    task = _task("quadratic", condition_number=kappa)
    p = task.model.p
    lr = 1.0 / kappa
    start = task.evaluate()["suboptimality"]
    for _ in range(3000):
        p.grad = None
        task.full_loss().backward()
        with torch.no_grad():
            p -= lr * p.grad
    metrics = task.evaluate()
    # Linear convergence at rate (1 - 1/kappa) = 0.99: 3000 steps give 0.99**6000 ~ 6e-27 of the
    # start's suboptimality (measured 1.6e-26 absolute, 5e-27 relative): all bounds far away.
    assert metrics["suboptimality"] < 1e-6 * start
    assert metrics["suboptimality"] < task.info.target
    assert metrics["distance_to_minimum"] < 1e-3


def test_sgd_on_quadratic_with_optimlab_sgd() -> None:
    from optimlab import SGD

    task = _task("quadratic", condition_number=10.0, angle=45.0)
    opt = SGD(task.parameters(), lr=0.1)
    for _ in range(500):
        opt.zero_grad()
        task.full_loss().backward()
        opt.step()
    # rate 1 - lr * 1 = 0.9 on the flat direction: 0.9**1000 ~ 2e-46 (measured 3.9e-46)
    assert task.evaluate()["suboptimality"] < 1e-8


def test_quadratic_condition_and_rotation() -> None:
    task = _task("quadratic", condition_number=50.0, angle=30.0)
    hess = torch.autograd.functional.hessian(task.f, torch.zeros(2, dtype=torch.float64))
    eig = torch.linalg.eigvalsh(hess)
    # float64 Hessian of a quadratic and its 2x2 eigenvalues: ~1e-14 off (approx: 1e-6 rel)
    assert eig.tolist() == pytest.approx([1.0, 50.0])
    t = math.radians(30.0)
    # The stiff direction is R e_2 = (-sin t, cos t).
    v = torch.tensor([-math.sin(t), math.cos(t)], dtype=torch.float64)
    assert float(v @ hess @ v) == pytest.approx(50.0)


def test_saddle_point_is_a_saddle() -> None:
    task = _task("saddle")
    origin = torch.zeros(2, dtype=torch.float64)
    assert float(_grad(task, origin).abs().max()) == 0.0
    hess = torch.autograd.functional.hessian(task.f, origin)
    assert torch.linalg.eigvalsh(hess).tolist() == pytest.approx([-2.0, 2.0])  # exact here


def test_options_and_start() -> None:
    task = make_task("rosenbrock", start=(0, 0))
    task.setup()
    assert task.model.p.tolist() == [0.0, 0.0]
    assert task.info.options["start"] == [0.0, 0.0]
    task = _task("rosenbrock", a=2.0, b=10.0)
    assert task.function.minima == ((2.0, 4.0),)
    assert task.info.options["a"] == 2.0
    assert _task("rastrigin", A=5.0).info.options["A"] == 5.0
    assert make_task("saddle", noise=0.2).info.options["noise"] == 0.2
    assert make_task("beale", start=np.array([1.0, 2.0])).start == (1.0, 2.0)


@pytest.mark.parametrize(
    ("name", "options", "option"),
    [
        ("quadratic", {"condition_number": 0.5}, "condition_number"),
        ("quadratic", {"condition_number": math.inf}, "condition_number"),
        ("quadratic", {"angle": math.nan}, "angle"),
        ("rosenbrock", {"noise": -0.1}, "noise"),
        ("rosenbrock", {"noise": "big"}, "noise"),
        ("beale", {"start": (1.0,)}, "start"),
        ("beale", {"start": (1.0, 2.0, 3.0)}, "start"),
        ("himmelblau", {"start": (1.0, math.nan)}, "start"),
        ("saddle", {"start": (1.0, math.inf)}, "start"),
        ("saddle", {"start": "ab"}, "start"),
        ("saddle", {"start": 3.0}, "start"),
        ("rastrigin", {"A": -1.0}, "A"),
        ("rosenbrock", {"b": 0.0}, "b"),
        ("rosenbrock", {"a": math.nan}, "a"),
    ],
)
def test_bad_options(name: str, options: dict[str, object], option: str) -> None:
    with pytest.raises(ValueError, match=f"'{option}'"):
        make_task(name, **options)


def test_unknown_option() -> None:
    with pytest.raises(ValueError, match="bad options"):
        make_task("beale", a=1.0)


def test_escaping_the_saddle_is_defined_by_the_task() -> None:
    task = make_task("saddle")
    task.setup(0)
    assert task.escaped() is False  # the start (0.5, 1e-3) sits near the stable manifold
    with torch.no_grad():
        task.point.copy_(torch.tensor([0.5, 0.0099], dtype=torch.float64))
        assert task.escaped() is False  # |y| <= max(10 * 1e-3, 0.01)
        task.point.copy_(torch.tensor([0.0, -0.0101], dtype=torch.float64))
        assert task.escaped() is True  # either side of the saddle
    on_manifold = make_task("saddle", start=(0.5, 0.0))
    on_manifold.setup(0)
    assert on_manifold._escape_radius == 0.01  # no unstable offset: the floor applies
    for name in ("quadratic", "rosenbrock"):
        other = make_task(name)
        other.setup(0)
        assert other.escaped() is None  # no saddle to escape
