"""The study report: sections, figures, numbers, escaping and the machine-readable outputs.

Records are synthetic (built by :func:`make_records` with the runner's schema), so these tests
need no runner and take a few seconds.
"""

from __future__ import annotations

import csv
import html
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("matplotlib")

from optimlab.lab.report import (
    aggregate,
    average_ranks,
    mean_std,
    performance_profile,
    performance_ratios,
    ranking,
    summary_table,
    sweeps,
    write_report,
)

EVIL = '<script>alert(1)</script> & "quotes"'
EVIL_TITLE = 'Report <script>alert("t")</script> & co'

NAN = float("nan")


def make_record(task: str, label: str, optimizer: str, seed: int, *, lr: float = 0.01,
                batch_size: Any = "full", schedule: str = "constant", status: str = "ok",
                rate: float = 0.05, steps: int = 200, eval_every: int = 20,
                extra_hp: dict[str, Any] | None = None, error: str | None = None,
                task_options: dict[str, Any] | None = None,
                **overrides: Any) -> dict[str, Any]:
    """One synthetic run with the runner's schema.

    2-D tasks ("rosenbrock", "quadratic") get suboptimality f0 * exp(-rate * step) at the
    evaluations and a trajectory; other tasks are "neural" with a train-loss target, val/test
    metrics and a mini-batch training curve. ``overrides`` replace top-level fields or, as
    ``final_<name>``, single final metrics.
    """
    two_d = task in ("rosenbrock", "quadratic")
    target = 1e-6 if two_d else 0.1
    metric = "suboptimality" if two_d else "train_loss"
    dt = 0.002 * (1 + 0.1 * seed)
    eval_steps = list(range(0, steps + 1, eval_every))
    diverged_at = steps // 2 if status == "diverged" else None

    def value(step: int, f0: float, floor: float = 0.0) -> float:
        if diverged_at is not None and step > diverged_at:
            return NAN
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
    reached = [s for s, v in zip(eval_steps, metrics[metric]) if v <= target]
    curve_steps = list(range(0, steps + 1, 5))
    start = (-1.5, 2.0) if task == "rosenbrock" else (2.0, 1.0)
    goal = (1.0, 1.0) if task == "rosenbrock" else (0.0, 0.0)
    trajectory = None
    if two_d:
        trajectory = []
        for s in range(0, steps + 1, 2):
            w = 1 - math.exp(-rate * 3 * s)
            x = start[0] + (goal[0] - start[0]) * w
            y = start[1] + (goal[1] - start[1]) * w ** 2 + 0.3 * math.sin(w * 3) * (1 - w)
            if diverged_at is not None and s > diverged_at:
                x, y = NAN, NAN
            trajectory.append([x, y])
    hp = {"lr": lr, "weight_decay": 0.0, **(extra_hp or {})}
    rec: dict[str, Any] = {
        "key": f"{task}-{label}-{seed}".replace(" ", "_"),
        "label": label,
        "config": {"task": task, "task_options": task_options or {}, "optimizer": optimizer,
                   "hyperparams": hp, "schedule": schedule, "batch_size": batch_size,
                   "seed": seed, "steps": steps, "seconds": None, "eval_every": eval_every,
                   "telemetry": False},
        "status": status,
        "error": error,
        "task_info": {"kind": "2d" if two_d else "neural", "description": f"synthetic {task}",
                      "target": target, "target_metric": metric,
                      "n_train": 1 if two_d else 1437},
        "curve": {"step": curve_steps, "time": [s * dt for s in curve_steps],
                  "train_loss": [value(s, 2.3 if not two_d else 5.0, 0.01 * (not two_d))
                                 * (1.1 if s % 10 else 0.9) for s in curve_steps]},
        "evals": {"step": eval_steps, "time": [s * dt for s in eval_steps],
                  "metrics": metrics},
        "final": final,
        "steps_to_target": reached[0] if reached and status == "ok" else None,
        "time_to_target": reached[0] * dt if reached and status == "ok" else None,
        "generalization_gap": (None if two_d or status != "ok"
                               else final["test_loss"] - final["train_loss"]),
        "steps_done": steps, "train_seconds": steps * dt, "wall_seconds": steps * dt * 1.2,
        "peak_memory_bytes": None,
        "state_bytes": {"sgd": 0, "adam": 16}.get(optimizer, 8) * (2 if two_d else 1000),
        "n_params": 2 if two_d else 1000, "param_bytes": 16 if two_d else 4000,
        "trajectory": trajectory,
        "lr": {"step": list(range(0, steps + 1, 10)),
               "value": [lr * (0.5 * (1 + math.cos(math.pi * s / steps))
                               if schedule == "cosine" else 1.0)
                         for s in range(0, steps + 1, 10)]},
        "telemetry": None,
        "extra": {} if two_d else {"grad_norm": 0.5 + 0.1 * seed},
    }
    if status == "failed":
        rec.update(curve=None, evals=None, final={}, trajectory=None, lr=None,
                   state_bytes=None, steps_done=0)
    for k, v in overrides.items():
        if k.startswith("final_"):
            rec["final"][k[len("final_"):]] = v
        else:
            rec[k] = v
    return rec


