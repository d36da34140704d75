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
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["hashed_noise16", "stochastic_round", "stochastic_round_", "stochastic_round_hashed"]

_LOW_MASK = (1 << 16) - 1


def stochastic_round(src: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Return ``src`` (float32) rounded to bfloat16 stochastically (unbiased; see module)."""
    if src.dtype != torch.float32:
        raise ValueError(f"src must be float32, got {src.dtype}")
    src = src.contiguous()
    noise = torch.randint(0, _LOW_MASK + 1, src.shape, dtype=torch.int32, device=src.device,
                          generator=generator)
    return _round_with_noise(src, noise)


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
    """
    n = like.numel()
    x = torch.arange(n, device=like.device, dtype=torch.int64).to(torch.int32).view(like.shape)
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
    return _round_with_noise(src.contiguous(), hashed_noise16(src, seed, salt))


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
        torch._foreach_copy_(dsts, [stochastic_round(s, generator) for s in srcs])
