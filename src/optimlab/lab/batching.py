"""Which of a study's runs train together as one population, and the work items that do.

A study's runs that :func:`optimlab.lab.population.batchable` accepts and that share a
:func:`~optimlab.lab.population.group_key` (runs that differ only in seed and in the values of
optimizer hyperparameters and clipping thresholds: an arm's seeds, and the arms of a sweep
over such values) are one :class:`PopulationRun`: trained as one program by
:func:`~optimlab.lab.population.execute_population`, which returns one record per member,
equal to the records the runs give one by one apart from wall-clock fields. A group larger
than :data:`MAX_POPULATION` is split into near-equal populations; a group of fewer than its
minimum runs one run at a time, as without populations: :data:`MIN_WRITTEN_OUT_POPULATION`
members where the task writes out its population's gradients
(:meth:`~optimlab.lab.tasks.Task.population_gradients`), else :data:`MIN_POPULATION` (measured
on the 2-core CPU; see the constants).

The executor sees a population as one item: one worker trains it, its records are stored
together when it finishes, and when it fails (it raises, or its worker dies twice) every member
gets a failed record. Tuning trials are not grouped (each trial depends on the previous ones);
a tuning's re-runs of its best configurations are (they go through the study's executor).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .population import execute_population
from .population_groups import batchable, group_key
from .runs import execute, failed_record
from .schema import RunConfig, RunRecord
from .tasks import make_task

if TYPE_CHECKING:
    from .study import PlannedRun

__all__ = ["MAX_POPULATION", "MIN_POPULATION", "MIN_WRITTEN_OUT_POPULATION", "POPULATION_MODES",
           "Grouping", "PopulationRun", "failed_records", "run_item"]

#: ``"auto"``: batchable runs of one group train as populations; ``"off"``: every run alone.
POPULATION_MODES = ("auto", "off")
#: The most members one population has (a larger group is split into near-equal ones).
MAX_POPULATION = 64
#: The fewest members a population differentiated with ``vmap`` has: smaller groups run one
#: run at a time. Its step has a fixed cost (vmap's machinery, one optimizer step, ~1.5 ms on
#: the 2-core CPU) that a few members do not repay: measured (adam, 1000 steps, one thread,
#: paired rounds), P members vs P runs alone: mlp-digits (then on vmap) 0.87x at P = 3, 1.18x
#: at 4, 1.47x at 6; logreg-breast-cancer 1.10x at 3, 2.0x at 6 (again: 0.67x at 2, 1.0x at
#: 3, and 0.81x inside the default ``optimlab compare``); rosenbrock 0.96x at 2, 1.27x at 3.
MIN_POPULATION = 4
#: The fewest members of a population whose task writes out its gradients (plain MLPs, the
#: convex tasks' linear models): its step costs less than a run's own step even for two
#: members. Measured as above, at P = 2 and 3: mlp-digits 2.1x and 2.5x, logreg-breast-cancer
#: 2.6x and 3.8x, softmax-digits 2.2x and 3.1x, least-squares-diabetes 2.7x and 3.9x.
MIN_WRITTEN_OUT_POPULATION = 2


@dataclass(frozen=True)
class PopulationRun:
    """Runs of a study that train as one population (at least two, in the study's order); its key
    is its first member's."""

    runs: tuple[PlannedRun, ...]

    @property
    def key(self) -> str:
        return self.runs[0].key

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(r.key for r in self.runs)


def _chunks(members: list[PlannedRun], cap: int) -> list[list[PlannedRun]]:
    """``members`` cut into ``ceil(n / cap)`` consecutive pieces of near-equal size."""
    n = len(members)
    pieces = math.ceil(n / cap)
    bounds = [i * n // pieces for i in range(pieces + 1)]
    return [members[a:b] for a, b in itertools.pairwise(bounds)]


class Grouping:
    """How a study's runs group into populations: each run's group (``None``: it runs
    alone) and, for the runs that cannot be batched, why.

    Args:
        runs: the study's runs (the group of each is computed once, here).
        mode: one of :data:`POPULATION_MODES`.
        cap: the most members of a population.
        smallest: the fewest members of a population (default: per group,
            :data:`MIN_WRITTEN_OUT_POPULATION` where the task writes out the population's
            gradients, else :data:`MIN_POPULATION`).
    """

    def __init__(self, runs: Sequence[PlannedRun], mode: str = "auto",
                 cap: int = MAX_POPULATION, smallest: int | None = None) -> None:
        if mode not in POPULATION_MODES:
            raise ValueError(f"population must be one of {', '.join(POPULATION_MODES)}, "
                             f"got {mode!r}")
        fixed = smallest is not None
        smallest = MIN_POPULATION if smallest is None else smallest
        if smallest < 2 or cap < (smallest if fixed else 2):
            raise ValueError(f"a population has at least 2 members and the cap is at least "
                             f"the smallest population, got {smallest} and a cap of {cap}")
        self.mode, self.cap, self.smallest = mode, cap, smallest
        self.group: dict[str, Hashable | None] = {}
        #: the fewest members of each group's populations
        self.minimum: dict[Hashable, int] = {}
        #: ``{reason: [labels of the arms it kept from forming a population]}``.
        self.reasons: dict[str, list[str]] = {}
        if mode == "off":
            return
        arms: dict[tuple[str, str], int] = {}
        for r in runs:
            arms[(r.config.task, r.label)] = arms.get((r.config.task, r.label), 0) + 1
        for r in runs:
            if r.key in self.group:
                continue
            reason = batchable(r.config)
            if reason is None:
                key = self.group[r.key] = group_key(r.config)
                if key not in self.minimum:
                    self.minimum[key] = (smallest if fixed or not _written_out(r.config)
                                         else MIN_WRITTEN_OUT_POPULATION)
                continue
            self.group[r.key] = None
            if arms[(r.config.task, r.label)] >= smallest:  # it would have formed one
                where = f"{r.label} on {r.config.task}"
                listed = self.reasons.setdefault(reason, [])
                if where not in listed:
                    listed.append(where)

    def items(self, runs: Sequence[PlannedRun]) -> list[PlannedRun | PopulationRun]:
        """``runs`` as work items, in the order of ``runs``: the runs of one group form
        populations (placed where their first member was) when they are at least
        ``smallest``, the others stay alone."""
        groups: dict[Hashable, list[PlannedRun]] = {}
        for r in runs:
            g = self.group.get(r.key)
            if g is not None:
                groups.setdefault(g, []).append(r)
        first: dict[str, PopulationRun] = {}
        grouped: set[str] = set()
        for g, members in groups.items():
            least = self.minimum.get(g, self.smallest)
            if len(members) < least:
                continue
            for chunk in _chunks(members, self.cap):
                if len(chunk) >= least:
                    first[chunk[0].key] = PopulationRun(tuple(chunk))
                    grouped.update(m.key for m in chunk)
        out: list[PlannedRun | PopulationRun] = []
        for r in runs:
            if r.key in first:
                out.append(first[r.key])
            elif r.key not in grouped:
                out.append(r)
        return out

    def notes(self) -> list[str]:
        """One line per reason that kept runs from training as a population."""
        return [f"run one at a time, not as a population ({reason}): {', '.join(arms)}"
                for reason, arms in self.reasons.items()]


def _written_out(config: RunConfig) -> bool:
    """Whether the task of ``config`` writes out its population's gradients (asked before any
    setup: it depends only on the task's options)."""
    return make_task(config.task, **config.task_options).population_gradients() is not None


def run_item(item: PlannedRun | PopulationRun) -> RunRecord | list[RunRecord]:
    """Worker entry point: a run's record, or a population's records (one per member, in
    order)."""
    if isinstance(item, PopulationRun):
        return execute_population([r.config for r in item.runs],
                                  threads=torch.get_num_threads())
    return execute(item.config, threads=torch.get_num_threads())


def failed_records(item: PlannedRun | PopulationRun, error: BaseException
                   ) -> RunRecord | list[RunRecord]:
    """The failed record of a run, or one per member of a population (its worker died twice,
    or it raised)."""
    if isinstance(item, PopulationRun):
        return [failed_record(r.config, error) for r in item.runs]
    return failed_record(item.config, error)

