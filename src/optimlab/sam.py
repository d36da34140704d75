r"""Sharpness-Aware Minimization (SAM) and its adaptive variant (ASAM), around any optimizer.

SAM (Foret et al., 2020) minimizes the worst loss in a ball of radius :math:`\rho` around the
weights, :math:`\min_w \max_{\|\epsilon\| \le \rho} L(w + \epsilon)`. One step, with
:math:`g = \nabla L(w)` (all parameters of all groups seen as one vector):

.. math::
    \epsilon = \rho\, \frac{g}{\|g\|_2 + \varepsilon}, \qquad
    g' = \nabla L(w + \epsilon), \qquad
    w \leftarrow \text{base\_step}(w, g'),

that is: climb to the (first-order) worst point of the ball, take the gradient there, come back
to :math:`w` and let the base optimizer (SGD, Adam, ...) step with :math:`g'`. ASAM (Kwon et
al., 2021) measures the ball in weight-relative coordinates, with the diagonal operator
:math:`T_w = \operatorname{diag}(|w| + \eta)`:

.. math::
    \epsilon = \rho\, \frac{T_w^2\, g}{\|T_w\, g\|_2 + \varepsilon},

so that rescaling a layer's weights (which leaves a ReLU network's function unchanged) does not
change the step. :math:`\varepsilon` (``norm_eps``) only keeps a zero gradient from dividing by
zero. A step costs two gradient evaluations.

References:
    P. Foret, A. Kleiner, H. Mobahi, B. Neyshabur. *Sharpness-Aware Minimization for
    Efficiently Improving Generalization.* ICLR 2021. https://arxiv.org/abs/2010.01412

    J. Kwon, J. Kim, H. Park, I. K. Choi. *ASAM: Adaptive Sharpness-Aware Minimization for
    Scale-Invariant Learning of Deep Neural Networks.* ICML 2021.
    https://arxiv.org/abs/2102.11600
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.parameter import is_lazy
from torch.optim import Optimizer

from .transforms.base import check_range

__all__ = ["SAM", "frozen_running_stats", "local_gradients"]

#: The per-group keys SAM adds to the base optimizer's param groups.
SAM_KEYS = ("rho", "adaptive", "eta")


@contextlib.contextmanager
def frozen_running_stats(model: nn.Module | None) -> Iterator[None]:
    """Leave the running statistics of ``model``'s normalization layers as they were.

    Every batch-norm layer (``BatchNorm1d/2d/3d``, ``SyncBatchNorm``, the lazy ones) and every
    instance-norm layer that tracks running statistics keeps ``running_mean``,
    ``running_var`` and ``num_batches_tracked``: they are copied on entry and written back on
    exit (also when the block raises). The forward passes inside still normalize as usual
    (with the batch's statistics in training mode). SAM's second forward pass, at the
    perturbed weights, runs inside it, so the statistics are updated once per SAM step, by the
    pass at the true weights. ``model=None`` does nothing.

    Example (the two-step API)::

        loss_fn(model(x), y).backward()
        sam.first_step(zero_grad=True)
        with frozen_running_stats(model):
            loss_fn(model(x), y).backward()
        sam.second_step(zero_grad=True)
    """
    saved: list[tuple[Tensor, Tensor]] = []
    if model is not None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        for module in model.modules():
            if not (isinstance(module, _NormBase) and module.track_running_stats):
                continue
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                buffer = getattr(module, name, None)
                if isinstance(buffer, Tensor) and not is_lazy(buffer):
                    saved.append((buffer, buffer.detach().clone()))
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def local_gradients(model: nn.Module | None) -> contextlib.AbstractContextManager[Any]:
    """``model.no_sync()`` when ``model`` has it (``DistributedDataParallel``: the gradients
    of a backward pass inside stay each worker's own, not all-reduced), else a context that
    does nothing. :meth:`SAM.step` runs its first closure call inside it."""
    no_sync = getattr(model, "no_sync", None)
    return no_sync() if callable(no_sync) else contextlib.nullcontext()


def _check_sam_settings(group: Mapping[str, Any], where: str = "") -> None:
    """Raise ``ValueError`` naming the field unless ``group`` holds valid SAM settings."""
    for key in SAM_KEYS:
        if key not in group:
            raise ValueError(f"{where}missing SAM setting {key!r}")
    check_range(f"{where}rho", group["rho"], low=0.0)
    check_range(f"{where}eta", group["eta"], low=0.0)
    if not isinstance(group["adaptive"], bool):
        raise ValueError(f"{where}adaptive must be a bool, got {group['adaptive']!r}")


class SAM(Optimizer):
    r"""Sharpness-Aware Minimization around a base optimizer; ASAM with ``adaptive=True``.

    The update (module docstring): :math:`\epsilon = \rho\, g / (\|g\| + \varepsilon)` (SAM) or
    :math:`\epsilon = \rho\, T_w^2 g / (\|T_w g\| + \varepsilon)`, :math:`T_w =
    \operatorname{diag}(|w| + \eta)` (ASAM), the gradient :math:`g'` taken at :math:`w +
    \epsilon`, then the base optimizer's step from :math:`w` with :math:`g'`. The norm is
    global: over all parameters of all groups that have a gradient. A group's own ``rho``,
    ``adaptive`` and ``eta`` scale its part of :math:`\epsilon`; a group whose base optimizer
    maximizes (``maximize=True``) takes :math:`-\epsilon`, the worst point for maximization.

    Construction, one signature ``SAM(params, base_optimizer, ...)``:

    * ``base_optimizer`` a class (or any callable returning an optimizer):
      ``base_optimizer(params, **kwargs)`` builds it, e.g. ``SAM(model.parameters(), ol.SGD,
      lr=0.1, momentum=0.9, rho=0.05)``;
    * ``base_optimizer`` an optimizer already built: ``params`` must be exactly its parameters
      (``SAM(model.parameters(), opt)``) and ``kwargs`` empty; anything else is refused.

    The wrapper is a :class:`torch.optim.Optimizer` whose ``param_groups`` and ``state`` *are*
    the base optimizer's: LR schedulers built on it (torch's, :class:`optimlab.ScheduledLR`)
    set the base's ``lr``, and each group holds ``group["rho"]``, ``group["adaptive"]`` and
    ``group["eta"]``, so :class:`optimlab.schedules.ScheduledHyperparameter` can schedule
    ``rho``. Base optimizers that already use one of these keys (Adadelta's ``rho``) are
    refused rather than silently sharing it.

    Two ways to step:

    * ``step(closure)``: the closure computes the loss, calls ``backward()`` and returns the
      loss (torch's convention). SAM sets the gradients to ``None`` before each call and calls
      it exactly twice, at :math:`w` and at :math:`w + \epsilon`, the second time inside
      :func:`frozen_running_stats` when ``model`` was given. It returns the first loss. A step
      without a closure raises ``TypeError``: SAM needs two gradients.
    * ``first_step(zero_grad=True)`` after a backward pass at :math:`w`, then a backward pass
      at the perturbed weights, then ``second_step()``.

    After a step the parameters' ``.grad`` hold :math:`g'`. Gradient accumulation: accumulate
    the micro-batches' gradients before ``first_step`` and again, from zero, before
    ``second_step`` (``first_step(zero_grad=True)`` clears them); with ``step(closure)`` the
    closure accumulates over the micro-batches. Mixed precision: ``torch.autocast`` around the
    forward passes needs nothing more; with a ``torch.amp.GradScaler``, backpropagate
    ``scaler.scale(loss)`` both times and call ``second_step(scaler=scaler)`` then
    ``scaler.update()`` (the perturbation is invariant to the loss scale; the scaler unscales
    :math:`g'` and skips the base step when it holds inf/NaN). ``step(closure)`` does not take a
    scaler, as GradScaler refuses closures. A non-finite first gradient gives a non-finite
    perturbation, hence a non-finite :math:`g'`: the weights are restored first, then the base
    optimizer's inf/NaN policy (optimlab's ``nonfinite``) or the scaler decides.
    :class:`optimlab.GradientAccumulator` cannot drive SAM (it calls ``step()`` without a
    closure): accumulate as above.

    Distributed data parallel (Foret et al.'s distributed setup, their "m-sharpness"): each
    worker perturbs with its *own* gradient and the descent uses the gradient at the perturbed
    points averaged over the workers. With ``model`` a ``DistributedDataParallel`` module,
    ``step(closure)`` does this by itself: the first closure call runs inside
    ``model.no_sync()`` (its backward is not all-reduced, so :math:`\epsilon` is the worker's
    own, and the norm is that of its local gradient, never reduced across workers); the second
    is all-reduced as usual, so every worker takes the same base step from the same :math:`w`
    and the replicas stay equal. With the two-step API, run the first forward and backward
    inside ``model.no_sync()`` yourself::

        with ddp_model.no_sync():
            loss_fn(ddp_model(x), y).backward()     # local gradient
        sam.first_step(zero_grad=True)              # each worker its own epsilon
        loss_fn(ddp_model(x), y).backward()         # all-reduced g'
        sam.second_step(zero_grad=True)

    Without ``no_sync`` the first gradient is all-reduced too and every worker perturbs with
    the global batch's gradient (SAM on the global batch; one more all-reduce per step).
    Any module with a ``no_sync()`` context (``DistributedDataParallel``, FSDP1) gets the
    same treatment; FSDP2's ``fully_shard`` modules have none (use
    ``set_requires_gradient_sync(False)`` around the first pass).

    Memory: one copy of the parameters (the unperturbed weights, a buffer kept from step to
    step); ASAM also holds :math:`T` and :math:`T g` during ``first_step``. The perturbation is
    applied with list operations (``torch._foreach_*``), one call per group, device and dtype.

    :meth:`state_dict` is the base optimizer's (its groups carry ``rho``, ``adaptive``,
    ``eta``); the perturbation is transient and is never saved: saving or loading between
    ``first_step`` and ``second_step`` raises ``RuntimeError``. A state dict of the bare base
    optimizer loads too (its groups get this wrapper's constructor settings).

    Args:
        params: the parameters (an iterable of tensors or of param-group dicts, which may set
            ``rho``, ``adaptive`` and ``eta`` per group).
        base_optimizer: an optimizer class (or factory), or an optimizer over ``params``.
        rho: radius :math:`\rho \ge 0` of the neighbourhood; default 0.05. ``rho=0`` is the
            base optimizer (bit for bit), at twice the cost.
        adaptive: ASAM instead of SAM; default False.
        eta: :math:`\eta \ge 0` of ASAM's :math:`T_w = \operatorname{diag}(|w| + \eta)`;
            default 0.01 (Kwon et al.). Unused without ``adaptive``.
        norm_eps: :math:`\varepsilon > 0` added to the norm; default 1e-12.
        model: optional module whose normalization layers' running statistics the second
            forward pass of ``step(closure)`` must not update (see
            :func:`frozen_running_stats`); a ``DistributedDataParallel`` module also makes
            the first pass local (see above).
        **kwargs: the base optimizer's arguments (``lr``, ``momentum``, ...), when it is a
            class.

    Example::

        sam = SAM(model.parameters(), ol.SGD, lr=0.1, momentum=0.9, rho=0.05, model=model)
        def closure():
            loss = loss_fn(model(x), y)
            loss.backward()
            return loss
        loss = sam.step(closure)
    """

    #: The closure calls ``backward()`` (torch's convention); a lab charges each call.
    closure_calls_backward: bool = True

    def __init__(self, params: Iterable[Any], base_optimizer: type[Optimizer] | Callable[..., Any]
                 | Optimizer, rho: float = 0.05, adaptive: bool = False, *, eta: float = 0.01,
                 norm_eps: float = 1e-12, model: nn.Module | None = None,
                 **kwargs: Any) -> None:
        if isinstance(params, Optimizer):
            raise TypeError("SAM(params, base_optimizer, ...): the first argument is the "
                            "parameters; to wrap an optimizer already built, pass its "
                            "parameters first: SAM(model.parameters(), optimizer, rho=...)")
        sam_defaults = {"rho": rho, "adaptive": adaptive, "eta": eta}
        _check_sam_settings(sam_defaults)
        check_range("norm_eps", norm_eps, low=0.0, low_open=True)
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module or None, got "
                            f"{type(model).__name__}")
        if isinstance(base_optimizer, Optimizer):
            if kwargs:
                raise TypeError(f"base_optimizer is already built: its arguments cannot be "
                                f"given again (got {sorted(kwargs)})")
            _check_same_params(params, base_optimizer)
            base = base_optimizer
        elif callable(base_optimizer):
            base = base_optimizer(params, **kwargs)
            if not isinstance(base, Optimizer):
                raise TypeError(f"base_optimizer(params, **kwargs) must return a "
                                f"torch.optim.Optimizer, got {type(base).__name__}")
        else:
            raise TypeError(f"base_optimizer must be an optimizer class or a "
                            f"torch.optim.Optimizer, got {type(base_optimizer).__name__}")
        taken = sorted(set(SAM_KEYS) & set(base.defaults))
        if taken:
            raise ValueError(f"{type(base).__name__} has its own hyperparameter(s) {taken}, "
                             f"which SAM keeps in each param group: it cannot be SAM's base "
                             f"optimizer")
        settings = [{**sam_defaults, **{k: g[k] for k in SAM_KEYS if k in g}}
                    for g in base.param_groups]
        for i, merged in enumerate(settings):  # all checked before any group changes
            _check_sam_settings(merged, f"param_groups[{i}]: ")
        for group, merged in zip(base.param_groups, settings):
            group.update(merged)
        # Not Optimizer.__init__: the param groups and the state belong to the base optimizer.
        self.base_optimizer = base
        self.defaults = {**base.defaults, **sam_defaults}
        self.norm_eps = float(norm_eps)
        self.model = model
        #: the weights w while the parameters hold w + e (between first_step and second_step)
        self._unperturbed: dict[Tensor, Tensor] = {}
        #: (parameters, their anchors) per bucket that first_step moved
        self._moved: list[tuple[list[Tensor], list[Tensor]]] = []
        self._perturbed = False
        self._init_hooks()

    def _init_hooks(self) -> None:
        for name in ("_optimizer_step_pre_hooks", "_optimizer_step_post_hooks",
                     "_optimizer_state_dict_pre_hooks", "_optimizer_state_dict_post_hooks",
                     "_optimizer_load_state_dict_pre_hooks",
                     "_optimizer_load_state_dict_post_hooks"):
            if name not in self.__dict__:
                setattr(self, name, OrderedDict())
        self._patch_step_function()
        self._warned_capturable_if_run_uncaptured = True

    # ----- shared with the base optimizer ------------------------------------------------------
    @property  # type: ignore[override]
    def param_groups(self) -> list[dict[str, Any]]:
        return self.base_optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.base_optimizer.param_groups = value

    @property  # type: ignore[override]
    def state(self) -> Any:
        """The base optimizer's per-parameter state."""
        return self.base_optimizer.state

    @state.setter
    def state(self, value: Any) -> None:
        self.base_optimizer.state = value

    def __getstate__(self) -> dict[str, Any]:
        if self._perturbed:
            raise RuntimeError("SAM cannot be pickled between first_step() and second_step(): "
                               "the parameters hold the perturbed weights")
        return {"base_optimizer": self.base_optimizer, "defaults": self.defaults,
                "norm_eps": self.norm_eps, "model": self.model}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._unperturbed, self._moved, self._perturbed = {}, [], False
        self._init_hooks()

    def __repr__(self) -> str:
        return f"SAM(norm_eps={self.norm_eps}, base_optimizer={self.base_optimizer!r})"

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the base optimizer, with SAM's defaults for the keys it lacks."""
        group = dict(param_group)
        for key in SAM_KEYS:
            group.setdefault(key, self.defaults[key])
        _check_sam_settings(group, "param group: ")
        self.base_optimizer.add_param_group(group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """The base optimizer's ``zero_grad``."""
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    def _validate_settings(self, group: Mapping[str, Any]) -> None:
        """Check a group's SAM settings, then the base optimizer's own (optimlab's optimizers);
        :class:`optimlab.schedules.ScheduledHyperparameter` calls it before writing a value."""
        _check_sam_settings(group)
        validate = getattr(self.base_optimizer, "_validate_settings", None)
        if validate is not None:
            validate(group)

    # ----- the two steps -----------------------------------------------------------------------
    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        r"""Move the weights to :math:`w + \epsilon`, :math:`\epsilon` from the current gradients.

        Parameters without a gradient are not moved. With ``zero_grad=True`` the gradients are
        then set to ``None``, ready for the backward pass at the perturbed weights.
        """
        if self._perturbed:
            raise RuntimeError("first_step() called twice: call second_step() first")
        groups = [(i, g, [p for p in g["params"] if p.grad is not None])
                  for i, g in enumerate(self.param_groups)]
        if not any(params for _, _, params in groups):
            raise RuntimeError("SAM.first_step(): no parameter has a gradient; call backward() "
                               "first")
        for i, group, _ in groups:
            _check_sam_settings(group, f"param_groups[{i}]: ")
        # One bucket per group, device and dtype: list ops (torch._foreach_*) within it.
        buckets: list[tuple[dict[str, Any], list[Tensor], list[Tensor]]] = []
        for _, group, params in groups:
            by_kind: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
            for p in params:
                if p.grad.is_sparse:
                    raise RuntimeError("SAM does not support sparse gradients")
                by_kind.setdefault((p.device, p.dtype), []).append(p)
            buckets.extend((group, ps, [p.grad for p in ps]) for ps in by_kind.values())
        # The global norm of g (SAM) or T g (ASAM, T = |w| + eta): float64 when a gradient is
        # float64 (or complex128), float32 otherwise; half-precision gradients are summed in
        # float32 (a half-precision norm overflows above 65504).
        norm_dtype = torch.float64 if any(gs[0].dtype in (torch.float64, torch.complex128)
                                          for _, _, gs in buckets) else torch.float32
        device = buckets[0][1][0].device
        directions: list[list[Tensor]] = []  # g (SAM) or T g (ASAM), per bucket
        weights: list[list[Tensor] | None] = []  # T (ASAM) or None, per bucket
        norms: list[Tensor] = []
        for group, params, grads in buckets:
            t = None
            if group["adaptive"]:
                t = torch._foreach_abs(params)
                torch._foreach_add_(t, group["eta"])
            direction = grads if t is None else torch._foreach_mul(t, grads)
            directions.append(direction)
            weights.append(t)
            low = grads[0].dtype in (torch.float16, torch.bfloat16)
            norms.extend(n.to(device=device, dtype=norm_dtype) for n in
                         torch._foreach_norm(direction, 2, dtype=torch.float32 if low else None))
        denominator = torch.linalg.vector_norm(torch.stack(norms)) + self.norm_eps
        self._moved = []
        for (group, params, _), direction, t in zip(buckets, directions, weights):
            # e = rho * g / (||g|| + eps)  or  rho * T^2 g / (||T g|| + eps); maximizing L is
            # minimizing -L, whose worst point lies the other way
            rho = -group["rho"] if group.get("maximize", False) else group["rho"]
            scale = (rho / denominator).to(device=params[0].device, dtype=params[0].dtype)
            if t is not None:
                torch._foreach_mul_(direction, t)  # T g -> T^2 g (a temporary of this step)
            anchors = [self._anchor(p) for p in params]
            torch._foreach_copy_(anchors, params)
            # w <- w + direction * scale, one pass and no temporary e
            torch._foreach_addcmul_(params, direction, [scale] * len(params))
            self._moved.append((params, anchors))
        self._perturbed = True
        if zero_grad:
            self.zero_grad()

    def _anchor(self, p: Tensor) -> Tensor:
        """The buffer that keeps ``p``'s unperturbed value (reused from step to step)."""
        anchor = self._unperturbed.get(p)
        if anchor is None or anchor.shape != p.shape or anchor.dtype != p.dtype \
                or anchor.device != p.device:
            anchor = self._unperturbed[p] = torch.empty_like(
                p, memory_format=torch.preserve_format)
        return anchor

    @torch.no_grad()
    def _restore(self) -> None:
        """Put the weights back to :math:`w` (exactly: copied, not ``w + e - e``)."""
        for params, anchors in self._moved:
            torch._foreach_copy_(params, anchors)
        self._perturbed = False

    def second_step(self, zero_grad: bool = False, *, scaler: Any | None = None) -> None:
        """Restore the weights to :math:`w` and take the base optimizer's step with the
        gradients now in ``.grad`` (those at the perturbed weights).

        With a ``torch.amp.GradScaler``, ``scaler.step(base_optimizer)`` takes the step (the
        caller then calls ``scaler.update()``). With ``zero_grad=True`` the gradients are then
        set to ``None``.
        """
        if not self._perturbed:
            raise RuntimeError("second_step() without first_step(): the weights are not "
                               "perturbed")
        self._restore()
        if scaler is None:
            self.base_optimizer.step()
        else:
            scaler.step(self.base_optimizer)
        if zero_grad:
            self.zero_grad()

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One SAM step: the closure (loss and ``backward()``) at :math:`w`, the perturbation,
        the closure again at :math:`w + \\epsilon`, the base step. Returns the first loss.

        If the second call raises, the weights are restored and no base step is taken.
        """
        if closure is None or not callable(closure):
            raise TypeError("SAM.step() needs a closure that computes the loss, calls "
                            "backward() and returns the loss: SAM evaluates the gradient twice "
                            "per step (or use first_step() and second_step())")
        closure = torch.enable_grad()(closure)
        self.zero_grad()
        with local_gradients(self.model):  # DDP: each worker ascends with its own gradient
            loss = closure()
        self.first_step(zero_grad=True)
        try:
            with frozen_running_stats(self.model):
                closure()
        except BaseException:
            self._restore()
            raise
        self.second_step()
        return loss

    # ----- state dict --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's ``state_dict`` (its groups hold ``rho``, ``adaptive``, ``eta``)."""
        if self._perturbed:
            raise RuntimeError("state_dict() between first_step() and second_step(): the "
                               "parameters hold the perturbed weights")
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict of this wrapper, or of the bare base optimizer (whose groups then
        get the constructor's SAM settings). Settings are checked before anything loads."""
        if self._perturbed:
            raise RuntimeError("load_state_dict() between first_step() and second_step(): the "
                               "parameters hold the perturbed weights")
        groups = state_dict.get("param_groups") if isinstance(state_dict, Mapping) else None
        if not isinstance(groups, list):
            raise ValueError("state_dict must be an optimizer state dict with 'param_groups'")
        for i, group in enumerate(groups):
            if not isinstance(group, Mapping):
                raise ValueError(f"state_dict param_groups[{i}] must be a dict")
            merged = {key: self.defaults[key] for key in SAM_KEYS}
            merged.update({k: v for k, v in group.items() if k in SAM_KEYS})
            _check_sam_settings(merged, f"state_dict param_groups[{i}]: ")
        self.base_optimizer.load_state_dict(state_dict)
        for group in self.param_groups:
            for key in SAM_KEYS:
                group.setdefault(key, self.defaults[key])


def _check_same_params(params: Iterable[Any], optimizer: Optimizer) -> None:
    """Refuse ``params`` unless they are exactly ``optimizer``'s parameters."""
    given: list[Any] = []
    for item in params:
        if isinstance(item, Mapping):
            group_params = item.get("params", [])
            given.extend([group_params] if isinstance(group_params, Tensor) else group_params)
        else:
            given.append(item)
    mine = {id(p) for g in optimizer.param_groups for p in g["params"]}
    theirs = {id(p) for p in given}
    if mine != theirs:
        raise ValueError(f"params must be exactly the parameters of base_optimizer: got "
                         f"{len(theirs)} tensors, {len(theirs - mine)} of them not in it, and "
                         f"it has {len(mine - theirs)} not given")
