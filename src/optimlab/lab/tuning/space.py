"""Search spaces: the hyperparameters of each optimizer the tuner searches, and their ranges.

``space="lr"`` (the default) tunes the learning rate only, every other hyperparameter at the
lab's default (:data:`optimlab.lab.optimizers.LAB_OPTIMIZERS`); ``space="full"`` adds the
hyperparameters below. Learning rates are log-uniform; ``1 - x`` means that ``1 - x`` is drawn
log-uniformly (betas, momentum, alpha, rho near 1 are explored evenly on a log scale)::

    optimizer            lr (log-uniform)   space="full" adds
    -------------------  -----------------  ---------------------------------------------------
    sgd                  1e-4 .. 1          (nothing: plain SGD has only the learning rate)
    momentum, nesterov   1e-4 .. 1          1 - momentum in 1e-2 .. 0.5 (momentum 0.5 .. 0.99)
    adagrad              1e-4 .. 1          eps 1e-10 .. 1e-6
    rmsprop              1e-5 .. 1e-1       1 - alpha in 1e-3 .. 1e-1 (alpha 0.9 .. 0.999),
                                            eps 1e-10 .. 1e-6 (momentum stays 0)
    adam, nadam, radam,  1e-5 .. 1e-1       1 - beta1 in 1e-2 .. 0.5 (beta1 0.5 .. 0.99),
    adamax                                  1 - beta2 in 1e-4 .. 1e-1 (beta2 0.9 .. 0.9999),
                                            eps 1e-10 .. 1e-6
    adamw                1e-5 .. 1e-1       as adam, and weight_decay 1e-6 .. 1e-1 (decoupled)
    adadelta             1e-2 .. 10         1 - rho in 1e-2 .. 0.5 (rho 0.5 .. 0.99),
                                            eps 1e-8 .. 1e-4

Weight decay is tuned only for AdamW, where it defines the optimizer: elsewhere it changes the
objective being minimized (a convex task's suboptimality could no longer reach 0). A custom
space is a mapping ``{optimizer: {hyperparameter: Param | (low, high)}}`` (``"betas.0"`` and
``"betas.1"`` address the components of ``betas``); optimizers it does not name use the ``"lr"``
preset; a ``"module:Class"`` optimizer needs one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..optimizers import LAB_OPTIMIZERS, build_optimizer, lookup, resolve_hyperparams
from ..spec import StudyError

__all__ = ["SEARCH_SPACES", "Param", "TuneError", "hyperparams_for", "search_space"]


class TuneError(StudyError):
    """An invalid tuning spec or search space; the message names the field (one line)."""


@dataclass(frozen=True)
class Param:
    """One tuned hyperparameter.

    Attributes:
        name: the hyperparameter (``"lr"``, ``"momentum"``, ``"eps"``; ``"betas.0"`` is the
            first component of ``betas``).
        low, high: the range of the *drawn* value (of ``1 - x`` for ``transform="one_minus"``).
        log: draw log-uniformly (else uniformly).
        transform: ``"identity"`` or ``"one_minus"`` (the hyperparameter is ``1 - drawn``).
    """

    name: str
    low: float
    high: float
    log: bool = True
    transform: str = "identity"

    @property
    def key(self) -> str:
        """The name of the drawn value in Optuna (``"lr"``, ``"1-beta1"``)."""
        shown = {"betas.0": "beta1", "betas.1": "beta2"}.get(self.name, self.name)
        return f"1-{shown}" if self.transform == "one_minus" else shown

    def value(self, drawn: float) -> float:
        """The hyperparameter's value for a drawn value."""
        return 1.0 - drawn if self.transform == "one_minus" else drawn


def _lr(low: float, high: float) -> Param:
    return Param("lr", low, high)


_EPS = Param("eps", 1e-10, 1e-6)
_BETAS = (Param("betas.0", 1e-2, 0.5, transform="one_minus"),
          Param("betas.1", 1e-4, 1e-1, transform="one_minus"))
_MOMENTUM = Param("momentum", 1e-2, 0.5, transform="one_minus")


def _space(*params: Param) -> dict[str, Param]:
    return {p.name: p for p in params}


