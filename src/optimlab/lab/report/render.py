"""Rendering of ``index.html``: the page header and the sections in order (needs
matplotlib, imported here so that the statistics and text tables work without it)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

try:
    import matplotlib as mpl
except ImportError as e:  # pragma: no cover - depends on the installation
    raise ImportError("the HTML report needs matplotlib: pip install 'optimlab[lab]'") from e

from .page import Markup, PageBuilder, esc
from .plots import RC, styles_for
from .records import arm_of, status_of, task_ids
from .sections import (
    batch_section,
    environment_section,
    lr_section,
    memory_section,
    schedules_section,
)
from .stats import aggregate, ranking
from .tasks import Context, overview_section, task_section

__all__ = ["HOW_TO_READ", "html_report"]

HOW_TO_READ = (
    "How to read this: an arm is an optimizer with its settings; its runs differ only by seed. "
    "Arms are compared by how fast they reach each task's target (median over seeds, a seed "
    "that missed the target, diverged or failed counting as never) — lower rank and higher "
    "performance profile are better. Curves show the mean over the non-diverged seeds with a "
    "min–max band; tables give mean ± std over ok seeds; diverged and failed runs are counted "
    "and marked, never averaged.")


def _context(records: Sequence[Mapping[str, Any]]) -> Context:
    recs = [dict(r) for r in records]
    stats = aggregate(recs)
    arms = list(dict.fromkeys(arm_of(r) for r in recs))
    anchors = {t: f"task-{i + 1}" for i, t in enumerate(dict.fromkeys(task_ids(recs)))}
    return Context(recs, stats, ranking(stats), arms, styles_for(arms), anchors)


def html_report(records: Sequence[Mapping[str, Any]], *, title: str = "optimlab report",
                study: Mapping[str, Any] | None = None,
                environment: Mapping[str, Any] | None = None,
                progress: Callable[[str], None] | None = None,
                tuning: Sequence[Mapping[str, Any]] | None = None,
                advice: Mapping[str, Any] | None = None) -> tuple[str, int]:
    """The report page as HTML text and the number of plots it holds (see
    :func:`optimlab.lab.report.write_report`)."""
    say = progress or (lambda msg: None)
    ctx = _context(records)
    page = PageBuilder(title)
    counts: dict[str, int] = {}
    for r in ctx.records:
        counts[status_of(r)] = counts.get(status_of(r), 0) + 1
    status = ", ".join(f"{v} {k}" for k, v in counts.items())
    study_name = (study or {}).get("name")
    sub = f"Study {esc(study_name)} · " if study_name else ""
    header = (f"<header><h1>{esc(title)}</h1>"
              f'<p class="lead">{sub}{len(ctx.records)} runs ({esc(status)}) of '
              f"{len(ctx.arms)} arms on {len(ctx.anchors)} tasks.</p>"
              f'<p class="lead howto">{esc(HOW_TO_READ)}</p></header>')
    with mpl.rc_context(RC):
        if advice:
            from .advice import advice_section

            say("advice")
            advice_section(page, advice)
        if ctx.records:
            say("overview")
            overview_section(page, ctx)
            for task, arms in ctx.tasks.items():
                say(f"task {task}")
                task_section(page, ctx, task, arms)
            say("learning-rate sensitivity")
            lr_section(page, ctx)
            say("batch size")
            batch_section(page, ctx)
            say("memory")
            memory_section(page, ctx)
            say("schedules")
            schedules_section(page, ctx)
        else:
            page.heading(2, "overview", "Overview")
            page.para("No runs to report.")
        if tuning:
            from .tuning import tuning_section

            say("tuning")
            tuning_section(page, tuning, ctx.styles)
        say("environment")
        environment_section(page, ctx, study, environment)
    return page.render(Markup(header)), page.n_figures
