"""Running the lab's work on a Ray cluster: :class:`RayExecutor`, an
:class:`~optimlab.lab.execution.Executor` whose items are Ray tasks (``ray.remote``).

The runner loop (:func:`~optimlab.lab.execution.execute_all`) does not change: it submits at
most ``slots`` items at a time (``slots``: the cluster's CPUs, one task per CPU), stores each
result as it arrives, and retries an item whose worker died. The executor maps Ray's outcomes
onto the loop's:

- a task whose worker process or node died (``WorkerCrashedError``, ``NodeDiedError``, a lost
  result) fails its future with :class:`~optimlab.lab.pool.WorkerDied`, which the loop runs
  again once (Ray's own retries are off: ``max_retries=0``, so that a death is counted once);
- an exception the item's function raised is passed on as itself (Ray's ``RayTaskError``
  unwrapped), so a failed run is recorded with its own error;
- :meth:`RayExecutor.abort` cancels every task in flight (``ray.cancel(force=True)`` kills its
  worker), as the process pool's abort kills its workers.

Each task runs with a fixed number of torch threads (``threads``, 1 by default, as in the
process pool): the thread count changes the order of floating-point reductions, so the same
seeds give the same records as the local executor (timings aside).

Where the cluster is: ``address=None`` starts a local Ray instance in this process (the
machine's CPUs), ``"auto"`` joins the cluster this machine is part of (``ray start``), and
``"ray://host:10001"`` or ``"host:6379"`` joins a remote one. Every node must have optimlab
installed (the same version) and reach the results store (PostgreSQL for several machines).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import threading
from collections.abc import Callable
from typing import Any

from .pool import WorkerDied

__all__ = ["RayExecutor", "ray_module"]

_INSTALL = "pip install 'optimlab[distributed]'"


class RayError(RuntimeError):
    """Ray is missing or the cluster cannot be reached; ``str()`` is one line saying what to
    do."""


def ray_module() -> Any:
    """Ray (a :class:`RayError` saying how to install it when it is missing)."""
    try:
        import ray
    except ImportError:
        raise RayError(f"--executor ray needs Ray, which is not installed: {_INSTALL}") \
            from None
    return ray


def _call(fn: Callable[[Any], Any], item: Any, threads: int) -> Any:
    """The Ray task: ``fn(item)`` with ``threads`` torch threads."""
    import torch

    torch.set_num_threads(threads)
    return fn(item)


class RayExecutor:
    """Runs items as Ray tasks on a cluster; an :class:`~optimlab.lab.execution.Executor`.

    Args:
        address: the cluster (see the module docstring); ``None`` starts a local instance.
        threads: torch threads per task (and CPUs each task asks Ray for).
        slots: items in flight at once (default: the cluster's CPUs / ``threads``).
        init_options: more keyword arguments for ``ray.init`` (``num_cpus`` of a local
            instance, ``runtime_env``, ...).
    """

    def __init__(self, address: str | None = None, *, threads: int = 1,
                 slots: int | None = None, **init_options: Any) -> None:
        ray = ray_module()
        self.address, self.threads = address, int(threads)
        self._started_here = False
        if not ray.is_initialized():
            options = {"include_dashboard": False, "log_to_driver": False,
                       "configure_logging": False, **init_options}
            try:
                ray.init(address=address, **options)
            except Exception as e:  # ConnectionError, a bad address, a version mismatch...
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                where = f"the Ray cluster at {address!r}" if address else "a local Ray instance"
                raise RayError(f"cannot start or reach {where}: {first[:300]}; check --address "
                               "(ray://HOST:10001, HOST:6379 or auto) and that the cluster "
                               "runs the same Ray and Python versions") from None
            self._started_here = True
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.slots = int(slots) if slots is not None else max(1, cpus // self.threads)
        self._task = ray.remote(num_cpus=self.threads, max_retries=0)(_call)
        self._lock = threading.Lock()
        self._refs: dict[Any, cf.Future[Any]] = {}

    def submit(self, fn: Callable[[Any], Any], item: Any) -> cf.Future[Any]:
        """Start ``fn(item)`` as a Ray task (``fn`` and ``item`` must pickle)."""
        ref = self._task.remote(fn, item, self.threads)
        future: cf.Future[Any] = cf.Future()
        with self._lock:
            self._refs[ref] = future
        ref.future().add_done_callback(lambda done: self._settle(ref, done))
        return future

    def _settle(self, ref: Any, done: cf.Future[Any]) -> None:
        """Pass a task's outcome to its future, in the runner loop's terms."""
        with self._lock:
            future = self._refs.pop(ref, None)
        if future is None or future.done():
            return
        try:
            result = done.result()
        except BaseException as e:  # handed to the runner loop through the future
            future.set_exception(_translated(e))
        else:
            future.set_result(result)

    def abort(self) -> None:
        """Cancel every task in flight (their workers are killed)."""
        ray = ray_module()
        with self._lock:
            refs = list(self._refs.items())
            self._refs.clear()
        for ref, future in refs:
            with contextlib.suppress(Exception):  # already finished: nothing to cancel
                ray.cancel(ref, force=True)
            future.cancel() or future.done() or future.set_exception(cf.CancelledError())

    def close(self) -> None:
        """Shut down the local Ray instance this executor started (a cluster it joined is
        left running; the connection ends)."""
        ray = ray_module()
        with self._lock:
            if self._refs:
                cf.wait(list(self._refs.values()))
        if self._started_here and ray.is_initialized():
            ray.shutdown()
            self._started_here = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _translated(error: BaseException) -> BaseException:
    """Ray's exception for a task as the runner loop knows it: a dead worker or node is
    :class:`WorkerDied`; an error of the item's function is that error itself."""
    ray = ray_module()
    exc = ray.exceptions
    died = tuple(getattr(exc, name) for name in (
        "WorkerCrashedError", "NodeDiedError", "LocalRayletDiedError", "OwnerDiedError",
        "ObjectLostError", "ActorDiedError") if hasattr(exc, name))
    if isinstance(error, died):
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return WorkerDied(None, detail=f"the Ray worker died ({type(error).__name__}: "
                                       f"{first[:200]})")
    if isinstance(error, getattr(exc, "TaskCancelledError", ())):
        return cf.CancelledError(str(error))
    if isinstance(error, exc.RayTaskError):
        cause = getattr(error, "cause", None)
        if isinstance(cause, BaseException):
            return cause
    return error
