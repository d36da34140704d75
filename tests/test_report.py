"""The study report: sections, figures, numbers, escaping and the machine-readable outputs.

Records are synthetic schema-2 :class:`RunRecord` objects (built by :func:`make_record` with
the runner's fields; the settled step is computed from the synthetic evaluations with the
runner's own :func:`~optimlab.lab.schema.settle`), so these tests need no runner and take a
few seconds. The statistics behind the tables are tested in ``test_report_stats.py``.
"""

from __future__ import annotations

import csv
import html
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from optimlab.lab.report import aggregate, summary_table, sweeps, swept_settings, write_report
from optimlab.lab.report.curves import trajectory_steps
from optimlab.lab.report.plots import MAX_DECADES, clamp, log_floor, wants_log
from optimlab.lab.schema import RunRecord, SchemaError, settle

EVIL = '<script>alert(1)</script> & "quotes"'
EVIL_TITLE = 'Report <script>alert("t")</script> & co'

NAN = float("nan")
TWO_D = ("rosenbrock", "quadratic")


def make_dict(task: str, label: str, optimizer: str, seed: int, *, lr: float = 0.01,
              batch_size: Any = "full", schedule: str = "constant", status: str = "ok",
              rate: float = 0.05, steps: int = 200, eval_every: int = 20,
              extra_hp: dict[str, Any] | None = None, error: str | None = None,
              task_options: dict[str, Any] | None = None, deterministic: bool = False,
              values: Callable[[int], float] | None = None,
              **overrides: Any) -> dict[str, Any]:
    """One synthetic run as a stored schema-2 dict.

    2-D tasks ("rosenbrock", "quadratic") get suboptimality ``5 exp(-rate step)`` at the
    evaluations (or ``values(step)``) and a trajectory; other tasks are "neural" with a
    train-loss target, val/test metrics, a mini-batch training curve and recorded series.
    ``overrides`` replace top-level fields or, as ``final_<name>``, single final metrics.
    """
    two_d = task in TWO_D
    target = 1e-6 if two_d else 0.1
    metric = "suboptimality" if two_d else "train_loss"
    dt = 0.002 * (1 + 0.1 * seed)
    eval_steps = list(range(0, steps + 1, eval_every))
    diverged_at = steps // 2 if status == "diverged" else None

    def value(step: int, f0: float, floor: float = 0.0) -> float:
        if diverged_at is not None and step > diverged_at:
            return NAN
        if values is not None and f0 == 5.0:
            return values(step)
        return f0 * math.exp(-rate * (1 + 0.05 * seed) * step) + floor

    if two_d:
        metrics = {"train_loss": [value(s, 5.0) for s in eval_steps],
                   "suboptimality": [value(s, 5.0) for s in eval_steps],
                   "distance_to_minimum": [value(s, 2.0) for s in eval_steps]}
    else:
        metrics = {"train_loss": [value(s, 2.3, 0.01) for s in eval_steps],
                   "val_loss": [value(s, 2.3, 0.08) for s in eval_steps],
                   "test_loss": [value(s, 2.3, 0.09) for s in eval_steps],
                   "test_accuracy": [1 - value(s, 0.9, 0.05) for s in eval_steps]}
    final = {k: v[-1] for k, v in metrics.items()}
    settled = settle(eval_steps, metrics[metric], target, ok=status == "ok")
    n_train = 1 if two_d else 1437
    per_step = n_train if batch_size == "full" else batch_size
    curve_steps = list(range(0, steps + 1, 5))
    start = (-1.5, 2.0) if task == "rosenbrock" else (2.0, 1.0)
    goal = (1.0, 1.0) if task == "rosenbrock" else (0.0, 0.0)
    trajectory = None
    if two_d:
        trajectory = []
        for s in range(0, steps + 1):
            w = 1 - math.exp(-rate * 3 * s)
            x = start[0] + (goal[0] - start[0]) * w
            y = start[1] + (goal[1] - start[1]) * w ** 2 + 0.3 * math.sin(w * 3) * (1 - w)
            if diverged_at is not None and s > diverged_at:
                x, y = NAN, NAN
            trajectory.append([x, y])
    series = {}
    if not two_d and status == "ok":
        g = [0.5 * math.exp(-rate * s) + 0.01 for s in eval_steps]
        u = [lr * gi for gi in g]
        series = {"grad_norm": {"step": eval_steps, "value": g},
                  "update_norm": {"step": eval_steps, "value": u},
                  "effective_lr": {"step": eval_steps, "value": [a / b for a, b in zip(u, g)]},
                  "param_norm": {"step": eval_steps, "value": [3 + 0.01 * s for s in eval_steps]},
                  "loss_noise": {"step": eval_steps, "value": [0.1 * gi for gi in g]}}
    hp = {"lr": lr, "weight_decay": 0.0, **(extra_hp or {})}
    at = settled.index
    rec: dict[str, Any] = {
        "schema": 2,
        "key": f"{task}-{label}-{seed}".replace(" ", "_"),
        "label": label,
        "config": {"task": task, "task_options": task_options or {}, "optimizer": optimizer,
                   "hyperparams": hp, "schedule": schedule, "batch_size": batch_size,
                   "seed": seed, "steps": steps, "eval_every": eval_every},
        "status": status,
        "error": error,
        "task_info": {"name": task, "kind": "2d" if two_d else "neural",
                      "description": f"synthetic {task}", "target": target,
                      "target_metric": metric, "n_train": n_train, "options": {},
                      "deterministic": deterministic},
        "curve": {"step": curve_steps, "time": [s * dt for s in curve_steps],
                  "train_loss": [value(s, 2.3 if not two_d else 5.0, 0.01 * (not two_d))
                                 * (1.1 if s % 10 else 0.9) for s in curve_steps]},
        "evals": {"step": eval_steps, "time": [s * dt for s in eval_steps],
                  "grad_evals": eval_steps, "examples": [s * per_step for s in eval_steps],
                  "metrics": metrics},
        "final": final,
        "steps_to_target": settled.step,
        "target_resolution": settled.resolution,
        "first_crossing": settled.first_crossing,
        "grad_evals_to_target": settled.step,
        "examples_to_target": None if at is None else eval_steps[at] * per_step,
        "time_to_target": None if at is None else eval_steps[at] * dt,
        "reached": at is not None,
        "generalization_gap": (None if two_d or status != "ok"
                               else final["test_loss"] - final["train_loss"]),
        "steps_done": steps, "grad_evals": steps, "examples": steps * per_step,
        "train_seconds": steps * dt, "warmup_seconds": 5 * dt, "seconds_per_step": dt,
        "wall_seconds": steps * dt * 1.2,
        "peak_memory_bytes": None, "memory_kind": "none",
        "state_bytes": {"sgd": 0, "adam": 16}.get(optimizer, 8) * (2 if two_d else 1000),
        "n_params": 2 if two_d else 1000, "param_bytes": 16 if two_d else 4000,
        "trajectory": trajectory,
        "lr": {"step": list(range(0, steps + 1, 10)),
               "value": [lr * (0.5 * (1 + math.cos(math.pi * s / steps))
                               if schedule == "cosine" else 1.0)
                         for s in range(0, steps + 1, 10)]},
        "series": series,
        "scalars": {"closure_evals": steps},
        "telemetry": None,
    }
    if status == "failed":
        rec.update(curve={"step": [], "time": [], "train_loss": []},
                   evals={"step": [], "time": [], "grad_evals": [], "examples": [],
                          "metrics": {}},
                   final={}, trajectory=None, lr={"step": [], "value": []}, state_bytes=0,
                   steps_done=0, grad_evals=0, examples=0, series={})
    for k, v in overrides.items():
        if k.startswith("final_"):
            rec["final"][k[len("final_"):]] = v
        else:
            rec[k] = v
    return rec


