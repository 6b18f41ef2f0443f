"""report.md / report.json / report.html from realistic inputs: same numbers as the compare JSON,
untrusted text escaped, thinking never shown, files written atomically."""

from __future__ import annotations

import json
import re
from html import escape
from html.parser import HTMLParser
from pathlib import Path

import pytest
from report_samples import HOSTILE_IMG, HOSTILE_SCRIPT, THINKING, sample_inputs

from posttrain.errors import PosttrainError
from posttrain.report import REPORT_SCHEMA, write_report

NUM = r"([+-]?\d+\.\d+)"


class _Tags(HTMLParser):
    """Counts the elements a browser's parser would create, and collects attribute names."""

    def __init__(self):
        super().__init__()
        self.tags: dict[str, int] = {}
        self.attrs: set[str] = set()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1
        for name, value in attrs:
            self.attrs.add(name)
            if name in ("src", "href") or (name == "xlink:href"):
                self.urls.append(value or "")


def _tags(html: str) -> _Tags:
    p = _Tags()
    p.feed(html)
    return p


@pytest.fixture()
def report(tmp_path) -> tuple[dict, dict[str, Path]]:
    inputs = sample_inputs()
    return inputs, write_report(tmp_path / "run", **inputs)


def _md_verdict_rows(md: str) -> dict[tuple[str, str, str], tuple[float, ...]]:
    rows = {}
    pattern = re.compile(rf"^\| (\S+) \| (\S+) \| (\S+) \| [a-z ]+ \| {NUM} \| \[{NUM}, {NUM}\] \| {NUM} \| (\d+) \|$",
                         re.M)
    for m in pattern.finditer(md):
        task, metric, flt = (g.replace("\\_", "_") for g in m.group(1, 2, 3))
        rows[(task, metric, flt)] = tuple(float(x) for x in m.group(4, 5, 6, 7, 8))
    return rows


def test_markdown_round_trips_the_compare_numbers(report):
    inputs, paths = report
    md = paths["md"].read_text()
    rows = _md_verdict_rows(md)
    comparisons = inputs["compare"]["comparisons"]
    assert len(rows) == len(comparisons)
    for c in comparisons:
        diff, lo, hi, p_adj, n = rows[(c["task"], c["metric"], c["filter"])]
        assert diff == pytest.approx(c["diff"]["mean"], abs=5e-5)
        assert (lo, hi) == pytest.approx(tuple(c["diff"]["ci"]), abs=5e-5)
        assert p_adj == pytest.approx(c["p_adjusted"], abs=5e-5)
        assert n == c["n"]
        assert f"- {c['sentence']}" in md
    # The baseline row of each score table carries the compare document's baseline mean and CI.
    for c in comparisons:
        label = c["baseline_label"]
        m = re.search(rf"\| {re.escape(label)} \| baseline \| {NUM} \| \[{NUM}, {NUM}\] \| (\d+) \|", md)
        assert m, label
    mmlu = comparisons[0]
    section = md.split("**mmlu · acc**")[1]
    m = re.search(rf"\| smollm2-base-F16 \| baseline \| {NUM} \| \[{NUM}, {NUM}\] \| (\d+) \|", section)
    assert float(m.group(1)) == pytest.approx(mmlu["baseline"]["mean"], abs=5e-5)
    assert (float(m.group(2)), float(m.group(3))) == pytest.approx(tuple(mmlu["baseline"]["ci"]), abs=5e-5)
    assert md.count("**smollm2-ft-Q4_K_M vs smollm2-base-F16: 1 better, 1 worse, 1 no significant difference") == 1


def test_json_embeds_the_compare_document_unchanged(report):
    inputs, paths = report
    doc = json.loads(paths["json"].read_text())
    assert doc["schema"] == REPORT_SCHEMA == "posttrain.report/1"
    assert doc["compare"] == inputs["compare"]
    assert doc["run"]["id"] == inputs["run"]["id"]
    assert doc["summary"]["status"] == "worse"
    assert doc["summary"]["counts"] == {"worse": 1, "better": 1, "no significant difference": 1}
    assert [v["sha256"] for v in doc["variants"]] == [v["sha256"] for v in inputs["variants"]]
    by_key = {(e["label"], e["task"]): e for e in doc["evals"]}
    for e in inputs["evals"]:
        got = by_key[(e["label"], e["task"])]
        assert got["value"] == e["value"] and got["ci"] == e["ci"] and got["n"] == e["n"]


