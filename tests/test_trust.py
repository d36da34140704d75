"""The trust model: study files, results databases and dataset folders are data, never code.

Each test that refuses a name uses a module that writes a marker file when it is imported
(on ``sys.path``): the marker must not exist afterwards. The allowed cases import the same
kind of module and see the marker appear, so a marker that could never be written would fail
them.
"""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from optimlab.cli import main
from optimlab.lab.imports import ENV_VAR, allow_list, check_import, load_attr
from optimlab.lab.runs import execute
from optimlab.lab.schema import RunConfig, RunRecord
from optimlab.lab.spec import StudySpec
from optimlab.lab.validate import ValidationError

MARKER_MODULE = '''
from pathlib import Path

import torch

Path({marker!r}).write_text("imported")

from optimlab.lab.tasks import make_task


def make(**options):
    return make_task("quadratic", **options)


Opt = torch.optim.SGD
'''


class Marked:
    """A module ``name`` on ``sys.path`` that writes ``marker`` when imported."""

    def __init__(self, folder: Path) -> None:
        self.name = f"marked_{uuid.uuid4().hex[:12]}"
        self.marker = folder / f"{self.name}.imported"
        (folder / f"{self.name}.py").write_text(MARKER_MODULE.format(marker=str(self.marker)))

    @property
    def task(self) -> str:
        return f"{self.name}:make"

    @property
    def optimizer(self) -> str:
        return f"{self.name}:Opt"

    def imported(self) -> bool:
        return self.marker.exists() or self.name in sys.modules


@pytest.fixture
def marked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Marked]:
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(ENV_VAR, raising=False)
    module = Marked(tmp_path)
    yield module
    sys.modules.pop(module.name, None)


def _study(**settings: object) -> dict[str, object]:
    return {"tasks": ["quadratic"], "optimizers": ["sgd"], "seeds": 1, "steps": 20, **settings}


# ----------------------------------------------------------------------------- the check


