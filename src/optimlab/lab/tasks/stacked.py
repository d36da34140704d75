"""Gradients of P stacked MLPs at once, written out (private to the tasks; used through
:meth:`optimlab.lab.tasks.Task.population_gradients`).

A population (:mod:`optimlab.lab.population`) can always differentiate its members with
``vmap(grad(functional_call(task.loss)))``. For the small MLPs of the lab that machinery,
not arithmetic, is the step's cost. :func:`cross_entropy_gradients` computes the same losses
and gradients for a plain MLP under the mean cross-entropy with a few batched calls per layer,
forward and backward written out, without autograd.

Measured on the 2-core CPU, torch 2.13, 2 threads, 16 members of mlp-digits, batch 32:

- this function: 0.27 ms per step;
- one ``autograd.grad`` of ``sum_i L_i`` through ``baddbmm`` layers: 0.35 ms;
- the vmap path: about 1.9 ms.

**Formulas.** Member ``i``, layer ``l``: ``z_l = a_{l-1} W_l^T + b_l`` and ``a_l = f(z_l)``,
with ``a_0 = x_i``. The loss is ``L_i = -(1/n) sum_r log softmax(z_L)[r, y_r]`` over the
``n`` rows of the member's batch. Backward, from ``d z_L = softmax(z_L) - onehot(y)`` scaled
by ``1/n``:

- ``dW_l = dz_l^T a_{l-1}``;
- ``db_l = sum_r dz_l``;
- ``dz_{l-1} = f'(z_{l-1}) (dz_l W_l)``.

**Equality with the member's own model.** Every step is the ATen kernel that autograd runs for
``nn.Linear`` and ``F.cross_entropy``, applied to each member's slice:

- ``dz_L`` is ``_log_softmax_backward_data`` of ``nll_loss``'s mean-reduction gradient
  (``-1/n`` at the targets, divided in fp32 as ``nll_loss`` divides);
- ``f'`` is ``threshold_backward`` (ReLU) or ``tanh_backward``, applied to the layer's output;
- ``dW_l`` is formed in ``nn.Linear``'s layout as ``dz^T a``. autograd's ``bmm`` rule would
  form ``a^T dz`` and transpose it, which rounds differently.

Measured on the CPU, torch 2.13, one thread, batches of 32 and 22 rows: every member's
gradient is bit-identical to ``task.loss(batch).backward()`` on its own model. The losses
agree to about 2e-7 relative: ``F.cross_entropy`` sums its mean in another order. Under two
threads the 10 x 64 head's gradient can differ by one rounding, as the vmap path's does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["StackedGradients", "cross_entropy_gradients"]

#: ``(params, batch) -> (grads, losses)``: the stacked parameters (``(P, *shape)`` each, in
#: ``task.parameters()`` order) and a stacked batch give each member's gradients (same shapes)
#: and its loss (shape ``(P,)``).
StackedGradients = Callable[[Sequence[Tensor], tuple[Tensor, ...]], tuple[list[Tensor], Tensor]]

#: Activations a plain MLP may hold, and their backward from the activation's output.
_BACKWARD: dict[type[nn.Module], Callable[[Tensor, Tensor], Tensor]] = {
    nn.ReLU: lambda grad, out: torch.ops.aten.threshold_backward(grad, out, 0),
    nn.Tanh: lambda grad, out: torch.ops.aten.tanh_backward(grad, out),
}
_FORWARD: dict[type[nn.Module], Callable[[Tensor], Tensor]] = {
    nn.ReLU: torch.relu, nn.Tanh: torch.tanh}


def _layers(model: nn.Module) -> list[tuple[bool, type[nn.Module] | None]] | None:
    """``model`` as ``(has_bias, activation after the layer or None)`` per ``nn.Linear``, when
    it is an ``nn.Sequential`` of linear layers, each followed by at most one ReLU or Tanh,
    all parameters trainable; else ``None``."""
    if not isinstance(model, nn.Sequential) or not all(p.requires_grad
                                                       for p in model.parameters()):
        return None
    layers: list[tuple[bool, type[nn.Module] | None]] = []
    for module in model:
        if type(module) is nn.Linear:
            layers.append((module.bias is not None, None))
        elif type(module) in _FORWARD and layers and layers[-1][1] is None:
            layers[-1] = (layers[-1][0], type(module))
        else:
            return None
    return layers or None


def cross_entropy_gradients(model: nn.Module) -> StackedGradients | None:
    """The stacked gradients of ``F.cross_entropy(model(x), y)`` (mean over the batch) for a
    plain MLP ``model`` (module docstring), or ``None`` for any other model.

    The returned function takes the stacked parameters and a batch ``(x, y)`` of shapes
    ``(P, n, in)`` and ``(P, n)``; it returns the gradients and the losses ``(P,)``.
    """
    layers = _layers(model)
    if layers is None:
        return None

    def gradients(params: Sequence[Tensor], batch: tuple[Tensor, ...]) -> tuple[list[Tensor],
                                                                                Tensor]:
        x, y = batch
        weights: list[Tensor] = []
        outputs = [x]  # a_0 .. a_L (a_L: the logits)
        j = 0
        for has_bias, act in layers:
            w = params[j]
            h = outputs[-1]
            if has_bias:
                z = torch.baddbmm(params[j + 1].unsqueeze(1), h, w.transpose(1, 2))
            else:
                z = torch.bmm(h, w.transpose(1, 2))
            weights.append(w)
            outputs.append(_FORWARD[act](z) if act is not None else z)
            j += 2 if has_bias else 1
        logp = torch.log_softmax(outputs[-1], -1)
        index = y.unsqueeze(2)
        n = y.shape[1]
        losses = -logp.gather(2, index).squeeze(2).mean(1)
        # nll_loss's mean-reduction gradient: -grad / total_weight, an fp32 division
        scale = float(np.float32(-1.0) / np.float32(n))
        grad = torch._log_softmax_backward_data(
            torch.zeros_like(logp).scatter_(2, index, scale), logp, -1, logp.dtype)
        grads: list[Tensor] = []
        for k in range(len(layers) - 1, -1, -1):
            has_bias, _ = layers[k]
            if has_bias:
                grads.append(grad.sum(1))
            grads.append(torch.bmm(grad.transpose(1, 2), outputs[k]))
            if k > 0:
                grad = torch.bmm(grad, weights[k])
                act = layers[k - 1][1]
                if act is not None:
                    grad = _BACKWARD[act](grad, outputs[k])
        grads.reverse()
        return grads, losses

    return gradients
