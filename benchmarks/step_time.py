"""Optimizer step time: optimlab against torch.optim and against the memory-bandwidth floor.

What it measures
----------------
One ``optimizer.step()`` over a transformer-like parameter set (token embedding; per layer
qkv, out-proj and 4x MLP weights and biases and two LayerNorms; a final LayerNorm) of about
``--params`` parameters, with random parameters and random, fixed gradients. Every optimizer is
run with representative settings (SGD momentum 0.9, AdamW weight decay 0.01, the rest at
torch.optim's defaults) by up to five implementations:

* ``optimlab``          optimlab's default eager path (``torch._foreach_*`` kernels; on the CPU
                        one cache-sized tile at a time), ``nonfinite`` as ``--nonfinite`` says
                        (the library default, ``"ignore"``, unless told otherwise);
* ``optimlab fused``    optimlab with ``fused=True`` (the update rules compiled by torch.compile);
* ``torch default``     ``torch.optim.X(...)`` with neither ``foreach`` nor ``fused``: what a user
                        gets (on the CPU its for-loop, one tensor at a time; on CUDA foreach);
* ``torch foreach``     ``torch.optim.X(..., foreach=True)``;
* ``torch fused``       ``torch.optim.X(..., fused=True)``, where torch has it for the device
                        (found by trying; "n/a" otherwise);
* ``torch compiled``    ``torch.compile(opt.step)`` of the foreach optimizer (``--torch-compiled``;
                        on by default on CUDA only, compiling it on CPU is slow).

Each implementation gets its own parameters, gradients and state (regenerated from the same
seed), is warmed up, then timed step by step in steady state (nothing is reset between steps):
``torch.cuda.Event`` pairs on CUDA, ``time.perf_counter`` on CPU. The table shows the median.
On CUDA the implementations run one after the other (each freed before the next: 1B parameters
fit once); on the CPU they are built together and timed one step each in turn, in alternating
order (``--interleave``), so that a shared machine's drifting speed affects all alike. On CUDA
the host time of a step (without waiting for the device) is reported too: when it exceeds the
device time, the GPU idles and the step is host-bound.
The first step (state allocation, and the compile for compiled implementations, which
torch.compile caches on disk across processes) is reported separately in seconds.

The same run measures the memory bandwidth (a large ``dst.copy_(src)``: bytes read + written
over the median time) and, for each optimizer, its byte floor: the bytes the algorithm must move
per step (``BYTES_PER_PARAM_FP32``, scaled to ``--dtype``) times the number of parameters. The
floor time is those bytes over the measured bandwidth; no implementation can beat it by much
once the working set is larger than the CPU caches.

How to read the ratios
----------------------
* ``vs torch``: median time over torch.optim's fused time (its foreach time where torch has no
  fused kernel for the optimizer; the column ``base`` in the JSON says which). Below 1 is faster
  than torch.optim. Interleaved (CPU), it is the median of the per-round ratios, so that the
  machine's drift between rounds cancels.
* ``vs default``: the same, over torch.optim's default step (``torch default``): the drop-in
  comparison (``optimlab.X(...)`` for ``torch.optim.X(...)``, no other argument changed).
* ``vs floor``: median time over the byte-floor time. 1.0 means the step runs at the measured
  copy bandwidth; 3.0 means three times slower than memory allows (extra passes over the
  tensors, launch overhead, ...). Small parameter sets that fit in cache can read below 1.
* ``memory``: on CUDA the peak of ``torch.cuda.max_memory_allocated`` above what parameters and
  gradients already held (state plus temporaries); on CPU the bytes of optimizer state.

Usage::

    python benchmarks/step_time.py                                  # CPU, 12M params, all nine
    python benchmarks/step_time.py --device cuda --params 1e9 --json benchmarks/results/h100.json
    python benchmarks/step_time.py --optimizers adamw,sgd --repeat 50 --torch-compiled
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import optimlab
from optimlab.lab.environment import cpu_model

# Bytes one step must move per parameter in float32: every tensor the update reads plus every
# tensor it writes, once each (4 bytes a float32 element; p = parameter, g = gradient, state
# names as in torch.optim). Scalars (step counts, NAdam's mu_product) are not counted. Scaled
# by element_size / 4 for other dtypes (state has the parameter's dtype, as in torch.optim).
BYTES_PER_PARAM_FP32: dict[str, int] = {
    # momentum 0.9: read p, g, momentum_buffer; write p, momentum_buffer (no momentum: 12 =
    # read p, g; write p).
    "sgd": 4 * (3 + 2),
    # read p, g, sum; write p, sum.
    "adagrad": 4 * (3 + 2),
    # plain (not centered, no momentum): read p, g, square_avg; write p, square_avg
    # (momentum adds momentum_buffer: 28; centered adds grad_avg: +8).
    "rmsprop": 4 * (3 + 2),
    # read p, g, exp_avg, exp_avg_sq; write p, exp_avg, exp_avg_sq (weight decay, coupled or
    # decoupled, reads p, which is read anyway).
    "adam": 4 * (4 + 3),
    "adamw": 4 * (4 + 3),
    "nadam": 4 * (4 + 3),
    "radam": 4 * (4 + 3),
    # read p, g, exp_avg, exp_inf; write p, exp_avg, exp_inf.
    "adamax": 4 * (4 + 3),
    # read p, g, square_avg, acc_delta; write p, square_avg, acc_delta.
    "adadelta": 4 * (4 + 3),
}

#: Per-element state tensors each optimizer reads and writes (with the settings below): with
#: ``state_dtype=torch.bfloat16`` each moves 2 + 2 bytes per parameter instead of 4 + 4.
STATE_TENSORS: dict[str, int] = {"sgd": 1, "adagrad": 1, "rmsprop": 1, "adam": 2, "adamw": 2,
                                 "nadam": 2, "radam": 2, "adamax": 2, "adadelta": 2}

#: Representative settings, passed as-is to both optimlab and torch.optim.
SETTINGS: dict[str, dict[str, Any]] = {
    "sgd": {"lr": 1e-2, "momentum": 0.9},
    "adagrad": {"lr": 1e-2},
    "rmsprop": {"lr": 1e-3},
    "adam": {"lr": 1e-3},
    "adamw": {"lr": 1e-3, "weight_decay": 1e-2},
    "nadam": {"lr": 2e-3},
    "radam": {"lr": 1e-3},
    "adadelta": {"lr": 1.0},
    "adamax": {"lr": 2e-3},
}

IMPLS = ("optimlab", "optimlab fused", "optimlab fused bf16", "torch default", "torch foreach",
         "torch fused",
         "torch compiled")
#: Implementations run unless --impls says otherwise ("optimlab fused bf16": --bf16-states).
DEFAULT_IMPLS = tuple(i for i in IMPLS if i != "optimlab fused bf16")
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
          "float16": torch.float16}

StepFn = Callable[[], Any]


# ----- parameter set --------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelShape:
    """A transformer-like parameter layout."""

    d_model: int
    layers: int
    vocab: int
    extra: int = 0  # additional (d_model,) vectors (norm weights), to reach a tensor count

    def shapes(self) -> list[tuple[int, ...]]:
        d = self.d_model
        out: list[tuple[int, ...]] = [(self.vocab, d)]  # token embedding
        for _ in range(self.layers):
            out += [
                (3 * d, d), (3 * d,),   # qkv projection
                (d, d), (d,),           # attention output projection
                (4 * d, d), (4 * d,),   # MLP up
                (d, 4 * d), (d,),       # MLP down
                (d,), (d,),             # LayerNorm 1 weight, bias
                (d,), (d,),             # LayerNorm 2 weight, bias
            ]
        out += [(d,), (d,)]  # final LayerNorm
        out += [(d,)] * self.extra
        return out

    def numel(self) -> int:
        return sum(math.prod(s) for s in self.shapes())


def choose_shape(target: float, layers: int, embed_share: float = 0.2,
                 tensors: int | None = None) -> ModelShape:
    """Pick d_model (so the blocks hold about ``1 - embed_share`` of ``target``) and the vocab
    (to fill the rest), giving a total within ``d_model`` parameters of ``target``.

    ``tensors``: the exact number of tensors wanted (at least 15); the layers are then as many
    as fit (12 tensors each, plus the embedding and the final LayerNorm) and the rest are extra
    ``(d_model,)`` vectors.
    """
    extra = 0
    if tensors is not None:
        if tensors < 15:
            raise ValueError(f"tensors must be at least 15 (one layer), got {tensors}")
        layers = (tensors - 3) // 12
        extra = tensors - (12 * layers + 3)
    per_layer_d2 = 12 * layers  # 3d^2 + d^2 + 4d^2 + 4d^2 per layer
    d = math.sqrt((1.0 - embed_share) * target / per_layer_d2)
    step = 64 if d >= 512 else 8
    d_model = max(8, int(d // step) * step)  # rounded down, so the vocab stays positive
    blocks = ModelShape(d_model, layers, 0, extra).numel()
    vocab = max(1, round((target - blocks) / d_model))
    return ModelShape(d_model, layers, vocab, extra)


def make_params(shapes: Sequence[tuple[int, ...]], dtype: torch.dtype, device: torch.device,
                seed: int = 0) -> list[torch.nn.Parameter]:
    """Random parameters with random gradients attached; the same for the same seed."""
    gen = torch.Generator(device=device).manual_seed(seed)
    params = []
    for shape in shapes:
        p = torch.nn.Parameter(0.02 * torch.randn(shape, generator=gen, device=device,
                                                  dtype=dtype))
        # Never zeros: a zero gradient would let some kernels take shortcuts.
        p.grad = 1e-2 * torch.randn(shape, generator=gen, device=device, dtype=dtype)
        params.append(p)
    return params


# ----- environment and bandwidth -------------------------------------------------------------
def environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "optimlab": optimlab.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        props = torch.cuda.get_device_properties(device)
        env["gpu_memory_bytes"] = props.total_memory
        env["gpu_capability"] = f"{props.major}.{props.minor}"
        env["gpu_sms"] = props.multi_processor_count
        try:
            import triton
            env["triton"] = triton.__version__
        except ImportError:
            env["triton"] = None
    return env


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_bandwidth(device: torch.device, nbytes: int, repeat: int) -> dict[str, Any]:
    """Copy bandwidth: bytes read + written by ``dst.copy_(src)`` over the median time."""
    n = nbytes // 4
    src = torch.rand(n, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):  # touch the pages, warm up
        dst.copy_(src)
    times = time_steps(lambda: dst.copy_(src), device, repeat)
    t = statistics.median(times)
    return {"bytes_copied": 4 * n, "times_s": times, "median_s": t,
            "gb_per_s": 2 * 4 * n / t / 1e9}


# ----- timing ---------------------------------------------------------------------------------
def time_steps(fn: StepFn, device: torch.device, repeat: int,
               host: list[float] | None = None) -> list[float]:
    """Seconds per call of ``fn``, each call timed on its own (on CUDA: device time between
    events; ``host`` then receives the seconds each call took on the host, without waiting for
    the device: a step whose host time exceeds its device time leaves the GPU idle)."""
    times: list[float] = []
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(repeat)]
        sync(device)
        for start, end in events:
            start.record()
            t0 = time.perf_counter()
            fn()
            if host is not None:
                host.append(time.perf_counter() - t0)
            end.record()
        sync(device)
        times = [start.elapsed_time(end) / 1e3 for start, end in events]
    else:
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times


def state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of the tensors in an optimizer's state (optimlab's ``state_bytes`` for torch)."""
    if isinstance(opt, optimlab.ChainOptimizer):
        return opt.state_bytes()
    return sum(v.numel() * v.element_size() for st in opt.state.values() for v in st.values()
               if isinstance(v, Tensor))


