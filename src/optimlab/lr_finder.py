r"""The learning-rate range test (Smith 2017; the fast.ai "LR finder").

Train for a short while with a learning rate that grows exponentially at every step, record the
loss, and read a good learning rate off the curve of loss against learning rate.

**Schedule.** Step :math:`i = 0, \dots, n-1` (``n = num_steps``) uses

.. math:: \eta_i = \eta_{start} \, (\eta_{end} / \eta_{start})^{i / (n - 1)},

so ``lrs[0] == start_lr`` and, if the run is not stopped, ``lrs[-1] == end_lr``, equally spaced
on a log scale. ``losses[i]`` is the loss of step ``i``'s batch evaluated *before* step ``i``'s
update (the value the closure returns), the fast.ai / ``torch-lr-finder`` convention.

**Smoothing.** The curve is noisy with mini-batches, so it is smoothed by a bias-corrected
exponential moving average with factor :math:`s` (``smoothing``, the weight of the newest loss):

.. math:: a_i = (1 - s)\,a_{i-1} + s\,\ell_i,\quad a_{-1} = 0,\qquad
          \bar\ell_i = a_i / (1 - (1 - s)^{i+1}).

**Stopping.** The run stops early, and ``diverged_at`` records the learning rate of that step,
when the loss is not finite, when the optimizer raises :class:`FloatingPointError` (which
includes :class:`optimlab.NonFiniteGradientError`, raised by optimlab's optimizers built with
``nonfinite="raise"``; by default they, like torch.optim's, step an inf/NaN gradient into the
parameters and the next loss is not finite), or when :math:`\bar\ell_i >
\text{diverge\_factor} \cdot \min_{j \le i} \bar\ell_j` (checked only while that minimum is
positive: the test assumes a non-negative loss, as cross-entropy and squared errors are).

**Reading the curve.** At tiny learning rates the loss hardly moves; in the useful range it
falls, fastest somewhere in the middle; past the largest stable learning rate it flattens and
then shoots up. A good learning rate lies in the falling part, well before the minimum: at the
minimum the optimizer is already at the edge of stability. Smith (2017) picks the range where
the loss starts to fall and where it stops falling; the suggestion rules automate that:

* ``"steepest"``: the learning rate where the smoothed loss falls fastest, i.e. the most
  negative :math:`d\bar\ell / d\log\eta` (``numpy.gradient`` on the log-lr grid), ignoring the
  first ``max(1, m // 10)`` and the last ``max(1, m // 20)`` of the ``m`` recorded points (the
  warm-up of the average, the divergence spike) and every point after the minimum of the
  smoothed loss (past it training is diverging, and a loss falling back after a spike is no
  sign of a good lr). ``None`` if the loss never falls in that window.
* ``"valley"`` (the default; after the fast.ai valley rule): in the same trimmed window, the
  *longest valley* is the longest strictly decreasing subsequence of the smoothed loss (not
  necessarily contiguous, so mini-batch bumps do not break it). Among equally long ones, the one
  that ends first; along it, each point's predecessor is the latest point that makes it
  longest, so a flat stretch before the descent contributes only its last point. With its first
  point at :math:`\eta_a` and its last (lowest) at :math:`\eta_b`, the suggestion lies 2/3 of
  the way down it on the log scale, :math:`\eta_a^{1/3}\,\eta_b^{2/3}` (fastai's own code
  takes the point about halfway along the valley's index range). ``None`` if the window holds
  no decrease at all.
* ``"min_loss_div10"``: the learning rate of the minimum smoothed loss (over all recorded
  finite points), divided by 10.

"valley" is fastai's default suggestion; "steepest" and "min_loss_div10" are its older ones.
All of them depend somewhat on ``start_lr`` (the valley usually starts near it) and on the
smoothing, so look at the plot: the suggestion is a starting point, not a measurement.

Reference: Leslie N. Smith, "Cyclical Learning Rates for Training Neural Networks", WACV 2017
(arXiv:1506.01186), sec. 3.3 "How can one estimate reasonable minimum and maximum boundary
values?"; J. Howard, S. Gugger, fastai ``Learner.lr_find`` and ``valley``.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["RULES", "LRFinderResult", "lr_range_test", "suggest_lrs", "validate_range_test_args"]

#: The suggestion rules, by name (see the module docstring for their definitions).
RULES: tuple[str, ...] = ("steepest", "valley", "min_loss_div10")

#: A loss function: ``loss_fn(batch)`` or ``loss_fn(model, batch)``, returning a scalar tensor.
LossFn = Callable[[Any], Tensor] | Callable[[nn.Module, Any], Tensor]


@dataclass
class LRFinderResult:
    """The outcome of :func:`lr_range_test`.

    Attributes:
        lrs: learning rate of each recorded step (of the first param group).
        losses: raw loss of each step (the last one may be ``inf``/``nan`` if it diverged).
        smoothed: the bias-corrected exponential moving average of ``losses``.
        suggestion: the learning rate recommended by ``rule`` (``None`` if the rule found none).
        suggestions: every rule's suggestion, ``{"steepest": ..., "valley": ...,
            "min_loss_div10": ...}``.
        diverged_at: learning rate of the step at which the run stopped for divergence
            (``None`` if it reached ``end_lr``).
        rule: the rule ``suggestion`` comes from.
    """

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float | None
    suggestions: dict[str, float | None] = field(default_factory=dict)
    diverged_at: float | None = None
    rule: str = "valley"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (non-finite numbers become ``None``)."""
        return _json_safe(asdict(self))

    def summary(self) -> str:
        """One line: the suggestion and every rule's value, and where it diverged."""
        def fmt(x: float | None) -> str:
            return "none" if x is None else f"{x:.3g}"

        rules = ", ".join(f"{k} {fmt(v)}" for k, v in self.suggestions.items())
        div = (f"diverged at lr {fmt(self.diverged_at)}" if self.diverged_at is not None
               else "did not diverge")
        last = fmt(self.lrs[-1]) if self.lrs else "none"
        return (f"suggested lr {fmt(self.suggestion)} ({self.rule}); {rules}; {div} "
                f"({len(self.lrs)} steps up to lr {last})")

    def plot(self, ax: Axes | None = None) -> Figure:
        """Loss against learning rate (log x axis): raw losses faint, smoothed solid, each
        rule's suggestion a dashed vertical line (the chosen one thicker), the divergence point
        a cross. The y range is cut a little above the smoothed curve's descent so that the
        divergence spike does not flatten the rest. Draws on ``ax`` if given (and returns its
        figure), otherwise on a new :class:`matplotlib.figure.Figure` (no pyplot state)."""
        if ax is None:
            from matplotlib.figure import Figure

            fig = Figure(figsize=(6.4, 4.2), layout="constrained")
            ax = fig.add_subplot()
        else:
            fig = ax.figure  # type: ignore[assignment]
        lrs = np.asarray(self.lrs, dtype=float)
        raw = np.asarray(self.losses, dtype=float)
        sm = np.asarray(self.smoothed, dtype=float)
        ax.plot(lrs, raw, color="tab:blue", alpha=0.3, lw=1, label="loss")
        ax.plot(lrs, sm, color="tab:blue", lw=2, label="smoothed loss")
        colors = {"steepest": "tab:orange", "valley": "tab:green", "min_loss_div10": "tab:red"}
        for name, lr in self.suggestions.items():
            if lr is None:
                continue
            chosen = name == self.rule
            ax.axvline(lr, color=colors.get(name, "gray"), ls="--", lw=2.2 if chosen else 1.1,
                       label=f"{name}: {lr:.3g}" + (" (suggested)" if chosen else ""))
        ax.set_xscale("log")
        finite = np.isfinite(sm)
        top = math.inf
        if finite.any():
            i_min = int(np.nanargmin(np.where(finite, sm, np.nan)))
            lo, hi = float(sm[i_min]), float(np.nanmax(np.where(finite, sm, np.nan)[: i_min + 1]))
            raw_head = raw[: i_min + 1]
            raw_head = raw_head[np.isfinite(raw_head)]
            if raw_head.size:
                lo = min(lo, float(raw_head.min()))
            span = max(hi - lo, 1e-12 * max(abs(hi), 1.0))
            top = hi + 0.5 * span
            ax.set_ylim(lo - 0.1 * span, top)
        if self.diverged_at is not None:
            last = sm[finite][-1] if finite.any() else 0.0
            ax.plot([self.diverged_at], [min(float(last), top)], "x", color="black", ms=9,
                    clip_on=False, label=f"stopped (diverging) at {self.diverged_at:.3g}")
        ax.set_xlabel("learning rate (log scale)")
        ax.set_ylabel("training loss")
        ax.set_title("Learning-rate range test")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
        return fig  # type: ignore[return-value]