def make_record(*args: Any, **kwargs: Any) -> RunRecord:
    """:func:`make_dict` read back as a :class:`RunRecord` (as the store does)."""
    return RunRecord.from_dict(make_dict(*args, **kwargs))


#: The oscillating arm on the quadratic: below the target at step 40, above it from 60 to
#: 120, settled from 140 on.
OSCILLATING = dict(zip(range(0, 201, 20), (5.0, 0.3, 8e-7, 4e-5, 6e-6, 2e-6, 1.5e-6, 9e-7,
                                           3e-7, 1e-7, 4e-8)))


def oscillating(step: int) -> float:
    """:data:`OSCILLATING` at the evaluations, log-linear in between (the training curve)."""
    xs = list(OSCILLATING)
    return float(10 ** np.interp(step, xs, [math.log10(v) for v in OSCILLATING.values()]))


def make_records() -> list[RunRecord]:
    """Three tasks and 21 arms:

    * rosenbrock (2-D, two seeds): an lr sweep of SGD (lr=0.1 diverges on seed 1), Adam with
      a cosine schedule and an arm with a malicious label;
    * quadratic (2-D, deterministic: one seed): momentum, which crosses the target at step 40,
      climbs back and settles at 140; Nesterov, settled at 140 too (tied); Adam, whose final
      suboptimality rounds to -1.6e-17; a momentum sweep of SGD whose best value (0.99) is
      the grid's edge;
    * mlp-digits (neural, three seeds): Adam, SGD (seed 2 failed), a batch-size sweep of Adam
      (hand-made numbers for ``adam bs=32``), a weight-decay sweep of AdamW, and held-out
      re-runs ``"<optimizer> best"`` of the best configuration of each optimizer on seeds
      3, 4 and 5.
    """
    recs = []
    for seed in (0, 1):
        for lr, rate in ((0.001, 0.01), (0.01, 0.06), (0.1, 0.12)):
            status = "diverged" if lr == 0.1 and seed == 1 else "ok"
            recs.append(make_dict("rosenbrock", f"sgd lr={lr:g}", "sgd", seed, lr=lr,
                                  rate=rate, status=status))
        recs.append(make_dict("rosenbrock", "adam", "adam", seed, lr=0.01, rate=0.09,
                              schedule="cosine"))
        recs.append(make_dict("rosenbrock", EVIL, "adam", seed, lr=0.02, rate=0.07,
                              extra_hp={"note": EVIL}))
    quad = {"deterministic": True}
    recs.append(make_dict("quadratic", "momentum", "momentum", 0, extra_hp={"momentum": 0.9},
                          values=oscillating, **quad))
    recs.append(make_dict("quadratic", "nesterov", "nesterov", 0, rate=0.12, **quad))
    adam = make_dict("quadratic", "adam", "adam", 0, rate=0.2, schedule="cosine", **quad)
    adam["evals"]["metrics"]["suboptimality"][-1] = -1.6e-17
    adam["final"]["suboptimality"] = -1.6e-17
    recs.append(adam)
    for mom, rate in ((0.5, 0.05), (0.9, 0.09), (0.99, 0.15)):
        recs.append(make_dict("quadratic", f"sgd momentum={mom:g}", "sgd", 0,
                              extra_hp={"momentum": mom}, rate=rate, **quad))
    for seed in (0, 1, 2):
        recs.append(make_dict("mlp-digits", "adam", "adam", seed, lr=0.01, rate=0.03,
                              schedule="cosine"))
        recs.append(make_dict("mlp-digits", "sgd lr=0.01", "sgd", seed, lr=0.01, rate=0.01,
                              status="failed" if seed == 2 else "ok",
                              error="RuntimeError: <boom> & bust" if seed == 2 else None))
        for bs, rate in ((32, 0.02), (128, 0.04)):
            recs.append(make_dict("mlp-digits", f"adam bs={bs}", "adam", seed, lr=0.01,
                                  rate=rate, batch_size=bs, schedule="cosine"))
        for wd, rate in ((0.0, 0.03), (0.01, 0.04), (0.1, 0.02)):
            recs.append(make_dict("mlp-digits", f"adamw wd={wd:g}", "adamw", seed, lr=0.01,
                                  rate=rate, extra_hp={"weight_decay": wd}))
    for seed in (3, 4, 5):
        recs.append(make_dict("mlp-digits", "adam best", "adam", seed, lr=0.01, rate=0.04,
                              batch_size=128, schedule="cosine"))
        recs.append(make_dict("mlp-digits", "sgd best", "sgd", seed, lr=0.01, rate=0.012))
        recs.append(make_dict("mlp-digits", "adamw best", "adamw", seed, lr=0.01, rate=0.038,
                              extra_hp={"weight_decay": 0.01}))
    # hand-made numbers for "adam bs=32" on mlp-digits
    hand = {0: (0.90, 100), 1: (0.92, 200), 2: (0.94, None)}
    for rec in recs:
        if rec["label"] == "adam bs=32":
            acc, settled = hand[rec["config"]["seed"]]
            rec["final"]["test_accuracy"] = acc
            rec.update(steps_to_target=settled, grad_evals_to_target=settled,
                       time_to_target=None if settled is None else settled * 1e-3,
                       reached=settled is not None)
    # the diverged run: NaN / inf final metrics
    for rec in recs:
        if rec["status"] == "diverged":
            rec["final"] = {"train_loss": NAN, "suboptimality": math.inf,
                            "distance_to_minimum": NAN}
    return [RunRecord.from_dict(r) for r in recs]


