"""Independent float64 reference implementations of the nine classic optimizers.

Written from the published update formulas (the pseudo-code in the torch.optim documentation,
which follows the original papers), element by element in plain Python floats. Nothing here
uses torch or optimlab: every parameter tensor is flattened to a list of Python floats, each
element keeps its own state in a small dict, and the update of one element at step ``t``
(1-based) is a few lines of scalar arithmetic that can be read against the formula.

Every optimizer function has the signature ``fn(params, grads, **hyperparameters)``:

* ``params``: the initial parameters, a list of array-likes (nested lists, numpy arrays or CPU
  tensors -- they are only read through ``numpy.asarray``), one per parameter tensor;
* ``grads``: a sequence over steps, each a list of array-likes aligned with ``params`` (the raw
  gradients, before ``maximize`` negates them and before any weight decay is added);

and returns the trajectory: a list with one entry per step, each a list of float64 numpy arrays
(the parameters after that step), shaped like ``params``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "REFERENCES",
    "adadelta",
    "adagrad",
    "adam",
    "adamax",
    "adamw",
    "max_relative_error",
    "nadam",
    "radam",
    "rmsprop",
    "sgd",
]

#: Floor of the denominator in :func:`max_relative_error` (avoids 0/0 for all-zero tensors).
TINY = 1e-300

ElementStep = Callable[[int, float, float, dict[str, float]], float]
Trajectory = list[list[np.ndarray]]


def max_relative_error(actual: Sequence[Any], expected: Sequence[Any]) -> float:
    """Relative error of a list of tensors against an expected list, as one number.

    Per tensor ``i`` it is ``||a_i - b_i||_2 / max(||b_i||_2, TINY)`` (Frobenius norm over all
    elements, computed in float64, ``b`` the expected value); the result is the maximum over the
    tensors. Every tolerance in the test suite is a bound on this quantity. Inputs may be numpy
    arrays, nested lists or CPU tensors.
    """
    if len(actual) != len(expected):
        raise ValueError(f"{len(actual)} tensors against {len(expected)}")
    worst = 0.0
    for a, b in zip(actual, expected, strict=True):
        a64 = np.asarray(a, dtype=np.float64)
        b64 = np.asarray(b, dtype=np.float64)
        if a64.shape != b64.shape:
            raise ValueError(f"shape {a64.shape} against {b64.shape}")
        err = float(np.linalg.norm((a64 - b64).ravel()))
        ref = max(float(np.linalg.norm(b64.ravel())), TINY)
        worst = max(worst, err / ref)
    return worst


def _run(params: Sequence[Any], grads: Sequence[Sequence[Any]], new_state: Callable[[], dict],
         step: ElementStep) -> Trajectory:
    """Drive a per-element rule: ``p <- step(t, p, g, state)`` for every element and step."""
    arrays = [np.asarray(p, dtype=np.float64) for p in params]
    shapes = [a.shape for a in arrays]
    flat = [[float(x) for x in a.ravel()] for a in arrays]
    states = [[new_state() for _ in f] for f in flat]
    trajectory: Trajectory = []
    for t, gs in enumerate(grads, start=1):
        if len(gs) != len(flat):
            raise ValueError(f"step {t}: {len(gs)} gradients for {len(flat)} parameters")
        for ps, ss, g, shape in zip(flat, states, gs, shapes, strict=True):
            g_flat = [float(x) for x in np.asarray(g, dtype=np.float64).ravel()]
            if len(g_flat) != len(ps):
                raise ValueError(f"step {t}: gradient of {len(g_flat)} elements for a "
                                 f"parameter of shape {shape}")
            for j, gj in enumerate(g_flat):
                ps[j] = step(t, ps[j], gj, ss[j])
        trajectory.append([np.array(ps, dtype=np.float64).reshape(s)
                           for ps, s in zip(flat, shapes, strict=True)])
    return trajectory


# ----- SGD ----------------------------------------------------------------------------------
def sgd(params: Sequence[Any], grads: Sequence[Sequence[Any]], *, lr: float = 1e-3,
        momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 0.0,
        nesterov: bool = False, maximize: bool = False) -> Trajectory:
    """SGD with heavy-ball / Nesterov momentum (Polyak 1964; Sutskever et al. 2013)::

        g <- -g if maximize;  g <- g + wd * p
        b <- g at t = 1, else b <- momentum * b + (1 - dampening) * g
        g <- g + momentum * b  (nesterov)  or  g <- b
        p <- p - lr * g
    """

    def step(t: int, p: float, g: float, s: dict[str, float]) -> float:
        if maximize:
            g = -g
        if weight_decay != 0:
            g = g + weight_decay * p
        if momentum != 0:
            s["b"] = g if t == 1 else momentum * s["b"] + (1.0 - dampening) * g
            g = g + momentum * s["b"] if nesterov else s["b"]
        return p - lr * g

    return _run(params, grads, dict, step)


# ----- Adagrad ------------------------------------------------------------------------------
def adagrad(params: Sequence[Any], grads: Sequence[Sequence[Any]], *, lr: float = 1e-2,
            lr_decay: float = 0.0, weight_decay: float = 0.0,
            initial_accumulator_value: float = 0.0, eps: float = 1e-10,
            maximize: bool = False) -> Trajectory:
    """AdaGrad (Duchi, Hazan & Singer 2011) with torch's inverse-time learning-rate decay::

        clr = lr / (1 + (t - 1) * lr_decay)
        G <- G + g^2   (G_0 = initial_accumulator_value)
        p <- p - clr * g / (sqrt(G) + eps)
    """

    def step(t: int, p: float, g: float, s: dict[str, float]) -> float:
        if maximize:
            g = -g
        if weight_decay != 0:
            g = g + weight_decay * p
        clr = lr / (1.0 + (t - 1) * lr_decay)
        s["G"] = s["G"] + g * g
        return p - clr * g / (math.sqrt(s["G"]) + eps)

    return _run(params, grads, lambda: {"G": float(initial_accumulator_value)}, step)


# ----- RMSprop ------------------------------------------------------------------------------
def rmsprop(params: Sequence[Any], grads: Sequence[Sequence[Any]], *, lr: float = 1e-2,
            alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0,
            momentum: float = 0.0, centered: bool = False, maximize: bool = False
            ) -> Trajectory:
    """RMSprop (Hinton 2012), centered variant (Graves 2013), with momentum::

        E <- alpha * E + (1 - alpha) * g^2
        centered:  gbar <- alpha * gbar + (1 - alpha) * g;  d = sqrt(E - gbar^2) + eps
        otherwise: d = sqrt(E) + eps
        momentum > 0: b <- momentum * b + g / d;  p <- p - lr * b     (b_0 = 0)
        otherwise:    p <- p - lr * g / d
    """

    def step(t: int, p: float, g: float, s: dict[str, float]) -> float:
        if maximize:
            g = -g
        if weight_decay != 0:
            g = g + weight_decay * p
        s["E"] = alpha * s["E"] + (1.0 - alpha) * g * g
        if centered:
            s["gbar"] = alpha * s["gbar"] + (1.0 - alpha) * g
            d = math.sqrt(s["E"] - s["gbar"] * s["gbar"]) + eps
        else:
            d = math.sqrt(s["E"]) + eps
        if momentum > 0:
            s["b"] = momentum * s["b"] + g / d
            return p - lr * s["b"]
        return p - lr * g / d

    return _run(params, grads, lambda: {"E": 0.0, "gbar": 0.0, "b": 0.0}, step)


# ----- Adam / AdamW -------------------------------------------------------------------------
def adam(params: Sequence[Any], grads: Sequence[Sequence[Any]], *, lr: float = 1e-3,
         betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
         weight_decay: float = 0.0, amsgrad: bool = False, maximize: bool = False,
         decoupled_weight_decay: bool = False) -> Trajectory:
    """Adam (Kingma & Ba 2015), AMSGrad (Reddi et al. 2018), AdamW (Loshchilov & Hutter 2019)::

        decoupled: p <- p * (1 - lr * wd)      coupled: g <- g + wd * p
        m <- b1 * m + (1 - b1) * g;  v <- b2 * v + (1 - b2) * g^2
        amsgrad: vmax <- max(vmax, v), used in place of v below
        m_hat = m / (1 - b1^t);  v_hat = v / (1 - b2^t)
        p <- p - lr * m_hat / (sqrt(v_hat) + eps)
    """
    b1, b2 = betas

    def step(t: int, p: float, g: float, s: dict[str, float]) -> float:
        if maximize:
            g = -g
        if weight_decay != 0:
            if decoupled_weight_decay:
                p = p * (1.0 - lr * weight_decay)
            else:
                g = g + weight_decay * p
        s["m"] = b1 * s["m"] + (1.0 - b1) * g
        s["v"] = b2 * s["v"] + (1.0 - b2) * g * g
        v = s["v"]
        if amsgrad:
            s["vmax"] = max(s["vmax"], s["v"])
            v = s["vmax"]
        m_hat = s["m"] / (1.0 - b1**t)
        v_hat = v / (1.0 - b2**t)
        return p - lr * m_hat / (math.sqrt(v_hat) + eps)

    return _run(params, grads, lambda: {"m": 0.0, "v": 0.0, "vmax": 0.0}, step)


def adamw(params: Sequence[Any], grads: Sequence[Sequence[Any]], *, lr: float = 1e-3,
          betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
          weight_decay: float = 1e-2, amsgrad: bool = False, maximize: bool = False
          ) -> Trajectory:
    """AdamW: :func:`adam` with decoupled weight decay (default 1e-2)."""
    return adam(params, grads, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                amsgrad=amsgrad, maximize=maximize, decoupled_weight_decay=True)


# ----- NAdam --------------------------------------------------------------------------------
def nadam(params: Sequence[Any], grads: Sequence[Sequence[Any]], *, lr: float = 2e-3,
          betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
          weight_decay: float = 0.0, momentum_decay: float = 4e-3,
          decoupled_weight_decay: bool = False, maximize: bool = False) -> Trajectory:
    """NAdam (Dozat 2016) with torch's momentum-decay schedule ``psi``::

        mu_t = b1 * (1 - 0.5 * 0.96^(t * psi))
        m <- b1 * m + (1 - b1) * g;  v <- b2 * v + (1 - b2) * g^2
        m_hat = mu_{t+1} * m / (1 - prod_{i<=t+1} mu_i) + (1 - mu_t) * g / (1 - prod_{i<=t} mu_i)
        v_hat = v / (1 - b2^t)
        p <- p - lr * m_hat / (sqrt(v_hat) + eps)
    """
    b1, b2 = betas

    def mu(t: int) -> float:
        return b1 * (1.0 - 0.5 * 0.96 ** (t * momentum_decay))

    def step(t: int, p: float, g: float, s: dict[str, float]) -> float:
        if maximize:
            g = -g
        if weight_decay != 0:
            if decoupled_weight_decay:
                p = p * (1.0 - lr * weight_decay)
            else:
                g = g + weight_decay * p
        s["prod"] = s["prod"] * mu(t)  # prod_{i<=t} mu_i
        prod_next = s["prod"] * mu(t + 1)  # prod_{i<=t+1} mu_i
        s["m"] = b1 * s["m"] + (1.0 - b1) * g
        s["v"] = b2 * s["v"] + (1.0 - b2) * g * g
        m_hat = mu(t + 1) * s["m"] / (1.0 - prod_next) + (1.0 - mu(t)) * g / (1.0 - s["prod"])
        v_hat = s["v"] / (1.0 - b2**t)
        return p - lr * m_hat / (math.sqrt(v_hat) + eps)

    return _run(params, grads, lambda: {"m": 0.0, "v": 0.0, "prod": 1.0}, step)


# ----- RAdam --------------------------------------------------------------------------------
def radam(params: Sequence[Any], grads: Sequence[Sequence[Any]], *, lr: float = 1e-3,
          betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
          weight_decay: float = 0.0, decoupled_weight_decay: bool = False,
          maximize: bool = False) -> Trajectory:
    """RAdam (Liu et al. 2020)::

        m <- b1 * m + (1 - b1) * g;  v <- b2 * v + (1 - b2) * g^2;  m_hat = m / (1 - b1^t)
        rho_inf = 2 / (1 - b2) - 1;  rho_t = rho_inf - 2 t b2^t / (1 - b2^t)
        rho_t > 5: l = sqrt(1 - b2^t) / (sqrt(v) + eps)
                   r = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
                   p <- p - lr * m_hat * r * l
        otherwise: p <- p - lr * m_hat
    """
    b1, b2 = betas
    rho_inf = 2.0 / (1.0 - b2) - 1.0

    def step(t: int, p: float, g: float, s: dict[str, float]) -> float:
        if maximize:
            g = -g
        if weight_decay != 0:
            if decoupled_weight_decay:
                p = p * (1.0 - lr * weight_decay)
            else:
                g = g + weight_decay * p
        s["m"] = b1 * s["m"] + (1.0 - b1) * g
        s["v"] = b2 * s["v"] + (1.0 - b2) * g * g
        m_hat = s["m"] / (1.0 - b1**t)
        rho_t = rho_inf - 2.0 * t * b2**t / (1.0 - b2**t)
        if rho_t > 5.0:
            l_t = math.sqrt(1.0 - b2**t) / (math.sqrt(s["v"]) + eps)
            r_t = math.sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                            / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
            return p - lr * m_hat * r_t * l_t
        return p - lr * m_hat

    return _run(params, grads, lambda: {"m": 0.0, "v": 0.0}, step)


# ----- Adadelta -----------------------------------------------------------------------------
def adadelta(params: Sequence[Any], grads: Sequence[Sequence[Any]], *, lr: float = 1.0,
             rho: float = 0.9, eps: float = 1e-6, weight_decay: float = 0.0,
             maximize: bool = False) -> Trajectory:
    """Adadelta (Zeiler 2012)::

        v <- rho * v + (1 - rho) * g^2
        dx = sqrt(u + eps) / sqrt(v + eps) * g
        u <- rho * u + (1 - rho) * dx^2
        p <- p - lr * dx
    """

    def step(t: int, p: float, g: float, s: dict[str, float]) -> float:
        if maximize:
            g = -g
        if weight_decay != 0:
            g = g + weight_decay * p
        s["v"] = rho * s["v"] + (1.0 - rho) * g * g
        dx = math.sqrt(s["u"] + eps) / math.sqrt(s["v"] + eps) * g
        s["u"] = rho * s["u"] + (1.0 - rho) * dx * dx
        return p - lr * dx

    return _run(params, grads, lambda: {"v": 0.0, "u": 0.0}, step)


# ----- Adamax -------------------------------------------------------------------------------
def adamax(params: Sequence[Any], grads: Sequence[Sequence[Any]], *, lr: float = 2e-3,
           betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
           weight_decay: float = 0.0, maximize: bool = False) -> Trajectory:
    """Adamax (Kingma & Ba 2015, sec. 7.1)::

        m <- b1 * m + (1 - b1) * g
        u <- max(b2 * u, |g| + eps)
        p <- p - lr / (1 - b1^t) * m / u
    """
    b1, b2 = betas

    def step(t: int, p: float, g: float, s: dict[str, float]) -> float:
        if maximize:
            g = -g
        if weight_decay != 0:
            g = g + weight_decay * p
        s["m"] = b1 * s["m"] + (1.0 - b1) * g
        s["u"] = max(b2 * s["u"], abs(g) + eps)
        return p - lr / (1.0 - b1**t) * s["m"] / s["u"]

    return _run(params, grads, lambda: {"m": 0.0, "u": 0.0}, step)


#: The reference of each named optimizer, by its class name.
REFERENCES: dict[str, Callable[..., Trajectory]] = {
    "SGD": sgd,
    "Adagrad": adagrad,
    "RMSprop": rmsprop,
    "Adam": adam,
    "AdamW": adamw,
    "NAdam": nadam,
    "RAdam": radam,
    "Adadelta": adadelta,
    "Adamax": adamax,
}
