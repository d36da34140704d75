"""The advisor's no-compute rules: advice read off recorded evidence, with its uncertainty.

Every rule states its effect with an interval and, where two arms are compared, the
comparison of :func:`optimlab.lab.statistics.compare` on their per-seed values (paired on
shared seeds): the ratio of work, the 95% confidence interval of the difference, the effect
size. Where the comparison cannot tell the arms apart from seed noise, the rule says "no
clear winner" or "tied" instead of naming one. Counts ("on 2 of 4 tasks") count only clear
wins; ties and losses are listed beside them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..statistics import Comparison, Interval, compare, interval

__all__ = ["ADAPTIVE", "SGD_FAMILY", "Rule", "rules"]

ADAPTIVE = ("adagrad", "rmsprop", "adam", "adamw", "nadam", "radam", "adamax", "adadelta")
SGD_FAMILY = ("sgd", "momentum", "nesterov")


@dataclass(frozen=True)
class Rule:
    """A piece of advice and the evidence behind it (study, tasks, seeds, runs)."""

    text: str
    evidence: str


def _label(ev: Mapping[str, Any], tasks: Iterable[str]) -> str:
    tasks = list(tasks)
    seeds = ev.get("seeds", [])
    where = f"study {ev['study']!r}" + (f" ({ev['source']})" if ev.get("source") else "")
    text = (f"{where}: {', '.join(tasks)}; {len(seeds)} seed{'s' * (len(seeds) != 1)} per "
            f"arm; {ev.get('runs', '?')} runs")
    return text + (f"; {ev['conditions']}" if ev.get("conditions") else "")


def _g(x: float) -> str:
    return f"{x:.3g}"


def _values(side: Mapping[str, Any] | None) -> dict[int, float]:
    """Per-seed values from evidence (``None``: did not reach, ``+inf``)."""
    return {int(k): (math.inf if v is None else float(v)) for k, v in (side or {}).items()}


def _work(arm: Mapping[str, Any]) -> dict[int, float]:
    return _values(arm["work"])


def _settles(arm: Mapping[str, Any]) -> bool:
    """More than half its seeds settled at the target."""
    xs = list(_work(arm).values())
    return sum(math.isfinite(x) for x in xs) * 2 > len(xs) if xs else False


def _work_interval(arm: Mapping[str, Any]) -> Interval:
    return interval(_work(arm).values(), deterministic=bool(arm.get("deterministic")),
                    support=(0.0, math.inf))


def _compare_work(task: Mapping[str, Any], a: Mapping[str, Any], b: Mapping[str, Any]
                  ) -> tuple[Comparison, str]:
    """``a`` against ``b`` on work to target when either settles on most seeds (a seed that
    did not settle counting as the task's largest budget, as in the ranking), else on the
    final target metric; returns the comparison and what was compared."""
    det = (bool(a.get("deterministic")), bool(b.get("deterministic")))
    if _settles(a) or _settles(b):
        horizon = float(task.get("work_horizon") or 0) or None
        res = max(float(a.get("work_resolution") or 0), float(b.get("work_resolution") or 0))
        return compare(_work(a), _work(b), deterministic=det, horizon=horizon,
                       resolution=res), "work"
    return compare(_values(a["final"]), _values(b["final"]), deterministic=det), "final"


def _effect(c: Comparison, what: str) -> str:
    """The comparison in words: ratio, interval of the difference, effect size, test."""
    parts = []
    if what == "work" and math.isfinite(c.ratio):
        parts.append(f"{_g(c.ratio)}x the gradient evaluations")
    elif math.isfinite(c.diff):
        parts.append(f"difference {_g(c.diff)}")
    if math.isfinite(c.low) and math.isfinite(c.high) and c.low != c.high:
        parts.append(f"95% CI of the difference [{_g(c.low)}, {_g(c.high)}]")
    if math.isfinite(c.effect_size):
        parts.append(f"effect size {_g(c.effect_size)}")
    parts.append(c.method + (f" p={c.p_value:.2g}" if math.isfinite(c.p_value)
                             and c.method not in ("exact",) else ""))
    return ", ".join(parts)


def _best(arms: Mapping[str, Mapping[str, Any]], family: Sequence[str] | None = None
          ) -> str | None:
    ranked = [(a["rank"], name) for name, a in arms.items() if a.get("rank") is not None
              and (family is None or a["optimizer"] in family)]
    return min(ranked)[1] if ranked else None


def _winner_rules(ev: Mapping[str, Any]) -> list[Rule]:
    """Per kind of task: which arm needed the least work to the target, where it is clear."""
    tasks = ev["tasks"]
    out = []
    by_kind: dict[str, list[str]] = {}
    for name, t in tasks.items():
        by_kind.setdefault(t["kind"], []).append(name)
    for kind, names in by_kind.items():
        wins: dict[str, list[str]] = {}
        unclear: list[str] = []
        for name in names:
            arms = tasks[name]["arms"]
            best = next((a for a, s in arms.items() if s.get("best")), None)
            if best is None or not _settles(arms[best]):
                continue
            tied = sorted(a for a, s in arms.items() if s.get("tied_with_best"))
            if tied:
                unclear.append(f"{name} ({', '.join([best, *tied])} within noise)")
                continue
            others = [a for a in arms if a != best]
            runner = _best({a: arms[a] for a in others}) if others else None
            detail = f"{name}: {_work_interval(arms[best]).format(_g)} gradient evaluations"
            if runner is not None:
                c, what = _compare_work(tasks[name], arms[runner], arms[best])
                detail += f", runner-up {runner} {_effect(c, what)}"
            wins.setdefault(best, []).append(detail)
        for arm, won in sorted(wins.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            out.append(Rule(
                f"On {kind} tasks, {arm} needed the least work to settle at the target on "
                f"{len(won)} of {len(names)} ({'; '.join(won)}).", _label(ev, names)))
        if unclear:
            out.append(Rule(
                f"On {kind} tasks, no clear winner on {len(unclear)} of {len(names)}: "
                f"{'; '.join(unclear)}.", _label(ev, names)))
    return out


def _family_rule(ev: Mapping[str, Any]) -> list[Rule]:
    """The best adaptive method against the best of the SGD family, task by task."""
    tasks = ev["tasks"]
    won, tied, lost = [], [], []
    for name, t in tasks.items():
        a, s = _best(t["arms"], ADAPTIVE), _best(t["arms"], SGD_FAMILY)
        if a is None or s is None:
            continue
        c, what = _compare_work(t, t["arms"][a], t["arms"][s])
        if c.method == "no data":
            continue
        detail = f"{name}: {a} vs {s}, {_effect(c, what)}"
        (tied if c.tied else won if c.diff < 0 else lost).append(detail)
    n = len(won) + len(tied) + len(lost)
    if not n:
        return []
    text = (f"The best adaptive method (AdaGrad/RMSprop/Adam family) against the best of SGD, "
            f"momentum and Nesterov: less work to target (or a lower final target metric "
            f"where neither settled) on {len(won)} of {n} tasks")
    text += f" ({'; '.join(won)})" if won else ""
    text += f"; no clear winner on {len(tied)} ({'; '.join(tied)})" if tied else ""
    text += f"; the SGD family did better on {len(lost)} ({'; '.join(lost)})" if lost else ""
    return [Rule(text + ".", _label(ev, list(tasks)))]


def _generalization_rules(ev: Mapping[str, Any]) -> list[Rule]:
    out = []
    for name, t in ev["tasks"].items():
        accs = {arm: _values(a["test_accuracy"]) for arm, a in t["arms"].items()
                if a.get("test_accuracy")}
        accs = {arm: {k: x for k, x in v.items() if math.isfinite(x)} for arm, v in accs.items()}
        accs = {arm: v for arm, v in accs.items() if v}
        if len(accs) < 2:
            continue
        det = {arm: bool(t["arms"][arm].get("deterministic")) for arm in accs}
        means = {arm: interval(v.values(), deterministic=det[arm], support=(0.0, 1.0))
                 for arm, v in accs.items()}
        hi = max(means, key=lambda k: (means[k].center, k))
        lo = min(means, key=lambda k: (means[k].center, k))
        c = compare(accs[hi], accs[lo], deterministic=(det[hi], det[lo]))
        if c.tied or hi == lo:
            text = (f"On {name}, test accuracy did not differ beyond seed noise between the "
                    f"optimizers: highest {hi} {means[hi].format()}, lowest {lo} "
                    f"{means[lo].format()} ({_effect(c, 'accuracy')})")
        else:
            text = (f"On {name}, the highest test accuracy was {hi}'s {means[hi].format()}; "
                    f"lowest: {lo}, {means[lo].format()} ({_effect(c, 'accuracy')})")
            gaps = {arm: t["arms"][arm]["generalization_gap"] for arm in accs
                    if t["arms"][arm].get("generalization_gap") is not None}
            if len(gaps) >= 2:
                small = min(gaps, key=lambda k: gaps[k])
                text += f"; the smallest mean generalization gap was {small}'s " \
                        f"({gaps[small]:.3g})"
        out.append(Rule(text + ".", _label(ev, [name])))
    return out


def rules(evidence: Sequence[Mapping[str, Any]]) -> list[Rule]:
    """Advice distilled from ``evidence`` (see :func:`optimlab.lab.advice.evidence.distill`),
    each rule with its evidence; effects carry intervals and comparisons, and arms that seed
    noise cannot separate are reported as tied ("no clear winner")."""
    out: list[Rule] = []
    for ev in evidence:
        tasks = ev["tasks"]
        if not tasks:
            continue
        out += _winner_rules(ev)
        out += _family_rule(ev)
        for name, t in tasks.items():  # divergence
            for arm, a in t["arms"].items():
                if a["diverged"]:
                    lr = a["hyperparams"].get("lr")
                    out.append(Rule(
                        f"{arm} diverged on {name} in {a['diverged']} of {a['runs']} runs"
                        + (f" at lr={lr:g}" if isinstance(lr, (int, float)) else "")
                        + ": lower the learning rate, or add warm-up or gradient clipping "
                          "(clip_norm).", _label(ev, [name])))
        for name, t in tasks.items():  # never reached the target
            missed = [arm for arm, a in t["arms"].items()
                      if a["reached"] == 0 and a["diverged"] < a["runs"]]
            if missed:
                out.append(Rule(
                    f"On {name}, {', '.join(missed)} did not settle at {t['target_metric']} "
                    f"<= {t['target']:g} within {t['steps']} steps: budget more steps or tune "
                    "their learning rates.", _label(ev, [name])))
        out += _generalization_rules(ev)
        # memory, on the task with the most parameters, where fixed-size state (step
        # counters) no longer counts
        sized = [(t.get("n_params") or 0, n) for n, t in tasks.items()]
        biggest = max(sized)[1]
        mem = {arm: a["state_bytes_per_param"] for arm, a in tasks[biggest]["arms"].items()
               if a["state_bytes_per_param"] is not None}
        if len(mem) >= 2:
            order = sorted(mem.items(), key=lambda kv: kv[1])
            out.append(Rule(
                "Optimizer state per parameter: "
                + ", ".join(f"{arm} {b:.3g} B" for arm, b in order)
                + f" (on {biggest}; exact, not a statistic). When memory is the constraint, "
                  "prefer the left end.", _label(ev, [biggest])))
    return out
