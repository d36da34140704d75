"""Executing the lab's work: executors, the one runner loop, and the order runs go in.

Everything the lab computes in bulk (a study's runs, a tuning's trials, the advisor's re-runs)
goes through :func:`execute_all`: it hands items to an :class:`Executor` in the order given,
at most ``executor.slots`` at a time, passes each result to a sink (the results store) the
moment it arrives, reports progress, and may queue follow-up items (the next trial of a tuning
study, which must wait for the previous one).

An executor is anything with ``slots`` and ``submit(fn, item) -> concurrent.futures.Future``:
:class:`InlineExecutor` (this process, one item after the other), :class:`ProcessExecutor` (a
pool of fresh processes), or a cluster's. Results may arrive in any order.

:func:`interleave` orders a study's runs so that the order does not bias wall-clock
measurements: runs of one arm do not sit together at the start of a worker, where a process is
still warming up.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import multiprocessing as mp
import random
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, Protocol, TypeVar

from .environment import available_cores

__all__ = ["Executor", "InlineExecutor", "ProcessExecutor", "default_workers", "execute_all",
           "interleave"]

T = TypeVar("T")
R = TypeVar("R")


class Executor(Protocol):
    """Runs functions on items, at most ``slots`` at a time."""

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


def _warm_up() -> None:
    """A few steps of a tiny model, so that the lazy initialization of torch (kernels,
    allocator, autograd) happens before the first measured run rather than inside it."""
    import torch

    model = torch.nn.Linear(8, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    for _ in range(5):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    _warm_up()


class ProcessExecutor:
    """A pool of ``workers`` fresh processes (spawned, so nothing is shared with this one), each
    with ``threads`` torch threads and warmed up before its first item. The pool starts at the
    first ``submit`` and lasts until :meth:`close` (use it as a context manager)."""

    def __init__(self, workers: int | None = None, threads: int = 1) -> None:
        self.workers = workers or default_workers()
        self.slots = self.workers
        self.threads = threads
        self._pool: cf.ProcessPoolExecutor | None = None

    def submit(self, fn: Callable[[Any], Any], item: Any) -> cf.Future[Any]:
        """Start ``fn(item)`` in a worker (``fn`` and ``item`` must pickle)."""
        if self._pool is None:
            self._pool = cf.ProcessPoolExecutor(
                self.workers, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                initargs=(self.threads,))
        return self._pool.submit(fn, item)

    def close(self) -> None:
        """Stop the workers (items not started are cancelled)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> ProcessExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def default_workers() -> int:
    """One worker per available core."""
    return available_cores()


def execute_all(items: Iterable[T], fn: Callable[[T], R], executor: Executor, *,
                sink: Callable[[T, R], None] | None = None,
                progress: Callable[[int, int, T, R], None] | None = None,
                then: Callable[[T, R], Iterable[T]] | None = None,
                done: int = 0, total: int | None = None) -> int:
    """Run ``fn`` on every item through ``executor``; the lab's one runner loop.

    Items start in the order given, at most ``executor.slots`` at a time (so the order is the
    order work starts in, even on a pool). As each finishes: ``sink(item, result)`` (store
    it), then ``then(item, result)`` may return follow-up items, which go to the front of the
    queue (so a chain of dependent items, such as a tuning study's trials, proceeds as fast as
    it can), then ``progress(count, total, item, result)``.

    Args:
        items: the work.
        fn: what to do with an item (a module-level function for a process pool).
        executor: where it runs.
        sink: receives every result as it arrives.
        progress: called after each item; ``count`` starts at ``done``.
        then: follow-up items of a finished item.
        done: items finished before this call (for the progress count).
        total: the total to report (default: ``done`` + the items, + follow-ups as known).

    Returns:
        The number of items run by this call.

    Raises:
        Whatever ``fn`` raised for an item (the items not started are dropped and the ones
        running awaited first).
    """
    queue: deque[T] = deque(items)
    count = done
    total_known = total if total is not None else done + len(queue)
    running: dict[cf.Future[Any], T] = {}
    ran = 0
    try:
        while queue or running:
            while queue and len(running) < max(1, executor.slots):
                item = queue.popleft()
                running[executor.submit(fn, item)] = item
            finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for fut in _in_submission_order(running, finished):
                item = running.pop(fut)
                result = fut.result()
                ran += 1
                count += 1
                if sink is not None:
                    sink(item, result)
                if then is not None:
                    follow = list(then(item, result))
                    queue.extendleft(reversed(follow))
                    if total is None:
                        total_known += len(follow)
                if progress is not None:
                    progress(count, total_known, item, result)
    except BaseException:
        for fut in running:
            fut.cancel()
        cf.wait(running)  # a worker's run in flight finishes (or dies) before we go on
        raise
    return ran


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
