"""lm-eval's own output files are placed whole: written by its tracker into a hidden staging folder,
checked, then renamed into place; a write the tracker could not finish (it logs and goes on) is one
error naming the file, and no torn file is left where a reader looks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from platforms import posix_only
from test_evaluate_offline import write_hellaswag

from posttrain.evaluate import evaluate
from posttrain.store import Store


def test_an_evaluation_places_whole_files_and_clears_a_dead_processs_staging(tiny_gguf, tmp_path):
    data = tmp_path / "data"
    write_hellaswag(data, n=4)
    out = tmp_path / "out"
    # What a save killed midway leaves: a staging folder of a process that is gone, and one of a live one.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    abandoned = out / f".lm_eval-{dead.stdout.strip()}-x.partial"
    live = out / f".lm_eval-{os.getppid()}-y.partial"
    for folder in (abandoned, live):
        (folder / "m").mkdir(parents=True)
        (folder / "m" / "results_torn.json").write_text('{"results": ')
    evaluate(tiny_gguf["F16"], ["hellaswag"], data_dir=data, store=Store(tmp_path / "posttrain.db"), out_dir=out)
    assert not abandoned.exists() and live.exists()
    (results,) = out.glob("lm_eval/*/results_*.json")
    assert "hellaswag" in json.loads(results.read_text())["results"]
    (samples,) = results.parent.glob("samples_hellaswag_*.jsonl")
    assert [json.loads(line)["doc_id"] for line in samples.read_text().splitlines()] == [0, 1, 2, 3]
    assert [p.name for p in out.iterdir() if p.name.startswith(".lm_eval-")] == [live.name]


@posix_only
def test_a_write_lm_eval_cannot_finish_is_one_error_naming_the_file_and_nothing_is_placed(tmp_path):
    """A real I/O error in lm-eval's own write: a file size limit (RLIMIT_FSIZE, EFBIG) in a child,
    under a real EvaluationTracker. It writes part of the samples, logs the error and goes on."""
    code = textwrap.dedent(f"""
        import resource, signal
        from pathlib import Path
        from lm_eval.loggers import EvaluationTracker
        from posttrain.errors import PosttrainError
        from posttrain.evaluate._lm_eval_files import save_lm_eval_files

        root = Path({str(tmp_path / "lm_eval")!r})
        tracker = EvaluationTracker(output_path=str(root))
        tracker.general_config_tracker.model_name_sanitized = "model"
        results = {{"results": {{"t": {{"acc,none": 0.5}}}}, "configs": {{"t": {{}}}}, "versions": {{"t": 1}},
                   "n-shot": {{"t": 0}}, "higher_is_better": {{"t": {{}}}}, "n-samples": {{"t": {{}}}}}}
        samples = {{"t": [{{"doc_id": i, "doc": {{"text": "x" * 2000}}, "target": "a", "arguments": [],
                          "resps": [], "filtered_resps": [], "filter": "none", "metrics": ["acc"], "acc": 1.0,
                          "doc_hash": "d", "prompt_hash": "p", "target_hash": "t"}}
                         for i in range(50)]}}
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))
        try:
            save_lm_eval_files(tracker, [(results, samples)], root)
        except PosttrainError as e:
            print("ERROR", e.one_line())
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ERROR lm-eval could not write" in proc.stdout and "samples_t_" in proc.stdout, proc.stdout
    assert list((tmp_path / "lm_eval").rglob("*.json*")) == []  # nothing placed, torn or whole
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".lm_eval-")] == []  # staging removed
