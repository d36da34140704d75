"""The Ray executor on a local Ray instance (2 CPUs): a study's records equal the local
executor's for the same seeds (timings aside), an item's error stays itself, a dead worker is
``WorkerDied``, ``abort()`` cancels. Skips without Ray unless ``OPTIMLAB_REQUIRE_RAY=1``."""

from __future__ import annotations

import concurrent.futures as cf
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from labutil import stable

from optimlab.lab.execution import InlineExecutor
from optimlab.lab.pool import WorkerDied
from optimlab.lab.spec import StudySpec
from optimlab.lab.store import open_store
from optimlab.lab.study import run_study

REQUIRE = os.environ.get("OPTIMLAB_REQUIRE_RAY") == "1"


@pytest.fixture(scope="module")
def ray_executor() -> Iterator[Any]:
    try:
        import ray  # noqa: F401
    except ImportError:
        reason = "Ray is not installed (pip install 'optimlab[distributed]')"
        if REQUIRE:
            pytest.fail(f"{reason} (OPTIMLAB_REQUIRE_RAY=1)")
        pytest.skip(reason)
    from optimlab.lab.executor_ray import RayExecutor

    executor = RayExecutor(num_cpus=2)  # a local instance, started and stopped here
    try:
        yield executor
    finally:
        executor.close()


@pytest.mark.slow
def test_a_study_on_ray_gives_the_local_executors_records(ray_executor: Any, tmp_path: Path
                                                          ) -> None:
    assert ray_executor.slots == 2  # the local instance's CPUs, one thread per task
    spec = StudySpec.from_mapping({"name": "r", "tasks": ["quadratic"],
                                   "optimizers": ["sgd", "adam"], "seeds": 4, "steps": 30,
                                   "batch_size": [8]})
    by: dict[str, list[dict[str, Any]]] = {}
    for name, executor, population in (("local", InlineExecutor(), "auto"),
                                       ("ray", ray_executor, "auto"),
                                       ("ray-alone", ray_executor, "off")):
        with open_store(tmp_path / f"{name}.db") as store:
            out = run_study(spec, store, executor=executor, population=population)
            assert out.executed == 8
            by[name] = [stable(r) for r in store.study_records("r")]
    # bit-equal: the same program, seeds and thread count (1) run in another process
    assert by["ray"] == by["local"] == by["ray-alone"]


@pytest.mark.slow
def test_errors_deaths_and_abort_map_onto_the_runner_loops(ray_executor: Any) -> None:
    # local functions: Ray pickles them by value (the workers cannot import this module)
    def _raise(item: Any) -> Any:
        raise ValueError(f"bad item {item}")

    def _die(item: Any) -> Any:
        os._exit(3)

    def _sleep(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    error = ray_executor.submit(_raise, 7).exception(timeout=120)
    assert isinstance(error, ValueError) and str(error) == "bad item 7"
    died = ray_executor.submit(_die, 0).exception(timeout=120)
    assert isinstance(died, WorkerDied) and "Ray worker died" in str(died)
    slow = ray_executor.submit(_sleep, 60.0)
    time.sleep(1.0)
    ray_executor.abort()
    with pytest.raises(cf.CancelledError):
        slow.result(timeout=60)
    assert ray_executor.submit(_sleep, 0.0).result(timeout=120) == 0.0  # still usable


def test_bad_executor_options_are_one_line() -> None:
    done = subprocess.run([sys.executable, "-m", "optimlab.cli", "compare", "--address",
                           "auto", "--tasks", "quadratic"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--address names a Ray cluster; give it with --executor ray" in done.stderr


def test_missing_ray_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from optimlab.lab.executor_ray import RayError, RayExecutor

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(RayError, match=r"pip install 'optimlab\[distributed\]'"):
        RayExecutor()
