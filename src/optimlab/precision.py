"""Low-precision helpers: stochastic rounding from float32 to bfloat16.

Round-to-nearest loses every update smaller than half a unit in the last place (ulp) of the
weight: a bfloat16 weight near 1 has an ulp of ``2**-7``, so with ``lr = 1e-3`` most updates
are rounded away and training stalls. Stochastic rounding (Gupta et al., 2015, "Deep learning
with limited numerical precision"; Zamirai et al., 2020, "Revisiting BFloat16 training")
rounds ``x`` up to the next representable value ``hi`` with probability
``(x - lo) / (hi - lo)`` and down to ``lo`` otherwise, so that::

    E[round(x)] = lo + (hi - lo) * (x - lo) / (hi - lo) = x

and small updates survive on average.

bfloat16 is the upper half of the float32 bit pattern, so the rounding is integer arithmetic
on the bits: add 16 uniform random bits to the float32 pattern, then truncate the low 16 bits.
The low bits of ``|x|`` reach ``2**16`` (carry into the kept half, i.e. round up in magnitude)
with probability ``(x - lo) / ulp``. Sign-magnitude encoding makes this symmetric for negative
numbers, and the carry moves correctly across binades (and from the largest finite value to
``inf``, as round-to-nearest overflows too). Values exactly representable in bfloat16 have zero
low bits and are unchanged; ``inf`` stays ``inf`` and NaN stays NaN.

DTensors (parameters and states sharded by FSDP2) are rounded shard by shard, on the local
tensors. The hashed noise of an element is a function of its index in the *global* tensor, so a
sharded state is rounded to exactly the bits the unsharded one gets, on any number of ranks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .ops import copy_, is_dtensor, local_shard, shard_like

__all__ = ["hashed_noise16", "stochastic_round", "stochastic_round_", "stochastic_round_hashed"]

_LOW_MASK = (1 << 16) - 1


def stochastic_round(src: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Return ``src`` (float32) rounded to bfloat16 stochastically (unbiased; see module)."""
    if src.dtype != torch.float32:
        raise ValueError(f"src must be float32, got {src.dtype}")
    local = local_shard(src)
    noise = torch.randint(0, _LOW_MASK + 1, local.shape, dtype=torch.int32, device=local.device,
                          generator=generator)
    return _like(_round_with_noise(local.contiguous(), noise), src)


def _like(out: Tensor, src: Tensor) -> Tensor:
    """``out``, computed elementwise from ``local_shard(src)``, laid out as ``src`` is."""
    return shard_like(out, src) if is_dtensor(src) else out


def _contiguous_strides(shape: Sequence[int]) -> tuple[int, ...]:
    strides, n = [], 1
    for size in reversed(shape):
        strides.append(n)
        n *= size
    return tuple(reversed(strides))


def _element_index(like: Tensor) -> Tensor:
    """The row-major index of each element of ``like`` in its (global) tensor, as int64.

    For a DTensor, the index of each element of the local shard in the global tensor: the
    local index along each dimension plus the shard's global offset, weighted by the global
    tensor's row-major strides (a sum of one broadcast ``arange`` per dimension).
    """
    if not is_dtensor(like):
        return torch.arange(like.numel(), device=like.device, dtype=torch.int64).view(like.shape)
    try:
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
    except ImportError:  # torch < 2.5
        from torch.distributed._tensor._utils import compute_local_shape_and_global_offset

    local_shape, offset = compute_local_shape_and_global_offset(
        like.shape, like.device_mesh, like.placements)
    device = local_shard(like).device
    index = torch.zeros(local_shape, device=device, dtype=torch.int64)
    for d, (size, start, stride) in enumerate(
            zip(local_shape, offset, _contiguous_strides(like.shape))):
        view = [1] * len(local_shape)
        view[d] = size
        index = index + (torch.arange(size, device=device, dtype=torch.int64) + start).mul(
            stride).view(view)
    return index


def _round_with_noise(src: Tensor, noise: Tensor) -> Tensor:
    """bfloat16 of float32 ``src`` after adding ``noise`` (int32 in [0, 2**16)) to its bits."""
    bits = src.view(torch.int32)
    # Arithmetic shift keeps the sign bit; the upper 16 bits are exactly the bfloat16 pattern.
    hi = torch.bitwise_right_shift(bits + noise, 16).to(torch.int16).view(torch.bfloat16)
    # NaN payloads that live only in the low bits would become inf (or wrap): keep NaN.
    return torch.where(torch.isnan(src), src.to(torch.bfloat16), hi)


