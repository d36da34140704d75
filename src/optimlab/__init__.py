"""optimlab: drop-in torch.optim optimizers built from composable update rules, and a lab.

Quick start::

    import optimlab as ol
    opt = ol.AdamW(model.parameters(), lr=1e-3)            # same arguments as torch.optim.AdamW
    opt = ol.chain(model.parameters(),                       # or compose your own
                   ol.transforms.clip_by_global_norm(1.0),
                   ol.transforms.scale_by_adam(b1=0.9, b2=0.999),
                   ol.transforms.add_decayed_weights(0.01),
                   lr=1e-3)
"""

# ruff: noqa: F405 (__all__ names what optimlab._api defines)

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names of __all__, for type checkers
    from ._api import *  # noqa: F403

__version__ = "0.1.0"

__all__ = [
    "ASGD",
    "BFGS",
    "EMA",
    "LBFGS",
    "NONFINITE_POLICIES",
    "OPTIMIZERS",
    "SAM",
    "SGD",
    "SGDHD",
    "SWA",
    "SWALR",
    "Adadelta",
    "Adafactor",
    "Adagrad",
    "Adam",
    "AdamHD",
    "AdamW",
    "Adamax",
    "ChainOptimizer",
    "Evaluations",
    "GradientAccumulator",
    "LRFinderResult",
    "Lion",
    "Lookahead",
    "Muon",
    "NAdam",
    "NamedOptimizer",
    "Newton",
    "NewtonCG",
    "NonFiniteGradientError",
    "NonFiniteLossError",
    "Prodigy",
    "RAdam",
    "RMSprop",
    "ReduceOnPlateau",
    "Rprop",
    "ScheduleFreeAdamW",
    "ScheduleFreeSGD",
    "ScheduledHyperparameter",
    "ScheduledLR",
    "Telemetry",
    "WeightAverage",
    "averaging",
    "chain",
    "frozen_running_stats",
    "krylov",
    "landscape",
    "linesearch",
    "lookahead",
    "lr_finder",
    "lr_range_test",
    "muon_param_groups",
    "ops",
    "precision",
    "sam",
    "schedules",
    "sharpness",
    "stochastic_round",
    "stochastic_round_",
    "telemetry",
    "transforms",
    "update_bn",
    "vanishing_exploding",
]

# The names of __all__ are defined in optimlab._api and imported on first use (PEP 562):
# ``import optimlab`` alone does not import torch, so the ``optimlab`` command answers --help
# and --version at once. The first use of any of them imports them all, as an eager
# ``__init__`` would.

#: The names of __all__ that are submodules (the others are defined in submodules).
_SUBMODULES = ("averaging", "krylov", "landscape", "linesearch", "lookahead", "lr_finder",
               "ops", "precision", "sam", "schedules", "sharpness", "telemetry", "transforms")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:  # ``from . import schedules`` in optimlab._api, for one
        return importlib.import_module(f"{__name__}.{name}")
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    api = importlib.import_module(f"{__name__}._api")
    globals().update({n: getattr(api, n) for n in __all__})
    return globals()[name]


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    """The package: importing a submodule never hides the public name it shares.

    Python binds a submodule on its package when it is first imported; ``import
    optimlab.chain`` before the first use of a public name would make ``optimlab.chain`` the
    module instead of the function :func:`optimlab.chain`.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and name in __all__ and name not in _SUBMODULES:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
