"""The transform protocol: an update rule over lists of tensors.

A :class:`Transform` turns the incoming update list ``u`` (the gradients, at the start of a chain)
into a new update list, reading its hyperparameters from the parameter group and keeping its
per-parameter state as plain tensors in ``optimizer.state[p]``. A chain runs transforms in order
and finally adds the update to the parameters, so the sign convention is: the update a transform
returns is what would be *added* after ``scale_by_learning_rate`` multiplies it by ``-lr``.

Every step has two phases, so that the same rule runs eagerly and under ``torch.compile``:

``prepare(group, bucket) -> dict``
    Plain Python, once per bucket (parameters sharing device, dtype and step count): turns the
    group's hyperparameters and the step count into the scalars the math needs (bias
    corrections, ...). Floats are passed to ``apply`` as numbers on the eager path and as 0-dim
    tensors on the compiled path; bools and ints are structural (they choose code paths).
``apply(u, bucket, sc) -> list[Tensor]``
    Tensor math only, through :mod:`optimlab.ops`. It must not modify ``u`` in place (``u`` may
    be the ``.grad`` tensors themselves); it may update its own state tensors in place.

Transforms hold no tensors and no mutable state, so one instance may serve many optimizers.

A step is a transaction (see :class:`optimlab.chain.ChainOptimizer`): it applies completely or
raises with the parameters and states as they were. A rule keeps that promise by raising only
where nothing has changed yet: in :meth:`Transform.validate`, :meth:`~Transform.init_state`,
:meth:`~Transform.needed_state` and :meth:`~Transform.prepare` (refuse there, naming the key).
``apply``, ``global_stat`` and ``after_step`` update tensors in place and must not raise for
inputs that passed those; the chain runs them once on ``meta`` tensors (shapes and dtypes, no
data) whenever the step's structure is new, so that one that refuses a shape or a dtype does
so before anything changed.
"""

from __future__ import annotations

import copy
import math
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .. import ops

__all__ = ["Bucket", "Deferred", "Transform", "check_range"]


@dataclass
class Bucket:
    """The parameters of one group that are stepped together.

    All share device, dtype and step count. ``state`` maps a state key to the list of that
    state's tensors, aligned with ``params``. ``new_keys`` names the state entries created at
    this step (a momentum buffer created now starts from the update, as in torch.optim.SGD).
    ``stored`` maps the keys of states kept in low precision for float32 parameters (the
    chain's ``state_dtype``: bfloat16, or 8-bit block-wise codes, :mod:`optimlab.quantization`)
    to their stored tensors: ``state`` then holds float32 copies, which the chain rounds back
    (bfloat16: stochastically, seeded by ``seed``; 8-bit: to the nearest code) after the rules
    ran; rules see only ``state``.
    """

    params: list[Tensor]
    grads: list[Tensor]
    state: dict[str, list[Tensor]]
    step: int
    new_keys: frozenset[str] = field(default_factory=frozenset)
    stored: dict[str, list[Tensor]] = field(default_factory=dict)
    seed: Any = 0
    #: Step-count tensors the chain still has to increment (``step`` already counts this step).
    steps: list[Tensor] = field(default_factory=list)
    #: One parameter whose gradient is a sparse COO tensor (embeddings): the chain passes the
    #: sparse update to the rules that :meth:`Transform.accepts_sparse` and densifies it before
    #: the others.
    sparse: bool = False


