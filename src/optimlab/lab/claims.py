"""Claims: which process executes which piece of shared work, so that any number of processes
(on one machine or several) share a study or a tuning without doing anything twice.

A *claim* is a row in the results store (:meth:`~optimlab.lab.store.ResultStore.claim`):
a key (a run's key; ``"trial:<study>#<index>"`` for a tuning trial), the :class:`Owner`
holding it and the time its *lease* ends. A key is claimable when its work is not finished
and no other owner holds a live lease on it; a lease is live until it expires, and an owner
keeps its leases alive with a :class:`Heartbeat` (a thread renewing them every
``lease_s / 4`` seconds) while the work runs. A lease is taken over when it has expired
(the owner stopped renewing: it was killed, its machine died, or it was suspended for longer
than the lease) or, at once, when its owner ran on this machine and is gone (its pid does
not exist, is a zombie, or belongs to a newer process). The expiry compares wall clocks, so
machines sharing a store should keep their clocks synchronised (NTP) to well within a lease.

:func:`execute_shared` is the loop every process runs: claim as much work as it has free
slots, execute it through :func:`optimlab.lab.execution.execute_all` (claiming the next piece
as each one finishes), then wait for the work other live owners hold, reporting it as it
finishes and taking over any lease that lapses, until everything is finished. Every process
therefore ends with all the work stored, whichever process did each piece.

An item may stand for several keys (:class:`BundledWork`: a population of a study's runs that
train as one program): its members are claimed together, those another process holds are left
out of it, and its keys are all released when it finishes.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Protocol, TypeVar

from .execution import Executor, execute_all

__all__ = ["LEASE_SECONDS", "POLL_SECONDS", "BundledWork", "Claim", "Heartbeat", "Owner",
           "SharedWork", "execute_shared"]

#: A claim not renewed for this long may be taken over (a heartbeat renews it every quarter).
LEASE_SECONDS = 60.0
#: How often a process waiting for other processes' work looks at the store.
POLL_SECONDS = 0.5

T = TypeVar("T")
R = TypeVar("R")


# --------------------------------------------------------------------------- owners


@cache
def this_host() -> str:
    """This machine's identity: the host name, plus on Linux the boot id and the pid
    namespace, so that two containers with one host name do not take each other's pids for
    their own."""
    parts = [socket.gethostname()]
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            parts.append(f.read().strip()[:8])
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    except OSError:
        pass
    return "|".join(parts)


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """``(state, start time in clock ticks since boot)`` of ``pid`` from ``/proc`` (Linux),
    ``None`` where there is no ``/proc`` or no such process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    rest = text[text.rfind(")") + 2:].split()  # the command name may hold spaces
    return rest[0], rest[19]


def process_start(pid: int) -> str:
    """An opaque stamp of when process ``pid`` started (``""`` where unknown): with the pid,
    it tells a process from a later one that reuses its pid."""
    stat = _proc_stat(pid)
    return stat[1] if stat is not None else ""


def process_alive(pid: int, started: str = "") -> bool:
    """Whether process ``pid`` of this machine exists, is not a zombie, and (when ``started``
    is given and can be checked) is the process that started then."""
    stat = _proc_stat(pid)
    if stat is not None:
        return stat[0] != "Z" and (not started or stat[1] == started)
    if os.path.isdir("/proc/self"):
        return False  # /proc exists, the pid does not
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, another user's
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class Owner:
    """A process that holds claims: its machine (:func:`this_host`), pid, start stamp
    (:func:`process_start`) and a random token (two owners in one process differ)."""

    host: str
    pid: int
    started: str
    token: str

    @classmethod
    def current(cls) -> Owner:
        """A new owner for this process."""
        pid = os.getpid()
        return cls(this_host(), pid, process_start(pid), secrets.token_hex(6))

    @property
    def id(self) -> str:
        """The owner as one string (the store's ``owner`` column)."""
        return f"{self.host}/{self.pid}/{self.started}/{self.token}"

    def describe(self) -> str:
        """``"pid 123 on host"`` for messages."""
        return f"pid {self.pid} on {self.host.split('|')[0]}"

    def is_dead(self) -> bool:
        """Whether this owner is known to be gone: it ran on this machine and its process no
        longer exists (an owner on another machine is never known dead: its lease expires)."""
        return self.host == this_host() and not process_alive(self.pid, self.started)


@dataclass(frozen=True)
class Claim:
    """A claim as stored: the key, its holder and when the lease ends (seconds since the
    epoch)."""

    key: str
    owner: Owner
    expires: float

    def live(self, now: float | None = None) -> bool:
        """The lease has not expired and the holder is not known dead."""
        now = time.time() if now is None else now
        return self.expires > now and not self.owner.is_dead()