STUDY = {"name": "synthetic <study>", "tasks": ["rosenbrock", "quadratic", "mlp-digits"],
         "optimizers": ["sgd", "adam"], "seeds": [0, 1, 2], "rank_by": "work",
         "heldout_seeds": 3, "hyperparams": {"sgd": {"lr": [0.001, 0.01, 0.1]}}}
ENV = {"python": "3.12.0", "torch": "2.4.0", "numpy": "2.0.0", "platform": "Linux <x86_64>",
       "cpu": "test cpu", "optimlab": "0.1.0"}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, list[str]]:
    out = tmp_path_factory.mktemp("report")
    messages: list[str] = []
    index = write_report(make_records(), out, title=EVIL_TITLE, study=STUDY, environment=ENV,
                         progress=messages.append)
    return index, index.read_text(encoding="utf-8"), messages


def _plots(page: str) -> list[str]:
    return re.findall(r'<figure class="plot[^"]*" data-plot="([^"]+)"', page)


def _section(page: str, anchor: str) -> str:
    start = page.index(f'id="{anchor}"')
    end = page.find("</section>", start)
    return page[start:end]


def _row(section: str, arm: str) -> list[str]:
    """The cells of the table row whose arm cell ends with ``arm`` (tags stripped)."""
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", section, flags=re.S):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row, flags=re.S)
        if cells and re.sub(r"\s*<span class=\"tag.*", "", cells[0]).endswith(
                html.escape(arm)):
            return [re.sub(r"<[^>]+>", "", c) for c in cells]
    raise AssertionError(f"no row for {arm!r}")


