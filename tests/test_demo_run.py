"""`posttrain demo` end to end: watcher, Trainer + callback, pipeline, report — the README's first command."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psutil
import pytest

from posttrain.pipeline import read_pid_file


@pytest.mark.slow
def test_demo_reports_a_significant_gain_for_every_variant(tmp_path):
    workdir = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "posttrain", "demo", "--workdir", str(workdir)],
                          capture_output=True, text=True, timeout=1500,
                          env={**os.environ, "COLUMNS": "1000"})  # no wrapping: sentences stay on one line
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report_lines = [line for line in proc.stdout.splitlines() if line.startswith("report: ")]
    assert len(report_lines) == 1
    report = workdir.joinpath(report_lines[0].removeprefix("report: ").strip())
    assert report.is_file() and report.name == "report.html"
    doc = json.loads((report.parent / "compare.json").read_text())
    comparisons = [c for c in doc["comparisons"] if c["metric"] == "acc"]
    # One comparison per variant (F16, Q8_0, Q4_K_M) against the early checkpoint.
    assert sorted(c["new_label"].rsplit("-", 1)[-1] for c in comparisons) == ["F16", "Q4_K_M", "Q8_0"]
    for c in comparisons:
        assert c["n"] == 300
        assert c["verdict"] == "better", c["sentence"]
        assert c["new"]["mean"] - c["baseline"]["mean"] >= 0.30
        assert c["p_adjusted"] < 0.01
        assert c["sentence"] in proc.stdout  # the demo prints every verdict
    # The callback saw the watcher and left final_model to it; the watcher is stopped afterwards.
    assert "callback: watcher" in proc.stdout + proc.stderr  # a line of the progress display (stderr)
    info = read_pid_file(workdir / "home")
    assert info is None or not info.alive


@pytest.mark.slow
def test_demo_exits_within_30_s_when_its_watcher_is_killed(tmp_path):
    # The first version waited forever on a watcher that had died (issue 10). Kill it mid-run.
    import time

    from polling import wait_for

    from posttrain._files import read_json_file
    from posttrain.pipeline import STATUS_FILE

    workdir = tmp_path / "demo"
    home = workdir / "home"
    proc = subprocess.Popen([sys.executable, "-m", "posttrain", "demo", "--workdir", str(workdir), "--steps", "40"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "COLUMNS": "1000"})
    try:
        def busy() -> bool:
            doc = read_json_file(home / STATUS_FILE) or {}
            return any(v.get("step") for v in (doc.get("current") or {}).values())

        # Not past the demo's own end: a demo that failed early has nothing to wait for.
        assert wait_for(lambda: busy() or proc.poll() is not None, 600), "the watcher never started a step"
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        info = read_pid_file(home)
        psutil.Process(info.pid).kill()  # kill -9 (TerminateProcess on Windows)
        killed = time.monotonic()
        out, _ = proc.communicate(timeout=60)
        waited = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0, out[-3000:]
    assert waited < 30, f"the demo took {waited:.0f} s to notice"
    assert "the demo's watcher stopped while processing" in out
    assert "is no longer running" in out
    assert "last lines of" in out and "watcher started" in out  # the watcher's log, shown
