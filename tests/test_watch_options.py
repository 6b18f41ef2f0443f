"""Every option of `posttrain watch` reaches the watcher's settings the same way in the foreground and
with `--daemon` (issue 19: the detached watcher used to re-parse sys.argv and lost `--data-dir`).

The option list is the command's own, so an option added later without a sample here fails the first
test, and one the daemon does not carry fails the second.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
from polling import wait_for
from platforms import posix_only

from posttrain.cli import app

# Options that are not settings: the positional directories, the mode switches, the internal hand-over.
NOT_SETTINGS = {"dirs", "once", "daemon", "detached", "settings_file"}

# option name → (its arguments, what the effective settings must then say)
SAMPLES = {
    "pattern": (["--pattern", "**/ckpt"], lambda s: s["config"]["watch"]["pattern"] == "**/ckpt"),
    "series": (["--series"], lambda s: s["config"]["watch"]["series"] is True),
    "interval": (["--interval", "17"], lambda s: s["config"]["watch"]["check_interval_s"] == 17),
    "settle": (["--settle", "0.7"], lambda s: s["config"]["watch"]["settle_s"] == 0.7),
    "no_events": (["--no-events"], lambda s: s["events"] is False),
    "baseline": (["--baseline", "ollama:base"], lambda s: s["config"]["baseline"] == "ollama:base"),
    "config": (["--config", "my.toml"], lambda s: s["config"]["seed"] == 5),
    "quant": (["-q", "f16,q6_k"], lambda s: s["config"]["quants"] == ["f16", "q6_k"]),
    "reference": (["--reference", "BF16"], lambda s: s["config"]["reference"] == "bf16"),
    "tasks": (["--tasks", "hellaswag,arc_easy"], lambda s: s["config"]["tasks"] == ["hellaswag", "arc_easy"]),
    "limit": (["--limit", "7"], lambda s: s["config"]["limit"] == 7),
    "home": (["--home", "home"], lambda s: Path(s["config"]["home"]).is_absolute()),
    "jobs": (["--jobs", "2"], lambda s: s["config"]["jobs"] == 2),
    "data_dir": (["--data-dir", "data"], lambda s: Path(s["config"]["data_dir"]).is_absolute()),
    "notify": (["--notify", "json://127.0.0.1:9/x"], lambda s: s["config"]["notify"]["urls"] == ["json://127.0.0.1:9/x"]),
    "n_gpu_layers": (["--n-gpu-layers", "0"], lambda s: s["config"]["n_gpu_layers"] == 0),
    "track": (["--track", "mlflow,wandb"], lambda s: s["config"]["track"] == ["mlflow", "wandb"]),
    "track_artifacts": (["--track-artifacts", "gguf"], lambda s: s["config"]["track_artifacts"] == ["gguf"]),
    "base": (["--base", "data"], lambda s: Path(s["config"]["base"]).is_absolute()),
    "executor": (["--executor", "ray://127.0.0.1:9"], lambda s: s["config"]["executor"] == "ray://127.0.0.1:9"),
    "ray_address": (["--ray-address", "auto"], lambda s: s["config"]["ray_address"] == "auto"),
    "shared_dir": (["--shared-dir", "data"], lambda s: Path(s["config"]["shared_dir"]).is_absolute()),
    "shard_docs": (["--shard-docs", "5"], lambda s: s["config"]["shard_docs"] == 5),
}


def _watch_options() -> set[str]:
    command = typer.main.get_command(app).commands["watch"]
    return {p.name for p in command.params}


def test_every_watch_option_has_a_sample_here():
    assert _watch_options() - NOT_SETTINGS == set(SAMPLES)


def _posttrain(cwd: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "posttrain", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def _settings_of_running_watcher(cwd: Path) -> dict | None:
    proc = _posttrain(cwd, "status", "--home", "home", "--json")
    doc = json.loads(proc.stdout) if proc.stdout.strip() else {}
    return ((doc.get("watcher") or {}).get("settings")) if doc.get("running") else None


@pytest.fixture
def workdir(tmp_path) -> Path:
    (tmp_path / "watched").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "my.toml").write_text('seed = 5\n[ollama]\nurl = "http://127.0.0.1:9"\n')
    return tmp_path


@posix_only
def test_foreground_and_daemon_watchers_run_with_the_same_settings(workdir):
    args = [a for sample, _ in SAMPLES.values() for a in sample]

    foreground = subprocess.Popen([sys.executable, "-m", "posttrain", "watch", "watched", *args], cwd=workdir,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: _settings_of_running_watcher(workdir) is not None, 60), foreground.stderr
        in_front = _settings_of_running_watcher(workdir)
    finally:
        foreground.send_signal(signal.SIGTERM)
        foreground.wait(60)

    started = _posttrain(workdir, "watch", "watched", *args, "--daemon")
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        assert wait_for(lambda: _settings_of_running_watcher(workdir) is not None, 60)
        detached = _settings_of_running_watcher(workdir)
    finally:
        _posttrain(workdir, "stop", "--home", "home", "--grace", "30")

    assert detached == in_front
    for name, (_, check) in SAMPLES.items():
        assert check(detached), f"{name} did not reach the watcher's settings: {detached}"
    assert detached["dirs"] == [str((workdir / "watched").resolve())]
