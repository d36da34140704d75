"""Classic 2-D optimization test functions as lab tasks.

Each function is described by an immutable :class:`Function2D` (formula in torch ops, so
autograd gives the exact gradient; a numpy twin for contour plots; default start point; known
global minima and f*; a plotting box; a default step budget and target) and wrapped by one task
class, :class:`Function2DTask`. The model is an ``nn.Module`` holding a single float64
parameter ``p`` of shape ``(2,)`` initialised at the start point; ``n_train = 1``.

Registered tasks (all with ``kind="2d"`` and ``target_metric="suboptimality"`` = f(p) - f*):

====================  ==================================================================
``rosenbrock``        (a - x)^2 + b (y - x^2)^2, options ``a=1``, ``b=100``
``beale``             (1.5 - x + xy)^2 + (2.25 - x + xy^2)^2 + (2.625 - x + xy^3)^2
``himmelblau``        (x^2 + y - 11)^2 + (x + y^2 - 7)^2 (four global minima)
``rastrigin``         2A + sum_i (x_i^2 - A cos(2 pi x_i)), option ``A=10``
``saddle``            x^2 - y^2 + y^4 / 4 (strict saddle at the origin)
``quadratic``         0.5 p^T R diag(1, kappa) R^T p, options ``condition_number=100``,
                      ``angle=30`` (degrees)
====================  ==================================================================

Every factory also takes ``start=(x, y)`` (default: the function's standard start) and
``noise=sigma`` (default 0). Stochastic gradients: with ``noise > 0`` the batches are fresh
standard-normal vectors ``z`` of shape ``(2,)`` drawn from the run's generator, and
``loss(z) = f(p) + sigma * (z @ p)``, so the gradient is the true gradient plus
``N(0, sigma^2 I)`` noise (unbiased). There are no separate ``*-noisy`` names: ``noise=`` is
the one way to get the noisy variant (e.g. ``make_task("rosenbrock", noise=0.1)``).
``full_loss()`` and ``evaluate()`` always use the exact, noise-free f.

Sources: Rosenbrock (1960), "An automatic method for finding the greatest or least value of a
function", Comput. J. 3(3); Beale (1958), "On an iterative method for finding a local minimum
of a function of more than one variable", Princeton Tech. Rep. 25; Himmelblau (1972),
"Applied Nonlinear Programming", McGraw-Hill; Rastrigin (1974), "Systems of extremal
control", Nauka (2-D form as in Mühlenbein et al. 1991); Jamil & Yang (2013), "A literature
survey of benchmark functions for global optimization problems", Int. J. Math. Model. Numer.
Optim. 4(2) (standard starts, boxes and minima of the first four). The saddle and the rotated
quadratic are textbook examples (e.g. Nocedal & Wright, "Numerical Optimization", ch. 2-3).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ._common import check_min, check_real
from .base import Batch, Task, TaskInfo
from .registry import register

__all__ = [
    "FUNCTION_TASKS",
    "Function2D",
    "Function2DTask",
    "beale",
    "beale_function",
    "himmelblau",
    "himmelblau_function",
    "quadratic",
    "quadratic_function",
    "rastrigin",
    "rastrigin_function",
    "rosenbrock",
    "rosenbrock_function",
    "saddle",
    "saddle_function",
]

DTYPE = torch.float64


@dataclass(frozen=True)
class Function2D:
    """An immutable description of a 2-D test function.

    Attributes:
        name: registry name.
        description: one line (formula) for ``optimlab list``.
        f: ``f(x, y)`` on scalar tensors, written with torch ops (differentiable).
        f_numpy: ``f_numpy(x, y)`` on numpy arrays (broadcasting; for contour plots).
        start: default start point ``(x, y)``.
        minima: the known global minimizers.
        f_star: the global minimum value f*.
        box: plotting box ``(xmin, xmax, ymin, ymax)``.
        steps: a sensible default step budget.
        target: suboptimality f - f* that counts as solved.
        params: the function's own parameters (recorded in ``TaskInfo.options``).
        saddle: for functions built around a saddle point, ``(point, direction)``: the saddle
            and a unit vector along its unstable direction (``None``: no saddle to escape).
    """

    name: str
    description: str
    f: Callable[[Tensor, Tensor], Tensor]
    f_numpy: Callable[[np.ndarray, np.ndarray], np.ndarray]
    start: tuple[float, float]
    minima: tuple[tuple[float, float], ...]
    f_star: float
    box: tuple[float, float, float, float]
    steps: int
    target: float = 1e-6
    params: tuple[tuple[str, float], ...] = ()
    saddle: tuple[tuple[float, float], tuple[float, float]] | None = None


# ----------------------------------------------------------------------------- validation


def _check_start(start: Any) -> tuple[float, float]:
    """``start`` (a sequence, array or tensor of two finite numbers) as a pair of floats."""
    if isinstance(start, (str, bytes)) or not isinstance(start, (Sequence, np.ndarray, Tensor)):
        raise ValueError(f"option 'start' must be a pair (x, y), got {start!r}")
    values = list(start.tolist()) if isinstance(start, (np.ndarray, Tensor)) else list(start)
    if len(values) != 2:
        raise ValueError(f"option 'start' must have length 2, got {len(values)}")
    try:
        x, y = (check_real("start", v) for v in values)
    except ValueError:
        raise ValueError(f"option 'start' must hold two finite numbers, got {start!r}") from None
    return (x, y)


# ----------------------------------------------------------------------------- functions


def rosenbrock_function(a: float = 1.0, b: float = 100.0) -> Function2D:
    """Rosenbrock (1960): f = (a - x)^2 + b (y - x^2)^2; minimum f* = 0 at (a, a^2), b > 0.

    Standard start (-1.5, 2); the curved narrow valley makes plain gradient descent slow.
    """
    a = check_real("a", a)
    b = check_min("b", b, strict=True)

    def f(x: Tensor, y: Tensor) -> Tensor:
        return (a - x) ** 2 + b * (y - x**2) ** 2

    def f_numpy(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return (a - x) ** 2 + b * (y - x**2) ** 2

    return Function2D(
        name="rosenbrock", description=f"Rosenbrock (a={a:g}, b={b:g}): (a-x)^2 + b(y-x^2)^2",
        f=f, f_numpy=f_numpy, start=(-1.5, 2.0), minima=((a, a * a),), f_star=0.0,
        box=(min(-2.0, a - 1.0), max(2.0, a + 1.0), min(-1.0, a * a - 1.0),
             max(3.0, a * a + 1.0)),
        steps=5000, target=1e-6, params=(("a", a), ("b", b)),
    )


def beale_function() -> Function2D:
    """Beale (1958): f = (1.5 - x + xy)^2 + (2.25 - x + xy^2)^2 + (2.625 - x + xy^3)^2.

    Minimum f* = 0 at (3, 0.5); box [-4.5, 4.5]^2; flat regions and sharp ridges near the edges.
    """

    def f(x: Tensor, y: Tensor) -> Tensor:
        return ((1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2
                + (2.625 - x + x * y**3) ** 2)

    return Function2D(
        name="beale", description="Beale: (1.5-x+xy)^2 + (2.25-x+xy^2)^2 + (2.625-x+xy^3)^2",
        f=f, f_numpy=f, start=(1.0, 1.5), minima=((3.0, 0.5),), f_star=0.0,  # type: ignore[arg-type]
        box=(-4.5, 4.5, -4.5, 4.5), steps=5000, target=1e-6,
    )


#: Himmelblau's four global minima (f* = 0), the last three refined by Newton's method.
HIMMELBLAU_MINIMA: tuple[tuple[float, float], ...] = (
    (3.0, 2.0),
    (-2.805118086952745, 3.131312518250573),
    (-3.779310253377747, -3.283185991286169),
    (3.5844283403304917, -1.8481265269644034),
)


def himmelblau_function() -> Function2D:
    """Himmelblau (1972): f = (x^2 + y - 11)^2 + (x + y^2 - 7)^2.

    Four global minima with f* = 0 (at (3, 2) and three irrational points, see
    ``HIMMELBLAU_MINIMA``), a local maximum near (-0.271, -0.923); box [-5, 5]^2; start (0, 0).
    """

    def f(x: Tensor, y: Tensor) -> Tensor:
        return (x**2 + y - 11) ** 2 + (x + y**2 - 7) ** 2

    return Function2D(
        name="himmelblau", description="Himmelblau: (x^2+y-11)^2 + (x+y^2-7)^2, four minima",
        f=f, f_numpy=f, start=(0.0, 0.0), minima=HIMMELBLAU_MINIMA,  # type: ignore[arg-type]
        f_star=0.0, box=(-5.0, 5.0, -5.0, 5.0), steps=2000, target=1e-6,
    )


def rastrigin_function(A: float = 10.0) -> Function2D:
    """Rastrigin (1974), 2-D: f = 2A + sum_i (x_i^2 - A cos(2 pi x_i)), A >= 0.

    Global minimum f* = 0 at the origin, a grid of local minima near the integer points; box
    [-5.12, 5.12]^2; start (3.2, -2.7). Target: suboptimality 0.5 -- below the lowest
    non-global local minimum (about 0.995 for A=10, at (±0.995, 0) and (0, ±0.995)), so reaching
    it means the run escaped every local minimum; a local method from the default start will
    usually get stuck near (3, -3) (f about 18) and not reach it.
    """
    A = check_min("A", A)

    def f(x: Tensor, y: Tensor) -> Tensor:
        return (2 * A + (x**2 - A * torch.cos(2 * math.pi * x))
                + (y**2 - A * torch.cos(2 * math.pi * y)))

    def f_numpy(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return (2 * A + (x**2 - A * np.cos(2 * np.pi * x))
                + (y**2 - A * np.cos(2 * np.pi * y)))

    return Function2D(
        name="rastrigin", description=f"Rastrigin (A={A:g}): 2A + sum(x_i^2 - A cos(2 pi x_i))",
        f=f, f_numpy=f_numpy, start=(3.2, -2.7), minima=((0.0, 0.0),), f_star=0.0,
        box=(-5.12, 5.12, -5.12, 5.12), steps=2000, target=0.5, params=(("A", A),),
    )


def saddle_function() -> Function2D:
    """A strict saddle made bounded below: f = x^2 - y^2 + y^4 / 4.

    Saddle point at the origin (Hessian diag(2, -2)); global minima f* = -1 at (0, ±sqrt(2)).
    Start (0.5, 1e-3): almost on the saddle's stable manifold, so gradient descent first heads to
    the saddle and must then escape along y (noise helps). The task counts an iterate as having
    escaped once ``|y| > max(10 |y_start|, 0.01)`` (0.01 from the default start; see
    :meth:`Function2DTask.escaped`), and runs record the first such step as ``escape_step``.
    """

    def f(x: Tensor, y: Tensor) -> Tensor:
        return x**2 - y**2 + y**4 / 4

    r = math.sqrt(2.0)
    return Function2D(
        name="saddle", description="saddle: x^2 - y^2 + y^4/4, saddle at 0, minima (0, ±sqrt 2)",
        f=f, f_numpy=f, start=(0.5, 1e-3), minima=((0.0, r), (0.0, -r)),  # type: ignore[arg-type]
        f_star=-1.0, box=(-2.0, 2.0, -2.5, 2.5), steps=1000, target=1e-6,
        saddle=((0.0, 0.0), (0.0, 1.0)),
    )


def quadratic_function(condition_number: float = 100.0, angle: float = 30.0) -> Function2D:
    """Ill-conditioned rotated quadratic: f = 0.5 p^T A p, A = R diag(1, kappa) R^T.

    ``R`` is the rotation by ``angle`` degrees, ``kappa = condition_number >= 1``; minimum f* = 0
    at the origin. Start (2, 1); box [-2.5, 2.5]^2. Gradient descent with step 1/kappa converges
    linearly at rate 1 - 1/kappa.
    """
    kappa = check_min("condition_number", condition_number, 1)
    angle = check_real("angle", angle)
    t = math.radians(angle)
    c, s = math.cos(t), math.sin(t)
    # A = R diag(1, kappa) R^T with R = [[c, -s], [s, c]].
    a11 = c * c + kappa * s * s
    a22 = s * s + kappa * c * c
    a12 = c * s * (1.0 - kappa)

    def f(x: Tensor, y: Tensor) -> Tensor:
        return 0.5 * (a11 * x**2 + 2 * a12 * x * y + a22 * y**2)

    return Function2D(
        name="quadratic",
        description=f"quadratic 0.5 p^T A p, cond(A)={kappa:g}, rotated {angle:g} deg",
        f=f, f_numpy=f, start=(2.0, 1.0), minima=((0.0, 0.0),), f_star=0.0,  # type: ignore[arg-type]
        box=(-2.5, 2.5, -2.5, 2.5), steps=max(1000, int(20 * kappa)), target=1e-6,
        params=(("condition_number", kappa), ("angle", angle)),
    )


# ----------------------------------------------------------------------------- task


class _Point(nn.Module):
    """The model: one float64 parameter ``p`` of shape (2,)."""

    def __init__(self, start: tuple[float, float]) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(start, dtype=DTYPE))


class Function2DTask(Task):
    """A 2-D test function as a task: minimize ``function.f`` over one parameter ``p``.

    Args:
        function: the function's description.
        start: start point (default ``function.start``).
        noise: gradient-noise scale sigma >= 0 (see the module docstring).
    """

    n_train = 1
    #: Escaping a saddle: the component of ``p - saddle`` along the unstable direction exceeds
    #: ``ESCAPE_FACTOR`` times its value at the start, and at least ``ESCAPE_MIN`` (a start on
    #: the stable manifold has no component to multiply).
    ESCAPE_FACTOR = 10.0
    ESCAPE_MIN = 1e-2

    def __init__(self, function: Function2D, start: Any = None, noise: float = 0.0) -> None:
        self.function = function
        self.start = function.start if start is None else _check_start(start)
        self.noise = check_min("noise", noise)
        self.optimum = function.f_star
        suffix = f", gradient noise sigma={self.noise:g}" if self.noise > 0 else ""
        self.info = TaskInfo(
            name=function.name, description=function.description + suffix, kind="2d",
            steps=function.steps, target=function.target, target_metric="suboptimality",
            options={"start": list(self.start), "noise": self.noise, **dict(function.params)},
            deterministic_with_full_batch=self.noise == 0,
        )
        self._escape_radius: float | None = None
        if function.saddle is not None:
            offset = abs(self._unstable(self.start))
            self._escape_radius = max(self.ESCAPE_FACTOR * offset, self.ESCAPE_MIN)

    def _unstable(self, p: Sequence[float]) -> float:
        """The component of ``p - saddle`` along the saddle's unstable direction."""
        assert self.function.saddle is not None
        (sx, sy), (ux, uy) = self.function.saddle
        return (float(p[0]) - sx) * ux + (float(p[1]) - sy) * uy

    def population_obstacle(self) -> str | None:
        """None: ``loss`` is a pure function of ``p`` and the noise draw ``z``."""
        return None

    def setup(self, seed: int = 0, device: torch.device | str = "cpu") -> None:
        # Nothing random: the seed only matters through the batches' generator (noise).
        self.model = _Point(self.start).to(device)

    @property
    def point(self) -> Tensor:
        """The current parameter ``p = (x, y)``."""
        return self.model.p

    def f(self, p: Tensor) -> Tensor:
        """The exact function at ``p`` (shape (2,))."""
        return self.function.f(p[0], p[1])

    def batch_examples(self, batch: Batch) -> int:
        return 1  # the one "example" is the function itself (a noise draw is not data)

    def escaped(self) -> bool | None:
        """``None`` without a saddle; else whether the unstable component of ``p - saddle`` has
        grown beyond the escape radius (see :attr:`ESCAPE_FACTOR`)."""
        if self._escape_radius is None:
            return None
        return abs(self._unstable(self.model.p.detach().tolist())) > self._escape_radius

    def batches(self, batch_size: int | None, generator: torch.Generator) -> Iterator[Batch]:
        # batch_size is irrelevant (n_train = 1): every batch is the whole "data set".
        while True:
            if self.noise > 0:
                z = torch.randn(2, generator=generator, dtype=DTYPE)
                yield z.to(self.model.p.device)
            else:
                yield None

    def loss(self, batch: Batch) -> Tensor:
        p = self.model.p
        if batch is None or self.noise == 0:
            return self.f(p)
        z = torch.as_tensor(batch, dtype=p.dtype, device=p.device)
        return self.f(p) + self.noise * (z @ p)

    def full_loss(self) -> Tensor:
        return self.f(self.model.p)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        p = self.model.p.detach()
        value = float(self.f(p))
        x, y = float(p[0]), float(p[1])
        distance = min(math.hypot(x - mx, y - my) for mx, my in self.function.minima)
        return {
            "train_loss": value,
            "suboptimality": value - self.function.f_star,
            "distance_to_minimum": distance,
            "x": x,
            "y": y,
        }


