"""Rendering of ``index.html``: the page header (with the ranking's definition) and the sections
in order (needs matplotlib, imported here so that the statistics and text tables work without
it)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

try:
    import matplotlib as mpl
except ImportError as e:  # pragma: no cover - depends on the installation
    raise ImportError("the HTML report needs matplotlib: pip install 'optimlab[lab]'") from e

from ..schema import RunRecord
from .page import Markup, PageBuilder, esc
from .plots import RC, styles_for
from .records import arm_of, as_records
from .sections import (
    batch_section,
    best_section,
    environment_section,
    grid_edges,
    memory_section,
    schedules_section,
    sensitivity_section,
)
from .stats import aggregate, by_task, ranking, ranking_definition
from .tasks import Context, overview_section, task_section

__all__ = ["HELDOUT_SUFFIX", "HOW_TO_READ", "build_context", "html_report", "is_heldout",
           "render_page"]

#: The label suffix of a held-out re-run of an optimizer's best configuration: the arm
#: ``"<optimizer> best"`` (the study runner's convention, :data:`optimlab.lab.study.HELDOUT_SUFFIX`;
#: repeated here so that the report imports nothing that runs experiments).
HELDOUT_SUFFIX = " best"

HOW_TO_READ = (
    "How to read this: an arm is an optimizer with its settings; its runs differ only by seed. "
    "Numbers over seeds are a centre with its 95% interval, written 412 [380, 450]: the mean "
    "with a Student-t interval, or the median with order-statistic bounds when some seeds did "
    "not reach the target ([380, inf) when too few did); deterministic arms (the seed changes "
    "nothing) run one seed and show a single value. Curves show the mean over the ok seeds "
    "with a min–max band, on log axes where values span decades. Diverged and failed runs are "
    "counted and marked, never averaged. The exact configuration of every run is in "
    "results.json.")


def is_heldout(rec: RunRecord) -> bool:
    """Whether ``rec`` is a held-out re-run of its optimizer's best configuration."""
    return rec.label == rec.optimizer + HELDOUT_SUFFIX


def build_context(records: Sequence[RunRecord | Mapping[str, Any]],
                  study: Mapping[str, Any] | None = None) -> Context:
    """The records' statistics as the sections need them: held-out re-runs (when the study
    has other arms too) aggregated apart from the study's arms, each set ranked among
    itself by the study's ``rank_by``."""
    recs = as_records(records)
    study = dict(study or {})
    rank_by = str(study.get("rank_by") or "work")
    held = [r for r in recs if is_heldout(r)]
    main = [r for r in recs if not is_heldout(r)]
    if not main:  # a study of best configurations only (e.g. tune's re-runs): rank them
        main, held = held, []
    stats = aggregate(main, rank_by=rank_by) if main else {}
    heldout = aggregate(held, rank_by=rank_by) if held else {}
    arms = list(dict.fromkeys([*(arm_of(r) for r in main), *(arm_of(r) for r in held)]))
    anchors = {t: f"task-{i + 1}" for i, t in enumerate(by_task(stats))}
    return Context(recs, stats, heldout, ranking(stats), arms, styles_for(arms), anchors,
                   rank_by, study)


def html_report(records: Sequence[RunRecord | Mapping[str, Any]], *,
                title: str = "optimlab report",
                study: Mapping[str, Any] | None = None,
                environment: Mapping[str, Any] | None = None,
                progress: Callable[[str], None] | None = None,
                tuning: Sequence[Mapping[str, Any]] | None = None,
                advice: Mapping[str, Any] | None = None) -> tuple[str, int]:
    """The report page as HTML text and the number of plots it holds (see
    :func:`optimlab.lab.report.write_report`)."""
    return render_page(build_context(records, study), title=title, environment=environment,
                       progress=progress, tuning=tuning, advice=advice)


def render_page(ctx: Context, *, title: str = "optimlab report",
                environment: Mapping[str, Any] | None = None,
                progress: Callable[[str], None] | None = None,
                tuning: Sequence[Mapping[str, Any]] | None = None,
                advice: Mapping[str, Any] | None = None) -> tuple[str, int]:
    """The page of a :func:`build_context` result: HTML text and its number of plots."""
    say = progress or (lambda msg: None)
    page = PageBuilder(title)
    counts: dict[str, int] = {}
    for r in ctx.records:
        counts[r.status] = counts.get(r.status, 0) + 1
    status = ", ".join(f"{v} {k}" for k, v in counts.items())
    n_held = len({s.arm for s in ctx.heldout.values()})
    sub = f"Study {esc(ctx.study['name'])} · " if ctx.study.get("name") else ""
    header = (f"<header><h1>{esc(title)}</h1>"
              f'<p class="lead">{sub}{len(ctx.records)} runs ({esc(status)}) of '
              f"{len(ctx.ranks)} arms on {len(ctx.anchors)} tasks"
              + (f", and held-out re-runs of {n_held} best configurations" if n_held else "")
              + ".</p>"
              f'<div class="definition" id="ranking-definition"><p><strong>Ranking.</strong> '
              f"{esc(ranking_definition(ctx.rank_by))}</p>"
              f"<p>{esc(HOW_TO_READ)}</p></div>"
              + ("" if ctx.stats else '<p class="lead">No runs to report.</p>') + "</header>")
    with mpl.rc_context(RC):
        if advice:
            from .advice import advice_section

            say("advice")
            advice_section(page, advice)
        if ctx.stats:
            say("overview")
            overview_section(page, ctx)
            edges = grid_edges(ctx)
            say("best per optimizer")
            best_section(page, ctx, edges)
            for task, arms in ctx.tasks.items():
                say(f"task {task}")
                task_section(page, ctx, task, arms)
            say("sensitivity")
            sensitivity_section(page, ctx, edges)
            say("batch size")
            batch_section(page, ctx)
            say("memory")
            memory_section(page, ctx)
            say("schedules")
            schedules_section(page, ctx)
        if tuning:
            from .tuning import tuning_section

            say("tuning")
            tuning_section(page, tuning, ctx.styles)
        say("environment")
        environment_section(page, ctx, ctx.study, environment)
    return page.render(Markup(header)), page.n_figures
