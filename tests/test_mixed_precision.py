"""Mixed precision: GradScaler and autocast, stochastic rounding, master weights.

The training comparison (``test_bf16_training_*``) trains one MLP on a fixed synthetic
regression (teacher network + noise, 512 samples, full batch, 300 AdamW steps, lr 1e-3) in
fp32, in bf16 with stochastic rounding, in bf16 with round-to-nearest, and in bf16 with fp32
master weights; the compared number is the *final training loss evaluated in fp32* (the final
weights upcast, fp32 forward over the whole training set), as the relative difference
``(L - L_fp32) / L_fp32``. Measured (CPU, torch 2.13, 6 model seeds): stochastic rounding
-0.1% .. +0.9%, master weights -0.2% .. +0.3%, round-to-nearest +61% .. +83% (updates smaller
than half a bf16 ulp are lost, so training stalls early).
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import pytest
import torch
from torch import nn

import optimlab as ol
from optimlab.chain import ChainOptimizer
from optimlab.precision import stochastic_round, stochastic_round_
from optimlab.transforms import add_decayed_weights, scale_by_adam

BF16 = torch.bfloat16


def adamw(params: Any, lr: float = 1e-3, weight_decay: float = 0.01, **kw: Any
          ) -> ChainOptimizer:
    """AdamW's rules as a ChainOptimizer (the named classes gain the options separately)."""
    return ChainOptimizer(params, [scale_by_adam(), add_decayed_weights(weight_decay)], lr=lr,
                          **kw)


def mlp(seed: int = 1, dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(),
                         nn.Linear(64, 1)).to(dtype)


def regression(n: int = 512, d: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w1 = torch.randn(d, 32, generator=g) / d**0.5
    w2 = torch.randn(32, 1, generator=g) / 32**0.5
    y = torch.tanh(x @ w1) @ w2 + 0.05 * torch.randn(n, 1, generator=g)
    return x, y


def snapshot(opt: torch.optim.Optimizer) -> list[dict[str, torch.Tensor]]:
    return [{k: v.clone() for k, v in opt.state[p].items()}
            for g in opt.param_groups for p in g["params"]]


def bit_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.view(torch.uint8) if a.dim() else a.reshape(1).view(torch.uint8),
        b.view(torch.uint8) if b.dim() else b.reshape(1).view(torch.uint8))


# ----- GradScaler and autocast ------------------------------------------------------------------
@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_grad_scaler_skips_nonfinite_step_state_untouched(bad: float) -> None:
    """GradScaler skips optimizer.step() on inf/NaN: even nonfinite='raise' never sees
    the bad gradient; params and state stay bit-identical, the scale backs off, and the run
    stays in lockstep with torch.optim.Adam under its own scaler.

    Both optimizers are fed the same (fp16-autocast) gradients, computed on the optimlab model:
    fed their own gradients, the two models' ~1-ulp differences after the first step would be
    amplified by the fp16 forward pass, by an amount that depends on the CPU's kernels."""
    x, y = regression(64)
    models = [mlp(), mlp()]
    opts = [ol.Adam(models[0].parameters(), lr=1e-2, nonfinite="raise"),
            torch.optim.Adam(models[1].parameters(), lr=1e-2)]
    scalers = [torch.amp.GradScaler("cpu", init_scale=2.0**10) for _ in range(2)]
    for step in range(6):
        for opt in opts:
            opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = nn.functional.mse_loss(models[0](x), y)
        scaled = [scaler.scale(loss) for scaler in scalers]  # equal scales: equal values
        scaled[0].backward()
        if step == 3:
            models[0][0].weight.grad[0, 0] = bad
        for pa, pb in zip(models[0].parameters(), models[1].parameters()):
            pb.grad = pa.grad.clone()  # the same scaled gradients (both scales are equal)
        for m, opt, scaler in zip(models, opts, scalers):
            if step == 3:
                before_state, before_params = snapshot(opt), [p.clone() for p in m.parameters()]
                scale = scaler.get_scale()
            scaler.step(opt)
            scaler.update()
            if step == 3:
                assert all(bit_equal(a, b) for a, b in zip(before_params, m.parameters()))
                after = snapshot(opt)
                for sa, sb in zip(before_state, after):
                    assert sa.keys() == sb.keys()
                    assert all(bit_equal(sa[k], sb[k]) for k in sa)
                assert scaler.get_scale() == scale * 0.5
        # Same gradients, so the only difference is each Adam step's own fp32 rounding (a
        # different operation order): per step at most 1 ulp of |p| (< 1 for this MLP's
        # init: ulp <= 2**-23 = 1.2e-7) from rounding p + u, plus a few ulp of the update
        # (|u| <= lr * (1 - b1) / sqrt(1 - b2) = 0.032: ~1e-8). Five steps taken: < 7e-7.
        for pa, pb in zip(*(m.parameters() for m in models)):
            torch.testing.assert_close(pa, pb, rtol=0, atol=7e-7)
    assert float(opts[0].state[models[0][0].weight]["step"]) == 5  # one of 6 steps skipped
    assert opts[0].skipped_steps == 0  # skipped by the scaler, not by optimlab


