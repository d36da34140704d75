"""Tuning (``optimlab tune``): the public import path of :mod:`optimlab.lab.tuning`.

Every optimizer's hyperparameters are searched with Optuna on an equal budget (the same number
of trials, at least :data:`MIN_TRIALS`, of the same length), by default for the ranking
objective (work to target), then the best configuration of each is re-run on held-out seeds.
See :mod:`optimlab.lab.tuning.run` for the details.
"""

from .tuning import *  # noqa: F403  (re-export: the names of optimlab.lab.tuning)
from .tuning import __all__  # noqa: F401
