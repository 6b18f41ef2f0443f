"""`posttrain run` end to end on tiny checkpoints: real conversion, real lm-eval, real statistics.

The evaluation data is a small HellaSwag-format file written here (project text, not the benchmark).
Ollama is pointed at a closed port, so registration is skipped, not failed.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from posttrain.store import Store

pytestmark = pytest.mark.slow

_VOLATILE = {"created_at", "finished_at", "seconds", "wall_s", "peak_rss_bytes", "gpu_mem_bytes", "attempts",
             "environment", "generator", "tokens_per_s", "tokens"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_spm) -> dict:
    from posttrain.tiny import make_tiny

    root = tmp_path_factory.mktemp("e2e")
    data = root / "data" / "hellaswag"
    data.mkdir(parents=True)
    rng = random.Random(0)
    subjects, objects = ["the cat", "a dog", "my friend", "the teacher"], ["the door", "a red ball", "seven apples",
                                                                          "the long road", "a new book"]
    rows = [{"ind": i, "activity_label": rng.choice(["Pets", "School"]), "ctx_a": f"{s.capitalize()} walks home.",
             "ctx_b": s, "ctx": "", "label": str(rng.randrange(4)), "split": "val", "split_type": "indomain",
             "source_id": f"x{i}", "endings": [f"{rng.choice(['sees', 'finds', 'opens'])} {o}." for o in rng.sample(objects, 4)]}
            for i, s in enumerate(rng.choice(subjects) for _ in range(24))]
    (data / "hellaswag_val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    watched = root / "runs"
    ckpt = watched / "exp1" / "final_model"
    shutil.copytree(tiny_spm, ckpt)
    base = make_tiny(root / "base", seed=3)
    config = root / "posttrain.toml"
    config.write_text(f'quants = ["f16", "q8_0"]\ntasks = ["hellaswag"]\ndata_dir = "{root / "data"}"\nlimit = 24\n'
                      f'baseline = "{base}"\n[ollama]\nurl = "http://127.0.0.1:9"\n')
    return {"root": root, "ckpt": ckpt, "config": config, "watched": watched}


def posttrain_cmd(setup: dict, home: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "posttrain", *args, "--config", str(setup["config"]), "--home", str(home)]


def normalised_report(home: Path) -> dict:
    (run_dir,) = (home / "runs").iterdir()
    text = (run_dir / "report.json").read_text().replace(str(home), "<HOME>")

    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in _VOLATILE}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x

    return strip(json.loads(text))


def assert_same_report(got: dict, want: dict) -> None:
    """Equal, and if not, name the differing entries (a bare dict diff of two reports is unreadable)."""
    diffs = []
    for key in sorted(set(got) | set(want)):
        a, b = got.get(key), want.get(key)
        if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            diffs += [(key, i, x, y) for i, (x, y) in enumerate(zip(a, b)) if x != y]
        elif a != b:
            diffs.append((key, None, a, b))
    assert not diffs, "\n".join(f"{k}[{i}]: {x!r}\n  != {y!r}" for k, i, x, y in diffs[:5])


@pytest.fixture(scope="module")
def reference(setup) -> tuple[Path, dict]:
    home = setup["root"] / "home-ref"
    proc = subprocess.run(posttrain_cmd(setup, home, "run", str(setup["ckpt"])), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return home, normalised_report(home)


def test_run_produces_a_report_and_records_every_step(setup, reference):
    home, report = reference
    (run_dir,) = (home / "runs").iterdir()
    for name in ("report.html", "report.md", "report.json", "compare.json"):
        assert (run_dir / name).is_file()
    store = Store(home / "posttrain.db")
    steps = {r["name"]: r for r in store.query("SELECT * FROM steps")}
    assert steps["register"]["status"] == "skipped"
    assert steps["register"]["error"] == "skipped: Ollama not reachable at http://127.0.0.1:9"
    assert all(steps[n]["status"] == "done" for n in ("detect", "convert", "baseline", "evaluate",
                                                        "evaluate_baseline", "compare", "report", "notify"))
    assert all(steps[n]["wall_s"] > 0 and steps[n]["peak_rss_bytes"] > 0 for n in steps)
    compare = json.loads((run_dir / "compare.json").read_text())
    assert {c["new_label"] for c in compare["comparisons"]} == {"exp1-F16", "exp1-Q8_0"}
    assert report["failures"] == [] and report["run"]["status"] == "succeeded"


def test_kill9_inside_evaluation_then_rerun_gives_the_same_report(setup, reference):
    home = setup["root"] / "home-kill"
    proc = subprocess.Popen(posttrain_cmd(setup, home, "run", str(setup["ckpt"])), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if (home / "posttrain.db").exists() and Store(home / "posttrain.db").query(
                "SELECT 1 FROM steps WHERE name='evaluate' AND status='running'"):
            break
        time.sleep(0.2)
    time.sleep(2.0)
    assert proc.poll() is None, "the run finished before it could be killed"
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.kill()
    proc.wait()
    time.sleep(0.5)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE], "orphan process left"
    # No GGUF under a final name is partial: each one's sha256 matches what the store recorded.
    store = Store(home / "posttrain.db")
    for row in store.query("SELECT path, sha256 FROM variants"):
        from posttrain.convert import sha256_file
        assert sha256_file(Path(row["path"])) == row["sha256"]

    again = subprocess.run(posttrain_cmd(setup, home, "run", str(setup["ckpt"])), capture_output=True, text=True,
                           timeout=900)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "reused" in again.stdout
    assert_same_report(normalised_report(home), reference[1])


def test_watch_once_hands_the_checkpoint_to_the_same_run(setup, reference):
    home, report = reference
    proc = subprocess.run(posttrain_cmd(setup, home, "watch", str(setup["watched"]), "--once"), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    store = Store(home / "posttrain.db")
    assert len(store.query("SELECT id FROM runs")) == 1
    row = store.query("SELECT status, run_id FROM processed_checkpoints")[0]
    assert row["status"] == "succeeded" and row["run_id"] == report["run"]["id"]
    assert_same_report(normalised_report(home), report)


def test_a_failing_step_leaves_independent_steps_running_and_the_report_says_why(setup, reference):
    home, _ = reference
    # A baseline that passes the up-front check (a folder with config.json) but cannot be converted.
    broken = setup["root"] / "broken-base"
    broken.mkdir(exist_ok=True)
    shutil.copy(setup["ckpt"] / "config.json", broken / "config.json")
    config = setup["root"] / "broken-baseline.toml"
    config.write_text(setup["config"].read_text().replace(f'baseline = "{setup["root"] / "base"}"',
                                                           f'baseline = "{broken}"'))
    proc = subprocess.run([sys.executable, "-m", "posttrain", "run", str(setup["ckpt"]), "--config", str(config),
                           "--home", str(home)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    store = Store(home / "posttrain.db")
    (run,) = store.query("SELECT id, status, run_dir FROM runs WHERE baseline LIKE '%broken-base'")
    steps = {r["name"]: (r["status"], r["error"]) for r in store.query("SELECT * FROM steps WHERE run_id=?",
                                                                        (run["id"],))}
    assert run["status"] == "failed"
    assert steps["baseline"][0] == "failed" and "broken-base" in steps["baseline"][1]
    assert steps["evaluate"][0] == "done"  # independent of the baseline: still ran (from the result cache)
    assert steps["evaluate_baseline"] == ("skipped", "skipped: baseline failed")
    assert steps["compare"] == ("skipped", "skipped: evaluate_baseline skipped")
    assert steps["report"][0] == "done" and steps["notify"][0] == "done"
    report = json.loads((Path(run["run_dir"]) / "report.json").read_text())
    assert [f["step"] for f in report["failures"]] == ["baseline"]
    assert not (Path(run["run_dir"]) / "compare.json").exists()


def test_a_missing_baseline_is_refused_before_any_work(setup, tmp_path):
    home = tmp_path / "home"
    config = tmp_path / "missing-baseline.toml"
    config.write_text(setup["config"].read_text().replace(f'baseline = "{setup["root"] / "base"}"',
                                                           f'baseline = "{setup["root"] / "no-such-model"}"'))
    proc = subprocess.run([sys.executable, "-m", "posttrain", "run", str(setup["ckpt"]), "--config", str(config),
                           "--home", str(home)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: baseline '{setup['root'] / 'no-such-model'}' not found — give a Hugging Face directory, "
        f"a .gguf file or ollama:NAME"]
    assert not (home / "runs").exists() and not (home / "gguf").exists()  # nothing was converted


def test_an_incomplete_checkpoint_is_refused_with_the_reason(setup, tmp_path):
    half = tmp_path / "half"
    shutil.copytree(setup["ckpt"], half)
    weights = half / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size - 1000)  # the header is intact, the tensor data cut short
    proc = subprocess.run(posttrain_cmd(setup, tmp_path / "home", "run", str(half)), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1
    assert "is not a complete checkpoint: model.safetensors is truncated" in proc.stderr


def test_kill9_inside_conversion_then_rerun_completes_with_intact_files(setup, reference):
    home = setup["root"] / "home-kill-convert"
    proc = subprocess.Popen(posttrain_cmd(setup, home, "run", str(setup["ckpt"])), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    children: list[psutil.Process] = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not children:
        children = psutil.Process(proc.pid).children(recursive=True)  # the converter, once it starts
        time.sleep(0.1)
    assert children, "no converter process was seen"
    time.sleep(1.0)
    proc.kill()
    proc.wait()
    gone, alive = psutil.wait_procs(children, timeout=5)
    leftover = [c for c in alive if c.status() != psutil.STATUS_ZOMBIE]
    for c in leftover:
        c.kill()
    assert not leftover, f"the converter outlived the killed run: {[c.cmdline()[:3] for c in leftover]}"
    # Any GGUF under a final name is one the manifest vouches for, byte for byte.
    from posttrain.convert import sha256_file

    for gguf in (home / "gguf").rglob("*.gguf"):
        manifest = json.loads((gguf.parent / "manifest.json").read_text())
        entry = next(v for v in manifest["variants"].values() if v["path"] == gguf.name)
        assert sha256_file(gguf) == entry["sha256"]

    again = subprocess.run(posttrain_cmd(setup, home, "run", str(setup["ckpt"])), capture_output=True, text=True,
                           timeout=900)
    assert again.returncode == 0, again.stdout + again.stderr
    assert_same_report(normalised_report(home), reference[1])


def test_a_mistyped_task_is_refused_before_any_work_with_close_names(setup, tmp_path):
    home = tmp_path / "home"
    proc = subprocess.run(posttrain_cmd(setup, home, "run", str(setup["ckpt"])) + ["--tasks", "hellaswg"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: unknown lm-eval task 'hellaswg' — did you mean: hellaswag")
    assert not (home / "runs").exists() and not (home / "gguf").exists()
