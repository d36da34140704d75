"""Muon (orthogonalized momentum for hidden weight matrices) and the Muon/AdamW split."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..transforms.orthogonal import EmaTrace, Orthogonalize, ScaleByShape, _check_matrix
from ..transforms.regularization import AddWeights
from ..transforms.scaling import ScaleByLearningRate
from .base import NamedOptimizer, Params

__all__ = ["Muon", "muon_param_groups"]

_NS_COEFFICIENTS = (3.4445, -4.775, 2.0315)


class Muon(NamedOptimizer):
    r"""Muon (Jordan et al., 2024, "Muon: An optimizer for hidden layers in neural networks").

    For each 2-D parameter ``W`` with gradient ``G``, momentum ``mu``, learning rate ``lr`` and
    weight decay ``wd``::

        B <- mu * B + (1 - mu) * G                       (B starts at 0)
        M  = (1 - mu) * G + mu * B   if nesterov, else B
        O  = NS_k(M)                 (k Newton-Schulz steps: M's nearest semi-orthogonal matrix)
        W <- (1 - lr * wd) * W - lr * f(shape) * O

    ``NS_k`` runs in bfloat16 (see :func:`optimlab.ops.newton_schulz`), and ``f`` is chosen by
    ``adjust_lr_fn``: ``"original"`` (default, Keller Jordan's) ``sqrt(max(1, A / B))`` for
    an ``A x B`` matrix, or ``"match_rms_adamw"`` ``0.2 * sqrt(max(A, B))`` (Liu et al., 2025,
    "Muon is Scalable for LLM Training", which lets AdamW's ``lr`` and ``weight_decay`` carry
    over). Arguments, defaults, state (``momentum_buffer``) and results are torch.optim.Muon's;
    ``maximize`` and the engine options (``fused=True`` compiles the same rules) are optimlab's.

    Rules: ``ema_trace -> orthogonalize -> scale_by_shape -> add_decayed_weights -> lr``.

    Muon is for hidden-layer weight matrices only: parameters that are not real and 2-D are
    refused (embeddings, output heads, biases and norms belong to AdamW; see
    :func:`muon_param_groups`).
    """

    algorithm = "Muon"

    capturable_group_key = False

    rules = (EmaTrace(momentum=0.95, nesterov=True),
             Orthogonalize(ns_coefficients=_NS_COEFFICIENTS, ns_steps=5, eps=1e-7),
             ScaleByShape(adjust_lr_fn=None),
             AddWeights(weight_decay=0.1),
             ScaleByLearningRate(lr=1e-3))

    def __init__(self, params: Params, lr: float | Tensor = 1e-3, weight_decay: float = 0.1,
                 momentum: float = 0.95, nesterov: bool = True,
                 ns_coefficients: tuple[float, float, float] = _NS_COEFFICIENTS,
                 eps: float = 1e-7, ns_steps: int = 5, adjust_lr_fn: str | None = None, *,
                 maximize: bool = False, foreach: bool | None = None,
                 differentiable: bool = False, fused: bool | None = None,
                 nonfinite: str = "ignore", master_weights: bool = False,
                 stochastic_rounding: bool = False,
                 state_dtype: torch.dtype | None = None) -> None:
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      nesterov=nesterov, ns_coefficients=ns_coefficients,
                                      eps=eps, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn,
                                      maximize=maximize),
                         foreach=foreach, fused=fused, capturable=False,
                         differentiable=differentiable, nonfinite=nonfinite,
                         master_weights=master_weights,
                         stochastic_rounding=stochastic_rounding, state_dtype=state_dtype)

    def _validate_group(self, group: Mapping[str, Any]) -> None:
        # Refused at construction (and in add_param_group, which then leaves the optimizer as
        # it was), as torch.optim.Muon refuses non-2-D parameters.
        super()._validate_group(group)
        for p in group["params"]:
            _check_matrix(p)


def muon_param_groups(model: nn.Module, head: Iterable[str] | None = None
                      ) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Split ``model``'s trainable parameters into ``(muon_params, adamw_params)``.

    Muon gets the 2-D weight matrices of the hidden layers. AdamW gets everything else:
    ``nn.Embedding`` weights (a lookup table, not a linear map of activations), the output
    head's parameters, biases, norm scales and any parameter that is not 2-D (convolution
    kernels included). ``head`` names the output modules or parameters (as in
    ``named_modules``/``named_parameters``: a module's name covers its parameters); by
    default the last ``nn.Linear`` in registration order is the head, and ``head=()``
    declares that the model has none. Parameters with ``requires_grad=False`` are left out;
    a parameter shared between modules (tied embedding and head) appears once, in AdamW if
    any of its users sends it there.

    Example::

        muon_params, adamw_params = muon_param_groups(model)
        opts = [Muon(muon_params, lr=0.02), torch.optim.AdamW(adamw_params, lr=3e-4)]
    """
    names = dict(model.named_modules())
    if head is None:
        linears = [n for n, m in names.items() if isinstance(m, nn.Linear)]
        head = linears[-1:]
    head = list(head)
    params = dict(model.named_parameters())
    unknown = [h for h in head if h not in names and h not in params]
    if unknown:
        raise ValueError(f"muon_param_groups: head names {unknown} are neither modules nor "
                         "parameters of the model")
    to_adamw: set[int] = set()
    for h in head:
        if h in params:
            to_adamw.add(id(params[h]))
        else:
            to_adamw.update(id(p) for p in names[h].parameters())
    for m in model.modules():
        if isinstance(m, nn.Embedding):
            to_adamw.update(id(p) for p in m.parameters(recurse=False))
    muon: list[nn.Parameter] = []
    adamw: list[nn.Parameter] = []
    for p in params.values():
        if not p.requires_grad:
            continue
        is_matrix = p.ndim == 2 and not p.is_complex()
        (muon if is_matrix and id(p) not in to_adamw else adamw).append(p)
    return muon, adamw
