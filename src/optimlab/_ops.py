"""List-of-tensor primitives shared by every transform.

Each function takes lists of tensors and a scalar that is either a Python number (eager path:
torch's ``_foreach_*`` Scalar overloads, one launch per list) or a 0-dim tensor (compiled path:
the scalar is a graph input, so a changing learning rate or bias correction never recompiles).
Transforms call only these, so their update math is written once for both paths.

Functions ending in ``_`` modify their first argument in place; the others return new tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

Scalar = float | Tensor
TensorList = list[Tensor]

__all__ = [
    "Scalar",
    "TensorList",
    "abs_",
    "add",
    "add_",
    "add_scalar",
    "add_scalar_",
    "addcdiv_",
    "addcmul_",
    "clamp",
    "clone",
    "copy_",
    "div",
    "div_",
    "lerp_",
    "maximum_",
    "mul",
    "mul_",
    "neg",
    "rdiv_",
    "soft_threshold_",
    "sqrt",
    "sqrt_",
]


def _is_tensor(s: object) -> bool:
    return isinstance(s, Tensor)


def clone(xs: Sequence[Tensor]) -> TensorList:
    """Return copies of ``xs``."""
    return [x.clone() for x in xs]


def copy_(xs: Sequence[Tensor], ys: Sequence[Tensor]) -> None:
    """``x <- y`` elementwise, in place."""
    torch._foreach_copy_(list(xs), list(ys))


def neg(xs: Sequence[Tensor]) -> TensorList:
    """Return ``-x``."""
    return list(torch._foreach_neg(list(xs)))


def mul(xs: Sequence[Tensor], s: Scalar) -> TensorList:
    """Return ``s * x``."""
    return list(torch._foreach_mul(list(xs), s))


def mul_(xs: Sequence[Tensor], s: Scalar | Sequence[Tensor]) -> None:
    """``x <- s * x`` in place (``s`` a scalar or a list of tensors)."""
    torch._foreach_mul_(list(xs), s if not isinstance(s, (list, tuple)) else list(s))


def add(xs: Sequence[Tensor], ys: Sequence[Tensor], alpha: Scalar = 1.0) -> TensorList:
    """Return ``x + alpha * y``."""
    if _is_tensor(alpha):
        return list(torch._foreach_add(list(xs), torch._foreach_mul(list(ys), alpha)))
    return list(torch._foreach_add(list(xs), list(ys), alpha=alpha))


def add_(xs: Sequence[Tensor], ys: Sequence[Tensor], alpha: Scalar = 1.0) -> None:
    """``x <- x + alpha * y`` in place."""
    if _is_tensor(alpha):
        torch._foreach_add_(list(xs), torch._foreach_mul(list(ys), alpha))
    else:
        torch._foreach_add_(list(xs), list(ys), alpha=alpha)


def _expanded(xs: Sequence[Tensor], s: Tensor) -> TensorList:
    # ``_foreach_add(list, 0-dim tensor)`` is lowered by inductor through ``s.item()``, a host
    # synchronization on CUDA; adding the scalar broadcast to each tensor's shape (a view, no
    # memory) keeps it a kernel input.
    return [s.expand_as(x) for x in xs]


def add_scalar(xs: Sequence[Tensor], s: Scalar) -> TensorList:
    """Return ``x + s``."""
    if _is_tensor(s):
        return list(torch._foreach_add(list(xs), _expanded(xs, s)))
    return list(torch._foreach_add(list(xs), s))


def clamp(xs: Sequence[Tensor], lo: Scalar, hi: Scalar) -> TensorList:
    """Return ``x`` clamped to ``[lo, hi]``."""
    if _is_tensor(lo) or _is_tensor(hi):
        return [torch.clamp(x, lo, hi) for x in xs]
    return list(torch._foreach_clamp_max(torch._foreach_clamp_min(list(xs), lo), hi))


def soft_threshold_(xs: Sequence[Tensor], t: Scalar) -> None:
    """``x <- sign(x) * max(|x| - t, 0)`` in place (exact zeros where ``|x| <= t``)."""
    # x - clamp(x, -t, t) is the soft-threshold and subtracts x from itself exactly when |x| <= t.
    torch._foreach_sub_(list(xs), clamp(xs, -t, t))


def add_scalar_(xs: Sequence[Tensor], s: Scalar) -> None:
    """``x <- x + s`` in place."""
    if _is_tensor(s):
        torch._foreach_add_(list(xs), _expanded(xs, s))
    else:
        torch._foreach_add_(list(xs), s)


def lerp_(xs: Sequence[Tensor], ys: Sequence[Tensor], w: Scalar) -> None:
    """``x <- x + w * (y - x)`` in place."""
    if _is_tensor(w):
        torch._foreach_add_(list(xs), torch._foreach_mul(torch._foreach_sub(list(ys), list(xs)), w))
    else:
        torch._foreach_lerp_(list(xs), list(ys), w)


def addcmul_(xs: Sequence[Tensor], a: Sequence[Tensor], b: Sequence[Tensor], s: Scalar) -> None:
    """``x <- x + s * a * b`` in place."""
    if _is_tensor(s):
        torch._foreach_add_(list(xs), torch._foreach_mul(torch._foreach_mul(list(a), list(b)), s))
    else:
        torch._foreach_addcmul_(list(xs), list(a), list(b), s)


def addcdiv_(xs: Sequence[Tensor], a: Sequence[Tensor], b: Sequence[Tensor], s: Scalar) -> None:
    """``x <- x + s * a / b`` in place."""
    if _is_tensor(s):
        torch._foreach_add_(list(xs), torch._foreach_mul(torch._foreach_div(list(a), list(b)), s))
    else:
        torch._foreach_addcdiv_(list(xs), list(a), list(b), s)


def sqrt(xs: Sequence[Tensor]) -> TensorList:
    """Return ``sqrt(x)``."""
    return list(torch._foreach_sqrt(list(xs)))


def sqrt_(xs: Sequence[Tensor]) -> None:
    """``x <- sqrt(x)`` in place."""
    torch._foreach_sqrt_(list(xs))


def div(xs: Sequence[Tensor], ys: Sequence[Tensor] | Scalar) -> TensorList:
    """Return ``x / y`` (``y`` a list or a scalar)."""
    return list(torch._foreach_div(list(xs), list(ys) if isinstance(ys, (list, tuple)) else ys))


def div_(xs: Sequence[Tensor], ys: Sequence[Tensor] | Scalar) -> None:
    """``x <- x / y`` in place (``y`` a list or a scalar)."""
    torch._foreach_div_(list(xs), list(ys) if isinstance(ys, (list, tuple)) else ys)


def rdiv_(xs: Sequence[Tensor], ys: Sequence[Tensor]) -> None:
    """``x <- y / x`` in place (reuses ``x``'s memory instead of allocating the quotient)."""
    torch._foreach_reciprocal_(list(xs))
    torch._foreach_mul_(list(xs), list(ys))


def abs_(xs: Sequence[Tensor]) -> None:
    """``x <- |x|`` in place."""
    torch._foreach_abs_(list(xs))


def maximum_(xs: Sequence[Tensor], ys: Sequence[Tensor]) -> None:
    """``x <- max(x, y)`` elementwise, in place."""
    torch._foreach_maximum_(list(xs), list(ys))