def test_html_shows_hostile_answers_as_text_and_hides_thinking(report):
    _, paths = report
    html = paths["html"].read_text()
    tags = _tags(html)
    assert "script" not in tags.tags and "img" not in tags.tags and "iframe" not in tags.tags
    assert not any(a.startswith("on") for a in tags.attrs)
    assert escape(HOSTILE_SCRIPT, quote=False) in html
    assert escape(HOSTILE_IMG, quote=False) in html
    assert "&lt;b&gt;apples&lt;/b&gt;" in html  # markup in a question is text too
    for path in paths.values():
        text = path.read_text()
        assert "secret chain of thought" not in text or path.suffix == ".json"
    # Only the hash of the removed thinking is shown.
    import hashlib
    assert hashlib.sha256(THINKING.encode()).hexdigest() in html


def test_html_is_self_contained(report):
    _, paths = report
    html = paths["html"].read_text()
    tags = _tags(html)
    assert tags.tags.get("svg") == 3  # forest, quantization, timings
    assert tags.tags.get("link", 0) == 0
    assert all(u.startswith("#") for u in tags.urls), tags.urls  # only in-page references
    assert "default-src 'none'" in html
    assert not re.search(r"https?://(?!www\.w3\.org/)", html)  # SVG namespaces are names, not fetches


def test_crafted_task_names_cannot_break_out_of_plots_or_tables(tmp_path):
    inputs = sample_inputs()
    evil = "--><script>alert(2)</script><!--"
    inputs["compare"]["comparisons"][0]["task"] = evil
    inputs["compare"]["new"]["label"] = '"><img src=x onerror=alert(3)>'
    inputs["steps"][0]["name"] = "<svg onload=alert(4)>"
    paths = write_report(tmp_path, **inputs)
    html = paths["html"].read_text()
    tags = _tags(html)
    assert "script" not in tags.tags and "img" not in tags.tags
    assert tags.tags.get("svg") == 3
    assert not any(a.startswith("on") for a in tags.attrs)
    assert "<!--" not in html  # matplotlib's label comments are stripped from the SVGs
    md = paths["md"].read_text()
    assert "<script>" not in md and "<img" not in md and "&lt;script&gt;" in md


def test_failed_run_without_comparison_reports_the_failed_stage(tmp_path):
    inputs = sample_inputs()
    inputs["compare"] = {}
    inputs["run"]["status"] = "failed"
    inputs["steps"][1] = {"name": "convert", "status": "failed", "wall_s": 4.2, "peak_rss_bytes": 900_000_000,
                          "error": "convert_hf_to_gguf.py exited 1: Architecture 'FooForCausalLM' not supported"}
    inputs["steps"] = inputs["steps"][:2]
    inputs["failures"] = [{"step": "convert", "error": inputs["steps"][1]["error"]}]
    inputs["evals"] = []
    paths = write_report(tmp_path, **inputs)
    md, html = paths["md"].read_text(), paths["html"].read_text()
    assert "**Run failed at stage convert.**" in md
    assert "FooForCausalLM" in md and "FooForCausalLM" in html
    doc = json.loads(paths["json"].read_text())
    assert doc["summary"]["status"] == "failed" and doc["compare"] == {}
    assert doc["failures"] == [{"step": "convert", "error": inputs["failures"][0]["error"]}]


def test_wrong_compare_schema_is_refused_and_nothing_is_written(tmp_path):
    inputs = sample_inputs()
    inputs["compare"]["schema"] = "posttrain.compare/99"
    with pytest.raises(PosttrainError, match="compare/1"):
        write_report(tmp_path / "out", **inputs)
    assert not any((tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else True


def test_rewrite_replaces_files_and_leaves_no_temporaries(tmp_path):
    inputs = sample_inputs()
    write_report(tmp_path, **inputs)
    inputs["compare"]["comparisons"][2]["sentence"] = "Rewritten reading."
    paths = write_report(tmp_path, **inputs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "report.json", "report.md"]
    assert "Rewritten reading." in paths["md"].read_text()
    assert paths["html"].stat().st_mode & 0o777 == 0o644


def test_several_variants_against_one_baseline_get_their_own_rows(tmp_path):
    inputs = sample_inputs()
    extra = json.loads(json.dumps(inputs["compare"]["comparisons"][0]))
    extra["new_label"] = "smollm2-ft-Q8_0"
    extra["diff"]["mean"] = -0.0122
    extra["sentence"] = "smollm2-ft-Q8_0 loses 1.2 points on mmlu."
    inputs["compare"]["comparisons"].append(extra)
    inputs["compare"]["new"]["label"] = "smollm2-ft-Q4_K_M, smollm2-ft-Q8_0"
    paths = write_report(tmp_path, **inputs)
    md = paths["md"].read_text()
    assert "| new | task |" in md
    assert re.search(r"^\| smollm2-ft-Q8_0 \| mmlu \| acc \| none \| worse \| -0\.0122 \|", md, re.M)
    assert re.search(r"^\| smollm2-ft-Q4_K_M \| mmlu \| acc \| none \| worse \| -0\.0175 \|", md, re.M)
