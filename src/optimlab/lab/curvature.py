"""The sharpness a run records at its end (``RunConfig.sharpness``).

At the final parameters of a run that ended ok, on the task's training objective
``task.full_loss()`` (all training data, or the task's fixed evaluation subset, as the task
defines it; the model is put in eval mode where the task's loss does not choose a mode itself,
and batch-norm running statistics are left as they were), :func:`optimlab.sharpness.sharpness`
computes from Hessian-vector products only:

- the top Hessian eigenvalue ``lambda_max`` by Lanczos (stopping when the Ritz residual is below
  ``TOL * |lambda|`` or after ``MAX_ITER`` products), recorded as ``sharpness_lambda_max``,
  with ``sharpness_converged`` (1 or 0);
- the same for the adaptive operator ``diag(|w|) H diag(|w|)`` (Kwon et al. 2021), which a
  rescaling of a ReLU network's layers leaves unchanged (plain ``lambda_max`` is not
  reparameterization-invariant: Dinh et al. 2017), as ``sharpness_adaptive_lambda_max``;
- the Hessian trace by Hutchinson's estimator with ``PROBES`` Rademacher probes, recorded as
  ``sharpness_trace`` with its standard error ``sharpness_trace_stderr``;
- the products used, ``sharpness_hvps`` (measurement, not training work: not charged to the
  run's gradient evaluations).

The probes and start vectors are drawn from a generator seeded with the run's seed, so a run's
record is reproducible. A measurement that fails (e.g. a non-finite Hessian-vector product)
records NaN values rather than losing the run.
"""

from __future__ import annotations

import math

import torch

from ..sam import frozen_running_stats
from .tasks import Task

__all__ = ["MAX_ITER", "PROBES", "TOL", "measure_sharpness"]

#: Lanczos iterations at most (one Hessian-vector product each).
MAX_ITER = 100
#: Relative residual at which the top eigenvalue counts as converged.
TOL = 1e-3
#: Hutchinson probes: the estimate's relative standard error is about
#: ``sqrt(2 * sum_{i != j} H_ij^2) / (trace * sqrt(PROBES))``; it is recorded beside it.
PROBES = 32

_FAILED = {"sharpness_lambda_max": math.nan, "sharpness_adaptive_lambda_max": math.nan,
           "sharpness_trace": math.nan, "sharpness_trace_stderr": math.nan,
           "sharpness_converged": 0.0, "sharpness_hvps": 0.0}


def measure_sharpness(task: Task, seed: int) -> dict[str, float]:
    """The sharpness scalars of ``task``'s current parameters (see the module docstring)."""
    from ..sharpness import sharpness

    model = getattr(task, "model", None)
    subject = model if isinstance(model, torch.nn.Module) else task.parameters()

    def measure(adaptive: bool, probes: int):
        return sharpness(subject, lambda _batch: task.full_loss(), [None], k=1,
                         method="lanczos", max_iter=MAX_ITER, tol=TOL, probes=probes,
                         adaptive=adaptive, examples=lambda _batch: int(task.n_train),
                         generator=torch.Generator().manual_seed(int(seed)))

    try:  # the measurement is optional: nothing it raises may lose the finished run
        with frozen_running_stats(model if isinstance(model, torch.nn.Module) else None):
            plain = measure(False, PROBES)
            adaptive = measure(True, 0)
    except Exception:
        return dict(_FAILED)
    trace = plain.trace
    return {"sharpness_lambda_max": float(plain.top_eigenvalue),
            "sharpness_adaptive_lambda_max": float(adaptive.top_eigenvalue),
            "sharpness_trace": float(trace.estimate) if trace is not None else math.nan,
            "sharpness_trace_stderr": float(trace.stderr) if trace is not None else math.nan,
            "sharpness_converged": float(plain.eigen.converged and adaptive.eigen.converged),
            "sharpness_hvps": float(plain.hvps + adaptive.hvps)}
