"""One lab run on several processes: ``optimlab run`` under ``torchrun`` trains with DDP.

Usage (one machine, N processes; N GPUs with CUDA, else N CPU processes)::

    torchrun --nproc-per-node N --no-python optimlab run --task cifar-resnet --optimizer adamw

``torchrun`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; with ``WORLD_SIZE > 1``
:func:`torchrun_session` joins the process group (NCCL with CUDA, each process on GPU
``LOCAL_RANK``; gloo on CPU). Every process runs the same run, from the same seed:

* the task's model is wrapped in ``DistributedDataParallel`` (:func:`prepare`), which
  all-reduces (averages) the gradients in the backward pass, so every process takes the same
  optimizer step and the replicas stay equal;
* every process draws the same global batch and trains on its contiguous share of it
  (:func:`shard_loss`), its loss weighted by ``share / (batch / N)``, so that the averaged
  gradient is the global batch's mean gradient also when the batch does not split evenly;
* the loss the run records and judges divergence by is the global batch's
  (:func:`global_loss`: one all-reduce of a scalar per closure call), the same on every
  process, so every process stops at the same step; evaluations (on full splits) are
  identical on every process, as are their decisions;
* gradient clipping (``--clip``) acts on the all-reduced gradients in the closure: the
  single process's global norm;
* rank 0 (the leader) runs the command as without ``torchrun`` (store, record, printing);
  each run it executes is first sent to the others (:func:`announce`), which execute it
  and discard their records (:meth:`Session.follow`). A run already stored is not run again,
  on any rank.

So a run on N processes with batch ``B`` is the single-process run with batch ``B``, up to
floating-point summation order (the batch mean is taken per share, then across processes);
its record says so only by its timings. SAM's ascent is each process's own (``model`` is the
DDP module, see :class:`optimlab.SAM`).

Refused (one clear line, before any step): a wall-clock budget (``--seconds``: processes would
stop at different steps), sharpness measurement (Hessian-vector products through DDP), and a
batch smaller than the number of processes. Optimizers whose closure returns the loss only
(Newton-type methods that differentiate it themselves) are not supported: the run fails.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

__all__ = ["COLLECTIVE_TIMEOUT_S", "Session", "active", "announce", "global_loss", "launched",
           "prepare", "run_device", "shard_loss", "torchrun_session"]

#: Seconds a process waits in a collective for the others before it fails (a slow evaluation
#: on one process holds up the others' next step; a dead process must not hang them forever).
COLLECTIVE_TIMEOUT_S = 1800


@dataclass
class Session:
    """This process's place in a ``torchrun`` launch (see the module docstring)."""

    rank: int
    world: int
    device: torch.device

    @property
    def is_leader(self) -> bool:
        """Whether this process runs the command (rank 0)."""
        return self.rank == 0

    def follow(self) -> int:
        """Execute every run the leader announces until it says the command is done; the
        exit status (0: this process's records are the leader's, which it stores)."""
        from .runs import execute

        while (config := _broadcast(None)) is not None:
            execute(config, device=self.device, threads=torch.get_num_threads())
        return 0


_session: Session | None = None


def launched() -> bool:
    """Whether this process is one of several started by ``torchrun`` (``WORLD_SIZE > 1``)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def active() -> Session | None:
    """The session of :func:`torchrun_session` while it is open, else ``None``."""
    return _session


@contextlib.contextmanager
def torchrun_session() -> Iterator[Session | None]:
    """Join the ``torchrun`` process group for the duration of a command (``None`` when the
    process was not started by ``torchrun`` with several processes); at the end the leader
    tells the others that no more runs come, and the group is left."""
    global _session
    if not launched():
        yield None
        return
    import torch.distributed as dist

    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except (KeyError, ValueError) as e:
        raise ValueError(f"WORLD_SIZE is set but RANK or LOCAL_RANK is missing or not an "
                         f"integer ({e}): start the processes with torchrun") from None
    if torch.cuda.is_available():
        backend, device = "nccl", torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        backend, device = "gloo", torch.device("cpu")
    dist.init_process_group(backend, rank=rank, world_size=world,
                            timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    _session = Session(rank=rank, world=world, device=device)
    try:
        yield _session
    finally:
        try:
            if _session.is_leader:
                _broadcast(None)  # the end: the followers' loops return
        finally:
            _session = None
            dist.destroy_process_group()


def _broadcast(obj: Any) -> Any:
    """The leader's ``obj``, on every process."""
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ----- hooks of a run (optimlab.lab.runs): each does nothing outside a session -------------


def announce(config: Any) -> None:
    """The leader sends the run it is about to execute (a resolved ``RunConfig``) to the
    others, which execute it alongside."""
    if _session is not None and _session.is_leader:
        _broadcast(config)


def run_device(device: torch.device) -> torch.device:
    """Where a run executes: this process's device in a session, else ``device``."""
    return _session.device if _session is not None else device


def prepare(task: Any, config: Any) -> None:
    """After the task's setup: refuse what cannot run on several processes, then wrap the
    task's model in ``DistributedDataParallel`` (its loss and evaluations go through it)."""
    if _session is None:
        return
    world = _session.world
    if config.seconds is not None:
        raise ValueError(f"a wall-clock budget (seconds={config.seconds}) cannot run on "
                         f"{world} processes, which would stop at different steps: give "
                         "--steps, --examples or --epochs instead")
    if config.sharpness:
        raise ValueError("sharpness is not measured on several processes (Hessian-vector "
                         "products through DDP): run without --sharpness, or without torchrun")
    size = int(task.n_train) if config.batch_size == "full" else int(config.batch_size)
    if size < world:
        raise ValueError(f"a batch of {size} examples cannot be shared by {world} processes: "
                         f"use a batch size of at least {world}")
    from torch.nn.parallel import DistributedDataParallel

    ids = [_session.device.index] if _session.device.type == "cuda" else None
    task.model = DistributedDataParallel(task.model, device_ids=ids)


def shard_loss(task: Any, batch: Any) -> torch.Tensor:
    """``task.loss`` of this process's contiguous share of ``batch`` (a tensor, or a tuple or
    list of tensors sharing their first dimension), times ``share * N / len(batch)`` (exactly
    1 when the batch splits evenly): DDP's average of these gradients is the whole batch's
    mean gradient. Outside a session, ``task.loss(batch)``."""
    if _session is None:
        return task.loss(batch)
    parts = list(batch) if isinstance(batch, (tuple, list)) else [batch]
    if not parts or not all(isinstance(t, torch.Tensor) and t.dim() > 0 for t in parts):
        raise ValueError(f"{task.info.name}'s batches are not tensors with a batch dimension: "
                         "they cannot be shared by several processes; run without torchrun")
    n = int(parts[0].shape[0])
    bounds = [n * r // _session.world for r in range(_session.world + 1)]
    lo, hi = bounds[_session.rank], bounds[_session.rank + 1]
    share = [t[lo:hi] for t in parts]
    local = task.loss(type(batch)(share) if isinstance(batch, (tuple, list)) else share[0])
    weight = (hi - lo) * _session.world / n
    return local if weight == 1 else local * weight


def global_loss(loss: torch.Tensor) -> torch.Tensor:
    """The whole batch's loss from each process's :func:`shard_loss` (detached; one
    all-reduce); outside a session, ``loss`` itself."""
    if _session is None:
        return loss
    import torch.distributed as dist

    total = loss.detach().clone()
    dist.all_reduce(total)
    return total / _session.world
