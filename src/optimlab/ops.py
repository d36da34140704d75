"""List-of-tensor primitives shared by every transform: the public vocabulary for writing rules.

This module is part of the stable public API (``optimlab.ops``): a new rule written against it
runs on the eager path, under ``torch.compile`` (``fused=True``), on DTensor shards and in a
differentiable step without any code of its own for those cases.

Each function takes lists of tensors and a scalar that is either a Python number (eager path:
torch's ``_foreach_*`` Scalar overloads, one launch per list) or a 0-dim tensor (compiled path:
the scalar is a graph input, so a changing learning rate or bias correction never recompiles).
Transforms call only these, so their update math is written once for both paths.

Functions ending in ``_`` modify their first argument in place; the others return new tensors.

The lists may hold DTensors (parameters sharded by FSDP2's ``fully_shard``, their gradients
and states): DTensor runs each ``_foreach_*`` op on the local shards, and the few ops it has no
rule for (``_foreach_copy_``, the out-of-place clamps, a plain tensor of the parameter's shape)
are replaced here by what it does support, so every rule works on sharded parameters
unchanged, eager and compiled. A list is either all DTensors or all plain tensors (as a bucket
is); plain lists pay one type check of their first tensor for this.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

Scalar = float | Tensor
TensorList = list[Tensor]

__all__ = [
    "Scalar",
    "TensorList",
    "abs",
    "abs_",
    "add",
    "add_",
    "add_scalar",
    "add_scalar_",
    "addcdiv_",
    "addcmul_",
    "clamp",
    "clamp_",
    "clone",
    "copy_",
    "div",
    "div_",
    "dot",
    "fmax_",
    "is_dtensor",
    "lerp_",
    "local_shard",
    "maximum",
    "maximum_",
    "mean",
    "minimum_",
    "mul",
    "mul_",
    "neg",
    "newton_schulz",
    "norms",
    "rdiv_",
    "scale_add_",
    "shard_like",
    "sign",
    "sign_",
    "soft_threshold_",
    "sqrt",
    "sqrt_",
    "sub",
    "whole",
    "zeros_like",
]


def _is_tensor(s: object) -> bool:
    return isinstance(s, Tensor)


#: Where torch defines DTensor (``torch.distributed._tensor`` before torch 2.5).
_DTENSOR_MODULES = ("torch.distributed.tensor", "torch.distributed._tensor")


def is_dtensor(x: object) -> bool:
    """Whether ``x`` is a DTensor (``torch.distributed.tensor.DTensor``).

    Never imports ``torch.distributed.tensor`` (most of a second): no DTensor can exist before
    that module is imported, so for plain tensors in a process that never imported it the check
    is a ``type`` comparison and two dictionary lookups.
    """
    if type(x) is Tensor:
        return False
    cls = _dtensor_class()
    return cls is not None and isinstance(x, cls)


def _dtensor_class() -> type | None:
    """The DTensor class, if its module was imported (``None``: no DTensor exists yet)."""
    for name in _DTENSOR_MODULES:
        cls = getattr(sys.modules.get(name), "DTensor", None)
        if cls is not None:
            return cls
    return None


def local_shard(t: Tensor) -> Tensor:
    """The local shard of a DTensor (no copy); a plain tensor itself."""
    return t.to_local() if is_dtensor(t) else t


def shard_like(local: Tensor, like: Tensor) -> Tensor:
    """``local``, a tensor shaped like ``local_shard(like)``, as the shard of a DTensor laid out
    like the DTensor ``like`` (no communication)."""
    dtensor: Any = _dtensor_class()
    return dtensor.from_local(local, like.device_mesh, like.placements, run_check=False,
                              shape=like.shape, stride=like.stride())


def clone(xs: Sequence[Tensor]) -> TensorList:
    """Return copies of ``xs``."""
    return [x.clone() for x in xs]


def copy_(xs: Sequence[Tensor], ys: Sequence[Tensor]) -> None:
    """``x <- y`` elementwise, in place."""
    xs, ys = list(xs), list(ys)
    if xs and (is_dtensor(xs[0]) or is_dtensor(ys[0])):
        # DTensor has no rule for ``_foreach_copy_``; its ``copy_`` copies shard to shard (and
        # redistributes where the placements differ).
        for x, y in zip(xs, ys):
            x.copy_(y)
    else:
        torch._foreach_copy_(xs, ys)


def neg(xs: Sequence[Tensor]) -> TensorList:
    """Return ``-x``."""
    return list(torch._foreach_neg(list(xs)))


def mul(xs: Sequence[Tensor], s: Scalar | Sequence[Tensor]) -> TensorList:
    """Return ``s * x`` (``s`` a scalar, or a list of tensors that broadcast against ``xs``:
    a column times a row is their outer product)."""
    return list(torch._foreach_mul(list(xs), s if not isinstance(s, (list, tuple)) else list(s)))


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


def scale_add_(xs: Sequence[Tensor], s: Scalar, ys: Sequence[Tensor]) -> None:
    """``x <- s * x + y`` in place (a momentum buffer's update, ``v <- mu * v + u``).

    With a number ``s`` on plain CPU tensors this is one pass over ``x`` and ``y``: torch's
    ``add`` with ``alpha`` written into ``x`` (``torch.add(y, x, alpha=s, out=x)``), with its
    rounding: ``y + s * x`` rounded once where the CPU kernels have a fused multiply-add (the
    vector and the scalar loops alike, so the result does not depend on how a tensor is cut
    into tiles), the product rounded first where they have none. CPU DTensors sharded alike
    take the same pass on their local shards, so a sharded step rounds as the unsharded one.
    Elsewhere (a 0-dim tensor ``s`` on the compiled path, other devices) it is ``x <- s * x``
    then ``x <- x + y``: one foreach launch each, the product rounded first. The two forms
    differ by that rounding of ``s * x`` (at most half an ulp of it) carried through the final
    one.
    """
    xs, ys = list(xs), list(ys)
    if xs and not _is_tensor(s) and xs[0].device.type == "cpu" and all(
            _same_layout(x, y) for x, y in zip(xs, ys)):
        for x, y in zip(xs, ys):
            if is_dtensor(x):  # the local shards (views of the DTensors' storage)
                x, y = x.to_local(), y.to_local()
            torch.add(y, x, alpha=s, out=x)
    else:
        torch._foreach_mul_(xs, s)
        torch._foreach_add_(xs, ys)


def _same_layout(x: Tensor, y: Tensor) -> bool:
    """Both plain tensors, or both DTensors on one mesh with the same placements (so that
    their local shards line up element for element)."""
    if not is_dtensor(x) and not is_dtensor(y):
        return True
    return (is_dtensor(x) and is_dtensor(y) and x.device_mesh == y.device_mesh
            and x.placements == y.placements)


def _expanded(xs: Sequence[Tensor], s: Tensor) -> TensorList:
    # ``_foreach_add(list, 0-dim tensor)`` is lowered by inductor through ``s.item()``, a host
    # synchronization on CUDA; adding the scalar broadcast to each tensor's shape (a view, no
    # memory) keeps it a kernel input.
    if xs and is_dtensor(xs[0]):
        from torch.distributed.tensor import DTensor
        return [DTensor.from_local(s.expand_as(x.to_local()), x.device_mesh, x.placements,
                                   run_check=False, shape=x.shape, stride=x.stride())
                for x in xs]
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
    if xs and is_dtensor(xs[0]):  # DTensor has rules for the in-place clamps only
        out = clone(xs)
        torch._foreach_clamp_min_(out, lo)
        torch._foreach_clamp_max_(out, hi)
        return out
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


def sign(xs: Sequence[Tensor]) -> TensorList:
    """Return ``sign(x)`` (-1, 0 or 1 elementwise; NaN stays NaN)."""
    return list(torch._foreach_sign(list(xs)))


def sign_(xs: Sequence[Tensor]) -> None:
    """``x <- sign(x)`` in place."""
    torch._foreach_sign_(list(xs))


def zeros_like(xs: Sequence[Tensor]) -> TensorList:
    """Return new zero tensors shaped, typed and laid out like ``xs`` (DTensors stay sharded)."""
    return [torch.zeros_like(x, memory_format=torch.preserve_format) for x in xs]


def sub(xs: Sequence[Tensor], ys: Sequence[Tensor]) -> TensorList:
    """Return ``x - y``."""
    return list(torch._foreach_sub(list(xs), list(ys)))


def minimum_(xs: Sequence[Tensor], ys: Sequence[Tensor]) -> None:
    """``x <- min(x, y)`` elementwise, in place."""
    torch._foreach_minimum_(list(xs), list(ys))


def maximum(xs: Sequence[Tensor], ys: Sequence[Tensor]) -> TensorList:
    """Return ``max(x, y)`` elementwise."""
    return list(torch._foreach_maximum(list(xs), list(ys)))


def clamp_(xs: Sequence[Tensor], lo: Scalar | None, hi: Scalar | None) -> None:
    """``x <- clamp(x, lo, hi)`` in place (``None``: no bound on that side)."""
    xs = list(xs)
    if _is_tensor(lo) or _is_tensor(hi):
        for x in xs:
            x.clamp_(lo, hi)
        return
    if lo is not None:
        torch._foreach_clamp_min_(xs, lo)
    if hi is not None:
        torch._foreach_clamp_max_(xs, hi)


def norms(xs: Sequence[Tensor], ord: float = 2.0) -> TensorList:
    """Return each tensor's ``ord``-norm as a 0-dim tensor (on the tensor's device: reading
    it as a number is a device synchronization). Of DTensors (FSDP2 shards): the norm of the
    whole tensor, reduced across the mesh (:func:`whole`), a plain tensor on every rank."""
    out = list(torch._foreach_norm(list(xs), ord))
    return [whole(n) for n in out] if out and is_dtensor(out[0]) else out


def dot(xs: Sequence[Tensor], ys: Sequence[Tensor]) -> Tensor:
    """Return ``sum_i <x_i, y_i>`` over the whole list as one 0-dim tensor (for rules whose
    statistics span every tensor, such as Prodigy's or hypergradient descent's; all tensors on
    one device).

    DTensors (FSDP2 shards): each rank sums its shards, and one all-reduce over the mesh adds
    the ranks' sums; the result is a plain tensor holding the global value on every rank (it
    differs from the unsharded sum by the order of the additions only)."""
    xs, ys = list(xs), list(ys)
    if not xs:
        return torch.zeros(())
    if is_dtensor(xs[0]):
        total = torch.sum(xs[0] * ys[0])  # placement Partial: the shards' sums, not reduced
        for x, y in zip(xs[1:], ys[1:]):
            total = total + torch.sum(x * y)
        return whole(total)
    return torch.stack([torch.sum(x * y) for x, y in zip(xs, ys)]).sum()


def whole(x: Tensor) -> Tensor:
    """A DTensor's global value as a plain tensor on every rank (gathered or all-reduced across
    its mesh, as its placements need); a plain tensor itself. For the statistics a rule reduces
    over whole tensors or whole groups (norms, dot products) under FSDP2."""
    return x.full_tensor() if is_dtensor(x) else x


def abs(xs: Sequence[Tensor]) -> TensorList:
    """Return ``|x|``."""
    return list(torch._foreach_abs(list(xs)))


def abs_(xs: Sequence[Tensor]) -> None:
    """``x <- |x|`` in place."""
    torch._foreach_abs_(list(xs))


def maximum_(xs: Sequence[Tensor], ys: Sequence[Tensor]) -> None:
    """``x <- max(x, y)`` elementwise, in place."""
    torch._foreach_maximum_(list(xs), list(ys))


def fmax_(xs: Sequence[Tensor], s: Scalar) -> None:
    """``x <- max(x, s)`` in place, where a NaN ``x`` loses (``torch.fmax``: it becomes ``s``),
    as Python's ``max(s, x)`` of a number and a NaN gives ``s``."""
    for x in xs:
        torch.fmax(x, s.to(x.dtype) if _is_tensor(s) else torch.tensor(s, dtype=x.dtype), out=x)