def test_autocast_bf16_forward_trains_with_adamw() -> None:
    x, y = regression(256)
    m = mlp()
    opt = ol.AdamW(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=BF16):
            out = m(x)
        assert out.dtype == BF16
        loss = nn.functional.mse_loss(out.float(), y)
        loss.backward()
        assert m[0].weight.grad.dtype == torch.float32
        opt.step()
        losses.append(loss.item())
    # measured 0.0031 against 0.25 * 0.353 = 0.088: 28x margin (bf16 forward rounding, 2**-8
    # relative, shifts the loss curve by far less)
    assert losses[-1] < 0.25 * losses[0]


# ----- stochastic rounding ----------------------------------------------------------------------
def _neighbours(x: torch.Tensor) -> tuple[float, float]:
    """The bf16 values just below and above |x| in magnitude (truncation and next up)."""
    lo = (x.view(torch.int32) & ~0xFFFF).view(torch.float32)
    hi = ((x.view(torch.int32) & ~0xFFFF) + 0x10000).view(torch.float32)
    return float(lo), float(hi)


@pytest.mark.parametrize("value", [1.0 + 2**-9, 1.0 + 2**-8 + 2**-11, -0.3, 3.14159e-3,
                                   -7.7e4, 1e-30, 3e-39])
def test_stochastic_rounding_is_unbiased(value: float) -> None:
    n = 200_000
    x = torch.full((n,), value, dtype=torch.float32)
    r = stochastic_round(x, generator=torch.Generator().manual_seed(0))
    assert r.dtype == BF16
    lo, hi = _neighbours(x[:1])
    r64 = r.double()
    assert bool(((r64 == lo) | (r64 == hi)).all())  # always one of the two neighbours
    exact = float(x[0])
    p = (exact - lo) / (hi - lo)
    se = abs(hi - lo) * (p * (1 - p) / n) ** 0.5
    assert 0 < p < 1
    # The mean of n Bernoulli(p) choices between the neighbours has standard error se (the
    # sum is exact in float64); 5 se fails with probability 6e-7 per value for an unbiased
    # rounding (measured at most 1.7 se). The draws come from torch's seeded integer stream.
    assert abs(float(r64.mean()) - exact) < 5 * se


def test_representable_values_and_specials_unchanged() -> None:
    g = torch.Generator().manual_seed(0)
    b = (torch.randn(10_000, generator=g) * torch.logspace(-40, 38, 10_000)).to(BF16)
    b[:6] = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), 1e-40, -3.3e38]).to(BF16)
    out = torch.empty_like(b)
    stochastic_round_(out, b.float())
    assert bit_equal(out, b)
    nan = torch.full((1000,), float("nan"))
    assert bool(torch.isnan(stochastic_round(nan)).all())
    payload = torch.tensor([0x7F800001, 0x7FFFFFFF, -1], dtype=torch.int32).view(torch.float32)
    assert bool(torch.isnan(stochastic_round(payload)).all())  # odd NaN payloads stay NaN


def test_stochastic_round_lists_and_generator() -> None:
    src = [torch.randn(5, 3), torch.randn(7)]
    a, b = [torch.empty_like(s, dtype=BF16) for s in src], [torch.empty_like(s, dtype=BF16)
                                                          for s in src]
    stochastic_round_(a, src, generator=torch.Generator().manual_seed(3))
    stochastic_round_(b, src, generator=torch.Generator().manual_seed(3))
    assert all(bit_equal(x, y) for x, y in zip(a, b))
    for x, s in zip(a, src):  # within one bf16 ulp of the source
        assert bool(((x.float() - s).abs() <= s.abs() * 2**-7).all())


