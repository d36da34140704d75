"""The report's advice section: the advisor's ranked table, recommendation and code snippet."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .page import PageBuilder, esc

__all__ = ["advice_section"]


def advice_section(page: PageBuilder, advice: Mapping[str, Any]) -> None:
    """Append the "Advice" section. ``advice`` holds ``question`` (text), ``header`` and
    ``rows`` (the ranked table as strings), ``recommendation`` (text), ``snippet`` (code) and
    ``notes`` (texts); every string is escaped."""
    page.heading(2, "advice", "Advice")
    page.para(advice.get("question", ""))
    header: Sequence[Any] = advice.get("header", [])
    rows: Sequence[Sequence[Any]] = advice.get("rows", [])
    if rows:
        page.table(header, rows, numeric=tuple(range(2, len(header))))
    for note in advice.get("notes", []):
        page.para(note)
    if advice.get("recommendation"):
        page.para(advice["recommendation"], cls="lead")
    if advice.get("snippet"):
        page.add(f'<pre class="snippet"><code>{esc(advice["snippet"])}</code></pre>')
