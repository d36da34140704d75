"""Compose transforms into a ``torch.optim.Optimizer``.

:class:`ChainOptimizer` runs a sequence of :class:`~optimlab.transforms.Transform` rules on
each parameter group and adds the result to the parameters. It keeps torch.optim's contract:
per-group hyperparameters read at every step (so any LR scheduler drives them), lazily created
state made only of tensors, ``state_dict``/``load_state_dict``, ``step(closure)``, step hooks,
parameters without ``.grad`` skipped and ``.grad`` never modified or deleted.

Two execution paths share the same transform code:

* eager (default): torch's ``_foreach_*`` kernels, one launch per list
  (``foreach=False``: one tensor at a time, lower peak memory); on the CPU, chains of
  elementwise rules run one cache-sized tile at a time (:mod:`optimlab._tiling`, the same
  bits), and a rule whose result is a quotient (Adam's) has it added to the parameters with
  one ``addcdiv``, as torch.optim does (:class:`~optimlab.transforms.base.Deferred`);
* ``fused=True``: the whole chain is compiled with ``torch.compile`` into fused kernels; the
  per-step scalars are graph inputs, so a changing learning rate or step count never
  recompiles. The first step pays the compile (cached on disk across processes).

Low-precision (bfloat16/float16) parameters can be trained with two keyword-only options; both
leave float32/float64 parameters on exactly the code path they take without them:

* ``master_weights=True``: an fp32 copy of each low-precision parameter is kept as state
  (``master_param``, with the rules' states in fp32 too); the rules run on it with the gradient
  upcast to fp32, and the result is rounded to nearest into the parameter (Micikevicius et al.,
  2018, "Mixed precision training").
* ``stochastic_rounding=True`` (bfloat16 only, no master copy): the rules run in fp32 on upcast
  copies of the parameters and of their states (stored in the parameter's dtype, as torch.optim
  does), and both are written back with unbiased stochastic rounding
  (:func:`optimlab.precision.stochastic_round_`; Gupta et al., 2015; Zamirai et al., 2020).

For float32 (or float64) parameters, ``state_dtype=torch.bfloat16`` stores the rules' per-element
states (Adam's moments, momentum buffers, ...) in bfloat16, halving their memory and traffic:
each step upcasts them, runs the rules in the parameter's precision and writes them back with
stochastic rounding whose noise is a counter-based hash
(:func:`optimlab.precision.stochastic_round_hashed`), so the eager and compiled paths give the
same bits and the compiled kernel reads and writes 2 bytes per state element and nothing else.
``state_dtype=torch.uint8`` stores them in 8 bits instead, block-wise quantized
(:mod:`optimlab.quantization`: codes of the parameter's shape and one float32 absmax per 256
elements under ``"<key>.absmax"``, rounded to nearest; states of tensors under 4096 elements
stay float32), dequantized before the rules run and quantized back after, the same way on both
paths. (``uint8`` names the storage: the codes are bytes, not integers of the state's value.)
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from operator import attrgetter
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import ops
from ._checkpoint import MARKER, check_state_dict, saved_by
from ._compiled import CompiledStep
from ._state import MutationCounter, TrackedState
from ._tiling import tileable, tiles
from ._transaction import (
    PARTIAL_NOTE,
    StepUndo,
    can_preflight,
    check_grad,
    check_scalars,
    check_state_tensor,
    grads_finite,
    nonfinite_message,
    preflight,
)
from .precision import stochastic_round_, stochastic_round_hashed
from .quantization import (
    MIN_ELEMENTS,
    dequantize_stored,
    dequantized_state_dict,
    quantized_lists,
    requantize_stored_,
    stored_form,
)
from .transforms.adaptive import scalar_dtype
from .transforms.base import Bucket, Deferred, Transform, check_range
from .transforms.scaling import ScaleByLearningRate

__all__ = ["NONFINITE_POLICIES", "ChainOptimizer", "NonFiniteGradientError", "chain"]

#: Parameter dtypes that ``master_weights`` / ``stochastic_rounding`` step in fp32.
LOW_PRECISION = (torch.bfloat16, torch.float16)

#: The storage dtypes ``state_dtype`` accepts (``None``: states in the parameter's dtype).
STATE_DTYPES = (None, torch.bfloat16, torch.uint8)

#: What the cached plan checks of each parameter and gradient at every step.
_LAYOUT = attrgetter("shape", "dtype", "device")

#: What ``step()`` does when a gradient holds inf or NaN.
NONFINITE_POLICIES = ("raise", "skip", "ignore")


class NonFiniteGradientError(FloatingPointError):
    """A gradient held inf or NaN; the optimizer and its state were left untouched.

    Raised by ``step()`` only under ``nonfinite="raise"`` (opt-in: the default ``"ignore"``
    checks nothing, as torch.optim, and inf/NaN flow into the update). The check reads every
    gradient before the first write, so a refused step changed nothing.
    """


class ChainOptimizer(Optimizer):
    """An optimizer made of update rules applied in order.

    Args:
        params: parameters or param-group dicts, as for any torch optimizer.
        transforms: the rules, applied in order to the gradient. ``scale_by_learning_rate`` is
            appended when absent, so the chain ends with ``p <- p - lr * update``.
        lr: learning rate (group key ``lr``).
        maximize: ascend instead of descend (the gradient is negated first).
        nonfinite: what a step does when any gradient holds inf or NaN: ``"ignore"``
            (default: no check, as torch.optim; inf/NaN flow into the update and the
            states), ``"raise"`` (:class:`NonFiniteGradientError` naming the group and
            parameter index, nothing changed) or ``"skip"`` (skip the whole step and count it
            in ``skipped_steps``). ``"raise"`` and ``"skip"`` read every gradient once more
            before the first write (and synchronize with the device): for a step that already
            runs at memory speed, such as SGD with momentum, about a fifth more time.
        foreach: ``None``/``True`` for multi-tensor kernels, ``False`` for one tensor at a time.
        fused: ``True`` compiles the chain with ``torch.compile`` (see the module docstring).
        defaults: extra group keys stored in every group (named optimizers use this to keep
            torch.optim's group keys, such as ``capturable``).
        master_weights: keep an fp32 master copy (state ``master_param``) of every bfloat16 or
            float16 parameter, step it in fp32 with fp32 states, and round it to nearest into
            the parameter. Other dtypes are unaffected.
        stochastic_rounding: step bfloat16 parameters in fp32 on upcast copies of the parameter
            and its states, and write both back with stochastic rounding (unbiased:
            ``E[round(x)] = x``), without a master copy. Draws from torch's default generator
            of the parameter's device. float16 parameters are refused (use ``master_weights``);
            other dtypes are unaffected. Cannot be combined with ``master_weights``.
        state_dtype: ``torch.bfloat16`` stores the per-element states of float32/float64
            parameters in bfloat16, written back with stochastic rounding at every step (see the
            module docstring); scalar states (``step``) and the states of bfloat16/float16
            parameters are unaffected. ``torch.uint8``: the same states of tensors with at
            least 4096 elements in 8 bits, block-wise quantized (:mod:`optimlab.quantization`;
            about 1.02 bytes per element and state). ``None`` (default): states in the
            parameter's dtype.
        differentiable: record the step in autograd (as torch.optim's ``differentiable``):
            gradients of a later loss flow back through the update to the parameters' and
            the gradients' history, to the states, and to an ``lr`` given as a tensor that
            requires grad (other hyperparameters are constants of the step). The parameters
            must then not be leaves that require grad (in-place updates), as in torch.optim.
            Eager path only (not with ``fused``, ``master_weights``, ``stochastic_rounding``
            or ``state_dtype``).

    A step is a transaction: it applies completely, or it raises and leaves the parameters,
    the state (entries, tensors, step counts) and the counters as they were. Everything that
    can refuse runs before the first tensor is written, with a ``ValueError`` naming the group
    and parameter: gradients that do not fit their parameter (shape, dtype, device, layout),
    state tensors that do not (a parameter replaced through ``.data``), per-step numbers that
    are not finite in the parameters' dtype (``lr=1e308`` with float32 parameters), and, for a
    step structure not seen before, the rules themselves, run once on ``meta`` tensors. Nothing
    is copied to make this so (see :mod:`optimlab._transaction`, which also states the one
    limit: a rule's tensor math failing on values, or running out of memory, after the
    checks). With ``nonfinite="raise"`` or ``"skip"`` the gradients are checked too, before
    the first write; only inf and NaN entries are non-finite: finite entries whose sum would
    overflow (3e38 in float32) are stepped.

    Sparse gradients (``nn.Embedding(sparse=True)``) are stepped one parameter at a time:
    rules with a sparse formula (Adagrad) or that are the identity for the group's settings
    (plain SGD) touch only the gradient's rows; before any other rule the update is densified
    (the result of a dense gradient with zeros elsewhere). Eager path only.

    Attributes:
        info: per-step statistics the rules publish (``grad_norm`` from clipping), as tensors.
        skipped_steps: steps skipped under ``nonfinite="skip"``.
    """

    #: The algorithm, as state dicts name it: a state dict loads only into an optimizer of
    #: the same algorithm (any ChainOptimizer loads another's; named optimizers set their own).
    algorithm: ClassVar[str] = "chain"
    #: Whether parameter groups always carry the ``fused`` key (named optimizers whose
    #: torch.optim twin has no such key store it only when ``fused=True``).
    fused_group_key: ClassVar[bool] = True
    #: Whether sparse gradients are accepted (named optimizers: as their torch.optim twin).
    supports_sparse_grads: ClassVar[bool] = True
    #: State keys that ``state_dtype`` never stores in low precision (states that are iterates
    #: of the weights rather than statistics, such as schedule-free's ``z``).
    full_precision_states: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        params: Iterable[Any],
        transforms: Sequence[Transform] = (),
        *,
        lr: float | Tensor = 1e-3,
        maximize: bool = False,
        nonfinite: str = "ignore",
        foreach: bool | None = None,
        fused: bool | None = None,
        defaults: Mapping[str, Any] | None = None,
        master_weights: bool = False,
        stochastic_rounding: bool = False,
        state_dtype: torch.dtype | None = None,
        differentiable: bool = False,
    ) -> None:
        if not isinstance(differentiable, bool):
            raise ValueError(f"differentiable must be a bool, got {differentiable!r}")
        if differentiable and fused:
            # torch.optim's exception type and words for the same refusal
            raise RuntimeError("`fused` does not support `differentiable`")
        if differentiable and (master_weights or stochastic_rounding or state_dtype is not None):
            raise ValueError("differentiable=True steps the parameters' own dtype: it cannot be "
                             "combined with master_weights, stochastic_rounding or state_dtype")
        if state_dtype not in STATE_DTYPES:
            raise ValueError("state_dtype must be None, torch.bfloat16 or torch.uint8 (8-bit "
                             f"block-wise), got {state_dtype!r}")
        self.state_dtype = state_dtype
        if not isinstance(master_weights, bool):
            raise ValueError(f"master_weights must be a bool, got {master_weights!r}")
        if not isinstance(stochastic_rounding, bool):
            raise ValueError(f"stochastic_rounding must be a bool, got {stochastic_rounding!r}")
        if master_weights and stochastic_rounding:
            raise ValueError("master_weights=True and stochastic_rounding=True cannot be "
                             "combined: stochastic rounding replaces the fp32 master copy")
        self.master_weights = master_weights
        self.stochastic_rounding = stochastic_rounding
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {nonfinite!r}")
        if not isinstance(maximize, bool):
            raise ValueError(f"maximize must be a bool, got {maximize!r}")
        transforms = tuple(transforms)
        _check_chain(transforms)
        if not any(isinstance(t, ScaleByLearningRate) for t in transforms):
            transforms = (*transforms, ScaleByLearningRate(lr=lr))
        self._transforms = transforms
        merged: dict[str, Any] = {"lr": lr, "maximize": maximize}
        for t in transforms:
            for k, v in t.hyperparams.items():
                if k != "lr":
                    merged[k] = v
        merged.update(defaults or {})
        merged["foreach"] = foreach
        if fused or self.fused_group_key:
            merged["fused"] = fused
        merged["differentiable"] = differentiable
        self.nonfinite = nonfinite
        self.skipped_steps = 0
        self.info: dict[str, Tensor] = {}
        self._compiled: CompiledStep | None = None
        self._plan: _Plan | None = None
        self._plan_version = 0  # bumped by whatever may invalidate a cached plan
        self._preflighted: tuple[Any, ...] | None = None  # the last structure checked on meta
        self._mutations = MutationCounter()
        self._validate_settings(merged)
        super().__init__(params, merged)

    # ----- optimizer.state -----------------------------------------------------------------
    # ``optimizer.state`` is always a TrackedState (optimlab._state) sharing this optimizer's
    # mutation counter, whatever is assigned to it: torch.optim's own ``__init__`` and
    # ``load_state_dict``, unpickling, and user code that resets an optimizer with
    # ``opt.state = defaultdict(dict)`` all go through this setter. The cached step plan
    # relies on it (its invalidation rule: the counter moved, or the dict was replaced).
    @property  # type: ignore[override]
    def state(self) -> TrackedState:
        """Per-parameter state, as torch.optim's ``defaultdict(dict)`` (counting mutations)."""
        return self.__dict__["state"]

    @state.setter
    def state(self, value: Mapping[Any, Any]) -> None:
        counter = self.__dict__.get("_mutations")
        if counter is None:
            counter = self._mutations = MutationCounter()
        if not (isinstance(value, TrackedState) and value._counter is counter):
            value = TrackedState(counter, value)
        counter.n += 1
        self.__dict__["state"] = value

    # ----- structure ---------------------------------------------------------------------------
    def transforms_for(self, group: Mapping[str, Any]) -> tuple[Transform, ...]:
        """The rules applied to ``group`` (named optimizers choose them from group settings)."""
        return self._transforms

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (validated: its hyperparameters must be in range, its keys known)."""
        super().add_param_group(param_group)
        self._plan_version = getattr(self, "_plan_version", 0) + 1
        group = self.param_groups[-1]
        try:
            self._validate_group(group)
        except BaseException:
            self.param_groups.pop()  # a refused group leaves the optimizer as it was
            raise

    def _validate_settings(self, group: Mapping[str, Any]) -> None:
        """Check a group's hyperparameters (also the defaults, before any parameter is read:
        bad hyperparameters are named even when ``params`` is bad too, as in torch.optim)."""
        check_range("lr", group["lr"], low=0.0, high=None)
        if not isinstance(group["maximize"], bool):
            raise ValueError(f"maximize must be a bool, got {group['maximize']!r}")
        for t in self.transforms_for(group):
            t.validate(group)

    def _validate_group(self, group: Mapping[str, Any]) -> None:
        self._validate_settings(group)
        for p in group["params"]:
            if not (p.is_floating_point() or p.is_complex()):
                raise ValueError(f"parameters must be floating point or complex, got {p.dtype}")
            if self.stochastic_rounding and p.dtype == torch.float16:
                raise ValueError("stochastic_rounding=True supports bfloat16 parameters only, "
                                 "got a float16 parameter; use master_weights=True for float16")

    #: What pickling, ``copy.deepcopy`` and ``torch.save(optimizer)`` keep beyond torch.optim's
    #: ``defaults``/``state``/``param_groups``: the rules and the options (caches are rebuilt).
    _PICKLED = ("_transforms", "nonfinite", "skipped_steps", "info", "master_weights",
                "stochastic_rounding", "state_dtype")

    def __getstate__(self) -> dict[str, Any]:
        out = super().__getstate__()
        out.update({k: self.__dict__[k] for k in self._PICKLED if k in self.__dict__})
        return out

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Called when unpickling (and by torch.optim's load_state_dict with the new state and
        # groups): every cache is dropped, options missing from old pickles get defaults
        # (``nonfinite``: "raise", what those pickles' optimizers did, not today's default).
        state = dict(state)
        raw = state.pop("state", None)
        super().__setstate__(state)
        if raw is not None:
            self.state = raw  # wrapped by the property, with a fresh plan
        self._plan, self._plan_version = None, self.__dict__.get("_plan_version", 0) + 1
        self._compiled = None
        self._preflighted = None
        for k, v in (("nonfinite", "raise"), ("skipped_steps", 0), ("info", {}),
                     ("master_weights", False), ("stochastic_rounding", False),
                     ("state_dtype", None)):
            self.__dict__.setdefault(k, v)
        for group in self.param_groups:
            for k, v in self.defaults.items():
                group.setdefault(k, v)
        for st in self.state.values():
            # Checkpoints from torch < 1.12 store `step` as a Python number.
            if isinstance(st, dict) and "step" in st and not isinstance(st["step"], Tensor):
                st["step"] = torch.tensor(float(st["step"]), dtype=scalar_dtype())

    def state_dict(self) -> dict[str, Any]:
        """torch.optim's state dict, with plain dicts (loadable with ``weights_only=True``),
        and an ``"optimlab"`` entry naming the class and algorithm that saved it (so that
        :meth:`load_state_dict` refuses another algorithm's; torch.optim ignores it)."""
        out = super().state_dict()
        out["state"] = {k: dict(v) if isinstance(v, dict) else v for k, v in out["state"].items()}
        out[MARKER] = saved_by(self)
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict, as torch.optim does, keeping optimlab's storage choices: scalar
        states stay on the CPU, ``state_dtype`` states stay bfloat16 and, with
        ``master_weights``, fp32 states of low-precision parameters stay fp32 (torch.optim
        casts every floating state to the parameter's dtype and device). Load hooks run as in
        torch.optim: pre-hooks first, post-hooks on the fully loaded state.

        The whole dict is checked first (after the pre-hooks), and refused with a
        ``ValueError`` naming what is wrong: a state dict of another algorithm (named by the
        class that saved it, or recognized by its states and hyperparameters), parameter ids
        no group lists, states of the wrong shape or dtype, steps that are not finite
        non-negative integers, invalid hyperparameters (see :mod:`optimlab._checkpoint`). A
        refused or failed load leaves the optimizer as it was. torch.optim's state dicts of the
        same algorithm load as before."""
        state_dict = state_dict.copy() if isinstance(state_dict, Mapping) else state_dict
        pre = self._optimizer_load_state_dict_pre_hooks
        post = self._optimizer_load_state_dict_post_hooks
        for pre_hook in pre.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        state_dict = dequantized_state_dict(state_dict)  # 8-bit states: stored anew below
        check_state_dict(self, state_dict)
        # torch.optim's loader (id mapping, casting) with the hooks run here instead (the hook
        # dicts are put back as they were: handles keep removing from them). It replaces the
        # state and the groups by new objects: putting the old ones back undoes a failed load.
        old_state, old_groups = self.state, self.param_groups
        self._optimizer_load_state_dict_pre_hooks = type(pre)()
        self._optimizer_load_state_dict_post_hooks = type(post)()
        try:
            super().load_state_dict(state_dict)
            self._restore_storage(state_dict)
        except BaseException:
            self.state, self.param_groups = old_state, old_groups
            self._plan_version += 1
            raise
        finally:
            self._optimizer_load_state_dict_pre_hooks = pre
            self._optimizer_load_state_dict_post_hooks = post
        for post_hook in post.values():
            post_hook(self)

    def _restore_storage(self, state_dict: Mapping[str, Any]) -> None:
        """Undo torch.optim's casts of loaded state where optimlab stores it differently."""
        self._plan_version += 1
        per_param = [(p, st) for p, st in self.state.items()
                     if isinstance(p, Tensor) and isinstance(st, dict)]
        for _, st in per_param:
            for k in [k for k, v in st.items() if v is None]:
                del st[k]  # a state not made yet (torch < 2's momentum_buffer=None)
            step = st.get("step")
            if isinstance(step, Tensor) and not step.is_floating_point():
                st["step"] = step.to(scalar_dtype())  # counted in floating point, as torch
        # torch.optim moves ``step`` to the parameter's device for fused groups, and every other
        # scalar state (NAdam's ``mu_product``) always: keep scalar states on the CPU, where
        # the step reads them (a device scalar would cost a synchronization per step).
        for _, st in per_param:
            for k, v in st.items():
                if isinstance(v, Tensor) and v.dim() == 0 and v.device.type != "cpu":
                    st[k] = v.to("cpu")
        if self.state_dtype is not None:
            # torch.optim casts floating state to the parameter's dtype; keep it as stored.
            for p, st in per_param:
                for k, v in list(st.items()):
                    if self._stored_low(p, v, k):
                        st.update(stored_form(k, v, self.state_dtype))
        if not self.master_weights:
            return
        saved = state_dict["state"]
        for group, saved_group in zip(self.param_groups, state_dict["param_groups"]):
            for p, pid in zip(group["params"], saved_group["params"]):
                if p.dtype not in LOW_PRECISION or pid not in saved:
                    continue
                for k, v in saved[pid].items():
                    if (k != "step" and isinstance(v, Tensor) and v.dtype == torch.float32
                            and v.shape == p.shape):
                        self.state[p][k] = v.to(device=p.device, copy=True)

    def _stored_low(self, p: Tensor, v: Any, key: str) -> bool:
        """Whether state ``key`` (``v``) of ``p`` is one that ``state_dtype`` stores in low
        precision."""
        return (self.state_dtype is not None and key not in self.full_precision_states
                and isinstance(v, Tensor)
                and p.dtype in (torch.float32, torch.float64) and v.is_floating_point()
                and v.dim() > 0 and v.shape == p.shape
                and (self.state_dtype != torch.uint8 or v.numel() >= MIN_ELEMENTS))

    def state_bytes(self) -> int:
        """Bytes held by the optimizer state tensors (all parameters)."""
        total = 0
        for st in self.state.values():
            for v in st.values() if isinstance(st, dict) else ():
                if isinstance(v, Tensor):
                    total += v.numel() * v.element_size()
        return total

    # ----- the step --------------------------------------------------------------------------
    # Under ``torch.compile`` of a whole training step, the optimizer step is not traced: it
    # runs as it would outside (the eager foreach path, or its own compiled kernels with
    # ``fused=True``). Traced, its per-step Python scalars (step counts, bias corrections)
    # and the non-finite check would become constants and graph breaks: a recompilation at
    # every step.
    @torch.compiler.disable
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Perform one optimization step; returns ``closure()`` if a closure is given.

        With ``differentiable=True`` the update is recorded by autograd (gradients flow to the
        parameters' and states' history, and to a tensor ``lr`` that requires grad).
        """
        return self._step(closure)

    def _step(self, closure: Callable[[], Any] | None) -> Any:
        """:meth:`step`'s body. torch.optim wraps each class's ``step`` with the step hooks, so a
        subclass that overrides ``step`` calls this, not ``super().step()`` (which would run
        the hooks twice)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.set_grad_enabled(bool(self.defaults.get("differentiable"))):
            self._update()
        return loss

    def _update(self) -> None:
        """The step proper (gradients to parameters), under the grad mode ``step`` chose."""
        work: list[tuple[dict[str, Any], list[Tensor], list[Tensor]]] = []
        sparse = False
        for gi, group in enumerate(self.param_groups):
            ps = group["params"]
            gs = [p.grad for p in ps]
            if any(g is None for g in gs):  # parameters without a gradient are left alone
                ps = [p for p, g in zip(ps, gs) if g is not None]
                gs = [g for g in gs if g is not None]
            if any(g.is_sparse for g in gs):
                self._check_sparse(gi, group)
                sparse = True
            work.append((group, ps, gs))
        if self.defaults.get("differentiable"):
            self._check_differentiable()
        if self.defaults.get("fused") and any(
                p.device.type == "meta" for _, ps, _ in work for p in ps):
            # torch.optim's exception type and words (its test checks them), and why
            raise RuntimeError(
                "`fused=True` requires all the params to be floating point Tensors of supported "
                "devices: a parameter is on the 'meta' device (a shape without data); "
                "materialize the model first, e.g. model.to_empty(device='cpu')")

        if self.nonfinite != "ignore" and not grads_finite(work):
            if self.nonfinite == "skip":
                self.skipped_steps += 1
                return
            raise NonFiniteGradientError(self._nonfinite_message())

        # The step is a transaction (optimlab._transaction): everything that can refuse runs
        # before the first tensor is written, and what changes before that is rolled back.
        undo = StepUndo(self.state)
        writeback: list[tuple[list[Tensor], list[Tensor], bool]] = []
        try:
            planned = None if sparse else self._planned_buckets(work)
            if planned is None:
                prep = self._make_buckets(work, writeback, undo)
                token = None
            else:
                prep = planned
                token = self._plan.token if self._plan is not None else None
            buckets, chains, groups = prep.buckets, prep.chains, prep.groups
            if not buckets:
                return
            scalars = [[t.prepare(g, b) for t in ch] for b, ch, g in zip(buckets, chains, groups)]
            check_scalars(buckets, chains, groups, scalars,
                          lambda i: self._group_index(groups[i]))
            maximize = [bool(g["maximize"]) for g in groups]
            if planned is None:
                self._preflight(work, buckets, chains, groups, scalars, maximize)
            for b, ss in zip(buckets, prep.steps):
                undo.steps.append((ss, b.step - 1))
            if prep.host_steps:  # the counts not incremented inside the chain (see _Prepared)
                torch._foreach_add_(prep.host_steps, 1.0)
        except BaseException:
            undo.rollback()
            self._plan = None
            raise
        try:
            if self.defaults.get("fused"):
                info = self._run_compiled(buckets, chains, groups, scalars, maximize, token)
            elif self.defaults.get("differentiable"):
                info = run_recorded(buckets, chains, groups, scalars, maximize)
            else:
                info = run_tiled(buckets, chains, groups, scalars, maximize)
        except BaseException as e:
            undo.rollback()
            self._plan = None
            e.add_note(PARTIAL_NOTE)
            raise
        self.info = info
        for b, ch, scs in zip(buckets, chains, scalars):
            for t, sc in zip(ch, scs):
                t.host_update(b, sc)
        for dst, src, stochastic in writeback:  # fp32 results into low-precision tensors
            if stochastic:
                stochastic_round_(dst, src)
            else:
                ops.copy_(dst, src)

    def _group_index(self, group: Mapping[str, Any]) -> int:
        return next(i for i, g in enumerate(self.param_groups) if g is group)

    def _locate(self, p: Tensor) -> tuple[int, int]:
        """``(group index, index in the group)`` of parameter ``p``, for messages."""
        for gi, group in enumerate(self.param_groups):
            for pi, q in enumerate(group["params"]):
                if q is p:
                    return gi, pi
        return -1, -1

    def _preflight(self, work: list[tuple[dict[str, Any], list[Tensor], list[Tensor]]],
                   buckets: list[Bucket], chains: list[tuple[Transform, ...]],
                   groups: list[dict[str, Any]], scalars: list[list[dict[str, Any]]],
                   maximize: list[bool]) -> None:
        """Run the rules on meta tensors (optimlab._transaction.preflight) for a step whose
        structure was not checked yet. Cached: the key is what a cached plan depends on (see
        ``_planned_buckets``) plus each bucket's dtype and newly created states; a step that
        takes the cached plan has a checked structure already."""
        if self.defaults.get("differentiable") or not can_preflight(buckets):
            return  # the recorded step writes nothing before its rules ran; see can_preflight
        key = (self._plan_version, self._work_key(work), id(self.state), self._mutations.n,
               tuple((b.params[0].dtype, b.new_keys, len(b.params)) for b in buckets))
        if key == self._preflighted:
            return
        preflight(run_chains, buckets, chains, groups, scalars, maximize)
        self._preflighted = key

    def _check_sparse(self, gi: int, group: Mapping[str, Any]) -> None:
        """Refuse sparse gradients where they are not supported, naming the parameter."""
        pi = next(i for i, p in enumerate(group["params"])
                  if p.grad is not None and p.grad.is_sparse)
        where = f"param group {gi}, parameter {pi}"
        name = type(self).__name__
        if not self.supports_sparse_grads:
            raise RuntimeError(f"{name} does not support sparse gradients ({where}), as "
                               f"torch.optim.{name}; use SGD, Adagrad or torch.optim.SparseAdam")
        if self.defaults.get("fused") or group.get("fused"):
            raise RuntimeError(f"{name}: fused=True does not support sparse gradients ({where})")
        if group["params"][pi].is_complex():
            raise RuntimeError(f"{name}: sparse gradients of complex parameters are not "
                               f"supported ({where})")

    def _check_differentiable(self) -> None:
        """Refuse hyperparameters that require grad where gradients cannot reach them."""
        for gi, group in enumerate(self.param_groups):
            for k, v in group.items():
                vs = v if isinstance(v, (tuple, list)) and k != "params" else (v,)
                if k != "lr" and any(isinstance(x, Tensor) and x.requires_grad for x in vs):
                    raise ValueError(
                        f"{type(self).__name__}: param group {gi}: {k} is a tensor that "
                        "requires grad; with differentiable=True gradients reach the "
                        "parameters, gradients, states and lr only: pass a number or a "
                        "tensor without requires_grad")

    def _nonfinite_message(self) -> str:
        return nonfinite_message(self.param_groups)

    def _make_buckets(self, work: list[tuple[dict[str, Any], list[Tensor], list[Tensor]]],
                      writeback: list[tuple[list[Tensor], list[Tensor], bool]],
                      undo: StepUndo) -> _Prepared:
        """Group parameters into buckets; low-precision buckets under ``master_weights`` /
        ``stochastic_rounding`` get fp32 tensors and append ``(dst, src, stochastic)`` pairs
        to ``writeback`` for the caller to copy back after the rules ran.

        Checks each gradient and each state tensor the rules will update against its
        parameter, and records in ``undo`` the state entries it creates or replaces; it
        increments no step count (the caller does, once every check passed)."""
        master = self.master_weights
        buckets: list[Bucket] = []
        chains: list[tuple[Transform, ...]] = []
        groups: list[dict[str, Any]] = []
        bucket_steps: list[list[Tensor]] = []
        n_writeback = len(writeback)
        entries: list[_PlanEntry] = []
        for wi, (group, ps, gs) in enumerate(work):
            if not ps:
                continue
            chain_ = self.transforms_for(group)
            new_keys: dict[int, set[str]] = defaultdict(set)
            # kinds[i]: parameter i's state keys and how each is stored; parameters alike
            # share a bucket (rules such as Adafactor keep other keys for a matrix than for a
            # vector: Transform.state_shapes)
            steps, kinds = [], []
            for p, g in zip(ps, gs):
                if (g.shape != p.shape or g.dtype != p.dtype or g.device != p.device
                        or g.layout not in (torch.strided, torch.sparse_coo)):
                    check_grad(p, g, *self._locate(p))
                if p not in self.state:
                    undo.new_params.append(p)
                st = self.state[p]
                if "step" not in st:
                    st["step"] = torch.tensor(0.0, dtype=scalar_dtype())
                    undo.created.append((st, "step"))
                like = p
                if master and p.dtype in LOW_PRECISION:
                    if "master_param" not in st:
                        st["master_param"] = p.detach().to(torch.float32, copy=True)
                        undo.created.append((st, "master_param"))
                    like = st["master_param"]  # the rules' states are made fp32 too
                shapes: dict[str, Any] = {"step": ()}
                for t in chain_:
                    keys = t.state_shapes(group, like)
                    shapes.update(keys)
                    if keys and any(k not in st for k in keys):
                        for k, v in t.init_state(like, group).items():
                            if k not in st:
                                made = (stored_form(k, v, self.state_dtype)
                                        if self._stored_low(p, v, k) else {k: v})
                                for k2, v2 in made.items():
                                    st[k2] = v2
                                    undo.created.append((st, k2))
                                new_keys[id(p)].add(k)
                for k, shape in shapes.items():
                    v = st.get(k)
                    if not isinstance(v, Tensor) or (v.dim() != 0 and v.shape != shape):
                        check_state_tensor(p, like, k, v, *self._locate(p), shape=shape)
                steps.append(st["step"])
                kinds.append(tuple((k, st[k].dtype) for k in tuple(shapes)[1:]))
            # CPU step counts are incremented by the chain itself (inside the compiled kernel on
            # the fused path, where 0-dim CPU tensors otherwise cost a dispatch each); the
            # others by the host, once the step's checks passed.
            later = all(p.device.type == "cpu" for p in ps) and all(
                s.device.type == "cpu" for s in steps)
            # foreach=False steps one tensor at a time (lower peak memory); fused=True wins over
            # it, as in torch.optim, which accepts the pair.
            single = group.get("foreach") is False and not group.get("fused")
            split: dict[Any, list[int]] = defaultdict(list)
            for i, (p, s) in enumerate(zip(ps, steps)):
                alone = single or gs[i].is_sparse  # a bucket of its own
                key = (p.device, p.dtype, int(s.item()) + 1,
                       frozenset(new_keys.get(id(p), ())), i if alone else None, kinds[i])
                split[key].append(i)
            for key, idx in split.items():
                _, dtype, step, fresh, _, kind = key
                keys_all = [k for k, _ in kind]
                params = [ps[i] for i in idx]
                grads = [gs[i] for i in idx]
                state = {k: [self.state[p][k] for p in params] for k in keys_all}
                if dtype in LOW_PRECISION and (master or self.stochastic_rounding):
                    params, grads, state = self._to_fp32(params, grads, state, writeback, undo)
                if dtype.is_complex:
                    params, grads = _as_real(params), _as_real(grads)
                    state = {k: _as_real(v) for k, v in state.items()}
                # States stored in bfloat16 (state_dtype) are stepped in the parameter's dtype:
                # the rules get upcast copies (made in run_chains, inside the compiled graph on
                # the fused path) and the chain rounds them back.
                stored = {k: vs for k, vs in state.items()
                          if vs and vs[0].dtype == torch.bfloat16
                          and dtype in (torch.float32, torch.float64)}
                stored.update(quantized_lists(state, [self.state[ps[i]] for i in idx]))
                counts = [steps[i] for i in idx]
                buckets.append(Bucket(params, grads, state, step, fresh, stored,
                                      _rounding_seed(step), counts if later else [],
                                      sparse=grads[0].is_sparse))
                chains.append(chain_)
                groups.append(group)
                bucket_steps.append(counts)
                entries.append(_PlanEntry(wi, idx, params, state, stored, dtype.is_complex,
                                          counts, later, [_LAYOUT(ps[i]) for i in idx]))
        fresh_any = any(b.new_keys for b in buckets)
        lowp = len(writeback) > n_writeback
        uncached = fresh_any or lowp or not buckets or any(b.sparse for b in buckets)
        self._plan = None if uncached else self._new_plan(work, entries)
        host_steps = [s for b, ss in zip(buckets, bucket_steps) if not b.steps for s in ss]
        return _Prepared(buckets, chains, groups, bucket_steps, host_steps)

    # ----- the cached bucket plan ------------------------------------------------------------
    def _work_key(self, work: list[tuple[dict[str, Any], list[Tensor], list[Tensor]]]
                  ) -> tuple[Any, ...]:
        return tuple((id(g), tuple(map(id, ps)), self.transforms_for(g),
                      tuple(t.needed_state(g) for t in self.transforms_for(g)))
                     for g, ps, _ in work)

    def _new_plan(self, work: list[tuple[dict[str, Any], list[Tensor], list[Tensor]]],
                  entries: list[_PlanEntry]) -> _Plan:
        token = (self._plan.token + 1) if self._plan is not None else 0
        host_steps = [s for e in entries if not e.deferred for s in e.steps]
        return _Plan(token, self._plan_version, self._work_key(work),
                     (self.state, self._mutations.n), host_steps, entries)

    def _planned_buckets(self, work: list[tuple[dict[str, Any], list[Tensor], list[Tensor]]]
                         ) -> _Prepared | None:
        """The buckets of the cached plan, if this step has the plan's structure: the same
        groups, parameters with gradients, rules and needed states, and no state entry changed
        (``optimizer.state`` counts its mutations: :mod:`optimlab._state`). Steady-state
        training steps take this path: it skips regrouping the parameters and reading every
        step count. ``None``: build the buckets afresh."""
        plan = self._plan
        if plan is None or plan.version != self._plan_version:
            return None
        if self._work_key(work) != plan.key:
            return None
        state, mutations = plan.state
        if self.state is not state or self._mutations.n != mutations:
            return None  # a state entry was set, replaced or deleted since
        buckets, chains, groups = [], [], []
        for e in plan.entries:
            group, ps, gs = work[e.work_index]
            grads = [gs[i] for i in e.idx]
            # The gradients, and the parameters (``p.data = ...`` keeps the object), must
            # still have the layouts the plan's states were checked against; if not, the
            # full path checks them and names what changed.
            if (list(map(_LAYOUT, grads)) != e.metas
                    or list(map(_LAYOUT, [ps[i] for i in e.idx])) != e.metas):
                return None
            step = int(e.steps[0].item()) + 1
            buckets.append(Bucket(e.params, _as_real(grads) if e.complex else grads,
                                  dict(e.state), step, frozenset(), dict(e.stored),
                                  _rounding_seed(step), e.steps if e.deferred else []))
            chains.append(self.transforms_for(group))
            groups.append(group)
        return _Prepared(buckets, chains, groups, [e.steps for e in plan.entries],
                         plan.host_steps)

    def _to_fp32(self, params: list[Tensor], grads: list[Tensor], state: dict[str, list[Tensor]],
                 writeback: list[tuple[list[Tensor], list[Tensor], bool]], undo: StepUndo
                 ) -> tuple[list[Tensor], list[Tensor], dict[str, list[Tensor]]]:
        """fp32 tensors for a low-precision bucket, and what to write back after the step
        (states replaced by fp32 copies are recorded in ``undo``)."""
        grads32 = [g.to(torch.float32) for g in grads]
        if self.master_weights:
            masters = [self.state[p]["master_param"] for p in params]
            writeback.append((params, masters, False))
            for k, vs in state.items():  # states loaded or made in low precision: now fp32
                if any(v.dtype in LOW_PRECISION for v in vs):
                    vs[:] = [v.to(torch.float32) for v in vs]
                    for p, v in zip(params, vs):
                        undo.replaced.append((self.state[p], k, self.state[p][k]))
                        self.state[p][k] = v
            return masters, grads32, state
        params32 = [p.detach().to(torch.float32) for p in params]
        writeback.append((params, params32, True))
        state32 = {}
        for k, vs in state.items():
            if vs and all(v.dtype == torch.bfloat16 for v in vs):
                state32[k] = [v.to(torch.float32) for v in vs]
                writeback.append((vs, state32[k], True))
            else:
                state32[k] = vs
        return params32, grads32, state32

    def _run_compiled(self, buckets: list[Bucket], chains: list[tuple[Transform, ...]],
                      groups: list[dict[str, Any]], scalars: list[list[dict[str, Any]]],
                      maximize: list[bool], token: int | None) -> dict[str, Tensor]:
        if self._compiled is None:
            self._compiled = CompiledStep(type(self).__name__, _run_flat)
        return self._compiled(buckets, chains, groups, scalars, maximize, token)


@dataclass
class _PlanEntry:
    """One bucket of a cached plan: where its gradients are in the step's work list, and the
    tensors that stay the same from step to step."""

    work_index: int
    idx: list[int]
    params: list[Tensor]
    state: dict[str, list[Tensor]]
    stored: dict[str, list[Tensor]]
    complex: bool
    steps: list[Tensor]  # the step counts (all equal)
    deferred: bool  # the chain increments them (CPU), not the host before the step
    metas: list[tuple[Any, ...]]  # (shape, dtype, device) of each parameter, as checked


@dataclass
class _Prepared:
    """A step's buckets, with the rules, group and step-count tensors of each bucket; the
    counts the host increments (``host_steps``: not CPU ones, which the chain increments,
    those listed in ``Bucket.steps``)."""

    buckets: list[Bucket]
    chains: list[tuple[Transform, ...]]
    groups: list[dict[str, Any]]
    steps: list[list[Tensor]]
    host_steps: list[Tensor]

@dataclass
class _Plan:
    """The bucket structure of the last step, reused while nothing it depends on changed."""

    token: int
    version: int
    key: tuple[Any, ...]
    state: tuple[Any, int]  # the optimizer's state dict and its mutation count
    host_steps: list[Tensor]  # the step counts incremented on the host before a step
    entries: list[_PlanEntry]


def _check_transform(t: object) -> None:
    if isinstance(t, Transform):
        return
    hint = ""
    if callable(t):
        hint = (" (a transform factory or class must be called, e.g. "
                "ol.transforms.scale_by_adam() rather than ol.transforms.scale_by_adam)")
    raise TypeError(f"chain: expected an optimlab transform, got {t!r}{hint}")


def _dense(us: list[Tensor]) -> list[Tensor]:
    """Sparse updates as dense tensors (for rules without a sparse formula)."""
    return [u.to_dense() if u.is_sparse else u for u in us]


def _as_real(ts: list[Tensor]) -> list[Tensor]:
    return [torch.view_as_real(t) if t.is_complex() else t for t in ts]


def run_chains(buckets: list[Bucket], chains: list[tuple[Transform, ...]],
               groups: list[dict[str, Any]], scalars: list[list[dict[str, Any]]],
               maximize: list[bool]) -> dict[str, Tensor]:
    """Run every bucket's chain stage by stage and add the updates to the parameters.

    Stage-wise execution lets a rule that needs a statistic over all parameters (global-norm
    clipping) see every bucket before any of them moves on.
    """
    info: dict[str, Tensor] = {}
    for b in buckets:
        if b.steps:  # here, the increment is part of the compiled kernel (CPU)
            torch._foreach_add_(b.steps, 1.0)
        for k, vs in b.stored.items():
            if vs[0].dtype == torch.bfloat16:
                b.state[k] = [v.to(b.params[0].dtype) for v in vs]
        b.state.update(dequantize_stored(b.stored, b.params[0].dtype))  # 8-bit states
    us: list[list[Tensor] | Deferred] = [ops.neg(b.grads) if mx else list(b.grads)
                                         for b, mx in zip(buckets, maximize)]
    depth = max(len(c) for c in chains)
    for k in range(depth):
        at_k = [i for i, c in enumerate(chains) if len(c) > k]
        sharing: dict[int, list[int]] = defaultdict(list)
        for i in at_k:
            if chains[i][k].needs_global:
                sharing[id(chains[i][k])].append(i)
        for idx in sharing.values():
            t = chains[idx[0]][k]
            for i in idx:
                us[i] = _materialized(us[i])
                if buckets[i].sparse:
                    us[i] = _dense(us[i])
            stat = t.global_stat([us[i] for i in idx], groups[idx[0]])
            info[getattr(t, "info_key", type(t).__name__)] = stat
            for i in idx:
                scalars[i][k] = {**scalars[i][k], "stat": stat}
        for i in at_k:
            us[i] = _stage(chains[i], k, buckets[i], us[i], scalars[i][k])
    for i, b in enumerate(buckets):
        _finish(chains[i], b, us[i], scalars[i])
        requantize_stored_(b.stored, b.state)
        for j, k in enumerate(sorted(k for k, vs in b.stored.items()
                                     if vs[0].dtype == torch.bfloat16)):
            vs = b.stored[k]
            rounded = [stochastic_round_hashed(v.float(), b.seed, salt=(i * 64 + j) * 65536 + n)
                       for n, v in enumerate(b.state[k])]
            ops.copy_(vs, rounded)
            b.state[k] = vs
    return info


def _stage(chain_: tuple[Transform, ...], k: int, b: Bucket, u: list[Tensor] | Deferred,
           sc: dict[str, Any]) -> list[Tensor] | Deferred:
    """Rule ``k`` of a bucket's chain on the update ``u``: the new update (``[]`` once it was
    added to the parameters by the final ``scale_by_learning_rate``).

    The last rules before that step may leave their update :class:`Deferred` (a quotient not
    multiplied out), which the step adds to the parameters term by term; a rule in between
    that does not fold into the step, like any other reader, gets it multiplied out."""
    t = chain_[k]
    last = len(chain_) - 1
    to_step = isinstance(chain_[last], ScaleByLearningRate)
    if k == last and to_step:
        if isinstance(u, Deferred):
            u.add_to(b.params, sc["neg_lr"])
        else:
            ops.add_(b.params, u, sc["neg_lr"])
        return []
    if k == last - 1 and to_step and t.fold_into_step(b, sc):
        return u
    u = _materialized(u)
    if b.sparse and not t.accepts_sparse(sc):
        u = _dense(u)
    if to_step and k >= last - 2:
        return t.apply_deferred(u, b, sc)
    return t.apply(u, b, sc)


def _materialized(u: list[Tensor] | Deferred) -> list[Tensor]:
    return u.materialize() if isinstance(u, Deferred) else u


def _finish(chain_: tuple[Transform, ...], b: Bucket, u: list[Tensor] | Deferred,
            scs: list[dict[str, Any]]) -> None:
    """Add what is left of the update (a chain not ending with the learning rate) and run the
    rules' steps after the update (proximal steps)."""
    if isinstance(u, Deferred):
        u.add_to(b.params, 1.0)
    elif u:
        ops.add_(b.params, u)
    for t, sc in zip(chain_, scs):
        t.after_step(b, sc)


def run_tiled(buckets: list[Bucket], chains: list[tuple[Transform, ...]],
              groups: list[dict[str, Any]], scalars: list[list[dict[str, Any]]],
              maximize: list[bool]) -> dict[str, Tensor]:
    """:func:`run_chains` one cache-sized tile at a time (:mod:`optimlab._tiling`: the eager
    step on the CPU, for chains of elementwise rules; the same result, bit for bit), or
    :func:`run_chains` itself where tiles do not apply."""
    if not tileable(buckets, chains):
        return run_chains(buckets, chains, groups, scalars, maximize)
    for b in buckets:
        if b.steps:
            torch._foreach_add_(b.steps, 1.0)
    for b, chain_, scs, mx in zip(buckets, chains, scalars, maximize):
        for tile in tiles(b):
            u = ops.neg(tile.grads) if mx else list(tile.grads)
            for k in range(len(chain_)):
                u = _stage(chain_, k, tile, u, scs[k])
            _finish(chain_, tile, u, scs)
    return {}


def run_recorded(buckets: list[Bucket], chains: list[tuple[Transform, ...]],
                 groups: list[dict[str, Any]], scalars: list[list[dict[str, Any]]],
                 maximize: list[bool]) -> dict[str, Tensor]:
    """:func:`run_chains` for a step that autograd records (``differentiable=True``).

    The rules run on clones of the parameters and states, and the list operations update out
    of place (:mod:`optimlab.ops` puts new tensors in the lists while autograd records): no
    tensor that autograd saved is ever overwritten. The results are then copied into the
    parameters and states, once each, so they carry the step's graph.
    """
    runs = [replace(b, params=[p.clone() for p in b.params],
                    state={k: [v.clone() for v in vs] for k, vs in b.state.items()})
            for b in buckets]
    info = run_chains(runs, chains, groups, scalars, maximize)
    for b, r in zip(buckets, runs):
        pairs = [*zip(b.params, r.params)]
        pairs += [(v, new) for k, vs in b.state.items() for v, new in zip(vs, r.state[k])]
        for dst, src in pairs:
            if dst is not src:
                dst.copy_(src)
    return info


def _rounding_seed(step: int) -> int:
    """The stochastic-rounding seed of a step (below 2**24, so exact as a float32 scalar)."""
    return (step * 0x9E3779B1 + 0x5DEECE6) % (1 << 24)


def _run_flat(flat: list[tuple[Any, ...]], chains: list[tuple[Transform, ...]],
              groups: list[dict[str, Any]],
              layout: list[tuple[Tensor, list[dict[str, Any]], list[dict[str, int]]]],
              maximize: list[bool]) -> dict[str, Tensor]:
    scalars = [[{**st, **{k: values[j] for k, j in ix.items()}} for st, ix in zip(static, index)]
               for values, static, index in layout]
    buckets = [Bucket(list(p), list(g), dict(s), 0, stored=dict(lo), seed=sc.pop()["seed"],
                      steps=list(st))
               for (p, g, s, lo, st), sc in zip(flat, scalars)]
    return run_chains(buckets, chains, groups, scalars, maximize)


def _check_chain(transforms: Sequence[Transform]) -> None:
    """Refuse a chain whose rules are not transforms, or share a group key or a state key."""
    seen_h: dict[str, Transform] = {}
    seen_s: dict[str, Transform] = {}
    for t in transforms:
        _check_transform(t)
        for k in t.group_keys():
            if k in seen_h and k != "lr":
                raise ValueError(
                    f"chain: {seen_h[k]!r} and {t!r} both use the group key {k!r}; rename one, "
                    f"e.g. {type(t).__name__}.with_keys({k}='{k}_2')"
                )
            seen_h[k] = t
        for k in t.state_names():
            if k in seen_s:
                raise ValueError(
                    f"chain: {seen_s[k]!r} and {t!r} both keep the state {k!r}; rename one "
                    f"with .with_keys({k}='{k}_2')"
                )
            seen_s[k] = t


def chain(params: Iterable[Any], *transforms: Transform, **options: Any) -> ChainOptimizer:
    """Build an optimizer from update rules, applied in order to the gradient.

    ``chain(params, *rules, **options)`` is ``ChainOptimizer(params, rules, **options)``: the
    same checks and the same keyword-only options (``lr``, ``maximize``, ``nonfinite``,
    ``foreach``, ``fused``, ``master_weights``, ``stochastic_rounding``, ``state_dtype``).

    Example::

        opt = ol.chain(model.parameters(),
                       ol.transforms.clip_by_global_norm(1.0),
                       ol.transforms.scale_by_adam(b1=0.9, b2=0.999),
                       ol.transforms.add_decayed_weights(0.01),
                       lr=1e-3)

    Each rule's hyperparameters become group keys (``betas``, ``weight_decay``, ...), so
    schedulers and per-group settings work as with torch.optim. Two rules that would share a
    key must be told apart with :meth:`~optimlab.transforms.Transform.with_keys`.
    """
    return ChainOptimizer(params, transforms, **options)