def test_files_and_progress(report: tuple[Path, str, list[str]]) -> None:
    index, page, messages = report
    assert index.name == "index.html"
    for name in ("index.html", "summary.md", "results.csv", "results.json"):
        assert (index.parent / name).stat().st_size > 0
    # each file is written whole (a temporary file renamed): none is left behind
    assert sorted(p.name for p in index.parent.iterdir()) == [
        "index.html", "results.csv", "results.json", "summary.md"]
    assert (index.parent / "results.csv").read_bytes().count(b"\r\n") >= 2  # csv's own line ends
    assert messages[0] == "overview"
    for expected in ("task rosenbrock", "task quadratic", "task mlp-digits", "memory",
                     "schedules", "environment", "batch size", "sensitivity",
                     "best per optimizer"):
        assert expected in messages
    assert page.startswith("<!DOCTYPE html>")


def test_sections_and_figures(report: tuple[Path, str, list[str]]) -> None:
    _, page, _ = report
    for anchor in ("overview", "best", "task-1", "task-2", "task-3", "sensitivity",
                   "batch-size", "memory", "schedules", "environment"):
        assert f'id="{anchor}"' in page
        assert f'href="#{anchor}"' in page  # table of contents
    # the ranking's definition comes first, before any section
    assert page.index('id="ranking-definition"') < page.index('id="overview"')
    assert "gradient evaluations to target" in page and "settled" in page
    plots = _plots(page)
    counts = {k: plots.count(k) for k in set(plots)}
    assert counts == {"profile-work": 1, "profile-time": 1, "loss-steps": 3, "loss-time": 3,
                      "task-work": 3, "metric": 3, "trajectories": 2, "series": 1,
                      "best-work": 3, "best-curves": 3, "sensitivity": 3, "batch-steps": 1,
                      "batch-examples": 1, "batch-time": 1, "batch-gap": 1, "memory": 1,
                      "schedules": 1}, counts
    n = int(re.search(r'id="figure-count" data-figures="(\d+)"', page).group(1))
    assert n == len(plots) == page.count("<svg") - page.count('class="swatch"')
    for fig in re.findall(r'<figure class="plot.*?</figure>', page, flags=re.S):
        assert "<svg" in fig and "<figcaption>" in fig
    traj = re.findall(r'data-plot="trajectories".*?</figure>', page, flags=re.S)
    assert all("contours of f" in t for t in traj)  # rebuilt from the task registry
    assert "http://" not in page.replace("http://www.w3.org", "")
    assert "https://" not in page and "<script" not in page.lower()
    assert "<link" not in page and "@import" not in page


