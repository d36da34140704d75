"""A pool of worker processes that die with their owner and name the item a death cost.

:class:`ProcessExecutor` is the lab's process executor (see
:mod:`optimlab.lab.execution`). It is a small pool on :mod:`multiprocessing` rather than
:class:`concurrent.futures.ProcessPoolExecutor`, for two reasons:

- **A death is attributed.** Each worker runs one item at a time, through its own pipe, so a
  worker that dies (SIGKILL, the kernel's OOM killer, ``os._exit`` in a task) fails exactly the
  item it was running, with :class:`WorkerDied` and its exit status, and is replaced for the
  next item. The other workers keep going. (``ProcessPoolExecutor`` marks the whole pool
  broken and terminates every worker, so every item in flight fails and the culprit cannot be
  told apart.)
- **Workers never outlive the pool's owner** (the process that made the pool), whatever ends
  it, SIGKILL included. Each worker asks the kernel to SIGKILL it when its parent dies
  (``prctl(PR_SET_PDEATHSIG)`` on Linux, checked right after against the expected parent,
  which closes the race with a parent that died before the call), and a watchdog thread waits
  on a *lifeline*, a pipe whose write end only the owner holds, and ends the worker at its
  end-of-file (any platform; immediate; no polling). The lifeline is what ends a
  ``forkserver`` worker, whose parent is the fork server: the server lives as long as its
  children, so neither would end the other. Under ``fork``, whose children inherit every pipe
  of the owner (their siblings' lifelines too), the watchdog polls the parent pid instead.
  Workers ignore SIGINT and SIGHUP, which a terminal sends to the whole process group: the
  owner decides, and stops them (:meth:`ProcessExecutor.abort`).

The kernel sends the parent-death signal when the *thread* that started the process ends, so
each worker is started by the pool thread that serves it, which lives as long as the worker.
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import contextlib
import ctypes
import multiprocessing as mp
import os
import pickle
import queue
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from .._interrupts import signal_name

__all__ = ["START_METHODS", "ProcessExecutor", "WorkerDied", "describe_exit"]

#: multiprocessing start methods the pool accepts (``spawn``: a fresh interpreter, nothing
#: shared with the parent; ``forkserver``: forked from a clean server process; ``fork``: a copy
#: of the parent, which is unsafe when the parent runs threads, as torch's do).
START_METHODS = ("spawn", "forkserver", "fork")
#: Seconds a worker gets to exit after it is asked to, before it is killed.
STOP_TIMEOUT_S = 30.0
#: Seconds between two looks at the parent by the parent-pid watchdog (the fork start method).
WATCHDOG_INTERVAL_S = 0.5
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def describe_exit(exitcode: int | None) -> str:
    """A process's exit in words: ``"signal 9 (SIGKILL)"``, ``"exit status 3"``."""
    if exitcode is None:
        return "exit status unknown"
    if exitcode < 0:
        return f"signal {-exitcode} ({signal_name(-exitcode)})"
    return f"exit status {exitcode}"


