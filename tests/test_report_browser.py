"""The report page in a real headless browser (Chromium through Playwright), at a laptop's
1400 px width.

Checks that the page loads from disk without console errors, page errors, dialogs or network
requests, that every ``figure.plot`` holds a visible ``<svg>``, that the number of figures is
the one the page states, and the title; and that a person can read it: no table scrolls
sideways, no section is empty (each holds a table, figure, list or collapsible block), no raw
JSON block (configurations are collapsed, exact ones in results.json), every collapsible block
opens. Skips when Playwright or Chromium is missing, unless ``OPTIMLAB_REQUIRE_BROWSER=1``
(CI) turns the skip into a failure.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_report import ENV, EVIL_TITLE, STUDY, make_record, make_records

REQUIRE = os.environ.get("OPTIMLAB_REQUIRE_BROWSER") == "1"


def _unavailable(reason: str) -> None:
    if REQUIRE:
        pytest.fail(f"{reason} (OPTIMLAB_REQUIRE_BROWSER=1)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed")
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        _unavailable("no chromium executable on PATH")
    with sync_playwright() as pw:
        try:
            b = pw.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        except Exception as e:  # a broken install: skip (or fail under CI)
            _unavailable(f"cannot launch chromium: {e}")
        yield b
        b.close()


#: A laptop screen's width (CSS pixels): the report must read without sideways scrolling.
WIDTH = 1400


def _records(kind: str) -> list[Any]:
    if kind == "full":
        return make_records()
    if kind == "many-arms":  # long labels, many arms and metrics: the widest tables
        return [make_record("mlp-digits", f"adamw lr={0.001 * (i + 1):g} weight_decay="
                            f"{0.01 * i:g} schedule=cosine-with-warmup", "adamw", seed,
                            lr=0.001 * (i + 1), rate=0.01 + 0.003 * i,
                            extra_hp={"weight_decay": 0.01 * i}, schedule="cosine")
                for i in range(14) for seed in (0, 1)]
    if kind == "all-diverged":
        recs = [make_record("mlp-digits", "sgd lr=10", "sgd", s, status="diverged")
                for s in (0, 1)]
        recs.append(make_record("quadratic", "adam", "adam", 0, status="failed", error="boom"))
        return recs
    return [make_record("rosenbrock", "adam", "adam", 0)]


@pytest.mark.parametrize("kind", ["full", "many-arms", "all-diverged", "single"])
def test_page_in_browser(browser: Any, tmp_path: Path, kind: str) -> None:
    from optimlab.lab.report import write_report

    index = write_report(_records(kind), tmp_path, title=EVIL_TITLE, study=STUDY,
                         environment=ENV)
    page = browser.new_page(viewport={"width": WIDTH, "height": 900})
    problems: list[str] = []
    requests: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
            if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"pageerror: {e}"))
    page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(index.resolve().as_uri(), wait_until="load")

    assert page.title() == EVIL_TITLE
    assert problems == []
    assert all(url.startswith(("file:", "data:")) for url in requests), requests
    assert page.evaluate("document.scripts.length") == 0

    boxes = page.eval_on_selector_all(
        "figure.plot",
        """figs => figs.map(f => {
            const s = f.querySelector(':scope > svg');
            if (!s) return null;
            const r = s.getBoundingClientRect();
            return [r.width, r.height, !!f.querySelector('figcaption'),
                    f.getAttribute('data-plot')];
        })""")
    assert boxes, "no figures"
    for box in boxes:
        assert box is not None, "a figure.plot without an svg"
        width, height, caption, kind_ = box
        assert width > 50 and height > 50, box
        assert caption and kind_
    stated = page.get_attribute("#figure-count", "data-figures")
    assert stated is not None and int(stated) == len(boxes)
    meta = page.get_attribute('meta[name="optimlab-figures"]', "content")
    assert meta is not None and int(meta) == len(boxes)
    # the table of contents links resolve to sections
    missing = page.evaluate("""() => [...document.querySelectorAll('nav.toc a')]
        .map(a => a.getAttribute('href').slice(1))
        .filter(id => !document.getElementById(id))""")
    assert missing == []
    _readable(page)
    if kind == "full":
        kinds = {b[3] for b in boxes}
        assert {"profile-work", "profile-time", "loss-steps", "loss-time", "trajectories",
                "sensitivity", "best-work", "series", "task-work", "batch-steps", "memory",
                "schedules"} <= kinds
        # the malicious label is shown as text, not interpreted
        assert '<script>alert(1)</script> & "quotes"' in page.inner_text("body")
    page.close()


def _readable(page: Any) -> None:
    """The layout checks of a page open at :data:`WIDTH` pixels, every collapsible block
    opened first (their tables must fit too)."""
    page.eval_on_selector_all("details", "ds => ds.forEach(d => d.open = true)")
    assert page.evaluate("document.documentElement.scrollWidth") <= WIDTH
    wide = page.eval_on_selector_all(
        "table",
        """ts => ts.map(t => {
            const box = t.parentElement;
            return [box.className, box.scrollWidth, box.clientWidth,
                    t.getBoundingClientRect().right, t.className];
        }).filter(([cls, sw, cw, right]) => sw > cw || right > window.innerWidth)""")
    assert wide == [], f"tables wider than their container at {WIDTH} px: {wide}"
    empty = page.eval_on_selector_all(
        "main > section",
        """ss => ss.filter(s => !s.querySelector('table, figure, ul, details'))
                 .map(s => s.querySelector('h2') ? s.querySelector('h2').textContent : '?')""")
    assert empty == [], f"empty sections: {empty}"
    # every h2 opens its own section (so the check above covers every section)
    assert page.evaluate("document.querySelectorAll('main > section > h2').length") == \
        page.evaluate("document.querySelectorAll('h2').length")
    raw = page.eval_on_selector_all(
        "pre, code",
        """els => els.map(e => e.textContent.trim())
                   .filter(t => /^[\\[{]/.test(t) && /[\\]}]$/.test(t))""")
    assert raw == [], f"raw JSON on the page: {raw[:3]}"
