"""Tuning: the hyperparameters of each optimizer searched with Optuna, on an equal budget.

* :mod:`~optimlab.lab.tuning.space`: what is searched (:class:`Param`, :data:`SEARCH_SPACES`,
  :func:`search_space`);
* :mod:`~optimlab.lab.tuning.spec`: what to tune (:class:`TuneSpec`) and the minimum budget
  (:data:`MIN_TRIALS`);
* :mod:`~optimlab.lab.tuning.run`: the trials (:func:`tune`), their objective (the ranking
  objective unless told otherwise), reproducibility and resumption;
* :mod:`~optimlab.lab.tuning.shared`: the trials shared by processes tuning together (each
  trial index claimed, so it runs once);
* :mod:`~optimlab.lab.tuning.rerun`: the best configurations re-run on held-out seeds;
* :mod:`~optimlab.lab.tuning.history`: every trial, for the report.
"""

from .history import tuning_for_study, tuning_history
from .rerun import rerun_best
from .run import (
    FINISHED,
    MAX_REPORTS,
    N_STARTUP_TRIALS,
    StudyResult,
    TuneOutcome,
    storage_url,
    tune,
)
from .space import SEARCH_SPACES, Param, TuneError, hyperparams_for, search_space
from .spec import MIN_TRIALS, RANKING_OBJECTIVE, TuneSpec, derive_seed

__all__ = ["FINISHED", "MAX_REPORTS", "MIN_TRIALS", "N_STARTUP_TRIALS", "RANKING_OBJECTIVE",
           "SEARCH_SPACES", "Param", "StudyResult", "TuneError", "TuneOutcome", "TuneSpec",
           "derive_seed", "hyperparams_for", "rerun_best", "search_space", "storage_url",
           "tune", "tuning_for_study", "tuning_history"]