# ----------------------------------------------------------------------------- validation


def _positive_finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return v


def validate_range_test_args(*, start_lr: float = 1e-7, end_lr: float = 10.0,
                             num_steps: int = 100, smoothing: float = 0.05,
                             diverge_factor: float = 4.0, rule: str = "valley") -> None:
    """Raise ``ValueError`` naming the argument if one of :func:`lr_range_test`'s settings is
    invalid (so that callers can check them before building anything expensive)."""
    start = _positive_finite("start_lr", start_lr)
    end = _positive_finite("end_lr", end_lr)
    if not start < end:
        raise ValueError(f"start_lr must be < end_lr, got start_lr={start_lr!r}, "
                         f"end_lr={end_lr!r}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) \
            or num_steps < 10:
        raise ValueError(f"num_steps must be an integer >= 10, got {num_steps!r}")
    if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float, np.floating)) \
            or not 0 < float(smoothing) <= 1:
        raise ValueError(f"smoothing must be a number in (0, 1], got {smoothing!r}")
    if isinstance(diverge_factor, bool) \
            or not isinstance(diverge_factor, (int, float, np.integer, np.floating)) \
            or math.isnan(float(diverge_factor)) or not float(diverge_factor) > 1:
        raise ValueError(f"diverge_factor must be a number > 1 (inf: never stop on a rising "
                         f"loss), got {diverge_factor!r}")
    if not isinstance(rule, str) or rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; allowed: {', '.join(RULES)}")


