"""Checking a state dict before :meth:`ChainOptimizer.load_state_dict` changes anything.

torch.optim loads whatever has the right number of groups and parameters: another
optimizer's state (it is used, or ignored, or fails steps later), steps that are NaN, negative
or hold two numbers, states for parameter ids no group lists. optimlab checks the whole dict
first and refuses it with a message naming what is wrong; a refused load changes nothing.

What a state dict must be to load into an optimizer ``opt``:

* **The same algorithm.** ``state_dict()`` records the class that saved it and its algorithm
  under the top-level key ``"optimlab"`` (torch.optim ignores extra top-level keys, so the dict
  still loads there); a dict of another algorithm is refused naming both classes. Adam and
  AdamW are one algorithm (AdamW is Adam with ``decoupled_weight_decay=True``, and
  torch.optim loads either into the other); ``ChainOptimizer``'s dicts load into any
  ``ChainOptimizer``. A dict without the entry (torch.optim's, or an older optimlab's) is
  judged by its content: each group must hold the hyperparameters of the rules that keep
  state (``lr`` and ``betas`` for Adam; a stateless rule such as clipping may be new), and each
  parameter's state only keys the rules declare (:meth:`Transform.state_names`), with all
  those the group's settings need. (This tells every pair of torch.optim's algorithms apart
  but one: Adam's and AdamW's dicts have all of RAdam's keys, and load into RAdam.)
* **The same parameters.** As many groups, with as many parameters each; parameter ids are
  distinct integers, and every integer key of ``state`` is one of them (other keys, which
  torch.optim keeps as they are, are kept).
* **Valid values.** Each group's hyperparameters pass the checks the constructor makes. Each
  state tensor has its parameter's shape (scalar states, such as NAdam's ``mu_product``, one
  element and finite), a floating dtype, complex exactly when the parameter is; ``step`` is a
  scalar (a number or a one-element tensor) that is finite, ``>= 0`` and integral.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .chain import ChainOptimizer

__all__ = ["MARKER", "check_state_dict", "saved_by"]

#: The top-level key of a state dict that names the optimizer that saved it.
MARKER = "optimlab"

#: Per-parameter state keys the chain itself keeps (besides the rules' states).
CHAIN_STATES = ("step", "master_param")


def saved_by(opt: ChainOptimizer) -> dict[str, str]:
    """The ``"optimlab"`` entry of ``opt``'s state dict: its class and algorithm names."""
    return {"class": type(opt).__name__, "algorithm": opt.algorithm}


def check_state_dict(opt: ChainOptimizer, state_dict: Any) -> None:
    """Raise ``ValueError`` unless ``state_dict`` can be loaded into ``opt`` (see the module
    docstring); changes nothing."""
    name = type(opt).__name__
    if (not isinstance(state_dict, Mapping) or not isinstance(state_dict.get("state"), Mapping)
            or not isinstance(state_dict.get("param_groups"), (list, tuple))):
        raise ValueError(f"{name}.load_state_dict: expected a dict with 'state' (a dict) and "
                         "'param_groups' (a list), as state_dict() returns, got "
                         f"{_kind(state_dict)}")
    _check_algorithm(opt, state_dict.get(MARKER))
    groups, saved = opt.param_groups, state_dict["param_groups"]
    if len(groups) != len(saved):
        raise ValueError(f"loaded state dict has a different number of parameter groups "
                         f"({len(saved)}; {name} has {len(groups)})")
    params: dict[int | str, tuple[Tensor, str, dict[str, Any]]] = {}
    # ids are integers (state_dict()) or, all of them, names (torch.distributed.checkpoint's
    # set_optimizer_state_dict passes fully qualified parameter names, matched by position)
    named = all(isinstance(pid, str) for sg in saved if isinstance(sg, Mapping)
                for pid in (sg.get("params") or ()))
    for gi, (group, sg) in enumerate(zip(groups, saved)):
        if not isinstance(sg, Mapping) or not isinstance(sg.get("params"), (list, tuple)):
            raise ValueError(f"param group {gi} of the state dict must be a dict with a "
                             f"'params' list, got {_kind(sg)}")
        if len(sg["params"]) != len(group["params"]):
            raise ValueError("loaded state dict contains a parameter group that doesn't match "
                             f"the size of optimizer's group (param group {gi}: "
                             f"{len(sg['params'])} parameters saved, {len(group['params'])} "
                             "here)")
        merged = _merged_group(opt, gi, sg)
        for pi, (pid, p) in enumerate(zip(sg["params"], group["params"])):
            if isinstance(pid, bool) or not isinstance(pid, str if named else int):
                raise ValueError(f"param group {gi} of the state dict lists {pid!r} as "
                                 f"parameter {pi}: parameter ids are integers (or names, "
                                 "from torch.distributed.checkpoint)")
            if pid in params:
                raise ValueError(f"parameter id {pid} is listed twice in the state dict's "
                                 "param groups")
            params[pid] = (p, f"parameter id {pid} (param group {gi}, parameter {pi})", merged)
    for key, entry in state_dict["state"].items():
        if key in params and not isinstance(key, bool):
            _check_entry(opt, *params[key], entry)
        elif isinstance(key, int) and not isinstance(key, bool):
            raise ValueError(f"the state dict holds a state for parameter id {key}, which no "
                             f"param group of it lists (ids: {_ids(params)}): a state dict "
                             "of other parameters?")


