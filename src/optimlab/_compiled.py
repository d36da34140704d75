"""The compiled (``fused=True``) step: :func:`optimlab.chain.run_chains` under torch.compile.

The update math is the transforms' own (the same ``run_chains`` as the eager path); this module
only decides how the compiled code is called, cheaply:

* the per-step float scalars (learning rate, bias corrections, ...) of a bucket travel in one
  small tensor, copied to the device once per step without a host synchronization, and are read
  by position inside the graph, so new values never recompile;
* inductor's per-input size asserts are off (dynamo's guards check sizes and strides already);
* once warm, the compiled graph is called directly, skipping dynamo's guard evaluation (a few
  hundred tensor checks per step, most of a small model's step time): the graph inputs are
  located once (their dynamo sources), and the step checks the few things that can change
  between steps instead — the gradients' layouts, the data pointers of the parameters, and
  the structural step settings. Anything unexpected takes the dynamo path, which re-validates
  everything (and recompiles when needed);
* on CUDA the direct call is captured once into a CUDA graph and replayed: one launch per step
  whatever the number of kernels, and no Python in between. A replay needs every input at the
  address it was captured with: the parameters and states never move, and the gradients
  usually come back at the same addresses from the caching allocator; when they do not, the
  graph is captured again (a few times at most, then the plain direct call is used).

DTensor parameters (FSDP2's ``fully_shard``) are compiled as they are: dynamo traces the DTensor
ops, and the graph works on the local shards (a global statistic, such as the gradient norm of
clipping, becomes an all-reduce inside it). A DTensor's own ``data_ptr()`` is 0, so the checks
above, and a CUDA graph's addresses, use its local shard's memory.
"""

from __future__ import annotations

import re
import types
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .ops import is_dtensor, local_shard
from .transforms.base import Bucket, Transform

Layout = list[tuple[Tensor, list[dict[str, Any]], list[dict[str, int]]]]

#: Inductor settings of the compiled step, by device type. Dynamo's guards check the inputs'
#: sizes and strides already. Alignment matters on GPUs (the kernels are specialized for aligned
#: inputs, and a mutated input cannot be copied to an aligned one), so the check stays there.
INDUCTOR_OPTIONS = {"cpu": {"size_asserts": False, "alignment_asserts": False},
                    "cuda": {"size_asserts": False}}

_INDEX = re.compile(r"\[(\d+|'[^']*')\]")

#: Captures of one compiled step into a CUDA graph before falling back to plain calls (the
#: gradients keep moving: the graph would be recaptured every step).
MAX_CAPTURES = 4


def scalar_layout(buckets: Sequence[Bucket], scalars: Sequence[Sequence[dict[str, Any]]]
                  ) -> Layout:
    """Each bucket's float scalars in one device tensor, the rest as static values.

    Returns, per bucket, ``(values, static, index)``: ``values`` the tensor; ``static[k]`` the
    non-float scalars of the bucket's ``k``-th rule; ``index[k]`` maps that rule's float scalars
    to their position in ``values``. A last ``{"seed": i}`` entry holds the rounding seed.
    """
    layout = []
    for b, sc_list in zip(buckets, scalars):
        p0 = b.params[0]
        dt = p0.dtype if p0.dtype in (torch.float32, torch.float64) else torch.float32
        values: list[float] = []
        static: list[dict[str, Any]] = []
        index: list[dict[str, int]] = []
        for sc in sc_list:
            static.append({k: v for k, v in sc.items() if not isinstance(v, float)})
            index.append({})
            for k, v in sc.items():
                if isinstance(v, float):
                    index[-1][k] = len(values)
                    values.append(v)
        static.append({})  # the rounding seed rides along, last
        index.append({"seed": len(values)})
        values.append(float(b.seed))
        layout.append((_device_scalars(values, dt, p0.device), static, index))
    return layout


def _device_scalars(values: list[float], dtype: torch.dtype, device: torch.device) -> Tensor:
    """``values`` as one tensor on ``device``, copied without a host synchronization."""
    host = torch.tensor(values, dtype=dtype)
    if device.type == "cpu":
        return host
    if device.type == "cuda":
        # The pinned block is recycled by torch's caching host allocator only once the copy
        # that reads it has completed, so the asynchronous copy is safe.
        host = host.pin_memory()
    return host.to(device, non_blocking=True)


