"""Render the report in headless Chromium (Debian's ``chromium``; `make install` installs it when
missing): every figure loads, no section is empty, the headline is on the first screen. A
full-page screenshot is kept in the test's tmp dir and in ``artifacts/report-screenshot.png``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _browser_or_skip():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium; `make install` does it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright not installed (pip install -e '.[test]')")
    return sync_playwright


def test_the_report_renders_in_chromium(report_html, tmp_path):
    sync_playwright = _browser_or_skip()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(report_html.resolve().as_uri(), wait_until="load")
            images = page.eval_on_selector_all(
                "img", "els => els.map(e => [e.complete, e.naturalWidth, e.alt])"
            )
            sections = page.eval_on_selector_all(
                "section",
                """els => els.map(s => {
                    const heading = s.querySelector('h2, summary');
                    const body = s.textContent.replace(heading ? heading.textContent : '', '');
                    return [s.id, body.trim().length,
                            s.querySelectorAll('img, table, .card, pre').length];
                })""",
            )
            headline_top = page.eval_on_selector("#headline", "e => e.getBoundingClientRect().top")
            shot = tmp_path / "report-screenshot.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "report-screenshot.png")
    assert len(images) >= 9
    for complete, width, alt in images:
        assert complete and width > 0, f"figure did not load: {alt}"
    assert len(sections) == 12
    for section_id, text_length, content in sections:
        assert text_length > 0 and content > 0, f"empty section: {section_id}"
    assert headline_top < 900
    assert shot.stat().st_size > 50_000