# --------------------------------------------------------------------------- heartbeat


class ClaimStore(Protocol):
    """What claiming needs from a results store (:class:`~optimlab.lab.store.ResultStore`
    has it)."""

    def claim(self, keys: Sequence[str], owner: Owner, lease_s: float,
              limit: int | None = None) -> list[str]: ...

    def renew(self, owner: Owner, lease_s: float) -> set[str]: ...

    def release(self, owner: Owner, keys: Sequence[str] | None = None) -> None: ...

    def holders(self, keys: Sequence[str]) -> dict[str, Claim]: ...

    def spooled(self) -> int: ...

    def flush(self) -> None: ...


class Heartbeat:
    """Keeps ``owner``'s leases alive from a daemon thread while the ``with`` block runs
    (renewing them every ``lease_s / 4`` seconds), and releases whatever it still holds at the
    end, so that an interrupted process's work is taken over at once. A renewal the store
    cannot make (locked) is tried again at the next beat; ``held`` is what the last renewal
    found still held."""

    def __init__(self, store: ClaimStore, owner: Owner, lease_s: float = LEASE_SECONDS
                 ) -> None:
        self.store, self.owner, self.lease_s = store, owner, float(lease_s)
        self.held: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="optimlab-heartbeat",
                                        daemon=True)

    def _beat(self) -> None:
        every = max(self.lease_s / 4, 0.05)
        while not self._stop.wait(every):
            try:
                self.held = self.store.renew(self.owner, self.lease_s)
            except Exception:  # a locked or failing store: try again at the next beat
                continue

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(Exception):  # if not, the leases expire
            self.store.release(self.owner)


# --------------------------------------------------------------------------- the shared loop


class SharedWork(Protocol[T, R]):
    """Work that several processes share, item by item (runs of a study, trials of a
    tuning). Keys name items in the store's claims."""

    noun: str  # "runs", "trials": for messages

    def pending(self, running: set[str]) -> list[tuple[str, T]]:
        """The items not finished yet and not ``running`` here, in the order to start them
        (reads the store: what other processes finished is left out)."""
        ...

    def accept(self, key: str, item: T) -> bool:
        """Called once ``key`` is claimed, before ``item`` runs: ``False`` when it turns out
        finished after all (its claim is then released)."""
        ...

    def finish(self, key: str, item: T, result: R) -> bool:
        """Store ``item``'s result (the loop then ends its claim); ``False`` when the result
        does not count (its claim was lost to another process, which redoes it)."""
        ...

    def observe(self) -> None:
        """Report items other processes finished since the last call (progress)."""
        ...

    def failed(self, item: T, error: BaseException) -> R:
        """The result of an item that failed (its worker died twice, or ``fn`` raised): it is
        stored like any result; raising stops the loop (see
        :func:`~optimlab.lab.execution.execute_all`)."""
        ...


class BundledWork(SharedWork[T, R], Protocol):
    """Shared work some of whose items stand for several keys (a population of runs). Such an
    item is claimed member by member; the members another process holds are left out of it
    (:meth:`narrowed`), and all its keys are released when it finishes. ``pending`` leaves out
    items any of whose members are in ``running``; ``finish`` stores every member's result."""

    def members(self, key: str, item: T) -> tuple[str, ...]:
        """The keys ``item`` stands for, in order (``(key,)`` for an item of one)."""
        ...

    def narrowed(self, key: str, item: T, keys: Sequence[str]) -> tuple[str, T]:
        """``item`` with only the members ``keys`` (a non-empty subset of its members, in
        their order), and its key."""
        ...


def _claim_items(work: SharedWork[T, R], store: ClaimStore, owner: Owner, lease_s: float,
                 running: dict[str, T], limit: int) -> list[tuple[str, T]]:
    """Claim up to ``limit`` pending items (skipping those found finished on claiming).
    ``running`` maps every key in flight (each member of a bundle) to its item."""
    items: list[tuple[str, T]] = []
    members = getattr(work, "members", None)
    while len(items) < limit:
        pending = work.pending(set(running))
        if not pending:
            break
        if members is not None and any(len(members(k, it)) > 1 for k, it in pending):
            got_items = _claim_bundles(work, store, owner, lease_s, pending, running,
                                       limit - len(items))
            if not got_items:
                break
            items.extend(got_items)
            continue
        got = store.claim([k for k, _ in pending], owner, lease_s, limit=limit - len(items))
        if not got:
            break
        by_key = dict(pending)
        refused = []
        for key in got:
            if work.accept(key, by_key[key]):
                running[key] = by_key[key]
                items.append((key, by_key[key]))
            else:
                refused.append(key)
        if not refused:
            break
        store.release(owner, refused)
    return items


