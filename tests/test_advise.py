"""The advisor's no-compute mode: rules distilled from recorded results, with evidence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from optimlab.lab.advise import PACKAGED_EVIDENCE, distill, load_evidence, rules
from optimlab.lab.store import open_store
from optimlab.lab.study import InlineExecutor, normalize_spec, run_study


def test_packaged_evidence_gives_labelled_rules() -> None:
    ev = json.loads(PACKAGED_EVIDENCE.read_text())
    assert ev["study"] == "default" and ev["runs"] == 84
    assert set(ev["tasks"]) == {"rosenbrock", "quadratic", "logreg-breast-cancer",
                                "mlp-digits"}
    out = rules([ev])
    assert len(out) >= 5
    for rule in out:
        assert rule.text and "study 'default'" in rule.evidence and "runs" in rule.evidence
    assert any(r.text.startswith("Optimizer state per parameter") for r in out)
    assert any("adaptive" in r.text for r in out)


def test_rules_from_a_users_store(tmp_path: Path) -> None:
    store = open_store(tmp_path / "r.db")
    assert load_evidence(store)[0]["study"] == "default"  # empty store: packaged evidence
    spec = normalize_spec({"name": "mine", "tasks": ["quadratic"],
                           "optimizers": ["sgd", "momentum"], "seeds": 2, "steps": 300,
                           "batch_size": "full",
                           "hyperparams": {"sgd": {"lr": 0.5}, "momentum": {"lr": 0.01}}})
    run_study(spec, store, executor=InlineExecutor())
    evidence = load_evidence(store)
    assert [e["study"] for e in evidence] == ["mine"]
    ev = evidence[0]
    arms = ev["tasks"]["quadratic"]["arms"]
    assert arms["sgd"]["diverged"] == 2 and arms["momentum"]["reached"] == 2
    texts = [r.text for r in rules(evidence)]
    assert any("sgd diverged on quadratic in 2 of 2 runs at lr=0.5" in t for t in texts)
    assert any("momentum reached the target fastest on 1 of 1" in t for t in texts)
    assert all("study 'mine'" in r.evidence for r in rules(evidence))


def test_distill_is_json_and_tolerates_empty_studies() -> None:
    ev = distill([], study="empty")
    assert ev["tasks"] == {} and rules([ev]) == []
    json.dumps(ev)


def test_plan_trials_fits_the_budget_and_refuses_too_small_ones() -> None:
    import pytest

    from optimlab.lab.advise import MAX_TRIALS, MIN_TRIALS, plan_trials
    assert plan_trials(0.5, 7, 2, 3, 5.0) == MAX_TRIALS
    t = plan_trials(2.0, 7, 2, 3, 3.0)
    assert MIN_TRIALS <= t < MAX_TRIALS
    # the plan's own estimate stays inside the budget
    assert 1.15 * 2.0 * 4 * t + 11 * 2.0 + 14 <= 3.0 * 60
    with pytest.raises(ValueError, match="too small"):
        plan_trials(5.0, 7, 2, 3, 0.5)
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="budget must be a positive number"):
            plan_trials(1.0, 7, 2, 3, bad)


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
    assert "Recommended:" in r.stdout and "optimizer = ol." in r.stdout
    html = (tmp_path / "adv" / "index.html").read_text()
    assert 'id="advice"' in html and 'data-plot="tune-history"' in html
    md = (tmp_path / "adv" / "advice.md").read_text()
    for opt in ("sgd", "momentum", "adam"):
        assert f"| {opt} |" in md
    assert "```python" in md
