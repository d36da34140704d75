"""The written-out population paths of plain MLPs (optimlab.lab.tasks.stacked) against each
member's own model, and the flat parameter layout (optimlab.lab.population_stack.Layout)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from optimlab.lab.population_stack import Layout
from optimlab.lab.tasks import make_task
from optimlab.lab.tasks.stacked import ClassificationMetrics, cross_entropy_gradients

#: float64 tolerance: every value is a sum of at most a few thousand products (a batch row
#: count, a layer width, a split size of 1078), computed in another order than the member's own
#: model; each ordering is within n * 2^-53 ~ 1e-13 (n <= 1078) of the exact sum, relative to
#: the sum of the magnitudes, which the values here do not undercut by more than 10x.
RTOL = 1e-12
ATOL = 1e-12


def _mlp(widths: list[int], act: type[nn.Module], bias_free: int | None = None) -> nn.Sequential:
    layers: list[nn.Module] = []
    for k, (a, b) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(a, b, bias=k != bias_free))
        if k < len(widths) - 2:
            layers.append(act())
    return nn.Sequential(*layers).double()


@pytest.mark.parametrize("act", [nn.ReLU, nn.Tanh])
@pytest.mark.parametrize(("widths", "bias_free"), [([5, 3], None), ([6, 8, 4], 1),
                                                   ([7, 9, 9, 3], 0)])
@pytest.mark.parametrize("rows", [32, 22])
def test_gradients_equal_each_members_own_backward(act: type[nn.Module], widths: list[int],
                                                   bias_free: int | None, rows: int) -> None:
    torch.manual_seed(0)
    members = [_mlp(widths, act, bias_free) for _ in range(3)]
    x = torch.randn(3, rows, widths[0], dtype=torch.float64)
    y = torch.randint(0, widths[-1], (3, rows))
    params = [torch.stack(ps).detach() for ps in zip(*(m.parameters() for m in members),
                                                       strict=True)]
    gradients = cross_entropy_gradients(members[0])
    assert gradients is not None
    grads, losses = gradients(params, (x, y))
    for i, model in enumerate(members):
        loss = F.cross_entropy(model(x[i]), y[i])
        expected = torch.autograd.grad(loss, list(model.parameters()))
        torch.testing.assert_close(losses[i], loss.detach(), rtol=RTOL, atol=ATOL)
        for g, e in zip(grads, expected, strict=True):
            torch.testing.assert_close(g[i], e, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("model", [
    nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)),
    nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Dropout(0.1), nn.Linear(4, 2)),
    nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.ReLU(), nn.Linear(4, 2)),
    nn.Sequential(nn.ReLU(), nn.Linear(4, 2)),
    nn.Sequential(),
    nn.Linear(4, 2),
], ids=["batchnorm", "dropout", "two-activations", "activation-first", "empty", "not-sequential"])
def test_other_models_get_no_written_out_gradients(model: nn.Module) -> None:
    assert cross_entropy_gradients(model) is None


def test_frozen_parameters_and_cnn_get_no_written_out_paths() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    model[0].weight.requires_grad_(False)
    assert cross_entropy_gradients(model) is None
    cnn = make_task("cnn-digits")
    cnn.setup(0)
    assert cnn.population_gradients() is None and cnn.population_metrics([cnn]) is None
    mlp = make_task("mlp-digits", activation="tanh", depth=3, width=16)
    mlp.setup(0)
    assert mlp.population_gradients() is not None
    # a linear model whose loss the written-out paths do not know (a user's subclass)
    linear = make_task("logreg-breast-cancer")
    assert linear.population_gradients() is not None
    linear.data_loss_name = None
    assert linear.population_gradients() is None


@pytest.mark.parametrize("task", ["logreg-breast-cancer", "softmax-digits",
                                  "least-squares-diabetes"])
@pytest.mark.parametrize("rows", [32, 21])
def test_linear_gradients_equal_each_members_own_backward(task: str, rows: int) -> None:
    # float64 (the convex tasks' default dtype); the L2 penalty is on (l2 > 0 by default)
    tasks = [make_task(task) for _ in range(3)]
    for seed, t in enumerate(tasks):
        t.setup(seed)
    assert tasks[0].l2 > 0
    gen = torch.Generator().manual_seed(0)
    index = [torch.randperm(t.n_train, generator=gen)[:rows] for t in tasks]
    x = torch.stack([t.x_train[i] for t, i in zip(tasks, index, strict=True)])
    y = torch.stack([t.y_train[i] for t, i in zip(tasks, index, strict=True)])
    params = [torch.stack(ps).detach() for ps in zip(*(t.parameters() for t in tasks),
                                                       strict=True)]
    grads, losses = tasks[0].population_gradients()(params, (x, y))
    for i, t in enumerate(tasks):
        loss = t.loss((x[i], y[i]))
        expected = torch.autograd.grad(loss, t.parameters())
        torch.testing.assert_close(losses[i], loss.detach(), rtol=RTOL, atol=ATOL)
        for g, e in zip(grads, expected, strict=True):
            torch.testing.assert_close(g[i], e, rtol=RTOL, atol=ATOL)


def _float64_tasks(n: int, **options: object) -> list:
    tasks = []
    for seed in range(n):
        task = make_task("mlp-digits", **options)
        task.setup(seed)
        task.model.double()
        for split in ("train", "val", "test"):
            setattr(task, f"x_{split}", getattr(task, f"x_{split}").double())
        tasks.append(task)
    return tasks


@pytest.mark.parametrize("rows", [[0, 1, 2, 3, 4, 5], [4, 1], [5, 0, 3, 2, 1]],
                         ids=["all", "two", "five-unordered"])
def test_metrics_equal_each_members_own_evaluate(rows: list[int]) -> None:
    # 6 members: more than one chunk (ClassificationMetrics.CHUNK = 4) and a partial one
    tasks = _float64_tasks(6, activation="tanh")
    metrics = tasks[0].population_metrics(tasks)
    assert isinstance(metrics, ClassificationMetrics) and metrics.CHUNK < 6
    params = [torch.stack([tasks[r].parameters()[j].detach() for r in rows])
              for j in range(len(tasks[0].parameters()))]
    for _ in range(2):  # the kept buffers are overwritten, not accumulated
        got = metrics(params, rows)
        assert len(got) == len(rows)
        for r, values in zip(rows, got, strict=True):
            own = tasks[r].evaluate()
            assert list(values) == list(own)
            for name, value in own.items():
                if name.endswith("accuracy"):  # exact counts of the same argmax
                    assert values[name] == value, name
                else:
                    assert values[name] == pytest.approx(value, rel=RTOL, abs=ATOL), name


def test_layout_flat_buffers_hold_every_parameter() -> None:
    params = [torch.zeros(2, 3), torch.zeros(4, dtype=torch.float64), torch.zeros(5),
              torch.zeros(1, 1, dtype=torch.float64)]
    layout = Layout(params)
    stacked = [torch.randn(3, *p.shape, dtype=p.dtype) for p in params]
    buffers = layout.flatten(stacked)
    assert [tuple(b.shape) for b in buffers] == [(3, 11), (3, 5)]  # one per dtype
    assert [b.dtype for b in buffers] == [torch.float32, torch.float64]
    views = layout.views(buffers)
    for v, s in zip(views, stacked, strict=True):
        assert v.dtype == s.dtype and torch.equal(v, s)
    buffers[0][1].fill_(7.0)  # views share the buffers' memory
    assert (views[0][1] == 7).all() and (views[2][1] == 7).all() and (views[0][0] != 7).any()
