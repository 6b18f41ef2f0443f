"""Native work runs under supervision (issue 10): a step that crashes in native code fails with the
signal and its log, is retried once, leaves the watcher running, and resumes like any failure.

The crash is real: the test-only hook `POSTTRAIN_TEST_CRASH` makes the step's child process
segfault in C (faulthandler._sigsegv), exactly as llama.cpp's AMX fault did. The pipeline around it
is the real one (conversion by llama.cpp, evaluation by lm-eval) on a tiny model.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from polling import wait_for
from platforms import posix_only

from posttrain.pipeline._isolation import CRASH_HOOK_ENV
from posttrain.store import Store

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_spm) -> dict:
    root = tmp_path_factory.mktemp("isolation")
    data = root / "data" / "hellaswag"
    data.mkdir(parents=True)
    rows = [{"ind": i, "activity_label": "Pets", "ctx_a": "The cat walks home.", "ctx_b": "the cat", "ctx": "",
             "label": str(i % 4), "split": "val", "split_type": "indomain", "source_id": f"x{i}",
             "endings": [f"sees door {i}.", f"finds a ball {i}.", f"opens a book {i}.", f"eats {i} apples."]}
            for i in range(6)]
    (data / "hellaswag_val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = root / "posttrain.toml"
    config.write_text(f'quants = ["f16"]\ntasks = ["hellaswag"]\ndata_dir = "{root / "data"}"\nlimit = 6\n'
                      f'retry_backoff_s = 0.1\n[ollama]\nurl = "http://127.0.0.1:9"\n[watch]\nsettle_s = 0.5\n')
    return {"root": root, "config": config, "tiny": tiny_spm}


def _checkpoint(setup: dict, *parts: str) -> Path:
    ckpt = setup["root"].joinpath(*parts)
    shutil.copytree(setup["tiny"], ckpt)
    return ckpt


def _posttrain(setup: dict, home: Path, *args: str, crash: str | None = None, timeout: float = 600):
    env = {k: v for k, v in os.environ.items() if k != CRASH_HOOK_ENV}
    if crash:
        env[CRASH_HOOK_ENV] = crash
    return subprocess.run([sys.executable, "-m", "posttrain", *args, "--config", str(setup["config"]),
                           "--home", str(home)], capture_output=True, text=True, timeout=timeout, env=env)


def _steps(home: Path) -> dict[str, dict]:
    return {r["name"]: dict(r) for r in Store(home / "posttrain.db").query("SELECT * FROM steps")}


def test_a_crash_is_retried_once_and_the_run_succeeds(setup):
    home = setup["root"] / "home-retry"
    ckpt = _checkpoint(setup, "retry", "final_model")
    proc = _posttrain(setup, home, "run", str(ckpt), crash="convert:1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    convert = _steps(home)["convert"]
    assert convert["status"] == "done" and convert["attempts"] == 2
    (run_dir,) = (home / "runs").iterdir()
    log = (run_dir / "logs" / "convert.log").read_text()
    assert "crashing step convert (attempt 1) on purpose" in log
    assert "crashed (SIGSEGV in native code)" in proc.stderr  # the runner's log line for the first attempt
    # The peak RSS recorded is the child's: it loaded torch and llama.cpp, far more than a bare Python.
    assert convert["peak_rss_bytes"] > 150_000_000


def test_a_crash_fails_the_step_with_signal_and_log_and_the_rerun_finishes(setup):
    home = setup["root"] / "home-fail"
    ckpt = _checkpoint(setup, "fail", "final_model")
    proc = _posttrain(setup, home, "run", str(ckpt), crash="convert")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    steps = _steps(home)
    (run_dir,) = (home / "runs").iterdir()
    assert steps["convert"]["status"] == "failed" and steps["convert"]["attempts"] == 2
    assert steps["convert"]["error"].startswith(
        f"convert crashed (SIGSEGV in native code); log: {run_dir / 'logs' / 'convert.log'}")
    assert steps["evaluate"]["status"] == "skipped"
    assert "convert crashed (SIGSEGV" in (run_dir / "report.md").read_text()

    again = _posttrain(setup, home, "run", str(ckpt))
    assert again.returncode == 0, again.stdout + again.stderr
    steps = _steps(home)
    assert all(steps[n]["status"] in ("done", "skipped") for n in steps), steps
    assert steps["convert"]["status"] == "done" and steps["evaluate"]["status"] == "done"


@posix_only
def test_the_watcher_outlives_a_crashing_step_and_takes_the_next_checkpoint(setup):
    home = setup["root"] / "home-watch"
    watched = setup["root"] / "watched"
    watched.mkdir()
    env = {**os.environ, CRASH_HOOK_ENV: "convert@crashing"}
    watcher = subprocess.Popen([sys.executable, "-m", "posttrain", "watch", str(watched), "--config",
                                str(setup["config"]), "--home", str(home)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: (home / "watch.status.json").exists(), 60)
        _checkpoint(setup, "watched", "crashing", "final_model")

        def outcome(name: str) -> str | None:
            rows = Store(home / "posttrain.db").query(
                "SELECT status FROM processed_checkpoints WHERE path LIKE ?", (f"%/{name}/final_model",))
            return rows[0]["status"] if rows and rows[0]["status"] in ("succeeded", "failed") else None

        assert wait_for(lambda: outcome("crashing") is not None, 300)
        assert outcome("crashing") == "failed"
        assert watcher.poll() is None, "the watcher died with its step"

        # Another model (the watcher processes each content hash once, and the first one failed).
        from posttrain.tiny import make_tiny

        make_tiny(watched / "healthy" / "final_model", seed=7)
        assert wait_for(lambda: outcome("healthy") is not None, 300)
        assert outcome("healthy") == "succeeded"
        assert watcher.poll() is None

        status = subprocess.run([sys.executable, "-m", "posttrain", "status", "--home", str(home), "--json"],
                                capture_output=True, text=True, timeout=60)
        doc = json.loads(status.stdout)
        assert doc["running"] is True
        failed = [r["failed"] for r in doc["runs"] if r["failed"]]
        assert len(failed) == 1 and "convert: convert crashed (SIGSEGV in native code)" in failed[0]
        assert "SIGSEGV" in (home / "logs" / "watch.log").read_text()
    finally:
        watcher.send_signal(signal.SIGTERM)
        try:
            watcher.wait(60)
        except subprocess.TimeoutExpired:
            watcher.kill()
            watcher.wait()


def test_kill9_leaves_no_process_behind_and_status_calls_the_run_interrupted(setup):
    # kill -9 of the runner must not leave the step's child, nor the converter it started, running on
    # alone (issue 10 and 11): each ends with its parent.
    home = setup["root"] / "home-orphan"
    ckpt = _checkpoint(setup, "orphan", "final_model")
    proc = subprocess.Popen([sys.executable, "-m", "posttrain", "run", str(ckpt), "--config", str(setup["config"]),
                             "--home", str(home)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def descendants() -> list[psutil.Process]:
        try:
            return psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            return []

    def converting() -> bool:
        return any("_converter_shim" in " ".join(p.cmdline()) for p in descendants() if p.is_running())

    assert wait_for(converting, 120), "the converter never started"
    left = descendants()
    assert any("posttrain.pipeline._step_child" in " ".join(p.cmdline()) for p in left)
    proc.kill()
    proc.wait()

    def all_gone() -> bool:
        return all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in left)

    # Within 3 s: a tiny model's conversion takes longer than that, so it did not just finish.
    assert wait_for(all_gone, 3), [p.cmdline() for p in left if p.is_running()]
    status = subprocess.run([sys.executable, "-m", "posttrain", "status", "--home", str(home), "--json"],
                            capture_output=True, text=True, timeout=60)
    doc = json.loads(status.stdout)
    assert [r["status"] for r in doc["runs"]] == ["interrupted"]
    assert doc["active_runs"] == []
