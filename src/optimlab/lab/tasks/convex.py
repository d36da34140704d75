"""Convex lab tasks: L2-regularized linear models on scikit-learn's bundled data sets.

Every task fits an ``nn.Linear`` (with bias) to a small data set that ships with scikit-learn
(no downloads) and knows its exact optimum, so a run can report ``suboptimality = f - f*``.

============================  ===========================  ======================================
``logreg-breast-cancer``      ``load_breast_cancer``        binary logistic regression (BCE with
                              (569 x 30, 2 classes)         logits); f* by Newton's method
``softmax-digits``            ``load_digits``               10-class softmax regression
                              (1797 x 64, 10 classes)       (cross-entropy); f* by Newton's method
``least-squares-diabetes``    ``load_diabetes``             least squares (MSE); f* in closed form
                              (442 x 10, real target)
============================  ===========================  ======================================

Common construction (all deterministic on CPU for a given seed):

* **Split**: a ``numpy.random.RandomState(seed)`` permutation gives 60% train, 20% validation,
  20% test.
* **Standardization**: features are standardized with the mean and standard deviation of the
  *training split only* (constant features get scale 1). The least-squares target is
  standardized the same way (train mean and std), so losses are O(1).
* **Model**: ``nn.Linear(d, k)`` (``k = 1`` for the binary and the regression task; ``k = 10``
  for digits) in ``dtype`` (default ``torch.float64``), initialised uniformly in
  ``[-1/sqrt(d), 1/sqrt(d)]`` from a ``torch.Generator`` seeded with ``seed``.
* **Objective** (``full_loss``): the mean-reduced data loss over the training split plus
  ``l2 / 2 * (||W||^2 + ||b||^2)``. The bias is regularized too: softmax cross-entropy is
  invariant to adding one constant to all biases, so only a penalty on every parameter makes
  the objective strongly convex with a unique minimizer (for all three tasks alike).
  ``loss(batch)`` is the same expression on a mini-batch (an unbiased estimate of it).
* **Optimum**: computed once per :meth:`ConvexTask.setup` in float64 (whatever ``dtype``) and
  cached per ``(task, seed, l2)``: the regularized normal equations for least squares
  (``numpy.linalg.lstsq`` when ``l2 == 0``), Newton's method with an explicit Hessian and a
  backtracking (Armijo) line search for the classifiers, started at zero and stopped when the
  gradient norm of the full objective is below ``1e-12``. ``optimum`` holds f* (a float) and
  ``optimal_parameters`` the minimizer as ``(weight, bias)`` float64 tensors.

Options (every factory): ``l2`` (default ``1e-3``; ``> 0`` for the classifiers, ``>= 0`` for
least squares) and ``dtype`` (``"float64"``/``"float32"`` or the torch dtype). Bad values raise
``ValueError`` naming the option.

``TaskInfo``: ``kind="convex"``, ``target_metric="suboptimality"``, ``target=1e-4`` (f - f*
below 1e-4 counts as solved), and a default step budget per task (see the factories).

``batches(batch_size, generator)`` yields ``(x, y)`` tuples forever: each epoch is a fresh
permutation of the training split drawn from ``generator``, cut into consecutive batches (the
last one of an epoch may be smaller); ``batch_size=None`` (or ``>= n_train``) yields the whole
training split, in its stored order, every time.

``evaluate()`` returns ``train_loss`` (the full objective, as a float64 computation),
``suboptimality`` (``train_loss - f*``), ``val_loss`` and ``test_loss`` (the unregularized
data loss on those splits) and, for the classifiers, ``train_accuracy``, ``val_accuracy`` and
``test_accuracy``.

Sources: Wolberg, Street & Mangasarian (1995), Wisconsin Diagnostic Breast Cancer; Alpaydin &
Kaynak (1998), optical recognition of handwritten digits (the 8x8 UCI version); Efron, Hastie,
Johnstone & Tibshirani (2004), "Least Angle Regression", Ann. Statist. 32(2) (diabetes).
Newton's method with backtracking: Boyd & Vandenberghe, "Convex Optimization", sec. 9.5.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from functools import cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import check_batch_size, check_real, epoch_batches, stacked_epoch_batches
from .base import Batch, StackedGradients, Task, TaskInfo
from .registry import register
from .stacked import linear_gradients

__all__ = [
    "ConvexTask",
    "LeastSquaresTask",
    "LogisticRegressionTask",
    "SoftmaxRegressionTask",
    "least_squares_diabetes",
    "logreg_breast_cancer",
    "softmax_digits",
]

#: Suboptimality f - f* that counts as solved, for every convex task.
TARGET = 1e-4
#: Newton's method stops when the full objective's gradient norm is below this.
NEWTON_TOL = 1e-12
TRAIN_FRACTION = 0.6
VAL_FRACTION = 0.2

_DTYPES = {"float64": torch.float64, "float32": torch.float32}


# ----------------------------------------------------------------------------- validation


def _check_l2(l2: Any, *, allow_zero: bool) -> float:
    """``l2`` as a finite float, ``>= 0`` with ``allow_zero``, else ``> 0``."""
    l2 = check_real("l2", l2)
    if l2 < 0 or (l2 == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0 (the optimum must exist and be unique)"
        raise ValueError(f"option 'l2' must be {bound}, got {l2}")
    return l2


def _check_dtype(dtype: Any) -> torch.dtype:
    """``dtype`` (a name such as ``"float32"`` or the torch dtype) as a torch dtype."""
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in _DTYPES:
        return _DTYPES[dtype.removeprefix("torch.")]
    raise ValueError(f"option 'dtype' must be one of {sorted(_DTYPES)}, got {dtype!r}")


# ----------------------------------------------------------------------------- data


@cache
def _load(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn import datasets  # bundled data only: no downloads

    loader = {"breast_cancer": datasets.load_breast_cancer, "digits": datasets.load_digits,
              "diabetes": datasets.load_diabetes}[dataset]
    bunch = loader()
    x = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    perm = np.random.RandomState(seed).permutation(n)
    n_train = round(TRAIN_FRACTION * n)
    n_val = round(VAL_FRACTION * n)
    return perm[:n_train], perm[n_train:n_train + n_val], perm[n_train + n_val:]


def _standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return [(a - mean) / std for a in (train, *others)]


def _augment(x: Tensor) -> Tensor:
    """``[x, 1]``: the bias as one more feature (for the optimum computations)."""
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)


# ----------------------------------------------------------------------------- optimum

_OPTIMA: dict[tuple[str, int, float], tuple[float, Tensor, Tensor]] = {}


def _newton(f: Callable[[Tensor], Tensor],
            grad_hess: Callable[[Tensor], tuple[Tensor, Tensor]], theta: Tensor,
            tol: float = NEWTON_TOL, max_iter: int = 100) -> Tensor:
    """Damped Newton's method with Armijo backtracking on a smooth strongly convex ``f``."""
    value = f(theta)
    for _ in range(max_iter):
        g, h = grad_hess(theta)
        gnorm = float(g.norm())
        if gnorm < tol:
            return theta
        step = -torch.linalg.solve(h, g)
        slope = float(g @ step)
        t = 1.0
        while True:
            candidate = theta + t * step
            new_value = f(candidate)
            if float(new_value) <= float(value) + 1e-4 * t * slope:
                break
            # At the noise floor of f, accept a full step that still shrinks the gradient.
            if t == 1.0 and float(new_value) <= float(value) + 1e-13 * abs(float(value)):
                g_new, _ = grad_hess(candidate)
                if float(g_new.norm()) < gnorm:
                    break
            t *= 0.5
            if t < 1e-12:
                raise RuntimeError(f"Newton line search failed at gradient norm {gnorm:.3e}")
        theta, value = candidate, new_value
    g, _ = grad_hess(theta)
    raise RuntimeError(f"Newton's method did not converge: gradient norm {float(g.norm()):.3e}")


