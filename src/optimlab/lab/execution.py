"""Executing the lab's work: executors, the one runner loop, and the order runs go in.

Everything the lab computes in bulk (a study's runs, a tuning's trials, the advisor's re-runs)
goes through :func:`execute_all`: it hands items to an :class:`Executor` in the order given,
at most ``executor.slots`` at a time, passes each result to a sink (the results store) the
moment it arrives, reports progress, and may queue follow-up items (the next trial of a tuning
study, which must wait for the previous one).

An executor is anything with ``slots`` and ``submit(fn, item) -> concurrent.futures.Future``,
and optionally ``abort()`` (stop everything at once): :class:`InlineExecutor` (this process,
one item after the other), :class:`~optimlab.lab.pool.ProcessExecutor` (a pool of fresh
processes that die with this one), or a cluster's. Results may arrive in any order.

**Faults.** An item whose worker process died (:class:`~optimlab.lab.pool.WorkerDied`) is run
again, once, at the front of the queue; when its worker dies a second time the item *failed*.
The process pool attributes every death to the one item its worker was running, so the other
items in flight are never blamed. An executor that cannot attribute a death (a
:class:`concurrent.futures.BrokenExecutor`, as ``ProcessPoolExecutor`` raises for every item
in flight) gets each of those items back to run *alone*, one at a time, so that the next death
names its culprit; deaths count only for an item that ran alone. A failed item (a second
death, or an exception ``fn`` raised) becomes a result through ``failed(item, error)`` and the
loop goes on; without ``failed``, the error stops the loop (and is raised).

**Interruptions** (Ctrl-C, or SIGTERM/SIGHUP turned into
:class:`~optimlab._interrupts.Interrupted`) and errors of the sink (a store fault) stop the
loop at once: nothing more is submitted, the executor is aborted (workers killed: no item keeps
running, or writing, after the loop returns), the results that had already arrived are passed
to the sink (for an interruption), and the exception propagates.

:func:`interleave` orders a study's runs so that the order does not bias wall-clock
measurements: runs of one arm do not sit together at the start of a worker, where a process is
still warming up.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import random
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from .environment import available_cores
from .pool import ProcessExecutor, WorkerDied

__all__ = ["MAX_WORKER_DEATHS", "Executor", "InlineExecutor", "ProcessExecutor", "WorkerDied",
           "default_workers", "execute_all", "interleave"]

T = TypeVar("T")
R = TypeVar("R")

#: An item whose worker died this many times (while it ran alone) has failed.
MAX_WORKER_DEATHS = 2


class Executor(Protocol):
    """Runs functions on items, at most ``slots`` at a time. An executor may also have
    ``abort()``: stop every item now (used when the runner loop is interrupted)."""

    slots: int

    def submit(self, fn: Callable[[Any], Any], item: Any) -> cf.Future[Any]:
        """Start ``fn(item)``; the future holds its result (or its exception)."""
        ...


class InlineExecutor:
    """Runs everything in this process, one item after the other (``submit`` returns a
    finished future)."""

    slots = 1

    def submit(self, fn: Callable[[Any], Any], item: Any) -> cf.Future[Any]:
        """Run ``fn(item)`` now."""
        fut: cf.Future[Any] = cf.Future()
        try:
            fut.set_result(fn(item))
        except Exception as e:  # handed to the caller through the future, as a pool would
            fut.set_exception(e)
        return fut

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self) -> InlineExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def default_workers() -> int:
    """One worker per available core."""
    return available_cores()


@dataclass
class _Entry(Generic[T]):
    """An item in the runner loop: how often its worker died, and whether it must run with
    nothing else in flight (a suspect of a death no one could attribute)."""

    item: T
    deaths: int = 0
    alone: bool = False


def _retry(entry: _Entry[Any], error: BaseException, alone: bool) -> BaseException | None:
    """``None`` when ``entry`` should run again after ``error``; else the error it failed
    with."""
    if isinstance(error, WorkerDied):
        entry.deaths += 1
        if entry.deaths < MAX_WORKER_DEATHS:
            return None
        return WorkerDied(error.exitcode, entry.deaths, error.detail)
    if isinstance(error, cf.BrokenExecutor):  # a death the executor could not attribute
        if not alone:
            entry.alone = True
            return None
        entry.deaths += 1
        if entry.deaths < MAX_WORKER_DEATHS:
            return None
        return WorkerDied(None, entry.deaths, f"the executor broke while it ran alone ({error})")
    return error


def execute_all(items: Iterable[T], fn: Callable[[T], R], executor: Executor, *,
                sink: Callable[[T, R], None] | None = None,
                progress: Callable[[int, int, T, R], None] | None = None,
                then: Callable[[T, R], Iterable[T]] | None = None,
                failed: Callable[[T, BaseException], R] | None = None,
                done: int = 0, total: int | None = None) -> int:
    """Run ``fn`` on every item through ``executor``; the lab's one runner loop.

    Items start in the order given, at most ``executor.slots`` at a time (so the order is the
    order work starts in, even on a pool). As each finishes: ``sink(item, result)`` (store
    it), then ``then(item, result)`` may return follow-up items, which go to the front of the
    queue (so a chain of dependent items, such as a tuning study's trials, proceeds as fast as
    it can), then ``progress(count, total, item, result)``. Faults and interruptions: see the
    module docstring.

    Args:
        items: the work.
        fn: what to do with an item (a module-level function for a process pool).
        executor: where it runs.
        sink: receives every result as it arrives.
        progress: called after each item; ``count`` starts at ``done``.
        then: follow-up items of a finished item.
        failed: the result of an item that failed: ``failed(item, error)`` with what ``fn``
            raised, or a :class:`~optimlab.lab.pool.WorkerDied` ("worker process died twice:
            signal 9 (SIGKILL)"); it goes to ``sink``, ``then`` and ``progress`` like any
            result. It may raise to stop the loop (e.g. for errors it does not expect).
        done: items finished before this call (for the progress count).
        total: the total to report (default: ``done`` + the items, + follow-ups as known).

    Returns:
        The number of items run by this call.

    Raises:
        Without ``failed``: whatever ``fn`` raised for an item, or ``WorkerDied`` (the items
        not started are dropped, the ones running awaited and their results passed to the
        sink first). ``KeyboardInterrupt`` (and ``Interrupted``), and whatever ``sink``,
        ``then`` or ``progress`` raised, after the executor was aborted.
    """
    queue: deque[_Entry[T]] = deque(_Entry(item) for item in items)
    slots = max(1, executor.slots)
    count = done
    total_known = total if total is not None else done + len(queue)
    running: dict[cf.Future[Any], _Entry[T]] = {}
    ran = 0
    item_error = False  # the exception being raised is an item's (not ours, not a signal)
    try:
        while queue or running:
            while queue and len(running) < slots:
                if running and (queue[0].alone or any(e.alone for e in running.values())):
                    break
                entry = queue.popleft()
                running[executor.submit(fn, entry.item)] = entry
            finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            in_flight = len(running)
            for fut in _in_submission_order(running, finished):
                entry = running[fut]
                error = _error_of(fut)
                if error is None:
                    result = fut.result()
                else:
                    error = _retry(entry, error, alone=entry.alone or (in_flight == 1
                                                                        and slots == 1))
                    if error is None:
                        del running[fut]
                        queue.appendleft(entry)
                        continue
                    if failed is None:
                        item_error = True
                        raise error
                    result = failed(entry.item, error)
                ran += 1
                count += 1
                if sink is not None:
                    sink(entry.item, result)
                del running[fut]
                if then is not None:
                    follow = list(then(entry.item, result))
                    queue.extendleft(_Entry(f) for f in reversed(follow))
                    if total is None:
                        total_known += len(follow)
                if progress is not None:
                    progress(count, total_known, entry.item, result)
    except BaseException as e:
        queue.clear()
        _wind_down(executor, running, sink, item_error=item_error,
                   interrupted=isinstance(e, KeyboardInterrupt))
        raise
    return ran


def _error_of(fut: cf.Future[Any]) -> BaseException | None:
    try:
        return fut.exception()
    except cf.CancelledError as e:
        return e


def _wind_down(executor: Executor, running: dict[cf.Future[Any], _Entry[Any]],
               sink: Callable[[Any, Any], None] | None, *, item_error: bool,
               interrupted: bool) -> None:
    """Stop what runs after the loop raised: for an item's error, let the others finish and
    store them; for an interruption, abort the executor, then store what had finished; for any
    other error (the sink's: a store fault), abort."""
    abort = getattr(executor, "abort", None)
    if item_error or abort is None:
        for fut in running:
            fut.cancel()
        cf.wait(running)  # a worker's item in flight finishes (or dies) before we go on
    else:
        abort()
    if sink is None or not (item_error or interrupted):
        return
    for fut, entry in running.items():
        if fut.done() and _error_of(fut) is None:
            with contextlib.suppress(Exception):  # the error being raised says more
                sink(entry.item, fut.result())


def _in_submission_order(running: dict[cf.Future[Any], Any], finished: set[cf.Future[Any]]
                         ) -> list[cf.Future[Any]]:
    return [f for f in running if f in finished]


def interleave(items: Sequence[T], group: Callable[[T], Hashable],
               rank: Callable[[T], int], salt: str) -> list[T]:
    """``items`` in round-robin order: every group's first item (rank 0), then every group's
    second, and so on, the groups in an order shuffled anew each round by a generator seeded
    with a hash of ``salt`` and the round (SHA-256: the same order in every process). The
    result does not depend on the order of ``items``.

    For a study: the group is the (task, arm), the rank the seed's position, the salt the
    study's name. No arm's runs then all sit at the start of a worker, where a fresh process is
    slower, and the order is the same every time the study runs.
    """
    groups: dict[Hashable, list[T]] = {}
    for item in items:
        groups.setdefault(group(item), []).append(item)
    for members in groups.values():
        members.sort(key=rank)
    keys = sorted(groups, key=str)  # the input order does not matter
    out: list[T] = []
    depth = max((len(m) for m in groups.values()), default=0)
    for r in range(depth):
        seed = int.from_bytes(hashlib.sha256(f"{salt}/{r}".encode()).digest()[:8], "big")
        order = list(keys)
        random.Random(seed).shuffle(order)
        out.extend(groups[k][r] for k in order if r < len(groups[k]))
    return out