def make_records() -> list[dict[str, Any]]:
    """Three tasks (rosenbrock, quadratic: 2-D; mlp-digits: neural), an lr sweep of SGD, a
    batch-size sweep of Adam, a diverged run with NaN final metrics, a failed run and an arm
    with a malicious label."""
    recs = []
    for seed in (0, 1):
        for lr, rate in ((0.001, 0.01), (0.01, 0.06), (0.1, 0.12)):
            status = "diverged" if lr == 0.1 and seed == 1 else "ok"
            recs.append(make_record("rosenbrock", f"sgd lr={lr:g}", "sgd", seed, lr=lr,
                                    rate=rate, status=status))
        recs.append(make_record("rosenbrock", "adam", "adam", seed, lr=0.01, rate=0.09,
                                schedule="cosine"))
        recs.append(make_record("rosenbrock", EVIL, "adam", seed, lr=0.02, rate=0.07,
                                extra_hp={"note": EVIL}))
        recs.append(make_record("quadratic", "sgd lr=0.01", "sgd", seed, lr=0.01, rate=0.08))
        recs.append(make_record("quadratic", "adam", "adam", seed, lr=0.01, rate=0.1,
                                schedule="cosine",
                                status="failed" if seed == 1 else "ok",
                                error="RuntimeError: <boom> & bust" if seed == 1 else None))
        recs.append(make_record("quadratic", EVIL, "adam", seed, lr=0.02, rate=0.02,
                                extra_hp={"note": EVIL}))
    for seed in (0, 1, 2):
        recs.append(make_record("mlp-digits", "adam", "adam", seed, lr=0.01, rate=0.03,
                                schedule="cosine"))
        recs.append(make_record("mlp-digits", "sgd lr=0.01", "sgd", seed, lr=0.01, rate=0.01))
        for bs, rate in ((32, 0.02), (128, 0.04)):
            recs.append(make_record("mlp-digits", f"adam bs={bs}", "adam", seed, lr=0.01,
                                    rate=rate, batch_size=bs, schedule="cosine"))
    # hand-made numbers for "adam bs=32" on mlp-digits
    hand = {0: (0.90, 100, 0.10), 1: (0.92, 200, 0.20), 2: (0.94, None, None)}
    for rec in recs:
        if rec["label"] == "adam bs=32":
            acc, steps, secs = hand[rec["config"]["seed"]]
            rec["final"]["test_accuracy"] = acc
            rec["steps_to_target"], rec["time_to_target"] = steps, secs
    # the diverged run: NaN / inf final metrics
    for rec in recs:
        if rec["status"] == "diverged":
            rec["final"] = {"train_loss": NAN, "suboptimality": math.inf,
                            "distance_to_minimum": NAN}
    return recs


STUDY = {"name": "synthetic <study>", "tasks": ["rosenbrock", "quadratic", "mlp-digits"],
         "optimizers": ["sgd", "adam"], "seeds": [0, 1, 2]}
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


def test_files_and_progress(report: tuple[Path, str, list[str]]) -> None:
    index, page, messages = report
    assert index.name == "index.html"
    for name in ("index.html", "summary.md", "results.csv", "results.json"):
        assert (index.parent / name).stat().st_size > 0
    assert messages[0] == "overview"
    for expected in ("task rosenbrock", "task quadratic", "task mlp-digits", "memory",
                     "schedules", "environment", "batch size", "learning-rate sensitivity"):
        assert expected in messages
    assert page.startswith("<!DOCTYPE html>")