# ----------------------------------------------------------------------------- registry


@register("rosenbrock")
def rosenbrock(*, start: Any = None, noise: float = 0.0, a: float = 1.0,
               b: float = 100.0) -> Function2DTask:
    """Rosenbrock task; see :func:`rosenbrock_function`."""
    return Function2DTask(rosenbrock_function(a=a, b=b), start=start, noise=noise)


@register("beale")
def beale(*, start: Any = None, noise: float = 0.0) -> Function2DTask:
    """Beale task; see :func:`beale_function`."""
    return Function2DTask(beale_function(), start=start, noise=noise)


@register("himmelblau")
def himmelblau(*, start: Any = None, noise: float = 0.0) -> Function2DTask:
    """Himmelblau task; see :func:`himmelblau_function`."""
    return Function2DTask(himmelblau_function(), start=start, noise=noise)


@register("rastrigin")
def rastrigin(*, start: Any = None, noise: float = 0.0,
              A: float = 10.0) -> Function2DTask:
    """Rastrigin task; see :func:`rastrigin_function`."""
    return Function2DTask(rastrigin_function(A=A), start=start, noise=noise)


@register("saddle")
def saddle(*, start: Any = None, noise: float = 0.0) -> Function2DTask:
    """Saddle task; see :func:`saddle_function`."""
    return Function2DTask(saddle_function(), start=start, noise=noise)


@register("quadratic")
def quadratic(*, start: Any = None, noise: float = 0.0, condition_number: float = 100.0,
              angle: float = 30.0) -> Function2DTask:
    """Ill-conditioned quadratic task; see :func:`quadratic_function`."""
    return Function2DTask(quadratic_function(condition_number=condition_number, angle=angle),
                          start=start, noise=noise)


#: The 2-D function tasks by name. The report rebuilds a run's function (for contours) only
#: from these built-in factories, with the run's stored options: it never imports a task
#: that a record names.
FUNCTION_TASKS: dict[str, Callable[..., Function2DTask]] = {
    "rosenbrock": rosenbrock, "beale": beale, "himmelblau": himmelblau,
    "rastrigin": rastrigin, "saddle": saddle, "quadratic": quadratic}
