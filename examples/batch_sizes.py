"""Batch, single-sample and mini-batch gradient descent are one optimizer: ``optimlab.SGD``.

What differs is only how many samples each gradient is computed from:

* batch gradient descent: the whole training set, one step per epoch;
* stochastic (single-sample) gradient descent: one sample, one step per sample;
* mini-batch SGD: a few dozen samples, one step per mini-batch.

This script fits a least-squares linear regression on synthetic data (made with torch, fixed
seed) three times with the same optimizer, learning rate, starting point and number of epochs,
changing only the batch size, and prints the final training loss, the number of steps and the
wall time of each run. The least-squares optimum (solved exactly) is printed for reference.

Run it with ``python examples/batch_sizes.py`` (a few seconds on a laptop CPU).
"""

from __future__ import annotations

import time

import torch

import optimlab

N_SAMPLES = 1024
N_FEATURES = 16
EPOCHS = 10
LR = 0.02
SEED = 0


def make_data(seed: int = SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """``y = X w + b + noise`` with standard-normal features."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N_SAMPLES, N_FEATURES, generator=gen)
    w = torch.randn(N_FEATURES, 1, generator=gen)
    y = x @ w + 0.5 + 0.1 * torch.randn(N_SAMPLES, 1, generator=gen)
    return x, y


def train(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[float, int, float]:
    """Train a fresh linear model with ``optimlab.SGD`` for ``EPOCHS`` epochs.

    Returns the final mean-squared error on the whole training set, the number of optimizer
    steps taken and the wall time in seconds.
    """
    torch.manual_seed(SEED)  # the same starting point for every batch size
    model = torch.nn.Linear(N_FEATURES, 1)
    opt = optimlab.SGD(model.parameters(), lr=LR)  # the only optimizer in this script
    loss_fn = torch.nn.MSELoss()
    order = torch.Generator().manual_seed(SEED)  # the same shuffles for every batch size
    steps = 0
    start = time.perf_counter()
    for _ in range(EPOCHS):
        perm = torch.randperm(N_SAMPLES, generator=order)
        for i in range(0, N_SAMPLES, batch_size):
            idx = perm[i:i + batch_size]
            loss = loss_fn(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
    wall = time.perf_counter() - start
    with torch.no_grad():
        final = loss_fn(model(x), y).item()
    return final, steps, wall


def optimum_loss(x: torch.Tensor, y: torch.Tensor) -> float:
    """The smallest training loss a linear model can reach (exact least squares)."""
    xb = torch.cat([x, torch.ones(N_SAMPLES, 1)], dim=1)
    coef = torch.linalg.lstsq(xb, y).solution
    return torch.nn.functional.mse_loss(xb @ coef, y).item()


def main() -> None:
    x, y = make_data()
    print(f"least squares: {N_SAMPLES} samples, {N_FEATURES} features; optimlab.SGD, "
          f"lr={LR}, {EPOCHS} epochs for every run\n")
    print(f"{'run':<28} {'batch':>6} {'steps':>7} {'final loss':>11} {'wall s':>8}")
    runs = [
        ("batch gradient descent", N_SAMPLES),
        ("stochastic (single-sample)", 1),
        ("mini-batch SGD", 32),
    ]
    for name, batch_size in runs:
        final, steps, wall = train(x, y, batch_size)
        print(f"{name:<28} {batch_size:>6} {steps:>7} {final:>11.5f} {wall:>8.2f}")
    print(f"{'least-squares optimum':<28} {'':>6} {'':>7} {optimum_loss(x, y):>11.5f}")
    print("\nSame optimizer, same learning rate, same epochs: the batch size alone sets how many"
          "\nsteps an epoch buys and how noisy each step is. Batch gradient descent takes one"
          "\nexact step per epoch and is still far from the optimum; single-sample SGD takes one"
          "\nnoisy step per sample (slowest per epoch, with per-step overhead); mini-batches sit"
          "\nin between and usually give the best loss per second.")


if __name__ == "__main__":
    main()