def test_stochastic_round_bad_input() -> None:
    with pytest.raises(ValueError, match="bfloat16"):
        stochastic_round_(torch.empty(3), torch.randn(3))
    with pytest.raises(ValueError, match="float32"):
        stochastic_round_(torch.empty(3, dtype=BF16), torch.randn(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="shape"):
        stochastic_round_(torch.empty(3, dtype=BF16), torch.randn(4))
    with pytest.raises(ValueError, match="length"):
        stochastic_round_([torch.empty(3, dtype=BF16)], [])
    with pytest.raises(ValueError, match="float32"):
        stochastic_round(torch.randn(3, dtype=BF16))


# ----- training in bf16 -------------------------------------------------------------------------
def train(dtype: torch.dtype, steps: int = 300, seed: int = 1, **kw: Any) -> float:
    """Final training loss, evaluated in fp32, after full-batch AdamW in ``dtype``."""
    x, y = regression()
    m = mlp(seed, dtype)
    opt = adamw(m.parameters(), lr=1e-3, **kw)
    torch.manual_seed(123)  # the stochastic-rounding noise
    xb, yb = x.to(dtype), y.to(dtype)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(m(xb), yb).backward()
        opt.step()
    assert all(p.dtype == dtype for p in m.parameters())
    with torch.no_grad():
        return nn.functional.mse_loss(m.float()(x), y).item()


def test_bf16_training_stochastic_rounding_matches_fp32() -> None:
    fp32 = train(torch.float32)
    sr = train(BF16, stochastic_rounding=True)
    nearest = train(BF16)
    master = train(BF16, master_weights=True)
    rel = {k: (v - fp32) / fp32 for k, v in
           {"stochastic": sr, "nearest": nearest, "master": master}.items()}
    print(f"\nfinal fp32-evaluated training loss: fp32 {fp32:.5f}, bf16+SR {sr:.5f} "
          f"({rel['stochastic']:+.2%}), bf16 nearest {nearest:.5f} ({rel['nearest']:+.2%}), "
          f"bf16+master {master:.5f} ({rel['master']:+.2%})")
    # 300 bf16 steps through bf16 matmuls (whose kernels differ between CPUs) make each final
    # loss a draw from the spread that seeds give (module docstring: SR -0.1% .. +0.9%,
    # master -0.2% .. +0.3% over 6 seeds; here +0.7% and +0.3%). 2% is 2x the widest seed, and
    # round-to-nearest's stall (+61% .. +83%, a bias, not noise) stays 3x above 20%.
    assert abs(rel["stochastic"]) < 0.02
    assert abs(rel["master"]) < 0.02
    assert rel["nearest"] > 0.2 and nearest > sr  # round-to-nearest stalls


def test_stochastic_rounding_states_stay_bf16() -> None:
    m = mlp(dtype=BF16)
    opt = adamw(m.parameters(), stochastic_rounding=True)
    x, y = regression(32)
    for _ in range(2):
        opt.zero_grad()
        nn.functional.mse_loss(m(x.to(BF16)), y.to(BF16)).backward()
        opt.step()
    st = opt.state[m[0].weight]
    assert "master_param" not in st
    assert st["exp_avg"].dtype == BF16 and st["exp_avg_sq"].dtype == BF16
    assert st["step"].dtype == torch.float32 and float(st["step"]) == 2


# ----- master weights ---------------------------------------------------------------------------
@pytest.mark.parametrize(("reference", "steps", "tol"), [("optimlab", 50, 0.0),
                                                         ("torch", 10, 1e-6)])
def test_master_weights_match_fp32_training_with_bf16_rounded_forward(
        reference: str, steps: int, tol: float) -> None:
    """bf16 params + master_weights == an fp32 AdamW run whose forward/backward uses a bf16
    (round-to-nearest) copy of the fp32 params, the bf16 gradient upcast to fp32.

    Against optimlab's AdamW rules on the fp32 params: bit-identical over 50 steps (the shadow
    rounds the very values the master copy holds, and both sides run the same kernels in the
    same order), so the shadow's gradients are ``low``'s own. Against torch.optim.AdamW, fed
    those gradients (``low``'s, upcast): within 1e-6 (atol) over 10 steps. Its single-tensor
    kernels round ``p`` differently (decay and update one after the other), at most one fp32
    ulp apart per step, 2**-25 = 3e-8 for |p| < 0.5: <= 3e-7 after 10 steps even if every
    rounding fell the same way (measured 3e-8, also after 50 steps). Fed its own shadow's
    gradients instead, a one-ulp difference would flip occasional bf16 roundings of the forward
    copy (a bf16 ulp is 2**16 fp32 ulps; 842 of the 5249 masters differ after 10 steps, so
    about 1% flip odds per step) and then grow chaotically (4e-5 after 50 steps), at steps that
    depend on the CPU's kernels. The bf16 params always equal the master copy rounded to
    nearest.
    """
    x, y = regression(128)
    xb, yb = x.to(BF16), y.to(BF16)
    low = mlp(dtype=BF16)
    ref = mlp().float()
    with torch.no_grad():  # same start: the fp32 reference starts from the bf16 values
        for pr, pl in zip(ref.parameters(), low.parameters()):
            pr.copy_(pl.float())
    opt = adamw(low.parameters(), lr=1e-3, master_weights=True)
    ref_opt = (adamw(ref.parameters(), lr=1e-3) if reference == "optimlab"
               else torch.optim.AdamW(ref.parameters(), lr=1e-3, weight_decay=0.01))
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(low(xb), yb).backward()
        opt.step()
        if reference == "optimlab":
            shadow = copy.deepcopy(ref).to(BF16)
            nn.functional.mse_loss(shadow(xb), yb).backward()
            grads = [ps.grad for ps in shadow.parameters()]
        else:
            grads = [pl.grad for pl in low.parameters()]
        for pr, g in zip(ref.parameters(), grads, strict=True):
            pr.grad = g.float()
        ref_opt.step()
    for pl, pr in zip(low.parameters(), ref.parameters()):
        st = opt.state[pl]
        assert st["master_param"].dtype == torch.float32
        assert st["exp_avg"].dtype == torch.float32
        torch.testing.assert_close(st["master_param"], pr.detach(), rtol=0, atol=tol)
        assert bit_equal(pl.detach(), st["master_param"].to(BF16))


def test_master_weights_float16_and_state_dict_roundtrip() -> None:
    m = mlp(dtype=torch.float16)
    opt = adamw(m.parameters(), lr=1e-3, master_weights=True)
    x, y = regression(32)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.mse_loss(m(x.half()), y.half()).backward()
        opt.step()
    sd = opt.state_dict()
    opt2 = adamw(m.parameters(), lr=1e-3, master_weights=True)
    opt2.load_state_dict(sd)  # torch.optim would cast the fp32 master copy to float16
    for p in m.parameters():
        for k, v in opt.state[p].items():
            assert bit_equal(v, opt2.state[p][k]), k


def test_master_weights_upcasts_low_precision_state_from_a_torch_checkpoint() -> None:
    m = mlp(dtype=BF16)
    x, y = regression(32)
    t = torch.optim.AdamW(m.parameters(), lr=1e-3)
    nn.functional.mse_loss(m(x.to(BF16)), y.to(BF16)).backward()
    t.step()
    opt = adamw(m.parameters(), lr=1e-3, master_weights=True)
    opt.load_state_dict(t.state_dict())
    assert opt.state[m[0].weight]["exp_avg"].dtype == BF16
    opt.step()
    st = opt.state[m[0].weight]
    assert st["exp_avg"].dtype == torch.float32 and st["master_param"].dtype == torch.float32


# ----- fp32 unaffected, options, fused --------------------------------------------------------
@pytest.mark.parametrize("option", ["master_weights", "stochastic_rounding"])
def test_fp32_params_unaffected_by_the_options(option: str) -> None:
    """A group mixing fp32 and bf16 params: the fp32 ones step bit-identically to the same
    optimizer without the option (same code path), get no master copy, and keep torch.optim
    parity (torch.optim.AdamW(foreach=True), rtol 1e-6, atol 1e-7)."""
    x, y = regression(64)
    torch.manual_seed(0)
    f32, low = nn.Linear(16, 1), nn.Linear(16, 1).to(BF16)
    plain, ref = copy.deepcopy(f32), copy.deepcopy(f32)
    opt = adamw([*f32.parameters(), *low.parameters()], lr=1e-2, **{option: True})
    plain_opt = adamw(plain.parameters(), lr=1e-2)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, foreach=True)
    for _ in range(5):
        for o in (opt, plain_opt, ref_opt):
            o.zero_grad()
        (nn.functional.mse_loss(f32(x), y)
         + nn.functional.mse_loss(low(x.to(BF16)).float(), y)).backward()
        nn.functional.mse_loss(plain(x), y).backward()
        for pr, pa in zip(ref.parameters(), f32.parameters(), strict=True):
            pr.grad = pa.grad.clone()  # torch steps on the same gradients: no feedback
        for o in (opt, plain_opt, ref_opt):
            o.step()
    for pa, pp, pr in zip(f32.parameters(), plain.parameters(), ref.parameters()):
        assert bit_equal(pa.detach(), pp.detach())
        assert opt.state[pa].keys() == plain_opt.state[pp].keys()  # no master_param
        for k in ("exp_avg", "exp_avg_sq"):
            assert bit_equal(opt.state[pa][k], plain_opt.state[pp][k])
        # Same gradients: per step the two round p at most one ulp (2**-23 |p|) apart, 6e-7 |p|
        # after 5 steps even if all fell the same way (< rtol); the update's reorderings cost
        # ulps of |u| <= lr = 1e-2, ~1e-9 each (< atol). Measured 1.5e-8.
        torch.testing.assert_close(pa, pr, rtol=1e-6, atol=1e-7)
    assert low.weight.dtype == BF16