def mean(xs: Sequence[Tensor], dim: int) -> TensorList:
    """Return each tensor's mean over dimension ``dim``, kept as a dimension of size 1 (a
    matrix's row means for ``dim=-1``, its column means for ``dim=-2``)."""
    return [x.mean(dim, keepdim=True) for x in xs]


def _rounded(t: Tensor) -> Tensor:
    """``t`` itself; under ``torch.compile`` the same values forced into ``t``'s dtype.

    Inductor computes low-precision values in float32 inside a fused kernel and may skip
    their rounding to the tensor's dtype where eager rounds: a bfloat16 copy read by a
    reduction, a bfloat16 norm read by a division, and the products of matrices with a
    dimension of 1 (which it turns into elementwise code fused with their consumers). A round
    trip through the integer bits is a value it must store, so the compiled step sees the same
    numbers as the eager one (checked by ``tests/test_muon.py``)."""
    if not torch.compiler.is_compiling():
        return t
    int_type = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.view(int_type).bitwise_or(0).view(t.dtype)


def newton_schulz(xs: Sequence[Tensor], coefficients: tuple[float, float, float], steps: int,
                  eps: Scalar, dtype: torch.dtype = torch.bfloat16) -> TensorList:
    """Return each 2-D ``x`` approximately orthogonalized by ``steps`` Newton-Schulz iterations
    (Muon's; Jordan et al., 2024), computed in ``dtype`` and returned in ``x``'s dtype.

    With ``(a, b, c) = coefficients``, ``X`` is ``x`` rounded to ``dtype``, transposed when it
    has more rows than columns (so that ``X X^T`` is the smaller Gram matrix), then::

        X <- X / max(||X||_F, eps)
        repeat steps:  A = X X^T;  B = b A + c A A;  X <- a X + B X

    where ``B`` and the new ``X`` are each one ``addmm`` (the sum rounded once to ``dtype``),
    as in torch.optim.Muon. The quintic pushes every singular value of ``X`` (at most 1 after
    the normalization) towards 1 and keeps the singular vectors. DTensors are gathered whole,
    orthogonalized, and handed back sharded as they came (each rank computes the full matrix).
    """
    a, b, c = coefficients
    out = []
    for x in xs:
        whole = x.full_tensor() if is_dtensor(x) else x
        m = whole.to(dtype)
        tall = m.size(0) > m.size(1)
        if tall:
            m = m.T
        m = _rounded(m)
        norm = m.norm()
        norm = norm.clamp(min=eps.to(norm.dtype)) if _is_tensor(eps) else norm.clamp(min=eps)
        m = _rounded(m / _rounded(norm))
        for _ in range(steps):
            gram = _rounded(m @ m.T)
            poly = _rounded(torch.addmm(gram, gram, gram, beta=b, alpha=c))
            m = _rounded(torch.addmm(m, poly, m, beta=a))
        if tall:
            m = m.T
        m = m.to(x.dtype).contiguous()
        if is_dtensor(x):
            from torch.distributed.tensor import DTensor, Replicate
            m = DTensor.from_local(m, x.device_mesh, [Replicate()] * x.device_mesh.ndim,
                                   run_check=False).redistribute(x.device_mesh, x.placements)
        out.append(m)
    return out


