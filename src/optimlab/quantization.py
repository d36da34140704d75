"""Block-wise 8-bit quantization of optimizer states (``state_dtype=torch.uint8``).

Dettmers et al., 2022, "8-bit Optimizers via Block-wise Quantization": a tensor is cut into
blocks of :data:`BLOCK` consecutive elements (of its flattened view; the last block may be
short); each block is divided by its absolute maximum ``a`` (one float32 per block) and every
element is replaced by the index (a ``uint8`` code) of the nearest value of a 256-entry
*dynamic* code map (:func:`dynamic_code_map`), round to nearest. Dequantizing is a table
look-up times ``a``. Because each block has its own scale, one outlier costs precision in its
256 elements only, and the dynamic map's exponent-like levels keep a relative precision of a
few percent over six to seven decades below ``a``.

Sign-ness is chosen per block, from the values, at each quantization: a block holding a
negative value uses the *signed* map (sign bit + 7 magnitude bits), any other block the
*unsigned* map (8 magnitude bits: twice finer; Adam's ``exp_avg_sq`` is always such a block).
No rule has to declare anything. The choice is stored in the sign of the block's absmax: a
negative stored absmax ``-a`` means the signed map (a signed block holds a nonzero value, so
``a > 0``); an all-zero block stores ``+0`` and codes that decode to 0.

Non-finite values: an inf or NaN in a block makes its absmax inf/NaN, and the whole block
decodes to NaN (a float32 state would hold the NaN in one element only).

Stored form of a state ``k`` (the keys of ``optimizer.state[p]`` and of ``state_dict()``):
``k`` is a ``torch.uint8`` tensor of the parameter's shape (the codes), ``k + ABSMAX_SUFFIX``
(``"exp_avg.absmax"``) a float32 tensor of ``ceil(numel / 256)`` signed absmaxes. Such a state
dict loads into any optimlab optimizer of the same algorithm, whatever its ``state_dtype``:
``load_state_dict`` first dequantizes the 8-bit states to float32 (:func:`dequantized_state_dict`),
then stores them its own way (8-bit again re-quantizes to the same values: see
:func:`dynamic_code_map`). torch.optim cannot read 8-bit states (it would cast the codes to
floats): load the dict into an optimlab optimizer with ``state_dtype=None`` and save that.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "ABSMAX_SUFFIX",
    "BLOCK",
    "MIN_ELEMENTS",
    "dequantize_blockwise",
    "dequantized_state_dict",
    "dynamic_code_map",
    "quantize_blockwise",
    "quantize_blockwise_",
    "stored_form",
]

#: Elements per block (one float32 absmax each: 4/256 = 0.016 extra bytes per element).
BLOCK = 256

#: States of tensors with fewer elements stay float32 under ``state_dtype=torch.uint8``: they
#: are biases and normalization gains, a negligible share of the memory (under 12 KiB saved per
#: state) but often the most sensitive to their update's precision; Dettmers et al. keep
#: tensors under 4096 elements in 32 bits for the same reason.
MIN_ELEMENTS = 4096

#: The key suffix of a quantized state's block absmaxes.
ABSMAX_SUFFIX = ".absmax"


def dynamic_code_map(signed: bool) -> Tensor:
    """The 256 sorted float32 values of the dynamic code map (Dettmers, 2016; 2022).

    With ``m`` magnitude bits (``m = 7`` signed: the eighth bit is the sign; ``m = 8``
    unsigned), a code's magnitude bits read as ``e`` zeros, a one, and ``b_e = m - 1 - e``
    fraction bits ``i``; its value is::

        v(e, i) = 10**-e * (0.1 + 0.9 * (i + 1) / 2**b_e),   e = 0 .. m-1,  i = 0 .. 2**b_e - 1

    plus the all-zero code, 0. Level ``e`` covers ``(10**-(e+1), 10**-e]`` with the step
    ``0.9 * 10**-e / 2**b_e`` (the gap from a level's lowest value to the next level's highest
    is the same step), so 1, a block's absmax, is exact and the smallest nonzero magnitude is
    ``10**-(m-1)``. Fractions take the right ends of the ``2**b_e`` equal sub-intervals of
    ``[0.1, 1]`` (the paper's map takes midpoints), which makes 1 exact. Unsigned: 255 positive
    values and 0. Signed: 127 values of each sign and 0 (255 values); the 256th entry repeats
    +1 (code 255 is never produced). The signed magnitudes are a subset of the unsigned ones
    (``(i+1)/2**b`` is ``(2i+2)/2**(b+1)``), computed from the same float64 numbers: a value
    of a signed block is exact in an unsigned block.
    """
    m = 7 if signed else 8
    mags = [10.0 ** -e * (0.1 + 0.9 * (i + 1) / 2 ** (m - 1 - e))
            for e in range(m) for i in range(2 ** (m - 1 - e))]
    values = [0.0, *mags]
    if signed:
        values += [-v for v in mags] + [1.0]
    return torch.tensor(sorted(values), dtype=torch.float64).to(torch.float32)


def _tables() -> tuple[Tensor, Tensor, Tensor]:
    unsigned, signed = dynamic_code_map(False), dynamic_code_map(True)
    # Round to nearest: a value goes to the code whose map value is nearest, i.e. above the
    # midpoint of the two map values around it (torch.bucketize against the midpoints).
    return ((unsigned[1:] + unsigned[:-1]) / 2, (signed[1:] + signed[:-1]) / 2,
            torch.cat([unsigned, signed]))


#: Midpoints of the unsigned and signed maps; the two maps, concatenated (signed at 256+).
_UNSIGNED_MIDS, _SIGNED_MIDS, _VALUES = _tables()
_ON: dict[torch.device, tuple[Tensor, Tensor, Tensor]] = {}


def _on(device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """The tables on ``device`` (cached per device: they never change)."""
    if device.type == "cpu":
        return _UNSIGNED_MIDS, _SIGNED_MIDS, _VALUES
    if device not in _ON:
        _ON[device] = (_UNSIGNED_MIDS.to(device), _SIGNED_MIDS.to(device), _VALUES.to(device))
    return _ON[device]


def _parts(n: int) -> list[tuple[int, int, int]]:
    """``(start, stop, block size)`` of the whole blocks of ``n`` elements, then of the short
    last block. (Each part is quantized as a ``(blocks, size)`` matrix of its own: a padded
    copy, or a per-block tensor broadcast back to the elements, is miscompiled by inductor on
    the CPU in torch 2.13, which then reads the last block's absmax before writing it.)"""
    whole = n - n % BLOCK
    out = [(0, whole, BLOCK)] if whole else []
    return [*out, (whole, n, n - whole)] if whole < n else out


def _quantize_rows(rows: Tensor) -> tuple[Tensor, Tensor]:
    """Codes and signed absmaxes of the blocks that are the rows of a float32 matrix."""
    amax = rows.abs().amax(dim=1)
    signed = (rows < 0).any(dim=1)
    scale = torch.where(amax > 0, amax, torch.ones_like(amax))
    unit = rows / scale[:, None]
    u_mids, s_mids, _ = _on(rows.device)
    codes = torch.where(signed[:, None], torch.bucketize(unit, s_mids),
                        torch.bucketize(unit, u_mids))
    return codes.to(torch.uint8), torch.where(signed, -amax, amax)


def quantize_blockwise_(codes: Tensor, absmax: Tensor, x: Tensor) -> None:
    """:func:`quantize_blockwise` of ``x`` written into ``codes`` and ``absmax`` (contiguous,
    of the shapes it returns), in place."""
    flat = x.detach().reshape(-1).to(torch.float32)
    out = codes.view(-1)
    for start, stop, size in _parts(flat.numel()):
        c, a = _quantize_rows(flat[start:stop].view(-1, size))
        out[start:stop].copy_(c.view(-1))
        absmax[start // BLOCK:-(-stop // BLOCK)].copy_(a)


def quantize_blockwise(x: Tensor) -> tuple[Tensor, Tensor]:
    """8-bit codes of ``x`` and its blocks' signed absmaxes (see the module docstring).

    Args:
        x: a real floating-point tensor of any shape (computed in float32; NaN-free for a
            meaningful result).

    Returns:
        ``(codes, absmax)``: ``codes`` a ``torch.uint8`` tensor of ``x``'s shape, ``absmax`` a
        float32 tensor of ``ceil(x.numel() / BLOCK)`` elements, negative for the blocks coded
        with the signed map. For each element ``|dequantize(x) - x| <= a * gap / 2`` where
        ``gap`` is the spacing of the block's map around ``x / a`` (round to nearest).
    """
    codes = torch.empty(x.shape, dtype=torch.uint8, device=x.device)
    absmax = torch.empty(-(-x.numel() // BLOCK), dtype=torch.float32, device=x.device)
    quantize_blockwise_(codes, absmax, x)
    return codes, absmax


def dequantize_blockwise(codes: Tensor, absmax: Tensor) -> Tensor:
    """The float32 tensor that ``codes`` and ``absmax`` (from :func:`quantize_blockwise`)
    stand for, of ``codes``'s shape: each element is its block's map value times ``|absmax|``
    (the unsigned map where the stored absmax is ``>= 0``, the signed one where it is < 0)."""
    _, _, values = _on(codes.device)
    flat = codes.reshape(-1)
    pieces = []
    for start, stop, size in _parts(flat.numel()):
        a = absmax[start // BLOCK:-(-stop // BLOCK)]
        index = flat[start:stop].view(-1, size).to(torch.int64) \
            + torch.where(a < 0, 256, 0)[:, None]
        pieces.append((values[index] * a.abs()[:, None]).view(-1))
    if not pieces:  # no elements
        return torch.zeros(codes.shape, dtype=torch.float32, device=codes.device)
    out = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
    return out.view(codes.shape)


# ----- how ChainOptimizer stores states (optimlab.chain) ----------------------------------------
def stored_form(key: str, value: Tensor, dtype: torch.dtype) -> dict[str, Tensor]:
    """The state entries that store ``value`` (a per-element float state) as ``dtype``:
    ``{key: value in bfloat16}``, or for ``torch.uint8`` ``{key: codes, key + ".absmax":
    absmaxes}`` (:func:`quantize_blockwise`)."""
    if dtype == torch.uint8:
        codes, absmax = quantize_blockwise(value)
        return {key: codes, key + ABSMAX_SUFFIX: absmax}
    return {key: value.to(dtype)}


def is_quantized(state: Mapping[str, Any], key: str) -> bool:
    """Whether ``state[key]`` holds 8-bit codes with their absmaxes beside them."""
    v, a = state.get(key), state.get(key + ABSMAX_SUFFIX)
    return (isinstance(v, Tensor) and v.dtype == torch.uint8 and isinstance(a, Tensor)
            and a.dtype == torch.float32 and a.dim() == 1
            and a.numel() == -(-v.numel() // BLOCK))


def quantized_lists(state: Mapping[str, list[Tensor]], entries: Sequence[Mapping[str, Any]]
                    ) -> dict[str, list[Tensor]]:
    """A bucket's stored 8-bit states: ``state`` maps the rules' keys to the bucket's stored
    tensors, ``entries`` are the parameters' state dicts; for every key held as codes, the
    codes and (under ``key + ".absmax"``) the absmaxes, aligned with the parameters."""
    out: dict[str, list[Tensor]] = {}
    for k, vs in state.items():
        if vs and all(is_quantized(st, k) for st in entries):
            out[k] = vs
            out[k + ABSMAX_SUFFIX] = [st[k + ABSMAX_SUFFIX] for st in entries]
    return out


def dequantize_stored(stored: Mapping[str, list[Tensor]], dtype: torch.dtype
                      ) -> dict[str, list[Tensor]]:
    """The working copies (in ``dtype``) of a bucket's 8-bit stored states."""
    return {k: [dequantize_blockwise(c, a).to(dtype)
                for c, a in zip(vs, stored[k + ABSMAX_SUFFIX])]
            for k, vs in stored.items() if vs[0].dtype == torch.uint8}


def requantize_stored_(stored: Mapping[str, list[Tensor]], state: dict[str, list[Tensor]]
                       ) -> None:
    """Write a bucket's working copies back into its 8-bit stored states (in place: codes and
    absmaxes keep their memory), and point ``state`` at the stored tensors again."""
    for k, vs in stored.items():
        if vs[0].dtype != torch.uint8:
            continue
        for codes, absmax, v in zip(vs, stored[k + ABSMAX_SUFFIX], state[k]):
            quantize_blockwise_(codes, absmax, v)
        state[k] = vs


def dequantized_state_dict(state_dict: Any) -> Any:
    """``state_dict`` with every 8-bit state (codes and absmaxes) replaced by its float32
    value, for :meth:`ChainOptimizer.load_state_dict`: whatever the loading optimizer's
    ``state_dtype``, it then stores the values its own way (8-bit states re-quantize to the
    same values). The input is not modified; anything else is returned as it is."""
    if not isinstance(state_dict, Mapping) or not isinstance(state_dict.get("state"), Mapping):
        return state_dict
    states = dict(state_dict["state"])
    changed = False
    for pid, entry in states.items():
        if not isinstance(entry, Mapping):
            continue
        keys = [k for k in entry if isinstance(k, str) and is_quantized(entry, k)]
        if not keys:
            continue
        entry = dict(entry)
        for k in keys:
            entry[k] = dequantize_blockwise(entry[k], entry.pop(k + ABSMAX_SUFFIX))
        states[pid] = entry
        changed = True
    return {**state_dict, "state": states} if changed else state_dict
