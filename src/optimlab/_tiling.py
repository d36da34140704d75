"""Cache-sized tiles for the eager step on the CPU.

A chain's rules make several passes over every tensor (Adam about ten: the two moments, the
square root, the denominator, the update). Run on whole lists of tensors, each pass streams the
parameters, gradients and states from main memory, and each temporary a rule allocates is as
large as the model (fresh pages, faulted in at every step). Run on tiles of about
:data:`TILE_ELEMENTS` elements, one tile through the whole chain before the next, the passes
after the first find the tile in the cache and the temporaries are tile-sized (reused by the
allocator): the step moves about the bytes the algorithm must move, once.

The result is the same, bit for bit: a tile is a list of views (slices of the flattened
tensors, or whole small tensors), and every rule that runs on tiles is
:attr:`~optimlab.transforms.Transform.elementwise`, so each element is computed from the same
operands by the same kernels, with the same per-bucket scalars, whatever the slicing. Only
what the elementwise contract allows is tiled: chains of elementwise rules without a global
statistic, on dense CPU tensors that are neither DTensors nor kept in bfloat16 for
``state_dtype`` (whose stochastic rounding is salted by the tensor's index). On other devices
one kernel launch per list is what counts, and the whole lists are stepped as before.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace

from torch import Tensor

from .ops import is_dtensor
from .transforms.base import Bucket, Transform

__all__ = ["TILE_ELEMENTS", "tileable", "tiles"]

#: Elements per tile: 2**20 float32 elements are 4 MiB per tensor, so a tile's parameters,
#: gradients, two states and a temporary (20 MiB) stay in the last-level cache of a server CPU
#: while the rules pass over them. Chosen on a 2-core AMD EPYC (2 MiB L2 per core, 32 MiB L3),
#: 12M parameters, one thread, CPU time per step: AdamW 24.0 ms at 2**20 against 26.4 ms at
#: 2**18 (more tiles: more kernel calls and thread wake-ups) and 34.1 ms at 2**22 (a tile no
#: longer fits the cache); torch.optim's default AdamW took 32.2 ms.
TILE_ELEMENTS = 1 << 20


def tileable(buckets: Sequence[Bucket], chains: Sequence[Sequence[Transform]]) -> bool:
    """Whether a step may run tile by tile (see the module docstring)."""
    if not all(t.elementwise and not t.needs_global for chain in chains for t in chain):
        return False
    for b in buckets:
        p = b.params[0]
        if b.sparse or b.stored or p.device.type != "cpu" or is_dtensor(p):
            return False
    return True


def tiles(b: Bucket, size: int | None = None) -> Iterator[Bucket]:
    """``b`` as buckets of about ``size`` elements each (default :data:`TILE_ELEMENTS`, read at
    each call; a tile holds at least one tensor or one slice), in order, covering every element
    of every tensor once. A bucket that fits one tile is that tile.

    A tensor larger than ``size`` is cut into slices of its flattened view when it, its
    gradient and its per-element states are contiguous (otherwise it makes a tile on its own);
    smaller tensors are gathered until a tile holds ``size`` elements. Scalar (0-dim) states
    are passed whole to every tile of their parameter. Step counts are not part of the tiles
    (``steps`` is empty: the caller increments them once).
    """
    size = size or TILE_ELEMENTS
    if sum(p.numel() for p in b.params) <= size:  # one tile: the bucket itself (small models)
        yield replace(b, steps=[])
        return
    keys = list(b.state)
    params: list[Tensor] = []
    grads: list[Tensor] = []
    state: dict[str, list[Tensor]] = {k: [] for k in keys}
    held = 0

    def cut() -> Bucket:
        return replace(b, params=params, grads=grads, state=state, steps=[])

    for j, (p, g) in enumerate(zip(b.params, b.grads)):
        st = [b.state[k][j] for k in keys]
        n = p.numel()
        if n > size and _sliceable(p, g, st):
            flat = [p.view(-1), g.view(-1), *(v.view(-1) if v.dim() else v for v in st)]
            pieces = [[t[s:s + size] if t.dim() else t for t in flat] for s in range(0, n, size)]
        else:
            pieces = [[p, g, *st]]
        for piece in pieces:
            m = piece[0].numel()
            if params and held + m > size:
                yield cut()
                params, grads, state, held = [], [], {k: [] for k in keys}, 0
            params.append(piece[0])
            grads.append(piece[1])
            for k, v in zip(keys, piece[2:]):
                state[k].append(v)
            held += m
    if params:
        yield cut()


def _sliceable(p: Tensor, g: Tensor, states: list[Tensor]) -> bool:
    return (p.is_contiguous() and g.is_contiguous()
            and all(v.dim() == 0 or (v.shape == p.shape and v.is_contiguous()) for v in states))
