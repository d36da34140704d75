"""Input limits: guards against typos, with errors that name the field and the limit, checked
before anything is saved or run, and raised by a ``[limits]`` table or ``limits=``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from optimlab.cli import main
from optimlab.lab import validate as v
from optimlab.lab.spec import StudySpec, default_name
from optimlab.lab.tuning import TuneError, TuneSpec
from optimlab.lab.validate import Limits, ValidationError


def _study(**settings: object) -> dict[str, object]:
    return {"tasks": ["quadratic"], "optimizers": ["sgd"], "seeds": 1, **settings}


def _refused(mapping: dict[str, object], field: str, match: str) -> ValidationError:
    with pytest.raises(ValidationError, match=match) as err:
        StudySpec.from_mapping(mapping, source="s.toml")
    assert err.value.field == field, err.value
    assert str(err.value).startswith("s.toml: ") and "\n" not in str(err.value)
    return err.value


def test_the_default_limits_are_the_documented_constants() -> None:
    limits = Limits()
    assert (limits.steps, limits.examples, limits.epochs, limits.seeds, limits.trials,
            limits.runs, limits.name_length) == (
        v.MAX_STEPS, v.MAX_EXAMPLES, v.MAX_EPOCHS, v.MAX_SEEDS, v.MAX_TRIALS, v.MAX_RUNS,
        v.MAX_NAME_LENGTH)
    assert v.MAX_SEED == 2**32 - 1


@pytest.mark.parametrize(("key", "limit"), [("steps", v.MAX_STEPS),
                                            ("examples", v.MAX_EXAMPLES),
                                            ("epochs", v.MAX_EPOCHS)])
def test_budgets_are_bounded_at_the_limit(key: str, limit: int) -> None:
    assert getattr(StudySpec.from_mapping(_study(**{key: limit})), key) == limit
    err = _refused(_study(**{key: limit + 1}), key, rf"{key} must be at most {limit:,} "
                                                    rf"\(limits\.{key}, a guard")
    assert "[limits] table" in str(err)
    _refused(_study(task={"quadratic": {key: limit * 10}}), f"task.quadratic.{key}",
             rf"task\.quadratic\.{key} must be at most")


def test_eval_every_is_bounded_by_the_step_limit() -> None:
    _refused(_study(eval_every=v.MAX_STEPS + 1), "eval_every", "eval_every must be at most")
    _refused(_study(task={"quadratic": {"eval_every": 10**12}}), "task.quadratic.eval_every",
             "at most")


def test_seed_counts_are_bounded_before_any_seed_list_is_built() -> None:
    assert len(StudySpec.from_mapping(_study(seeds=v.MAX_SEEDS)).seeds) == v.MAX_SEEDS
    # a count of 10**18 would need exabytes as a tuple: refused from the count alone
    _refused(_study(seeds=10**18), "seeds", "seeds must be at most 1,000")
    _refused(_study(seeds=list(range(v.MAX_SEEDS + 1))), "seeds (count)", "at most 1,000")
    _refused(_study(heldout_seeds=v.MAX_SEEDS + 1), "heldout_seeds", "at most 1,000")


def test_seed_values_are_what_the_tasks_generators_accept() -> None:
    assert StudySpec.from_mapping(_study(seeds=[v.MAX_SEED])).seeds == (v.MAX_SEED,)
    err = _refused(_study(seeds=[0, 2**32]), "seeds[1]", r"from 0 to 4294967295")
    assert "2**32 - 1" in str(err)
    _refused(_study(seeds=[-1]), "seeds[0]", "from 0 to")
    # held-out seeds follow the largest study seed: they must fit too
    _refused(_study(seeds=[v.MAX_SEED], heldout_seeds=1), "heldout_seeds",
             "would use seeds up to 4294967296")


def test_planned_runs_are_bounded() -> None:
    lrs = [10.0 ** -k for k in range(1, 11)]  # 10 values
    many = _study(hyperparams={"sgd": {"lr": lrs}}, batch_size=[1, 2, 4, 8, 16],
                  seeds=v.MAX_SEEDS, heldout_seeds=0)
    # 1 task x 1 optimizer x 10 lrs x 5 batch sizes x 1000 seeds = 50,000 runs
    assert StudySpec.from_mapping(many).max_runs() == 50_000
    err = _refused({**many, "optimizers": ["sgd", "adam"],
                    "hyperparams": {"sgd": {"lr": lrs}, "adam": {"lr": lrs}},
                    "tasks": ["quadratic", "rosenbrock"]}, "limits.runs",
                   "plans up to 200,000 runs")
    assert "limits=Limits(runs=...)" in str(err)
    # held-out re-runs count: one best arm per task and optimizer on each held-out seed
    spec = StudySpec.from_mapping(_study(hyperparams={"sgd": {"lr": [0.1, 0.01]}}, seeds=3))
    assert spec.n_heldout == 3 and spec.max_runs() == 2 * 3 + 3


@pytest.mark.parametrize(("name", "match"), [
    ("x" * 101, "at most 100 characters"),
    ("a/b", "'a/b' has '/'"),
    ("../up", "has '/'"),
    (".hidden", "starts with '.'"),
    ("-rf", "starts with '-'"),
    ("tab\there", "has '\\\\t'"),
    ("étude", "has 'é'"),
    ("", "non-empty string"),
])
def test_study_names_are_safe_folder_names(name: str, match: str) -> None:
    _refused(_study(name=name), "name", match)


def test_names_that_are_safe_pass() -> None:
    for name in ("default", "x" * 100, "run-1a2b", "my_study.v2"):
        assert StudySpec.from_mapping(_study(name=name)).name == name


def test_a_limits_table_raises_a_limit_and_is_kept_with_the_spec(tmp_path: Path) -> None:
    path = tmp_path / "long study.toml"
    path.write_text('tasks = ["quadratic"]\noptimizers = ["sgd"]\nsteps = 200000000\n'
                    "[limits]\nsteps = 200000000\n")
    spec = StudySpec.load(path)
    assert spec.steps == 2 * 10**8 and spec.limits.steps == 2 * 10**8
    assert spec.name == "long-study"  # named after the file, as a safe folder name
    assert spec.to_dict()["limits"] == {"steps": 2 * 10**8}
    again = StudySpec.from_mapping(spec.to_dict())
    assert again == spec
    # the limits are not the study's identity: same default name with or without them
    plain = StudySpec.from_mapping(_study(steps=100))
    raised = StudySpec.from_mapping(_study(steps=100, limits={"seeds": 5000}))
    assert default_name(plain) == default_name(raised)
    assert "limits" not in plain.to_dict()
    # Python: keyword arguments
    assert StudySpec(tasks=["quadratic"], optimizers=["sgd"], seeds=2000,
                     limits=Limits(seeds=2000)).seeds[-1] == 1999


def test_bad_limits_tables_name_the_limit() -> None:
    _refused(_study(limits={"stepz": 3}), "limits.stepz", "not a limit; allowed: steps")
    _refused(_study(limits={"steps": 0}), "limits.steps", "positive integer")
    _refused(_study(limits=[1]), "limits", "table of limits")


def test_empty_lists_are_refused_naming_the_field() -> None:
    _refused(_study(tasks=[]), "tasks", "empty list")
    _refused(_study(optimizers=[]), "optimizers", "empty list")
    _refused(_study(tasks=""), "tasks", "is empty")
    _refused(_study(tasks=" , "), "tasks", "is empty")
    with pytest.raises(ValidationError, match="tasks is an empty list"):
        StudySpec.from_mapping(_study()).merged_with({"tasks": []})


# ----------------------------------------------------------------------------- tuning, lr-find


def test_tuning_limits() -> None:
    def spec(**kw: object) -> TuneSpec:
        return TuneSpec(**{"tasks": ["quadratic"], "optimizers": ["sgd"], "trials": 8, **kw})

    assert spec(trials=v.MAX_TRIALS).trials == v.MAX_TRIALS
    for kw, field, match in [
            ({"trials": v.MAX_TRIALS + 1}, "trials", "at most 100,000"),
            ({"steps": 10**12}, "steps", "at most 100,000,000"),
            ({"eval_every": 10**12}, "eval_every", "at most"),
            ({"seeds": 10**6}, "seeds", "at most 1,000"),
            ({"seed": 2**32}, "seed", "from 0 to 4294967295"),
            ({"seed": v.MAX_SEED}, "seed", "re-runs use seeds"),
            ({"name": "a/b"}, "name", "has '/'"),
            ({"name": "n" * 101}, "name", "at most 100 characters"),
            ({"tasks": []}, "tasks", "empty list"),
            ({"optimizers": ""}, "optimizers", "is empty")]:
        with pytest.raises(TuneError, match=match) as err:
            spec(**kw)
        assert err.value.field == field, (kw, err.value)
    assert spec(trials=v.MAX_TRIALS + 1, limits={"trials": v.MAX_TRIALS + 1}).trials \
        == v.MAX_TRIALS + 1
    raised = spec(limits=Limits(steps=10**9), steps=10**9)
    assert raised.to_dict()["limits"] == {"steps": 10**9} and "limits" not in spec().to_dict()


def test_lr_finder_limits() -> None:
    from optimlab.lab.lrfind import find_lr

    with pytest.raises(ValidationError, match="num_steps must be at most 100,000,000"):
        find_lr("quadratic", num_steps=10**9)
    with pytest.raises(ValidationError, match="seed must be an integer from 0"):
        find_lr("quadratic", seed=2**40)


def test_advisor_refuses_an_empty_candidate_list() -> None:
    from optimlab.lab.advice import advise

    with pytest.raises(ValidationError, match="optimizers is an empty list"):
        advise("quadratic", optimizers=[], budget_minutes=0.1)


# ----------------------------------------------------------------------------- the CLI


@pytest.mark.parametrize(("args", "match"), [
    (["run", "--task", "quadratic", "--optimizer", "sgd", "--seed", str(10**20)],
     "seeds[0] must be an integer from 0 to 4294967295"),
    (["run", "--task", "quadratic", "--optimizer", "sgd", "--name", "n" * 300],
     "name must be at most 100 characters"),
    (["run", "--task", "quadratic", "--optimizer", "sgd", "--steps", str(10**12)],
     "steps must be at most 100,000,000"),
    (["compare", "--tasks", "quadratic", "--optimizers", "sgd", "--seeds", str(10**6)],
     "seeds must be at most 1,000"),
    (["compare", "--tasks", "", "--optimizers", "sgd"], "tasks is an empty list"),
    (["compare", "--tasks", "quadratic", "--optimizers", ","], "optimizers is an empty list"),
    (["compare", "--tasks", "quadratic", "--optimizers", "sgd", "--name", "a/b"],
     "'a/b' has '/'"),
    (["tune", "--tasks", "quadratic", "--optimizers", "sgd", "--trials", str(10**9)],
     "trials must be at most 100,000"),
    (["tune", "--tasks", "quadratic", "--optimizers", "sgd", "--schedules", ""],
     "--schedules '' is empty"),
    (["lr-find", "--task", "quadratic", "--steps", str(10**9)],
     "num_steps must be at most"),
])
def test_cli_refuses_before_anything_is_saved(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch,
                                              args: list[str], match: str) -> None:
    monkeypatch.chdir(tmp_path)  # where a report or lr-find folder would be written
    db = tmp_path / "r.db"
    store = [] if args[0] == "lr-find" else ["--store", f"sqlite:///{db}"]
    assert main([*args, *store]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("optimlab: error: ") and match in err[0], err
    assert len(err) == 2 and err[1].startswith("  hint: ")
    assert not db.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_cli_seed_overflow_in_a_subprocess_saves_nothing(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "optimlab.cli", "run", "--task", "quadratic",
                        "--optimizer", "sgd", "--seed", "99999999999999999999",
                        "--store", f"sqlite:///{tmp_path / 'r.db'}"], capture_output=True,
                       text=True, check=False, cwd=tmp_path, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "seeds[0] must be an integer from 0 to 4294967295" in r.stderr
    assert not (tmp_path / "r.db").exists() and r.stdout == ""
