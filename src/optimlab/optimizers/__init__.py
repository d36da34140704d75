"""Named optimizers: drop-in replacements for torch.optim classes of the same name, and the
closure-driven second-order and quasi-Newton methods (Newton, NewtonCG, BFGS, LBFGS)."""

from ._closure import Evaluations, NonFiniteLossError
from .base import NamedOptimizer
from .classic import SGD, Adadelta, Adagrad, Adam, Adamax, AdamW, NAdam, RAdam, RMSprop
from .quasi_newton import BFGS, LBFGS
from .schedule_free import ScheduleFreeAdamW, ScheduleFreeSGD
from .second_order import Newton, NewtonCG

__all__ = ["BFGS", "LBFGS", "SGD", "Adadelta", "Adagrad", "Adam", "AdamW", "Adamax",
           "Evaluations", "NAdam", "NamedOptimizer", "Newton", "NewtonCG",
           "NonFiniteLossError", "RAdam", "RMSprop", "ScheduleFreeAdamW",
           "ScheduleFreeSGD"]
