"""`ship = true` in a run: `posttrain run` on a tiny checkpoint measures the ladder and its report opens with it.

A small ladder (F16, Q8_0), eight HellaSwag-format items and a held-out text of two chunks keep the
run as short as a run gets (the converter's start-up and lm-eval's imports dominate); Ollama is
pointed at a closed port, so registration is skipped.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from posttrain.store import Store
from posttrain.tiny import corpus
from test_evaluate_offline import write_hellaswag

pytestmark = pytest.mark.slow


def test_a_run_with_ship_writes_the_verdict_and_the_report_opens_with_it(tiny_spm, tmp_path):
    data = tmp_path / "data"
    write_hellaswag(data, n=8)
    text = tmp_path / "heldout.txt"
    text.write_text("\n".join(corpus(150, seed=11)))  # ~1,500 tokens: 2 chunks of 512
    config = tmp_path / "posttrain.toml"
    config.write_text(f'quants = ["f16", "q8_0"]\ntasks = ["hellaswag"]\ndata_dir = "{data}"\nlimit = 8\n'
                      f'ship = true\nship_text = "{text}"\nship_n_ctx = 256\nship_speed_reps = 1\n[ollama]\nurl = "http://127.0.0.1:9"\n')
    home = tmp_path / "home"
    proc = subprocess.run([sys.executable, "-m", "posttrain", "run", str(tiny_spm), "--config", str(config),
                           "--home", str(home)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    steps = {r["name"]: r for r in Store(home / "posttrain.db").query("SELECT * FROM steps")}
    assert steps["ship"]["status"] == "done"
    (run_dir,) = (home / "runs").iterdir()
    doc = json.loads((run_dir / "ship.json").read_text())
    assert doc["schema"] == "posttrain.ship/1"
    assert doc["verdict"]["sentence"] and "pick" in doc["verdict"]
    assert [v["quant"] for v in doc["variants"]] == ["F16", "Q8_0"]
    q8 = next(v for v in doc["variants"] if v["quant"] == "Q8_0")
    assert q8["quality"]["kld_mean"] > 0 and q8["speed"]["tg_tok_s"] > 0
    # The config's measurement settings reach the ladder: chunks of 256 tokens, one speed repetition.
    assert doc["text"]["n_ctx"] == 256 and q8["speed"]["reps"] == 1
    assert doc["text"]["kind"] == "user" and doc["tasks"]["hellaswag"]["metric"] in ("acc_norm", "acc")
    # Its evaluations are the run's own (the ladder takes the evaluate step's ids): no second lm-eval run,
    # not even the planning of one (which writes the offline task files into the ladder's evals/QUANT/).
    assert len(Store(home / "posttrain.db").query("SELECT * FROM evals")) == 2
    assert not (run_dir / "evals" / "F16").exists() and not (run_dir / "evals" / "Q8_0").exists()

    # The run's last words: the ship pick (wrapped at the terminal's width), then the report's path.
    lines = proc.stdout.rstrip().splitlines()
    assert lines[-1] == f"report: {run_dir / 'report.html'}", proc.stdout
    assert " ".join("\n".join(lines[:-1]).split()).endswith(" ".join(doc["verdict"]["sentence"].split())), proc.stdout

    html = (run_dir / "report.html").read_text()
    assert "Which quant to ship" in html
    assert html.index("Which quant to ship") < html.index('id="verdict"')
    md = (run_dir / "report.md").read_text()
    assert "### Which quant to ship" in md
    assert md.index("### Which quant to ship") < md.index("### Scores")
