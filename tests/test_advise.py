"""The advisor: no-compute rules with effects and ties, the evidence they read, the trial
budget and its minimum, calibration, and measured advice end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from optimlab.lab.advise import (
    EVIDENCE_FORMAT,
    MAX_TRIALS,
    MIN_TRIALS,
    PACKAGED_EVIDENCE,
    TRIAL_LADDER,
    calibrate,
    distill,
    load_evidence,
    plan_trials,
    rules,
    write_evidence,
)
from optimlab.lab.spec import StudySpec
from optimlab.lab.store import open_store
from optimlab.lab.study import InlineExecutor, run_study


def test_packaged_evidence_gives_labelled_rules() -> None:
    ev = json.loads(PACKAGED_EVIDENCE.read_text())
    assert ev.get("format") == EVIDENCE_FORMAT, "regenerate it: see optimlab.lab.advice.evidence"
    assert ev["study"] == "default" and ev["conditions"]
    assert set(ev["tasks"]) == {"rosenbrock", "quadratic", "logreg-breast-cancer",
                                "mlp-digits"}
    out = rules([ev])
    assert len(out) >= 5
    for rule in out:
        assert rule.text and "study 'default'" in rule.evidence and "runs" in rule.evidence
    assert any(r.text.startswith("Optimizer state per parameter") for r in out)
    assert any("adaptive" in r.text for r in out)


def _store_with_study(tmp_path: Path) -> Any:
    store = open_store(tmp_path / "r.db")
    spec = StudySpec.from_mapping({
        "name": "mine", "tasks": ["quadratic"], "optimizers": ["sgd", "momentum"],
        "seeds": 2, "steps": 300,
        "hyperparams": {"sgd": {"lr": 0.5}, "momentum": {"lr": 0.01}}})
    run_study(spec, store, executor=InlineExecutor())
    return store


def test_rules_from_a_users_store(tmp_path: Path) -> None:
    store = _store_with_study(tmp_path)
    evidence = load_evidence(store)
    assert [e["study"] for e in evidence] == ["mine"]
    ev = evidence[0]
    arms = ev["tasks"]["quadratic"]["arms"]
    assert arms["sgd"]["diverged"] == 2 and arms["momentum"]["reached"] == 2
    assert all(v is None for v in arms["sgd"]["work"].values())  # did not settle
    assert all(v is not None and v > 0 for v in arms["momentum"]["work"].values())
    texts = [r.text for r in rules(evidence)]
    assert any("sgd diverged on quadratic in 2 of 2 runs at lr=0.5" in t for t in texts)
    winner = next(t for t in texts if "needed the least work" in t)
    assert "momentum needed the least work to settle at the target on 1 of 1" in winner
    assert "gradient evaluations" in winner and "runner-up sgd" in winner
    assert all("study 'mine'" in r.evidence for r in rules(evidence))
    # the evidence file round-trips
    path = write_evidence(ev, tmp_path / "ev.json")
    assert json.loads(path.read_text()) == json.loads(json.dumps(ev))
    store.close()


def test_distill_is_json_and_tolerates_empty_studies() -> None:
    ev = distill([], study="empty")
    assert ev["tasks"] == {} and rules([ev]) == []
    json.dumps(ev)


def _arm(opt: str, work: list[float | None], rank: float, *, best: bool = False,
         tied: bool = False) -> dict[str, Any]:
    return {"optimizer": opt, "hyperparams": {"lr": 0.1}, "runs": len(work),
            "deterministic": False, "diverged": 0, "failed": 0,
            "reached": sum(w is not None for w in work), "rank": rank, "best": best,
            "tied_with_best": tied, "work": {str(i): w for i, w in enumerate(work)},
            "work_resolution": 1.0, "final": {str(i): 1e-3 for i in range(len(work))},
            "test_accuracy": None, "generalization_gap": None, "state_bytes_per_param": 4.0}


def _evidence(pairs: dict[str, tuple[list[float], list[float]]]) -> dict[str, Any]:
    tasks = {}
    for name, (adam, sgd) in pairs.items():
        adam_first = sum(adam) < sum(sgd)
        tasks[name] = {"kind": "convex", "target": 1e-3, "target_metric": "suboptimality",
                       "steps": 1000, "n_params": 10, "work_horizon": 1000,
                       "arms": {"adam": _arm("adam", adam, 1 if adam_first else 2,
                                             best=adam_first),
                                "sgd": _arm("sgd", sgd, 2 if adam_first else 1,
                                            best=not adam_first)}}
    return {"format": EVIDENCE_FORMAT, "study": "synthetic", "source": "", "runs": 24,
            "seeds": [0, 1, 2], "rank_by": "work", "tasks": tasks}


def test_a_record_of_wins_ties_and_losses_is_stated_as_such() -> None:
    ev = _evidence({
        "win1": ([100, 110, 105], [200, 210, 190]),
        "win2": ([50, 52, 51], [80, 85, 83]),
        # seed distributions that overlap: the paired differences are -60, +60, -40
        "tie": ([100, 200, 150], [160, 140, 190]),
        "loss": ([300, 310, 305], [100, 110, 120]),
    })
    (rule,) = [r for r in rules([ev]) if "adaptive" in r.text]
    assert "on 2 of 4 tasks" in rule.text and "4 of 4" not in rule.text
    assert "no clear winner on 1 (tie:" in rule.text
    assert "the SGD family did better on 1 (loss:" in rule.text
    assert "95% CI of the difference" in rule.text and "effect size" in rule.text
    assert "x the gradient evaluations" in rule.text


def test_a_tied_best_arm_is_no_clear_winner() -> None:
    ev = _evidence({"tie": ([100, 200, 150], [160, 140, 190])})
    ev["tasks"]["tie"]["arms"]["sgd"]["tied_with_best"] = True
    texts = [r.text for r in rules([ev])]
    assert any("no clear winner on 1 of 1: tie (adam, sgd within noise)" in t for t in texts)
    assert not any("needed the least work" in t for t in texts)


def test_plan_trials_never_goes_below_the_minimum() -> None:
    assert MIN_TRIALS == 8 and TRIAL_LADDER[0] == MIN_TRIALS and TRIAL_LADDER[-1] == MAX_TRIALS
    big = plan_trials(0.5, 7, 2, 3, 5.0)
    assert big.trials == MAX_TRIALS and big.fits
    mid = plan_trials(2.0, 7, 2, 3, 3.0)
    assert mid.fits and mid.trials in TRIAL_LADDER and MIN_TRIALS <= mid.trials < MAX_TRIALS
    assert mid.minutes <= 3.0  # the plan's own estimate stays inside the budget
    # a budget too small for the minimum is raised, never cut below it
    small = plan_trials(5.0, 7, 2, 3, 0.5)
    assert small.trials == MIN_TRIALS and not small.fits and small.minutes > 0.5
    # the ladder: timings a few percent apart give the same count
    assert plan_trials(1.0, 7, 2, 3, 5.0).trials == plan_trials(1.04, 7, 2, 3, 5.0).trials
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="budget must be a positive finite number"):
            plan_trials(1.0, 7, 2, 3, bad)


def test_calibration_is_a_median_of_several_timings() -> None:
    cal = calibrate("quadratic", "sgd", steps=200, batch_size="full")
    assert len(cal.timings) == 3 and cal.steps == 200 and cal.steps_timed == 50
    assert cal.seconds_per_run == sorted(cal.timings)[1] > 0
    assert math.isfinite(cal.spent) and cal.spent > 0


def test_advise_with_a_tiny_budget_raises_it_and_is_reproducible(tmp_path: Path) -> None:
    from optimlab.lab.advise import advise
    from optimlab.lab.tune import tuning_history

    said: list[str] = []
    kw = dict(optimizers=["sgd", "momentum"], budget_minutes=0.01, workers=1, seeds=2,
              steps=60, batch_size="full", message=said.append)
    a = advise("quadratic", store=str(tmp_path / "a.db"), **kw)
    assert a.trials == MIN_TRIALS and a.minutes_planned > 0.01
    assert any(n.startswith("BUDGET RAISED") for n in a.notes)
    assert any(s.startswith("WARNING: BUDGET RAISED") for s in said)
    history = tuning_history(a.tune_name, str(tmp_path / "a.db"))
    for opt in ("sgd", "momentum"):
        assert sum(h["optimizer"] == opt and h["index"] is not None
                   for h in history) >= MIN_TRIALS
    assert {r.optimizer for r in a.rows} == {"sgd", "momentum"}
    assert a.winners and (a.recommended is not None) == (len(a.winners) == 1)
    assert a.verdict.startswith("Recommended:" if a.clear else "No clear winner")
    json.dumps(a.to_dict())
    # the same advice from a fresh store on the same machine
    b = advise("quadratic", store=str(tmp_path / "b.db"), **kw)
    assert b.winners == a.winners and b.trials == a.trials


def test_snippet_is_valid_python_that_builds_the_optimizer() -> None:
    import torch

    from optimlab.lab.advise import snippet
    from optimlab.lab.optimizers import resolve_hyperparams
    hp = resolve_hyperparams("adamw", {"lr": 0.00316, "betas": [0.8, 0.99]})
    code = snippet("adamw", hp, schedule="cosine", steps=500, batch_size=32, task="t")
    assert "ol.AdamW(model.parameters(), " in code and "betas=(0.8, 0.99)" in code
    assert "weight_decay" not in code  # AdamW's default 0.01: only changes are spelled out
    model = torch.nn.Linear(3, 1)
    scope: dict = {"model": model}
    exec(code, scope)
    opt = scope["optimizer"]
    assert opt.param_groups[0]["betas"] == (0.8, 0.99)
    assert opt.param_groups[0]["weight_decay"] == 0.01
    assert scope["scheduler"].get_last_lr()[0] == 0.00316


@pytest.mark.slow
def test_advise_end_to_end_on_a_small_budget(tmp_path: Path) -> None:
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "optimlab.cli", "advise", "--task", "quadratic",
                        "--optimizers", "sgd,momentum,adam", "--budget", "0.6", "--steps",
                        "300", "--batch-size", "full", "--store",
                        f"sqlite:///{tmp_path / 'r.db'}", "--out", str(tmp_path / "adv")],
                       capture_output=True, text=True, check=False, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert ("Recommended:" in r.stdout or "No clear winner" in r.stdout)
    assert "optimizer = ol." in r.stdout
    html = (tmp_path / "adv" / "index.html").read_text()
    assert 'id="advice"' in html and 'data-plot="tune-history"' in html
    md = (tmp_path / "adv" / "advice.md").read_text()
    for opt in ("sgd", "momentum", "adam"):
        assert f"| {opt} |" in md
    assert "```python" in md
    assert json.loads((tmp_path / "adv" / "advice.json").read_text())["trials"] >= MIN_TRIALS