def _kind(x: Any) -> str:
    if isinstance(x, Mapping):
        return f"a dict with keys {sorted(map(str, x))}"
    return type(x).__name__


def _ids(params: Mapping[int, Any]) -> str:
    ids = sorted(params)
    return ", ".join(map(str, ids[:8])) + (", ..." if len(ids) > 8 else "")


def _check_algorithm(opt: ChainOptimizer, marker: Any) -> None:
    if marker is None:
        return
    if not (isinstance(marker, Mapping) and isinstance(marker.get("class"), str)
            and isinstance(marker.get("algorithm"), str)):
        raise ValueError(f"the state dict's {MARKER!r} entry must be a dict with 'class' and "
                         f"'algorithm' names, got {marker!r}")
    if marker["algorithm"] != opt.algorithm:
        name = type(opt).__name__
        raise ValueError(f"this state dict was saved by {marker['class']}; {name} cannot load "
                         f"it: {marker['class']} and {name} are different algorithms, with "
                         f"other states and hyperparameters; load it into {marker['class']} "
                         "instead")


def _merged_group(opt: ChainOptimizer, gi: int, sg: Mapping[str, Any]) -> dict[str, Any]:
    """The group as it will be after loading (the saved keys, and the optimizer's defaults
    for the keys it lacks), its hyperparameters checked."""
    name = type(opt).__name__
    merged = {**opt.defaults, **{k: v for k, v in sg.items() if k != "params"}}
    # The hyperparameters of the rules that keep state: a state made under other rules has
    # other hyperparameters (a stateless rule's, such as clipping's, may be new in this chain).
    read = {k for t in opt.transforms_for(merged) if t.state_names() for k in t.group_keys()}
    lacking = sorted((read & set(opt.defaults)) - set(sg))
    if lacking:
        raise ValueError(f"param group {gi} of the state dict lacks {', '.join(lacking)}, "
                         f"hyperparameters of {name}: it is not a state dict of {name}")
    try:
        opt._validate_settings(merged)
    except (ValueError, TypeError) as e:
        raise ValueError(f"param group {gi} of the state dict: {e}") from None
    return merged