#: The ``"full"`` search space of every lab optimizer (``"lr"``: its ``lr`` entry only).
SEARCH_SPACES: dict[str, dict[str, Param]] = {
    "sgd": _space(_lr(1e-4, 1.0)),
    "momentum": _space(_lr(1e-4, 1.0), _MOMENTUM),
    "nesterov": _space(_lr(1e-4, 1.0), _MOMENTUM),
    "adagrad": _space(_lr(1e-4, 1.0), _EPS),
    "rmsprop": _space(_lr(1e-5, 1e-1), Param("alpha", 1e-3, 1e-1, transform="one_minus"),
                      _EPS),
    "adam": _space(_lr(1e-5, 1e-1), *_BETAS, _EPS),
    "adamw": _space(_lr(1e-5, 1e-1), *_BETAS, _EPS, Param("weight_decay", 1e-6, 1e-1)),
    "nadam": _space(_lr(1e-5, 1e-1), *_BETAS, _EPS),
    "radam": _space(_lr(1e-5, 1e-1), *_BETAS, _EPS),
    "adamax": _space(_lr(1e-5, 1e-1), *_BETAS, _EPS),
    "adadelta": _space(_lr(1e-2, 10.0), Param("rho", 1e-2, 0.5, transform="one_minus"),
                       Param("eps", 1e-8, 1e-4)),
    "lion": _space(_lr(1e-5, 1e-2), *_BETAS),
    "rprop": _space(_lr(1e-4, 1e-1)),
    "asgd": _space(_lr(1e-4, 1.0)),
    "adafactor": _space(_lr(1e-4, 1.0)),
    "muon": _space(_lr(1e-4, 1e-1)),
    "sgdhd": _space(_lr(1e-4, 1.0), Param("hypergrad_lr", 1e-5, 1e-1)),
    "adamhd": _space(_lr(1e-5, 1e-1), Param("hypergrad_lr", 1e-7, 1e-2)),
    # Prodigy estimates the step: its lr is a multiplier near 1 (d_coef's role)
    "prodigy": _space(_lr(1e-1, 10.0)),
    "adamw-8bit": _space(_lr(1e-5, 1e-1), *_BETAS, _EPS, Param("weight_decay", 1e-6, 1e-1)),
    "schedule-free-adamw": _space(_lr(1e-4, 1e-1), *_BETAS, _EPS),
    "schedule-free-sgd": _space(_lr(1e-3, 10.0), _MOMENTUM),
    # The line-search methods' lr is the first trial step (1 is the Newton step); Newton's
    # damping is the Levenberg-Marquardt term added to the Hessian.
    "newton": _space(_lr(1e-2, 2.0), Param("damping", 1e-8, 1.0)),
    "newton-cg": _space(_lr(1e-2, 2.0)),
    "bfgs": _space(_lr(1e-2, 2.0)),
    "lbfgs": _space(_lr(1e-2, 2.0)),
    "sam": _space(_lr(1e-4, 1.0), _MOMENTUM, Param("rho", 1e-3, 0.5)),
    "asam": _space(_lr(1e-4, 1.0), _MOMENTUM, Param("rho", 1e-2, 5.0)),
}
assert set(SEARCH_SPACES) == set(LAB_OPTIMIZERS)


def _param(optimizer: str, name: str, value: Any) -> Param:
    where = f"space.{optimizer}.{name}"
    if isinstance(value, Param):
        p = value
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        p = Param(name, *value)
    elif isinstance(value, Mapping):
        unknown = sorted(set(value) - {"low", "high", "log", "transform"})
        if unknown or "low" not in value or "high" not in value:
            raise TuneError(f"{where}: a table with low, high and optionally log, transform; "
                            f"got {dict(value)!r}")
        p = Param(name, value["low"], value["high"], bool(value.get("log", True)),
                  str(value.get("transform", "identity")))
    else:
        raise TuneError(f"{where}: a range (low, high) or a Param, got {value!r}")
    if p.name != name:
        raise TuneError(f"{where}: the Param is named {p.name!r}")
    for bound in (p.low, p.high):
        if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not math.isfinite(
                bound):
            raise TuneError(f"{where}: bounds must be finite numbers, got {bound!r}")
    if not p.low < p.high:
        raise TuneError(f"{where}: low must be < high, got {p.low!r} .. {p.high!r}")
    if p.log and p.low <= 0:
        raise TuneError(f"{where}: a log-uniform range needs low > 0, got {p.low!r}")
    if p.transform not in ("identity", "one_minus"):
        raise TuneError(f"{where}: transform is 'identity' or 'one_minus', got {p.transform!r}")
    if p.transform == "one_minus" and not (p.low >= 0 and p.high <= 1):
        raise TuneError(f"{where}: a one_minus range lies in [0, 1], got {p.low!r} .. "
                        f"{p.high!r}")
    return Param(name, float(p.low), float(p.high), p.log, p.transform)