def test_sections_and_figures(report: tuple[Path, str, list[str]]) -> None:
    _, page, _ = report
    for anchor in ("overview", "task-1", "task-2", "task-3", "lr-sensitivity", "batch-size",
                   "memory", "schedules", "environment"):
        assert f'id="{anchor}"' in page
        assert f'href="#{anchor}"' in page  # table of contents
    assert "How to read this" in page
    plots = _plots(page)
    counts = {k: plots.count(k) for k in set(plots)}
    assert counts == {"profile-time": 1, "profile-steps": 1, "loss-steps": 3, "loss-time": 3,
                      "metric": 3, "trajectories": 2, "lr-sensitivity": 1, "batch-steps": 1,
                      "batch-time": 1, "batch-gap": 1, "memory": 1, "schedules": 1}
    n = int(re.search(r'id="figure-count" data-figures="(\d+)"', page).group(1))
    assert n == len(plots) == page.count("<svg") - page.count('class="swatch"')
    for fig in re.findall(r'<figure class="plot.*?</figure>', page, flags=re.S):
        assert "<svg" in fig and "<figcaption>" in fig
    # contours: the 2-D functions were rebuilt from the task registry
    traj = re.findall(r'data-plot="trajectories".*?</figure>', page, flags=re.S)
    assert all("contours of f" in t for t in traj)
    assert "http://" not in page.replace("http://www.w3.org", "")
    assert "https://" not in page and "<script" not in page.lower()
    assert "<link" not in page and "@import" not in page


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
    section = page[page.index('id="task-3"'):page.index('id="lr-sensitivity"')]
    row = re.search(r'<tr[^>]*><td class="arm">[^\n]*?adam bs=32</td>.*?</tr>', section).group(0)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
    # test_accuracy 0.90, 0.92, 0.94: mean 0.92, sample std 0.02
    assert "0.92 ± 0.02" in cells
    # steps to target 100, 200, not reached: median of (100, 200, inf) = 200, 2 of 3 reached
    assert "200 (2/3)" in cells
    assert "0.2s (2/3)" in cells
    stats = aggregate(make_records())
    s = stats[("mlp-digits", "adam bs=32")]
    # Python-float mean and std of 0.90, 0.92, 0.94: off by ~1e-16 (std by 4e-17 of 0.02,
    # from the cancellation in x - mean); approx allows 1e-6 relative
    assert s.final["test_accuracy"].mean == pytest.approx(0.92)
    assert s.final["test_accuracy"].std == pytest.approx(0.02)
    assert (s.steps_to_target, s.time_to_target, s.n_reached) == (200, 0.2, 2)
    # the diverged run is counted, not averaged
    d = stats[("rosenbrock", "sgd lr=0.1")]
    assert (d.n_ok, d.n_diverged, d.final["suboptimality"].n) == (1, 1, 1)
    assert math.isinf(d.steps_to_target) and d.n_reached == 1  # median of (x, inf) = inf
    assert 'class="diverged"' not in page or "⚠ 1 diverged" in page
    assert "⚠ 1 diverged" in page and "✖ 1 failed" in page
    f = stats[("quadratic", "adam")]
    assert (f.n_ok, f.n_failed) == (1, 1)


def test_statistics_by_hand() -> None:
    ms = mean_std([1.0, 2.0, 3.0, NAN, None, math.inf])
    assert (ms.mean, ms.std, ms.n) == (2.0, 1.0, 3)
    assert average_ranks({"a": 1.0, "b": math.inf, "c": NAN, "d": 0.5}) == {
        "d": 1.0, "a": 2.0, "b": 3.5, "c": 3.5}
    assert average_ranks({"a": 2, "b": 2, "c": 1}) == {"c": 1.0, "a": 2.5, "b": 2.5}
    times = {"t1": {"a": 1.0, "b": 2.0}, "t2": {"a": 4.0, "b": 2.0},
             "t3": {"a": None, "b": 10.0}, "t4": {"a": math.inf, "b": NAN}}
    ratios = performance_ratios(times)
    assert ratios["t1"] == {"a": 1.0, "b": 2.0}
    assert ratios["t3"]["a"] == math.inf and ratios["t3"]["b"] == 1.0
    assert ratios["t4"] == {"a": math.inf, "b": math.inf}
    prof = performance_profile(times, [1.0, 1.5, 2.0, 10.0])
    assert prof["a"] == [0.25, 0.25, 0.5, 0.5]
    assert prof["b"] == [0.5, 0.5, 0.75, 0.75]
    # an arm that is missing from a task never counts there
    assert performance_profile({"t": {"a": 1.0}, "u": {"b": 3.0}}, [1.0])["a"] == [0.5]


