"""The second-order and quasi-Newton optimizers in the lab: runs by name, their work charged in
gradient evaluations (optimlab.lab.work), the remembered evaluation, refusals, and the report's
loss against iterations, work and time side by side."""

from __future__ import annotations

import math

import pytest
import torch

import optimlab as ol
from optimlab.lab.optimizers import SECOND_ORDER, lookup
from optimlab.lab.report import html_report
from optimlab.lab.runs import execute
from optimlab.lab.schema import RunConfig
from optimlab.lab.spec import StudyError, StudySpec
from optimlab.lab.tasks import make_task
from optimlab.lab.work import HVP_COST, Memo, replayable


def _run(task: str, optimizer: str, steps: int = 60, **kw: object):
    return execute(RunConfig(task=task, optimizer=optimizer, batch_size=kw.pop("batch_size",
                                                                               "full"),
                             steps=steps, seed=0, **kw))


@pytest.mark.parametrize("name", SECOND_ORDER)
@pytest.mark.parametrize("task", ["rosenbrock", "logreg-breast-cancer"])
def test_second_order_runs_reach_the_target_and_charge_their_work(name: str, task: str) -> None:
    rec = _run(task, name, steps=300 if task == "rosenbrock" else 60)
    assert rec.status == "ok", rec.error
    assert rec.reached, (rec.final, rec.steps_done)
    sc = rec.scalars
    f, g, h = sc["function_evals"], sc["gradient_evals"], sc["hvp_evals"]
    if lookup(name).cls.closure_calls_backward:
        # BFGS/L-BFGS: every computed closure call is one function with its gradient.
        assert f == g == rec.grad_evals and h == 0
    else:
        # Newton(-CG): one loss with gradient per iteration, line-search trials loss-only,
        # Hessian-vector products charged HVP_COST each.
        assert g == rec.steps_done and h > 0
        assert rec.grad_evals == f + HVP_COST * h
    assert sc["closure_evals"] == rec.grad_evals
    work = rec.evals["grad_evals"]
    assert work == sorted(work) and work[-1] <= rec.grad_evals
    assert rec.grad_evals_to_target in work


def test_newton_charges_n_products_per_iteration_on_logistic_regression() -> None:
    # 30 features + bias: the dense Hessian is 31 Hessian-vector products per iteration.
    rec = _run("logreg-breast-cancer", "newton", steps=8)
    n = rec.n_params
    assert n == 31
    assert rec.scalars["hvp_evals"] == n * rec.steps_done


def _plain_lbfgs(task_name: str, steps: int, options: dict | None = None,
                 before_step=None) -> tuple[object, ol.LBFGS]:
    """The lab's lbfgs configuration driven by a plain closure on the full batch (no memo),
    seed 0 as the lab's run; ``before_step(task, closure)`` runs before each step."""
    task = make_task(task_name, **(options or {}))
    torch.manual_seed(0)
    task.setup(0, torch.device("cpu"))
    opt = ol.LBFGS(task.parameters(), lr=1.0, max_iter=1, history_size=10,
                   line_search_fn="strong_wolfe")
    batch = next(task.batches(None, torch.Generator().manual_seed(0)))

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = task.loss(batch)
        loss.backward()
        return loss

    for _ in range(steps):
        if before_step is not None:
            before_step(task, closure)
        opt.step(closure)
    return task, opt


def test_the_remembered_evaluation_changes_nothing_but_the_work() -> None:
    """L-BFGS on a full batch: the lab's run (which reuses the line search's last evaluation at
    the start of the next step) has the same iterates as the optimizer driven by a plain
    closure, bit for bit (the same forward and backward of the same data give the same
    numbers), with fewer gradient evaluations."""
    steps = 25
    rec = _run("logreg-breast-cancer", "lbfgs", steps=steps, eval_every=steps)
    task, opt = _plain_lbfgs("logreg-breast-cancer", steps)
    assert task.evaluate()["train_loss"] == rec.final["train_loss"]
    plain = opt.evaluations.function
    assert rec.grad_evals < plain  # every step's first evaluation was remembered
    assert rec.grad_evals == plain - steps + 1


def test_the_memo_refuses_moved_parameters_and_other_batches() -> None:
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    x = torch.tensor([3.0, 4.0])
    memo = Memo([p])
    loss = (p * x).sum()
    loss.backward()
    memo.store((x,), loss)
    p.grad = None
    assert memo.lookup((x,)) is not None and torch.equal(p.grad, x)
    assert memo.lookup((x.clone(),)) is None  # other tensors, even with equal values
    with torch.no_grad():
        p.add_(1e-7)
    assert memo.lookup((x,)) is None
    assert memo.hits == 1


def test_mini_batch_runs_remember_nothing() -> None:
    rec = _run("logreg-breast-cancer", "lbfgs", steps=10, batch_size=64)
    assert rec.status == "ok", rec.error
    # Each step evaluates its new batch at least once at the start, and once per trial.
    assert rec.grad_evals >= 2 * rec.steps_done


