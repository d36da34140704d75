r"""Weight averaging: SWA, EMA, BatchNorm recalibration and the SWA learning-rate schedule.

:class:`SWA` keeps the equal-weight running mean of a model's weights from a start step on
(Izmailov et al., 2018), :class:`EMA` an exponential moving average (Polyak averaging with
exponential weights). Both keep the averages as plain tensors, one per named parameter (and
buffer; a DTensor sharded like the parameter when FSDP2 shards it), update them with list ops,
and never hold a second ``nn.Module``::

    avg = ol.averaging.SWA(model, start=1000)      # or ol.averaging.EMA(model, decay=0.999)
    for step, batch in enumerate(loader):
        ...; opt.step()
        avg.update(step)                           # no-op before ``start``
    with avg.swapped():                            # the averaged weights in the live model ...
        update_bn(loader, model)                   # ... BatchNorm statistics recalibrated ...
        evaluate(model)                            # ... and evaluated
    # the live weights (and buffers) are back, bit for bit

The update after which ``n`` models have already been averaged (``n >= 1``) is

.. math::
    \bar w \leftarrow \bar w + \lambda_n (w - \bar w), \qquad
    \lambda_n^{\text{SWA}} = \frac{1}{n + 1}, \qquad \lambda_n^{\text{EMA}} = 1 - \beta_n,

and the first averaged update copies :math:`\bar w \leftarrow w`, exactly as
:class:`torch.optim.swa_utils.AveragedModel` does (with its default SWA averaging, and with
``multi_avg_fn=get_ema_multi_avg_fn(decay)`` for the EMA without warm-up).

References:
    P. Izmailov, D. Podoprikhin, T. Garipov, D. Vetrov, A. G. Wilson. *Averaging Weights Leads
    to Wider Optima and Better Generalization.* UAI 2018. https://arxiv.org/abs/1803.05407

    B. T. Polyak, A. B. Juditsky. *Acceleration of Stochastic Approximation by Averaging.*
    SIAM J. Control Optim. 30(4), 1992.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from .ops import copy_, is_dtensor
from .transforms.base import check_range

__all__ = ["EMA", "SWA", "SWALR", "WeightAverage", "update_bn"]


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    check_range(name, value, low=low)


def _is_float(t: Tensor) -> bool:
    return t.is_floating_point() or t.is_complex()


def _copy_by_kind(dsts: list[Tensor], srcs: list[Tensor]) -> None:
    """``dst <- src`` for each pair, one list copy for the DTensors and one for the rest."""
    kinds: dict[bool, tuple[list[Tensor], list[Tensor]]] = {}
    for d, s in zip(dsts, srcs):
        a, b = kinds.setdefault(is_dtensor(d), ([], []))
        a.append(d)
        b.append(s)
    for a, b in kinds.values():
        copy_(a, b)


class WeightAverage:
    r"""A running average of a model's weights, kept as plain tensors (base of SWA and EMA).

    Args:
        model: the live model whose parameters (and buffers) are averaged.
        start: the first step that is averaged; :meth:`update` calls with ``step < start`` do
            nothing. Must be an integer ``>= 0``.
        use_buffers: if ``True``, floating-point buffers (BatchNorm running statistics, ...)
            are averaged like parameters; if ``False`` (default, as in torch) each averaged
            update copies the model's current buffers. Non-floating buffers
            (``num_batches_tracked``) are always copied, never averaged.
        device: where the averages live (e.g. ``"cpu"`` to keep them off the accelerator);
            default: next to each weight.

    Subclasses define the interpolation weight :math:`\lambda_n` of update ``n`` (``n >= 1``
    models already averaged) through :meth:`_weight`.
    """

    def __init__(self, model: nn.Module, *, start: int = 0, use_buffers: bool = False,
                 device: torch.device | str | int | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        _check_int("start", start, 0)
        self.model = model
        self.start = start
        self.use_buffers = bool(use_buffers)
        self.device = None if device is None else torch.device(device)
        #: number of models averaged so far (0: the averages have not been started yet)
        self.n_averaged = 0
        #: number of :meth:`update` calls so far (the step used when ``update`` gets none)
        self.num_updates = 0
        live = self._live()
        with torch.no_grad():
            self.averages: dict[str, Tensor] = {
                name: t.detach().to(self.device if self.device is not None else t.device,
                                    copy=True)
                for name, t in live.items()
            }
        self._param_names = frozenset(n for n, _ in model.named_parameters())

    # ---------------------------------------------------------------- internals
    def _live(self, model: nn.Module | None = None) -> dict[str, Tensor]:
        model = self.model if model is None else model
        out = {n: p for n, p in model.named_parameters()}
        out.update((n, b) for n, b in model.named_buffers())
        return out

    def _averaged_name(self, name: str, t: Tensor) -> bool:
        """Whether ``name`` is averaged (else it is copied at every averaged update)."""
        if not _is_float(t):
            return False
        return name in self._param_names or self.use_buffers

    def _weight(self, n: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    # ---------------------------------------------------------------- public API
    @torch.no_grad()
    def update(self, step: int | None = None) -> bool:
        """Fold the live model's current weights into the average.

        Args:
            step: the training step; default: the number of earlier ``update`` calls. Calls with
                ``step < start`` change nothing.

        Returns:
            whether the weights were averaged.
        """
        t = self.num_updates if step is None else step
        _check_int("step", t, 0)
        self.num_updates = t + 1
        if t < self.start:
            return False
        live = self._live()
        if live.keys() != self.averages.keys():
            raise ValueError("model's parameters/buffers changed since the average was created: "
                             f"{sorted(set(live) ^ set(self.averages))}")
        first = self.n_averaged == 0
        w = 1.0 if first else self._weight(self.n_averaged)
        # One lerp per device, dtype and kind (FSDP2 makes the parameters DTensors, not the
        # buffers; a list op takes either).
        lerp: dict[tuple[torch.device, torch.dtype, bool], tuple[list[Tensor], list[Tensor]]] = {}
        copy_dst: list[Tensor] = []
        copy_src: list[Tensor] = []
        for name, src in live.items():
            dst = self.averages[name]
            src = src.detach().to(dst.device)
            if first or not self._averaged_name(name, dst):
                copy_dst.append(dst)
                copy_src.append(src)
            else:
                a, b = lerp.setdefault((dst.device, dst.dtype, is_dtensor(dst)), ([], []))
                a.append(dst)
                b.append(src)
        _copy_by_kind(copy_dst, copy_src)
        for a, b in lerp.values():
            torch._foreach_lerp_(a, b, w)
        self.n_averaged += 1
        return True

    @torch.no_grad()
    def copy_to(self, model: nn.Module | None = None) -> None:
        """Copy the averaged weights (and buffers) into ``model`` (default: the live model).

        ``model`` must have the averaged model's parameters and buffers: the same names and
        shapes (dtypes and devices may differ: the values are cast). Otherwise ``ValueError``
        names the first difference, and nothing is copied.
        """
        live = self._live(model)
        self._check_like(live, "model")
        _copy_by_kind([live[n].detach() for n in self.averages], list(self.averages.values()))

    def _check_like(self, tensors: Mapping[str, Any], what: str) -> None:
        """Refuse ``tensors`` (by name) unless they match the averages in names and shapes
        (a copy into a tensor of another shape would broadcast, or fail half-way)."""
        missing = [n for n in self.averages if n not in tensors]
        if missing:
            raise ValueError(f"{what} lacks averaged entries {missing[:5]}"
                             f"{' ...' if len(missing) > 5 else ''} ({len(missing)} of "
                             f"{len(self.averages)})")
        extra = [n for n in tensors if n not in self.averages]
        if extra:
            raise ValueError(f"{what} has entries the average does not have: {extra[:5]}"
                             f"{' ...' if len(extra) > 5 else ''}: another model?")
        for name, avg in self.averages.items():
            t = tensors[name]
            if not isinstance(t, Tensor):
                raise ValueError(f"{what}: {name!r} must be a tensor, got {type(t).__name__}")
            if t.shape != avg.shape:
                raise ValueError(f"{what}: {name!r} has shape {tuple(t.shape)}, the average "
                                 f"{tuple(avg.shape)}: another model?")

    @contextmanager
    def swapped(self) -> Iterator[nn.Module]:
        """Put the averaged weights into the live model for the ``with`` block, then restore.

        All parameters and buffers of the live model are saved first and copied back on leaving
        the block (also on an exception), bit for bit; whatever the block does to them (e.g.
        :func:`update_bn`) is undone. Yields the live model.
        """
        live = self._live()
        names = list(live)
        with torch.no_grad():
            saved = [live[n].detach().clone() for n in names]
        try:
            self.copy_to(self.model)
            yield self.model
        finally:
            with torch.no_grad():
                _copy_by_kind([live[n].detach() for n in names], saved)

    #: alias of :meth:`swapped`
    averaged = swapped

    def state_dict(self) -> dict[str, Any]:
        """The averages (by parameter/buffer name), counters and settings."""
        return {
            "averages": dict(self.averages),
            "n_averaged": self.n_averaged,
            "num_updates": self.num_updates,
            "start": self.start,
            "use_buffers": self.use_buffers,
            **self._extra_state(),
        }

    def _extra_state(self) -> dict[str, Any]:
        return {}

    @torch.no_grad()
    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load what :meth:`state_dict` returned (copies into the existing tensors).

        Everything is checked first (names and shapes of the averages, the counters, the
        settings); a refused dict changes nothing.
        """
        avg = state_dict["averages"]
        if not isinstance(avg, Mapping):
            raise ValueError(f"state_dict averages must be a dict of tensors, got "
                             f"{type(avg).__name__}")
        self._check_like(avg, "state_dict averages")
        _check_int("n_averaged", state_dict["n_averaged"], 0)
        _check_int("num_updates", state_dict["num_updates"], 0)
        _check_int("start", state_dict["start"], 0)
        self._check_extra_state(state_dict)
        for name, t in self.averages.items():
            t.copy_(avg[name])
        self.n_averaged = state_dict["n_averaged"]
        self.num_updates = state_dict["num_updates"]
        self.start = state_dict["start"]
        self.use_buffers = bool(state_dict["use_buffers"])
        self._load_extra_state(state_dict)

    def _check_extra_state(self, state_dict: Mapping[str, Any]) -> None:
        """Refuse invalid subclass settings in ``state_dict`` (before anything is loaded)."""

    def _load_extra_state(self, state_dict: Mapping[str, Any]) -> None:
        pass


