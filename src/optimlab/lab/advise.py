"""The optimizer advisor: "which optimizer for this project?", answered with evidence.

Two modes:

* **Measured** (:func:`advise`): an equal-budget tuning study of candidate optimizers on the
  user's task (:mod:`optimlab.lab.tune`), the best configuration of each re-run on several
  seeds, and a ranked table: time to target, final metric, generalization gap, optimizer
  memory per parameter, robustness across seeds and across learning rates (the width of the
  good learning-rate range), plus a recommended configuration with a code snippet.
* **No compute** (:func:`rules`): rules distilled from results the lab has recorded (the user's
  results store, or the evidence shipped with optimlab from its default study), each rule
  labelled with the evidence behind it: which study, tasks, runs and seeds.

:func:`distill` turns stored runs into the compact *evidence* the rules are read from; the
shipped ``studies/evidence.json`` is ``distill`` of the default study's runs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .report.stats import aggregate

__all__ = ["PACKAGED_EVIDENCE", "Rule", "distill", "load_evidence", "rules"]

#: Evidence distilled from the default study, shipped with optimlab.
PACKAGED_EVIDENCE = Path(__file__).parent / "studies" / "evidence.json"

ADAPTIVE = ("adagrad", "rmsprop", "adam", "adamw", "nadam", "radam", "adamax", "adadelta")
SGD_FAMILY = ("sgd", "momentum", "nesterov")


@dataclass(frozen=True)
class Rule:
    """A piece of advice and the evidence behind it."""

    text: str
    evidence: str


def _finite(x: Any) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def distill(records: Sequence[Mapping[str, Any]], *, study: str, source: str = ""
            ) -> dict[str, Any]:
    """Compact, JSON-able evidence from a study's runs: per task and arm, the statistics
    the rules need (rank, time and steps to target, seeds that reached it, final target
    metric, test accuracy, generalization gap, state bytes per parameter, divergences)."""
    stats = aggregate(records)
    tasks: dict[str, Any] = {}
    for (task, arm), s in stats.items():
        first = s.records[0]
        info = first.get("task_info", {})
        t = tasks.setdefault(task, {
            "kind": info.get("kind", "?"), "target": _finite(info.get("target")),
            "target_metric": info.get("target_metric", "train_loss"),
            "steps": first.get("config", {}).get("steps"),
            "n_params": _finite(s.n_params), "arms": {}})
        acc = s.final.get("test_accuracy")
        t["arms"][arm] = {
            "optimizer": s.optimizer,
            "hyperparams": first.get("config", {}).get("hyperparams", {}),
            "runs": len(s.records),
            "diverged": s.status_counts.get("diverged", 0),
            "failed": s.status_counts.get("failed", 0),
            "reached": s.n_reached,
            "rank": _finite(s.rank),
            "time_to_target": _finite(s.time_to_target),
            "steps_to_target": _finite(s.steps_to_target),
            "final_target_median": _finite(s.final_target_median),
            "test_accuracy": _finite(acc.mean) if acc else None,
            "generalization_gap": _finite(s.generalization_gap.mean),
            "state_bytes_per_param": _finite(s.state_bytes_per_param),
        }
    seeds = sorted({r.get("config", {}).get("seed") for r in records
                    if r.get("config", {}).get("seed") is not None})
    return {"study": study, "source": source, "runs": len(records), "seeds": seeds,
            "tasks": tasks}


def load_evidence(store: Any | None = None) -> list[dict[str, Any]]:
    """Evidence from every study in ``store`` that has finished runs; the packaged evidence
    when there is none (or no store)."""
    out: list[dict[str, Any]] = []
    if store is not None:
        for s in store.studies():
            if s["finished"]:
                out.append(distill(store.study_records(s["name"]), study=s["name"],
                                   source=store.url))
    if not out:
        out.append(json.loads(PACKAGED_EVIDENCE.read_text(encoding="utf-8")))
    return out


def _label(ev: Mapping[str, Any], tasks: Iterable[str]) -> str:
    tasks = list(tasks)
    seeds = ev.get("seeds", [])
    where = f"study {ev['study']!r}" + (f" ({ev['source']})" if ev.get("source") else "")
    return (f"{where}: {', '.join(tasks)}; {len(seeds)} seed{'s' * (len(seeds) != 1)} per "
            f"arm; {ev.get('runs', '?')} runs")


def _winner(arms: Mapping[str, Mapping[str, Any]]) -> str | None:
    ranked = [(a["rank"], name) for name, a in arms.items() if a.get("rank") is not None]
    return min(ranked)[1] if ranked else None


def rules(evidence: Sequence[Mapping[str, Any]]) -> list[Rule]:
    """Advice distilled from ``evidence`` (see :func:`distill`), each rule with its evidence."""
    out: list[Rule] = []
    for ev in evidence:
        tasks = ev["tasks"]
        if not tasks:
            continue
        # 1. fastest to target, per kind of task
        by_kind: dict[str, list[str]] = {}
        for name, t in tasks.items():
            by_kind.setdefault(t["kind"], []).append(name)
        for kind, names in by_kind.items():
            wins: dict[str, list[str]] = {}
            for name in names:
                w = _winner(tasks[name]["arms"])
                if w is not None and tasks[name]["arms"][w]["time_to_target"] is not None:
                    wins.setdefault(w, []).append(name)
            for arm, won in sorted(wins.items(), key=lambda kv: -len(kv[1])):
                out.append(Rule(
                    f"On {kind} tasks, {arm} reached the target fastest on {len(won)} of "
                    f"{len(names)} ({', '.join(won)}).", _label(ev, names)))
        # 2. adaptive vs the SGD family, task by task
        faster: list[str] = []
        slower: list[str] = []
        for name, t in tasks.items():
            def best(family: Sequence[str], t: Mapping[str, Any] = t) -> float:
                times = [a["time_to_target"] for a in t["arms"].values()
                         if a["optimizer"] in family and a["time_to_target"] is not None]
                return min(times) if times else math.inf
            a, s = best(ADAPTIVE), best(SGD_FAMILY)
            if math.isfinite(a) or math.isfinite(s):
                (faster if a < s else slower).append(name)
        if faster or slower:
            out.append(Rule(
                f"The best adaptive method (AdaGrad/RMSprop/Adam family) beat the best of SGD, "
                f"momentum and Nesterov to the target on {len(faster)} of "
                f"{len(faster) + len(slower)} tasks"
                + (f" ({', '.join(faster)})" if faster else "")
                + (f"; the SGD family won on {', '.join(slower)}." if slower else "."),
                _label(ev, faster + slower)))
        # 3. divergence
        for name, t in tasks.items():
            for arm, a in t["arms"].items():
                if a["diverged"]:
                    lr = a["hyperparams"].get("lr")
                    out.append(Rule(
                        f"{arm} diverged on {name} in {a['diverged']} of {a['runs']} runs"
                        + (f" at lr={lr:g}" if isinstance(lr, (int, float)) else "")
                        + ": lower the learning rate, or add warm-up or gradient clipping.",
                        _label(ev, [name])))
        # 4. never reached the target
        for name, t in tasks.items():
            missed = [arm for arm, a in t["arms"].items()
                      if a["reached"] == 0 and a["diverged"] < a["runs"]]
            if missed:
                out.append(Rule(
                    f"On {name}, {', '.join(missed)} did not reach {t['target_metric']} <= "
                    f"{t['target']:g} within {t['steps']} steps: budget more steps or tune "
                    "their learning rates.", _label(ev, [name])))
        # 5. generalization on tasks with a test set
        for name, t in tasks.items():
            accs = {arm: a["test_accuracy"] for arm, a in t["arms"].items()
                    if a["test_accuracy"] is not None}
            gaps = {arm: a["generalization_gap"] for arm, a in t["arms"].items()
                    if a["generalization_gap"] is not None}
            if len(accs) >= 2:
                best_acc = max(accs, key=lambda k: accs[k])
                worst = min(accs, key=lambda k: accs[k])
                if accs[best_acc] - accs[worst] < 1e-9:
                    text = (f"On {name}, every optimizer ended at the same test accuracy "
                            f"({accs[best_acc]:.4f}): they found the same solution")
                else:
                    text = (f"On {name}, the best test accuracy was {best_acc}'s "
                            f"({accs[best_acc]:.4f}; lowest: {worst}, {accs[worst]:.4f})")
                if len(gaps) >= 2 and accs[best_acc] - accs[worst] >= 1e-9:
                    small = min(gaps, key=lambda k: gaps[k])
                    text += f"; the smallest generalization gap was {small}'s ({gaps[small]:.3g})"
                out.append(Rule(text + ".", _label(ev, [name])))
        # 6. memory
        # on the task with the most parameters, where fixed-size state (step counters)
        # no longer counts
        sized = [(t.get("n_params") or 0, n) for n, t in tasks.items()]
        biggest = max(sized)[1]
        mem = {arm: a["state_bytes_per_param"] for arm, a in tasks[biggest]["arms"].items()
               if a["state_bytes_per_param"] is not None}
        if len(mem) >= 2:
            order = sorted(mem.items(), key=lambda kv: kv[1])
            out.append(Rule(
                "Optimizer state per parameter: "
                + ", ".join(f"{arm} {b:.3g} B" for arm, b in order)
                + f" (on {biggest}). When memory is the constraint, prefer the left end.",
                _label(ev, [biggest])))
    return out