@dataclass
class Result:
    impl: str
    status: str = "ok"  # "ok", "n/a" (torch has no such kernel) or "error"
    note: str = ""
    median_ms: float = float("nan")
    times_ms: list[float] = field(default_factory=list)
    first_step_s: float = float("nan")
    state_bytes: int = 0
    peak_memory_bytes: int | None = None  # CUDA only: steady-state steps
    first_step_peak_bytes: int | None = None  # CUDA only: the first step (compile included)
    leftover_bytes: int | None = None  # CUDA only: still allocated after the cleanup
    vs_torch: float = float("nan")
    vs_default: float = float("nan")  # over torch.optim's default step (paired when interleaved)
    vs_floor: float = float("nan")
    floor_ms: float = float("nan")  # this implementation's own byte floor (bf16 states: less)
    host_ms: float = float("nan")  # CUDA only: median host time of a step (no device wait)


def build(impl: str, name: str, params: list[torch.nn.Parameter], nonfinite: str
          ) -> tuple[torch.optim.Optimizer, StepFn]:
    """The optimizer for ``impl`` and the function one step calls."""
    kwargs = SETTINGS[name]
    ol_cls = optimlab.OPTIMIZERS[name]
    torch_cls = getattr(torch.optim, ol_cls.__name__)
    opt: torch.optim.Optimizer
    if impl == "optimlab":
        opt = ol_cls(params, **kwargs, nonfinite=nonfinite)
    elif impl == "optimlab fused":
        opt = ol_cls(params, **kwargs, nonfinite=nonfinite, fused=True)
    elif impl == "optimlab fused bf16":
        opt = ol_cls(params, **kwargs, nonfinite=nonfinite, fused=True,
                     state_dtype=torch.bfloat16)
    elif impl == "torch default":
        opt = torch_cls(params, **kwargs)
    elif impl == "torch foreach":
        opt = torch_cls(params, **kwargs, foreach=True)
    elif impl == "torch fused":
        opt = torch_cls(params, **kwargs, fused=True)
    elif impl == "torch compiled":
        opt = torch_cls(params, **kwargs, foreach=True)
        return opt, torch.compile(opt.step)
    else:
        raise ValueError(f"unknown implementation {impl!r}")
    return opt, opt.step


