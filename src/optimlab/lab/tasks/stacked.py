"""Gradients and metrics of P stacked models at once, written out (private to the tasks;
used through :meth:`optimlab.lab.tasks.Task.population_gradients` and
:meth:`~optimlab.lab.tasks.Task.population_metrics`).

A population (:mod:`optimlab.lab.population`) can always differentiate its members with
``vmap(grad(functional_call(task.loss)))``. For the small models of the lab that machinery,
not arithmetic, is the step's cost. :func:`cross_entropy_gradients` computes the same losses
and gradients for a plain MLP under the mean cross-entropy with a few batched calls per layer,
forward and backward written out, without autograd; :func:`linear_gradients` does the same
for the convex tasks' regularized linear models, and :class:`ClassificationMetrics` computes
the MLP tasks' metrics of several members at once.

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
  (``-1/n`` at the targets, divided in the parameters' dtype as ``nll_loss`` divides);
- ``f'`` is ``threshold_backward`` (ReLU) or ``tanh_backward``, applied to the layer's output;
- ``dW_l`` is formed in ``nn.Linear``'s layout as ``dz^T a``. autograd's ``bmm`` rule would
  form ``a^T dz`` and transpose it, which rounds differently.

Measured on the CPU, torch 2.13, one thread, batches of 32 and 22 rows: every member's
gradient is bit-identical to ``task.loss(batch).backward()`` on its own model. The losses
agree to about 2e-7 relative: ``F.cross_entropy`` sums its mean in another order. Under two
threads the 10 x 64 head's gradient can differ by one rounding, as the vmap path's does.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import with_generalization_gap
from .base import StackedGradients, StackedMetrics

__all__ = ["LINEAR_LOSSES", "ClassificationMetrics", "classification_metrics_of",
           "cross_entropy_gradients", "linear_gradients"]


#: Activations a plain MLP may hold, and their backward from the activation's output.
_BACKWARD: dict[type[nn.Module], Callable[[Tensor, Tensor], Tensor]] = {
    nn.ReLU: lambda grad, out: torch.ops.aten.threshold_backward(grad, out, 0),
    nn.Tanh: lambda grad, out: torch.ops.aten.tanh_backward(grad, out),
}
_FORWARD: dict[type[nn.Module], Callable[[Tensor], Tensor]] = {
    nn.ReLU: torch.relu_, nn.Tanh: torch.tanh_}


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


def _forward(layers: list[tuple[bool, type[nn.Module] | None]], params: Sequence[Tensor],
             x: Tensor, out: Sequence[Tensor] | None = None) -> tuple[list[Tensor],
                                                                    list[Tensor]]:
    """The outputs ``a_0 = x, a_1, .., a_L`` (``a_L``: the logits) of the stacked MLP
    ``layers``, and its weights: ``a_l = f(baddbmm(b_l, a_{l-1}, W_l^T))``, member ``i``'s
    slice ``nn.Linear``'s ``addmm(b, a, W^T)``, the activation applied in place. ``out``:
    tensors to write ``a_1 .. a_L`` into (else new ones)."""
    weights: list[Tensor] = []
    outputs = [x]
    j = 0
    for layer, (has_bias, act) in enumerate(layers):
        w = params[j]
        h = outputs[-1]
        target = None if out is None else out[layer]
        if has_bias:
            z = torch.baddbmm(params[j + 1].unsqueeze(1), h, w.transpose(1, 2), out=target)
        else:
            z = torch.bmm(h, w.transpose(1, 2), out=target)
        weights.append(w)
        outputs.append(_FORWARD[act](z) if act is not None else z)
        j += 2 if has_bias else 1
    return outputs, weights


def _cross_entropy(z: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """``F.cross_entropy(z_i, y_i)`` (mean over the rows) of every member and its gradient
    w.r.t. ``z`` (shapes ``(P, n, C)``, ``(P, n)``): ``_log_softmax_backward_data`` of
    ``nll_loss``'s mean-reduction gradient, ``-1/n`` at the targets, a division in ``z``'s
    dtype as ``nll_loss`` divides."""
    logp = torch.log_softmax(z, -1)
    index = y.unsqueeze(2)
    losses = -logp.gather(2, index).squeeze(2).mean(1)
    scale = torch.full((), -1.0, dtype=logp.dtype, device=logp.device) / y.shape[1]
    grad = torch._log_softmax_backward_data(
        torch.zeros_like(logp).scatter_(2, index, scale.expand(index.shape)), logp, -1,
        logp.dtype)
    return losses, grad


def _bce_with_logits(z: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """``F.binary_cross_entropy_with_logits(z_i.squeeze(-1), y_i)`` (mean over the rows) of
    every member and its gradient w.r.t. ``z`` (shape ``(P, n, 1)``): ``(sigmoid(z) - y) / n``,
    its backward's formula and order."""
    logit, target = z.squeeze(-1), y.to(z.dtype)
    losses = F.binary_cross_entropy_with_logits(logit, target, reduction="none").mean(1)
    return losses, (torch.sigmoid(logit) - target).div_(y.shape[1]).unsqueeze(-1)


