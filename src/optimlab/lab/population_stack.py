"""The stacked state of a population (:mod:`optimlab.lab.population`), private to it.

:class:`Stack`: the members in stack order, the stacked parameters, each param group's rows,
the optimizer and its schedule, and :meth:`Stack.compact`, which drops finished members;
:class:`Clipping`: each member's gradient clipping with per-member thresholds; helpers for
stacked batches and per-member norms.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .. import schedules
from .optimizers import build_optimizer

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .population import _Member as Member

__all__ = ["Clipping", "Stack", "broadcastable", "group_bounds", "in_dims", "member_part",
           "per_member_norms"]


class Clipping:
    """Each member's clipping, as its run clips (element values to ``clip_value``, then
    ``g_i <- g_i * min(1, c_i / (||g_i|| + 1e-6))``, ``clip_grad_norm_``'s formula), with
    per-member thresholds: tensors with the population axis (members of one population either
    all clip or none, :func:`~optimlab.lab.population_groups.group_key`)."""

    def __init__(self, members: Sequence[Member], stacked: Sequence[Tensor]) -> None:
        values = [m.config.clip_value for m in members]
        norms = [m.config.clip_norm for m in members]
        like = stacked[0]
        #: per stacked tensor, the members' ``clip_value`` broadcast against it
        self.value = None if values[0] is None else [
            broadcastable(torch.tensor(values, dtype=s.dtype, device=s.device), s)
            for s in stacked]
        self.norm = None if norms[0] is None else torch.tensor(norms, dtype=like.dtype,
                                                                device=like.device)

    def apply(self, grads: list[Tensor], raw: bool) -> tuple[Tensor, Tensor]:
        """Clip the stacked gradients in place; return the per-member norms ``(n, r)``: ``n``
        of the gradients before the global-norm clipping (after the value clipping), ``r``
        before any clipping (NaN where ``raw`` is false and it would cost a second pass)."""
        size = grads[0].shape[0]
        before = per_member_norms(grads, size) if raw or self.value is None else None
        if self.value is not None:
            for g, bound in zip(grads, self.value, strict=True):
                g.clamp_(min=-bound, max=bound)
            norms = per_member_norms(grads, size)
        else:
            assert before is not None
            norms = before
        if self.norm is not None:
            coef = torch.clamp(self.norm / (norms + 1e-6), max=1.0)
            for g in grads:
                g.mul_(broadcastable(coef, g))
        if before is None:
            before = torch.full_like(norms, math.nan)
        return norms, before


class Stack:
    """What a population steps: its members (in stack order), the stacked parameters, the
    groups' rows, the optimizer and its schedule, the clipping; and which rows of the batch
    stream (whose parts are the first members') are the members'.

    :meth:`compact` drops finished members: the stacked parameters and every optimizer state
    tensor with the group axis keep the rows of the members still training (``index_select``:
    exact copies, and the rules are elementwise, so the others' steps are unchanged); a new
    optimizer gets the old groups' keys and the selected states, and a new schedule continues
    at the same step."""

    def __init__(self, members: list[Member], stacked: list[Tensor],
                 bounds: list[tuple[int, int]], optimizer: torch.optim.Optimizer,
                 scheduler: schedules.ScheduledLR, name: str, hyper: dict[str, Any]) -> None:
        self.members, self.stacked, self.bounds = members, stacked, bounds
        self.optimizer, self.scheduler = optimizer, scheduler
        #: the optimizer's name and one member's hyperparameters (its constructor's flags,
        #: which all members share; the groups' keys give each group its values)
        self.name, self.hyper = name, hyper
        self.clipping = Clipping(members, stacked)
        self.rows: Tensor | None = None  # None: every row of the stream

    def rows_of(self, batch: Any) -> Any:
        """The members' rows of a stacked batch of the stream."""
        if self.rows is None or batch is None:
            return batch
        if isinstance(batch, tuple):
            return tuple(t.index_select(0, self.rows.to(t.device)) for t in batch)
        return batch.index_select(0, self.rows.to(batch.device))

    def compactable(self) -> bool:
        """Some member still trains (and the optimizer is not compiled: a new optimizer would
        compile again, which costs more than the finished members' rows)."""
        return (any(m.record is None for m in self.members)
                and not self.optimizer.defaults.get("fused"))

    def compact(self) -> None:
        """Keep only the members still training (class docstring)."""
        keep = [k for k, m in enumerate(self.members) if m.record is None]
        device = self.stacked[0].device
        index = torch.tensor(keep, device=device)
        stacked = [s.detach().index_select(0, index).requires_grad_(True)
                   for s in self.stacked]
        members = [self.members[k] for k in keep]
        for row, m in enumerate(members):
            for p, s in zip(m.params, stacked, strict=True):
                p.data = s.detach()[row]
        old = self.optimizer
        groups, bounds, states, kept_schedules, start = [], [], [], [], 0
        for group, (a, b), schedule in zip(old.param_groups, self.bounds,
                                           self.scheduler.schedules, strict=True):
            rows = [k - a for k in keep if a <= k < b]
            if not rows:
                continue
            kept_schedules.append(schedule)
            local = torch.tensor(rows, device=device)
            end = start + len(rows)
            views = [s.detach()[start:end] for s in stacked]
            groups.append({"params": views,
                           **{k: v for k, v in group.items() if k != "params"}})
            for p, view in zip(group["params"], views, strict=True):
                states.append((view, {
                    key: (v.index_select(0, local.to(v.device))
                          if isinstance(v, Tensor) and v.dim() and v.shape[0] == b - a else v)
                    for key, v in old.state.get(p, {}).items()}))
            for m in members[start:end]:
                m.group, m.group_size = len(bounds), end - start
            bounds.append((start, end))
            start = end
        optimizer = build_optimizer(self.name, groups, self.hyper)
        for view, state in states:
            if state:
                optimizer.state[view] = state
        for m in members:
            m.optimizer = optimizer
        # the groups' own schedules, continued: constructed at step k - 1, a scheduler steps
        # to k, where the old one was
        self.scheduler = schedules.ScheduledLR(optimizer, kept_schedules,
                                               last_epoch=self.scheduler.last_epoch - 1)
        self.optimizer, self.stacked, self.bounds = optimizer, stacked, bounds
        self.members = members
        kept = index if self.rows is None else self.rows.to(device).index_select(0, index)
        self.rows = kept
        self.clipping = Clipping(members, stacked)


def group_bounds(ids: list[int]) -> list[tuple[int, int]]:
    """The ``(start, end)`` of every run of equal consecutive ``ids``."""
    bounds, start = [], 0
    for k in range(1, len(ids) + 1):
        if k == len(ids) or ids[k] != ids[start]:
            bounds.append((start, k))
            start = k
    return bounds


def member_part(batch: Any, i: int) -> Any:
    """Member ``i``'s part of a stacked batch (:func:`~optimlab.lab.tasks.base.stack_batches`)."""
    if batch is None:
        return None
    if isinstance(batch, tuple):
        return tuple(t[i] for t in batch)
    return batch[i]


def in_dims(batch: Any) -> int | None:
    """vmap's ``in_dims`` for a stacked batch: ``None`` for ``None`` (nothing to map)."""
    return None if batch is None else 0


def per_member_norms(grads: list[Tensor], size: int) -> Tensor:
    """``||g_i||``: the L2 norm of member ``i``'s gradients over all tensors, shape ``(P,)``
    (per tensor, then over tensors, as ``torch.nn.utils.get_total_norm``)."""
    per_tensor = [torch.linalg.vector_norm(g.reshape(size, -1), dim=1) for g in grads]
    return torch.linalg.vector_norm(torch.stack(per_tensor, dim=1), dim=1)


def broadcastable(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1)))
