"""Gradient accumulation: k micro-batches give the update of one batch k times larger.

With a mean-reduced loss, the gradient of a batch ``B = B_1 + ... + B_k`` of k equal
micro-batches is the mean of the micro-batch gradients::

    grad L_B = (1/k) * sum_i grad L_{B_i}

so scaling each micro-batch loss by ``1/k`` before ``backward()`` (which sums into ``.grad``)
yields the large-batch gradient, up to floating-point rounding. Everything that acts on the
gradient (global-norm clipping, the optimizer step, zeroing) must then happen once per window
of k micro-batches, on the *accumulated* gradient; :class:`GradientAccumulator` does that.

Works with any ``torch.optim.Optimizer`` (optimlab's or torch's) and with
``torch.amp.GradScaler``. Example::

    acc = GradientAccumulator(opt, steps=4, max_norm=1.0)
    for x, y in loader:                      # micro-batches
        loss = loss_fn(model(x), y)          # mean over the micro-batch
        acc.backward(loss)
        acc.step_if_ready()
    acc.flush()                              # the last, partial window (see flush())

Batch-dependent layers (batch norm) see micro-batches, not the large batch, so they are the
one thing accumulation does not reproduce. With DistributedDataParallel, wrap the first k-1
backward passes of a window in ``model.no_sync()`` to skip redundant all-reduces.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = ["GradientAccumulator"]


class GradientAccumulator:
    """Accumulate gradients over ``steps`` micro-batches, then clip, step and zero once.

    Args:
        optimizer: any ``torch.optim.Optimizer``. Its parameters' gradients must be zero or
            ``None`` when accumulation starts; the accumulator zeroes them
            (``set_to_none=True``) after every step.
        steps: micro-batches per optimizer step (``k >= 1``; ``1`` means no accumulation).
        max_norm: if given, the accumulated gradient of all the optimizer's parameters is
            clipped to this global ``norm_type``-norm with ``torch.nn.utils.clip_grad_norm_``
            before each step (after unscaling, with a scaler).
        norm_type: the norm for clipping (``2.0``; ``inf`` for the max-norm).
        scaler: an optional ``torch.amp.GradScaler``: losses are scaled before ``backward``,
            the step goes through ``scaler.step`` (skipped when the unscaled gradient holds
            inf/NaN) followed by ``scaler.update()``.

    Attributes:
        micro_step: micro-batches accumulated in the current window (``0 <= micro_step <
            steps`` between calls).
        optimizer_steps: windows stepped so far (including those a scaler skipped).
        last_grad_norm: the total norm before clipping at the last step (a tensor; no host
            sync), or ``None`` without ``max_norm``.
        last_error: why the step of the current window raised, or ``None``. Such a window
            is kept; :meth:`zero_grad` discards it (the way out after a non-finite gradient
            under ``nonfinite="raise"``), or :meth:`step` retries it once its gradients are
            fixed.
    """

    def __init__(self, optimizer: Optimizer, steps: int, max_norm: float | None = None, *,
                 norm_type: float = 2.0, scaler: Any | None = None) -> None:
        if not isinstance(optimizer, Optimizer):
            raise ValueError(f"optimizer must be a torch.optim.Optimizer, got "
                             f"{type(optimizer).__name__}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {steps!r}")
        if max_norm is not None and (
                isinstance(max_norm, bool) or not isinstance(max_norm, (int, float))
                or not math.isfinite(max_norm) or max_norm <= 0):
            raise ValueError(f"max_norm must be a finite number > 0 or None, got "
                                 f"{max_norm!r}")
        if (isinstance(norm_type, bool) or not isinstance(norm_type, (int, float))
                or not norm_type > 0):
            raise ValueError(f"norm_type must be a number > 0 (or inf), got {norm_type!r}")
        if scaler is not None and not all(hasattr(scaler, a)
                                          for a in ("scale", "unscale_", "step", "update")):
            raise ValueError(f"scaler must be a torch.amp.GradScaler or None, got "
                             f"{type(scaler).__name__}")
        self.optimizer = optimizer
        self.steps = steps
        self.max_norm = None if max_norm is None else float(max_norm)
        self.norm_type = float(norm_type)
        self.scaler = scaler
        self.micro_step = 0
        self.optimizer_steps = 0
        self.last_grad_norm: Tensor | None = None
        #: why the last step of the current window raised (``None``: it did not)
        self.last_error: str | None = None

    @property
    def ready(self) -> bool:
        """True when the current window holds ``steps`` micro-batches."""
        return self.micro_step >= self.steps

    def backward(self, loss: Tensor, **backward_kwargs: Any) -> bool:
        """``(loss / steps).backward()`` (through the scaler if any); returns :attr:`ready`.

        ``loss`` must be the micro-batch's *mean* loss. Raises ``RuntimeError`` if the window
        is already complete (call :meth:`step` or :meth:`step_if_ready` first).
        """
        if self.ready:
            if self.last_error is not None:
                raise RuntimeError(f"GradientAccumulator: the window's step failed "
                                   f"({self.last_error}); call zero_grad() to discard the "
                                   "window's gradients and start a new one (or fix them and "
                                   "call step() again)")
            raise RuntimeError(f"GradientAccumulator: the window already holds {self.steps} "
                               "micro-batches; call step() (or step_if_ready()) before the "
                               "next backward()")
        scaled = loss / self.steps
        if self.scaler is not None:
            scaled = self.scaler.scale(scaled)
        scaled.backward(**backward_kwargs)
        self.micro_step += 1
        return self.ready

    def step(self) -> None:
        """Clip (if ``max_norm``), step the optimizer and zero the gradients.

        Raises ``RuntimeError`` unless the window is complete; use :meth:`flush` for a
        partial window.
        """
        if not self.ready:
            raise RuntimeError(f"GradientAccumulator.step(): the window holds "
                               f"{self.micro_step} of {self.steps} micro-batches; call "
                               "flush() to step on a partial window")
        self._step()

    def step_if_ready(self) -> bool:
        """:meth:`step` if the window is complete; returns whether it stepped."""
        if not self.ready:
            return False
        self._step()
        return True

    def flush(self) -> bool:
        """Step on a partial window of ``n < steps`` micro-batches, as one batch of ``n``.

        The accumulated gradient is ``(1/k) * sum_i g_i``; it is multiplied by ``k / n`` so
        that the step uses the mean over the ``n`` micro-batches (the update one batch of
        ``n`` micro-batches would give). Returns ``False`` (doing nothing) when no
        micro-batch is pending. Call :meth:`zero_grad` instead to drop a partial window.
        """
        if self.micro_step == 0:
            return False
        if self.micro_step < self.steps:
            grads = [p.grad for p in self._params() if p.grad is not None]
            if grads:
                torch._foreach_mul_(grads, self.steps / self.micro_step)
            # The gradients are now a complete window's: should the step raise, step()
            # retries it (a second flush() would rescale them again).
            self.micro_step = self.steps
        self._step()
        return True

    def zero_grad(self) -> None:
        """Drop the current window: zero the gradients (``None``) and reset the count.

        This is also how to recover from a window whose step raised (a non-finite gradient
        under ``nonfinite="raise"``, say): the poisoned gradients are discarded and the next
        :meth:`backward` starts a new window.
        """
        self.optimizer.zero_grad(set_to_none=True)
        self.micro_step = 0
        self.last_error = None

    def state_dict(self) -> dict[str, int]:
        """The counters (the gradients themselves are not saved)."""
        return {"micro_step": self.micro_step, "optimizer_steps": self.optimizer_steps}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore :meth:`state_dict`'s counters."""
        self.micro_step = int(state["micro_step"])
        self.optimizer_steps = int(state["optimizer_steps"])

    # ----------------------------------------------------------------------------------------
    def _params(self) -> list[Tensor]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def _step(self) -> None:
        scaler = self.scaler
        if self.max_norm is not None:
            if scaler is not None:
                scaler.unscale_(self.optimizer)  # clip the true gradient, not the scaled one
            self.last_grad_norm = torch.nn.utils.clip_grad_norm_(
                self._params(), self.max_norm, norm_type=self.norm_type)
        try:
            if scaler is not None:
                scaler.step(self.optimizer)
                scaler.update()
            else:
                self.optimizer.step()
        except Exception as e:
            # The window is kept (its gradients may be fixed and stepped again); the next
            # backward() says to call zero_grad() to discard it.
            self.last_error = f"{type(e).__name__}: {e}"
            e.add_note("GradientAccumulator: the window's gradients were kept; call "
                       "zero_grad() to discard them (or fix them and call step() again)")
            raise
        self.optimizer_steps += 1
        self.zero_grad()