def _check_entry(opt: ChainOptimizer, p: Tensor, where: str, group: dict[str, Any],
                 entry: Any) -> None:
    name = type(opt).__name__
    if not isinstance(entry, Mapping):
        raise ValueError(f"the state of {where} must be a dict of tensors, got {_kind(entry)}")
    rules = opt.transforms_for(group)
    declared = {k for t in rules for k in t.state_names()}
    allowed = set(CHAIN_STATES) | declared
    unknown = sorted(str(k) for k in entry if k not in allowed)
    if unknown:
        raise ValueError(f"the state of {where} holds {', '.join(map(repr, unknown))}, which "
                         f"{name} does not keep (its states: {', '.join(sorted(allowed))}): "
                         f"a state dict of another optimizer? {name} refuses it")
    present = {k for k, v in entry.items() if v is not None}
    shapes = {k: s for t in rules for k, s in t.state_shapes(group, p).items()}
    if present & declared:
        lacking = [k for k in shapes if k not in present]
        if lacking:
            raise ValueError(f"the state of {where} lacks {', '.join(map(repr, lacking))}, "
                             f"which {name} keeps with the group's settings: a state dict of "
                             "another optimizer, or of other settings?")
    scalar = _scalar_states(rules, p, group)
    for k, v in entry.items():
        if k == "step":
            check_step(v, where)
        elif v is None and k in declared:
            continue  # not made yet (torch < 2 kept momentum_buffer=None): made at the step
        elif not isinstance(v, Tensor):
            raise ValueError(f"state {k!r} of {where} must be a tensor, got {_kind(v)}")
        elif k in scalar:
            if v.numel() != 1 or v.dim() != 0 or not v.is_floating_point() or not bool(
                    torch.isfinite(v)):
                raise ValueError(f"state {k!r} of {where} must be a finite floating-point "
                                 f"scalar, got {_describe(v)}")
        else:
            _check_elementwise(p, k, v, where, shapes.get(k, p.shape))


def _scalar_states(rules: Any, p: Tensor, group: Mapping[str, Any]) -> set[str]:
    """The state keys the rules make as scalars (0-dim), from their ``init_state`` on a meta
    tensor shaped like ``p`` (no memory)."""
    like = torch.empty(p.shape, dtype=p.dtype, device="meta")
    return {k for t in rules for k, v in t.init_state(like, group).items() if v.dim() == 0}


def _describe(v: Tensor) -> str:
    if v.numel() == 1:
        return f"{v.dtype} tensor of shape {tuple(v.shape)} holding {v.item()!r}"
    return f"{v.dtype} tensor of shape {tuple(v.shape)}"


def _check_elementwise(p: Tensor, key: str, v: Tensor, where: str, shape: Any) -> None:
    """``shape``: what the rule declares (:meth:`Transform.state_shapes`), mostly ``p``'s."""
    if v.shape != shape:
        what = "" if shape == p.shape else f" (expected {tuple(shape)})"
        raise ValueError(f"state {key!r} of {where} has shape {tuple(v.shape)}{what}, the "
                         f"parameter {tuple(p.shape)}: a state dict of other parameters?")
    if not (v.is_floating_point() or v.is_complex()):
        raise ValueError(f"state {key!r} of {where} has dtype {v.dtype}; optimizer states are "
                         "floating point")
    if v.is_complex() != p.is_complex():
        kind = "complex" if p.is_complex() else "real"
        raise ValueError(f"state {key!r} of {where} has dtype {v.dtype}, but the parameter is "
                         f"{kind} ({p.dtype})")


def check_step(v: Any, where: str) -> None:
    """Refuse a ``step`` that is not a finite, non-negative, integral scalar."""
    if isinstance(v, Tensor):
        if v.numel() != 1 or v.dim() != 0 or v.is_complex() or v.dtype == torch.bool:
            raise ValueError(f"state 'step' of {where} must be a scalar count, got "
                             f"{_describe(v)}")
        x = v.item()
    elif isinstance(v, (int, float)) and not isinstance(v, bool):
        x = v
    else:
        raise ValueError(f"state 'step' of {where} must be a number or a one-element tensor, "
                         f"got {_kind(v)}")
    if not (math.isfinite(x) and x >= 0 and float(x).is_integer()):
        raise ValueError(f"state 'step' of {where} must be a finite integer >= 0 (the number "
                         f"of steps taken), got {x!r}")