def _claim_bundles(work: SharedWork[T, R], store: ClaimStore, owner: Owner, lease_s: float,
                   pending: list[tuple[str, T]], running: dict[str, T], limit: int
                   ) -> list[tuple[str, T]]:
    """One round of claiming for work with bundles: the first ``limit`` pending items with a
    member no other process holds, each claimed for the members granted (none granted: left
    for the next round). Two store transactions: who holds what, then the claim."""
    members = work.members  # type: ignore[attr-defined]
    wanted = [(k, it, members(k, it)) for k, it in pending]
    held = store.holders([m for _, _, ms in wanted for m in ms])
    free = [(k, it, [m for m in ms if m not in held or held[m].owner.id == owner.id])
            for k, it, ms in wanted]
    chosen = [(k, it, ms, f) for (k, it, ms), (_, _, f) in zip(wanted, free, strict=True)
              if f][:limit]
    got = set(store.claim([m for *_, f in chosen for m in f], owner, lease_s))
    items: list[tuple[str, T]] = []
    refused: list[str] = []
    for k, it, ms, _ in chosen:
        granted = [m for m in ms if m in got]
        if not granted:
            continue
        if len(granted) < len(ms):
            k, it = work.narrowed(k, it, granted)  # type: ignore[attr-defined]
        if work.accept(k, it):
            running.update((m, it) for m in granted)
            items.append((k, it))
        else:
            refused.extend(granted)
    if refused:
        store.release(owner, refused)
    return items


def execute_shared(work: SharedWork[T, R], fn: Callable[[T], R], executor: Executor,
                   store: ClaimStore, *, lease_s: float = LEASE_SECONDS,
                   poll_s: float = POLL_SECONDS, message: Callable[[str], None] | None = None,
                   progress: Callable[[T, R], None] | None = None) -> int:
    """Execute ``work`` together with any other process doing the same; returns the number
    of keys this process executed (of the items ``work.finish`` counted; an item of
    :class:`BundledWork` counts its members).

    Claims as many items as ``executor`` has slots (a bundle is one item), runs them through
    :func:`~optimlab.lab.execution.execute_all` (claiming one more as each finishes), then
    waits for the items other live processes hold (``message`` says which, ``work.observe``
    reports them as they finish), claiming any whose lease lapses, until nothing is pending.
    ``progress(item, result)`` follows each item this process ran. Stops claiming when the
    store had to spool a result (its database stayed locked): the items in flight finish,
    then :meth:`ClaimStore.flush` imports the spool or raises.
    """
    owner = Owner.current()
    say = message or (lambda text: None)
    running: dict[str, T] = {}  # every key in flight (each member of a bundle) -> its item
    key_of: dict[int, tuple[str, tuple[str, ...]]] = {}  # id(item) -> key, members
    ran = 0
    slots = max(1, int(getattr(executor, "slots", 1)))
    members = getattr(work, "members", lambda k, it: (k,))

    def claim(limit: int) -> list[T]:
        claimed = _claim_items(work, store, owner, lease_s, running, limit)
        for k, item in claimed:
            key_of[id(item)] = (k, tuple(members(k, item)))
            running.setdefault(k, item)
        return [item for _, item in claimed]

    def sink(item: T, result: R) -> None:
        nonlocal ran
        k, keys = key_of.pop(id(item))
        for m in (k, *keys):
            running.pop(m, None)
        if work.finish(k, item, result):
            ran += len(keys)
        if not store.spooled():  # (a locked database: the claim lapses, or ends at the exit)
            store.release(owner, list(dict.fromkeys((k, *keys))))

    def then(item: T, result: R) -> list[T]:
        if store.spooled():
            return []  # the database is locked: finish what runs, then stop
        try:
            return claim(1)
        except Exception:  # the store is busy: the waiting loop below tries again
            return []

    def report(count: int, total: int, item: T, result: R) -> None:
        if progress is not None:
            progress(item, result)

    with Heartbeat(store, owner, lease_s):
        waiting_for: frozenset[str] = frozenset()
        while True:
            if store.spooled():
                store.flush()  # imports the spooled results, or raises saying where they are
            items = claim(slots)
            if items:
                execute_all(items, fn, executor, sink=sink, then=then, progress=report,
                            failed=work.failed)
                waiting_for = frozenset()
                continue
            work.observe()
            pending = [k for k, _ in work.pending(set())]
            if not pending:
                return ran
            holders = store.holders(pending)
            who = frozenset(c.owner.describe() for c in holders.values())
            if who and who != waiting_for:
                say(f"waiting for {len(holders)} {work.noun} that other processes are "
                    f"running ({', '.join(sorted(who))}); their results are used as they "
                    "finish")
                waiting_for = who
            time.sleep(poll_s)