def test_no_empty_sections_and_no_raw_json(report: tuple[Path, str, list[str]]) -> None:
    _, page, _ = report
    sections = re.findall(r'<section class="part"[^>]*>(.*?)</section>', page, flags=re.S)
    assert len(sections) == page.count('<section class="part"') >= 9
    for body in sections:
        assert re.search(r"<(table|figure|details|ul)\b", body), body[:200]
    assert "<pre" not in page  # no JSON dump of the study or of configurations
    assert "{&quot;" not in page and '{"' not in re.sub(r"<svg.*?</svg>", "", page, flags=re.S)
    # configurations are behind a collapsible element (and exact in results.json)
    assert re.search(r"<details><summary>All runs \(\d+\) with their settings</summary>", page)
    assert "<details><summary>Study settings</summary>" in page


def test_escaping(report: tuple[Path, str, list[str]]) -> None:
    index, page, _ = report
    assert "<script>" not in page and "alert(1)</script>" not in page
    assert html.escape(EVIL) in page  # the label in tables (HTML) ...
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp;" in page  # ... and in SVG text
    assert f"<title>{html.escape(EVIL_TITLE)}</title>" in page
    assert "synthetic &lt;study&gt;" in page
    assert "RuntimeError: &lt;boom&gt; &amp; bust" in page
    md = (index.parent / "summary.md").read_text(encoding="utf-8")
    assert "<script>" not in md


def test_task_table_numbers(report: tuple[Path, str, list[str]]) -> None:
    _, page, _ = report
    cells = _row(_section(page, "task-3"), "adam bs=32")
    # test_accuracy 0.90, 0.92, 0.94: mean 0.92, t interval 0.92 -+ 4.303 * 0.02 / sqrt(3)
    # = [0.870, 0.970] (3 significant digits)
    assert "0.92 [0.87, 0.97]" in cells
    # settled at 100, 200 and never: the median 200 with order-statistic bounds, 2 of 3
    work = next(c for c in cells if "(2/3)" in c)
    assert work.startswith("200") and "inf)" in work
    stats = aggregate([r for r in make_records() if not r.label.endswith(" best")])
    s = stats[("mlp-digits", "adam bs=32")]
    assert s.final["test_accuracy"].mean == pytest.approx(0.92)
    assert (s.work_to_target.center, s.n_reached) == (200, 2)
    d = stats[("rosenbrock", "sgd lr=0.1")]  # the diverged run is counted, not averaged
    assert (d.n_ok, d.n_diverged, d.final["suboptimality"].n) == (1, 1, 1)
    assert "⚠ 1 diverged" in page and "✖ 1 failed" in page


def test_settled_first_crossing_and_deterministic(report: tuple[Path, str, list[str]]) -> None:
    _, page, _ = report
    quad = _section(page, "task-2")
    assert "deterministic: one seed" in quad
    header = re.search(r"<thead>(.*?)</thead>", quad, flags=re.S).group(1)
    assert "first ≤ target" in header
    cells = _row(quad, "momentum")
    assert cells[2] == "140 (1/1)"  # settled: below the target from step 140 on ...
    assert "40" in cells[3]  # ... though it first crossed it at step 40
    assert "deterministic" in cells[1]
    # deterministic arms compare exactly: nesterov settles at 140 too, both 1.75 times the
    # work of the best arm (adam, settled at 80)
    nesterov = _row(quad, "nesterov")
    assert nesterov[2] == "140 (1/1)"
    assert nesterov[5] == cells[5] == "x1.75 (exact)"
    assert _row(quad, "adam")[2] == "80 (1/1)" and _row(quad, "adam")[5] == "best"
    # an arm that never settled counts as the budget: its ratio is only a lower bound
    assert _row(quad, "sgd momentum=0.5")[5] == "≥x2.5 (exact)"


def test_tiny_values_are_not_printed_raw(report: tuple[Path, str, list[str]]) -> None:
    _, page, _ = report
    # adam's final suboptimality on the quadratic rounds to -1.6e-17: shown as below 1e-16
    assert "e-17" not in re.sub(r"<svg.*?</svg>", "", page, flags=re.S)
    assert html.unescape(_row(_section(page, "task-2"), "adam")[6]) == "< 1e-16"
    # and on the plots, values <= 0 sit on a labelled bottom edge
    fig = re.search(r'data-plot="loss-steps" data-task="quadratic".*?</figure>', page,
                    flags=re.S).group(0)
    assert "≤10⁻" in fig