def run_impl(impl: str, name: str, shapes: Sequence[tuple[int, ...]], dtype: torch.dtype,
             device: torch.device, warmup: int, repeat: int, nonfinite: str) -> Result:
    """Time one implementation of one optimizer on fresh parameters, gradients and state.

    Everything the implementation allocated (parameters, gradients, state, the optimizer, the
    step function and what compiled code holds) is freed before this returns, so the next
    implementation starts from the same memory: on CUDA ``leftover_bytes`` says how much was
    still allocated afterwards (0 when the cleanup worked).
    """
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    try:
        # Every reference to the optimizer (``opt``, the bound or compiled ``step``, an
        # exception's traceback) lives in _run_impl's frame, which is gone once it returns:
        # only then can the memory be collected and handed back.
        res = _run_impl(impl, name, shapes, dtype, device, warmup, repeat, nonfinite)
    finally:
        if impl in ("optimlab fused", "optimlab fused bf16", "torch compiled"):
            # Compiled code can hold on to the optimizer (and its state) through dynamo's
            # caches; drop them so one implementation's memory is not charged to the next.
            torch._dynamo.reset()
        gc.collect()
        if device.type == "cuda":
            sync(device)
            torch.cuda.empty_cache()
    if device.type == "cuda":
        res.leftover_bytes = torch.cuda.memory_allocated(device) - before
    return res


