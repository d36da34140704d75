"""The trials of a tuning, read back from Optuna's storage for the report."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ..store import ResultStore, StoreError
from .run import open_storage, readonly_storage_url, storage_url
from .spec import TuneSpec

__all__ = ["tuning_for_study", "tuning_history"]


def tuning_history(spec_or_name: TuneSpec | str, store: str | None = None, *,
                   storage: str | None = None, readonly: bool = False
                   ) -> list[dict[str, Any]]:
    """Every trial of a tuning, for the report (JSON-able apart from ``value`` ``None``).

    Args:
        spec_or_name: the spec (its tasks and optimizers only) or the tuning's name (all of
            its studies).
        store: the results-store URL or path whose database holds the studies.
        storage: an Optuna storage URL instead.
        readonly: only read the storage (create no table in it).

    Returns:
        One dict per trial, by task, optimizer and trial index: ``task``, ``optimizer``,
        ``study``, ``index`` (in the budget; ``None`` for an interrupted trial), ``number``
        (Optuna's), ``state`` (complete/pruned/fail/running), ``status`` (ok/diverged/pruned/
        failed/interrupted), ``value`` (the objective; ``None`` unless finite), ``objective``,
        ``params`` (drawn), ``hyperparams``, ``schedule``, ``intermediate`` (``step`` and
        ``value`` lists), ``steps_done``, ``steps_to_target`` (the settled step; ``None``:
        never settled), ``seconds`` (training time) and ``error``.
    """
    url = storage or storage_url(store)
    st = open_storage(url, readonly=readonly)
    if isinstance(spec_or_name, TuneSpec):
        name = spec_or_name.resolved_name
        wanted = {f"{name}/{t}/{o}" for t in spec_or_name.tasks for o in spec_or_name.optimizers}
    else:
        name, wanted = str(spec_or_name), None
    out = []
    for frozen in st.get_all_studies():
        study_name = frozen.study_name
        if not study_name.startswith(f"{name}/") or (wanted is not None
                                                     and study_name not in wanted):
            continue
        sig = frozen.user_attrs.get("optimlab") or {}
        task = sig.get("task") or study_name.split("/")[1]
        opt = sig.get("optimizer") or study_name.split("/")[-1]
        for t in st.get_all_trials(st.get_study_id_from_name(study_name), deepcopy=False):
            attrs = t.user_attrs
            interrupted = bool(attrs.get("interrupted"))
            state = t.state.name.lower()
            status = "interrupted" if interrupted else attrs.get("status") or (
                "pruned" if state == "pruned" else state)
            steps = sorted(t.intermediate_values)
            value = t.value if t.value is not None and math.isfinite(t.value) else None
            out.append({
                "task": task, "optimizer": opt, "study": study_name,
                "index": None if interrupted else attrs.get("index"), "number": t.number,
                "state": state, "status": status,
                "value": value if state == "complete" else None,
                "objective": attrs.get("objective") or frozen.user_attrs.get("objective"),
                "params": dict(t.params), "hyperparams": attrs.get("hyperparams", {}),
                "schedule": attrs.get("schedule"),
                "intermediate": {"step": steps,
                                 "value": [t.intermediate_values[s] for s in steps]},
                "steps_done": attrs.get("steps_done"),
                "steps_to_target": attrs.get("steps_to_target"),
                "seconds": attrs.get("train_seconds"),
                "error": attrs.get("error")})
    order = {(t, o): i for i, (t, o) in enumerate(dict.fromkeys(
        (r["task"], r["optimizer"]) for r in out))}
    if isinstance(spec_or_name, TuneSpec):
        order = {(t, o): i for i, (t, o) in enumerate(
            (t, o) for t in spec_or_name.tasks for o in spec_or_name.optimizers)}
    out.sort(key=lambda r: (order[(r["task"], r["optimizer"])], r["number"]))
    return out


def tuning_for_study(store: ResultStore, name: str, storage: str | None = None
                     ) -> list[dict[str, Any]] | None:
    """The tuning history behind study ``name`` when it is a tuning's re-run (``None``
    otherwise): for ``optimlab report --study NAME-best``.

    The Optuna studies are read from ``storage`` when it is given, else from the store's own
    database. A storage URL recorded in the database is never followed (the database is data:
    a tampered one must not make the report connect to, or create, another database); when
    the tuning used another storage and none is given, there is no history (``None``).
    """
    spec = store.study_spec(name)
    tuning = spec.get("tuning") if isinstance(spec, Mapping) else None
    if not isinstance(tuning, Mapping) or not tuning.get("name"):
        return None
    readonly = False
    if storage is None and tuning.get("storage") is not None:
        return None  # the user did not name the storage the tuning used
    if storage is None:  # the studies are in the store's database: read them as it does
        try:
            store.check_writable()
        except StoreError:
            uri = getattr(store, "sqlite_uri", None)
            if uri is not None:
                storage, readonly = readonly_storage_url(uri), True
    records = tuning_history(str(tuning["name"]), store.url, storage=storage,
                             readonly=readonly)
    tasks, opts = set(spec.get("tasks") or []), set(spec.get("optimizers") or [])
    return [r for r in records if (not tasks or r["task"] in tasks)
            and (not opts or r["optimizer"] in opts)]
