"""The HTML report in a real headless Chromium, networking off: it loads from file://, logs no
console errors, fetches nothing, draws every plot, and shows hostile model answers as text."""

from __future__ import annotations

import os
from pathlib import Path

import headless_chromium
import pytest
from report_samples import HOSTILE_IMG, HOSTILE_SCRIPT, sample_inputs

from posttrain.report import write_report

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

if headless_chromium.chromium_binary() is None:
    # CI installs Debian's `chromium`; there a missing browser is a failure, not a skip.
    if os.environ.get("CI"):
        raise RuntimeError("chromium is required for the report browser tests (apt-get install chromium)")
    pytest.skip("chromium not installed (apt-get install chromium)", allow_module_level=True)

PROBES = {
    "title": "document.title",
    "sections": "[...document.querySelectorAll('section')].map(s => s.id)",
    "plots": """[...document.querySelectorAll('svg.plot')].map(s => {
        const r = s.getBoundingClientRect();
        return {cls: s.getAttribute('class'), w: r.width, h: r.height,
                shapes: s.querySelectorAll('path, rect, line, use').length,
                text: [...s.querySelectorAll('text')].map(t => t.textContent).join(' ')};
    })""",
    "scripts": "document.querySelectorAll('script').length",
    "images": "document.querySelectorAll('img, iframe, object, embed').length",
    "new_responses": "[...document.querySelectorAll('.new-response')].map(e => e.textContent)",
    "baseline_responses": "[...document.querySelectorAll('.baseline-response')].map(e => e.textContent)",
    "body_text": "document.body.innerText",
    "headline": "document.getElementById('headline').textContent",
}


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    inputs = sample_inputs()
    paths = write_report(out, **inputs)
    result = headless_chromium.load(paths["html"].as_uri(), PROBES)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "report.png").write_bytes(result.screenshot_png)
    return inputs, paths, result


def test_page_loads_offline_without_errors_or_fetches(page):
    _, paths, result = page
    assert result.errors == []
    assert result.requests == [paths["html"].as_uri()]  # the page itself, nothing else
    assert result.probes["title"] == "posttrain report · smollm2-ft"
    assert result.probes["sections"][:2] == ["verdict", "scores"]  # the verdict comes first
    assert result.probes["headline"].startswith("smollm2-ft-Q4_K_M vs smollm2-base-F16")
    assert result.screenshot_png.startswith(b"\x89PNG") and len(result.screenshot_png) > 50_000


def test_every_plot_is_drawn(page):
    _, _, result = page
    plots = {p["cls"].split()[-1]: p for p in result.probes["plots"]}
    assert set(plots) == {"plot-forest", "plot-quant", "plot-timings"}
    for name, p in plots.items():
        assert p["w"] > 200 and p["h"] > 100, name
        assert p["shapes"] > 5, name
    assert "mmlu · acc" in plots["plot-forest"]["text"]
    for quant in ("F16", "Q8_0", "Q4_K_M"):
        assert quant in plots["plot-quant"]["text"]
    assert "KL divergence vs F16" in plots["plot-quant"]["text"]
    assert "evaluate" in plots["plot-timings"]["text"]


def test_hostile_answers_are_text(page):
    _, _, result = page
    assert result.probes["scripts"] == 0 and result.probes["images"] == 0
    assert HOSTILE_SCRIPT in result.probes["new_responses"]
    assert HOSTILE_IMG in result.probes["baseline_responses"]
    assert "secret chain of thought" not in result.probes["body_text"]
    assert "8" in result.probes["new_responses"]  # the answer after the removed thinking stays


def test_the_browser_check_would_catch_a_broken_page(tmp_path):
    """The checks above can fail: a page with a CSP-blocked script and an outside image is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" '
                   "content=\"default-src 'none'\"></head><body><script>alert(1)</script>"
                   '<img src="https://cdn.example.com/x.png"></body></html>')
    result = headless_chromium.load(bad.as_uri(), {"images": "document.images.length"})
    assert any("Content Security Policy" in e for e in result.errors), result.console
    assert result.probes["images"] == 1


def test_index_page_links_each_report(tmp_path):
    from test_report_store import RUN_ID, populate

    from posttrain.report import report_from_store, write_index

    store, _ = populate(tmp_path)
    report = report_from_store(store, RUN_ID)["html"]
    index = write_index(store, tmp_path / "index.html")
    result = headless_chromium.load(index.as_uri(), {
        "links": "[...document.querySelectorAll('#leaderboard a')].map(a => a.href)",
        "rows": "document.querySelectorAll('#leaderboard tr').length",
    })
    assert result.errors == []
    assert result.probes["rows"] == 1 + 3  # header + one row per variant
    assert set(result.probes["links"]) == {report.resolve().as_uri()}
    (ARTIFACTS / "index.png").write_bytes(result.screenshot_png)