class SWA(WeightAverage):
    r"""Stochastic Weight Averaging: the equal-weight mean of the weights from ``start`` on.

    After ``n`` averaged models, :math:`\bar w \leftarrow \bar w + (w - \bar w)/(n + 1)`, so
    :math:`\bar w = \frac{1}{N}\sum_{i=1}^{N} w_i` over the ``N`` averaged updates. Equal to
    :class:`torch.optim.swa_utils.AveragedModel` with its default averaging (Izmailov et al.,
    2018, https://arxiv.org/abs/1803.05407). Pair with :class:`SWALR` and :func:`update_bn`.

    Args: see :class:`WeightAverage`.
    """

    def _weight(self, n: int) -> float:
        return 1.0 / (n + 1)


class EMA(WeightAverage):
    r"""Exponential moving average of the weights.

    After ``n >= 1`` averaged models, :math:`\bar w \leftarrow \beta_n \bar w + (1-\beta_n) w`
    with

    .. math::
        \beta_n = \text{decay} \quad\text{(warmup=False)}, \qquad
        \beta_n = \min\Big(\text{decay}, \frac{1 + n}{10 + n}\Big) \quad\text{(warmup=True)}.

    Without warm-up this equals :class:`torch.optim.swa_utils.AveragedModel` with
    ``multi_avg_fn=get_ema_multi_avg_fn(decay)``; the warm-up is the one of
    ``tf.train.ExponentialMovingAverage(num_updates=...)``, which keeps early averages from
    being dominated by the (random) initial weights. The first averaged update copies the
    weights.

    Args:
        model, start, use_buffers, device: see :class:`WeightAverage`.
        decay: :math:`\text{decay} \in [0, 1]`; default 0.999.
        warmup: use the warm-up schedule above; default ``False``.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, *, warmup: bool = False,
                 start: int = 0, use_buffers: bool = False,
                 device: torch.device | str | int | None = None) -> None:
        check_range("decay", decay, low=0.0, high=1.0, high_open=False)
        super().__init__(model, start=start, use_buffers=use_buffers, device=device)
        self.decay = float(decay)
        self.warmup = bool(warmup)

    def decay_at(self, n: int) -> float:
        """:math:`\\beta_n`, the decay of the update after ``n >= 1`` averaged models."""
        if self.warmup:
            return min(self.decay, (1.0 + n) / (10.0 + n))
        return self.decay

    def _weight(self, n: int) -> float:
        return 1.0 - self.decay_at(n)

    def _extra_state(self) -> dict[str, Any]:
        return {"decay": self.decay, "warmup": self.warmup}

    def _check_extra_state(self, state_dict: Mapping[str, Any]) -> None:
        check_range("decay", state_dict["decay"], low=0.0, high=1.0, high_open=False)

    def _load_extra_state(self, state_dict: Mapping[str, Any]) -> None:
        self.decay = float(state_dict["decay"])
        self.warmup = bool(state_dict["warmup"])


def _to_device(x: Any, device: torch.device | str | int) -> Any:
    if isinstance(x, Tensor):
        return x.to(device)
    if isinstance(x, Mapping):
        return type(x)({k: _to_device(v, device) for k, v in x.items()})  # type: ignore[call-arg]
    if isinstance(x, (list, tuple)):
        return type(x)(_to_device(v, device) for v in x)
    return x


@torch.no_grad()
def update_bn(
    loader: Iterable[Any],
    model: nn.Module,
    device: torch.device | str | int | None = None,
    *,
    input_key: str = "input",
    input_fn: Callable[[Any], Any] | None = None,
) -> None:
    r"""Recompute the BatchNorm running statistics of ``model`` with one pass over ``loader``.

    Every ``_BatchNorm`` layer's running statistics are reset and its momentum set to ``None``
    (the cumulative average :math:`\hat\mu = \frac{1}{N}\sum_b \mu_b`, likewise the variance),
    the model is run in training mode on each batch, and afterwards each module's momentum and
    training flag are restored (also on an exception). Equal to
    :func:`torch.optim.swa_utils.update_bn` on loaders of tensors and tuples/lists.

    The model input of a batch is

    * ``input_fn(batch)`` if ``input_fn`` is given;
    * ``batch[input_key]`` for a mapping (``dict``) batch (default key ``"input"``);
    * ``batch[0]`` for a tuple/list batch;
    * the batch itself otherwise (a tensor).

    Args:
        loader: an iterable of batches (e.g. a ``DataLoader``).
        model: the model whose BatchNorm statistics are recomputed (e.g. inside
            :meth:`WeightAverage.swapped`).
        device: if given, the input (tensors, also nested in lists/tuples/dicts) is moved there.
        input_key: the key of the input in mapping batches.
        input_fn: a callable extracting the model input from a batch.
    """
    momenta: dict[nn.Module, float | None] = {}
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            momenta[module] = module.momentum
    if not momenta:
        return
    modes = {m: m.training for m in model.modules()}
    try:
        model.train()
        for module in momenta:
            module.momentum = None
        for batch in loader:
            if input_fn is not None:
                x = input_fn(batch)
            elif isinstance(batch, Mapping):
                if input_key not in batch:
                    raise ValueError(f"input_key {input_key!r} not in the batch's keys "
                                     f"{sorted(map(str, batch))}; pass input_key or input_fn")
                x = batch[input_key]
            elif isinstance(batch, (list, tuple)):
                x = batch[0]
            else:
                x = batch
            if device is not None:
                x = _to_device(x, device)
            model(x)
    finally:
        for module, momentum in momenta.items():
            module.momentum = momentum
        for module, training in modes.items():
            module.training = training


class SWALR(LRScheduler):
    r"""Anneal each group's learning rate to ``swa_lr`` over ``anneal_epochs``, then hold it.

    With :math:`t = \min(1, \text{step}/\max(1, \text{anneal\_epochs}))` and
    :math:`a(t) = t` (``"linear"``) or :math:`a(t) = (1 - \cos \pi t)/2` (``"cos"``), the
    learning rate after ``step`` scheduler steps is
    :math:`\eta = a(t)\,\eta_{\text{swa}} + (1 - a(t))\,\eta_0`, where :math:`\eta_0` is the
    learning rate when the schedule starts (recovered from the group's current rate, so it
    chains with other schedulers). Equal to :class:`torch.optim.swa_utils.SWALR`; works with any
    :class:`torch.optim.Optimizer`, including :class:`optimlab.lookahead.Lookahead`.

    Args:
        optimizer: the optimizer.
        swa_lr: the final learning rate, one for all groups or a list with one per group;
            each ``>= 0``.
        anneal_epochs: the number of scheduler steps of the annealing phase, an integer ``>= 0``.
        anneal_strategy: ``"cos"`` or ``"linear"``.
        last_epoch: the index of the last epoch (-1 to start).

    Reference: Izmailov et al., 2018, https://arxiv.org/abs/1803.05407.
    """

    def __init__(self, optimizer: Optimizer, swa_lr: float | list[float] | tuple[float, ...],
                 anneal_epochs: int = 10,
                 anneal_strategy: Literal["cos", "linear"] = "cos",
                 last_epoch: int = -1) -> None:
        n = len(optimizer.param_groups)
        if isinstance(swa_lr, (list, tuple)):
            if len(swa_lr) != n:
                raise ValueError(f"swa_lr must have one value per param group ({n}), "
                                 f"got {len(swa_lr)}")
            lrs = list(swa_lr)
        else:
            lrs = [swa_lr] * n
        for v in lrs:
            check_range("swa_lr", v, low=0.0)
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError("anneal_strategy must be one of 'cos', 'linear', "
                             f"got {anneal_strategy!r}")
        _check_int("anneal_epochs", anneal_epochs, 0)
        for v, group in zip(lrs, optimizer.param_groups):
            group["swa_lr"] = v.clone() if isinstance(v, Tensor) else v
        self.anneal_strategy = anneal_strategy
        self.anneal_epochs = anneal_epochs
        super().__init__(optimizer, last_epoch)

    def _anneal(self, t: float) -> float:
        if self.anneal_strategy == "cos":
            return (1 - math.cos(math.pi * t)) / 2
        return t

    @staticmethod
    def _initial_lr(lr: Any, swa_lr: Any, alpha: float) -> Any:
        if alpha == 1:
            return swa_lr
        return (lr - alpha * swa_lr) / (1 - alpha)

    def get_lr(self) -> list[Any]:  # type: ignore[override]
        """The learning rates of this step (use :meth:`get_last_lr` to read them)."""
        if not getattr(self, "_get_lr_called_within_step", True):
            warnings.warn("To get the last learning rate computed by the scheduler, "
                          "please use `get_last_lr()`.", UserWarning, stacklevel=2)
        step = self._step_count - 1
        if self.anneal_epochs == 0:
            step = max(1, step)
        prev_t = max(0, min(1, (step - 1) / max(1, self.anneal_epochs)))
        prev_alpha = self._anneal(prev_t)
        t = max(0, min(1, step / max(1, self.anneal_epochs)))
        alpha = self._anneal(t)
        out = []
        for group in self.optimizer.param_groups:
            lr0 = self._initial_lr(group["lr"], group["swa_lr"], prev_alpha)
            out.append(group["swa_lr"] * alpha + lr0 * (1 - alpha))
        return out