@dataclass
class Deferred:
    """An update not yet multiplied out: ``sum_i scale_i * num_i / den`` (no division where
    ``den`` is ``None``), returned by :meth:`Transform.apply_deferred`.

    When only the learning rate (and rules that fold into the step) follow, the chain adds
    ``-lr`` times it to the parameters term by term, ``p <- p + (-lr * scale_i) * num_i / den``
    (one ``addcdiv`` each, torch.optim's own final step), instead of computing the quotient
    into a new tensor and adding that. Anything else first gets :meth:`materialize`'s list.
    """

    #: ``(num_i, scale_i)``: ``scale_i`` a number (eager) or a 0-dim tensor (compiled). The
    #: tensors are the rule's states or temporaries, never the parameters (which rules that
    #: fold into the step change before the update is added).
    terms: list[tuple[list[Tensor], Any]]
    den: list[Tensor] | None = None

    def materialize(self) -> list[Tensor]:
        """The update as a new list of tensors."""
        (num, scale), rest = self.terms[0], self.terms[1:]
        if self.den is None:
            out = ops.mul(num, scale)
            for num_i, scale_i in rest:
                ops.add_(out, num_i, scale_i)
            return out
        out = ops.div(num, self.den)
        if not (isinstance(scale, float) and scale == 1.0):
            ops.mul_(out, scale)
        for num_i, scale_i in rest:
            ops.addcdiv_(out, num_i, self.den, scale_i)
        return out

    def add_to(self, params: list[Tensor], alpha: Any) -> None:
        """``p <- p + alpha * update``, one pass per term.

        A number ``alpha`` is first rounded to the precision the kernels compute in (float32,
        or float64 for float64 and complex128 parameters), as a scalar passed to a kernel on
        its own is: the step then depends on the learning rate only as the kernels see it, so
        a float32 tensor ``lr`` and the number it was made from give the same bits."""
        if isinstance(alpha, float) and params[0].dtype not in (torch.float64, torch.complex128):
            alpha = struct.unpack("f", struct.pack("f", alpha))[0]
        for num, scale in self.terms:
            if self.den is None:
                ops.add_(params, num, alpha * scale)
            else:
                ops.addcdiv_(params, num, self.den, alpha * scale)


def _tensor_number(name: str, value: Tensor) -> float | int | bool:
    if value.numel() != 1:
        raise ValueError(f"{name} must be a number or a one-element tensor, got shape "
                         f"{tuple(value.shape)}")
    return value.item()


