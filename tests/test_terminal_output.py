"""What a user sees in the terminal (issue 22, and the terminal part of issue 11), through the real CLI
in a subprocess at COLUMNS=80: one progress display per long command and no library noise, tables
whose columns keep whole words, p-values that never read 0.0000, one-line usage errors, Ctrl-C → 130,
and --out never replacing a file posttrain did not write."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from platforms import posix_only
from rich.console import Console
from test_evaluate_offline import SUBJECTS, write_hellaswag, write_mmlu_csv

from posttrain._numbers import fmt_p
from posttrain._terminal import fit_table
from posttrain.compare import compare_family, render_table
from posttrain.compare._items import ItemResult
from posttrain.errors import PosttrainError
from posttrain.evaluate import evaluate, select
from posttrain.store import Store

# What the libraries' own progress output looks like: tqdm bars, datasets' split messages, lm-eval's
# tokenizing bar, git's complaint when lm-eval asks it for a commit hash outside a repository.
LIBRARY_NOISE = re.compile(r"it/s\]|examples/s|\d+%\|.*\||Generating \w+ split|Tokenizing inputs|^Map:|fatal: not a git"
                           r"|Traceback", re.M)


def posttrain(*args: object, cwd: Path, home: Path, **popen) -> subprocess.CompletedProcess | subprocess.Popen:
    env = {**os.environ, "POSTTRAIN_HOME": str(home), "COLUMNS": "80"}
    cmd = [sys.executable, "-m", "posttrain", *map(str, args)]
    if popen:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def assert_table_readable(text: str, words: set[str]) -> None:
    """Every line fits 80 columns, and each word that a cell holds appears whole on one line (a column
    narrower than its longest word would split it, as "hellaswa" / "g")."""
    # Paths are printed whole on their own lines, to be copied; the rest is the table.
    lines = [line for line in text.splitlines() if not re.match(r"(results|report|manifest|wrote): ", line)]
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    tokens = {t for line in lines for t in line.split()}
    assert words <= tokens, words - tokens


def named_log(stderr: str) -> Path:
    (path,) = re.findall(r"library output: (\S+)", stderr)
    return Path(path)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench")
    write_mmlu_csv(root)
    write_hellaswag(root, n=6)
    return root


# ---------------------------------------------------------------- eval: display, noise, table, n per task


def test_eval_shows_one_display_reaching_100_percent_no_library_output_and_a_readable_table(
        tiny_gguf, data_dir, tmp_path):
    home = tmp_path / "home"
    proc = posttrain("eval", tiny_gguf["F16"], "--tasks", "mmlu,hellaswag", "--data-dir", data_dir,
                     "--per-subject", "1", "--limit", "4", "--home", home, cwd=tmp_path, home=home)
    assert proc.returncode == 0, proc.stderr
    assert not LIBRARY_NOISE.search(proc.stdout + proc.stderr), proc.stderr
    # One finished line per task, each at 100 % of the requests it announced.
    done = re.findall(r"^✓ (\w+)\s+(\d+)/(\d+) requests \(100 %\)", proc.stderr, re.M)
    assert [t for t, _, _ in done] == ["mmlu", "hellaswag"], proc.stderr
    assert all(a == b and int(a) > 0 for _, a, b in done)
    # What the libraries printed went to the log file the display names, not to the terminal.
    log = named_log(proc.stderr)
    assert log.is_file() and log.stat().st_size > 0
    # --per-subject applies to MMLU only (1 per subject); HellaSwag keeps --limit 4, not 1 item.
    rows = {task: int(n) for task, n in re.findall(r"^\s*(mmlu|hellaswag)\s.*?\d–\d\.\d+\s+(\d+)", proc.stdout, re.M)}
    assert rows == {"mmlu": len(SUBJECTS), "hellaswag": 4}, proc.stdout
    assert_table_readable(proc.stdout, {"mmlu", "hellaswag", "acc_norm", "task", "metric", "n"})


def test_verbose_brings_the_library_output_back(tiny_gguf, data_dir, tmp_path):
    home = tmp_path / "home"
    proc = posttrain("eval", tiny_gguf["F16"], "--tasks", "hellaswag", "--data-dir", data_dir, "--limit", "2",
                     "--home", home, "--verbose", cwd=tmp_path, home=home)
    assert proc.returncode == 0, proc.stderr
    assert "library output:" not in proc.stderr
    assert LIBRARY_NOISE.search(proc.stderr), proc.stderr  # lm-eval's own bars and messages


def test_per_subject_cuts_only_tasks_with_subjects_and_bad_sizes_fail_before_any_data(tiny_gguf, tmp_path):
    single = {"hellaswag": 100}
    assert select(single, limit=None, per_subject=2, seed=0).indices is None  # all items
    assert len(select(single, limit=5, per_subject=2, seed=0).indices["hellaswag"]) == 5
    subjects = {"mmlu_a": 10, "mmlu_b": 10}
    both = select(subjects, limit=5, per_subject=2, seed=0)
    assert both.mode == "per_subject" and {k: len(v) for k, v in both.indices.items()} == {"mmlu_a": 2, "mmlu_b": 2}
    # Refused before the data is looked at: the data folder here does not even exist.
    with pytest.raises(PosttrainError, match="--limit must be a positive integer"):
        evaluate(tiny_gguf["F16"], ["hellaswag"], data_dir=tmp_path / "missing", limit=0,
                 store=Store(tmp_path / "db"), out_dir=tmp_path / "out")


# ---------------------------------------------------------------- run: the same display over the pipeline


def test_run_shows_one_line_per_stage_the_evaluation_at_100_percent_and_fits_80_columns(tiny_spm, data_dir, tmp_path):
    home = tmp_path / "home"
    proc = posttrain("run", tiny_spm, "--quant", "f16", "--tasks", "hellaswag", "--limit", "3",
                     "--data-dir", data_dir, "--home", home, cwd=tmp_path, home=home)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not LIBRARY_NOISE.search(proc.stdout + proc.stderr), proc.stderr
    finished = re.findall(r"^✓ (\w+)", proc.stderr, re.M)
    assert {"detect", "convert", "evaluate", "report"} <= set(finished), proc.stderr
    # The evaluation runs in a child process; its counts still reach the display, up to 100 %.
    assert re.search(r"^✓ evaluate\s+(\d+)/\1 requests \(100 %\)", proc.stderr, re.M), proc.stderr
    assert named_log(proc.stderr).is_file()
    assert_table_readable(proc.stdout, {"evaluate_baseline", "step", "status", "skipped"})


# ---------------------------------------------------------------- usage errors and Ctrl-C


def test_a_usage_error_is_one_line_and_exit_2(tmp_path):
    proc = posttrain("eval", "--limit", "3", cwd=tmp_path, home=tmp_path / "home")
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: ") and "model" in line and "posttrain eval --help" in line
    assert "Usage:" not in proc.stderr and "╭" not in proc.stderr


@posix_only
@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT cannot be sent to a child process on Windows")
def test_ctrl_c_exits_130_with_one_line_and_nothing_half_written(tiny_gguf, tmp_path):
    data = tmp_path / "bench"
    write_hellaswag(data, n=3000)  # far more than can finish before the interrupt
    home = tmp_path / "home"
    # The child starts with Ctrl-C as a terminal gives it: a process inherits SIGINT ignored or blocked
    # from its parent, and a library earlier in this pytest process may have left it so (seen only in
    # the full suite: the eval then ran to its end and exited 0).
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = posttrain("eval", tiny_gguf["F16"], "--tasks", "hellaswag", "--data-dir", data, "--home", home,
                         cwd=tmp_path, home=home, popen=True)
    finally:
        signal.signal(signal.SIGINT, before)
    log = home / "evals" / Path(tiny_gguf["F16"]).stem / "posttrain-eval.log"
    deadline = time.monotonic() + 120
    while not log.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "interrupted (Ctrl-C)" and "Traceback" not in err
    assert not [p for p in home.rglob("*") if p.name.endswith(".tmp")]
    assert Store(home / "posttrain.db").query("SELECT id FROM evals") == []  # no partial evaluation stored


# ---------------------------------------------------------------- --out never replaces someone else's file


def test_out_refuses_a_file_posttrain_did_not_write_unless_forced(tmp_path):
    home = tmp_path / "home"
    Store(home / "posttrain.db").close()
    mine = tmp_path / "index.html"
    mine.write_text("my own notes")
    for args in (("runs", "--html", "--out", mine), ("compare", "a", "b", "--out", mine),
                 ("report", "some-run", "--out", tmp_path)):
        if args[0] == "report":
            (tmp_path / "report.md").write_text("my own report")
        proc = posttrain(*args, "--home", home, cwd=tmp_path, home=home)
        (line,) = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and "not written by posttrain" in line and "--force" in line, proc.stderr
    assert mine.read_text() == "my own notes" and (tmp_path / "report.md").read_text() == "my own report"

    forced = posttrain("runs", "--html", "--out", mine, "--force", "--home", home, cwd=tmp_path, home=home)
    assert forced.returncode == 0, forced.stderr
    assert "posttrain" in mine.read_text()
    # Now the file is posttrain's own: replacing it again needs no --force.
    again = posttrain("runs", "--html", "--out", mine, "--home", home, cwd=tmp_path, home=home)
    assert again.returncode == 0, again.stderr


# ---------------------------------------------------------------- numbers


def _items(values, task="hellaswag"):
    return [ItemResult(task=task, group=None, doc_id=i, doc_hash=f"{task}-{i}", filter="none", metric="acc",
                       value=float(v), cluster=None, question=None, target=None, response=None)
            for i, v in enumerate(values)]


def test_p_values_below_display_precision_never_print_as_zero(tmp_path):
    assert [fmt_p(p) for p in (0.0, 1e-300, 3.2e-7, 0.0049, 0.41, None)] == [
        "< 1e-40", "< 1e-40", "3.2e-7", "0.0049", "0.4100", "—"]
    # 400 items right against 400 wrong: McNemar's p underflows far below 1e-40.
    doc = compare_family([("new", _items([1] * 400), "base", _items([0] * 400))])
    console = Console(width=80, record=True, file=open(os.devnull, "w"))
    console.print(fit_table(render_table(doc), 80, drop=("MDE 80%", "p")))  # as `posttrain compare` prints it
    table = console.export_text()
    assert "< 1e-40" in table and "0.000 " not in table
    assert_table_readable(table, {"hellaswag", "baseline", "better", "verdict"})
    from posttrain.report import write_report
    from report_samples import sample_inputs

    inputs = sample_inputs()
    inputs["compare"]["comparisons"][0]["p_adjusted"] = 0.0
    paths = write_report(tmp_path, **inputs)
    assert "< 1e-40" in paths["md"].read_text() and "&lt; 1e-40" in paths["html"].read_text()