# ----------------------------------------------------------------------------- tasks


class ConvexTask(Task):
    """An L2-regularized linear model on a scikit-learn data set (see the module docstring).

    Subclasses set ``dataset``, ``n_outputs``, ``classifier`` and implement
    :meth:`_data_loss` and :meth:`_solve`; a regression also overrides :meth:`_targets`. A
    subclass whose data loss is one of :data:`~optimlab.lab.tasks.stacked.LINEAR_LOSSES` names
    it in ``data_loss_name`` (populations then use its written-out gradients).

    Attributes (after :meth:`setup`): ``x_train``, ``y_train``, ``x_val``, ``y_val``,
    ``x_test``, ``y_test`` (features in ``dtype``; class labels as ``int64``, the regression
    target in ``dtype``), ``optimum`` (f*) and ``optimal_parameters`` (float64
    ``(weight, bias)``).
    """

    dataset: str
    n_outputs: int
    classifier: bool
    optimal_parameters: tuple[Tensor, Tensor]
    #: :meth:`_data_loss` by its name in :data:`~optimlab.lab.tasks.stacked.LINEAR_LOSSES`
    #: (the population's written-out gradients); ``None``: another loss (vmap)
    data_loss_name: str | None = None

    def __init__(self, *, name: str, description: str, steps: int, l2: float, dtype: Any,
                 allow_zero_l2: bool = False) -> None:
        self.l2 = _check_l2(l2, allow_zero=allow_zero_l2)
        self.dtype = _check_dtype(dtype)
        self.info = TaskInfo(
            name=name, description=f"{description}, l2={self.l2:g}", kind="convex",
            steps=steps, target=TARGET, target_metric="suboptimality",
            options={"l2": self.l2, "dtype": str(self.dtype).removeprefix("torch.")},
        )

    # -- subclass hooks

    def _targets(self, y: np.ndarray) -> Tensor:
        """Targets as a tensor: int64 class labels here; float64 values where overridden."""
        return torch.from_numpy(np.asarray(y, dtype=np.int64))

    def _data_loss(self, logits: Tensor, y: Tensor) -> Tensor:
        """Mean-reduced data loss of ``logits`` (shape ``(n, n_outputs)``)."""
        raise NotImplementedError

    def _solve(self, xa: Tensor, y: Tensor) -> Tensor:
        """The float64 minimizer ``[W | b]`` (shape ``(n_outputs, d + 1)``) on ``[x, 1]``."""
        raise NotImplementedError

    # -- lifecycle

    def population_obstacle(self) -> str | None:
        """None: ``loss`` is a pure function of ``(W, b)`` and the batch."""
        return None

    def population_gradients(self) -> StackedGradients | None:
        """The written-out gradients of the regularized linear model
        (:func:`~optimlab.lab.tasks.stacked.linear_gradients`), where its data loss is one
        they know (``data_loss_name``); else ``None`` (vmap)."""
        if self.data_loss_name is None:
            return None
        return linear_gradients(self.data_loss_name, self.l2)

    def setup(self, seed: int = 0, device: torch.device | str = "cpu") -> None:
        seed = int(seed)
        x, y = _load(self.dataset)
        i_train, i_val, i_test = _split(len(x), seed)
        x_train, x_val, x_test = _standardize(x[i_train], x[i_val], x[i_test])
        y_train, y_val, y_test = self._prepare_targets(y[i_train], y[i_val], y[i_test])

        # float64 copies on CPU: the optimum and the exact evaluation use these.
        self._x64 = [torch.from_numpy(a) for a in (x_train, x_val, x_test)]
        self._y64 = [self._targets(a) for a in (y_train, y_val, y_test)]

        def cast(t: Tensor) -> Tensor:
            t = t.to(self.dtype) if t.is_floating_point() else t
            return t.to(device)

        self.x_train, self.x_val, self.x_test = (cast(t) for t in self._x64)
        self.y_train, self.y_val, self.y_test = (cast(t) for t in self._y64)
        self.n_train = len(x_train)

        d = x.shape[1]
        gen = torch.Generator().manual_seed(seed)
        bound = 1.0 / math.sqrt(d)
        model = nn.Linear(d, self.n_outputs, bias=True, dtype=self.dtype)
        with torch.no_grad():
            for p in (model.weight, model.bias):
                p.copy_(torch.rand(p.shape, generator=gen, dtype=torch.float64) * 2 * bound
                        - bound)
        self.model = model.to(device)

        key = (self.info.name, seed, self.l2)
        if key not in _OPTIMA:
            theta = self._solve(_augment(self._x64[0]), self._y64[0])
            weight, bias = theta[:, :-1].contiguous(), theta[:, -1].contiguous()
            _OPTIMA[key] = (self._objective64(weight, bias), weight, bias)
        f_star, weight, bias = _OPTIMA[key]
        self.optimum = f_star
        self.optimal_parameters = (weight.clone(), bias.clone())

    def _prepare_targets(self, *ys: np.ndarray) -> list[np.ndarray]:
        return list(ys)

    # -- objective

    def _penalty(self, weight: Tensor, bias: Tensor) -> Tensor:
        return 0.5 * self.l2 * (weight.pow(2).sum() + bias.pow(2).sum())

    def _objective64(self, weight: Tensor, bias: Tensor) -> float:
        """The full training objective at ``(weight, bias)``, in float64 on CPU."""
        weight = weight.detach().to("cpu", torch.float64)
        bias = bias.detach().to("cpu", torch.float64)
        logits = F.linear(self._x64[0], weight, bias)
        return float(self._data_loss(logits, self._y64[0]) + self._penalty(weight, bias))

    def loss(self, batch: Batch) -> Tensor:
        x, y = batch
        return self._data_loss(self.model(x), y) + self._penalty(self.model.weight,
                                                                 self.model.bias)

    def full_loss(self) -> Tensor:
        return self.loss((self.x_train, self.y_train))

    def set_parameters(self, weight: Tensor, bias: Tensor) -> None:
        """Copy ``(weight, bias)`` into the model (e.g. ``task.set_parameters(*task.optimal_parameters)``)."""  # noqa: E501
        with torch.no_grad():
            self.model.weight.copy_(weight)
            self.model.bias.copy_(bias)

    # -- data

    def batches(self, batch_size: int | None, generator: torch.Generator) -> Iterator[Batch]:
        """Epoch-shuffled training batches (see the module docstring)."""
        batch_size = check_batch_size(batch_size)
        return epoch_batches(self.x_train, self.y_train, batch_size, generator)

    def population_batches(self, members: Sequence[Task], batch_size: int | None,
                           generators: Sequence[torch.Generator]) -> Iterator[Batch]:
        """The members' batches gathered at once (:func:`stacked_epoch_batches`)."""
        return stacked_epoch_batches([m.x_train for m in members],
                                     [m.y_train for m in members],
                                     check_batch_size(batch_size), generators)

    # -- metrics

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        weight = self.model.weight.detach().to("cpu", torch.float64)
        bias = self.model.bias.detach().to("cpu", torch.float64)
        train_loss = self._objective64(weight, bias)
        metrics = {"train_loss": train_loss}
        if self.optimum is not None:
            metrics["suboptimality"] = train_loss - self.optimum
        for split, x, y in zip(("train", "val", "test"), self._x64, self._y64):
            logits = F.linear(x, weight, bias)
            if split != "train":
                metrics[f"{split}_loss"] = float(self._data_loss(logits, y))
            if self.classifier:
                metrics[f"{split}_accuracy"] = float(
                    (self._predict(logits) == y).to(torch.float64).mean())
        return metrics

    def _predict(self, logits: Tensor) -> Tensor:
        raise NotImplementedError


