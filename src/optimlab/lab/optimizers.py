"""The optimizers the lab knows by name, with their documented default hyperparameters.

A lab optimizer is a named configuration of an optimlab optimizer class: ``"momentum"`` is
:class:`optimlab.SGD` with ``momentum=0.9``, ``"nesterov"`` adds ``nesterov=True``. Its
``defaults`` are the hyperparameters a study uses unless it sets others; they are the values
practitioners start from (torch.optim's defaults where those are sensible starting points, a
larger learning rate for plain SGD, whose torch default is none at all).

Any other ``torch.optim.Optimizer`` subclass can be used by import path,
``"package.module:ClassName"``, with its own constructor defaults. :func:`lookup` and
:func:`build_optimizer` import such a path as given (the Python API: the caller is the trust
boundary); names read from files or the command line pass
:func:`optimlab.lab.imports.check_import` first.

Optimizers know nothing of the lab; this table is the lab's view of them.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.optim import Optimizer

from .. import OPTIMIZERS
from ..optimizers import BFGS, LBFGS, SGD, Newton, NewtonCG
from ..sam import SAM
from .imports import load_attr
from .validate import ValidationError

__all__ = [
    "LAB_OPTIMIZERS",
    "SAMSGD",
    "SECOND_ORDER",
    "LabOptimizer",
    "MuonAdamW",
    "UnknownOptimizerError",
    "build_optimizer",
    "resolve_hyperparams",
]


class UnknownOptimizerError(ValueError):
    """An optimizer name that is neither in :data:`LAB_OPTIMIZERS` nor an importable class."""


@dataclass(frozen=True)
class LabOptimizer:
    """A named optimizer configuration.

    Attributes:
        name: the name studies and the CLI use.
        cls: the optimizer class.
        fixed: constructor arguments that define this configuration (``momentum=0.9`` for
            ``"momentum"``); a study may still override them.
        defaults: default hyperparameters (a study's values replace them).
        description: one line for ``optimlab list``.
    """

    name: str
    cls: type[Optimizer]
    description: str
    fixed: Mapping[str, Any] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)


class SAMSGD(SAM):
    """SAM (or ASAM with ``adaptive=True``) around :class:`optimlab.SGD`, with SGD's arguments
    and SAM's as constructor arguments (the lab builds optimizers from keyword arguments);
    Foret et al. (2020) used SAM with SGD and momentum."""

    def __init__(self, params: Iterable[Any], lr: float = 0.01, momentum: float = 0.9,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False,
                 rho: float = 0.05, adaptive: bool = False, eta: float = 0.01,
                 nonfinite: str = "raise") -> None:
        super().__init__(params, SGD, rho=rho, adaptive=adaptive, eta=eta, lr=lr,
                         momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                         nesterov=nesterov, nonfinite=nonfinite)


class MuonAdamW(Optimizer):
    """Muon for the hidden weight matrices and AdamW for the rest, as one optimizer over a
    parameter list (the lab builds optimizers from ``model.parameters()``, Jordan et al.'s
    recipe): the 2-D parameters except the last one (the output head, last in registration
    order) go to :class:`optimlab.Muon` with ``adjust_lr_fn="match_rms_adamw"`` (Liu et al.
    2025: the update's RMS matched to AdamW's, so one learning rate and one weight decay serve
    both), the others (biases, norms, the head, embeddings' vectors) to :class:`optimlab.AdamW`.
    For a model at hand, :func:`optimlab.muon_param_groups` splits by module type instead.

    Param groups are this optimizer's own (schedulers drive them); each step copies ``lr`` to
    the two inner optimizers. A step refused by one inner optimizer (``nonfinite="raise"``)
    leaves it unchanged, but the other may have stepped: the lab records such a run as
    diverged and stops it.
    """

    def __init__(self, params: Iterable[Any], lr: float = 3e-3, weight_decay: float = 0.01,
                 momentum: float = 0.95, betas: tuple[float, float] = (0.9, 0.999),
                 nonfinite: str = "ignore") -> None:
        from ..optimizers import AdamW, Muon

        params = [p for p in params if p.requires_grad]
        matrices = [p for p in params if p.dim() == 2]
        hidden = matrices[:-1]
        rest = [p for p in params if p.dim() != 2] + matrices[-1:]
        # (no hidden matrix, as in a linear model: all of it is AdamW's)
        self.muon = Muon(hidden, lr=lr, weight_decay=weight_decay, momentum=momentum,
                         adjust_lr_fn="match_rms_adamw", nonfinite=nonfinite) if hidden else None
        self.adamw = AdamW(rest, lr=lr, betas=betas, weight_decay=weight_decay,
                           nonfinite=nonfinite)
        self._inner = [*(self.muon.param_groups if self.muon else []),
                       *self.adamw.param_groups]
        super().__init__([{"params": g["params"]} for g in self._inner],
                         dict(lr=lr, weight_decay=weight_decay))
        self.state = {}  # type: ignore[assignment]

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        """One step of both inner optimizers, at this optimizer's groups' ``lr``."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for mine, inner in zip(self.param_groups, self._inner, strict=True):
            inner["lr"] = mine["lr"]
        if self.muon is not None:
            self.muon.step()
        self.adamw.step()
        self.state = {**(self.muon.state if self.muon else {}),  # type: ignore[assignment]
                      **self.adamw.state}
        return loss


def _lab(name: str, cls_name: str, description: str, **defaults: Any) -> LabOptimizer:
    return LabOptimizer(name=name, cls=OPTIMIZERS[cls_name], description=description,
                        defaults=defaults)


#: name -> configuration. The seven classics first (the default comparison), then the rest.
LAB_OPTIMIZERS: dict[str, LabOptimizer] = {
    "sgd": _lab("sgd", "sgd", "plain (mini-batch) gradient descent, lr=0.05", lr=0.05),
    "momentum": LabOptimizer("momentum", OPTIMIZERS["sgd"],
                             "SGD with heavy-ball momentum 0.9, lr=0.01",
                             fixed={"momentum": 0.9}, defaults={"lr": 0.01}),
    "nesterov": LabOptimizer("nesterov", OPTIMIZERS["sgd"],
                             "SGD with Nesterov momentum 0.9, lr=0.01",
                             fixed={"momentum": 0.9, "nesterov": True}, defaults={"lr": 0.01}),
    "adagrad": _lab("adagrad", "adagrad", "AdaGrad, lr=0.05", lr=0.05),
    "rmsprop": _lab("rmsprop", "rmsprop", "RMSprop, alpha=0.99, lr=1e-3", lr=1e-3),
    "adam": _lab("adam", "adam", "Adam, betas=(0.9, 0.999), lr=1e-3", lr=1e-3),
    "adamw": _lab("adamw", "adamw", "AdamW, decoupled weight decay 0.01, lr=1e-3",
                  lr=1e-3, weight_decay=0.01),
    "nadam": _lab("nadam", "nadam", "NAdam (Adam with Nesterov momentum), lr=2e-3", lr=2e-3),
    "radam": _lab("radam", "radam", "RAdam (rectified Adam), lr=1e-3", lr=1e-3),
    "adamax": _lab("adamax", "adamax", "Adamax (infinity-norm Adam), lr=2e-3", lr=2e-3),
    "adadelta": _lab("adadelta", "adadelta", "Adadelta, rho=0.9, lr=1.0", lr=1.0),
    # Modern optimizers (issue 17): schedule-free, sign-based, factored, orthogonalized,
    # hypergradient and learning-rate-free methods.
    "lion": _lab("lion", "lion", "Lion (sign of interpolated momentum, one state), "
                 "decoupled weight decay 0.1, lr=1e-3", lr=1e-3, weight_decay=0.1),
    "rprop": _lab("rprop", "rprop", "Rprop (sign-based step sizes; meant for full batches), "
                  "lr=1e-2", lr=1e-2),
    "asgd": _lab("asgd", "asgd", "averaged SGD (Polyak-Ruppert), lr=0.05", lr=0.05),
    "adafactor": _lab("adafactor", "adafactor", "Adafactor (factored second moments), lr=1e-2",
                      lr=1e-2),
    "muon": LabOptimizer("muon", MuonAdamW, "Muon (orthogonalized momentum) on hidden "
                         "matrices, AdamW on the rest, lr=3e-3", defaults={"lr": 3e-3}),
    "sgdhd": _lab("sgdhd", "sgdhd", "SGD with hypergradient descent on its lr, lr=0.01",
                  lr=0.01, hypergrad_lr=1e-3),
    "adamhd": _lab("adamhd", "adamhd", "Adam with hypergradient descent on its lr, lr=1e-3",
                   lr=1e-3, hypergrad_lr=1e-4),
    "prodigy": _lab("prodigy", "prodigy", "Prodigy (learning-rate-free: estimates the "
                    "distance to the solution), lr=1.0", lr=1.0),
    "adamw-8bit": LabOptimizer("adamw-8bit", OPTIMIZERS["adamw"],
                               "AdamW with 8-bit block-wise states, decoupled weight decay "
                               "0.01, lr=1e-3", fixed={"state_dtype": "uint8"},
                               defaults={"lr": 1e-3, "weight_decay": 0.01}),
    "schedule-free-adamw": _lab("schedule-free-adamw", "schedulefreeadamw",
                                "Schedule-Free AdamW (evaluated at the averaged weights), "
                                "lr=1e-2", lr=1e-2),
    "schedule-free-sgd": _lab("schedule-free-sgd", "schedulefreesgd",
                              "Schedule-Free SGD, momentum 0.9 (evaluated at the averaged "
                              "weights), lr=0.5", lr=0.5),
    # Second-order and quasi-Newton methods: closure-driven, one iteration per lab step
    # (max_iter=1), so that "steps" are their iterations; the runner charges their true work
    # (optimlab.lab.work). Newton and BFGS hold n x n matrices and refuse large models.
    "newton": LabOptimizer("newton", Newton,
                           "Newton's method, exact Hessian, damped, Armijo line search "
                           "(<= 2048 parameters)", fixed={"max_iter": 1}, defaults={"lr": 1.0}),
    "newton-cg": LabOptimizer("newton-cg", NewtonCG,
                              "Newton-CG (Hessian-free: truncated CG on Hessian-vector "
                              "products), Armijo line search", fixed={"max_iter": 1},
                              defaults={"lr": 1.0}),
    "bfgs": LabOptimizer("bfgs", BFGS,
                         "BFGS (dense inverse Hessian), strong-Wolfe line search "
                         "(<= 4096 parameters)", fixed={"max_iter": 1},
                         defaults={"lr": 1.0, "line_search_fn": "strong_wolfe"}),
    "lbfgs": LabOptimizer("lbfgs", LBFGS,
                          "L-BFGS, history 10, strong-Wolfe line search",
                          fixed={"max_iter": 1},
                          defaults={"lr": 1.0, "history_size": 10,
                                    "line_search_fn": "strong_wolfe"}),
    # Sharpness-aware minimization: two gradient evaluations per step (the closure runs
    # twice), charged as such.
    "sam": LabOptimizer("sam", SAMSGD, "SAM around SGD with momentum 0.9, rho=0.05, lr=0.01",
                        defaults={"lr": 0.01, "momentum": 0.9, "rho": 0.05}),
    "asam": LabOptimizer("asam", SAMSGD,
                         "ASAM (adaptive SAM) around SGD with momentum 0.9, rho=0.5, lr=0.01",
                         fixed={"adaptive": True},
                         defaults={"lr": 0.01, "momentum": 0.9, "rho": 0.5}),
}

#: ``state_dtype`` values by the names run configs store: bfloat16 states, or 8-bit
#: block-wise ones (``torch.uint8``, see :mod:`optimlab.quantization`).
STATE_DTYPE_NAMES = {"bfloat16": torch.bfloat16, "uint8": torch.uint8, "8bit": torch.uint8}

#: The lab optimizers that take a closure and evaluate it several times per step.
SECOND_ORDER = ("newton", "newton-cg", "bfgs", "lbfgs")

#: The classic seven that ``optimlab compare`` compares by default.
CLASSIC = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw")


def lookup(name: str) -> LabOptimizer:
    """The :class:`LabOptimizer` for ``name`` (a lab name or ``"module:Class"``, imported as
    given: check names from files first, see :mod:`optimlab.lab.imports`)."""
    if not isinstance(name, str) or not name:
        raise UnknownOptimizerError(f"optimizer name must be a non-empty string, got {name!r}")
    if name in LAB_OPTIMIZERS:
        return LAB_OPTIMIZERS[name]
    if ":" in name:
        try:
            cls = load_attr(name, None, field="", what="optimizer")
        except ValidationError as e:
            raise UnknownOptimizerError(str(e)) from None
        if not (isinstance(cls, type) and issubclass(cls, Optimizer)):
            raise UnknownOptimizerError(f"{name!r} is not a torch.optim.Optimizer subclass")
        return LabOptimizer(name=name, cls=cls, description=f"{cls.__module__}.{cls.__name__}")
    raise UnknownOptimizerError(
        f"unknown optimizer {name!r}; known optimizers: {', '.join(LAB_OPTIMIZERS)} "
        "(or a torch.optim.Optimizer class as 'package.module:Class')")


def _allowed(cls: type[Optimizer]) -> dict[str, Any]:
    """Constructor keyword arguments of ``cls`` (except ``params``) and their defaults."""
    sig = inspect.signature(cls.__init__)
    out = {}
    for p in list(sig.parameters.values())[1:]:
        if p.name == "params" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        out[p.name] = None if p.default is inspect.Parameter.empty else p.default
    return out


def plain(obj: Any) -> Any:
    """``obj`` as JSON-able values: mappings with string keys, lists for tuples, numbers for
    one-element tensors and numpy scalars (hyperparameters, task options, telemetry)."""
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return [plain(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.item() if obj.numel() == 1 else obj.tolist()
    if hasattr(obj, "item") and callable(obj.item):
        return obj.item()
    return obj


def resolve_hyperparams(name: str, hyperparams: Mapping[str, Any] | None = None
                        ) -> dict[str, Any]:
    """The full hyperparameters a run of ``name`` uses: constructor defaults, then the lab's
    configuration and defaults, then ``hyperparams``. Unknown keys raise ``ValueError`` naming
    the key and the allowed ones. Values are not range-checked here: the constructor does that.
    """
    opt = lookup(name)
    allowed = _allowed(opt.cls)
    given = dict(hyperparams or {})
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ValueError(f"optimizer {name!r} has no hyperparameter {unknown[0]!r}; "
                         f"allowed: {', '.join(sorted(allowed))}")
    values = {k: v for k, v in allowed.items() if v is not None and not callable(v)}
    if "nonfinite" in allowed:
        # A lab run refuses inf/NaN gradients (recorded as diverged), whatever the class's
        # default (torch.optim's: "ignore", nothing checked).
        values["nonfinite"] = "raise"
    values.update(opt.fixed)
    values.update(opt.defaults)
    values.update(given)
    # Implementation switches are not hyperparameters: leave them at the class defaults.
    for switch in ("foreach", "fused", "capturable", "differentiable", "maximize"):
        if switch not in given:
            values.pop(switch, None)
    return {k: plain(v) for k, v in sorted(values.items())}


def build_optimizer(name: str, params: Iterable[torch.Tensor],
                    hyperparams: Mapping[str, Any] | None = None) -> Optimizer:
    """Construct optimizer ``name`` over ``params`` with :func:`resolve_hyperparams`'s values.

    Invalid values raise ``ValueError`` naming the hyperparameter (the constructor's check).
    """
    opt = lookup(name)
    values = resolve_hyperparams(name, hyperparams)
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    if isinstance(kwargs.get("state_dtype"), str):  # stored by name in run configs (JSON)
        kwargs["state_dtype"] = STATE_DTYPE_NAMES.get(kwargs["state_dtype"],
                                                      kwargs["state_dtype"])
    try:
        return opt.cls(params, **kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"optimizer {name!r}: {e}") from None
