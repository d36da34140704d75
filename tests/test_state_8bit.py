"""8-bit block-wise optimizer states (``state_dtype=torch.uint8``, :mod:`optimlab.quantization`).

Error bounds come from the code map: quantization rounds ``x / a`` (``a`` the block's absmax)
to the nearest map value, so ``|dequantize(quantize(x)) - x| <= a * gap / 2`` with ``gap`` the
distance between the two map values around ``x / a``; the float32 division and product add at
most two roundings, ``2 * 2**-24 * a``, so the tests allow ``a * (gap / 2 + 2**-22)``. The
widest gap of the signed map is ``0.9 / 64`` (its top level: 6 fraction bits over [0.1, 1]),
of the unsigned map ``0.9 / 128``, and ``1e-6`` / ``1e-7`` between 0 and the smallest nonzero
magnitude.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import optimlab as ol
from optimlab.quantization import (
    ABSMAX_SUFFIX,
    BLOCK,
    MIN_ELEMENTS,
    dequantize_blockwise,
    dynamic_code_map,
    quantize_blockwise,
)

#: One parameter of whole blocks, one with a short last block, one small (float32 states).
SHAPES = [(64, 96), (5000,), (10,)]


def bound(x: torch.Tensor, absmax: torch.Tensor) -> torch.Tensor:
    """Per element of ``x``: ``a * (gap / 2 + 2**-22)`` (see the module docstring)."""
    n = x.numel()
    a = absmax.abs().repeat_interleave(BLOCK)[:n]
    signed = (absmax < 0).repeat_interleave(BLOCK)[:n]
    unit = x.reshape(-1).double() / torch.where(a > 0, a, 1.0).double()
    out = torch.empty(n, dtype=torch.float64)
    for flag in (False, True):
        m = dynamic_code_map(flag).double().unique()
        i = torch.searchsorted(m, unit).clamp(1, m.numel() - 1)
        gap = m[i] - m[i - 1]
        out = torch.where(signed == flag, gap, out)
    return (a.double() * (out / 2 + 2**-22)).view(x.shape)


def roundtrip(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    codes, absmax = quantize_blockwise(x)
    return dequantize_blockwise(codes, absmax), codes, absmax


# ----- the code map ---------------------------------------------------------------------------
def test_code_map_follows_its_formula() -> None:
    u, s = dynamic_code_map(False), dynamic_code_map(True)
    assert u.numel() == s.numel() == 256 and u.dtype == torch.float32
    assert bool((u[1:] >= u[:-1]).all()) and bool((s[1:] >= s[:-1]).all())
    assert u.unique().numel() == 256 and s.unique().numel() == 255  # s repeats +1
    assert u[0] == 0 and u[-1] == 1 and s[0] == -1 and s[-1] == 1 and 0 in s.tolist()
    assert u[1] == torch.tensor(1e-7) and s[s > 0].min() == torch.tensor(1e-6)
    # level 0 of the unsigned map: 0.1 + 0.9 * (i + 1) / 128
    top = 0.1 + 0.9 * torch.arange(1, 129, dtype=torch.float64) / 128
    assert torch.equal(u[-128:], top.float())
    # the signed magnitudes are unsigned values, bit for bit (re-quantizing is exact)
    assert set(s.abs().tolist()) <= set(u.tolist())


# ----- quantize / dequantize ------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 1300), scale=st.sampled_from([1e-30, 1e-6, 1.0, 1e6, 1e30]),
       positive=st.booleans(), seed=st.integers(0, 2**16))
def test_error_is_within_half_a_gap(n: int, scale: float, positive: bool, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    # heavy-tailed values over ~8 decades, as optimizer states are
    x = torch.randn(n, generator=g) * 10 ** (4 * torch.rand(n, generator=g) - 4) * scale
    x = x.abs() if positive else x
    y, codes, absmax = roundtrip(x)
    assert codes.dtype == torch.uint8 and codes.shape == x.shape
    assert absmax.shape == (-(-n // BLOCK),) and absmax.dtype == torch.float32
    assert bool(((y - x).abs().double() <= bound(x, absmax)).all())
    # nonnegative blocks take the unsigned map (absmax stored >= 0)
    assert bool((absmax >= 0).all()) == bool((x >= 0).all())


@pytest.mark.parametrize("shape", [(1,), (255,), (256,), (257,), (3, 700), (5, 4, 13)])
def test_sizes_not_a_multiple_of_the_block(shape: tuple[int, ...]) -> None:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    y, codes, absmax = roundtrip(x)
    assert y.shape == x.shape and codes.shape == x.shape
    assert bool(((y - x).abs().double() <= bound(x, absmax)).all())
    # each block's largest magnitude is exact (the map holds +-1)
    flat, yf = x.reshape(-1), y.reshape(-1)
    for b in range(absmax.numel()):
        i = flat[b * BLOCK:(b + 1) * BLOCK].abs().argmax() + b * BLOCK
        assert yf[i] == flat[i]


def test_zeros_and_all_zero_blocks() -> None:
    x = torch.zeros(3 * BLOCK + 7)
    x[BLOCK:2 * BLOCK] = torch.linspace(-2.0, 3.0, BLOCK)  # one nonzero block in between
    y, _, absmax = roundtrip(x)
    assert absmax[0] == 0 and absmax[2] == 0 and absmax[3] == 0 and absmax[1] < 0
    assert torch.equal(y[:BLOCK], x[:BLOCK]) and torch.equal(y[2 * BLOCK:], x[2 * BLOCK:])
    assert bool(((y - x).abs().double() <= bound(x, absmax)).all())


def test_extremes() -> None:
    big = torch.finfo(torch.float32).max
    x = torch.tensor([big, -big, 1e-30, -1e-38, 0.0, 3e-7 * big, 1e-7 * big])
    y, _, absmax = roundtrip(x)
    assert torch.isfinite(y).all() and y[0] == big and y[1] == -big
    # below half the smallest signed magnitude (1e-6 * a): flushed to 0
    assert y[2] == 0 and y[3] == 0 and y[6] == 0
    assert bool(((y - x).abs().double() <= bound(x, absmax)).all())


def test_requantizing_dequantized_values_is_exact() -> None:
    x = torch.randn(4 * BLOCK + 9, generator=torch.Generator().manual_seed(2))
    x[:BLOCK] = x[:BLOCK].abs()  # one unsigned block
    y, _, _ = roundtrip(x)
    z, _, _ = roundtrip(y)
    assert torch.equal(y, z)


def test_meta_tensors_have_shapes_only() -> None:
    codes, absmax = quantize_blockwise(torch.empty(5000, device="meta"))
    assert codes.shape == (5000,) and absmax.shape == (20,) and codes.device.type == "meta"
    assert dequantize_blockwise(codes, absmax).shape == (5000,)


# ----- the optimizers -------------------------------------------------------------------------
def run(steps: int, state_dtype: torch.dtype | None = torch.uint8, name: str = "AdamW",
        **kw: Any) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.optim.Optimizer]:
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=gen) for s in SHAPES]
    params = [p.clone().requires_grad_(True) for p in init]
    opt = getattr(ol, name)(params, state_dtype=state_dtype, **{"lr": 1e-2, **kw})
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen) + 0.3
        opt.step()
    return init, params, opt


def test_states_are_stored_in_8_bits_and_counted() -> None:
    _, ps, opt = run(3)
    for p in ps:
        st = opt.state[p]
        for k in ("exp_avg", "exp_avg_sq"):
            if p.numel() >= MIN_ELEMENTS:
                assert st[k].dtype == torch.uint8 and st[k].shape == p.shape
                assert st[k + ABSMAX_SUFFIX].shape == (-(-p.numel() // BLOCK),)
            else:
                assert st[k].dtype == torch.float32 and k + ABSMAX_SUFFIX not in st
    # every byte: codes, absmaxes, float32 states of the small tensor, the step counts
    big = [p.numel() for p in ps if p.numel() >= MIN_ELEMENTS]
    small = sum(p.numel() for p in ps if p.numel() < MIN_ELEMENTS)
    expected = sum(2 * (n + 4 * -(-n // BLOCK)) for n in big) + 2 * 4 * small + 4 * len(ps)
    assert opt.state_bytes() == expected


def test_adamw_8bit_stays_close_to_float32_states() -> None:
    """20 steps, lr 1e-2: the 8-bit run's displacement stays within 10% of the float32 run's.

    Per step each moment is rounded once: in the map's top level (|x| > a / 10, where most of a
    block's entries lie) by at most 0.7-7% (signed) or 0.35-3.5% (unsigned) of the value, with
    random sign; the moment carries an error for ~1/(1 - beta) steps, partly averaging out.
    An update thus errs by a few percent RMS, and the summed displacement by about as much
    relative to its size; 10% is about 3x that estimate (measured: 1.3%)."""
    init, ps, _ = run(20)
    _, ref, _ = run(20, state_dtype=None)
    num = sum(float((p.detach() - r.detach()).norm() ** 2) for p, r in zip(ps, ref)) ** 0.5
    den = sum(float((r.detach() - i).norm() ** 2) for r, i in zip(ref, init)) ** 0.5
    assert num <= 0.1 * den
    # the small tensor's states are float32: its update is float32 AdamW's, to the ulp
    assert torch.allclose(ps[2], ref[2], rtol=1e-6, atol=0)


def test_sgd_momentum_8bit_runs_close_to_float32() -> None:
    """Momentum buffers (signed): the same 10% bound as Adam's (one state, rounded once a step
    by <= 7% of its value in the top level; measured: 1.1%)."""
    init, ps, opt = run(10, name="SGD", momentum=0.9)
    _, ref, _ = run(10, state_dtype=None, name="SGD", momentum=0.9)
    assert opt.state[ps[0]]["momentum_buffer"].dtype == torch.uint8
    num = sum(float((p.detach() - r.detach()).norm() ** 2) for p, r in zip(ps, ref)) ** 0.5
    den = sum(float((r.detach() - i).norm() ** 2) for r, i in zip(ref, init)) ** 0.5
    assert num <= 0.1 * den


def test_state_dict_round_trip_resumes_exactly() -> None:
    _, full, full_opt = run(8)
    _, half, half_opt = run(4)
    sd = half_opt.state_dict()
    st0 = sd["state"][0]
    assert st0["exp_avg"].dtype == torch.uint8 and st0["exp_avg.absmax"].dtype == torch.float32
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    ps = [p.detach().clone().requires_grad_(True) for p in half]
    opt = ol.AdamW(ps, lr=1e-2, state_dtype=torch.uint8)
    opt.load_state_dict(sd)
    # replay steps 5..8 with the gradient stream of ``run``
    gen = torch.Generator().manual_seed(0)
    for s in SHAPES:
        torch.randn(s, generator=gen)
    for step in range(8):
        grads = [torch.randn(p.shape, generator=gen) + 0.3 for p in ps]
        if step >= 4:
            for p, g in zip(ps, grads):
                p.grad = g
            opt.step()
    for a, b in zip(ps, full):
        assert torch.equal(a.detach(), b.detach())
        for k, v in full_opt.state[b].items():
            assert torch.equal(opt.state[a][k], v), k


def test_state_dicts_convert_between_storages() -> None:
    _, ps, opt8 = run(3)
    sd = opt8.state_dict()
    # into a float32-state optimizer: the dequantized values, no absmax entries left
    opt32 = ol.AdamW([p.detach().clone().requires_grad_(True) for p in ps], lr=1e-2)
    opt32.load_state_dict(sd)
    for p, q in zip(ps, opt32.param_groups[0]["params"]):
        for k in ("exp_avg", "exp_avg_sq"):
            v = opt32.state[q][k]
            assert v.dtype == torch.float32 and k + ABSMAX_SUFFIX not in opt32.state[q]
            st = opt8.state[p]
            want = (dequantize_blockwise(st[k], st[k + ABSMAX_SUFFIX])
                    if st[k].dtype == torch.uint8 else st[k])
            assert torch.equal(v, want)
    # and back: float32 states quantize on load, to the same values
    back = ol.AdamW([p.detach().clone().requires_grad_(True) for p in ps], lr=1e-2,
                    state_dtype=torch.uint8)
    back.load_state_dict(opt32.state_dict())
    for p, q in zip(ps, back.param_groups[0]["params"]):
        for k in ("exp_avg", "exp_avg_sq"):
            a, b = opt8.state[p], back.state[q]
            if a[k].dtype == torch.uint8:
                assert torch.equal(dequantize_blockwise(a[k], a[k + ABSMAX_SUFFIX]),
                                   dequantize_blockwise(b[k], b[k + ABSMAX_SUFFIX]))


def test_a_refused_step_rolls_back_8bit_states() -> None:
    """First step (states created) and a later one: a gradient of the wrong shape is refused,
    and the optimizer then steps exactly like a twin that never saw it."""
    for before in (0, 2):
        _, ps, opt = run(before)
        _, qs, twin = run(before)
        snap = {i: {k: v.clone() for k, v in opt.state.get(p, {}).items()}
                for i, p in enumerate(ps)}
        entries = len(opt.state)
        for p, q in zip(ps, qs):
            p.grad = torch.ones_like(p)
            q.grad = torch.ones_like(q)
        ps[1].grad.data = torch.ones(7)  # not the parameter's shape (through .data)
        with pytest.raises(ValueError, match="nothing changed"):
            opt.step()
        assert len(opt.state) == entries  # a first step's new entries are gone again
        for i, p in enumerate(ps):
            st = opt.state.get(p, {})
            assert st.keys() == snap[i].keys()
            assert all(torch.equal(st[k], v) for k, v in snap[i].items())
        ps[1].grad = torch.ones_like(ps[1])
        opt.step()
        twin.step()
        for p, q in zip(ps, qs):
            assert torch.equal(p, q)
            for k, v in twin.state[q].items():
                assert torch.equal(opt.state[p][k], v), k


def test_other_parameter_dtypes_keep_their_states() -> None:
    p = torch.zeros(MIN_ELEMENTS, dtype=torch.bfloat16, requires_grad=True)
    opt = ol.Adam([p], state_dtype=torch.uint8, master_weights=True)
    p.grad = torch.ones_like(p)
    opt.step()
    assert opt.state[p]["exp_avg"].dtype == torch.float32


def test_unknown_state_dtypes_name_uint8() -> None:
    with pytest.raises(ValueError, match="uint8"):
        ol.AdamW([torch.zeros(2, requires_grad=True)], state_dtype=torch.int8)


@pytest.mark.slow
def test_fused_equals_eager() -> None:
    """Each compiled step, from the eager run's parameters and states (copied), equals the eager
    step: parameters within 1e-6 relative (a few fp32 roundings, as for every fused path);
    dequantized states within one map gap plus 8 fp32 ulps of the absmax (the two paths' fp32
    values differ by an ulp or so, which moves a value across a rounding midpoint with
    probability ~ulp/gap <= 2**-23 / (0.9 / 2**7 * 1e-1): a handful of elements at most), so
    at most 0.1% of the codes different (the absmaxes, fp32 maxima, may differ by ulps, which
    changes every dequantized value of the block by as much: codes are compared)."""
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=gen) for s in SHAPES]
    eager = [p.clone().requires_grad_(True) for p in init]
    fused = [p.clone().requires_grad_(True) for p in init]
    eo = ol.AdamW(eager, lr=1e-2, state_dtype=torch.uint8)
    fo = ol.AdamW(fused, lr=1e-2, state_dtype=torch.uint8, fused=True)
    differ = total = 0
    for t in range(6):
        for pe, pf in zip(eager, fused):
            pe.grad = torch.randn(pe.shape, generator=gen) + 0.3
            pf.grad = pe.grad.clone()
        if t:
            with torch.no_grad():
                for pe, pf in zip(eager, fused):
                    pf.copy_(pe)
                    for k, v in eo.state[pe].items():
                        fo.state[pf][k].copy_(v)
        eo.step()
        fo.step()
        for pe, pf in zip(eager, fused):
            assert torch.allclose(pf, pe, rtol=1e-6, atol=1e-7), t
            se, sf = eo.state[pe], fo.state[pf]
            for k in ("exp_avg", "exp_avg_sq"):
                if se[k].dtype != torch.uint8:
                    continue
                a = dequantize_blockwise(se[k], se[k + ABSMAX_SUFFIX])
                b = dequantize_blockwise(sf[k], sf[k + ABSMAX_SUFFIX])
                amax = se[k + ABSMAX_SUFFIX].abs().repeat_interleave(BLOCK)[:a.numel()]
                tol = 2 * bound(a, se[k + ABSMAX_SUFFIX]).float() + 2**-20 * amax.view(a.shape)
                assert bool(((a - b).abs() <= tol).all()), (t, k)
                # a block's absmax is its largest fp32 value: a few ulps apart at most
                ae, af = se[k + ABSMAX_SUFFIX], sf[k + ABSMAX_SUFFIX]
                assert bool(((ae - af).abs() <= 2**-20 * ae.abs()).all()), (t, k)
                differ += int((se[k] != sf[k]).sum())
                total += a.numel()
    assert fo._compiled is not None
    assert differ <= 1e-3 * total, (differ, total)
