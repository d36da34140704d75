"""Loss landscapes of trained runs: ``optimlab landscape``.

Each configuration is trained as a lab run (:func:`optimlab.lab.runs.execute_with_task`), and
at the final parameters of each:

- a 2-D slice of the training objective ``task.full_loss()`` (batch-norm running statistics
  left as they were) along two filter-normalized random
  directions (Li et al. 2018; :func:`optimlab.landscape.slice_2d`), on a ``resolution x
  resolution`` grid over ``[-span, span]^2``, the directions drawn from a generator seeded with
  ``seed`` (the same draw for every run, each normalized to its own solution);
- between consecutive solutions (first and second, second and third, ...), the 1-D linear
  interpolation ``(1 - alpha) w_a + alpha w_b`` for ``alpha`` in ``[-0.5, 1.5]`` (the training
  objective, and the test loss where the task has one: :func:`optimlab.landscape.interpolate`).
  Solutions of different optimizers from the same initialization (same seed) are connected
  by a barrier-free line when they lie in one basin.

The data (``landscape.json``) and the plots (SVG) are written to the output folder, with an
``index.html`` that shows them; nothing is stored in the results database.
"""

from __future__ import annotations

import html
import itertools
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..sam import frozen_running_stats
from .runs import execute_with_task
from .schema import RunConfig, json_safe
from .tasks import Task

__all__ = ["ALPHAS", "landscapes"]

#: Interpolation coefficients: the segment between two solutions and half its length beyond.
ALPHAS = [i / 20 for i in range(-10, 31)]


def _params(task: Task) -> list[torch.Tensor]:
    return [p.detach().clone() for p in task.parameters()]


def _test_loss(task: Task) -> Callable[[], float] | None:
    metrics = task.evaluate()
    if "test_loss" not in metrics:
        return None
    return lambda: float(task.evaluate()["test_loss"])


def _module(task: Task) -> torch.nn.Module | None:
    model = getattr(task, "model", None)
    return model if isinstance(model, torch.nn.Module) else None


def _slug(name: str) -> str:
    """``name`` as a file-name part (an import path's ``:`` and ``.`` would not do in a link)."""
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in name).strip("-") or "opt"


def _label(config: RunConfig) -> str:
    hp = ", ".join(f"{k}={v}" for k, v in sorted(config.hyperparams.items()) if k == "lr")
    return f"{config.optimizer} ({hp})" if hp else config.optimizer


def landscapes(configs: Sequence[RunConfig], out_dir: str | Path, *, resolution: int = 21,
               span: float = 1.0, seed: int = 0,
               progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train ``configs`` (same task), draw their landscapes into ``out_dir`` and return the
    data written to ``landscape.json`` (see the module docstring).

    Raises:
        ValueError: no configs, configs on different tasks or task options, a run that did
            not end ok (its error is quoted), or a bad ``resolution`` / ``span``.
    """
    from ..landscape import interpolate, slice_2d

    if not configs:
        raise ValueError("landscape: give at least one optimizer")
    if len({(c.task, json.dumps(json_safe(dict(c.task_options)), sort_keys=True))
            for c in configs}) != 1:
        raise ValueError("landscape: every run must be on the same task with the same options")
    if isinstance(resolution, bool) or not isinstance(resolution, int) or not 3 <= resolution \
            <= 101:
        raise ValueError(f"resolution must be an integer in [3, 101], got {resolution!r}")
    if not (isinstance(span, (int, float)) and math.isfinite(span) and span > 0):
        raise ValueError(f"span must be a positive number, got {span!r}")
    say = progress or (lambda _msg: None)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"landscape: cannot create the output folder {out}: "
                         f"{e.strerror or e}") from None
    trained: list[tuple[RunConfig, Task, list[torch.Tensor]]] = []
    for config in configs:
        say(f"training {config.optimizer} on {config.task} (seed {config.seed})")
        record, task = execute_with_task(config)
        if record.status != "ok" or task is None:
            raise ValueError(f"landscape: the run of {config.optimizer} on {config.task} ended "
                             f"{record.status}: {record.error}")
        trained.append((record.config, task, _params(task)))

    grid = [-span + 2 * span * i / (resolution - 1) for i in range(resolution)]
    data: dict[str, Any] = {"task": configs[0].task, "span": span, "resolution": resolution,
                            "seed": seed, "slices": [], "interpolations": []}
    files: list[tuple[str, str]] = []
    for i, (config, task, _) in enumerate(trained):
        say(f"2-D slice around the {config.optimizer} solution ({resolution}x{resolution})")
        params = task.parameters()
        # Filter normalization leaves 1-D parameters (biases) out of the directions; a model of
        # vectors only (the 2-D functions, a linear model's bias-free view) keeps them.
        with frozen_running_stats(_module(task)):
            sl = slice_2d(_module(task) or params, task.full_loss, grid, grid,
                          generator=torch.Generator().manual_seed(seed),
                          include_1d=all(p.dim() <= 1 for p in params))
        name = f"slice-{i}-{_slug(config.optimizer)}.svg"
        sl.plot(path=out / name)
        files.append((name, f"Training loss around the {_label(config)} solution: 2-D slice "
                            "along two filter-normalized random directions (Li et al. 2018)."))
        data["slices"].append({"optimizer": config.optimizer, "config": config.to_dict(),
                               **sl.to_dict()})
    for (ca, task, pa), (cb, _, pb) in itertools.pairwise(trained):
        say(f"interpolating {ca.optimizer} -> {cb.optimizer}")
        with frozen_running_stats(_module(task)):
            line = interpolate(_module(task) or task.parameters(), task.full_loss, pa, pb,
                               ALPHAS, metric=_test_loss(task))
        name = f"interpolation-{_slug(ca.optimizer)}-{_slug(cb.optimizer)}.svg"
        line.plot(path=out / name, metric_label="test loss")
        files.append((name, f"Linear interpolation from the {_label(ca)} solution (alpha = 0) "
                            f"to the {_label(cb)} solution (alpha = 1): training loss"
                            + (" and test loss" if line.metrics is not None else "") + "."))
        data["interpolations"].append({"from": ca.optimizer, "to": cb.optimizer,
                                       **line.to_dict()})
    (out / "landscape.json").write_text(json.dumps(json_safe(data), indent=1))
    figures = "".join(
        f'<figure><img src="{html.escape(n)}" alt="{html.escape(c)}">'
        f"<figcaption>{html.escape(c)}</figcaption></figure>" for n, c in files)
    (out / "index.html").write_text(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>Loss landscapes: {html.escape(configs[0].task)}</title>"
        "<style>body{font-family:sans-serif;max-width:1600px;margin:auto;padding:0 1rem}"
        ".figs{display:grid;grid-template-columns:repeat(auto-fill,minmax(440px,1fr));"
        "gap:1rem}figure{margin:0}img{width:100%}</style></head><body>"
        f"<h1>Loss landscapes: {html.escape(configs[0].task)}</h1>"
        f'<div class="figs">{figures}</div>'
        "<p>Data: <a href=\"landscape.json\">landscape.json</a></p></body></html>\n")
    return data