def check_range(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = True,
    finite: bool = True,
) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``low <(=) value <(=) high``.

    NaN is always refused, and so are ``inf`` and ``-inf`` unless ``finite=False`` (only
    settings where infinity means something, such as the max-norm ``norm_type=inf``): an
    infinite learning rate or decay passes an open-ended range but turns the parameters into
    inf or NaN at the first step. The message for a non-finite value follows torch.optim's
    (``Invalid lr: inf (...)``); for a finite value out of range it states the range.
    """
    if isinstance(value, Tensor):
        value = _tensor_number(name, value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    v = float(value)
    lo = "(-inf" if low is None else ("(" if low_open else "[") + f"{low:g}"
    hi = "inf)" if high is None else f"{high:g}" + (")" if high_open else "]")
    if v != v or (finite and not math.isfinite(v)):
        what = "a finite number" if finite else "a number"
        raise ValueError(f"Invalid {name}: {value!r} ({name} must be {what} in {lo}, {hi})")
    lo_ok = low is None or (v > low if low_open else v >= low)
    hi_ok = high is None or (v < high if high_open else v <= high)
    if not (lo_ok and hi_ok):
        raise ValueError(f"{name} must be in {lo}, {hi}, got {value!r}")


class Transform:
    """Base class of an update rule. Subclasses set the class attributes and override methods.

    Attributes:
        hyperparams: group keys this rule reads, with this instance's values (the chain puts
            them into the optimizer's defaults; param groups may override them).
        state_keys: names of the per-parameter state tensors this rule may create.
    """

    #: Group keys -> values given to this instance.
    hyperparams: dict[str, Any]
    #: Per-parameter state keys this rule may create.
    state_keys: tuple[str, ...] = ()

    def __init__(self, **hyperparams: Any) -> None:
        self.hyperparams = dict(hyperparams)
        self._hkeys: dict[str, str] = {k: k for k in hyperparams}
        self._skeys: dict[str, str] = {k: k for k in type(self).state_keys}
        self.validate(self.hyperparams)

    # ----- naming -------------------------------------------------------------------------
    def with_keys(self, **rename: str) -> Transform:
        """Return a copy whose group keys or state keys are renamed (``old=new``).

        Needed only when two transforms of one chain would share a key, e.g.
        ``add_l2(1e-4).with_keys(weight_decay="l2")`` beside ``add_decayed_weights(0.01)``.
        """
        new = copy.copy(self)
        new._hkeys = dict(self._hkeys)
        new._skeys = dict(self._skeys)
        new.hyperparams = {}
        for old, value in self.hyperparams.items():
            new.hyperparams[rename.get(self._hkeys[old], self._hkeys[old])] = value
        for internal, key in self._hkeys.items():
            new._hkeys[internal] = rename.get(key, key)
        for internal, key in self._skeys.items():
            new._skeys[internal] = rename.get(key, key)
        unknown = set(rename) - set(self._hkeys.values()) - set(self._skeys.values())
        if unknown:
            raise ValueError(
                f"{type(self).__name__}.with_keys: unknown key(s) {sorted(unknown)}; "
                f"allowed: {sorted(set(self._hkeys.values()) | set(self._skeys.values()))}"
            )
        return new

    def group_key(self, name: str) -> str:
        """The group key under which hyperparameter ``name`` is stored."""
        return self._hkeys.get(name, name)

    def state_key(self, name: str) -> str:
        """The state key under which state ``name`` is stored."""
        return self._skeys.get(name, name)

    def group_keys(self) -> Iterable[str]:
        """Group keys this rule reads."""
        return self._hkeys.values()

    def state_names(self) -> tuple[str, ...]:
        """State keys this rule may create."""
        return tuple(self._skeys[k] for k in type(self).state_keys)

    def hyperparameter(self, group: Mapping[str, Any], name: str) -> Any:
        """Read hyperparameter ``name`` from ``group`` (tensors become Python numbers).

        A key the group lacks falls back to this instance's own value (named optimizers use
        rules whose extra knobs torch.optim does not expose, e.g. RMSprop's momentum has no
        ``dampening`` key).
        """
        key = self.group_key(name)
        v = group[key] if key in group else self.hyperparams[key]
        if isinstance(v, Tensor):
            v = _tensor_number(key, v)
        elif isinstance(v, (tuple, list)):
            v = tuple(_tensor_number(f"{key}[{i}]", x) if isinstance(x, Tensor) else x
                      for i, x in enumerate(v))
        return v

    def learning_rate(self, group: Mapping[str, Any]) -> float | Tensor:
        """The group's ``lr`` as a number, or, when a step is being differentiated
        (``differentiable=True``) and ``lr`` is a tensor that requires grad, that tensor, so
        that the gradient reaches it (hypergradients). Rules that scale by ``lr`` read it here.
        """
        key = self.group_key("lr")
        v = group[key] if key in group else self.hyperparams[key]
        if isinstance(v, Tensor) and v.requires_grad and torch.is_grad_enabled():
            return v.reshape(())
        return float(v)

    # ----- behaviour ------------------------------------------------------------------------
    def validate(self, group: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` naming the key if a hyperparameter in ``group`` is invalid.

        ``group`` is keyed by group keys (after renaming).
        """

    def init_state(self, param: Tensor, group: Mapping[str, Any]) -> dict[str, Tensor]:
        """Per-parameter state for ``param`` (only the keys that the group's settings need)."""
        return {}

    def needed_state(self, group: Mapping[str, Any]) -> tuple[str, ...]:
        """State keys that the group's current settings need (created when missing)."""
        return self.state_names()

    def state_shapes(self, group: Mapping[str, Any], param: Tensor) -> dict[str, torch.Size]:
        """The states this rule keeps for ``param`` under the group's settings, each with the
        shape it must have (a scalar state such as NAdam's ``mu_product`` is 0-dim whatever
        this says). The default: every :meth:`needed_state` key, shaped like ``param``.

        Rules whose states depend on the parameter's shape override it (Adafactor keeps a row
        and a column factor for a matrix, a full variance for a vector); :meth:`init_state`
        then makes exactly these keys. The chain puts parameters that keep the same keys in
        the same bucket, so ``b.state`` holds each key for every parameter of a bucket.
        """
        return {k: param.shape for k in self.needed_state(group)}

    def prepare(self, group: Mapping[str, Any], b: Bucket) -> dict[str, Any]:
        """Python scalars for ``apply`` (see the module docstring)."""
        return {}

    def apply(self, u: list[Tensor], b: Bucket, sc: Mapping[str, Any]) -> list[Tensor]:
        """Return the transformed update list."""
        return u

    def apply_deferred(self, u: list[Tensor], b: Bucket, sc: Mapping[str, Any]
                       ) -> list[Tensor] | Deferred:
        """:meth:`apply`, or the same update as a :class:`Deferred` quotient that the chain
        adds to the parameters without multiplying it out (the default is :meth:`apply`).
        Rules whose result is a quotient (Adam's ``m / (sqrt(v) + eps)``) return the
        :class:`Deferred` and write :meth:`apply` as its :meth:`~Deferred.materialize`, so
        that the math stays written once. The chain calls it instead of :meth:`apply` only
        where the learning-rate step, or a rule that folds into it, comes next."""
        return self.apply(u, b, sc)

    def host_update(self, b: Bucket, sc: Mapping[str, Any]) -> None:
        """Update this rule's host-side state (scalar tensors on the CPU, such as NAdam's
        ``mu_product``) for the step, with the scalars :meth:`prepare` computed from the old
        values; runs once the update was applied (so a step that fails leaves it as it was),
        outside any compiled code, on both paths. :meth:`apply` must not read it."""

    def after_step(self, b: Bucket, sc: Mapping[str, Any]) -> None:
        """Act on the parameters after the update was added (proximal steps)."""

    def accepts_sparse(self, sc: Mapping[str, Any]) -> bool:
        """Whether :meth:`apply` takes a sparse COO update for these scalars. The default is
        no, and the chain densifies a sparse update before the rule; rules that have a sparse
        formula, or are the identity under the group's settings, say yes (so plain SGD and
        Adagrad touch only a sparse gradient's rows, as torch.optim does)."""
        return False

    def fold_into_step(self, b: Bucket, sc: Mapping[str, Any]) -> bool:
        """Optionally act on the parameters instead of on ``u`` when this rule comes right
        before the final ``scale_by_learning_rate``; return True if it did.

        The result must equal :meth:`apply` followed by the learning-rate step, up to rounding.
        """
        return False

    #: True if :meth:`global_stat` must see every bucket before :meth:`apply` runs.
    needs_global = False

    #: True if every element that :meth:`apply`, :meth:`fold_into_step` and
    #: :meth:`after_step` write is computed from the same element of their inputs, parameters
    #: and per-element states alone (with the scalars of :meth:`prepare`): the chain may then
    #: run the rule on slices of the tensors (cache-sized tiles on the CPU,
    #: :mod:`optimlab._tiling`) with the same result. False by default: a rule that reads a
    #: tensor's shape or a statistic over a tensor (factored moments, orthogonalization)
    #: must see whole tensors.
    elementwise = False

    def global_stat(self, us: list[list[Tensor]], group: Mapping[str, Any]) -> Tensor:
        """A statistic over all buckets' updates (e.g. the global gradient norm)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparams.items())
        return f"{type(self).__name__}({args})"


def zeros_like(p: Tensor) -> Tensor:
    """A zero state tensor shaped like ``p``."""
    return torch.zeros_like(p, memory_format=torch.preserve_format)
