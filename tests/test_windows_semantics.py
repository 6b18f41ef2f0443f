"""posttrain under Windows' semantics, on this Linux machine (issue 28).

Each test puts posttrain where a Windows user puts it: a `signal` module without SIGKILL and an
`os` without fork/setsid/killpg in every process of the tree, the venv's launcher in front of
the interpreter, a cp932 console behind a redirection, files held open by other processes. The
fakes are in windows_semantics.py and windows_site/; what they cannot show (the Win32 API, a real
console) is left to the Windows job of .github/workflows/ci.yml.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
from polling import wait_for
from test_evaluate_offline import write_hellaswag
from windows_semantics import ConsoleStream, NtfsSharing, cp932_env, windows_env, write_launcher

from posttrain.store import Store


def _python(code: str, env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_the_fake_takes_away_what_windows_lacks():
    # The layer itself: if this fails, the tests below prove nothing.
    proc = _python("""
        import os, signal, subprocess, sys
        missing = [n for n in ("SIGKILL", "SIGHUP", "SIGUSR1", "SIGUSR2") if hasattr(signal, n)]
        missing += [n for n in ("fork", "setsid", "killpg", "getuid", "sched_getaffinity") if hasattr(os, n)]
        try:
            subprocess.Popen([sys.executable, "-c", "pass"], preexec_fn=lambda: None)
            missing.append("preexec_fn accepted")
        except ValueError:
            pass
        print("still there:", missing)
    """, windows_env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "still there: []"


def test_a_child_starts_and_still_dies_with_its_parent(tmp_path):
    # Every posttrain child (step, converter, quantizer, ship worker, tracker) starts with
    # die_with_parent; on Windows it raised AttributeError (signal.SIGKILL) before doing anything.
    marker = tmp_path / "child.pid"
    child_code = tmp_path / "child.py"
    child_code.write_text(textwrap.dedent(f"""
        import os, time
        from posttrain._lifeline import die_with_parent
        assert die_with_parent(os.getppid())
        open({str(marker)!r}, "w").write(str(os.getpid()))
        time.sleep(120)
    """))
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import subprocess, sys, time
        subprocess.Popen([sys.executable, {str(child_code)!r}])
        time.sleep(120)
    """)], env=windows_env())
    try:
        assert wait_for(lambda: marker.exists() and marker.read_text().strip(), timeout=60), "the child did not start"
        child = psutil.Process(int(marker.read_text()))
        parent.kill()
        parent.wait()
        assert wait_for(lambda: not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, timeout=10)
    finally:
        if parent.poll() is None:
            parent.kill()


@pytest.mark.slow
def test_convert_with_its_converter_and_quantizer_children(tiny_spm, tmp_path):
    out = tmp_path / "gguf"
    proc = subprocess.run([sys.executable, "-m", "posttrain", "convert", str(tiny_spm), "--out", str(out),
                           "-q", "f16,q4_k_m"], capture_output=True, text=True, env=windows_env(), timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["variants"]) == ["F16", "Q4_K_M"]


@pytest.fixture
def pipeline_setup(tmp_path, tiny_spm) -> dict:
    write_hellaswag(tmp_path / "data", n=4)
    config = tmp_path / "posttrain.toml"
    config.write_text(f'quants = ["f16", "q4_k_m"]\ntasks = ["hellaswag"]\ndata_dir = "{tmp_path / "data"}"\n'
                      f'limit = 4\n[ollama]\nurl = "http://127.0.0.1:9"\n[watch]\nsettle_s = 0.5\n')
    return {"root": tmp_path, "config": config, "tiny": tiny_spm}


