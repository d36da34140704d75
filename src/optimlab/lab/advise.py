"""The optimizer advisor (``optimlab advise``): the public import path of
:mod:`optimlab.lab.advice` (measured advice, no-compute rules with evidence, their text).
"""

from .advice.evidence import (
    EVIDENCE_FORMAT,
    PACKAGED_EVIDENCE,
    distill,
    load_evidence,
    write_evidence,
)
from .advice.measured import (
    CALIBRATION_RUNS,
    MAX_TRIALS,
    MIN_TRIALS,
    TRIAL_LADDER,
    Advice,
    AdviceRow,
    Calibration,
    TrialPlan,
    advise,
    calibrate,
    lr_robustness,
    plan_trials,
)
from .advice.rules import ADAPTIVE, SGD_FAMILY, Rule, rules
from .advice.text import advice_for_report, advice_table, advice_text, snippet, write_advice_report

__all__ = ["ADAPTIVE", "CALIBRATION_RUNS", "EVIDENCE_FORMAT", "MAX_TRIALS", "MIN_TRIALS",
           "PACKAGED_EVIDENCE", "SGD_FAMILY", "TRIAL_LADDER", "Advice", "AdviceRow",
           "Calibration", "Rule", "TrialPlan", "advice_for_report", "advice_table",
           "advice_text", "advise", "calibrate", "distill", "load_evidence", "lr_robustness",
           "plan_trials", "rules", "snippet", "write_advice_report", "write_evidence"]