def test_check_import_allows_builtin_names_and_allowed_packages(monkeypatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    check_import("quadratic", (), field="tasks[0]")  # built-in names never import
    check_import("mypkg.tasks:make", ("mypkg",), field="tasks[0]")
    check_import("anything.at:all", None, field="tasks[0]")  # the caller is the boundary
    with pytest.raises(ValidationError, match=r"tasks\[0\]: 'mypkg.tasks:make' would import "
                                              r"module 'mypkg.tasks'.*--allow-import mypkg"
                       ) as err:
        check_import("mypkg.tasks:make", ("other",), field="tasks[0]")
    assert err.value.field == "tasks[0]"
    # the top-level package decides: a prefix of it does not
    with pytest.raises(ValidationError, match="'mypkgx' is not allowed"):
        check_import("mypkgx.tasks:make", ("mypkg",), field="tasks[0]")
    monkeypatch.setenv(ENV_VAR, " other , mypkg ")
    check_import("mypkg.tasks:make", (), field="tasks[0]")


@pytest.mark.parametrize("name", ["mypkg:", ":make", ".rel:make", "a b:c", "mypkg:a.b",
                                  "mypkg:make:x"])
def test_malformed_import_paths_are_refused(name: str) -> None:
    with pytest.raises(ValidationError, match="is not an import path"):
        check_import(name, ("mypkg",), field="tasks[0]")


def test_allow_list_parsing() -> None:
    assert allow_list(["a,b", "c", "a"]) == ("a", "b", "c")
    assert allow_list("a, b,") == ("a", "b")
    assert allow_list(None) == ()
    with pytest.raises(ValidationError, match=r"--allow-import: 'a.b' .* top-level package "
                                              r"'a'"):
        allow_list(["a.b"], field="--allow-import")
    with pytest.raises(ValidationError, match="'a-b' is not a top-level package name"):
        allow_list("a-b")


def test_env_var_is_checked_and_read_at_check_time(monkeypatch, marked: Marked) -> None:
    monkeypatch.setenv(ENV_VAR, "not a package")
    with pytest.raises(ValidationError, match=ENV_VAR):
        check_import(marked.task, (), field="tasks[0]")
    monkeypatch.setenv(ENV_VAR, marked.name)
    spec = StudySpec.from_mapping(_study(tasks=[marked.task]))
    assert spec.tasks == (marked.task,) and marked.marker.exists()


def test_load_attr_checks_before_importing(marked: Marked) -> None:
    with pytest.raises(ValidationError, match=f"'{marked.name}' is not allowed"):
        load_attr(marked.optimizer, (), field="optimizer")
    assert not marked.imported()
    import torch

    assert load_attr(marked.optimizer, (marked.name,)) is torch.optim.SGD
    assert marked.marker.exists()


# ----------------------------------------------------------------------------- study specs


@pytest.mark.parametrize("key", ["tasks", "optimizers"])
def test_study_refuses_a_module_not_allowed_before_importing_it(marked: Marked,
                                                                key: str) -> None:
    name = marked.task if key == "tasks" else marked.optimizer
    with pytest.raises(ValidationError, match=rf"{key}\[1\]: '{name}' would import") as err:
        StudySpec.from_mapping(_study(**{key: ["quadratic" if key == "tasks" else "sgd",
                                               name]}), source="s.toml")
    assert err.value.field == f"{key}[1]" and str(err.value).startswith("s.toml: ")
    assert not marked.imported()


def test_study_file_imports_only_allowed_packages(tmp_path: Path, marked: Marked) -> None:
    path = tmp_path / "user.toml"
    path.write_text(f'tasks = ["{marked.task}"]\noptimizers = ["{marked.optimizer}"]\n'
                    f'seeds = 1\nsteps = 20\n[task."{marked.task}"]\noptions = {{ angle = 10 }}\n')
    with pytest.raises(ValidationError, match="would import"):
        StudySpec.load(path)
    assert not marked.imported()
    spec = StudySpec.load(path, allow_import=[marked.name])
    assert marked.marker.exists()
    assert spec.tasks == (marked.task,) and spec.settings(marked.task).options == {"angle": 10}


def test_merged_with_checks_the_names_it_adds(marked: Marked) -> None:
    base = StudySpec.from_mapping(_study())
    with pytest.raises(ValidationError, match=r"tasks\[1\]: .* would import"):
        base.merged_with({"tasks": ["quadratic", marked.task]})
    assert not marked.imported()
    # a base that allowed a module keeps it without allowing it again
    allowed = StudySpec.from_mapping(_study(tasks=[marked.task]), allow_import=[marked.name])
    merged = allowed.merged_with({"seeds": 2})
    assert merged.tasks == (marked.task,) and merged.seeds == (0, 1)


def test_python_code_is_its_own_trust_boundary(marked: Marked) -> None:
    from optimlab.lab.tasks import make_task

    assert StudySpec(tasks=[marked.task], optimizers=["sgd"]).tasks == (marked.task,)
    assert marked.marker.exists()
    assert make_task(marked.task).info.name == "quadratic"


# ----------------------------------------------------------------- tune, lr-find, advise


def test_tuning_lr_finder_and_advisor_check_before_importing(marked: Marked) -> None:
    from optimlab.lab.advice import advise
    from optimlab.lab.lrfind import find_lr
    from optimlab.lab.tuning import TuneError, TuneSpec

    with pytest.raises(TuneError, match=r"tasks\[0\]: .* would import"):
        TuneSpec(tasks=[marked.task], optimizers=["sgd"], trials=8, allow_import=())
    with pytest.raises(TuneError, match=r"optimizers\[1\]: .* would import"):
        TuneSpec(tasks=["quadratic"], optimizers=["sgd", marked.optimizer], trials=8,
                 allow_import=["other"])
    with pytest.raises(ValidationError, match=r"task: .* would import"):
        find_lr(marked.task, "sgd", allow_import=())
    with pytest.raises(ValidationError, match=r"optimizer: .* would import"):
        find_lr("quadratic", marked.optimizer, allow_import=())
    with pytest.raises(ValidationError, match="would import"):
        advise(marked.task, optimizers=["sgd"], budget_minutes=0.1, allow_import=())
    assert not marked.imported()
    spec = TuneSpec(tasks=[marked.task], optimizers=["sgd"], trials=8,
                    allow_import=[marked.name])
    assert marked.marker.exists() and spec.allow_import == (marked.name,)


def test_cli_refuses_a_task_it_is_not_allowed_to_import(
        tmp_path: Path, marked: Marked, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "r.db"
    args = ["run", "--task", marked.task, "--optimizer", "sgd", "--steps", "20",
            "--store", f"sqlite:///{db}"]
    assert main(args) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("optimlab: error: optimlab run: tasks[0]: ")
    assert f"--allow-import {marked.name}" in err[0]
    assert not marked.imported() and not db.exists()
    # allowed: imported and run (the run's own outcome is not this test's business)
    main([*args, "--allow-import", f"other,{marked.name}"])
    assert "would import" not in capsys.readouterr().err
    assert marked.marker.exists() and db.exists()


@pytest.mark.slow
def test_cli_sys_exit_task_is_refused_in_a_subprocess(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    r = subprocess.run([sys.executable, "-m", "optimlab.cli", "run", "--task", "sys:exit",
                        "--optimizer", "sgd", "--store", f"sqlite:///{tmp_path / 'r.db'}"],
                       capture_output=True, text=True, check=False, env=env, timeout=300)
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("optimlab: error:")]
    assert len(errors) == 1 and "'sys:exit' would import module 'sys'" in errors[0]
    assert "Traceback" not in r.stderr and not (tmp_path / "r.db").exists()


# ----------------------------------------------------------------------------- the report


def _tampered_store(tmp_path: Path, marked: Marked) -> tuple[str, Path]:
    """A results database whose records name ``os:system`` (with a command that would write
    a marker) and the marker module, as 2-D tasks (so the report would want contours)."""
    from optimlab.lab.store import open_store

    record = execute(RunConfig("rosenbrock", "sgd", {"lr": 1e-3}, steps=30).resolved())
    shell_marker = tmp_path / "PWNED"
    tampered = []
    for i, (task, options) in enumerate([
            ("os:system", {"command": f"touch {shell_marker}"}),
            (marked.task, {}), ("rosenbrock", {})]):
        d = record.to_dict()
        d["config"]["task"] = task
        d["config"]["task_options"] = options
        d["key"] = f"tampered-{i}"
        d["label"] = f"sgd {i}"
        tampered.append(RunRecord.from_dict(d))
    url = f"sqlite:///{tmp_path / 'tampered.db'}"
    with open_store(url) as store:
        for r in tampered:
            store.put_run(r)
        # a tuning's storage that the report would open (and, as SQLite, create)
        elsewhere = f"sqlite:///{tmp_path / 'elsewhere.db'}"
        store.save_study("tampered", {"name": "tampered", "tasks": ["os:system"],
                                      "optimizers": ["sgd"],
                                      "tuning": {"name": "t", "storage": elsewhere}},
                         [(r.key, r.label) for r in tampered])
    return url, shell_marker


def test_report_of_a_tampered_database_imports_and_calls_nothing(tmp_path: Path,
                                                                 marked: Marked) -> None:
    from optimlab.lab.report import write_report
    from optimlab.lab.store import open_store

    url, shell_marker = _tampered_store(tmp_path, marked)
    with open_store(url) as store:
        records, spec = store.study_records("tampered"), store.study_spec("tampered")
    page = write_report(records, tmp_path / "report", study=spec).read_text(encoding="utf-8")
    assert "os:system" in page and marked.task in page and "rosenbrock" in page
    assert "never imports a task a record names" in page  # the user tasks: no contours
    assert "contours of f − f*" in page  # the built-in rosenbrock: contours
    assert not shell_marker.exists() and not marked.imported()


def test_report_follows_no_storage_url_named_in_a_database(tmp_path: Path,
                                                           marked: Marked) -> None:
    from optimlab.lab.store import open_store
    from optimlab.lab.tune import tuning_for_study

    url, _ = _tampered_store(tmp_path, marked)
    with open_store(url) as store:
        assert tuning_for_study(store, "tampered") is None
    assert not (tmp_path / "elsewhere.db").exists()


@pytest.mark.slow
def test_cli_report_of_a_tampered_database_in_a_subprocess(tmp_path: Path,
                                                           marked: Marked) -> None:
    url, shell_marker = _tampered_store(tmp_path, marked)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    env[ENV_VAR] = marked.name  # even allowed, a name read from a database is not imported
    r = subprocess.run([sys.executable, "-m", "optimlab.cli", "report", "--study", "tampered",
                        "--store", url, "--out", str(tmp_path / "out")], capture_output=True,
                       text=True, check=False, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "index.html").exists()
    assert not shell_marker.exists() and not marked.marker.exists()
    assert not (tmp_path / "elsewhere.db").exists()


# ----------------------------------------------------------------------------- CIFAR-10 pickles


class _Shell:
    """Unpickles as ``os.system(command)``."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _cifar(tmp_path: Path) -> Path:
    from test_tasks_presets import write_cifar

    root = tmp_path / "cifar"
    write_cifar(root)
    return root


@pytest.mark.parametrize("payload", ["shell", "eval", "nested"])
def test_cifar_loader_refuses_a_crafted_pickle(tmp_path: Path, payload: str) -> None:
    from optimlab.lab.tasks.cifar import load_cifar10

    root = _cifar(tmp_path)
    marker = tmp_path / "PWNED"
    evil = {"shell": _Shell(f"touch {marker}"),
            "eval": _Eval(f"open({str(marker)!r}, 'w').write('x')"),
            "nested": {b"data": np.zeros((2, 3072), np.uint8),
                       b"labels": [_Shell(f"touch {marker}"), 0]}}[payload]
    with open(root / "data_batch_3", "wb") as f:
        pickle.dump(evil, f, protocol=2)
    refused = r"(posix|os|nt|builtins|__builtin__)\.(system|eval)"
    with pytest.raises(ValueError, match=r"CIFAR-10 batch '.*data_batch_3' refers to the "
                                         rf"global {refused}"):
        load_cifar10(root)
    assert not marker.exists()


class _Eval:
    def __init__(self, source: str) -> None:
        self.source = source

    def __reduce__(self):
        return (eval, (self.source,))


def test_cifar_meta_file_goes_through_the_same_unpickler(tmp_path: Path) -> None:
    from optimlab.lab.tasks.cifar import load_cifar10

    root = _cifar(tmp_path)
    marker = tmp_path / "PWNED"
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [_Shell(f"touch {marker}")]}, f, protocol=2)
    with pytest.raises(ValueError, match=r"CIFAR-10 meta file .* refers to the global"):
        load_cifar10(root)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_cifar_batches_of_every_pickle_protocol_still_load(tmp_path: Path,
                                                           protocol: int) -> None:
    from optimlab.lab.tasks.cifar import load_cifar10

    root = _cifar(tmp_path)  # protocol 2, as the real files (and Python 3's _codecs bytes)
    data = np.arange(5 * 3072, dtype=np.int64).reshape(5, 3072).astype(np.uint8)
    with open(root / "test_batch", "wb") as f:
        pickle.dump({b"data": data, b"labels": [0, 1, 2, 3, 9]}, f, protocol=protocol)
    loaded = load_cifar10(root)
    np.testing.assert_array_equal(loaded["x_test"].reshape(5, 3072), data)
    assert loaded["y_test"].tolist() == [0, 1, 2, 3, 9]
    assert loaded["x_train"].shape[0] > 0


def test_cifar_numpy1_global_names_load(tmp_path: Path) -> None:
    """The real CIFAR-10 files were written by numpy 1 (``numpy.core.multiarray``)."""
    from optimlab.lab.tasks.cifar import CifarUnpickler

    data = np.arange(3072, dtype=np.uint8).reshape(1, 3072)
    raw = pickle.dumps({b"data": data, b"labels": [3]}, protocol=2)
    assert b"numpy._core.multiarray\n_reconstruct" in raw
    raw = raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    loaded = CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    np.testing.assert_array_equal(loaded[b"data"], data)


def test_codecs_encode_is_admitted_for_latin1_only() -> None:
    from optimlab.lab.tasks.cifar import CifarUnpickler

    # GLOBAL _codecs.encode, then ("x", "rot13") and REDUCE: protocol 0 by hand
    raw = b"c_codecs\nencode\n(Vx\nVrot13\ntR."
    with pytest.raises(pickle.UnpicklingError, match="latin-1"):
        CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    ok = b"c_codecs\nencode\n(Vx\nVlatin1\ntR."
    assert CifarUnpickler(io.BytesIO(ok), encoding="bytes").load() == b"x"
