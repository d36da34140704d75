"""Named optimizers: drop-in replacements for torch.optim classes of the same name, and the
closure-driven second-order and quasi-Newton methods (Newton, NewtonCG, BFGS, LBFGS)."""

from ._closure import Evaluations, NonFiniteLossError
from .adafactor import Adafactor
from .base import NamedOptimizer
from .classic import SGD, Adadelta, Adagrad, Adam, Adamax, AdamW, NAdam, RAdam, RMSprop
from .hypergradient import SGDHD, AdamHD
from .lion import Lion
from .muon import Muon, muon_param_groups
from .prodigy import Prodigy
from .quasi_newton import BFGS, LBFGS
from .rprop_asgd import ASGD, Rprop
from .schedule_free import ScheduleFreeAdamW, ScheduleFreeSGD
from .second_order import Newton, NewtonCG

__all__ = [
    "ASGD",
    "BFGS",
    "LBFGS",
    "SGD",
    "SGDHD",
    "Adadelta",
    "Adafactor",
    "Adagrad",
    "Adam",
    "AdamHD",
    "AdamW",
    "Adamax",
    "Evaluations",
    "Lion",
    "Muon",
    "NAdam",
    "NamedOptimizer",
    "Newton",
    "NewtonCG",
    "NonFiniteLossError",
    "Prodigy",
    "RAdam",
    "RMSprop",
    "Rprop",
    "ScheduleFreeAdamW",
    "ScheduleFreeSGD",
    "muon_param_groups",
]
