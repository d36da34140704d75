"""Opt-in gradient-health telemetry for any ``torch.optim`` optimizer (optimlab's included).

:class:`Telemetry` attaches to an optimizer through torch's step hooks
(``register_step_pre_hook`` / ``register_step_post_hook``) and measures, at every step:

* the gradient norm, globally, per parameter group and per parameter ("layer");
* the update norm ``||p_after - p_before||`` and the update-to-parameter ratio
  ``||p_after - p_before|| / ||p_before||``, globally, per group and per layer;
* how many gradient tensors held inf or NaN, and whether the step was skipped;
* whether the step clipped the gradient, and the running fraction of clipped steps.

It is cheap: norms are computed with torch's ``_foreach_norm`` (one launch per device/dtype),
everything stays a tensor on the device during the step, and nothing is synchronized with the
host until a record is read: :meth:`Telemetry.last` syncs once for the whole dict, and
:attr:`Telemetry.history` once for all the steps not read yet. It never modifies parameters,
gradients or optimizer state, so the optimization trajectory is bit-identical with and without
it.

Memory: ``track_updates=True`` (default) keeps one extra copy of the parameters (the snapshot
taken before each step); ``track_updates=False`` drops it, and with it the update statistics.

Example::

    tel = Telemetry(opt, model=model)          # or: with Telemetry(opt, model) as tel: ...
    for x, y in data:
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    tel.last()["grad_norm"], tel.summary()["clipped_fraction"]
    vanishing_exploding(tel.history)           # {"vanishing": [...], "exploding": [...], ...}
    tel.close()

Record keys (a flat ``dict[str, float]``, ``"step"`` is an ``int``)::

    step, grad_norm, nonfinite_grads, skipped,       # skipped: see below
    update_norm, param_norm, update_ratio,          # track_updates=True
    clipped, clipped_fraction,                      # when a clipping threshold is known
    group{g}/grad_norm, group{g}/update_norm, group{g}/update_ratio,
    layer/{name}/grad_norm, layer/{name}/update_ratio   # per_layer=True

Layer names come from ``model.named_parameters()`` when a model is given, else
``group{g}.param{i}``. Parameters without a ``.grad`` at a step have no layer entry that step.
``nonfinite_grads`` counts gradient tensors whose norm is inf or NaN. ``skipped`` is 1.0 when
``optimizer.skipped_steps`` grew during the step (optimlab, ``nonfinite="skip"``); for optimizers
without that counter it is 1.0 when no parameter moved (``track_updates=True`` only).
``step`` counts ``step()`` calls since the telemetry was attached.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from . import ops

__all__ = ["Telemetry", "vanishing_exploding"]

_HALF = (torch.float16, torch.bfloat16)


def _stat_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


class Telemetry:
    """Gradient-health statistics of every ``optimizer.step()``, gathered through step hooks.

    Args:
        optimizer: any ``torch.optim.Optimizer`` (optimlab optimizers included).
        model: optional module whose ``named_parameters()`` name the per-layer entries.
        clip_max_norm: flag a step as clipped when the global 2-norm of the gradients that
            ``step()`` receives exceeds this (the condition of ``clip_grad_norm_``:
            ``norm + 1e-6 > max_norm``). When ``None``, an optimlab ``clip_by_global_norm`` rule
            in the optimizer is found and its ``optimizer.info["grad_norm"]`` is compared with
            its ``max_norm``; with neither, ``clipped`` is not reported. If you call
            ``clip_grad_norm_`` yourself before ``step()``, the hooks see already-clipped
            gradients: do not use ``clip_max_norm`` then.
        per_layer: report per-parameter entries (``layer/{name}/...``).
        track_updates: measure the update (costs one extra copy of the parameters).
        every: record only every ``every``-th step (the others cost nothing).
        keep_history: keep every record for :attr:`history` (off: only the last one is kept).

    Use :meth:`close` (or ``with Telemetry(...) as tel:``) to remove the hooks and free the
    snapshot. A step that raises records nothing; a step that is never called (e.g. skipped by
    ``GradScaler``) records nothing either.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        model: nn.Module | None = None,
        *,
        clip_max_norm: float | None = None,
        per_layer: bool = True,
        track_updates: bool = True,
        every: int = 1,
        keep_history: bool = True,
    ) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"Telemetry: expected a torch.optim.Optimizer, got {optimizer!r}")
        if clip_max_norm is not None and not (float(clip_max_norm) > 0):
            raise ValueError(f"clip_max_norm must be > 0, got {clip_max_norm!r}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int, got {every!r}")
        self.optimizer = optimizer
        self.clip_max_norm = None if clip_max_norm is None else float(clip_max_norm)
        self.per_layer = bool(per_layer)
        self.track_updates = bool(track_updates)
        self.every = every
        self.keep_history = bool(keep_history)
        self._names: dict[int, str] = (
            {id(p): n for n, p in model.named_parameters()} if model is not None else {}
        )
        self.steps_seen = 0  # every step() call, recorded or not
        self._recorded = 0
        self._active = False
        self._sig: tuple[Any, ...] | None = None
        self._buckets: list[tuple[list[int], list[Tensor]]] = []  # (flat indices, snapshots)
        self._pnorm: list[Tensor] = []
        self._skipped_before: int | None = None
        self._info_before: Tensor | None = None
        self._pending: list[tuple[int, list[str], Tensor]] = []
        self._history: list[dict[str, Any]] = []
        self._last: tuple[int, list[str], Tensor] | None = None
        # running totals, as tensors (no sync): clipped, clip-known steps, nonfinite steps,
        # nonfinite tensors, skipped steps
        self._totals: Tensor | None = None
        self._indices: dict[tuple[Any, ...], Tensor] = {}
        self._handles = [
            optimizer.register_step_pre_hook(self._pre_hook),
            optimizer.register_step_post_hook(self._post_hook),
        ]

    # ----- lifetime ------------------------------------------------------------------------
    def close(self) -> None:
        """Remove the hooks and free the parameter snapshot (records stay readable)."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self._buckets = []
        self._indices = {}
        self._pnorm = []
        self._sig = None
        self._active = False

    @property
    def closed(self) -> bool:
        return not self._handles

    def __enter__(self) -> Telemetry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- hooks ---------------------------------------------------------------------------
    def _params(self) -> list[Tensor]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def _pre_hook(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        self.steps_seen += 1
        self._active = (self.steps_seen - 1) % self.every == 0
        if not self._active:
            return
        self._skipped_before = getattr(optimizer, "skipped_steps", None)
        info = getattr(optimizer, "info", None)
        self._info_before = info.get("grad_norm") if isinstance(info, Mapping) else None
        if not self.track_updates:
            return
        with torch.no_grad():
            params = self._params()
            sig = tuple((id(p), p.shape, p.dtype, p.device) for p in params)
            if sig != self._sig:  # first step, or the parameters changed: new snapshot buffers
                kinds: dict[tuple[torch.device, torch.dtype], list[int]] = {}
                for i, p in enumerate(params):
                    kinds.setdefault((p.device, p.dtype), []).append(i)
                self._buckets = [
                    (idx, [torch.empty_like(params[i], memory_format=torch.preserve_format)
                           for i in idx])
                    for idx in kinds.values()
                ]
                self._sig = sig
            self._pnorm = []
            for idx, snap in self._buckets:
                ps = [params[i].detach() for i in idx]
                self._pnorm.extend(_norms(ps))
                ops.copy_(snap, ps)

    def _post_hook(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        if not self._active:
            return
        self._active = False
        with torch.no_grad():
            self._record(optimizer)

    # ----- measurement ---------------------------------------------------------------------
    def _record(self, optimizer: Optimizer) -> None:
        groups = optimizer.param_groups
        params = self._params()
        if not params:
            return
        dev = params[0].device
        sdt = _stat_dtype(dev)

        def cast(ts: Iterable[Tensor]) -> list[Tensor]:
            return [t.to(device=dev, dtype=sdt) for t in ts]

        # gradients (read after the step, so a closure's gradients are the ones measured)
        names: list[str] = []
        g_of: list[int] = []  # group index of each measured gradient
        flat_of: list[int] = []
        kinds: dict[tuple[torch.device, torch.dtype, bool], list[int]] = {}
        grads: list[Tensor] = []
        k = 0
        for gi, group in enumerate(groups):
            for pi, p in enumerate(group["params"]):
                g = p.grad
                if g is not None:
                    names.append(self._names.get(id(p)) or f"group{gi}.param{pi}")
                    g_of.append(gi)
                    flat_of.append(k)
                    kinds.setdefault((g.device, g.dtype, g.is_sparse), []).append(len(grads))
                    grads.append(g)
                k += 1
        gnorm_list: list[Tensor] = [torch.zeros((), device=dev, dtype=sdt)] * len(grads)
        for (_, _, sparse), idx in kinds.items():
            ts = [grads[i].coalesce().values() if sparse else grads[i] for i in idx]
            for i, n in zip(idx, cast(_norms(ts))):
                gnorm_list[i] = n
        ngroups = len(groups)
        zeros = torch.zeros(ngroups, device=dev, dtype=sdt)
        if grads:
            gn = torch.stack(gnorm_list)
            gidx = self._index(("g", *g_of), dev)
            g_group = zeros.index_add(0, gidx, gn.square()).sqrt()
            g_global = gn.square().sum().sqrt()
            nonfinite = (~gn.isfinite()).sum().to(sdt)
        else:
            gn = zeros[:0]
            g_group, g_global = zeros, zeros.sum()
            nonfinite = zeros.sum()

        keys: list[str] = ["grad_norm", "nonfinite_grads"]
        vals: list[Tensor] = [g_global, nonfinite]

        skipped_now = getattr(optimizer, "skipped_steps", None)
        skipped: Tensor | None = None
        if self._skipped_before is not None and isinstance(skipped_now, int):
            skipped = zeros.sum() + float(skipped_now > self._skipped_before)

        u_per = r_per = None
        if self.track_updates and len(self._pnorm) == len(params):
            unorm_flat: list[Tensor] = [zeros[0]] * len(params)
            pnorm_flat: list[Tensor] = [zeros[0]] * len(params)
            pn_iter = iter(cast(self._pnorm))
            for idx, snap in self._buckets:
                torch._foreach_sub_(snap, [params[i].detach() for i in idx])  # before - after
                for i, n, pn in zip(idx, cast(_norms(snap)), pn_iter):
                    unorm_flat[i] = n
                    pnorm_flat[i] = pn
            un, pn = torch.stack(unorm_flat), torch.stack(pnorm_flat)
            all_g = self._index(
                ("a", *(gi for gi, grp in enumerate(groups) for _ in grp["params"])), dev)
            u_group = zeros.index_add(0, all_g, un.square()).sqrt()
            p_group = zeros.index_add(0, all_g, pn.square()).sqrt()
            u_global, p_global = un.square().sum().sqrt(), pn.square().sum().sqrt()
            keys += ["update_norm", "param_norm", "update_ratio"]
            vals += [u_global, p_global, _ratio(u_global, p_global)]
            if skipped is None:
                skipped = (u_global == 0).to(sdt)
            sel = self._index(("s", *flat_of), dev)
            u_per, r_per = un[sel], _ratio(un[sel], pn[sel])
            ratio_group = _ratio(u_group, p_group)
        if skipped is None:
            skipped = zeros.sum()
        keys.append("skipped")
        vals.append(skipped)

        clipped = self._clipped(optimizer, g_global, skipped_now)
        if clipped is not None:
            clipped = clipped.to(device=dev, dtype=sdt) * (1 - skipped)
        one = torch.ones((), device=dev, dtype=sdt)
        step_totals = torch.stack([
            clipped if clipped is not None else zeros.sum(),
            one if clipped is not None else zeros.sum(),
            (nonfinite > 0).to(sdt), nonfinite, skipped,
        ])
        if self._totals is None or self._totals.device != dev or self._totals.dtype != sdt:
            self._totals = torch.zeros(5, device=dev, dtype=sdt)
        self._totals = self._totals + step_totals
        if clipped is not None:
            keys += ["clipped", "clipped_fraction"]
            vals += [clipped, self._totals[0] / self._totals[1]]

        for gi in range(ngroups):
            keys.append(f"group{gi}/grad_norm")
            vals.append(g_group[gi])
            if u_per is not None:
                keys += [f"group{gi}/update_norm", f"group{gi}/update_ratio"]
                vals += [u_group[gi], ratio_group[gi]]
        parts = [torch.stack(vals)]
        if self.per_layer and names:
            keys += [f"layer/{n}/grad_norm" for n in names]
            parts.append(gn)
            if r_per is not None:
                keys += [f"layer/{n}/update_ratio" for n in names]
                parts.append(r_per)
        self._recorded += 1
        rec = (self.steps_seen, keys, torch.cat(parts))
        self._last = rec
        if self.keep_history:
            self._pending.append(rec)

    def _index(self, key: tuple[Any, ...], dev: torch.device) -> Tensor:
        # index tensors are cached: no host-to-device copy per step once the structure is known
        t = self._indices.get(key)
        if t is None or t.device != dev:
            if len(self._indices) > 16:
                self._indices.clear()
            t = self._indices[key] = torch.tensor(key[1:], device=dev, dtype=torch.long)
        return t

    def _clipped(self, optimizer: Optimizer, g_global: Tensor, skipped_now: Any
                 ) -> Tensor | None:
        if self.clip_max_norm is not None:
            return g_global + 1e-6 > self.clip_max_norm
        max_norms = _clip_thresholds(optimizer)
        if not max_norms:
            return None
        info = getattr(optimizer, "info", None)
        stat = info.get("grad_norm") if isinstance(info, Mapping) else None
        if not isinstance(stat, Tensor) or stat is self._info_before:
            stat = g_global  # the rule published nothing this step: fall back to our own norm
        stat = stat.detach().to(g_global.device)
        return (stat + 1e-6 > min(max_norms)).to(g_global.dtype)

    # ----- reading -------------------------------------------------------------------------
    def last(self) -> dict[str, Any]:
        """The latest record as a plain dict (one host sync); ``{}`` before the first step."""
        if self._last is None:
            return {}
        return _materialize([self._last])[0]

    @property
    def history(self) -> list[dict[str, Any]]:
        """Every record so far, oldest first (one host sync for the records not read yet)."""
        if self._pending:
            self._history.extend(_materialize(self._pending))
            self._pending = []
        return self._history

    def summary(self) -> dict[str, Any]:
        """Running totals: ``steps`` (recorded), ``clipped_steps``, ``clipped_fraction`` (NaN
        when no clipping threshold is known), ``nonfinite_steps`` (steps with any non-finite
        gradient), ``nonfinite_grads`` (non-finite gradient tensors, summed over steps),
        ``skipped_steps``."""
        t = [0.0] * 5 if self._totals is None else self._totals.tolist()
        return {
            "steps": self._recorded,
            "clipped_steps": int(t[0]),
            "clipped_fraction": t[0] / t[1] if t[1] else math.nan,
            "nonfinite_steps": int(t[2]),
            "nonfinite_grads": int(t[3]),
            "skipped_steps": int(t[4]),
        }

    def __repr__(self) -> str:
        state = "closed" if self.closed else "attached"
        return (f"Telemetry({type(self.optimizer).__name__}, {state}, "
                f"recorded={self._recorded}, track_updates={self.track_updates})")


def _norms(ts: Sequence[Tensor]) -> list[Tensor]:
    """Per-tensor 2-norms, one foreach launch (half types accumulate in float32)."""
    if not ts:
        return []
    if ts[0].dtype in _HALF:
        return list(torch._foreach_norm(list(ts), 2, dtype=torch.float32))
    return list(torch._foreach_norm(list(ts), 2))


def _ratio(u: Tensor, p: Tensor) -> Tensor:
    """``u / p`` with ``0 / 0 = 0`` (a zero parameter that did not move)."""
    return torch.where(u == 0, torch.zeros_like(u), u / p)


def _clip_thresholds(optimizer: Optimizer) -> list[float]:
    """``max_norm`` of every optimlab ``clip_by_global_norm`` rule in ``optimizer``."""
    transforms_for = getattr(optimizer, "transforms_for", None)
    if transforms_for is None:
        return []
    from .transforms.clipping import ClipByGlobalNorm

    out = []
    for group in optimizer.param_groups:
        for t in transforms_for(group):
            if isinstance(t, ClipByGlobalNorm):
                out.append(float(t.hyperparameter(group, "max_norm")))
    return out


def _materialize(recs: Sequence[tuple[int, list[str], Tensor]]) -> list[dict[str, Any]]:
    flat = torch.cat([v.detach().to("cpu", torch.float64) for _, _, v in recs]).tolist()
    out, at = [], 0
    for step, keys, _ in recs:
        d: dict[str, Any] = {"step": step}
        d.update(zip(keys, flat[at:at + len(keys)]))
        at += len(keys)
        out.append(d)
    return out


def vanishing_exploding(
    history: Sequence[Mapping[str, Any]] | Mapping[str, Any],
    low: float = 1e-7,
    high: float = 1e3,
    *,
    window: int | None = None,
) -> dict[str, Any]:
    """Flag layers whose gradient norm vanishes (``< low``) or explodes (``> high``).

    Args:
        history: :attr:`Telemetry.history` (a list of records) or one record.
        low, high: thresholds on a layer's typical gradient norm.
        window: use only the last ``window`` records (default: all).

    A layer's typical norm is the median of its ``layer/{name}/grad_norm`` over the records
    (NaN counts as +inf, i.e. exploding). Returns a plain dict: ``"vanishing"`` and
    ``"exploding"`` (layer names, in model order) and ``"grad_norm"`` (name -> typical norm).
    """
    if not (0 <= low < high):
        raise ValueError(f"need 0 <= low < high, got low={low!r}, high={high!r}")
    recs = [history] if isinstance(history, Mapping) else list(history)
    if window is not None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window!r}")
        recs = recs[-window:]
    series: dict[str, list[float]] = {}
    for r in recs:
        for key, v in r.items():
            if key.startswith("layer/") and key.endswith("/grad_norm"):
                series.setdefault(key[len("layer/"):-len("/grad_norm")], []).append(
                    math.inf if v != v else float(v))
    typical = {n: _median(vs) for n, vs in series.items()}
    return {
        "vanishing": [n for n, v in typical.items() if v < low],
        "exploding": [n for n, v in typical.items() if v > high],
        "grad_norm": typical,
    }


def _median(vs: list[float]) -> float:
    s = sorted(vs)
    m = len(s) // 2
    return s[m] if len(s) % 2 else (s[m - 1] + s[m]) / 2