# Odd multipliers of a 32-bit integer hash (C. Wellons's "lowbias32" constants; the golden ratio
# for the counter), written as int32 values: int32 products wrap modulo 2**32.
_GOLDEN = 0x9E3779B9 - (1 << 32)
_MIX1 = 0x7FEB352D
_MIX2 = 0x846CA68B - (1 << 32)


def hashed_noise16(like: Tensor, seed: int | Tensor, salt: int) -> Tensor:
    """16 pseudo-random bits per element of ``like``, a hash of (element index, seed, salt).

    Counter-based: nothing is stored and no generator is advanced, so the same
    (shape, seed, salt) always gives the same bits, on every device and under torch.compile
    (where the hash becomes a few integer instructions inside the kernel that uses it, with no
    memory traffic). ``seed`` is an integer or a 0-dim tensor holding one (a float tensor holding
    an integer below 2**24 is fine); ``salt`` tells apart the tensors rounded with one seed.

    The index is the element's index in the global tensor, so a DTensor gets, shard by shard,
    the bits of the unsharded tensor (as a DTensor laid out like ``like``).
    """
    return _like(_hashed_bits(_element_index(like), seed, salt), like)


def _hashed_bits(index: Tensor, seed: int | Tensor, salt: int) -> Tensor:
    """The 16 hashed bits of :func:`hashed_noise16` for int64 element indices ``index``."""
    x = index.to(torch.int32)
    seed32 = seed.to(torch.int32) if isinstance(seed, Tensor) else int(seed) & 0x7FFFFFFF
    salt32 = (salt * 0x632BE5AB) % (1 << 31)
    x = x * _GOLDEN + seed32 + salt32
    # lowbias32: xor-shift / multiply rounds; ``>>`` is arithmetic on int32, so each shift is
    # masked to the logical shift's bits.
    x = x ^ ((x >> 16) & 0xFFFF)
    x = x * _MIX1
    x = x ^ ((x >> 15) & 0x1FFFF)
    x = x * _MIX2
    x = x ^ ((x >> 16) & 0xFFFF)
    return x & _LOW_MASK


def stochastic_round_hashed(src: Tensor, seed: int | Tensor, salt: int) -> Tensor:
    """Return ``src`` (float32) rounded to bfloat16 stochastically, with the noise of
    :func:`hashed_noise16` (unbiased like :func:`stochastic_round`, and reproducible: the same
    seed and salt give the same result on the eager and on the compiled path)."""
    if src.dtype != torch.float32:
        raise ValueError(f"src must be float32, got {src.dtype}")
    noise = _hashed_bits(_element_index(src), seed, salt)
    return _like(_round_with_noise(local_shard(src).contiguous(), noise), src)


def stochastic_round_(dst: Tensor | Sequence[Tensor], src: Tensor | Sequence[Tensor],
                      generator: torch.Generator | None = None) -> None:
    """Write float32 ``src`` into bfloat16 ``dst`` with stochastic rounding, in place.

    Args:
        dst: a bfloat16 tensor, or a list of them.
        src: float32 tensor(s) of the same shapes (a list when ``dst`` is a list).
        generator: the random source (``None``: torch's default generator for the device).

    ``E[dst] = src`` elementwise; each element is rounded independently to one of its two
    bfloat16 neighbours (Gupta et al., 2015; Zamirai et al., 2020). No host synchronization.
    """
    dsts = [dst] if isinstance(dst, Tensor) else list(dst)
    srcs = [src] if isinstance(src, Tensor) else list(src)
    if len(dsts) != len(srcs):
        raise ValueError(f"dst and src must have the same length, got {len(dsts)} and "
                         f"{len(srcs)}")
    for i, (d, s) in enumerate(zip(dsts, srcs)):
        if d.dtype != torch.bfloat16:
            raise ValueError(f"dst[{i}] must be bfloat16, got {d.dtype}")
        if s.dtype != torch.float32:
            raise ValueError(f"src[{i}] must be float32, got {s.dtype}")
        if d.shape != s.shape:
            raise ValueError(f"dst[{i}] and src[{i}] shapes differ: {tuple(d.shape)} vs "
                             f"{tuple(s.shape)}")
    if dsts:
        copy_(dsts, [stochastic_round(s, generator) for s in srcs])
