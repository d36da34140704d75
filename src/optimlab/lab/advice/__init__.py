"""The optimizer advisor: "which optimizer for this project?", answered with evidence.

* :mod:`~optimlab.lab.advice.measured`: an equal-budget tuning study of candidate optimizers
  on the user's task, ranked by work to target with intervals and ties (:func:`advise`);
* :mod:`~optimlab.lab.advice.evidence` and :mod:`~optimlab.lab.advice.rules`: no compute,
  rules distilled from recorded results (the user's store, or the evidence shipped with
  optimlab), each with its effect, its uncertainty and the evidence behind it;
* :mod:`~optimlab.lab.advice.text`: the advice as a table, text, report section, snippet.
"""

from .evidence import EVIDENCE_FORMAT, PACKAGED_EVIDENCE, distill, load_evidence, write_evidence
from .measured import (
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
from .rules import ADAPTIVE, SGD_FAMILY, Rule, rules
from .text import advice_for_report, advice_table, advice_text, snippet, write_advice_report

__all__ = ["ADAPTIVE", "CALIBRATION_RUNS", "EVIDENCE_FORMAT", "MAX_TRIALS", "MIN_TRIALS",
           "PACKAGED_EVIDENCE", "SGD_FAMILY", "TRIAL_LADDER", "Advice", "AdviceRow",
           "Calibration", "Rule", "TrialPlan", "advice_for_report", "advice_table",
           "advice_text", "advise", "calibrate", "distill", "load_evidence", "lr_robustness",
           "plan_trials", "rules", "snippet", "write_advice_report", "write_evidence"]
