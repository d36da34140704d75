r"""Lookahead: k steps forward with any optimizer, one step back toward slow weights.

Lookahead (Zhang et al., 2019) wraps an inner ("fast") optimizer and keeps a copy of the
weights, the slow weights :math:`\phi`. Every ``k`` inner steps

.. math::
    \phi \leftarrow \phi + \alpha\,(\theta - \phi), \qquad \theta \leftarrow \phi,

where :math:`\theta` are the fast (live) weights. The inner optimizer's state (momentum, second
moments, step counts) is kept across the synchronisations ("maintain" in the paper).

Reference:
    M. R. Zhang, J. Lucas, G. Hinton, J. Ba. *Lookahead Optimizer: k steps forward, 1 step
    back.* NeurIPS 2019. https://arxiv.org/abs/1907.08610
"""

from __future__ import annotations

import copy
from collections import OrderedDict, defaultdict
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from .ops import copy_, is_dtensor
from .transforms.base import check_range

__all__ = ["Lookahead"]


class Lookahead(Optimizer):
    r"""Wrap ``optimizer`` with Lookahead: every ``k`` steps, :math:`\phi \leftarrow \phi +
    \alpha(\theta - \phi)` and :math:`\theta \leftarrow \phi`.

    The wrapper is a :class:`torch.optim.Optimizer`: its ``param_groups`` *are* the inner
    optimizer's (so LR schedulers built on the wrapper drive the inner learning rates),
    ``add_param_group``/``zero_grad`` go to the inner optimizer, and :meth:`state_dict` holds
    the inner optimizer's state together with the slow weights and the step counter.

    The slow weights are plain tensors in ``self.state[p]["slow_param"]`` (DTensors sharded
    like the parameter when FSDP2 shards it), created from the parameter's value at its first
    :meth:`step` (before the inner update) and synchronised with list ops, one call per device
    and dtype.

    Args:
        optimizer: the inner (fast) optimizer.
        k: synchronisation period in inner steps, an integer ``>= 1``; default 5.
        alpha: slow step size :math:`\alpha \in [0, 1]`; default 0.5. ``alpha=1`` reproduces
            the inner optimizer; ``alpha=0`` resets the weights every ``k`` steps.

    Example::

        opt = ol.lookahead.Lookahead(ol.AdamW(model.parameters(), lr=1e-3), k=5, alpha=0.5)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=1000)
    """

    def __init__(self, optimizer: Optimizer, k: int = 5, alpha: float = 0.5) -> None:
        if not isinstance(optimizer, Optimizer):
            raise ValueError("optimizer must be a torch.optim.Optimizer, got "
                             f"{type(optimizer).__name__}")
        if isinstance(k, bool) or not isinstance(k, int):
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        check_range("k", k, low=1)
        check_range("alpha", alpha, low=0.0, high=1.0, high_open=False)
        # Not Optimizer.__init__: the param groups belong to the inner optimizer.
        self.optimizer = optimizer
        self.k = k
        self.alpha = float(alpha)
        self.defaults = optimizer.defaults
        self.state: defaultdict[Tensor, Any] = defaultdict(dict)
        #: inner steps taken so far; the weights are synchronised when it reaches a multiple of k
        self.lookahead_step = 0
        self._optimizer_step_pre_hooks = OrderedDict()
        self._optimizer_step_post_hooks = OrderedDict()
        self._optimizer_state_dict_pre_hooks = OrderedDict()
        self._optimizer_state_dict_post_hooks = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        self._optimizer_load_state_dict_post_hooks = OrderedDict()
        self._patch_step_function()
        self._warned_capturable_if_run_uncaptured = True

    # param_groups are the inner optimizer's list (shared, not copied)
    @property  # type: ignore[override]
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.optimizer.param_groups = value

    def __getstate__(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer, "k": self.k, "alpha": self.alpha,
                "state": self.state, "lookahead_step": self.lookahead_step,
                "defaults": self.defaults}

    def __repr__(self) -> str:
        return f"Lookahead(k={self.k}, alpha={self.alpha}, optimizer={self.optimizer!r})"

    def _params(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the inner optimizer; its slow weights start at its first step."""
        self.optimizer.add_param_group(param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """The inner optimizer's ``zero_grad``."""
        self.optimizer.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def _sync(self) -> None:
        # one list op per device, dtype and kind (plain tensors, or DTensors under FSDP2)
        groups: dict[tuple[torch.device, torch.dtype, bool],
                     tuple[list[Tensor], list[Tensor]]] = {}
        for p in self._params():
            st = self.state.get(p)
            if not st:
                continue
            slow, fast = groups.setdefault((p.device, p.dtype, is_dtensor(p)), ([], []))
            slow.append(st["slow_param"])
            fast.append(p)
        for slow, fast in groups.values():
            torch._foreach_lerp_(slow, fast, self.alpha)  # phi += alpha (theta - phi)
            copy_(fast, slow)  # theta = phi

    def step(self, closure: Callable[[], float] | None = None) -> Any:  # type: ignore[override]
        """One inner step (evaluating ``closure`` if given); every ``k``-th also synchronises."""
        with torch.no_grad():
            for p in self._params():
                st = self.state[p]
                if "slow_param" not in st:
                    st["slow_param"] = p.detach().clone(memory_format=torch.preserve_format)
        loss = self.optimizer.step(closure) if closure is not None else self.optimizer.step()
        self.lookahead_step += 1
        if self.lookahead_step % self.k == 0:
            self._sync()
        return loss

    def state_dict(self) -> dict[str, Any]:
        """The inner optimizer's ``state_dict`` plus the slow weights, ``k``, ``alpha`` and the
        step counter. Slow weights are keyed by the parameter's index over all groups."""
        index = {p: i for i, p in enumerate(self._params())}
        slow = {index[p]: {"slow_param": st["slow_param"]}
                for p, st in self.state.items() if p in index and "slow_param" in st}
        return {
            "optimizer": self.optimizer.state_dict(),
            "lookahead": {"state": slow, "k": self.k, "alpha": self.alpha,
                          "step": self.lookahead_step},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load what :meth:`state_dict` returned (into a wrapper over the same parameters)."""
        state_dict = copy.copy(state_dict)
        la = state_dict["lookahead"]
        k, alpha = la["k"], la["alpha"]
        if isinstance(k, bool) or not isinstance(k, int):
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        check_range("k", k, low=1)
        check_range("alpha", alpha, low=0.0, high=1.0, high_open=False)
        step = la["step"]
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"lookahead step must be an integer >= 0, got {step!r}")
        params = self._params()
        for i, st in la["state"].items():
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(params):
                raise ValueError(f"state_dict has slow weights for parameter {i!r}, but the "
                                 f"optimizer has {len(params)} parameters")
            slow = st.get("slow_param") if isinstance(st, dict) else None
            if not isinstance(slow, Tensor) or slow.shape != params[i].shape:
                got = tuple(slow.shape) if isinstance(slow, Tensor) else type(slow).__name__
                raise ValueError(f"the slow weights of parameter {i} must be a tensor of "
                                 f"shape {tuple(params[i].shape)}, got {got}")
        # everything checked: the inner optimizer's load (checked too) is the last refusal
        self.optimizer.load_state_dict(state_dict["optimizer"])
        self.k, self.alpha, self.lookahead_step = k, float(alpha), int(la["step"])
        self.state = defaultdict(dict)
        for i, st in la["state"].items():
            p = params[int(i)]
            slow = st["slow_param"]
            self.state[p]["slow_param"] = slow.detach().to(device=p.device, dtype=p.dtype,
                                                           copy=True)
