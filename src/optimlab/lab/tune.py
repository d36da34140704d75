"""Tuning (``optimlab tune``): the public import path of :mod:`optimlab.lab.tuning`.

Every optimizer's hyperparameters are searched with Optuna on an equal budget (the same number
of trials, at least :data:`MIN_TRIALS`, of the same length), by default for the ranking
objective (work to target), then the best configuration of each is re-run on held-out seeds.
See :mod:`optimlab.lab.tuning.run` for the details.
"""

from .tuning import (
    FINISHED,
    MAX_REPORTS,
    MIN_TRIALS,
    N_STARTUP_TRIALS,
    RANKING_OBJECTIVE,
    SEARCH_SPACES,
    Param,
    StudyResult,
    TuneError,
    TuneOutcome,
    TuneSpec,
    derive_seed,
    hyperparams_for,
    rerun_best,
    search_space,
    storage_url,
    tune,
    tuning_for_study,
    tuning_history,
)

__all__ = ["FINISHED", "MAX_REPORTS", "MIN_TRIALS", "N_STARTUP_TRIALS", "RANKING_OBJECTIVE",
           "SEARCH_SPACES", "Param", "StudyResult", "TuneError", "TuneOutcome", "TuneSpec",
           "derive_seed", "hyperparams_for", "rerun_best", "search_space", "storage_url",
           "tune", "tuning_for_study", "tuning_history"]