@pytest.mark.parametrize("kw", [{"master_weights": 1}, {"stochastic_rounding": "yes"},
                                {"master_weights": True, "stochastic_rounding": True}])
def test_bad_options(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"master_weights|stochastic_rounding"):
        adamw(mlp().parameters(), **kw)


def test_stochastic_rounding_refuses_float16() -> None:
    with pytest.raises(ValueError, match=r"stochastic_rounding.*float16"):
        adamw(mlp(dtype=torch.float16).parameters(), stochastic_rounding=True)


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_named_optimizers_accept_the_options(name: str) -> None:
    cls = getattr(ol, name)
    if "master_weights" not in inspect.signature(cls).parameters:
        pytest.skip(f"ol.{name} does not forward master_weights/stochastic_rounding yet")
    m = mlp(dtype=BF16)
    opt = cls(m.parameters(), lr=1e-3, master_weights=True)
    nn.functional.mse_loss(m(torch.randn(8, 16, dtype=BF16)), torch.zeros(8, 1,
                                                                          dtype=BF16)).backward()
    opt.step()
    assert opt.state[m[0].weight]["master_param"].dtype == torch.float32
    assert cls(m.parameters(), stochastic_rounding=True).stochastic_rounding


@pytest.mark.slow
@pytest.mark.parametrize("option", ["master_weights", "stochastic_rounding"])
def test_fused_supports_the_options(option: str) -> None:
    """fused=True compiles the fp32 chain; the write-back runs after it, as on the eager path.

    Both paths step on the same gradients (taken on the eager model) with the same random
    stream. The compiled fp32 chain may round an ulp away from the eager one, which flips the
    bf16 result (nearest, or stochastic with 16-bit noise) with probability 2**-16 per element
    (~0.1 expected flips over 3 steps of 5249 params): one bf16 ulp, <= 2**-7 |p| (rtol; atol
    for results near 0). With equal gradients a flip reaches no other element, and moving its
    own element a second ulp would need the same 2**-16 odds again. Each model taking its own
    gradients, a flip would change the next forward pass and flip further roundings, with odds
    that depend on the CPU's kernels.
    """
    x, y = regression(64)
    models = [mlp(dtype=BF16), mlp(dtype=BF16)]
    opts = [adamw(m.parameters(), lr=1e-2, fused=fused, **{option: True})
            for m, fused in zip(models, (False, True), strict=True)]
    torch.manual_seed(7)
    for _ in range(3):
        for opt in opts:
            opt.zero_grad()
        nn.functional.mse_loss(models[0](x.to(BF16)), y.to(BF16)).backward()
        for p, q in zip(models[0].parameters(), models[1].parameters(), strict=True):
            q.grad = p.grad.clone()
        rng = torch.get_rng_state()
        opts[0].step()
        torch.set_rng_state(rng)  # the same stochastic-rounding noise for both paths
        opts[1].step()
    assert opts[0]._compiled is None and opts[1]._compiled is not None
    for a, b in zip(*(m.parameters() for m in models), strict=True):
        torch.testing.assert_close(a.detach().float(), b.detach().float(), rtol=2**-7, atol=1e-6)