def _mse(z: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """``F.mse_loss(z_i.squeeze(-1), y_i)`` (mean over the rows) of every member and its
    gradient w.r.t. ``z`` (shape ``(P, n, 1)``): ``(z - y) * (2 / n)``, its backward's formula
    and order."""
    diff = z.squeeze(-1) - y.to(z.dtype)
    return diff.square().mean(1), (diff * (2.0 / y.shape[1])).unsqueeze(-1)


#: The data losses of linear models (:func:`linear_gradients`), by name.
LINEAR_LOSSES: dict[str, Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]] = {
    "cross_entropy": _cross_entropy, "bce_with_logits": _bce_with_logits, "mse": _mse}


def _backward(layers: list[tuple[bool, type[nn.Module] | None]], outputs: list[Tensor],
              weights: list[Tensor], grad: Tensor) -> list[Tensor]:
    """The parameters' gradients of a stacked MLP (:func:`_forward`'s ``outputs`` and
    ``weights``) from the gradient ``grad`` w.r.t. its output, in ``parameters()`` order."""
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
    return grads


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
        outputs, weights = _forward(layers, params, x)
        losses, grad = _cross_entropy(outputs[-1], y)
        return _backward(layers, outputs, weights, grad), losses

    return gradients


def linear_gradients(loss: str, l2: float) -> StackedGradients:
    """The stacked gradients of an L2-regularized linear model ``z = x W^T + b``:
    ``L = loss(z, y) + (l2 / 2) (||W||^2 + ||b||^2)``, ``loss`` one of :data:`LINEAR_LOSSES`
    (mean over the batch). Each member's gradient is the data term's (:func:`_backward` of
    the loss's gradient) plus the penalty's, ``(2 p) * (l2 / 2)`` in autograd's order (the
    derivative of ``p.pow(2)`` times the incoming ``l2 / 2``).

    Unlike the MLP's, these gradients agree with autograd's to rounding, not always bit for
    bit: the sigmoid of the logistic loss is vectorized over the stacked rows, and its last
    few elements may be computed by the scalar path in one layout and the vector path in the
    other (the vmap path has the same property)."""
    head = LINEAR_LOSSES[loss]
    layers: list[tuple[bool, type[nn.Module] | None]] = [(True, None)]
    half = 0.5 * l2

    def gradients(params: Sequence[Tensor], batch: tuple[Tensor, ...]) -> tuple[list[Tensor],
                                                                                Tensor]:
        x, y = batch
        outputs, weights = _forward(layers, params, x)
        losses, grad = head(outputs[-1], y)
        grads = _backward(layers, outputs, weights, grad)
        penalty = sum(p.square().flatten(1).sum(1) for p in params)
        return ([g + (p * 2.0) * half for g, p in zip(grads, params, strict=True)],
                losses + half * penalty)

    return gradients