def _fused_unavailable(e: BaseException) -> bool:
    """Whether ``e`` (raised building or first stepping ``fused=True``) means torch has no fused
    kernel for this optimizer on this device/dtype, rather than a real failure."""
    if isinstance(e, torch.OutOfMemoryError):
        return False
    msg = str(e)
    if isinstance(e, TypeError):
        return "fused" in msg  # unexpected keyword argument 'fused'
    return "fused" in msg or "supported devices" in msg


def _unavailable_note(e: BaseException, name: str) -> str:
    """Why torch has no fused kernel here (``e`` passed :func:`_fused_unavailable`)."""
    if isinstance(e, TypeError):
        return f"torch.optim has no fused {optimlab.OPTIMIZERS[name].__name__}"
    return f"{type(e).__name__}: {str(e).splitlines()[0]}"


def _run_impl(impl: str, name: str, shapes: Sequence[tuple[int, ...]], dtype: torch.dtype,
              device: torch.device, warmup: int, repeat: int, nonfinite: str) -> Result:
    res = Result(impl)
    try:
        params = make_params(shapes, dtype, device)
        sync(device)
        if device.type == "cuda":
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        try:
            opt, step = build(impl, name, params, nonfinite)
            t0 = time.perf_counter()
            step()
            sync(device)
            res.first_step_s = time.perf_counter() - t0
        except (RuntimeError, ValueError, TypeError, NotImplementedError) as e:
            if impl != "torch fused" or not _fused_unavailable(e):
                raise
            res.status, res.note = "n/a", _unavailable_note(e, name)
            return res
        if device.type == "cuda":
            # The first step's peak includes the compiler's own allocations (inductor clones
            # the mutated inputs to benchmark kernel configs); report it apart, and measure
            # the steady-state peak (state, still allocated, plus a step's temporaries) anew.
            res.first_step_peak_bytes = torch.cuda.max_memory_allocated(device) - base
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(warmup):
            step()
        host: list[float] = []
        times = time_steps(step, device, repeat, host)
        res.times_ms = [1e3 * t for t in times]
        if host:
            res.host_ms = 1e3 * statistics.median(host)
        res.median_ms = statistics.median(res.times_ms)
        res.state_bytes = state_bytes(opt)
        if device.type == "cuda":
            res.peak_memory_bytes = torch.cuda.max_memory_allocated(device) - base
        bad = [i for i, p in enumerate(params) if not bool(torch.isfinite(p).all())]
        if bad:
            raise FloatingPointError(f"non-finite parameters after the steps (tensors {bad[:5]})")
    except Exception as e:  # keep the other results; the run exits non-zero at the end
        res.status, res.note = "error", f"{type(e).__name__}: {str(e).splitlines()[0]}"
    return res


