"""SAM, sharpness and landscapes in the lab: SAM runs by name and is charged two gradient
evaluations per step, runs record their final sharpness when asked, label noise on the digits,
the report's sharpness plot, the packaged study and `optimlab landscape`."""

from __future__ import annotations

import json
import math

import pytest
import torch

from optimlab.cli import main
from optimlab.lab.optimizers import SAMSGD, build_optimizer
from optimlab.lab.report import html_report
from optimlab.lab.runs import execute
from optimlab.lab.schema import RunConfig
from optimlab.lab.spec import StudySpec, study_path
from optimlab.lab.tasks import make_task
from optimlab.sharpness import hessian_eigenvalues


def _run(optimizer: str, steps: int = 40, **kw: object):
    return execute(RunConfig(task=kw.pop("task", "mlp-digits"), optimizer=optimizer,
                             steps=steps, seed=0, **kw))


def test_sam_runs_by_name_and_is_charged_two_evaluations_per_step() -> None:
    for name in ("sam", "asam"):
        rec = _run(name, steps=30)
        assert rec.status == "ok", rec.error
        assert rec.grad_evals == 2 * rec.steps_done
        assert rec.evals["grad_evals"][-1] == rec.grad_evals


def test_sam_with_rho_zero_in_the_lab_is_its_sgd() -> None:
    # rho = 0: the perturbation is zero, the second gradient is the first one (the same
    # parameters, the same batch), so the run equals SGD's (toolkit: rho=0 equals the base).
    sam = _run("sam", steps=25, hyperparams={"rho": 0.0}, eval_every=25)
    sgd = _run("momentum", steps=25, eval_every=25)
    assert sam.final["train_loss"] == sgd.final["train_loss"]


def test_the_lab_sam_gets_the_model_for_batch_norm() -> None:
    rec = _run("sam", steps=6, task_options={"batchnorm": True}, eval_every=6)
    assert rec.status == "ok", rec.error
    task = make_task("mlp-digits", batchnorm=True)
    task.setup(0)
    opt = build_optimizer("sam", task.parameters())
    assert isinstance(opt, SAMSGD) and opt.model is None  # the runner sets it


def test_a_run_records_its_final_sharpness_when_asked() -> None:
    plain = _run("momentum", steps=40)
    assert not any(k.startswith("sharpness") for k in plain.scalars)
    rec = _run("momentum", steps=40, sharpness=True)
    sc = rec.scalars
    assert sc["sharpness_lambda_max"] > 0 and sc["sharpness_trace"] > 0
    assert sc["sharpness_adaptive_lambda_max"] > 0 and sc["sharpness_converged"] == 1.0
    assert sc["sharpness_hvps"] > 0 and sc["sharpness_trace_stderr"] >= 0
    # Sharpness is measured, not trained: the work and the trajectory are unchanged.
    assert rec.grad_evals == plain.grad_evals
    assert rec.final["train_loss"] == plain.final["train_loss"]
    # ... and the key differs only because the record holds more.
    assert rec.key != plain.key
    assert RunConfig(task="mlp-digits", optimizer="sgd").key() == RunConfig(
        task="mlp-digits", optimizer="sgd", sharpness=False).key()


def test_the_recorded_eigenvalue_is_the_training_objectives() -> None:
    """The recorded top eigenvalue equals an independent Lanczos run on the same final
    parameters (same objective, same Hessian): to the Lanczos tolerance (TOL = 1e-3 relative
    residual, which bounds the eigenvalue error by about TOL * lambda for the top one)."""
    steps = 30
    cfg = RunConfig(task="logreg-breast-cancer", optimizer="adam", steps=steps, seed=0,
                    batch_size="full", sharpness=True)
    rec = execute(cfg)
    task = make_task("logreg-breast-cancer")
    torch.manual_seed(0)
    task.setup(0)
    opt = build_optimizer("adam", task.parameters())
    batch = next(task.batches(None, torch.Generator().manual_seed(0)))
    for _ in range(steps):
        opt.zero_grad()
        task.loss(batch).backward()
        opt.step()
    ref = hessian_eigenvalues(task.full_loss, task.parameters(), k=1, max_iter=200,
                              tol=1e-6).values[0].item()
    assert math.isclose(rec.scalars["sharpness_lambda_max"], ref, rel_tol=5e-3)


