"""llama-cpp-python's server for real, on a tiny GGUF: start, health, completion, stop, no orphans."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import psutil
import pytest
from platforms import posix_only

from posttrain.errors import PosttrainError
from posttrain.serve import LlamaServer


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def gguf(tiny_gguf) -> Path:
    return tiny_gguf["Q8_0"]


def test_server_starts_answers_a_completion_and_stops_cleanly(gguf, tmp_path):
    log = tmp_path / "server.log"
    with LlamaServer(gguf, n_ctx=512, n_threads=1, log_path=log) as server:
        assert server.url.startswith("http://127.0.0.1:")
        models = httpx.get(f"{server.url}/v1/models", timeout=10).json()
        assert models["data"], models
        r = httpx.post(f"{server.url}/v1/completions",
                       json={"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0}, timeout=120)
        assert r.status_code == 200
        body = r.json()
        assert body["usage"]["completion_tokens"] > 0
        assert isinstance(body["choices"][0]["text"], str)
        pid, port = server.pid, server.port
        assert psutil.pid_exists(pid)
    assert _gone(pid, within=1.0)  # stop() waited for it
    assert not _port_open(port)
    text = log.read_text()
    assert "/v1/completions" in text and "Shutting down" in text  # the log streamed to the file


def test_a_file_that_is_not_a_gguf_is_refused_before_a_server_starts(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf at all" * 100)
    with pytest.raises(PosttrainError) as e:
        LlamaServer(bad, n_ctx=256, log_path=tmp_path / "bad.log", startup_timeout=60)
    assert "broken.gguf is not a GGUF file" in e.value.one_line()
    assert not (tmp_path / "bad.log").exists()


def test_a_truncated_gguf_fails_in_one_line_naming_the_cause_and_the_log(gguf, tmp_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(gguf.read_bytes()[:4096])
    server = LlamaServer(cut, n_ctx=256, log_path=tmp_path / "cut.log", startup_timeout=60)
    with pytest.raises(PosttrainError) as e:
        server.start()
    line = e.value.one_line()
    assert "\n" not in line and "Traceback" not in line
    assert "cut.gguf exited with code" in line and str(tmp_path / "cut.log") in line
    assert server.process.poll() is not None


def test_parallel_slots_are_refused_with_a_reason(gguf):
    with pytest.raises(PosttrainError, match="one request at a time"):
        LlamaServer(gguf, parallel=4)


_PARENT = """
import sys, threading, time
from pathlib import Path
from posttrain.serve import LlamaServer

def start():
    server = LlamaServer(Path(sys.argv[1]), n_ctx=256, n_threads=1, log_path=Path(sys.argv[2]))
    server.start()
    print(server.pid, server.port, flush=True)

if sys.argv[3] == "thread":
    # Started from a worker thread that stays alive: the kernel's parent-death signal does not apply.
    t = threading.Thread(target=lambda: (start(), time.sleep(600)), daemon=True)
    t.start()
else:
    start()
time.sleep(600)
"""


@pytest.mark.parametrize("spawned_from", ["main", "thread"])
def test_no_orphan_when_the_parent_is_killed(gguf, tmp_path, spawned_from):
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(_PARENT))
    parent = subprocess.Popen([sys.executable, str(script), str(gguf), str(tmp_path / "s.log"), spawned_from],
                              stdout=subprocess.PIPE, text=True)
    try:
        line = parent.stdout.readline()
        assert line, f"parent printed nothing; log: {(tmp_path / 's.log').read_text(errors='replace')[-2000:]}"
        pid, port = map(int, line.split())
        assert psutil.pid_exists(pid) and _port_open(port)
        parent.kill()  # SIGKILL (TerminateProcess on Windows): no atexit, no signal handler runs in the parent
        parent.wait(10)
        assert _gone(pid, within=8.0), "llama.cpp server outlived its killed parent"
    finally:
        if parent.poll() is None:
            parent.kill()


@posix_only
def test_serve_command_prints_the_url_and_stops_on_ctrl_c(gguf, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "posttrain", "serve", str(gguf), "--ctx", "256",
                             "--threads", "1", "--log", str(tmp_path / "cli.log")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, COLUMNS="200"))
    try:
        seen = []
        for line in proc.stdout:  # the display's lines on stderr come first, then the URL on stdout
            seen.append(line)
            if "http://127.0.0.1:" in line or len(seen) > 20:
                break
        assert "serving" in line and "http://127.0.0.1:" in line, seen
        url = line.split(" at ")[1].split()[0]
        assert httpx.get(f"{url}/models", timeout=10).status_code == 200
        child_pids = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        assert child_pids
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        assert "stopped" in out
        assert all(_gone(pid, within=2.0) for pid in child_pids)
    finally:
        if proc.poll() is None:
            proc.kill()
