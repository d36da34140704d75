"""Evidence: the compact, JSON-able digest of a study's runs that the no-compute rules read.

:func:`distill` keeps, per task and arm, what a rule needs to state an effect with its
uncertainty: the per-seed work to target and final metrics (so that arms can be compared
seed by seed, :func:`optimlab.lab.statistics.compare`), the ranking's verdict (rank, best,
tied with the best), and summaries (divergences, memory, test accuracy). The shipped
``studies/evidence.json`` is ``distill`` of the default study; regenerate it with::

    optimlab compare --no-report                 # the default study, under the current rules
    optimlab advise --distill default --evidence-out src/optimlab/lab/studies/evidence.json
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..report.stats import aggregate, work_to_target
from ..schema import RunRecord, json_safe

__all__ = ["EVIDENCE_FORMAT", "PACKAGED_EVIDENCE", "distill", "load_evidence",
           "write_evidence"]

#: Evidence distilled from the default study, shipped with optimlab.
PACKAGED_EVIDENCE = Path(__file__).resolve().parents[1] / "studies" / "evidence.json"
#: Version of the evidence layout (per-seed values since 2).
EVIDENCE_FORMAT = 2


def _finite(x: Any) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _per_seed(records: Sequence[RunRecord], value: Any) -> dict[str, float | None]:
    """``{seed: value}`` (JSON keys are strings; ``None``: did not reach / not finite)."""
    return {str(r.seed): _finite(value(r)) for r in records}


def distill(records: Sequence[RunRecord], *, study: str, source: str = "",
            conditions: str = "", rank_by: str = "work") -> dict[str, Any]:
    """Evidence from a study's runs (see the module docstring): per task and arm the ranking's
    verdict, the task's ``work_horizon`` (the most gradient evaluations of any of its runs:
    what a seed that did not settle counts as), per-seed ``work`` (gradient evaluations to
    the settled step; ``None`` when a seed did not settle) and ``final`` (final target
    metric; ``None`` when not finite or the run diverged), per-seed ``test_accuracy`` where
    measured, and summaries."""
    stats = aggregate(records, rank_by=rank_by)
    tasks: dict[str, Any] = {}
    for (task, arm), s in stats.items():
        first = s.records[0]
        t = tasks.setdefault(task, {
            "kind": first.task_info.kind, "target": _finite(s.target),
            "target_metric": s.target_metric, "steps": first.config.steps,
            "n_params": _finite(s.n_params), "work_horizon": 0, "arms": {}})
        t["work_horizon"] = max([t["work_horizon"]] + [r.grad_evals for r in s.records])
        recs = s.records[:1] if s.deterministic else s.records
        t["arms"][arm] = {
            "optimizer": s.optimizer,
            "hyperparams": dict(first.config.hyperparams),
            "runs": len(s.records),
            "deterministic": s.deterministic,
            "diverged": s.status_counts.get("diverged", 0),
            "failed": s.status_counts.get("failed", 0),
            "reached": s.n_reached,
            "rank": _finite(s.rank),
            "best": s.is_best,
            "tied_with_best": s.tied_with_best,
            "work": _per_seed(recs, work_to_target),
            "work_resolution": _finite(s.work_resolution) or 0.0,
            "final": _per_seed(recs, lambda r: r.metric(r.target_metric) if r.ok
                               else math.nan),
            "test_accuracy": ({str(r.seed): _finite(r.metric("test_accuracy")) for r in recs}
                              if any("test_accuracy" in r.final for r in recs) else None),
            "generalization_gap": _finite(s.generalization_gap.mean),
            "state_bytes_per_param": _finite(s.state_bytes_per_param),
        }
    seeds = sorted({r.seed for r in records})
    return json_safe({"format": EVIDENCE_FORMAT, "study": study, "source": source,
                      "conditions": conditions, "rank_by": rank_by, "runs": len(records),
                      "seeds": seeds, "tasks": tasks})


def write_evidence(evidence: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``evidence`` as indented, sorted JSON (the packaged file's form)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_safe(dict(evidence)), indent=1, sort_keys=True) + "\n",
                    encoding="utf-8")
    return path


def load_evidence(store: Any | None = None) -> list[dict[str, Any]]:
    """Evidence from every study in ``store`` that has finished runs; the packaged evidence
    when there is none (or no store).

    Raises:
        ValueError: the packaged evidence is of another format than this optimlab reads.
    """
    out: list[dict[str, Any]] = []
    if store is not None:
        for s in store.studies():
            if s["finished"]:
                spec = store.study_spec(s["name"])
                rank_by = spec.get("rank_by", "work") if isinstance(spec, Mapping) else "work"
                out.append(distill(store.study_records(s["name"]), study=s["name"],
                                   source=store.url, rank_by=rank_by))
    if not out:
        packaged = json.loads(PACKAGED_EVIDENCE.read_text(encoding="utf-8"))
        if packaged.get("format") != EVIDENCE_FORMAT:
            raise ValueError(f"the packaged evidence {PACKAGED_EVIDENCE.name} is of format "
                             f"{packaged.get('format', 1)}, this optimlab reads format "
                             f"{EVIDENCE_FORMAT}; regenerate it (see optimlab.lab.advice."
                             "evidence)")
        out.append(packaged)
    return out