def test_label_noise_flips_exactly_the_stated_fraction_of_training_labels() -> None:
    clean, noisy = make_task("mlp-digits"), make_task("mlp-digits", label_noise=0.2)
    clean.setup(3)
    noisy.setup(3)
    flipped = int((clean.y_train != noisy.y_train).sum())
    assert flipped == round(0.2 * clean.n_train)
    assert torch.equal(clean.y_test, noisy.y_test) and torch.equal(clean.y_val, noisy.y_val)
    again = make_task("mlp-digits", label_noise=0.2)
    again.setup(3)
    assert torch.equal(again.y_train, noisy.y_train)
    assert noisy.info.options["label_noise"] == 0.2 and "label_noise" not in clean.info.options
    with pytest.raises(ValueError, match="label_noise"):
        make_task("mlp-digits", label_noise=1.0)


def test_the_report_plots_sharpness_against_the_generalization_gap() -> None:
    recs = [execute(RunConfig(task="mlp-digits", optimizer=o, steps=30, seed=s,
                              sharpness=True))
            for o in ("momentum", "sam") for s in (0,)]
    html, _ = html_report(recs)
    assert 'data-plot="sharpness-gap"' in html
    assert "final top Hessian eigenvalue" in html
    plain, _ = html_report([_run("momentum", steps=20)])
    assert 'data-plot="sharpness-gap"' not in plain


def test_the_packaged_sharpness_study_is_found_by_name() -> None:
    spec = StudySpec.load(study_path("sharpness"))
    assert spec.sharpness and set(spec.optimizers) == {"momentum", "adam", "sam"}
    assert len(spec.seeds) >= 3
    assert spec.settings("mlp-digits").options == {"label_noise": 0.2}
    # A spec without sharpness keeps its old content hash (and so its default name).
    assert "sharpness" not in StudySpec(tasks=("quadratic",), optimizers=("sgd",)).to_dict()


def test_optimlab_landscape_writes_data_and_plots(tmp_path, capsys) -> None:
    out = tmp_path / "land"
    code = main(["landscape", "--task", "rosenbrock", "--optimizers", "adam,momentum",
                 "--lr", "1e-3", "--steps", "30", "--batch-size", "full", "--resolution", "5",
                 "--span", "0.5", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    data = json.loads((out / "landscape.json").read_text())
    assert [s["optimizer"] for s in data["slices"]] == ["adam", "momentum"]
    assert len(data["slices"][0]["losses"]) == 5 and len(data["slices"][0]["losses"][0]) == 5
    (line,) = data["interpolations"]
    assert line["from"] == "adam" and line["to"] == "momentum"
    assert len(line["losses"]) == len(line["alphas"])
    for name in ("slice-0-adam.svg", "slice-1-momentum.svg",
                 "interpolation-adam-momentum.svg", "index.html"):
        assert (out / name).stat().st_size > 0


def test_optimlab_landscape_bad_input_is_one_line(capsys) -> None:
    assert main(["landscape", "--task", "rosenbrock", "--optimizers", "adma"]) == 2
    err = capsys.readouterr().err
    assert "adma" in err and "Traceback" not in err
    assert main(["landscape", "--task", "rosenbrock", "--optimizers", "adam",
                 "--resolution", "1"]) == 2
    assert "resolution" in capsys.readouterr().err


def test_landscape_file_names_of_import_paths_are_links(tmp_path, capsys) -> None:
    out = tmp_path / "land"
    code = main(["landscape", "--task", "rosenbrock", "--optimizers", "torch.optim:SGD",
                 "--allow-import", "torch", "--lr", "1e-3", "--steps", "5",
                 "--batch-size", "full", "--resolution", "3", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert (out / "slice-0-torch-optim-SGD.svg").is_file()
    assert 'src="slice-0-torch-optim-SGD.svg"' in (out / "index.html").read_text()


def test_landscape_output_folder_that_is_a_file_is_one_line(tmp_path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main(["landscape", "--task", "rosenbrock", "--optimizers", "adam", "--steps", "3",
                 "--batch-size", "full", "--out", str(blocker)])
    err = capsys.readouterr().err
    assert code == 2 and "output folder" in err and "internal error" not in err


def test_a_failed_sharpness_measurement_keeps_the_run(monkeypatch) -> None:
    import optimlab.sharpness as sharpness_module

    def broken(*_args, **_kw):
        raise TypeError("a user task's full_loss went wrong")

    monkeypatch.setattr(sharpness_module, "sharpness", broken)
    rec = _run("momentum", steps=10, sharpness=True)
    assert rec.status == "ok"
    assert math.isnan(rec.scalars["sharpness_lambda_max"])
    assert rec.scalars["sharpness_converged"] == 0.0
