"""The advisor's no-compute mode: rules distilled from recorded results, with evidence."""

from __future__ import annotations

import json
from pathlib import Path

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
