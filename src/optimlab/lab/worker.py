"""Workers: processes on any number of machines that share one stored study
(``optimlab worker --store postgresql://... --study NAME``).

A study saved in a results store (by ``optimlab compare``, or by an earlier worker) carries its
whole spec (:meth:`~optimlab.lab.store.ResultStore.study_spec`). A worker reads it back,
plans the same runs (the keys are content hashes, so every worker agrees on them), and runs
the study through :func:`~optimlab.lab.study.run_study`: each pending run, or population of
runs where they apply (:mod:`optimlab.lab.batching`), is claimed in the store before it starts
(:mod:`optimlab.lab.claims`), stored the moment it finishes, and released. A worker returns
once every run of the study is stored, by whichever worker; then the held-out re-runs, if the
study has them, are planned from the stored records (the same choice in every worker) and
shared the same way.

A worker killed at any instant (SIGKILL included) loses only the runs it was running: its
claims are taken over by another worker as soon as their lease expires (at once on the same
machine, where the dead process is seen to be gone), and that worker runs them again; a run's
record is stored once whatever happens (the store keys it). Nothing here is a scheduler: the
database's transactions are the coordination.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any

from .claims import LEASE_SECONDS
from .execution import Executor
from .imports import AllowList
from .schema import RunRecord
from .spec import StudySpec
from .store import ResultStore
from .study import StudyOutcome, run_study

__all__ = ["run_worker", "stored_study"]


def stored_study(store: ResultStore, name: str, allow_import: AllowList = ()) -> StudySpec:
    """The spec study ``name`` was saved with in ``store``, as a :class:`StudySpec` (the
    bookkeeping saved beside it, such as the held-out choice, left out). Tasks and optimizers
    named by import path must come from ``allow_import``'s packages, as in a study file."""
    saved = store.study_spec(name)  # StoreError naming the stored studies if unknown
    known = {f.name for f in fields(StudySpec)}
    return StudySpec.from_mapping({**{k: v for k, v in saved.items() if k in known},
                                   "name": name}, source=f"study {name!r} in {store.url}",
                                  allow_import=allow_import)


def run_worker(store: ResultStore, name: str, *, executor: Executor | None = None,
               progress: Callable[[int, int, RunRecord], None] | None = None,
               message: Callable[[str], None] | None = None, lease_s: float = LEASE_SECONDS,
               population: str = "auto", allow_import: AllowList = ()) -> StudyOutcome:
    """Work on stored study ``name`` until every run of it is stored (see the module
    docstring); returns what this worker did (``executed``) and what others did meanwhile
    (``elsewhere``).

    Args:
        store: the study's results store (PostgreSQL for workers on several machines).
        name: the study.
        executor: where this worker's runs execute (default: a process pool on every core
            when more than one work item is pending).
        progress, message, lease_s, population: as in :func:`~optimlab.lab.study.run_study`.
        allow_import: packages the study's import paths may come from.

    Raises:
        StoreError: no such study, or the store cannot be written.
    """
    spec = stored_study(store, name, allow_import)
    store.check_writable()
    kwargs: dict[str, Any] = {"progress": progress, "message": message, "lease_s": lease_s,
                              "population": population}
    return run_study(spec, store, executor=executor, **kwargs)
