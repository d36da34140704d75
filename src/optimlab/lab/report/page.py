"""The HTML page: a small builder (escaping, sections, tables, figures, collapsible blocks,
table of contents), the page's CSS and the number formats of its tables. The sections
themselves live in :mod:`.tasks` and :mod:`.sections`.

Layout rules the browser test checks (``tests/test_report_browser.py``): every ``<h2>`` opens a
``<section>`` that holds at least one table, figure, list or collapsible block (a section with
nothing to show is never started); every table fits a 1400 px wide window (cells wrap, long
words break); configurations are never dumped as raw JSON on the page.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .plots import Style

__all__ = ["CSS", "ArmCell", "Markup", "PageBuilder", "esc", "soft", "swatch", "tag"]


class Markup(str):
    """A string that is already HTML (not escaped again by :func:`esc`)."""


class ArmCell(Markup):
    """An arm's swatch and name (a table cell that does not wrap)."""


def esc(value: Any) -> str:
    """HTML-escaped text (quotes included), unless ``value`` is :class:`Markup`."""
    if isinstance(value, Markup):
        return str(value)
    return html.escape(str(value), quote=True)


CSS = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial,
       sans-serif; color: #1d2430; background: #fdfdfc; margin: 0; }
main { max-width: 1240px; margin: 0 auto; padding: 1.2rem 1.5rem 3rem; }
h1 { font-size: 1.6rem; margin: 0.4rem 0; }
h2 { font-size: 1.25rem; margin-top: 2.2rem; padding-top: 0.6rem; border-top: 1px solid #dde1e6; }
h3 { font-size: 1.05rem; margin-top: 1.4rem; }
p.lead { color: #3a4452; max-width: 60rem; }
p.note, figcaption, li.note { color: #4f5866; font-size: 0.86rem; max-width: 75rem; }
.definition { background: #f3f6fa; border-left: 3px solid #5b7fb0; padding: 0.5rem 0.9rem;
              max-width: 70rem; }
.definition p { margin: 0.3rem 0; }
nav.toc { background: #f3f5f7; border: 1px solid #e1e5ea; border-radius: 6px;
          padding: 0.5rem 1rem; display: inline-block; max-width: 100%; box-sizing: border-box; }
nav.toc ol { margin: 0.3rem 0; padding-left: 1.3rem; }
nav.toc ol ol { columns: 2; }
.scroll { overflow-x: auto; margin: 0.6rem 0; max-width: 100%; }
table { border-collapse: collapse; font-size: 0.84rem; font-variant-numeric: tabular-nums;
        max-width: 100%; }
th, td { border-bottom: 1px solid #e3e6ea; padding: 0.22rem 0.5rem; text-align: left;
         vertical-align: top; overflow-wrap: anywhere; }
th { background: #f3f5f7; font-weight: 600; position: sticky; top: 0;
     overflow-wrap: break-word; }
td.num { text-align: right; }
td.num .ci { color: #5d6775; font-size: 0.92em; }
tr.diverged td { background: #fff4f2; }
tr.failed td { background: #fbf1f6; }
.bad { color: #b3261e; font-weight: 600; }
.warn { color: #9a5b00; }
.good { color: #1c6b35; }
.tag { display: inline-block; border-radius: 3px; padding: 0 0.3rem; font-size: 0.78em;
       font-weight: 600; white-space: nowrap; }
.tag.best { background: #e2f3e6; color: #1c6b35; }
.tag.tied { background: #e8eefb; color: #29498a; }
.tag.det { background: #f1ecf8; color: #5a3c86; }
ul.warnings { padding-left: 1.2rem; }
ul.warnings li { color: #7a4800; }
code, pre { font: 0.8rem/1.35 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
pre { background: #f5f6f8; border: 1px solid #e1e5ea; padding: 0.6rem; overflow-x: auto;
      max-height: 28rem; white-space: pre-wrap; }
td code { white-space: pre-wrap; word-break: break-all; font-size: 0.74rem; }
details { margin: 0.6rem 0; }
details > summary { cursor: pointer; color: #29498a; }
.figs { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(100%, 500px), 1fr));
        gap: 0.8rem 1rem; align-items: start; }
figure.plot { margin: 0.4rem 0; padding: 0.4rem; background: #fff; border: 1px solid #e6e9ed;
              border-radius: 6px; min-width: 0; }
figure.plot svg { display: block; width: 100%; height: auto; }
figure.plot.wide { grid-column: 1 / -1; }
figure.plot.wide svg { width: auto; max-width: 100%; margin: 0 auto; }
figcaption { margin-top: 0.2rem; }
.swatch { display: inline-block; vertical-align: middle; margin-right: 0.35rem; }
footer { margin-top: 3rem; color: #6a7380; font-size: 0.8rem; }
"""


def swatch(style: Style | None) -> Markup:
    """A small inline line sample in exactly the plot's colour and dash pattern."""
    if style is None:
        return Markup("")
    dash = f' stroke-dasharray="{esc(style.dasharray)}"' if style.dasharray else ""
    return Markup(
        f'<svg class="swatch" width="26" height="10" aria-hidden="true">'
        f'<line x1="1" y1="5" x2="25" y2="5" stroke="{esc(style.color)}" stroke-width="2.2"'
        f"{dash}/></svg>")


def tag(kind: str, text: str, title: str = "") -> Markup:
    """A small coloured label (``best``, ``tied``, ``det``) with an optional tooltip."""
    tip = f' title="{esc(title)}"' if title else ""
    return Markup(f'<span class="tag {esc(kind)}"{tip}>{esc(text)}</span>')


_SOFT = re.compile(r"( \[[^\])]*[\])]| \(\d+/\d+\))")


def soft(text: str) -> Markup:
    """``text`` escaped, with its interval (``[380, 450]``) and run count (``(3/3)``) in a
    lighter span, as the tables show them."""
    return Markup(_SOFT.sub(lambda m: f'<span class="ci">{m.group(0)}</span>', esc(text)))


@dataclass
class PageBuilder:
    """Accumulates HTML in ``<section>``s, counts figures and collects the table of contents.

    :meth:`heading` at level 2 closes the open section and opens a new one; a section builder
    decides first whether it has anything to show and starts no section otherwise.
    """

    title: str
    parts: list[str] = field(default_factory=list)
    toc: list[tuple[int, str, str]] = field(default_factory=list)
    n_figures: int = 0
    figure_kinds: dict[str, int] = field(default_factory=dict)
    _open: bool = False

    def add(self, markup: str) -> None:
        """Append raw (trusted) HTML."""
        self.parts.append(markup)

    def heading(self, level: int, anchor: str, text: str, *, toc: bool = True) -> None:
        """An ``<h2>`` (opening a ``<section>``) or ``<h3>`` with an id; listed in the table of
        contents when ``toc``."""
        if level == 2:
            self.close_section()
            self.parts.append(f'<section class="part" data-section="{esc(anchor)}">')
            self._open = True
        self.parts.append(f'<h{level} id="{esc(anchor)}">{esc(text)}</h{level}>')
        if toc:
            self.toc.append((level, anchor, text))

    def close_section(self) -> None:
        """Close the open ``<section>`` (if any)."""
        if self._open:
            self.parts.append("</section>")
            self._open = False

    def para(self, text: Any, cls: str = "note") -> None:
        """A paragraph of escaped text (or :class:`Markup`)."""
        self.parts.append(f'<p class="{cls}">{esc(text)}</p>')

    def table_html(self, header: Sequence[Any], rows: Sequence[Sequence[Any]], *,
                   numeric: Sequence[int] = (), row_classes: Sequence[str] | None = None,
                   cls: str = "") -> str:
        """A table as HTML (see :meth:`table`)."""
        out = [f'<div class="scroll"><table class="{esc(cls)}"><thead><tr>']
        # headers wrap at spaces and after underscores (metric names), never inside words
        out += [f"<th>{esc(h).replace('_', '_<wbr>')}</th>" for h in header]
        out.append("</tr></thead><tbody>")
        for i, row in enumerate(rows):
            rc = row_classes[i] if row_classes else ""
            out.append(f'<tr class="{esc(rc)}">' if rc else "<tr>")
            for j, cell in enumerate(row):
                cc = ' class="num"' if j in numeric else (
                    ' class="arm"' if isinstance(cell, ArmCell) else "")
                out.append(f"<td{cc}>{esc(cell)}</td>")
            out.append("</tr>")
        out.append("</tbody></table></div>")
        return "".join(out)

    def table(self, header: Sequence[Any], rows: Sequence[Sequence[Any]], *,
              numeric: Sequence[int] = (), row_classes: Sequence[str] | None = None,
              cls: str = "") -> None:
        """A table; cells are escaped unless :class:`Markup`; ``numeric`` columns right-aligned."""
        self.parts.append(self.table_html(header, rows, numeric=numeric,
                                          row_classes=row_classes, cls=cls))

    def details(self, summary: Any, inner: str, *, cls: str = "") -> None:
        """A collapsible block (closed by default): ``summary`` escaped, ``inner`` HTML."""
        c = f' class="{esc(cls)}"' if cls else ""
        self.parts.append(f"<details{c}><summary>{esc(summary)}</summary>{inner}</details>")

    def items(self, texts: Sequence[Any], *, cls: str = "note") -> None:
        """A bulleted list of escaped texts (or :class:`Markup`)."""
        if texts:
            self.parts.append(f'<ul class="{esc(cls)}">'
                              + "".join(f"<li>{esc(t)}</li>" for t in texts) + "</ul>")

    def figure(self, kind: str, svg: str, caption: Any, *, task: str | None = None,
               wide: bool = False) -> str:
        """Wrap an ``<svg>`` in ``<figure class="plot" data-plot=kind>``; returns the HTML
        (append it with :meth:`add`, e.g. inside a ``<div class="figs">``)."""
        self.n_figures += 1
        self.figure_kinds[kind] = self.figure_kinds.get(kind, 0) + 1
        attrs = f' data-task="{esc(task)}"' if task is not None else ""
        cls = "plot wide" if wide else "plot"
        return (f'<figure class="{cls}" data-plot="{esc(kind)}"{attrs}>{svg}'
                f"<figcaption>{esc(caption)}</figcaption></figure>")

    def figures(self, items: Sequence[str]) -> None:
        """Append figures side by side."""
        if items:
            self.parts.append('<div class="figs">' + "".join(items) + "</div>")

    def render(self, header: str) -> str:
        """The whole page: head with inline CSS, header, table of contents, sections, footer."""
        self.close_section()
        toc = ['<nav class="toc" aria-label="Contents"><strong>Contents</strong><ol>']
        open_sub = False
        for level, anchor, text in self.toc:
            link = f'<a href="#{esc(anchor)}">{esc(text)}</a>'
            if level == 2:
                if open_sub:
                    toc.append("</ol></li>")
                    open_sub = False
                toc.append(f"<li>{link}")
                toc.append("</li>")
            else:
                if not open_sub:
                    toc.pop()  # reopen the previous <li>
                    toc.append("<ol>")
                    open_sub = True
                toc.append(f"<li>{link}</li>")
        if open_sub:
            toc.append("</ol></li>")
        toc.append("</ol></nav>")
        kinds = ", ".join(f"{k}: {v}" for k, v in sorted(self.figure_kinds.items()))
        footer = (f'<footer><p id="figure-count" data-figures="{self.n_figures}">'
                  f"This report contains {self.n_figures} plots ({esc(kinds)}). Generated by "
                  "optimlab; self-contained: no scripts, no external resources.</p></footer>")
        return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
                '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
                '<meta name="generator" content="optimlab report">\n'
                f'<meta name="optimlab-figures" content="{self.n_figures}">\n'
                f"<title>{esc(self.title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
                f"<main>\n{header}\n{''.join(toc)}\n" + "\n".join(self.parts)
                + f"\n{footer}\n</main>\n</body>\n</html>\n")