class WorkerDied(RuntimeError):
    """The worker process running an item died before it answered (``exitcode`` as
    :attr:`multiprocessing.Process.exitcode`: ``-N`` for signal ``N``); ``times`` is how many
    times the item's worker died."""

    def __init__(self, exitcode: int | None, times: int = 1, detail: str = "") -> None:
        again = {1: "", 2: " twice"}.get(times, f" {times} times")
        super().__init__(f"worker process died{again}: {detail or describe_exit(exitcode)}")
        self.exitcode = exitcode
        self.times = times
        self.detail = detail

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.exitcode, self.times, self.detail))


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker (the ``__cause__`` of the exception
    re-raised in the parent)."""

    def __str__(self) -> str:
        return "\n" + str(self.args[0]) if self.args else ""


# --------------------------------------------------------------------------- in the worker


def _set_parent_death_signal() -> bool:
    """Ask the kernel to SIGKILL this process when its parent (thread) ends; ``False`` where
    there is no such call (not Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def watch_parent(parent: int, interval: float = WATCHDOG_INTERVAL_S) -> threading.Thread:
    """A daemon thread that ends this process (``os._exit``) once its parent is no longer
    ``parent`` (re-parented: the parent died); it looks every ``interval`` seconds."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)

    thread = threading.Thread(target=watch, name="optimlab-parent-watchdog", daemon=True)
    thread.start()
    return thread


def watch_lifeline(lifeline: Connection) -> threading.Thread:
    """A daemon thread that ends this process (``os._exit``) once ``lifeline``, the read end
    of a pipe whose write end only the pool's owner holds, reaches end-of-file: the owner
    closed it or died, however it died. No polling, and no race: an owner that died before
    the thread started is seen at once."""

    def watch() -> None:
        with contextlib.suppress(Exception):
            while True:
                lifeline.recv_bytes()  # nothing is ever sent: this waits for end-of-file
        os._exit(1)

    thread = threading.Thread(target=watch, name="optimlab-lifeline-watchdog", daemon=True)
    thread.start()
    return thread


def _die_with_owner(owner: int, lifeline: Connection, start_method: str) -> None:
    """Make this worker die with the process that owns the pool (``owner``).

    The kernel's parent-death signal (Linux) covers a worker whose parent is the owner
    (``spawn``, ``fork``); it is checked right after it is set, since the owner may have died
    before. A ``forkserver`` worker's parent is the fork server, which itself lives until its
    children are gone, so only the lifeline (:func:`watch_lifeline`) ends it; every worker has
    a lifeline except under ``fork``, whose children inherit every pipe of the owner (their
    siblings' too), where a watchdog of the parent pid (:func:`watch_parent`) stands in.
    """
    _set_parent_death_signal()
    if start_method == "fork":
        if os.getppid() != owner:
            os._exit(1)
        watch_parent(owner)
        return
    if start_method == "spawn" and os.getppid() != owner:
        os._exit(1)
    watch_lifeline(lifeline)


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


def _portable(error: BaseException) -> tuple[BaseException | None, str, str]:
    """``error`` as it can cross the pipe: the exception itself when it pickles and unpickles
    (and is an ``Exception``: a ``SystemExit`` must not end the parent), its one-line summary,
    and its traceback."""
    summary = f"{type(error).__name__}: {error}"
    tb = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    if not isinstance(error, Exception):
        return None, summary, tb
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return None, summary, tb
    return error, summary, tb


def _worker_main(conn: Connection, lifeline: Connection, threads: int, owner: int,
                 start_method: str) -> None:
    """A worker's life: die with the owner, warm up, then answer ``(fn, item)`` requests with
    ``(True, fn(item))`` or ``(False, error)`` until told to stop (``None``)."""
    _die_with_owner(owner, lifeline, start_method)
    for name in ("SIGINT", "SIGHUP"):  # a terminal's signals: the parent decides
        sig = getattr(signal, name, None)
        if sig is not None:
            signal.signal(sig, signal.SIG_IGN)
    import torch

    torch.set_num_threads(threads)
    _warm_up()
    while True:
        try:
            request = conn.recv()
        except EOFError:  # the parent is gone
            return
        except Exception as e:  # a request that does not unpickle here
            conn.send((False, _portable(e)))
            continue
        if request is None:
            return
        fn, item = request
        try:
            reply: tuple[bool, Any] = (True, fn(item))
        except BaseException as e:
            reply = (False, _portable(e))
        try:
            conn.send(reply)
        except Exception as e:  # a result that does not pickle
            conn.send((False, _portable(e)))
        del request, fn, item, reply


# --------------------------------------------------------------------------- in the parent


def _received_error(payload: tuple[BaseException | None, str, str]) -> BaseException:
    error, summary, tb = payload
    if error is None:
        error = RuntimeError(summary)
    error.__cause__ = RemoteTraceback(tb)
    return error


class _Worker:
    """One worker process, the parent's end of its pipe, and the write end of its lifeline
    (closed only once the process is gone)."""

    def __init__(self, process: Any, conn: Connection, lifeline: Connection) -> None:
        self.process, self.conn, self.lifeline = process, conn, lifeline

    def _release(self) -> None:
        self.conn.close()
        self.lifeline.close()

    def call(self, fn: Callable[[Any], Any], item: Any) -> tuple[str, Any]:
        """Run ``fn(item)`` in the worker: ``("ok", result)``, ``("error", exception)`` or
        ``("died", WorkerDied)``."""
        try:
            self.conn.send((fn, item))
        except (BrokenPipeError, ConnectionResetError, EOFError):
            return "died", WorkerDied(self.reap())
        except Exception as e:  # fn or item does not pickle: nothing was sent
            return "error", e
        try:
            ok, payload = self.conn.recv()
        except (EOFError, OSError):
            return "died", WorkerDied(self.reap())
        except Exception as e:  # a reply that does not unpickle here (read whole: in sync)
            return "error", RuntimeError(f"cannot read the worker's reply: "
                                         f"{type(e).__name__}: {e}")
        return ("ok", payload) if ok else ("error", _received_error(payload))

    def reap(self) -> int | None:
        """Wait for the (dead or dying) process and return its exit code."""
        self.process.join(STOP_TIMEOUT_S)
        if self.process.is_alive():  # its pipe broke but it lives on: end it
            self.process.kill()
            self.process.join(STOP_TIMEOUT_S)
        self._release()
        return self.process.exitcode

    def stop(self) -> None:
        """Ask the worker to exit; kill it if it does not within :data:`STOP_TIMEOUT_S`."""
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(None)
        self.process.join(STOP_TIMEOUT_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(STOP_TIMEOUT_S)
        self._release()


class ProcessExecutor:
    """A pool of ``workers`` processes, each with ``threads`` torch threads and warmed up
    before its first item; an :class:`~optimlab.lab.execution.Executor`.

    Each worker runs one item at a time. A worker that dies fails its item's future with
    :class:`WorkerDied` and is replaced by a fresh process for the next item (the runner
    loop, :func:`~optimlab.lab.execution.execute_all`, decides whether to retry). Workers start
    at the first items and last until :meth:`close` (after the items in flight finish) or
    :meth:`abort` (at once); use the pool as a context manager. They die with this process
    whatever ends it (see the module docstring).

    Args:
        workers: number of processes (default: one per available core).
        threads: torch threads per worker.
        start_method: ``"spawn"`` (default), ``"forkserver"`` or ``"fork"``
            (:data:`START_METHODS`).
    """

    def __init__(self, workers: int | None = None, threads: int = 1,
                 start_method: str = "spawn") -> None:
        if start_method not in START_METHODS:
            raise ValueError(f"start_method must be one of {', '.join(START_METHODS)}, got "
                             f"{start_method!r}")
        if workers is None:
            from .environment import available_cores
            workers = available_cores()
        self.workers = int(workers)
        self.slots = self.workers
        self.threads = threads
        self.start_method = start_method
        self._context = mp.get_context(start_method)
        self._jobs: queue.SimpleQueue[tuple[Callable[[Any], Any], Any, cf.Future[Any]] | None] \
            = queue.SimpleQueue()
        self._lock = threading.Lock()
        #: The serving threads, each with the event it sets as it ends. ``_shutdown`` waits on
        #: the events, not ``Thread.join``: a join interrupted by a signal handler's exception
        #: (Ctrl-C, Interrupted) marks a running thread as stopped in CPython 3.11 (it releases
        #: the lock the thread holds), so a later join would return at once.
        self._servers: list[tuple[threading.Thread, threading.Event]] = []
        self._live: set[_Worker] = set()
        self._closed = False
        self._aborted = False

    # -------------------------------------------------------------- the Executor protocol

    def submit(self, fn: Callable[[Any], Any], item: Any) -> cf.Future[Any]:
        """Start ``fn(item)`` in a worker (``fn`` and ``item`` must pickle; ``fn`` importable
        by name)."""
        if self._closed:
            raise RuntimeError("the process executor is closed")
        if not self._servers:
            atexit.register(self.abort)  # never leave workers to the interpreter's exit
            for i in range(self.workers):
                ended = threading.Event()
                thread = threading.Thread(target=self._serve, args=(ended,),
                                          name=f"optimlab-worker-{i}", daemon=True)
                self._servers.append((thread, ended))
                thread.start()
        future: cf.Future[Any] = cf.Future()
        self._jobs.put((fn, item, future))
        return future

    def close(self) -> None:
        """Stop the workers once the items running finish (items not started are
        cancelled). Interrupted while it waits (Ctrl-C, or SIGTERM/SIGHUP turned into
        :class:`~optimlab._interrupts.Interrupted`), it aborts instead (:meth:`abort`) and
        lets the interruption propagate: no worker or serving thread is left behind (a
        serving thread still stopping its worker at the interpreter's exit printed a
        traceback)."""
        try:
            self._shutdown(now=False)
        except BaseException:
            self._shutdown(now=True)
            raise

    def abort(self) -> None:
        """Kill the workers now (SIGKILL) and wait until they are gone; items running fail
        with :class:`WorkerDied`, items not started are cancelled. Nothing a worker was doing
        continues after this returns."""
        self._shutdown(now=True)

    def pids(self) -> list[int]:
        """The process ids of the live workers."""
        with self._lock:
            return [w.process.pid for w in self._live if w.process.pid is not None]

    def __enter__(self) -> ProcessExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------- the pool's threads

    def _start_worker(self) -> _Worker | None:
        """A fresh worker, started from the calling (serving) thread; ``None`` once the pool
        is aborted."""
        with self._lock:
            if self._aborted:
                return None
            ours, theirs = self._context.Pipe(duplex=True)
            life_r, life_w = self._context.Pipe(duplex=False)
            process = self._context.Process(
                target=_worker_main, name="optimlab-worker",
                args=(theirs, life_r, self.threads, os.getpid(), self.start_method))
            try:
                process.start()
            except BaseException:
                for end in (ours, theirs, life_r, life_w):
                    end.close()
                raise
            theirs.close()  # the child's ends: ours must not keep its pipes open
            life_r.close()
            worker = _Worker(process, ours, life_w)
            self._live.add(worker)
            return worker

    def _serve(self, ended: threading.Event) -> None:
        """One serving thread: takes jobs, runs each in its worker, replaces a dead worker;
        sets ``ended`` as it ends."""
        worker: _Worker | None = None
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    return
                fn, item, future = job
                if not future.set_running_or_notify_cancel():
                    continue
                if worker is None:
                    try:
                        worker = self._start_worker()
                    except Exception as e:  # cannot start a process (limits, memory)
                        future.set_exception(WorkerDied(None, detail=f"could not start a "
                                                        f"worker process: {e}"))
                        continue
                    if worker is None:
                        future.set_exception(cf.CancelledError())
                        continue
                try:
                    outcome, value = worker.call(fn, item)
                except Exception as e:  # a fault of the pool itself: the item learns of it
                    outcome, value = "error", e
                if outcome == "ok":
                    future.set_result(value)
                else:
                    future.set_exception(value)
                if outcome == "died":
                    with self._lock:
                        self._live.discard(worker)
                    worker = None
        finally:
            try:
                if worker is not None:
                    worker.stop()
                    with self._lock:
                        self._live.discard(worker)
            finally:
                ended.set()

    def _shutdown(self, now: bool) -> None:
        with self._lock:
            self._closed = True
            if now:
                self._aborted = True
            doomed = list(self._live) if now else []
        for w in doomed:
            with contextlib.suppress(OSError, ValueError):
                w.process.kill()
        while True:  # items not started
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job[2].cancel()
        for _ in self._servers:
            self._jobs.put(None)
        for thread, ended in self._servers:
            if thread is not threading.current_thread():
                ended.wait()
        for w in doomed:  # reaped, whichever thread got there first
            w.process.join(STOP_TIMEOUT_S)
            with contextlib.suppress(OSError):
                w.lifeline.close()
        self._servers = []
        atexit.unregister(self.abort)
