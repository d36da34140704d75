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

from . import averaging, lookahead, lr_finder, precision, schedules, telemetry, transforms
from .accumulation import GradientAccumulator
from .averaging import EMA, SWA, SWALR, WeightAverage, update_bn
from .chain import NONFINITE_POLICIES, ChainOptimizer, NonFiniteGradientError, chain
from .lookahead import Lookahead
from .lr_finder import LRFinderResult, lr_range_test
from .optimizers import SGD, Adadelta, Adagrad, Adam, Adamax, AdamW, NAdam, RAdam, RMSprop
from .precision import stochastic_round, stochastic_round_
from .schedules import ReduceOnPlateau, ScheduledHyperparameter, ScheduledLR
from .telemetry import Telemetry, vanishing_exploding

__version__ = "0.1.0"

#: Named optimizers, by the lowercase names the lab and the CLI use.
OPTIMIZERS = {
    "sgd": SGD,
    "adagrad": Adagrad,
    "rmsprop": RMSprop,
    "adam": Adam,
    "adamw": AdamW,
    "nadam": NAdam,
    "radam": RAdam,
    "adadelta": Adadelta,
    "adamax": Adamax,
}

__all__ = [
    "EMA",
    "NONFINITE_POLICIES",
    "OPTIMIZERS",
    "SGD",
    "SWA",
    "SWALR",
    "Adadelta",
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "ChainOptimizer",
    "GradientAccumulator",
    "LRFinderResult",
    "Lookahead",
    "NAdam",
    "NonFiniteGradientError",
    "RAdam",
    "RMSprop",
    "ReduceOnPlateau",
    "ScheduledHyperparameter",
    "ScheduledLR",
    "Telemetry",
    "WeightAverage",
    "averaging",
    "chain",
    "lookahead",
    "lr_finder",
    "lr_range_test",
    "precision",
    "schedules",
    "stochastic_round",
    "stochastic_round_",
    "telemetry",
    "transforms",
    "update_bn",
    "vanishing_exploding",
]