def test_best_per_optimizer(report: tuple[Path, str, list[str]]) -> None:
    _, page, _ = report
    best = _section(page, "best")
    quad = best[best.index('id="best-task-2"'):best.index('id="best-task-3"')]
    assert "Selection and evaluation share seeds" in quad
    assert "sgd momentum=0.99" in quad  # the best sgd configuration on the quadratic
    mlp = best[best.index('id="best-task-3"'):]
    assert "Held-out evaluation" in mlp and "seeds 3, 4, 5" in mlp
    for arm in ("adam best", "sgd best", "adamw best"):
        cells = _row(mlp, arm)
        assert "(3/3)" in cells[3] or "(0/3)" in cells[3]
    # held-out arms are not part of the study's ranking
    overview = _section(page, "overview")
    assert "adam best" not in overview


def test_grid_edge_warning_and_any_swept_setting(report: tuple[Path, str, list[str]]) -> None:
    _, page, _ = report
    sens = _section(page, "sensitivity")
    warnings = re.findall(r'<ul class="warnings">(.*?)</ul>', sens, flags=re.S)
    assert len(warnings) == 1
    assert "quadratic: sgd: the best momentum = 0.99 is the largest value swept" in \
        html.unescape(warnings[0])
    assert "weight decay" not in html.unescape(warnings[0])  # best interior: no warning
    best = _section(page, "best")
    assert "⚠ at the grid edge" in _row(best[best.index('id="best-task-2"'):], "sgd momentum=0.99"
                                        )[-1]
    captions = re.findall(r'data-plot="sensitivity" data-task="([^"]+)".*?<figcaption>(.*?)<',
                          page, flags=re.S)
    about = {(t, c.split(" against ")[1].split(" on ")[0]) for t, c in captions}
    assert ("mlp-digits", "weight decay") in about
    assert ("rosenbrock", "learning rate") in about
    assert any(t == "quadratic" and "momentum" in a for t, a in about)
    stats = aggregate(make_records())
    found = swept_settings(stats)
    assert found["quadratic"] == ["momentum"] and found["rosenbrock"] == ["lr"]
    assert found["mlp-digits"] == ["weight_decay", "batch_size"]
    (line,) = sweeps(stats, "momentum")["quadratic"]
    assert line.scale == "log" and line.xlabels == ["0.99", "0.9", "0.5"]  # 1 - momentum
    (line,) = sweeps(stats, "lr")["rosenbrock"]
    assert (line.optimizer, line.xs) == ("sgd", [0.001, 0.01, 0.1])
    (line,) = sweeps(stats, "batch_size")["mlp-digits"]
    assert line.xs == [32, 128, 1437] and line.xlabels == ["32", "128", "full"]


def test_swatches_match_plot_colours(report: tuple[Path, str, list[str]]) -> None:
    _, page, _ = report
    task = _section(page, "task-3")
    table = task[task.index('<table class="task-table"'):]
    colours = re.findall(r'class="swatch"[^>]*><line [^>]*stroke="(#[0-9a-f]{6})"', table)
    assert len(colours) == 7
    fig = re.search(r'data-plot="loss-steps".*?</figure>', task, flags=re.S).group(0)
    for c in colours:
        assert f"stroke: {c}" in fig, c


def test_trajectory_steps_and_series() -> None:
    rec = make_record("rosenbrock", "adam", "adam", 0, steps=5000)
    steps = trajectory_steps(rec)
    # one point per step up to 2000 points: k = ceil(5000 / 2000) = 3 -> 0, 3, 6, ...
    assert steps is not None and list(steps[:3]) == [0, 3, 6]
    assert len(steps) == len(rec.trajectory)


def test_log_axes_and_clamping() -> None:
    assert not wants_log([np.array([2.3, 1.0, 0.5])])  # less than a factor 20
    assert wants_log([np.array([5.0, 1e-3])])
    assert not wants_log([np.array([1.0, -1.0])])  # a loss can be negative: linear
    assert wants_log([np.array([5.0, -1.6e-17])], nonneg=True)
    # a non-negative metric with rounding negatives: a power of ten below the smallest
    # positive value, so that clamped points sit on an edge of their own
    assert log_floor([np.array([5.0, 1e-5, -1.6e-17])], nonneg=True) == 1e-6
    # 300 decades: cut to MAX_DECADES below the largest value
    floor = log_floor([np.array([5.0, 1e-300])])
    assert floor == 10.0 ** (math.floor(math.log10(5.0)) - MAX_DECADES)
    assert list(clamp([1.0, -1.0, NAN], 1e-3)[:2]) == [1.0, 1e-3]
    assert math.isnan(clamp([NAN], 1e-3)[0])


