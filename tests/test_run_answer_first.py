"""The first ten minutes (issue 29, item 4), through the real CLI at COLUMNS=80 on a real tiny run:
`posttrain run NEW --baseline BASE` and `watch --once` end with the verdict sentences and then the
report's path; the step table reads one line per step; `posttrain runs` is one line per run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_evaluate_offline import write_hellaswag
from test_terminal_output import posttrain

from posttrain.compare import verdict_sentences
from posttrain.contracts import RunLayout
from posttrain.store import Store

pytestmark = pytest.mark.slow

STEPS = ("detect", "convert", "register", "baseline", "evaluate", "evaluate_baseline", "compare", "report", "track",
         "notify")


def flat(text: str) -> str:
    """Text as words: a sentence wrapped at 80 columns reads the same as on one line."""
    return " ".join(text.split())


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_spm) -> dict:
    from posttrain.tiny import make_tiny

    root = tmp_path_factory.mktemp("answer")
    write_hellaswag(root / "data", n=6)
    home = root / "home"
    settings = ["--quant", "f16", "--tasks", "hellaswag", "--limit", "6", "--data-dir", root / "data",
                "--baseline", make_tiny(root / "base", seed=3), "--home", home]
    proc = posttrain("run", tiny_spm, *settings, cwd=root, home=home)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run,) = Store(home / "posttrain.db").query("SELECT id, run_dir FROM runs")
    run_dir = Path(run["run_dir"])
    return {"root": root, "home": home, "settings": settings, "proc": proc, "run_id": run["id"],
            "run_dir": run_dir, "sentences": verdict_sentences(RunLayout(run_dir).compare_json)}


def assert_ends_with_the_answer(stdout: str, sentences: list[str], run_dir: Path, after: str) -> None:
    """The last line is the report's path; right before it, after the line matching `after`, the
    verdict sentences and nothing else."""
    lines = stdout.rstrip().splitlines()
    assert lines[-1] == f"report: {RunLayout(run_dir).report_html}", stdout
    start = max(i for i, line in enumerate(lines) if re.search(after, line))
    assert flat("\n".join(lines[start + 1:-1])) == flat(" ".join(sentences)), stdout


def test_run_ends_with_the_verdict_sentences_then_the_report(made):
    assert made["sentences"], "the comparison wrote no sentence"
    assert all(s.endswith(".") for s in made["sentences"])
    assert_ends_with_the_answer(made["proc"].stdout, made["sentences"], made["run_dir"], after=r"^\s*notify\s")


def test_the_step_table_fits_80_columns_one_line_per_step(made):
    stdout = made["proc"].stdout
    lines = [line for line in stdout.splitlines() if not line.startswith("report: ")]
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    # Units in the headers, bare numbers in the cells: each step's name, status, seconds and MB on one line.
    assert re.search(r"^\s*step\s+status\s+time s\s+peak MB\s+note\s*$", stdout, re.M), stdout
    for step in STEPS:
        assert re.search(rf"^\s*{step}\s+(done|skipped|reused)\b", stdout, re.M), (step, stdout)
    for step in ("convert", "evaluate", "evaluate_baseline", "compare"):
        assert re.search(rf"^\s*{step}\s+done\s+\d+\.\d\s+\d+\s*$", stdout, re.M), (step, stdout)
    assert not re.search(r"\d (s|MB)\b", stdout)  # no "13.8 s" / "562.2 MB" values
    # The note (why register was skipped) is the last column, wrapped under itself when long.
    assert re.search(r"^\s*register\s+skipped\s+(\S.*)?skipped: Ollama", stdout, re.M), stdout


def test_runs_lists_one_line_per_run(made):
    proc = posttrain("runs", "--home", made["home"], cwd=made["root"], home=made["home"])
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), proc.stdout
    (row,) = [line for line in lines if made["run_id"] in line]
    assert "succeeded" in row and "F16" in row, proc.stdout
    # The row's verdicts: how many comparisons came out each way.
    verdicts = re.search(r"(\d+ (better|worse|n\.s\.)(, )?)+\s*$", row)
    assert verdicts, row
    header = next(i for i, line in enumerate(lines) if re.match(r"^\s*run\s+", line))
    body = [line for line in lines[header + 1:] if line.strip() and not set(line.strip()) <= set("━─ ")]
    assert body[0] == row
    assert all(not line.startswith(" " * 5) for line in body), proc.stdout  # no wrapped continuation lines


def test_watch_once_ends_with_the_same_answer(made, tiny_spm):
    # The checkpoint `run` just processed: the watcher's run has the same id, its steps are reused.
    proc = posttrain("watch", tiny_spm.parent, "--pattern", tiny_spm.name, "--once", *made["settings"],
                     cwd=made["root"], home=made["home"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(rf"^{re.escape(str(tiny_spm))}: run {made['run_id']} succeeded$", proc.stdout, re.M), proc.stdout
    assert_ends_with_the_answer(proc.stdout, made["sentences"], made["run_dir"], after=r": run \S+ succeeded$")