def search_space(optimizer: str, space: str | Mapping[str, Any] = "lr") -> list[Param]:
    """The checked list of :class:`Param` that ``optimizer`` is tuned over.

    Args:
        optimizer: a lab optimizer name or ``"module:Class"``.
        space: ``"lr"``, ``"full"`` or ``{optimizer: {hyperparameter: Param | (low, high)}}``.

    Raises:
        TuneError: unknown optimizer, empty space, a hyperparameter the optimizer does not
            have, a bad range, or a value the optimizer rejects.
    """
    try:
        lookup(optimizer)
    except ValueError as e:
        raise TuneError(str(e)) from None
    if isinstance(space, str):
        if space not in ("lr", "full"):
            raise TuneError(f"space: 'lr', 'full' or a table per optimizer, got {space!r}")
        if optimizer not in SEARCH_SPACES:
            raise TuneError(f"no search space for optimizer {optimizer!r}; give one in space, "
                            "e.g. {'lr': (1e-5, 0.1)}")
        preset = SEARCH_SPACES[optimizer]
        table: Mapping[str, Any] = preset if space == "full" else {"lr": preset["lr"]}
    elif isinstance(space, Mapping):
        if optimizer in space:
            table = space[optimizer]
            if not isinstance(table, Mapping):
                raise TuneError(f"space.{optimizer}: a table of hyperparameter ranges, got "
                                f"{table!r}")
        else:
            return search_space(optimizer, "lr")
    else:
        raise TuneError(f"space: 'lr', 'full' or a table per optimizer, got {space!r}")
    if not table:
        raise TuneError(f"search space for {optimizer!r} is empty")
    params = [_param(optimizer, str(k), v) for k, v in table.items()]
    try:
        defaults = resolve_hyperparams(optimizer)
        resolve_hyperparams(optimizer, {p.name.split(".")[0]: defaults.get(p.name.split(".")[0])
                                        for p in params})
    except ValueError as e:
        raise TuneError(f"space.{optimizer}: {e}") from None
    for p in params:
        base, _, index = p.name.partition(".")
        if index and not (index in ("0", "1") and isinstance(defaults.get(base), list)):
            raise TuneError(f"space.{optimizer}.{p.name}: {base!r} has no component {index!r}")
        if not index and isinstance(defaults.get(base), list):
            raise TuneError(f"space.{optimizer}.{p.name}: tune the components "
                            f"{base}.0 and {base}.1")
    dummy = torch.zeros(1, requires_grad=True)
    for bound in ("low", "high"):
        hyper = hyperparams_for(optimizer, params, {p.key: getattr(p, bound) for p in params})
        try:
            build_optimizer(optimizer, [dummy], hyper)
        except ValueError as e:
            raise TuneError(f"space.{optimizer}: the range's {bound} end is rejected: {e}"
                            ) from None
    return params


def hyperparams_for(optimizer: str, params: Sequence[Param], drawn: Mapping[str, float]
                    ) -> dict[str, Any]:
    """Optimizer hyperparameters for drawn values (the others at the lab's defaults)."""
    hyper: dict[str, Any] = {}
    defaults = resolve_hyperparams(optimizer)
    for p in params:
        base, _, index = p.name.partition(".")
        value = p.value(float(drawn[p.key]))
        if index:
            current = list(hyper.get(base, defaults[base]))
            current[int(index)] = value
            hyper[base] = current
        else:
            hyper[base] = value
    return hyper
