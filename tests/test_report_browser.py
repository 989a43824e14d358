"""The report in a real browser: Debian's headless Chromium, offline, driven over the DevTools protocol.

Skipped where no Chromium is installed (``.ci/run`` installs Debian's ``chromium`` when apt is there).
"""

from __future__ import annotations

import struct

import pytest

from fixtures.browser import Browser, chromium_executable
from fixtures.reports import ODD_KEY, make_case, response
from fixtures.scripts import run

EXECUTABLE = chromium_executable()
pytestmark = pytest.mark.skipif(EXECUTABLE is None, reason="no Chromium on PATH: apt-get install chromium "
                                                          "(.ci/run does it where apt is available)")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    case = make_case(tmp_path_factory.mktemp("browser-case"))
    output = case.root / "report"
    assert run("report", ["--scores", str(case.scores), "--frame-scores", str(case.run), "--annotations",
                          str(case.annotations), "--frames", str(case.frames), "--output", str(output),
                          "--top-k", "3", "--max-explanations", "6"]) == 0
    return case, output


@pytest.fixture(scope="module")
def browser():
    instance = Browser(EXECUTABLE)
    yield instance
    instance.close()


def _column(page, index: int) -> list[str]:
    return page.evaluate(f"Array.from(document.querySelectorAll('#videos tbody tr'))"
                         f".map(row => row.cells[{index}].getAttribute('data-value'))")


def _offline(page) -> None:
    log = page.settle()
    assert log.errors() == []
    assert log.requests and all(url.startswith(("file:", "data:")) for url in log.requests), log.requests


def test_the_harness_sees_errors_and_network_use(browser, tmp_path):
    # A page with every fault the report's pages must not have: the checks below would catch each.
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><head><meta charset="utf-8"><title>bad</title></head><body>'
                   '<img src="http://example.com/a.png"><script>console.error("boom"); notDefined();</script>'
                   "</body></html>")
    page = browser.open(bad)
    outcome = page.evaluate("fetch('http://example.com/x.png').then(() => 'loaded', () => 'blocked')")
    assert outcome == "blocked"  # the network is off
    errors = " | ".join(page.settle().errors())
    assert "boom" in errors and "notDefined" in errors
    assert "http://example.com/a.png" in page.log.requests


def test_index_loads_without_errors_and_sorts_by_any_column(browser, report, tmp_path):
    case, output = report
    page = browser.open(output / "index.html")
    _offline(page)
    keys = _column(page, 0)
    assert sorted(keys) == sorted(case.keys())
    headers = page.evaluate("Array.from(document.querySelectorAll('#videos th')).map(h => h.textContent)")
    assert headers == ["video", "class", "frames", "segments", "flagged", "max score", "mean score", "AUC"]
    maxima = [float(value) for value in _column(page, 5)]
    assert maxima == sorted(maxima, reverse=True)  # as written

    page.click("#videos th:nth-child(6) button")  # max score: ascending, then descending
    assert [float(value) for value in _column(page, 5)] == sorted(maxima)
    page.click("#videos th:nth-child(6) button")
    assert [float(value) for value in _column(page, 5)] == sorted(maxima, reverse=True)
    assert page.evaluate("document.querySelector('#videos th:nth-child(6)').getAttribute('aria-sort')") == "descending"

    page.click("#videos th:nth-child(1) button")  # by name
    assert _column(page, 0) == sorted(keys, key=str.lower)
    page.click("#videos th:nth-child(3) button")  # frames
    assert [int(value) for value in _column(page, 2)] == sorted(int(value) for value in _column(page, 2))
    for _ in range(2):  # AUC, both ways: the normal video (no AUC) stays last
        page.click("#videos th:nth-child(8) button")
        aucs = _column(page, 7)
        assert aucs[-1] == "" and "" not in aucs[:-1]
    assert float(aucs[0]) > float(aucs[1])
    _offline(page)
    page.screenshot(tmp_path / "index.png")
    width, height = struct.unpack(">II", (tmp_path / "index.png").read_bytes()[16:24])
    assert width == 1280 and height >= 300

    # The link of a key with '#', '<', '&' reaches its page.
    row = _column(page, 0).index(ODD_KEY) + 1
    page.click(f"#videos tbody tr:nth-child({row}) a")
    page.wait_for("Page.loadEventFired")
    assert page.evaluate("document.querySelector('h1').textContent") == ODD_KEY


def test_video_page_shows_the_plot_and_the_explanations(browser, report, tmp_path):
    case, output = report
    key = "Arrest007_x264"
    page = browser.open(output / "videos" / f"{key}.html")
    _offline(page)
    png = (output / "videos" / f"{key}.png").read_bytes()
    width, height = struct.unpack(">II", png[16:24])
    assert page.evaluate("(() => { const i = document.querySelector('#plot img'); "
                         "return [i.complete, i.naturalWidth, i.naturalHeight]; })()") == [True, width, height]
    shown = page.evaluate("document.querySelector('#plot img').getBoundingClientRect().width")
    assert shown > 600  # drawn at a readable size, not collapsed
    images = page.evaluate("Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
    assert len(images) > 10 and all(images)
    articles = page.evaluate("Array.from(document.querySelectorAll('article.segment')).map(a => "
                             "[a.id, a.querySelectorAll('.frames img').length, a.querySelector('pre').textContent])")
    step1 = case.step1(key)
    assert len(articles) == 6
    for identifier, frames, text in articles:
        centre = identifier.removeprefix("segment-")
        assert frames == 8
        # The model's text, markup included, is shown as text (the control character as U+FFFD) ...
        assert text == response(int(centre), step1[centre]["score"]).replace("\x01", "\ufffd")
    # ... and never ran as code.
    assert page.evaluate("typeof window.__injected") == "undefined"
    assert page.evaluate("document.querySelectorAll('script').length") == 0
    target = page.evaluate("document.querySelector('#top a.thumb').getAttribute('href')")
    page.click("#top a.thumb")  # a top segment's thumbnail leads to its explanation
    assert page.evaluate("location.hash") == target and target.removeprefix("#") in [a[0] for a in articles]
    page.screenshot(tmp_path / "video.png")