class ClassificationMetrics:
    """:func:`~optimlab.lab.tasks._common.classification_metrics` of stacked plain MLPs:
    each member's cross-entropy and accuracy on its ``train``, ``val`` and ``test`` splits,
    and the generalization gap (:func:`classification_metrics` is the reference).

    Per chunk of :attr:`CHUNK` members, one forward pass over the three splits together
    (each member's splits concatenated once, here), one ``log_softmax`` and one ``argmax``;
    then each member's loss of a split is the mean of its rows' ``-log p(y)``, and its
    accuracy the mean of its rows' hits, an exact count. The logits are those of the member's
    model (module docstring), so the accuracies are equal; the losses agree to rounding, not
    bit for bit: the ``log_softmax`` runs with the classes as the middle axis, 14x faster for
    10 classes, whose vectorized ``exp`` and ``log`` may round a row differently from the
    last-axis kernel's, and the means sum in another order than ``F.cross_entropy``'s.

    Why chunks, written into buffers kept from call to call: on the 2-core CPU (torch 2.13,
    2 threads), the forward pass over all three splits of 16 members took 7.6 ms in one
    piece and 3.3 ms in chunks of 4 or 8 members (each layer's output for 16 members is 7 MB;
    for 4 it stays in the cache), against 7.7 ms for the 16 members' own ``evaluate`` one
    after the other. And a chunk's outputs (about 2 MB) are above glibc's ``mmap`` threshold:
    allocated afresh at every call, their page faults made the 16 members' metrics cost
    13.0 ms; with the buffers kept, 6.4 ms.
    """

    #: members per forward pass
    CHUNK = 4
    SPLITS = ("train", "val", "test")

    def __init__(self, layers: list[tuple[bool, type[nn.Module] | None]],
                 members: Sequence[Any]) -> None:
        self.layers = layers
        first = members[0]
        self.sizes = [len(getattr(first, f"y_{split}")) for split in self.SPLITS]
        self.x = torch.stack([torch.cat([getattr(m, f"x_{split}") for split in self.SPLITS])
                              for m in members])
        self.y = torch.stack([torch.cat([getattr(m, f"y_{split}") for split in self.SPLITS])
                              for m in members])
        #: scratch tensors for one chunk, made at the first call (class docstring): the
        #: inputs, each layer's outputs, log-probabilities and predictions; every call
        #: overwrites what it reads, so nothing carries over from one call to the next
        self._work: dict[str, Any] = {}

    def _buffers(self, params: Sequence[Tensor]) -> dict[str, Any]:
        if not self._work:
            chunk, n = self.CHUNK, self.x.shape[1]
            like = dict(dtype=params[0].dtype, device=params[0].device)
            widths, j = [], 0
            for has_bias, _ in self.layers:
                widths.append(params[j].shape[1])
                j += 2 if has_bias else 1
            self._work = {
                "x": torch.empty(chunk, n, self.x.shape[2], **like),
                "y": torch.empty(chunk, n, dtype=self.y.dtype, device=self.y.device),
                "outputs": [torch.empty(chunk, n, w, **like) for w in widths],
                "logits_t": torch.empty(chunk, widths[-1], n, **like),
                "logp_t": torch.empty(chunk, widths[-1], n, **like),
                "predicted": torch.empty(chunk, n, dtype=torch.long, device=self.y.device)}
        return self._work

    @torch.no_grad()
    def __call__(self, params: Sequence[Tensor], rows: Sequence[int]) -> list[dict[str, float]]:
        work = self._buffers(params)
        bounds = list(itertools.pairwise(itertools.accumulate(self.sizes, initial=0)))
        columns: list[Tensor] = []  # per chunk: (k, 6), a split's loss and accuracy per pair
        for start in range(0, len(rows), self.CHUNK):
            chunk = list(rows[start:start + self.CHUNK])
            k = len(chunk)
            part = [p[start:start + k] for p in params]
            if chunk == list(range(chunk[0], chunk[0] + k)):  # consecutive: a view, no copy
                x, y = self.x[chunk[0]:chunk[0] + k], self.y[chunk[0]:chunk[0] + k]
            else:
                index = torch.tensor(chunk, device=self.x.device)
                x = torch.index_select(self.x, 0, index, out=work["x"][:k])
                y = torch.index_select(self.y, 0, index, out=work["y"][:k])
            outputs, _ = _forward(self.layers, part, x, [o[:k] for o in work["outputs"]])
            logits = outputs[-1]
            # log_softmax over the classes as the middle axis (class docstring)
            logits_t = work["logits_t"][:k]
            logits_t.copy_(logits.transpose(1, 2))
            logp = torch.log_softmax(logits_t, 1, out=work["logp_t"][:k])
            losses = -logp.gather(1, y.unsqueeze(1)).squeeze(1)  # (k, n): each row's loss
            hits = (torch.argmax(logits, -1, out=work["predicted"][:k]) == y).float()
            columns.append(torch.stack([v for a, b in bounds
                                        for v in (losses[:, a:b].mean(1), hits[:, a:b].mean(1))],
                                       dim=1))
        table = torch.cat(columns).double().tolist()
        names = [f"{split}_{kind}" for split in self.SPLITS for kind in ("loss", "accuracy")]
        return [with_generalization_gap(dict(zip(names, row, strict=True))) for row in table]


def classification_metrics_of(model: nn.Module, members: Sequence[Any]) -> StackedMetrics | None:
    """:class:`ClassificationMetrics` for the population ``members`` (classification tasks
    with ``x_``/``y_`` splits, set up) of a plain MLP ``model``; else ``None``."""
    layers = _layers(model)
    return None if layers is None else ClassificationMetrics(layers, members)