def test_newton_cg_trains_the_mlp_on_mini_batches() -> None:
    rec = _run("mlp-digits", "newton-cg", steps=60, batch_size=64)
    assert rec.status == "ok", rec.error
    first, last = rec.evals["metrics"]["train_loss"][0], rec.final["train_loss"]
    # From log(10) = 2.30 at initialization; 60 curvature-on-a-batch steps bring it well down.
    assert last < 0.5 * first, (first, last)


@pytest.mark.parametrize(("name", "words"), [("newton", "use ol.NewtonCG"),
                                             ("bfgs", "use ol.LBFGS")])
def test_dense_methods_refuse_the_mlp_with_the_alternative(name: str, words: str) -> None:
    rec = _run("mlp-digits", name, steps=5)
    assert rec.status == "failed"
    assert "max_params" in rec.error and words in rec.error


@pytest.mark.parametrize("clip", [{"clip_norm": 1.0}, {"clip_value": 0.5}])
def test_clipping_is_refused_for_line_search_methods(clip: dict[str, float]) -> None:
    rec = _run("rosenbrock", "lbfgs", steps=5, **clip)
    assert rec.status == "failed"
    assert "clipping does not apply to 'lbfgs'" in rec.error
    assert _run("rosenbrock", "adam", steps=5, **clip).status == "ok"


def test_first_order_records_keep_their_shape() -> None:
    rec = _run("rosenbrock", "adam", steps=20)
    assert set(rec.scalars) == {"closure_evals"}
    assert rec.grad_evals == rec.steps_done


def test_the_report_draws_loss_against_iterations_work_and_time() -> None:
    recs = [_run("rosenbrock", name, steps=120) for name in ("adam", "lbfgs", "newton")]
    assert all(r.status == "ok" for r in recs)
    html, _ = html_report(recs)
    assert 'data-plot="loss-cost" data-task="rosenbrock"' in html
    assert "gradient evaluations" in html
    plain, _ = html_report([_run("rosenbrock", "adam", steps=60)])
    assert 'data-plot="loss-cost"' not in plain
    assert 'data-plot="loss-steps"' in plain and 'data-plot="loss-time"' in plain


def test_second_order_optimizers_are_listed_and_tunable() -> None:
    from optimlab.lab.tuning.space import SEARCH_SPACES

    for name in SECOND_ORDER:
        assert "lr" in SEARCH_SPACES[name]
        assert lookup(name).fixed == {"max_iter": 1}
    assert math.isclose(HVP_COST, 2)


def test_the_memo_is_off_where_an_evaluation_changes_the_model() -> None:
    """Batch norm updates its running statistics at every evaluation (and dropout draws new
    masks): replaying one would change the run, so such models get no memo, and the lab's
    L-BFGS run on a full batch equals the plain closure loop exactly."""
    assert not replayable(make_task("mlp-digits", batchnorm=True)._build_model())
    assert not replayable(make_task("mlp-digits", dropout=0.1)._build_model())
    assert replayable(make_task("mlp-digits")._build_model())
    steps = 6
    rec = _run("mlp-digits", "lbfgs", steps=steps, eval_every=steps,
               task_options={"batchnorm": True})
    task, opt = _plain_lbfgs("mlp-digits", steps, {"batchnorm": True})
    assert task.evaluate()["test_loss"] == rec.final["test_loss"]
    assert rec.grad_evals == opt.evaluations.function


def test_the_gradient_norm_series_is_at_each_steps_starting_point() -> None:
    """With the memo, a step's first evaluation is replayed: the recorded gradient norm is
    still that of the step's starting point, ||grad L(w_{k-1})||, not of a line-search trial.
    Both sides compute the same float32 norm of the same gradients: equal to rounding of the
    norm's reduction order, 1e-6 relative (31 terms, float32)."""
    steps = 6
    rec = _run("logreg-breast-cancer", "lbfgs", steps=steps, eval_every=1)
    norms = []

    def record_norm(task, closure) -> None:  # the gradient at the step's starting point
        closure()
        norms.append(float(torch.cat([p.grad.reshape(-1) for p in task.parameters()]).norm()))

    _plain_lbfgs("logreg-breast-cancer", steps, before_step=record_norm)
    recorded = rec.series["grad_norm"]["value"]
    assert len(recorded) == steps
    for got, want in zip(recorded, norms):
        assert math.isclose(got, want, rel_tol=1e-6), (recorded, norms)


def test_a_study_with_clipping_and_a_line_search_method_is_refused_up_front() -> None:
    with pytest.raises(StudyError, match=r"clip_norm.*'lbfgs'"):
        StudySpec(tasks=("rosenbrock",), optimizers=("adam", "lbfgs"), clip_norm=1.0)
    with pytest.raises(StudyError, match=r"clip_value.*'newton'"):
        StudySpec(tasks=("rosenbrock",), optimizers=("newton",), clip_value=0.5)
    assert StudySpec(tasks=("rosenbrock",), optimizers=("adam",), clip_norm=1.0).clip_norm == 1