def run_interleaved(impls: Sequence[str], name: str, shapes: Sequence[tuple[int, ...]],
                    dtype: torch.dtype, device: torch.device, warmup: int, repeat: int,
                    nonfinite: str) -> list[Result]:
    """CPU: every implementation at once (each with its own parameters, gradients and state),
    timed one step each in turn, in alternating order, so that a machine whose speed drifts
    (shared hosts, memory-bandwidth phases) weighs on all of them alike."""
    results = {impl: Result(impl) for impl in impls}
    steps: dict[str, tuple[torch.optim.Optimizer, StepFn, list[torch.nn.Parameter]]] = {}
    for impl in impls:
        res = results[impl]
        try:
            params = make_params(shapes, dtype, device)
            opt, step = build(impl, name, params, nonfinite)
            t0 = time.perf_counter()
            step()
            res.first_step_s = time.perf_counter() - t0
            steps[impl] = (opt, step, params)
        except (RuntimeError, ValueError, TypeError, NotImplementedError) as e:
            if impl == "torch fused" and _fused_unavailable(e):
                res.status, res.note = "n/a", _unavailable_note(e, name)
            else:
                res.status, res.note = "error", f"{type(e).__name__}: {str(e).splitlines()[0]}"
    for _ in range(warmup):
        for _, step, _ in steps.values():
            step()
    order = list(steps)
    for r in range(repeat):
        for impl in (order if r % 2 == 0 else order[::-1]):
            t0 = time.perf_counter()
            steps[impl][1]()
            results[impl].times_ms.append(1e3 * (time.perf_counter() - t0))
    for impl, (opt, _, params) in steps.items():
        res = results[impl]
        res.median_ms = statistics.median(res.times_ms)
        res.state_bytes = state_bytes(opt)
        bad = [i for i, p in enumerate(params) if not bool(torch.isfinite(p).all())]
        if bad:
            res.status, res.note = "error", f"non-finite parameters (tensors {bad[:5]})"
    return [results[impl] for impl in impls]


# ----- report ---------------------------------------------------------------------------------
def fmt(x: float, spec: str) -> str:
    return "-" if math.isnan(x) else format(x, spec)


def mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def print_table(rows: list[dict[str, Any]], device: torch.device) -> None:
    mem_head = "peak MiB" if device.type == "cuda" else "state MiB"
    head = (f"{'optimizer':<10} {'impl':<15} {'median ms':>10} {'vs torch':>9} "
            f"{'vs default':>10} {'vs floor':>9} {'first s':>8} {mem_head:>10}")
    print(head)
    print("-" * len(head))
    for row in rows:
        for i, r in enumerate(row["results"]):
            name = row["name"] if i == 0 else ""
            if r.status != "ok":
                print(f"{name:<10} {r.impl:<15} {r.status:>10}   ({r.note[:80]})")
                continue
            mem = r.peak_memory_bytes if device.type == "cuda" else r.state_bytes
            print(f"{name:<10} {r.impl:<15} {r.median_ms:>10.3f} {fmt(r.vs_torch, '.2f'):>9} "
                  f"{fmt(r.vs_default, '.2f'):>10} {fmt(r.vs_floor, '.2f'):>9} "
                  f"{fmt(r.first_step_s, '.2f'):>8} {mib(mem or 0):>10}")
        print(f"{'':<10} {'byte floor':<15} {row['floor_ms']:>10.3f} {'':>9} {'':>10} {'1.00':>9} "
              f"{'':>8} {'':>10}   ({row['bytes_per_param']} B/param)")