# ----- recorded by autograd (a differentiable step) ----------------------------------------------
# Autograd saves some operands for the backward pass (``sqrt`` its result, ``mul`` both
# factors), and an in-place write to a saved tensor makes the backward pass fail. While autograd
# records (grad mode on and an operand requires grad: ``differentiable=True``), each in-place
# function above therefore computes its out-of-place form and puts the results in the list in
# place of the old entries (the list must be a ``list``): the rules read the same either way,
# and the chain copies the final parameters and states back once (``chain.run_recorded``).
# Outside autograd (every ordinary step runs under no_grad) the check costs one call.
def _recording(xs: Sequence[Tensor], args: tuple[object, ...]) -> bool:
    if not torch.is_grad_enabled():
        return False
    for a in (xs, *args):
        for t in a if isinstance(a, (list, tuple)) else (a,):
            if isinstance(t, Tensor) and t.requires_grad:
                return True
    return False


def _rebinding(in_place: Callable[..., None],
               out_of_place: Callable[..., Sequence[Tensor]]) -> Callable[..., None]:
    @functools.wraps(in_place)
    def op(xs: list[Tensor], *args: Any) -> None:
        if _recording(xs, args):
            if not isinstance(xs, list):
                raise TypeError(f"{in_place.__name__}: a recorded (differentiable) step needs "
                                "a list to update")
            xs[:] = out_of_place(xs, *args)
        else:
            in_place(xs, *args)
    return op


