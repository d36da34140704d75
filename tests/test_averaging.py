"""SWA/EMA weight averaging, update_bn and SWALR against torch.optim.swa_utils."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.optim import swa_utils

import optimlab as ol
from optimlab.averaging import EMA, SWA, SWALR, update_bn


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


def _data(n: int = 6, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 4, generator=g), torch.randn(16, 2, generator=g)) for _ in range(n)]


def _train(model: nn.Module, steps: int, on_step) -> None:
    opt = ol.SGD(model.parameters(), lr=0.1, momentum=0.9)
    data = _data(steps)
    for i, (x, y) in enumerate(data):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        on_step(i)


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], *, floats_only=False):
    """float32 averages of the same live weights by two implementations: each update rounds
    once or twice differently (<= 1 ulp, 2**-23 |w|), and rounding errors do not grow: SWA's
    running mean weighs older ones by n / (n + 1) (9 updates: <= 9 ulp = 1.1e-6 |w| if all
    fell the same way), EMA's by decay = 0.8 (<= 5 ulp). Both fit 1e-6 (1 + |w|) for |w| < 14
    (measured 6e-8). BN statistics: the same kernels on the same batches (measured equal)."""
    assert set(a) == set(b)
    for k in a:
        if floats_only and not a[k].is_floating_point():
            continue
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-6, msg=k)


@pytest.mark.parametrize("use_buffers", [False, True])
def test_swa_equals_torch_averaged_model(use_buffers):
    model = _model()
    ref = swa_utils.AveragedModel(model, use_buffers=use_buffers)
    avg = SWA(model, start=3, use_buffers=use_buffers)

    def on_step(i):
        assert avg.update(i) == (i >= 3)
        if i >= 3:
            ref.update_parameters(model)

    _train(model, 12, on_step)
    assert avg.n_averaged == 9 == int(ref.n_averaged)
    _close(avg.state_dict()["averages"], ref.module.state_dict(), floats_only=use_buffers)


def test_ema_equals_torch_get_ema_multi_avg_fn():
    model = _model()
    decay = 0.8
    ref = swa_utils.AveragedModel(model, multi_avg_fn=swa_utils.get_ema_multi_avg_fn(decay))
    avg = EMA(model, decay=decay)  # warm-up off; update() counts its own steps
    _train(model, 12, lambda i: (avg.update(), ref.update_parameters(model)))
    assert avg.num_updates == 12
    _close(avg.state_dict()["averages"], ref.module.state_dict())


def test_ema_warmup_matches_formula():
    model = nn.Linear(3, 1)
    avg = EMA(model, decay=0.9, warmup=True)
    expect = {n: None for n, _ in model.named_parameters()}
    for t in range(30):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * (t + 1))
        avg.update()
        n = t  # models averaged before this update
        for name, p in model.named_parameters():
            w = p.detach().double()
            if n == 0:
                expect[name] = w.clone()
            else:
                d = min(0.9, (1 + n) / (10 + n))
                expect[name] = d * expect[name] + (1 - d) * w
    # (1 + 1) / (10 + 1) in Python floats: within an ulp of 2 / 11 (approx allows 1e-6 rel)
    assert avg.decay_at(1) == pytest.approx(2 / 11) and avg.decay_at(1000) == 0.9
    # float32 average against the float64 formula on the same (float32) weights: each update
    # rounds the average by <= 1 ulp (2**-23 |e|; all values positive and of similar size),
    # and later updates shrink an error by the decay, <= 30 / 39 over these 30 updates: at
    # most 1 / (1 - 30 / 39) = 4.3 ulp = 5e-7 |e| even if all fell the same way (< rtol;
    # measured 4.4e-7 at |e| ~ 40, i.e. 1e-8 |e|).
    for name, e in expect.items():
        torch.testing.assert_close(avg.averages[name].double(), e, atol=1e-6, rtol=1e-6)


def test_swapped_restores_live_weights_bit_identically():
    model = _model()
    avg = SWA(model)
    _train(model, 5, lambda i: avg.update())
    live = {k: v.clone() for k, v in model.state_dict().items()}
    with avg.swapped() as m:
        assert m is model
        for k, v in model.state_dict().items():
            assert torch.equal(v, avg.averages[k])
        update_bn(_data(), model)  # changes the buffers inside only
    for k, v in model.state_dict().items():
        assert torch.equal(v, live[k]), k

    with pytest.raises(RuntimeError, match="boom"), avg.averaged():
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(3.0)
        raise RuntimeError("boom")
    for k, v in model.state_dict().items():
        assert torch.equal(v, live[k]), k


def test_copy_to_other_model():
    model = _model()
    avg = EMA(model, decay=0.5)
    _train(model, 4, lambda i: avg.update())
    other = _model(seed=7)
    avg.copy_to(other)
    for k, v in other.state_dict().items():
        assert torch.equal(v, avg.averages[k])


@pytest.mark.parametrize("cls", [SWA, EMA])
def test_state_dict_round_trip(cls):
    model = _model()
    a = cls(model, start=2)
    _train(model, 5, lambda i: a.update(i))
    sd = a.state_dict()
    b = cls(model, start=0)
    b.load_state_dict({k: (dict(v) if isinstance(v, dict) else v) for k, v in sd.items()})
    assert b.n_averaged == a.n_averaged == 3 and b.num_updates == 5 and b.start == 2
    # both continue identically
    _train(model, 3, lambda i: (a.update(), b.update()))
    for k in a.averages:
        assert torch.equal(a.averages[k], b.averages[k])
    assert a.averages[k].data_ptr() != b.averages[k].data_ptr()


def _bn_stats(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k}


def test_update_bn_equals_torch_and_batch_kinds():
    data = _data(5)
    model = _model()
    _train(model, 3, lambda i: None)
    model.eval()
    ref = _model()
    ref.load_state_dict(model.state_dict())
    ref.eval()
    model[1].momentum = 0.3
    ref[1].momentum = 0.3

    swa_utils.update_bn(data, ref)
    update_bn(data, model)
    want = _bn_stats(ref)
    _close(_bn_stats(model), want)
    assert not model.training and not model[1].training and model[1].momentum == 0.3

    for loader, kw in [
        ([x for x, _ in data], {}),
        ([{"input": x, "target": y} for x, y in data], {}),
        ([{"x": x} for x, _ in data], {"input_key": "x"}),
        ([{"x": x} for x, _ in data], {"input_fn": lambda b: b["x"]}),
        ([[x, y] for x, y in data], {"device": "cpu"}),
    ]:
        with torch.no_grad():
            model[1].running_mean.fill_(5.0)
        update_bn(loader, model, **kw)
        _close(_bn_stats(model), want)
        assert model[1].momentum == 0.3 and not model.training

    with pytest.raises(ValueError, match="input_key"):
        update_bn([{"x": data[0][0]}], model)
    assert model[1].momentum == 0.3 and not model.training  # restored after the error


@pytest.mark.parametrize("strategy", ["cos", "linear"])
@pytest.mark.parametrize("anneal_epochs", [0, 1, 5])
def test_swalr_equals_torch(strategy, anneal_epochs):
    def make():
        p = [nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))]
        return ol.SGD([{"params": [p[0]], "lr": 0.5}, {"params": [p[1]], "lr": 0.2}], lr=0.1)

    o1, o2 = make(), make()
    s1 = SWALR(o1, swa_lr=[0.05, 0.01], anneal_epochs=anneal_epochs, anneal_strategy=strategy)
    s2 = swa_utils.SWALR(o2, swa_lr=[0.05, 0.01], anneal_epochs=anneal_epochs,
                         anneal_strategy=strategy)
    for _ in range(anneal_epochs + 4):
        for g1, g2 in zip(o1.param_groups, o2.param_groups):
            # Python floats <= 0.5, the anneal formula written two ways: a few roundings of
            # 1e-17 each; 1e-12 is 1e4 ulps
            assert math.isclose(g1["lr"], g2["lr"], rel_tol=0, abs_tol=1e-12)
        o1.step()
        o2.step()
        s1.step()
        s2.step()
    assert s1.get_last_lr() == pytest.approx([0.05, 0.01], abs=1e-12)


def test_swalr_state_dict_round_trip():
    p = nn.Parameter(torch.zeros(2))
    o = ol.SGD([p], lr=1.0)
    s = SWALR(o, swa_lr=0.1, anneal_epochs=6, anneal_strategy="linear")
    for _ in range(2):
        o.step()
        s.step()
    sd = s.state_dict()
    o2 = ol.SGD([p], lr=1.0)
    o2.load_state_dict(o.state_dict())
    s2 = SWALR(o2, swa_lr=0.1, anneal_epochs=6, anneal_strategy="cos")
    s2.load_state_dict(sd)
    for _ in range(6):
        o.step(); s.step(); o2.step(); s2.step()  # noqa: E702
        assert o.param_groups[0]["lr"] == o2.param_groups[0]["lr"]


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda m: EMA(m, decay=1.5), "decay"),
        (lambda m: EMA(m, decay=-0.1), "decay"),
        (lambda m: SWA(m, start=-1), "start"),
        (lambda m: EMA(m, start=2.5), "start"),
        (lambda m: SWA("model"), "model"),
        (lambda m: SWALR(ol.SGD(m.parameters()), swa_lr=-1.0), "swa_lr"),
        (lambda m: SWALR(ol.SGD(m.parameters()), swa_lr=0.1, anneal_epochs=-1),
         "anneal_epochs"),
        (lambda m: SWALR(ol.SGD(m.parameters()), swa_lr=0.1, anneal_strategy="exp"),
         "anneal_strategy"),
        (lambda m: SWA(m).update(-2), "step"),
    ],
)
def test_bad_input(make, field):
    with pytest.raises(ValueError, match=field):
        make(nn.Linear(2, 2))
