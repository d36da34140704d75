"""Sequence tasks: MNIST-1D generation and CNN, char-level GRU and Transformer LMs."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from labutil import train

import optimlab as ol
from optimlab.lab.tasks import TASKS, make_task, sequence
from optimlab.lab.tasks.sequence import CharLMTask, MNIST1DTask, make_mnist1d, stdlib_text

SMALL_LM = {"n_chars": 20_000, "context": 32, "eval_windows": 64}
LMS = ["gru-charlm", "transformer-charlm"]


def test_registered() -> None:
    for name in ["mnist1d-cnn", *LMS]:
        assert name in TASKS
        info = make_task(name).info
        assert info.kind == "neural"
        assert info.target_metric == "train_loss"
        assert info.steps > 0


# ----------------------------------------------------------------------------- MNIST-1D


def test_mnist1d_generation() -> None:
    x, y = make_mnist1d(500, 0)
    make_mnist1d.cache_clear()
    x2, y2 = make_mnist1d(500, 0)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)  # regenerated, not cached
    assert x.shape == (500, 40) and x.dtype == np.float32
    assert y.shape == (500,)
    counts = np.bincount(y, minlength=10)
    assert counts.tolist() == [50] * 10
    assert np.isfinite(x).all() and 0.05 < x.std() < 5  # a sanity range (measured 0.15)
    x3, _ = make_mnist1d(500, 1)
    assert not np.array_equal(x, x3)


def test_mnist1d_task_splits() -> None:
    a = make_task("mnist1d-cnn", n_train=300, n_val=100, n_test=200)
    b = make_task("mnist1d-cnn", n_train=300, n_val=100, n_test=200)
    c = make_task("mnist1d-cnn", n_train=300, n_val=100, n_test=200)
    assert isinstance(a, MNIST1DTask)
    a.setup(0), b.setup(0), c.setup(1)
    assert a.x_train.shape == (300, 40) and a.x_val.shape == (100, 40)
    assert a.x_test.shape == (200, 40) and a.n_train == 300
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert not torch.equal(a.x_train, c.x_train)
    counts = torch.bincount(a.y_train, minlength=10)
    assert counts.min() >= 15  # balanced-ish: 30 per class in expectation
    # Full batch and mini-batches.
    gen = torch.Generator().manual_seed(0)
    x, y = next(a.batches(None, gen))
    assert torch.equal(x, a.x_train)
    it = a.batches(64, gen)
    x, y = next(it)
    assert x.shape == (64, 40) and y.shape == (64,)
    metrics = a.evaluate()
    for key in ("train_loss", "val_loss", "test_loss", "train_accuracy", "val_accuracy",
                "test_accuracy", "generalization_gap"):
        assert math.isfinite(metrics[key])
    assert metrics["generalization_gap"] == metrics["test_loss"] - metrics["train_loss"]
    # the same float32 loss (measured equal); even reduced in another order, ~1e-7 of 2.3
    assert abs(float(a.full_loss().detach()) - metrics["train_loss"]) < 1e-5


@pytest.mark.slow
def test_mnist1d_learnable() -> None:
    # Measured at this size: ~0.71 test accuracy after 1000 Adam steps (seeds 0 and 1), ~0.5
    # after 300; the published CNN reaches ~0.9+ with 4000 examples and longer training.
    task = make_task("mnist1d-cnn", n_train=2000, n_val=100, n_test=500)
    task.setup(0)
    train(task, ol.Adam(task.parameters(), lr=3e-3), steps=1000, batch_size=100)
    metrics = task.evaluate()
    # Measured 0.670 / 0.821; with AVX2 kernels and one thread 0.678 / 0.813: 1000 mini-batch
    # steps turn rounding into a slightly different run (~1% in accuracy), far from the 0.17
    # and 0.21 margins (85 and 420 examples).
    assert metrics["test_accuracy"] > 0.5
    assert metrics["train_accuracy"] > 0.6


# ----------------------------------------------------------------------------- char LMs


def test_stdlib_text() -> None:
    text = stdlib_text(20_000)
    assert text == stdlib_text(20_000)
    with open(os.path.join(os.path.dirname(os.__file__), sequence.STDLIB_MODULES[0]),
              encoding="utf-8") as f:
        assert text.startswith(f.read()[:1000])
    a, b = make_task("gru-charlm", **SMALL_LM), make_task("transformer-charlm", **SMALL_LM)
    assert isinstance(a, CharLMTask) and isinstance(b, CharLMTask)
    assert a.text == b.text == text
    a.setup(0), b.setup(3)
    assert a.vocab == b.vocab == sorted(set(text))
    assert torch.equal(a.val_data, b.val_data)
    assert len(a.train_data) == 16_000 and len(a.val_data) == len(a.test_data) == 2_000


@pytest.mark.slow
@pytest.mark.parametrize("name", LMS)
def test_lm_builds_and_learns(name: str) -> None:
    task = make_task(name, **SMALL_LM)
    task.setup(0)
    other = make_task(name, **SMALL_LM)
    other.setup(0)
    for pa, pb in zip(task.parameters(), other.parameters()):
        assert torch.equal(pa, pb)
    gen = torch.Generator().manual_seed(0)
    x, y = next(task.batches(8, gen))
    assert x.shape == y.shape == (8, 32) and x.dtype == torch.int64
    start = int(torch.nonzero((task.train_data.unfold(0, 32, 1) == x[0]).all(1))[0])
    assert torch.equal(y[0], task.train_data[start + 1:start + 33])
    xf, _ = next(task.batches(None, gen))
    assert xf.shape == (64, 32)
    before = task.evaluate()
    # untrained: near-uniform predictions (measured 0.013 and 0.13 off log |vocab|)
    assert abs(before["train_loss"] - math.log(len(task.vocab))) < 1.0
    assert before["bits_per_char"] == pytest.approx(before["val_loss"] / math.log(2))  # exact
    train(task, ol.Adam(task.parameters(), lr=3e-3), steps=30, batch_size=32)
    after = task.evaluate()
    # measured drops of 1.9 and 2.1 (4x the 0.5 asked), unchanged to 6 digits with AVX2 kernels
    assert after["train_loss"] < before["train_loss"] - 0.5
    assert after["val_loss"] < before["val_loss"]


def test_transformer_causal() -> None:
    task = make_task("transformer-charlm", **SMALL_LM)
    task.setup(0)
    x, _ = next(task.batches(4, torch.Generator().manual_seed(1)))
    x2 = x.clone()
    x2[:, 20] = (x2[:, 20] + 1) % len(task.vocab)
    with torch.no_grad():
        a, b = task.model(x), task.model(x2)
    # The causal mask gives position 20 exactly zero weight before it (measured equal); 1e-6 on
    # outputs |a| < 2.5 (~8 float32 ulps) only allows an attention kernel that blocks the keys
    # differently to round apart. The later positions change by up to 2.3.
    assert torch.allclose(a[:, :20], b[:, :20], atol=1e-6)
    assert not torch.allclose(a[:, 20:], b[:, 20:], atol=1e-4)


# ----------------------------------------------------------------------------- options


@pytest.mark.parametrize(("name", "option", "value"), [
    ("mnist1d-cnn", "n_train", 0),
    ("mnist1d-cnn", "n_test", 1.5),
    ("mnist1d-cnn", "n_val", -1),
    ("mnist1d-cnn", "channels", True),
    ("gru-charlm", "n_chars", 10**9),
    ("gru-charlm", "n_chars", 100),
    ("gru-charlm", "context", 0),
    ("transformer-charlm", "context", "64"),
    ("transformer-charlm", "eval_windows", 0),
])
def test_bad_options(name: str, option: str, value: object) -> None:
    with pytest.raises(ValueError, match=option):
        make_task(name, **{option: value})


@pytest.mark.parametrize("name", ["mnist1d-cnn", "gru-charlm"])
def test_bad_batch_size(name: str) -> None:
    options = SMALL_LM if name == "gru-charlm" else {"n_train": 50, "n_val": 10, "n_test": 10}
    task = make_task(name, **options)
    task.setup(0)
    with pytest.raises(ValueError, match="batch_size"):
        task.batches(0, torch.Generator())


def test_unknown_option() -> None:
    with pytest.raises(ValueError, match="bogus"):
        make_task("mnist1d-cnn", bogus=1)