# ----------------------------------------------------------------------------- suggestions


def _window(sm: np.ndarray) -> tuple[int, int]:
    """``[a, b)``: the recorded points the steepest and valley rules look at."""
    m = len(sm)
    if m == 0:
        return 0, 0
    return max(1, m // 10), min(m - max(1, m // 20), int(np.argmin(sm)) + 1)


def _steepest(lrs: np.ndarray, sm: np.ndarray) -> float | None:
    a, b = _window(sm)
    if b - a < 2 or len(sm) < 3:
        return None
    grad = np.gradient(sm, np.log(lrs))
    i = a + int(np.argmin(grad[a:b]))
    return float(lrs[i]) if grad[i] < 0 else None


def _valley(lrs: np.ndarray, sm: np.ndarray) -> float | None:
    a, b = _window(sm)
    s = sm[a:b]
    m = len(s)
    if m < 2:
        return None
    lds = np.ones(m, dtype=np.int64)  # length of the longest decreasing subsequence ending at i
    prev = np.full(m, -1, dtype=np.int64)
    for i in range(1, m):
        cand = np.where(s[:i] > s[i], lds[:i], 0)
        j = i - 1 - int(np.argmax(cand[::-1]))  # the latest of the longest predecessors
        if cand[j] > 0:
            lds[i], prev[i] = cand[j] + 1, j
    end = int(np.argmax(lds))
    if lds[end] < 2:
        return None
    start = end
    while prev[start] >= 0:
        start = int(prev[start])
    lo, hi = math.log(lrs[a + start]), math.log(lrs[a + end])
    return float(math.exp(lo + 2.0 / 3.0 * (hi - lo)))


def _min_div10(lrs: np.ndarray, sm: np.ndarray) -> float | None:
    if len(sm) == 0:
        return None
    return float(lrs[int(np.argmin(sm))]) / 10.0


def suggest_lrs(lrs: Iterable[float], smoothed: Iterable[float]) -> dict[str, float | None]:
    """Every rule's suggestion for a (smoothed) loss curve over increasing learning rates; the
    rules are defined in the module docstring. Non-finite points are dropped first."""
    x = np.asarray(list(lrs), dtype=float)
    y = np.asarray(list(smoothed), dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"lrs and smoothed differ in length ({x.size} vs {y.size})")
    keep = np.isfinite(y) & np.isfinite(x) & (x > 0)
    x, y = x[keep], y[keep]
    return {"steepest": _steepest(x, y), "valley": _valley(x, y),
            "min_loss_div10": _min_div10(x, y)}


# ----------------------------------------------------------------------------- the test


def _takes_model(loss_fn: Callable[..., Any]) -> bool:
    """Whether ``loss_fn`` is called as ``loss_fn(model, batch)``: it has (at least) two
    required positional parameters. Anything else (one required parameter, ``*args`` only, a
    signature that cannot be read) is called as ``loss_fn(batch)``."""
    try:
        sig = inspect.signature(loss_fn)
    except (TypeError, ValueError):
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [p for p in sig.parameters.values()
                if p.kind in positional and p.default is inspect.Parameter.empty]
    return len(required) >= 2


def _cycle_batches(batches: Iterable[Any]) -> Iterator[Any]:
    if iter(batches) is batches:  # a one-shot iterator: keep what it yields and replay it
        cache: list[Any] = []
        for item in batches:
            cache.append(item)
            yield item
        if not cache:
            raise ValueError("batches is empty: the range test needs at least one batch")
        while True:
            yield from cache
    while True:
        n = 0
        for item in batches:
            n += 1
            yield item
        if n == 0:
            raise ValueError("batches is empty: the range test needs at least one batch")


def _set_lrs(optimizer: torch.optim.Optimizer, lr: float, ratios: list[float]) -> None:
    for group, ratio in zip(optimizer.param_groups, ratios):
        value = lr * ratio
        if isinstance(group["lr"], Tensor):
            group["lr"].fill_(value)
        else:
            group["lr"] = value


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def lr_range_test(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: LossFn,
                  batches: Iterable[Any], *, start_lr: float = 1e-7, end_lr: float = 10.0,
                  num_steps: int = 100, smoothing: float = 0.05, diverge_factor: float = 4.0,
                  rule: str = "valley", restore: bool = True) -> LRFinderResult:
    r"""Run the learning-rate range test on any model, optimizer, loss and data.

    Takes ``num_steps`` optimizer steps (fewer if the loss diverges) with the learning rate
    growing exponentially from ``start_lr`` to ``end_lr``, records the loss of each step and
    suggests a learning rate; see the module docstring for the formulas, the stopping rule and
    the suggestion rules, and :meth:`LRFinderResult.plot` to look at the curve (do: the
    suggestion is a starting point, the curve is the information).

    Each step calls ``optimizer.step(closure)``, the closure zeroing the gradients, computing
    the loss of the next batch and back-propagating it, so closure-based optimizers (L-BFGS,
    SAM) work. The model is put in training mode for the test.

    Learning rates: every param group's ``lr`` is set at every step. If the groups start with
    different learning rates, they keep their ratios: group ``g`` gets
    :math:`\eta_i \cdot lr_g / lr_0` (``lr_0``: the first group's), and ``lrs`` records the
    first group's. If any group's starting lr is not positive, all groups get :math:`\eta_i`.
    (Tensor-valued ``lr`` entries are filled in place.)

    Restoring (``restore=True``, the default): afterwards, also when an exception escapes
    (``try``/``finally``), the model's parameters and buffers (a deep copy of its
    ``state_dict``), the optimizer's ``state_dict`` (its state and every group's hyperparameters,
    learning rates included), the ``.grad`` of every parameter, the training mode of every
    submodule and torch's global RNG state (CPU, and CUDA where initialised: dropout draws from
    it) are put back exactly as they were, bit for bit. Parameters the optimizer holds outside
    ``model`` are restored too. The copies cost one extra model and optimizer state in memory.
    With ``restore=False`` nothing is put back: the model is left trained at high learning rates
    and the optimizer's lr at the last one tested.

    Args:
        model: the model being trained (its ``state_dict`` is saved and restored).
        optimizer: an optimizer over (some of) ``model``'s parameters; any
            ``torch.optim.Optimizer``, optimlab's included.
        loss_fn: ``loss_fn(batch)`` or ``loss_fn(model, batch)`` (chosen by the number of
            required positional parameters: two or more means the second form), returning a
            scalar loss tensor; it moves the batch to the device if needed.
        batches: any iterable of batches, e.g. a list of ``(x, y)`` tuples, a ``DataLoader``
            or a generator; cycled if it has fewer than ``num_steps`` batches.
        start_lr: first learning rate (> 0).
        end_lr: last learning rate (> ``start_lr``).
        num_steps: number of steps (>= 10).
        smoothing: weight of the newest loss in the moving average, in (0, 1]; 1 is no
            smoothing.
        diverge_factor: stop when the smoothed loss exceeds this times the best smoothed loss
            so far (> 1; ``math.inf`` never stops on a rising finite loss).
        rule: which rule gives ``suggestion``: one of :data:`RULES`.
        restore: put model, optimizer, gradients, modes and RNG back afterwards.

    Returns:
        An :class:`LRFinderResult`.

    Raises:
        ValueError: an invalid argument (the message names it), or empty ``batches``.

    Example::

        model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1))
        opt = optimlab.Adam(model.parameters())
        res = lr_range_test(model, opt, lambda m, b: F.mse_loss(m(b[0]), b[1]), loader)
        print(res.suggestion)
        res.plot().savefig("lr_find.png")
    """
    validate_range_test_args(start_lr=start_lr, end_lr=end_lr, num_steps=num_steps,
                             smoothing=smoothing, diverge_factor=diverge_factor, rule=rule)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got "
                        f"{type(optimizer).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    start, end, n = float(start_lr), float(end_lr), int(num_steps)
    s, factor = float(smoothing), float(diverge_factor)

    saved: dict[str, Any] = {}
    if restore:
        saved["model"] = copy.deepcopy(model.state_dict())
        saved["optimizer"] = copy.deepcopy(optimizer.state_dict())
        saved["modes"] = [(m, m.training) for m in model.modules()]
        in_model = {id(p) for p in model.parameters()}
        params: dict[int, Tensor] = {id(p): p for p in model.parameters()}
        for g in optimizer.param_groups:
            for p in g["params"]:
                params.setdefault(id(p), p)
        saved["grads"] = [(p, None if p.grad is None else p.grad.detach().clone())
                          for p in params.values()]
        saved["outside"] = [(p, p.detach().clone()) for i, p in params.items()
                            if i not in in_model]
        saved["rng"] = torch.get_rng_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            saved["cuda_rng"] = torch.cuda.get_rng_state_all()

    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    diverged_at: float | None = None
    try:
        base = [float(g["lr"]) for g in optimizer.param_groups]
        if base and all(math.isfinite(b) and b > 0 for b in base):
            ratios = [b / base[0] for b in base]
        else:
            ratios = [1.0] * len(base)
        takes_model = _takes_model(loss_fn)
        stream = _cycle_batches(batches)
        model.train()
        avg, best = 0.0, math.inf
        for i in range(n):
            lr = start * (end / start) ** (i / (n - 1))
            _set_lrs(optimizer, lr, ratios)
            batch = next(stream)
            first: list[float] = []

            def closure(batch: Any = batch, first: list[float] = first) -> Tensor:
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model, batch) if takes_model else loss_fn(batch)  # type: ignore[call-arg]
                if not isinstance(loss, Tensor) or loss.numel() != 1:
                    raise TypeError("loss_fn must return a scalar tensor, got "
                                    f"{type(loss).__name__}"
                                    + (f" of shape {tuple(loss.shape)}"
                                       if isinstance(loss, Tensor) else ""))
                if not first:
                    first.append(float(loss.detach()))
                loss.backward()
                return loss

            try:
                optimizer.step(closure)
                value = first[0] if first else math.nan
            except FloatingPointError:  # e.g. optimlab.NonFiniteGradientError
                value = first[0] if first else math.nan
                if math.isfinite(value):
                    value = math.inf
            avg = (1.0 - s) * avg + s * value
            smooth = avg / (1.0 - (1.0 - s) ** (i + 1))
            lrs.append(lr)
            losses.append(value)
            smoothed.append(smooth)
            if not math.isfinite(smooth):
                diverged_at = lr
                break
            best = min(best, smooth)
            if best > 0 and smooth > factor * best:
                diverged_at = lr
                break
    finally:
        if restore:
            with torch.no_grad():
                model.load_state_dict(saved["model"])
                for p, value in saved["outside"]:
                    p.copy_(value)
            optimizer.load_state_dict(saved["optimizer"])
            for p, grad in saved["grads"]:
                p.grad = grad
            for m, mode in saved["modes"]:
                m.training = mode
            torch.set_rng_state(saved["rng"])
            if "cuda_rng" in saved:
                torch.cuda.set_rng_state_all(saved["cuda_rng"])

    suggestions = suggest_lrs(lrs, smoothed)
    return LRFinderResult(lrs=lrs, losses=losses, smoothed=smoothed,
                          suggestion=suggestions[rule], suggestions=suggestions,
                          diverged_at=diverged_at, rule=rule)