class CompiledStep:
    """Runs the chains of a step through one compiled graph (see the module docstring)."""

    def __init__(self, name: str, run_flat: Callable[..., dict[str, Tensor]]) -> None:
        # A code object of its own per optimizer: dynamo's recompile budget is kept per code
        # object, so optimizers with different structures must not share one.
        code = run_flat.__code__.replace(co_name=f"optimlab_{name}_step")
        fn = types.FunctionType(code, run_flat.__globals__, code.co_name)
        self._fn = torch.compile(fn, fullgraph=True, backend=self._backend)
        self._capture: tuple[list[str], Callable[..., Any]] | None = None
        self._direct: _Direct | None = None

    def _backend(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        from torch._inductor.compile_fx import compile_fx

        devices = {t.device.type for t in example_inputs if isinstance(t, Tensor)}
        options = INDUCTOR_OPTIONS["cpu"] if devices == {"cpu"} else INDUCTOR_OPTIONS["cuda"]
        compiled = compile_fx(gm, example_inputs, config_patches=options)
        try:
            sources = [node.meta["grapharg"].source.name for node in gm.graph.nodes
                       if node.op == "placeholder"]
        except (KeyError, AttributeError):  # another torch version: no direct calls
            return compiled
        self._capture = (sources, compiled)
        return compiled

    def __call__(self, buckets: list[Bucket], chains: list[tuple[Transform, ...]],
                 groups: list[dict[str, Any]], scalars: list[list[dict[str, Any]]],
                 maximize: list[bool], token: int | None) -> dict[str, Tensor]:
        """Step ``buckets``; ``token`` names the optimizer's cached bucket plan (``None``: the
        buckets were built afresh), for which a direct call may be bound."""
        layout = scalar_layout(buckets, scalars)
        signature = (tuple(map(id, (t for c in chains for t in c))), tuple(maximize),
                     [(st, ix) for _, st, ix in layout],
                     tuple((len(b.grads), len(b.steps), tuple(b.stored)) for b in buckets))
        direct = self._direct
        if token is not None and direct is not None and direct.signature == signature:
            if direct.token != token:
                direct.bind(token, buckets, layout)
            if direct.token == token and direct.call(buckets, layout):
                return {}
        flat = [(b.params, b.grads, b.state, b.stored, b.steps) for b in buckets]
        self._capture = None
        info = self._fn(flat, chains, groups, layout, maximize)
        if self._capture is not None:  # this call compiled: its inputs can be located
            sources, compiled = self._capture
            self._direct = _Direct.build(sources, compiled, flat, layout, signature) \
                if not info else None
        return info


class _Direct:
    """A compiled graph called without dynamo, its inputs gathered from the step's buckets."""

    def __init__(self, compiled: Callable[..., Any], signature: Any,
                 paths: list[tuple[Any, ...]], template: list[Any]) -> None:
        self.compiled = compiled
        self.signature = signature
        self.paths = paths
        self.template = template
        self.token: int | None = None
        # filled by bind(): the argument list with the per-step slots to fill
        self.args: list[Any] = []
        self.grad_slots: list[tuple[int, int, int, tuple[Any, ...]]] = []
        self.scalar_slots: list[tuple[int, int]] = []
        self.fixed: list[tuple[Tensor, int, bool]] = []  # (parameter, address, DTensor?)
        self.last_grads: list[list[weakref.ref[Tensor] | None]] = []
        # CUDA graph of the call (see the module docstring)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_ptrs: list[int] = []
        self.graph_scalars: list[Tensor] = []
        self.captures = 0

    @classmethod
    def build(cls, sources: list[str], compiled: Callable[..., Any], flat: list[Any],
              layout: Layout, signature: Any) -> _Direct | None:
        paths = []
        for name in sources:
            path = _parse(name)
            if path is None or path[0] not in ("flat", "layout"):
                return None
            paths.append(path)
        root = {"flat": flat, "layout": layout}
        template = [_resolve(root, p) for p in paths]
        if not all(isinstance(t, Tensor) for t in template):
            return None
        # Only the parameters and states are kept: of a gradient, the layout it had (holding
        # the tensor would keep a step's gradients alive after zero_grad()); of the scalars,
        # nothing.
        template = [None if p[0] == "layout" else _meta(t) if p[2] == 1 else t
                    for p, t in zip(paths, template)]
        return cls(compiled, signature, paths, template)

    def bind(self, token: int, buckets: list[Bucket], layout: Layout) -> None:
        """Locate the inputs in ``buckets`` (once per plan); bound only if every parameter and
        state tensor is the one the graph was compiled with (same object, same memory)."""
        self.token = None
        root = {"flat": [(b.params, b.grads, b.state, b.stored, b.steps) for b in buckets],
                "layout": layout}
        args: list[Any] = []
        grads, scals, fixed = [], [], []
        self.last_grads = [[None] * len(b.grads) for b in buckets]  # all checked on first use
        for pos, (path, was) in enumerate(zip(self.paths, self.template)):
            try:
                now = _resolve(root, path)
            except (IndexError, KeyError, TypeError):
                return
            if path[0] == "layout":
                scals.append((pos, path[1]))
                now = None  # filled at each call
            elif path[2] == 1:  # a gradient: may be a new tensor each step, same layout
                grads.append((pos, path[1], path[3], was))
                now = None
            elif now is not was:
                return
            elif path[2] == 0 and now.device.type != "cpu":
                # a parameter: ``p.data = ...`` keeps the object, not the memory; a CUDA graph
                # (and a kernel specialized for alignment) must see the memory move. (CPU
                # kernels take the parameter's current memory, aligned or not.)
                fixed.append((now, _address(now), is_dtensor(now)))
            args.append(now)
        self.args, self.grad_slots, self.scalar_slots, self.fixed = args, grads, scals, fixed
        self.graph = None
        self.token = token

    def call(self, buckets: list[Bucket], layout: Layout) -> bool:
        """Run the graph; False (nothing run) if an input is not what it was compiled for."""
        for t, ptr, sharded in self.fixed:
            if (t.to_local() if sharded else t).data_ptr() != ptr:
                # e.g. ``p.data = ...``: let dynamo look again, rebind
                self.token, self.graph = None, None
                return False
        args = list(self.args)
        last = self.last_grads
        for pos, b, j, meta in self.grad_slots:
            g = buckets[b].grads[j]
            seen = last[b][j]
            if seen is None or seen() is not g:  # a new gradient (zero_grad(set_to_none=True))
                if _meta(g) != meta:
                    return False
                last[b][j] = weakref.ref(g)  # weak: the old gradients can be freed
            args[pos] = g
        for pos, b in self.scalar_slots:
            args[pos] = layout[b][0]
        if self._graphable(args):
            ptrs = [_address(args[pos]) for pos, _, _, _ in self.grad_slots]
            if self.graph is None or ptrs != self.graph_ptrs:
                self._capture(args, ptrs)
            if self.graph is not None:
                for (pos, _), buf in zip(self.scalar_slots, self.graph_scalars):
                    buf.copy_(args[pos], non_blocking=True)
                self.graph.replay()
                return True
        self.compiled(*args)
        return True

    def _graphable(self, args: list[Any]) -> bool:
        if not args or args[0].device.type != "cuda":
            return False
        if self.graph is None and self.captures >= MAX_CAPTURES:
            return False
        # inside a capture of the caller's own: be part of it, as a plain call
        return not torch.cuda.is_current_stream_capturing()

    def _capture(self, args: list[Any], ptrs: list[int]) -> None:
        """Record one call into a CUDA graph (nothing runs: the caller replays it)."""
        self.graph = None
        self.captures += 1
        static = list(args)
        self.graph_scalars = [args[pos].clone() for pos, _ in self.scalar_slots]
        for (pos, _), buf in zip(self.scalar_slots, self.graph_scalars):
            static[pos] = buf
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.compiled(*static)
        except RuntimeError:  # not capturable here: plain calls from now on
            self.captures = MAX_CAPTURES
            return
        self.graph, self.graph_ptrs = graph, ptrs


def _meta(t: Tensor) -> tuple[Any, ...]:
    """What the compiled graph assumed of a gradient: layout, dtype, device, 16-byte alignment
    (of a DTensor: its global layout and placements, and all that of its local shard)."""
    if is_dtensor(t):
        return (t.shape, t.stride(), t.placements, _meta(t.to_local()))
    return (t.shape, t.stride(), t.dtype, t.device, t.data_ptr() % 16 == 0)


def _address(t: Tensor) -> int:
    """Where ``t``'s memory starts (of a DTensor, whose own ``data_ptr()`` is 0: its shard's)."""
    return local_shard(t).data_ptr()


def _parse(source: str) -> tuple[Any, ...] | None:
    """``"L['flat'][0][2]['exp_avg'][3]"`` -> ``('flat', 0, 2, 'exp_avg', 3)``."""
    m = re.fullmatch(r"L\['(\w+)'\]((?:\[(?:\d+|'[^']*')\])*)", source)
    if m is None:
        return None
    keys: list[Any] = [m.group(1)]
    for k in _INDEX.findall(m.group(2)):
        keys.append(k[1:-1] if k.startswith("'") else int(k))
    return tuple(keys)


def _resolve(root: dict[str, Any], path: tuple[Any, ...]) -> Any:
    x: Any = root[path[0]]
    for k in path[1:]:
        x = x[k]
    return x
