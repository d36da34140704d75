"""``optimlab run`` under ``torchrun --nproc-per-node 2``: one run trained with DDP on CPU.

The record rank 0 stores must be the single-process run's with the same global batch, up to
the order of the float32 sums over the batch (:mod:`optimlab.lab.distributed`: each process
averages its half, then the halves are averaged). Tolerances, for SGD at lr 0.1, batch 64,
``STEPS`` = 6 steps, one thread per process in both runs (u = 2**-24 ~ 6e-8):

* A mini-batch loss is a mean of 64 positive cross-entropies: two summation orders differ by
  at most ``2 * 63 * u`` ~ 7.5e-6 relative at equal weights. Each step's gradient entries
  differ likewise relative to the sum of the absolute per-example terms, so each step moves the
  weights by an extra ``lr * (that)``, which changes the later losses by at most the same
  relative order again (SGD with this lr decreases the loss: the step is inside the region
  where the loss's change is first order). Adding both per step over the 6 steps:
  ``6 * 2 * 7.5e-6 = 9e-5``; bound ``LOSS_RTOL = 1e-4`` on every loss in the record (the
  training curve, the evaluated losses).
* An accuracy changes only when a prediction's top two logits are within that relative
  distance: at most one example of a split flips in 6 steps here, so accuracies may differ by
  one example of the smallest split (the digits' validation split: 359 examples).

Everything else that is not a timing (steps, examples, gradient evaluations, the config and
its key, the status) must be equal.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest

STEPS = 6
LOSS_RTOL = 1e-4
ACCURACY_ATOL = 1 / 359
#: The generalization gap is test loss - train loss, each below 3 here (ln 10 ~ 2.3 at chance).
GAP_ATOL = 2 * 3 * LOSS_RTOL
TIMEOUT_S = 300
RUN = ["run", "--task", "mlp-digits", "--optimizer", "sgd", "--lr", "0.1", "--batch-size",
       "64", "--steps", str(STEPS), "--seed", "0"]
TIMINGS = {"curve.time", "evals.time", "train_seconds", "warmup_seconds", "seconds_per_step",
           "wall_seconds", "peak_memory_bytes", "time_to_target", "memory_kind"}


def _optimlab(args: list[str], store: Path, torchrun: bool) -> subprocess.CompletedProcess[str]:
    """``optimlab ARGS --store sqlite:///STORE``, alone or under ``torchrun`` with two
    processes; the whole process group is killed if it outlives ``TIMEOUT_S``."""
    cmd = [sys.executable, "-m", "optimlab.cli", *args, "--store", f"sqlite:///{store}"]
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", *cmd[1:]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=store.parent, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its workers
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} hung:\n{err[-3000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in record.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _close(key: str, a: Any, b: Any) -> bool:
    """Whether the record's field ``key`` agrees (module docstring)."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(key, x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        if "accuracy" in key:
            return abs(a - b) <= ACCURACY_ATOL
        if key.endswith("gap"):
            return abs(a - b) <= GAP_ATOL
        if "loss" in key:
            return abs(a - b) <= LOSS_RTOL * abs(b)
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


@pytest.mark.slow
def test_torchrun_run_equals_single_process(tmp_path: Path) -> None:
    alone = _optimlab([*RUN, "--json"], tmp_path / "single.db", torchrun=False)
    assert alone.returncode == 0, alone.stderr[-3000:]
    both = _optimlab([*RUN, "--json"], tmp_path / "ddp.db", torchrun=True)
    assert both.returncode == 0, both.stderr[-3000:]
    a, b = json.loads(both.stdout), json.loads(alone.stdout)  # rank 0 alone prints
    assert a["status"] == "ok" and a["steps_done"] == STEPS
    fa, fb = _flatten(a), _flatten(b)
    assert fa.keys() == fb.keys()
    for key in fa:
        if key in TIMINGS or key.startswith("series."):
            continue  # series: the loss noise is a difference of nearly equal losses
        assert _close(key, fa[key], fb[key]), (key, fa[key], fb[key])


@pytest.mark.slow
def test_torchrun_refuses_a_batch_smaller_than_the_world(tmp_path: Path) -> None:
    run = [*RUN[:RUN.index("--batch-size")], "--batch-size", "1", "--steps", "2"]
    both = _optimlab(run, tmp_path / "ddp.db", torchrun=True)
    # rank 0 exits with 3 (a failed run, stored with its error); torchrun then exits with 1
    assert both.returncode == 1 and "exitcode  : 3" in both.stderr, both.stderr[-3000:]
    assert "a batch of 1 examples cannot be shared by 2 processes" in both.stderr
    assert "/optimlab/" not in both.stderr  # no traceback of ours (torchrun prints its own)


def test_each_process_takes_its_share_of_the_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """:func:`shard_loss` on rank ``r`` of 2: the contiguous share of the batch, its loss
    weighted so that the ranks' average gradient is the whole batch's mean (an uneven batch
    of 5: shares of 2 and 3, weights 2 * 2 / 5 and 3 * 2 / 5)."""
    import torch

    from optimlab.lab import distributed

    class Task:
        seen: ClassVar[list[Any]] = []

        def loss(self, batch: Any) -> torch.Tensor:
            self.seen.append(batch)
            return batch[1].float().mean()

    x, y = torch.arange(10.0).view(5, 2), torch.arange(5)
    losses = []
    for rank in range(2):
        monkeypatch.setattr(distributed, "_session",
                            distributed.Session(rank=rank, world=2, device=torch.device("cpu")))
        losses.append(distributed.shard_loss(Task(), (x, y)))
    first, second = Task.seen
    assert torch.equal(first[0], x[:2]) and torch.equal(second[1], y[2:])
    assert isinstance(first, tuple)
    mean = (losses[0] + losses[1]) / 2  # DDP's average
    assert torch.allclose(mean, y.float().mean(), rtol=0, atol=1e-6)  # a few float32 ulps of 2