@pytest.mark.slow
def test_watch_daemon_behind_the_venv_launcher_runs_status_and_stops(pipeline_setup):
    # `.venv\Scripts\posttrain.exe watch DIR --daemon`: the daemon is started through the launcher, so
    # the PID Popen returns is the launcher's and the watcher (its child) writes its own. The daemon
    # must be recognised, run a checkpoint through every step child (also behind the launcher), and
    # answer `status` and `stop`.
    root = pipeline_setup["root"]
    home, watched = root / "home", root / "runs"
    watched.mkdir()
    launcher = write_launcher(root / "venv-scripts")
    env = windows_env(launcher=launcher)

    def posttrain(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(launcher), "-m", "posttrain", *args], capture_output=True, text=True, env=env,
                              timeout=timeout)

    started = posttrain("watch", str(watched), "--daemon", "--config", str(pipeline_setup["config"]),
                        "--home", str(home), "--interval", "1")
    assert started.returncode == 0, started.stdout + started.stderr
    pid = json.loads((home / "watch.pid").read_text())["pid"]
    watcher = psutil.Process(pid)
    try:
        assert f"PID {pid}" in started.stdout
        assert str(launcher) in watcher.parent().cmdline()  # really behind the launcher
        shutil.copytree(pipeline_setup["tiny"], watched / "exp1" / "final_model")

        def finished() -> bool:
            if not (home / "posttrain.db").exists():
                return False
            rows = Store(home / "posttrain.db").query("SELECT status FROM runs")
            return bool(rows) and rows[0]["status"] in ("succeeded", "failed")

        assert wait_for(finished, timeout=600), (home / "logs" / "watch.log").read_text()
        status = posttrain("status", "--home", str(home), "--json")
        assert status.returncode == 0, status.stderr
        doc = json.loads(status.stdout)
        assert doc["watcher"]["pid"] == pid and doc["runs"][0]["status"] == "succeeded", doc
        stopped = posttrain("stop", "--home", str(home))
        assert stopped.returncode == 0, stopped.stderr
        assert wait_for(lambda: not watcher.is_running() or watcher.status() == psutil.STATUS_ZOMBIE, timeout=10)
    finally:
        if watcher.is_running():
            watcher.kill()


# -- a cp932 console behind a redirection ----------------------------------------------------------

def _commands() -> list[str]:
    from posttrain.cli import app

    import typer.main

    group = typer.main.get_command(app)
    return sorted(group.commands)


def test_help_and_errors_of_every_command_write_to_a_cp932_console(tmp_path):
    env = cp932_env()
    log = tmp_path / "out.log"
    failures = []
    for argv in [["--help"], *([c, "--help"] for c in _commands()),
                 # errors whose lines hold an em dash, "≥" and the like
                 ["check", str(tmp_path / "missing")], ["convert", str(tmp_path / "missing"), "--out", str(tmp_path)],
                 ["eval", str(tmp_path / "missing.gguf")], ["report", "no-such-run", "--home", str(tmp_path)],
                 ["stop", "--home", str(tmp_path / "home")], ["runs", "--home", str(tmp_path / "home")],
                 ["status", "--home", str(tmp_path / "home")], ["compare", str(tmp_path), str(tmp_path)],
                 ["ship", str(tmp_path / "missing")], ["run", str(tmp_path / "missing")],
                 ["init", "--out", str(tmp_path / "posttrain.toml")], ["--no-such-option"]]:
        with open(log, "wb") as out:
            code = subprocess.run([sys.executable, "-m", "posttrain", *argv], stdout=out, stderr=subprocess.STDOUT,
                                  env=env, timeout=120).returncode
        text = log.read_bytes().decode("cp932", errors="replace")
        broken = ("Traceback", "UnicodeEncodeError", "codec can't encode", "crash-")
        if any(b in text for b in broken) or code not in (0, 1, 2, 3) or ("--help" in argv and code != 0):
            failures.append(f"{argv}: exit {code}: {text[-400:]}")
    assert failures == []


def test_the_normal_output_of_a_command_is_plain_text_on_cp932(tiny_spm, tmp_path):
    log = tmp_path / "out.log"
    with open(log, "wb") as out:
        code = subprocess.run([sys.executable, "-m", "posttrain", "check", str(tiny_spm)], stdout=out,
                              stderr=subprocess.STDOUT, env=cp932_env(), timeout=120).returncode
    text = log.read_bytes().decode("cp932")
    assert code == 0, text
    assert "complete" in text and "\\u" not in text


def test_library_output_inside_the_block_does_not_use_the_closed_console(tmp_path, monkeypatch):
    # On Windows sys.stdout is a console object bound to the handle behind fd 1; dup2-ing fd 1 to the
    # log closes that handle, and a print (or tqdm) inside the block failed with WinError 6.
    from posttrain import llamacpp

    console = ConsoleStream()
    monkeypatch.setattr(sys, "stdout", console)
    monkeypatch.setattr(sys, "stderr", console)
    log = tmp_path / "library.log"
    with llamacpp.library_output_to(log):
        print("Generating validation split")
        print("a tqdm bar", file=sys.stderr)
    assert sys.stdout is console
    print("after the block")
    assert "Generating validation split" in log.read_text() and "a tqdm bar" in log.read_text()
    assert console.written[-2:] == ["after the block", "\n"]


# -- files held open by other processes ------------------------------------------------------------