def summarize(row: dict[str, Any]) -> str:
    """One line per optimizer: optimlab's best fp32-state time against torch's best and against
    the byte floor, and the bf16-state variant (when timed) against optimlab's fp32 time."""
    ok = [r for r in row["results"] if r.status == "ok"]
    ours = [r for r in ok if r.impl in ("optimlab", "optimlab fused")]
    theirs = [r for r in ok if r.impl.startswith("torch")]
    lines = []
    if not ours or not theirs:
        lines.append(f"{row['name']}: not enough results to compare")
    else:
        a = min(ours, key=lambda r: r.median_ms)
        b = min(theirs, key=lambda r: r.median_ms)
        # against torch's fused (or foreach) time: the paired ratio when interleaved
        ratio = (a.vs_torch if b.impl == row["base"] and not math.isnan(a.vs_torch)
                 else a.median_ms / b.median_ms)
        verdict = "faster" if ratio < 1 else "slower"
        lines.append(f"{row['name']}: best optimlab = {a.impl} {a.median_ms:.3f} ms "
                     f"({a.vs_floor:.2f}x floor), best torch = {b.impl} {b.median_ms:.3f} ms "
                     f"({b.vs_floor:.2f}x floor) -> optimlab {ratio:.2f}x ({verdict})")
    default = [r for r in ok if r.impl == "optimlab"]
    theirs_default = [r for r in ok if r.impl == "torch default"]
    if default and theirs_default:
        ratio = default[0].vs_default
        lines.append(f"{row['name']}: drop-in default: optimlab {default[0].median_ms:.3f} ms, "
                     f"torch.optim default {theirs_default[0].median_ms:.3f} ms -> optimlab "
                     f"{ratio:.2f}x ({'at most' if ratio <= 1 else 'SLOWER than'} torch's "
                     "default)")
    bf16 = [r for r in ok if r.impl == "optimlab fused bf16"]
    fp32 = [r for r in ok if r.impl == "optimlab fused"]
    if bf16 and fp32:
        lines.append(f"{row['name']}: bf16 states {bf16[0].median_ms:.3f} ms = "
                     f"{bf16[0].median_ms / fp32[0].median_ms:.2f}x optimlab fused with fp32 "
                     f"states, {bf16[0].vs_floor:.2f}x its own floor "
                     f"({row['bf16_states_bytes_per_param']} B/param)")
    return "\n".join(lines)