class LogisticRegressionTask(ConvexTask):
    """Binary logistic regression (BCE with logits) on the breast-cancer data."""

    dataset = "breast_cancer"
    n_outputs = 1
    classifier = True
    data_loss_name = "bce_with_logits"

    def _data_loss(self, logits: Tensor, y: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(logits.squeeze(-1), y.to(logits.dtype))

    def _predict(self, logits: Tensor) -> Tensor:
        return (logits.squeeze(-1) > 0).to(torch.int64)

    def _solve(self, xa: Tensor, y: Tensor) -> Tensor:
        n, m = xa.shape
        yf = y.to(torch.float64)
        eye = torch.eye(m, dtype=torch.float64)

        def f(theta: Tensor) -> Tensor:
            z = xa @ theta
            return (F.binary_cross_entropy_with_logits(z, yf)
                    + 0.5 * self.l2 * theta.pow(2).sum())

        def grad_hess(theta: Tensor) -> tuple[Tensor, Tensor]:
            p = torch.sigmoid(xa @ theta)
            g = xa.T @ (p - yf) / n + self.l2 * theta
            h = (xa.T * (p * (1 - p))) @ xa / n + self.l2 * eye
            return g, h

        theta = _newton(f, grad_hess, torch.zeros(m, dtype=torch.float64))
        return theta.unsqueeze(0)


class SoftmaxRegressionTask(ConvexTask):
    """Multinomial (softmax) regression with cross-entropy on the 8x8 digits."""

    dataset = "digits"
    n_outputs = 10
    classifier = True
    data_loss_name = "cross_entropy"

    def _data_loss(self, logits: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(logits, y)

    def _predict(self, logits: Tensor) -> Tensor:
        return logits.argmax(dim=-1)

    def _solve(self, xa: Tensor, y: Tensor) -> Tensor:
        n, m = xa.shape
        k = self.n_outputs
        onehot = F.one_hot(y, k).to(torch.float64)
        eye = torch.eye(k * m, dtype=torch.float64)

        def f(flat: Tensor) -> Tensor:
            theta = flat.view(k, m)
            return F.cross_entropy(xa @ theta.T, y) + 0.5 * self.l2 * flat.pow(2).sum()

        def grad_hess(flat: Tensor) -> tuple[Tensor, Tensor]:
            theta = flat.view(k, m)
            p = torch.softmax(xa @ theta.T, dim=1)  # (n, k)
            g = ((p - onehot).T @ xa / n).reshape(-1) + self.l2 * flat
            # H = mean_i (diag(p_i) - p_i p_i^T) kron x_i x_i^T  (row-major [W | b] layout)
            blocks = torch.einsum("ia,ij,il->ajl", p, xa, xa) / n  # diag(p_i) part, (k, m, m)
            h = torch.block_diag(*blocks)
            outer = (p.unsqueeze(2) * xa.unsqueeze(1)).reshape(n, k * m)
            h = h - outer.T @ outer / n + self.l2 * eye
            return g, h

        flat = _newton(f, grad_hess, torch.zeros(k * m, dtype=torch.float64))
        return flat.view(k, m)


class LeastSquaresTask(ConvexTask):
    """Linear least squares (MSE) on the diabetes data, standardized target."""

    dataset = "diabetes"
    n_outputs = 1
    classifier = False
    data_loss_name = "mse"

    def _prepare_targets(self, *ys: np.ndarray) -> list[np.ndarray]:
        train = ys[0].astype(np.float64)
        mean, std = train.mean(), train.std()
        return [(y.astype(np.float64) - mean) / std for y in ys]

    def _targets(self, y: np.ndarray) -> Tensor:
        return torch.from_numpy(np.asarray(y, dtype=np.float64))

    def _data_loss(self, logits: Tensor, y: Tensor) -> Tensor:
        return F.mse_loss(logits.squeeze(-1), y.to(logits.dtype))

    def _solve(self, xa: Tensor, y: Tensor) -> Tensor:
        # f = |Xa theta - y|^2 / n + l2/2 |theta|^2  =>  (2/n Xa^T Xa + l2 I) theta = 2/n Xa^T y
        a = xa.numpy()
        b = y.numpy()
        n, m = a.shape
        if self.l2 == 0:
            theta = np.linalg.lstsq(a, b, rcond=None)[0]
        else:
            theta = np.linalg.solve(2.0 / n * a.T @ a + self.l2 * np.eye(m), 2.0 / n * a.T @ b)
        return torch.from_numpy(theta).unsqueeze(0)


# ----------------------------------------------------------------------------- registry


@register("logreg-breast-cancer")
def logreg_breast_cancer(*, l2: float = 1e-3, dtype: Any = "float64") -> LogisticRegressionTask:
    """Binary logistic regression on breast cancer (569 x 30); default 2000 steps."""
    return LogisticRegressionTask(
        name="logreg-breast-cancer", steps=2000, l2=l2, dtype=dtype,
        description="Logistic regression on breast cancer (30 features, BCE)")


@register("softmax-digits")
def softmax_digits(*, l2: float = 1e-3, dtype: Any = "float64") -> SoftmaxRegressionTask:
    """10-class softmax regression on the 8x8 digits (1797 x 64); default 3000 steps."""
    return SoftmaxRegressionTask(
        name="softmax-digits", steps=3000, l2=l2, dtype=dtype,
        description="Softmax regression on 8x8 digits (64 features, 10 classes, CE)")


@register("least-squares-diabetes")
def least_squares_diabetes(*, l2: float = 1e-3, dtype: Any = "float64") -> LeastSquaresTask:
    """Least squares on diabetes (442 x 10), ``l2 >= 0``; default 1000 steps."""
    return LeastSquaresTask(
        name="least-squares-diabetes", steps=1000, l2=l2, dtype=dtype, allow_zero_l2=True,
        description="Least squares on diabetes (10 features, MSE)")