def test_the_status_file_is_replaced_once_its_reader_lets_go(tmp_path, monkeypatch):
    from posttrain._files import read_json_file, write_json_atomic

    sharing = NtfsSharing(monkeypatch)
    status = tmp_path / "watch.status.json"
    write_json_atomic(status, {"beat": 1})
    sharing.hold(status, 0.3)  # `posttrain status`, Defender or OneDrive reading it
    write_json_atomic(status, {"beat": 2})
    assert sharing.refused > 0
    assert read_json_file(status) == {"beat": 2}
    assert not list(tmp_path.glob(".watch.status.json.*"))  # no temporary file left behind


def test_a_status_file_held_open_is_no_sign_of_a_dead_watcher(tmp_path, monkeypatch):
    from posttrain._files import write_json_atomic
    from posttrain.pipeline._daemon import PID_FILE, STATUS_FILE, watcher_health

    me = psutil.Process()
    write_json_atomic(tmp_path / PID_FILE, {"pid": me.pid, "create_time": me.create_time(), "started_at": "now"})
    write_json_atomic(tmp_path / STATUS_FILE, {"pid": me.pid, "heartbeat": time.time()})
    sharing = NtfsSharing(monkeypatch)
    sharing.hold(tmp_path / STATUS_FILE, 60)  # held longer than any read retry
    health = watcher_health(tmp_path, stale_after_s=0)
    assert health.alive, health.reason


# -- what only a Windows branch does, asked of it with sys.platform set ----------------------------

def test_children_get_no_console_window_and_the_watcher_a_hidden_console(monkeypatch):
    from posttrain import _lifeline

    create_no_window, new_group, detached = 0x08000000, 0x00000200, 0x00000008
    monkeypatch.setattr(os, "name", "nt")  # Windows' subprocess: the one that takes creationflags
    no_window, detached_flags = _lifeline.no_window_kwargs(), _lifeline.detached_kwargs()
    monkeypatch.undo()
    assert no_window == {"creationflags": create_no_window}
    flags = detached_flags["creationflags"]
    # Not DETACHED_PROCESS: a process without a console opens a visible one for each console child.
    assert flags & create_no_window and flags & new_group and not flags & detached


def test_ctrl_c_on_windows_is_an_interruption_not_a_crash():
    from posttrain.llamacpp import describe_exit, was_interrupted

    for code in (0xC000013A, -1073741510):  # as an unsigned and as a signed exit status
        assert was_interrupted(code)
        assert describe_exit(code) == "interrupted (Ctrl-C)"
    assert not was_interrupted(1) and describe_exit(0xC0000005) == "access violation in native code"


def test_a_port_taken_on_windows_is_recognised():
    from posttrain.serve._llamacpp_server import _port_taken

    assert _port_taken("ERROR: [WinError 10048] 通常、各ソケット アドレスに対してプロトコル…は 1 つずつしか使用できません。")
    assert _port_taken("ERROR: [Errno 98] error while attempting to bind on address ('127.0.0.1', 8080): "
                       "address already in use")
    assert not _port_taken("ValueError: unknown model architecture")


def test_home_and_cache_are_under_localappdata_on_windows(monkeypatch, tmp_path):
    from posttrain import paths

    monkeypatch.setattr(sys, "platform", "win32")
    for name in ("POSTTRAIN_HOME", "POSTTRAIN_CACHE", "XDG_DATA_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "AppData" / "Local"))
    assert paths.home() == tmp_path / "AppData" / "Local" / "posttrain"
    assert paths.cache_dir() == tmp_path / "AppData" / "Local" / "posttrain" / "cache"


def test_llama_tools_have_windows_names_and_any_cmake_generator(monkeypatch, tmp_path):
    from posttrain.llamacpp import _tools_build

    monkeypatch.setattr(sys, "platform", "win32")
    assert _tools_build.executable_name("llama-imatrix") == "llama-imatrix.exe"
    tools = _tools_build.LlamaTools(tmp_path, "0.0", "c", "user")
    assert tools.quantize == tmp_path / "llama-quantize.exe"
    # Visual Studio's generator (no Ninja on PATH) puts binaries in bin/Release.
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert "Ninja" not in _tools_build.cmake_generator()
    built = tmp_path / "build" / "bin" / "Release" / "llama-imatrix.exe"
    built.parent.mkdir(parents=True)
    built.write_bytes(b"MZ")
    assert _tools_build.built_binary(tmp_path / "build", "llama-imatrix") == built