def test_ranking_and_sweeps() -> None:
    stats = aggregate(make_records())
    quad = {a: s.rank for (t, a), s in stats.items() if t == "quadratic"}
    # on quadratic only "sgd lr=0.01" and EVIL reach the target... faster one ranks 1
    order = sorted(quad, key=quad.get)
    assert stats[("quadratic", order[0])].time_to_target <= stats[
        ("quadratic", order[1])].time_to_target
    # not reached: after the arms that reached it, ordered by the median final metric
    # (sgd lr=0.1: one of two seeds diverged, so its median is +inf)
    rosen = {a: s.rank for (t, a), s in stats.items() if t == "rosenbrock"}
    assert rosen == {"adam": 1, EVIL: 2, "sgd lr=0.01": 3, "sgd lr=0.001": 4, "sgd lr=0.1": 5}
    rows = ranking(stats)
    assert {r.arm for r in rows} == {a for _, a in stats}
    assert rows == sorted(rows, key=lambda r: r.mean_rank)
    lr = sweeps(stats, "lr")
    assert list(lr) == ["rosenbrock"]
    (line,) = lr["rosenbrock"]
    assert (line.optimizer, line.xs) == ("sgd", [0.001, 0.01, 0.1])
    bs = sweeps(stats, "batch_size")
    (line,) = bs["mlp-digits"]
    assert line.xs == [32, 128, 1437] and line.xlabels == ["32", "128", "full"]


def test_outputs(report: tuple[Path, str, list[str]]) -> None:
    index, _, _ = report
    records = make_records()
    payload = json.loads((index.parent / "results.json").read_text(encoding="utf-8"),
                         parse_constant=lambda c: pytest.fail(f"non-strict JSON token {c}"))
    assert len(payload["records"]) == len(records)
    assert payload["study"]["name"] == STUDY["name"] and payload["environment"] == ENV
    div = next(r for r in payload["records"] if r["status"] == "diverged")
    assert div["final"]["train_loss"] is None and div["final"]["suboptimality"] is None
    with open(index.parent / "results.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(records)
    for col in ("key", "task", "label", "optimizer", "seed", "batch_size", "schedule",
                "status", "final.test_accuracy", "final.suboptimality", "steps_to_target",
                "time_to_target", "generalization_gap", "state_bytes", "n_params",
                "peak_memory_bytes", "train_seconds", "hyperparams"):
        assert col in rows[0]
    assert json.loads(rows[0]["hyperparams"])["lr"] == records[0]["config"]["hyperparams"]["lr"]
    assert [r["key"] for r in rows] == [r["key"] for r in records]
    md = (index.parent / "summary.md").read_text(encoding="utf-8")
    assert "## Ranking across tasks" in md and "## mlp-digits" in md
    assert "0.92 ± 0.02" in md


def test_summary_table() -> None:
    records = make_records()
    text = summary_table(records)
    for arm in {r["label"] for r in records}:
        assert arm in text
    for task in ("rosenbrock", "quadratic", "mlp-digits"):
        assert task in text
    assert "200 (2/3)" in text
    assert "overall ranking" in text
    assert summary_table([]) == "no runs"


def test_edge_cases(tmp_path: Path) -> None:
    # a single run
    one = [make_record("rosenbrock", "adam", "adam", 0)]
    page = write_report(one, tmp_path / "one").read_text(encoding="utf-8")
    assert "loss-steps" in page and "trajectories" in page
    # everything diverged or failed, no target reached, missing metrics
    bad = [make_record("mlp-digits", "sgd lr=10", "sgd", s, status="diverged") for s in (0, 1)]
    bad.append(make_record("mlp-digits", "adam", "adam", 0, status="failed", error="boom"))
    bad.append({"key": "x", "label": "bare", "config": {"task": "mystery"}, "status": "ok"})
    out = tmp_path / "bad"
    page = write_report(bad, out).read_text(encoding="utf-8")
    json.loads((out / "results.json").read_text(), parse_constant=lambda c: 1 / 0)
    assert "bare" in page and "mystery" in page
    assert summary_table(bad)
    # no records at all
    page = write_report([], tmp_path / "none").read_text(encoding="utf-8")
    assert "No runs" in page
    # a user task (not in the registry) with a trajectory: no contours, still a plot
    user = [make_record("rosenbrock", "adam", "adam", 0)]
    user[0]["config"]["task"] = "mypkg.tasks:bowl"
    page = write_report(user, tmp_path / "user").read_text(encoding="utf-8")
    assert "no contours" in page


def test_many_arms(tmp_path: Path) -> None:
    records = [make_record("quadratic", f"arm {i}", "sgd", 0, lr=0.001 * (i + 1),
                           rate=0.01 + 0.002 * i) for i in range(55)]
    page = write_report(records, tmp_path).read_text(encoding="utf-8")
    styles = set(re.findall(r'class="swatch"[^>]*>(<line[^>]*>)', page))
    assert len(styles) == 55  # every arm has its own colour / dash combination


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