def _addc(combine: Callable[..., Any]) -> Callable[..., TensorList]:
    return lambda xs, a, b, s: add(xs, list(combine(list(a), list(b))), s)


copy_ = _rebinding(copy_, lambda xs, ys: list(ys))
mul_ = _rebinding(mul_, lambda xs, s: list(torch._foreach_mul(
    list(xs), list(s) if isinstance(s, (list, tuple)) else s)))
add_ = _rebinding(add_, add)
add_scalar_ = _rebinding(add_scalar_, add_scalar)
scale_add_ = _rebinding(scale_add_, lambda xs, s, ys: add(ys, xs, s))
soft_threshold_ = _rebinding(soft_threshold_, lambda xs, t: list(torch._foreach_sub(
    list(xs), clamp(xs, -t, t))))
lerp_ = _rebinding(lerp_, lambda xs, ys, w: add(xs, list(torch._foreach_sub(list(ys), list(xs))),
                                                w))
addcmul_ = _rebinding(addcmul_, _addc(torch._foreach_mul))
addcdiv_ = _rebinding(addcdiv_, _addc(torch._foreach_div))
sqrt_ = _rebinding(sqrt_, sqrt)
div_ = _rebinding(div_, div)
rdiv_ = _rebinding(rdiv_, lambda xs, ys: list(torch._foreach_div(list(ys), list(xs))))
abs_ = _rebinding(abs_, lambda xs: list(torch._foreach_abs(list(xs))))
sign_ = _rebinding(sign_, sign)
minimum_ = _rebinding(minimum_, lambda xs, ys: list(torch._foreach_minimum(list(xs), list(ys))))
clamp_ = _rebinding(clamp_, lambda xs, lo, hi: [torch.clamp(x, lo, hi) for x in xs])
fmax_ = _rebinding(fmax_, lambda xs, s: [torch.fmax(x, s.to(x.dtype) if _is_tensor(s) else
                                                  torch.tensor(s, dtype=x.dtype)) for x in xs])
maximum_ = _rebinding(maximum_, lambda xs, ys: list(torch._foreach_maximum(list(xs), list(ys))))

