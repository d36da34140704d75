"""The stacked state of a population (:mod:`optimlab.lab.population`), private to it.

:class:`Layout`: where each parameter of a member lives in the population's flat buffers;
:class:`Stack`: the members in stack order, the flat buffers and the stacked parameters (views
of them), each param group's rows, the optimizer and its schedule, and :meth:`Stack.compact`,
which drops finished members; :class:`Clipping`: each member's gradient clipping with
per-member thresholds; helpers for stacked batches and per-member norms.
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

__all__ = ["Clipping", "Layout", "Stack", "group_bounds", "in_dims", "member_part",
           "per_member_norms"]


class Layout:
    """The members' parameters laid out in flat buffers: buffer ``b`` (one per dtype) is a
    ``(P, N_b)`` tensor whose row ``i`` holds member ``i``'s parameters of that dtype, one
    after the other; parameter ``j`` of every member is the view
    ``buffers[b_j][:, o_j:o_j + n_j].view(P, *shape_j)``.

    Why flat: the optimizer's rules are elementwise, so its step over the buffers is its step
    over the parameters, with one tensor per dtype instead of one per parameter. On the
    2-core CPU an Adam step over 16 members of mlp-digits took 0.19 ms over one buffer against
    0.24 ms over the six stacked parameters (torch 2.13, 2 threads)."""

    def __init__(self, params: Sequence[Tensor]) -> None:
        dtypes = list(dict.fromkeys(p.dtype for p in params))
        widths = [0] * len(dtypes)
        #: per parameter: (buffer, first column, shape)
        self.segments: list[tuple[int, int, torch.Size]] = []
        for p in params:
            b = dtypes.index(p.dtype)
            self.segments.append((b, widths[b], p.shape))
            widths[b] += p.numel()

    def flatten(self, stacked: Sequence[Tensor]) -> list[Tensor]:
        """New buffers holding the stacked ``(P, *shape_j)`` tensors, in this layout."""
        size = stacked[0].shape[0]
        parts: dict[int, list[Tensor]] = {}
        for (b, _, _), t in zip(self.segments, stacked, strict=True):
            parts.setdefault(b, []).append(t.reshape(size, -1))
        return [torch.cat(parts[b], dim=1) for b in sorted(parts)]

    def views(self, buffers: Sequence[Tensor]) -> list[Tensor]:
        """Each parameter's ``(P, *shape)`` view of ``buffers``."""
        return [buffers[b][:, start:start + shape.numel()].view(-1, *shape)
                for b, start, shape in self.segments]


class Clipping:
    """Each member's clipping, as its run clips (element values to ``clip_value``, then
    ``g_i <- g_i * min(1, c_i / (||g_i|| + 1e-6))``, ``clip_grad_norm_``'s formula), with
    per-member thresholds: tensors with the population axis (members of one population either
    all clip or none, :func:`~optimlab.lab.population_groups.group_key`)."""

    def __init__(self, members: Sequence[Member], buffers: Sequence[Tensor]) -> None:
        values = [m.config.clip_value for m in members]
        norms = [m.config.clip_norm for m in members]
        like = buffers[0]
        #: per buffer, the members' ``clip_value`` as a column ``(P, 1)``
        self.value = None if values[0] is None else [
            torch.tensor(values, dtype=b.dtype, device=b.device).unsqueeze(1) for b in buffers]
        self.norm = None if norms[0] is None else torch.tensor(norms, dtype=like.dtype,
                                                                device=like.device)

    def apply(self, grads: list[Tensor], flat: list[Tensor], raw: bool) -> tuple[Tensor, Tensor]:
        """Clip the gradients in place: ``flat`` the gradient buffers, ``grads`` each
        parameter's view of them (:class:`Layout`). Return the per-member norms ``(n, r)``:
        ``r`` before any clipping, per parameter then over parameters as the sequential run
        measures it (NaN where ``raw`` is false); ``n`` after the value clipping, before the
        global-norm clipping, to screen for non-finite gradients: per parameter where it
        scales the gradients (the sequential run's formula), else over the buffers (cheaper,
        and finite exactly when the other is, barring an overflow of the sum of squares)."""
        size = flat[0].shape[0]
        before = per_member_norms(grads, size) if raw else None
        if self.value is not None:
            for g, bound in zip(flat, self.value, strict=True):
                g.clamp_(min=-bound, max=bound)
        if before is not None and self.value is None:
            norms = before
        elif self.norm is not None:
            norms = per_member_norms(grads, size)
        else:
            norms = per_member_norms(flat, size)
        if self.norm is not None:
            coef = torch.clamp(self.norm / (norms + 1e-6), max=1.0).unsqueeze(1)
            for g in flat:
                g.mul_(coef)
        if before is None:
            before = torch.full_like(norms, math.nan)
        return norms, before


class Stack:
    """What a population steps: its members (in stack order), the flat parameter buffers and
    each parameter's stacked view of them (:class:`Layout`), the groups' rows, the optimizer
    (whose param group ``j`` holds rows ``a_j..b_j`` of every buffer) and its schedule, the
    clipping; and which rows of the batch stream (whose parts are the first members') are the
    members'.

    :meth:`compact` drops finished members: the buffers and every optimizer state tensor with
    the group axis keep the rows of the members still training (``index_select``: exact
    copies, and the rules are elementwise, so the others' steps are unchanged); a new optimizer
    gets the old groups' keys and the selected states, and a new schedule continues at the
    same step."""

    def __init__(self, members: list[Member], layout: Layout, buffers: list[Tensor],
                 bounds: list[tuple[int, int]], optimizer: torch.optim.Optimizer,
                 scheduler: schedules.ScheduledLR, name: str, hyper: dict[str, Any]) -> None:
        self.members, self.layout, self.bounds = members, layout, bounds
        self.buffers, self.stacked = buffers, layout.views(buffers)
        self.optimizer, self.scheduler = optimizer, scheduler
        #: the optimizer's name and one member's hyperparameters (its constructor's flags,
        #: which all members share; the groups' keys give each group its values)
        self.name, self.hyper = name, hyper
        self.clipping = Clipping(members, buffers)
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
        device = self.buffers[0].device
        index = torch.tensor(keep, device=device)
        buffers = [b.index_select(0, index) for b in self.buffers]
        stacked = self.layout.views(buffers)
        members = [self.members[k] for k in keep]
        for row, m in enumerate(members):
            for p, s in zip(m.params, stacked, strict=True):
                p.data = s[row]
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
            views = [b[start:end] for b in buffers]
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
        self.optimizer, self.bounds = optimizer, bounds
        self.buffers, self.stacked = buffers, stacked
        self.members = members
        kept = index if self.rows is None else self.rows.to(device).index_select(0, index)
        self.rows = kept
        self.clipping = Clipping(members, buffers)


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
