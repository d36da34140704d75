"""The public names of ``optimlab`` (its ``__all__``), imported together on first use.

``optimlab/__init__.py`` re-exports them from here lazily, so that ``import optimlab`` alone (and
with it the ``optimlab`` command's --help and --version) does not import torch.
"""

# ruff: noqa: F401 (every import is re-exported by optimlab/__init__.py)

from . import (
    averaging,
    krylov,
    landscape,
    linesearch,
    lookahead,
    lr_finder,
    ops,
    precision,
    sam,
    schedules,
    sharpness,
    telemetry,
    transforms,
)
from .accumulation import GradientAccumulator
from .averaging import EMA, SWA, SWALR, WeightAverage, update_bn
from .chain import NONFINITE_POLICIES, ChainOptimizer, NonFiniteGradientError, chain
from .lookahead import Lookahead
from .lr_finder import LRFinderResult, lr_range_test
from .optimizers import (
    ASGD,
    BFGS,
    LBFGS,
    SGD,
    SGDHD,
    Adadelta,
    Adafactor,
    Adagrad,
    Adam,
    Adamax,
    AdamHD,
    AdamW,
    Evaluations,
    Lion,
    Muon,
    NAdam,
    NamedOptimizer,
    Newton,
    NewtonCG,
    NonFiniteLossError,
    Prodigy,
    RAdam,
    RMSprop,
    Rprop,
    ScheduleFreeAdamW,
    ScheduleFreeSGD,
    muon_param_groups,
)
from .precision import stochastic_round, stochastic_round_
from .sam import SAM, frozen_running_stats
from .schedules import ReduceOnPlateau, ScheduledHyperparameter, ScheduledLR
from .telemetry import Telemetry, vanishing_exploding

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
    "adafactor": Adafactor,
    "muon": Muon,
    "lion": Lion,
    "rprop": Rprop,
    "asgd": ASGD,
    "sgdhd": SGDHD,
    "adamhd": AdamHD,
    "prodigy": Prodigy,
    "schedulefreeadamw": ScheduleFreeAdamW,
    "schedulefreesgd": ScheduleFreeSGD,
}