def test_outputs(report: tuple[Path, str, list[str]]) -> None:
    index, _, _ = report
    records = make_records()
    payload = json.loads((index.parent / "results.json").read_text(encoding="utf-8"),
                         parse_constant=lambda c: pytest.fail(f"non-strict JSON token {c}"))
    assert len(payload["records"]) == len(records)
    assert payload["study"]["name"] == STUDY["name"] and payload["environment"] == ENV
    assert "gradient evaluations" in payload["ranking_definition"]
    back = [RunRecord.from_dict(r) for r in payload["records"]]
    assert [r.key for r in back] == [r.key for r in records]
    div = next(r for r in payload["records"] if r["status"] == "diverged")
    assert div["final"]["train_loss"] is None and div["final"]["suboptimality"] is None
    arms = {(a["task"], a["arm"]): a for a in payload["arms"]}
    assert arms[("mlp-digits", "adam best")]["heldout"] is True
    assert arms[("quadratic", "momentum")]["steps_to_target"]["center"] == 140
    with open(index.parent / "results.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(records)
    for col in ("key", "task", "label", "optimizer", "seed", "batch_size", "schedule",
                "status", "final.test_accuracy", "final.suboptimality", "steps_to_target",
                "first_crossing", "grad_evals_to_target", "time_to_target",
                "generalization_gap", "state_bytes", "n_params", "hyperparams",
                "scalar.closure_evals"):
        assert col in rows[0]
    assert json.loads(rows[0]["hyperparams"])["lr"] == records[0].config.hyperparams["lr"]
    md = (index.parent / "summary.md").read_text(encoding="utf-8")
    assert "## Ranking across tasks" in md and "## mlp-digits" in md
    study, held = md.split("## Best configuration per optimizer, re-run on held-out seeds")
    assert "adam best" not in study and "| adam best |" in held


def test_summary_table() -> None:
    records = make_records()
    text = summary_table(records)
    for task in ("rosenbrock", "quadratic", "mlp-digits"):
        assert task in text
    assert "overall ranking" in text
    assert summary_table([]) == "no runs"


def test_edge_cases(tmp_path: Path) -> None:
    # a single run
    one = [make_record("rosenbrock", "adam", "adam", 0)]
    page = write_report(one, tmp_path / "one").read_text(encoding="utf-8")
    assert "loss-steps" in page and "trajectories" in page
    assert 'id="sensitivity"' not in page and 'id="best"' not in page  # nothing to show
    # everything diverged or failed, no target reached
    bad = [make_record("mlp-digits", "sgd lr=10", "sgd", s, status="diverged") for s in (0, 1)]
    bad.append(make_record("mlp-digits", "adam", "adam", 0, status="failed", error="boom"))
    out = tmp_path / "bad"
    page = write_report(bad, out).read_text(encoding="utf-8")
    json.loads((out / "results.json").read_text(), parse_constant=lambda c: 1 / 0)
    assert "not settled" in page and summary_table(bad)
    # stored dicts are read as records; a malformed one is refused naming the field
    page = write_report([make_dict("rosenbrock", "adam", "adam", 0)],
                        tmp_path / "dicts").read_text(encoding="utf-8")
    assert "rosenbrock" in page
    with pytest.raises(SchemaError, match="task_info"):
        write_report([{"key": "x", "label": "bare", "config": {"task": "mystery",
                                                              "optimizer": "sgd"},
                       "status": "ok", "schema": 2}], tmp_path / "bare")
    # no records at all
    page = write_report([], tmp_path / "none").read_text(encoding="utf-8")
    assert "No runs" in page and '<section class="part"' not in page
    # a user task (not in the registry) with a trajectory: no contours, still a plot
    user = make_dict("rosenbrock", "adam", "adam", 0)
    user["config"]["task"] = "mypkg.tasks:bowl"
    page = write_report([user], tmp_path / "user").read_text(encoding="utf-8")
    assert "no contours" in page


def test_many_arms(tmp_path: Path) -> None:
    records = [make_record("quadratic", f"arm {i}", ("sgd", "adam", "momentum")[i % 3], 0,
                           lr=0.001 * (i + 1), rate=0.01 + 0.002 * i) for i in range(55)]
    page = write_report(records, tmp_path).read_text(encoding="utf-8")
    styles = set(re.findall(r'class="swatch"[^>]*>(<line[^>]*>)', page))
    assert len(styles) == 55  # every arm has its own colour / dash combination
    # the curves are small multiples (wide figures), one panel per optimizer
    fig = re.search(r'<figure class="plot wide" data-plot="loss-steps".*?</figure>', page,
                    flags=re.S)
    assert fig is not None and "Small multiples" in fig.group(0)


def test_no_pyplot_figures_left_open() -> None:
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []


def test_awkward_labels(tmp_path: Path) -> None:
    labels = ["--><img src=x onerror=alert(1)>", r"$\alpha$ lr=$1", "_hidden arm", "ünïcødé"]
    records = [make_record("quadratic", label, "sgd", 0, lr=0.01 * (i + 1), rate=0.05)
               for i, label in enumerate(labels)]
    page = write_report(records, tmp_path, title="<!-- t -->").read_text(encoding="utf-8")
    assert "<img" not in page and "<!--" not in page
    svg_text = "".join(re.findall(r"<svg.*?</svg>", page, flags=re.S))
    # shown literally in the plots' legends: no mathtext, no hidden "_" entry
    assert r"$\alpha$ lr=$1" in svg_text
    assert "_hidden arm" in svg_text
    assert "ünïcødé" in svg_text


def test_tuning_and_advice_sections(tmp_path: Path) -> None:
    trials = []
    for i, (lr, value) in enumerate(((1e-3, 0.5), (1e-2, 0.05), (0.3, math.inf), (3e-2, 0.02))):
        for opt in ("sgd", "adam"):
            trials.append({"task": "quadratic", "optimizer": opt, "index": i,
                           "state": "complete", "status": "ok" if math.isfinite(value)
                           else "diverged", "value": value if math.isfinite(value) else None,
                           "objective": "work to target", "params": {"lr": lr},
                           "hyperparams": {"lr": lr, "betas": [0.9, 0.999]},
                           "schedule": "constant", "intermediate": {}})
    advice = {"question": "Which optimizer for quadratic?", "header": ["optimizer", "score"],
              "rows": [["adam", "1"], ["sgd", "2"]], "recommendation": "Recommended: adam.",
              "snippet": "opt = optimlab.Adam(model.parameters(), lr=0.03)", "notes": ["n"]}
    records = [make_record("quadratic", f"{o} best", o, s, rate=0.1) for o in ("sgd", "adam")
               for s in (3, 4)]
    page = write_report(records, tmp_path, tuning=trials, advice=advice
                        ).read_text(encoding="utf-8")
    assert page.index('id="advice"') < page.index('id="overview"')
    assert page.count('data-plot="tune-history"') == page.count('data-plot="tune-lr"') == 1
    tuning = _section(page, "tuning")
    assert "betas=(0.9, 0.999) lr=0.03" in tuning  # k=v text, never JSON
    # a study of best configurations only (tune's re-runs) is ranked as it is
    assert _row(_section(page, "task-1"), "adam best")
    # the tuning plots take the colours of the re-run arms
    colours = {o: c for c, o in re.findall(r'stroke="(#[0-9a-f]{6})"[^>]*/></svg>(\w+) best',
                                           page)}
    tuning_colours = re.findall(r'stroke="(#[0-9a-f]{6})"[^>]*/></svg>(\w+)</td>', tuning)
    assert tuning_colours and all(colours[o] == c for c, o in tuning_colours)


def test_lines_of_one_setting_share_an_axis() -> None:
    # momentum's two learning rates span a factor 2, adam's a factor 10: one log axis for both
    records = [make_record("quadratic", f"{o} lr={lr:g}", o, 0, lr=lr, rate=0.1)
               for o, lrs in (("momentum", (0.005, 0.01)), ("adam", (0.01, 0.1))) for lr in lrs]
    lines = sweeps(aggregate(records), "lr")["quadratic"]
    assert [ln.scale for ln in lines] == ["log", "log"]
    assert [ln.xs for ln in lines] == [[0.005, 0.01], [0.01, 0.1]]


def test_counts_are_never_drawn_below_zero() -> None:
    import matplotlib as mpl

    from optimlab.lab.report.plots import RC, Interval, Style, interval_figure

    # a t interval of three seeds can reach below 0; steps to target cannot: cut at 0
    style = Style("#1f77b4", "-")
    rows = [Interval("a", style, 120.0, 100.0, 140.0, True),
            Interval("b", style, 220.0, -200.0, 640.0, True)]
    with mpl.rc_context(RC):
        svg = interval_figure(rows, "steps to target")
    ticks = re.findall(r"<text[^>]*>([^<]*)</text>", svg)
    assert "0" in ticks and not any(re.match(r"[−-]\d", t) for t in ticks), ticks