# ----- main -----------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "cuda"), default=None,
                    help="default: cuda when available, else cpu")
    ap.add_argument("--params", type=float, default=None,
                    help="target number of parameters (default 12e6 on CPU, 1e9 on CUDA)")
    ap.add_argument("--layers", type=int, default=4,
                    help="transformer layers (12 tensors each); d_model and vocab follow from "
                         "--params (default 4)")
    ap.add_argument("--tensors", type=int, default=None,
                    help="exact number of tensors (>= 15; overrides --layers: as many layers as "
                         "fit, the rest extra (d_model,) vectors)")
    ap.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    ap.add_argument("--impls", default=None,
                    help=f"comma-separated implementations (default: {', '.join(DEFAULT_IMPLS)}"
                         "; 'torch compiled' only where --torch-compiled is on)")
    ap.add_argument("--bf16-states", action="store_true",
                    help="also time 'optimlab fused bf16': fused=True with "
                         "state_dtype=torch.bfloat16 (states stored in bfloat16)")
    ap.add_argument("--optimizers", default=",".join(SETTINGS),
                    help="comma-separated names (default: all nine)")
    ap.add_argument("--repeat", type=int, default=None,
                    help="timed steps per implementation (default 20 on CPU, 50 on CUDA)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="untimed steps after the first (default 3 on CPU, 5 on CUDA)")
    ap.add_argument("--torch-compiled", action=argparse.BooleanOptionalAction, default=None,
                    help="also time torch.compile(opt.step) of torch.optim's foreach optimizer "
                         "(default: on for CUDA, off for CPU)")
    ap.add_argument("--nonfinite", choices=optimlab.NONFINITE_POLICIES, default="ignore",
                    help="optimlab's inf/NaN gradient check; 'ignore' (no check, as "
                         "torch.optim) is the library default, 'raise' and 'skip' are the "
                         "opt-in checks (one more read of the gradients)")
    ap.add_argument("--interleave", action=argparse.BooleanOptionalAction, default=None,
                    help="time all implementations of an optimizer together, one step each "
                         "in turn (default: on for CPU; off for CUDA, where 1B parameters do "
                         "not fit five times)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch's intra-op threads (torch.set_num_threads) for every "
                         "implementation (default: torch's own choice); 1 makes CPU timings "
                         "less sensitive to other processes on a shared machine")
    ap.add_argument("--bandwidth-mib", type=int, default=None,
                    help="size of the copied tensor (default 256 on CPU, 2048 on CUDA)")
    ap.add_argument("--json", type=Path, default=None, metavar="PATH",
                    help="write every number and the environment to PATH "
                         "(e.g. benchmarks/results/<machine>.json)")
    args = ap.parse_args(argv)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available")
    cuda = args.device == "cuda"
    args.params = args.params if args.params is not None else (1e9 if cuda else 12e6)
    args.repeat = args.repeat if args.repeat is not None else (50 if cuda else 20)
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 3)
    args.torch_compiled = cuda if args.torch_compiled is None else args.torch_compiled
    args.interleave = (not cuda) if args.interleave is None else args.interleave
    args.bandwidth_mib = args.bandwidth_mib or (2048 if cuda else 256)
    names = [n.strip().lower() for n in args.optimizers.split(",") if n.strip()]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        ap.error(f"unknown optimizers {unknown}; choose from {', '.join(SETTINGS)}")
    args.optimizers = names
    impls = ([i.strip() for i in args.impls.split(",") if i.strip()] if args.impls
             else list(DEFAULT_IMPLS))
    bad = [i for i in impls if i not in IMPLS]
    if bad:
        ap.error(f"unknown implementations {bad}; choose from {', '.join(IMPLS)}")
    if args.bf16_states and "optimlab fused bf16" not in impls:
        impls.insert(impls.index("optimlab fused") + 1 if "optimlab fused" in impls else 0,
                     "optimlab fused bf16")
    if not args.torch_compiled and "torch compiled" in impls:
        impls.remove("torch compiled")
    args.impls = impls
    if args.tensors is not None and args.tensors < 15:
        ap.error(f"--tensors must be at least 15, got {args.tensors}")
    if args.threads is not None and args.threads < 1:
        ap.error(f"--threads must be at least 1, got {args.threads}")
    if args.repeat < 1 or args.warmup < 0 or args.params < 1 or args.layers < 1:
        ap.error("--repeat and --layers must be >= 1, --warmup >= 0, --params >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    if args.torch_compiled:
        # torch.optim's step functions share code objects across optimizers, and dynamo keeps
        # its recompile budget per code object: allow one entry per optimizer and more.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)

    env = environment(device)
    print(f"optimlab {env['optimlab']}, torch {env['torch']}, Python {env['python']}, "
          f"{env['platform']}")
    print(f"CPU: {env['cpu']} ({env['cpu_count']} logical CPUs), torch threads: "
          f"{env['torch_threads']}")
    if device.type == "cuda":
        print(f"GPU: {env['gpu']} (CUDA {env['cuda']}, sm_{env['gpu_capability']}, "
              f"{env['gpu_sms']} SMs, {env['gpu_memory_bytes'] / 2**30:.0f} GiB), "
              f"triton {env['triton']}")

    shape = choose_shape(args.params, args.layers, tensors=args.tensors)
    shapes = shape.shapes()
    n_params = shape.numel()
    itemsize = torch.empty((), dtype=dtype).element_size()
    print(f"parameters: {n_params:,} in {len(shapes)} tensors ({args.dtype}; d_model "
          f"{shape.d_model}, {shape.layers} layers, vocab {shape.vocab}, {shape.extra} extra "
          f"vectors) on {device}")

    bw = measure_bandwidth(device, args.bandwidth_mib * 2**20, max(args.repeat, 5))
    if device.type == "cuda":
        torch.cuda.empty_cache()
    print(f"copy bandwidth: {bw['gb_per_s']:.1f} GB/s (read + write, "
          f"{args.bandwidth_mib} MiB copied, median of {len(bw['times_s'])})")
    impls = args.impls
    print(f"timing: {args.warmup} warm-up steps, median of {args.repeat}; implementations: "
          f"{', '.join(impls)}; optimlab nonfinite={args.nonfinite!r}\n")

    def write_json(rows: list[dict[str, Any]], summary: list[str], complete: bool) -> None:
        if args.json is None:
            return
        out = {
            "environment": env,
            "config": {**{k: (str(v) if isinstance(v, Path) else v)
                          for k, v in vars(args).items()},
                       "n_params": n_params, "n_tensors": len(shapes),
                       "shape": asdict(shape)},
            "bandwidth": bw,
            # False while the run is going on: the file is rewritten after every optimizer,
            # so a run that is stopped (a time limit) still leaves the results it got.
            "complete": complete,
            "optimizers": [{**row, "results": [asdict(r) for r in row["results"]]}
                           for row in rows],
            "summary": summary,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        # NaN (a missing number) is written as null, so the file is strict JSON.
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(json.dumps(_nan_to_none(out), indent=1) + "\n")
        tmp.replace(args.json)

    rows: list[dict[str, Any]] = []
    for name in args.optimizers:
        bytes_per_param = BYTES_PER_PARAM_FP32[name] * itemsize // 4
        floor_s = n_params * bytes_per_param / (bw["gb_per_s"] * 1e9)
        # bf16 states: each state tensor is read and written at 2 bytes instead of itemsize.
        bf16_bytes = bytes_per_param - 2 * STATE_TENSORS[name] * (itemsize - 2)
        bf16_floor_s = n_params * bf16_bytes / (bw["gb_per_s"] * 1e9)
        results = []
        together = (run_interleaved(impls, name, shapes, dtype, device, args.warmup,
                                    args.repeat, args.nonfinite) if args.interleave else None)
        for i, impl in enumerate(impls):
            r = together[i] if together is not None else run_impl(
                impl, name, shapes, dtype, device, args.warmup, args.repeat, args.nonfinite)
            results.append(r)
            shown = (f"{r.median_ms:.3f} ms (first step {r.first_step_s:.2f} s)"
                     if r.status == "ok" else f"{r.status} {r.note}")
            if r.peak_memory_bytes is not None:
                shown += f", peak {mib(r.peak_memory_bytes)} MiB, host {r.host_ms:.3f} ms"
            if r.leftover_bytes:
                shown += f", LEFT ALLOCATED {mib(r.leftover_bytes)} MiB"
            print(f"  {name:<9} {impl:<15} {shown}", file=sys.stderr, flush=True)
        by_impl = {r.impl: r for r in results if r.status == "ok"}
        base = by_impl.get("torch fused") or by_impl.get("torch foreach")
        default = by_impl.get("torch default")
        for r in results:
            if r.status == "ok":
                r.vs_torch = ratio(r, base, args.interleave)
                r.vs_default = ratio(r, default, args.interleave)
                own = bf16_floor_s if r.impl == "optimlab fused bf16" else floor_s
                r.floor_ms = 1e3 * own
                r.vs_floor = r.median_ms / r.floor_ms
        rows.append({"name": name, "settings": SETTINGS[name],
                     "bytes_per_param": bytes_per_param, "floor_ms": 1e3 * floor_s,
                     "bf16_states_bytes_per_param": bf16_bytes,
                     "base": base.impl if base else None, "results": results})
        write_json(rows, [summarize(row) for row in rows], complete=False)

    print()
    print_table(rows, device)
    print()
    summary = [summarize(row) for row in rows]
    for line in summary:
        print(line)

    if args.json is not None:
        write_json(rows, summary, complete=True)
        print(f"\nwrote {args.json}")
    errors = [(row["name"], r) for row in rows for r in row["results"] if r.status == "error"]
    for name, r in errors:
        print(f"ERROR {name} {r.impl}: {r.note}", file=sys.stderr)
    return 1 if errors else 0


def ratio(r: Result, base: Result | None, paired: bool) -> float:
    """``r``'s time over ``base``'s: interleaved, the median of the per-round ratios (a
    drifting machine cancels); otherwise the ratio of the medians. NaN without a base."""
    if base is None:
        return float("nan")
    if paired:
        return statistics.median(a / b for a, b in zip(r.times_ms, base.times_ms, strict=True))
    return r.median_ms / base.median_ms


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_nan_to_none(v) for v in x]
    return x


if __name__ == "__main__":
    sys.exit(main())
