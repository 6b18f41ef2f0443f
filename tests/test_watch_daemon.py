"""The watcher as a service, in real processes: single instance, stale PID files, SIGTERM mid-step,
`posttrain status` and `posttrain stop` from another process, and `--daemon`.

The service under test is `serve_watch` (what `posttrain watch` runs) driven by this file as a
script; its handler is a real Runner whose steps sleep and write files, so "mid-step" is real.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from polling import wait_for
from platforms import posix_only

HERE = Path(__file__)


# -- the service the subprocess runs ---------------------------------------------------------------
def _main(home: str, watched: str, delay: float, once: bool) -> int:
    from posttrain.pipeline import Runner, RunSpec, Step
    from posttrain.pipeline._daemon import serve_watch

    def slow_step(name: str):
        def run(ctx):
            with open(Path(home) / "steps.log", "a") as f:
                f.write(f"start {name}\n")
            time.sleep(delay)
            out = ctx.run_dir / f"{name}.txt"
            out.write_text(name)
            with open(Path(home) / "steps.log", "a") as f:
                f.write(f"end {name}\n")
            return {"path": str(out)}
        return run

    def factory(watcher, stop):
        def handle(path: Path, sha: str):
            def on_event(run_id, step, event):
                if event == "running":
                    watcher.note_stage(path, run_id, step)

            runner = Runner(watcher.store, [Step("first", slow_step("first"), dict),
                                            Step("second", slow_step("second"), dict, depends_on=("first",))],
                            stop_event=stop, on_event=on_event)
            result = runner.run(RunSpec(f"run-{sha[:8]}", str(path), Path(home) / "runs" / f"run-{sha[:8]}"))
            return {"status": result.status, "run_id": result.run_id}
        return handle

    return serve_watch(Path(home), [Path(watched)], factory, pattern="**/final_model", poll_interval_s=300,
                       settle_s=0.3, once=once)


# -- helpers ---------------------------------------------------------------------------------------
def spawn(home: Path, watched: Path, delay: float = 0.2, once: bool = False) -> subprocess.Popen:
    args = [sys.executable, str(HERE), str(home), str(watched), str(delay), "once" if once else "serve"]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def posttrain(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "posttrain", *args], capture_output=True, text=True, timeout=timeout)


def steps_log(home: Path) -> list[str]:
    path = home / "steps.log"
    return path.read_text().splitlines() if path.exists() else []


def status_json(home: Path) -> tuple[int, dict]:
    proc = posttrain("status", "--home", str(home), "--json")
    return proc.returncode, json.loads(proc.stdout)


@pytest.fixture
def dirs(tmp_path):
    home, watched = tmp_path / "home", tmp_path / "runs"
    watched.mkdir()
    return home, watched


@pytest.fixture
def stop_all():
    procs: list[subprocess.Popen] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


# -- tests -----------------------------------------------------------------------------------------
def test_a_second_watcher_on_the_same_home_refuses_and_names_the_first(dirs, stop_all):
    home, watched = dirs
    first = spawn(home, watched)
    stop_all.append(first)
    assert wait_for(lambda: (home / "watch.pid").exists())
    second = posttrain("watch", str(watched), "--home", str(home))
    assert second.returncode == 1
    assert f"a watcher is already running for {home} (PID {first.pid})" in second.stderr
    assert first.poll() is None


def test_a_stale_pid_file_from_a_dead_watcher_is_cleaned(dirs, stop_all):
    home, watched = dirs
    home.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (home / "watch.pid").write_text(json.dumps({"pid": dead.pid, "started_at": "yesterday", "create_time": 1.0}))
    code, doc = status_json(home)
    assert code == 3 and doc["running"] is False and doc["stale_pid"] == dead.pid

    watcher = spawn(home, watched)
    stop_all.append(watcher)
    assert wait_for(lambda: json.loads((home / "watch.pid").read_text())["pid"] == watcher.pid)
    assert wait_for(lambda: f"removed a stale PID file: PID {dead.pid}" in (home / "logs" / "watch.log").read_text())


def mid_step(dirs, tiny_spm, stop_all, delay: float) -> subprocess.Popen:
    """A watcher that is inside the first step of a checkpoint's run."""
    home, watched = dirs
    watcher = spawn(home, watched, delay=delay)
    stop_all.append(watcher)
    assert wait_for(lambda: (home / "watch.pid").exists())
    shutil.copytree(tiny_spm, watched / "exp1" / "final_model")
    assert wait_for(lambda: steps_log(home) == ["start first"])
    return watcher


@posix_only
def test_sigterm_mid_step_exits_0_and_the_next_start_resumes(dirs, tiny_spm, stop_all):
    home, watched = dirs
    watcher = mid_step(dirs, tiny_spm, stop_all, delay=3.0)
    watcher.send_signal(signal.SIGTERM)
    out, _ = watcher.communicate(timeout=60)
    assert watcher.returncode == 0, out
    # The step in progress was finished, the next one not started; nothing is left behind.
    assert steps_log(home) == ["start first", "end first"]
    assert not (home / "watch.pid").exists() and not (home / "watch.status.json").exists()

    again = spawn(home, watched, delay=0.1, once=True)
    stop_all.append(again)
    out, _ = again.communicate(timeout=60)
    assert again.returncode == 0, out
    assert steps_log(home) == ["start first", "end first", "start second", "end second"]


def test_a_stop_file_alone_finishes_the_step_and_stops_the_watcher(dirs, tiny_spm, stop_all):
    # The way `posttrain stop` works on Windows, where no SIGTERM can be sent: run here on Linux.
    from posttrain.pipeline._daemon import STOP_FILE, stop_daemon

    home, _ = dirs
    watcher = mid_step(dirs, tiny_spm, stop_all, delay=4.0)
    pid, how = stop_daemon(home, grace_s=60, use_signal=False)
    assert (pid, how) == (watcher.pid, "stopped")
    out, _ = watcher.communicate(timeout=10)
    assert watcher.returncode == 0, out
    assert steps_log(home) == ["start first", "end first"]
    assert not (home / STOP_FILE).exists() and not (home / "watch.pid").exists()


def test_status_and_stop_work_from_another_process(dirs, tiny_spm, stop_all):
    home, watched = dirs
    watcher = spawn(home, watched, delay=2.0)
    stop_all.append(watcher)
    assert wait_for(lambda: (home / "watch.pid").exists())
    shutil.copytree(tiny_spm, watched / "exp1" / "final_model")
    assert wait_for(lambda: "start first" in steps_log(home))

    assert wait_for(lambda: status_json(home)[1]["watcher"]["current"], timeout=10)
    code, doc = status_json(home)
    assert code == 0 and doc["running"] is True
    w = doc["watcher"]
    assert w["pid"] == watcher.pid and w["roots"] == [str(watched.resolve())] and w["uptime_s"] > 0
    (current,) = w["current"].items()
    assert current[0] == str((watched / "exp1" / "final_model").resolve())
    assert current[1]["step"] in ("first", "second")
    human = posttrain("status", "--home", str(home))
    assert f"watcher running: PID {watcher.pid}" in human.stdout

    stopped = posttrain("stop", "--home", str(home), "--grace", "30")
    assert stopped.returncode == 0, stopped.stderr
    assert f"watcher PID {watcher.pid} stopped cleanly" in stopped.stdout
    assert watcher.wait(timeout=5) == 0
    code, doc = status_json(home)
    assert code == 3 and doc["running"] is False
    assert posttrain("stop", "--home", str(home)).returncode == 1


@posix_only
def test_stop_escalates_to_sigkill_after_the_grace_period(dirs, tiny_spm, stop_all):
    home, watched = dirs
    watcher = spawn(home, watched, delay=30.0)
    stop_all.append(watcher)
    assert wait_for(lambda: (home / "watch.pid").exists())
    shutil.copytree(tiny_spm, watched / "exp1" / "final_model")
    assert wait_for(lambda: "start first" in steps_log(home))
    stopped = posttrain("stop", "--home", str(home), "--grace", "1")
    assert stopped.returncode == 0
    assert "was killed" in stopped.stdout
    assert watcher.wait(timeout=5) == -signal.SIGKILL
    assert not (home / "watch.pid").exists()
    assert status_json(home)[0] == 3


def test_daemon_detaches_and_is_controlled_by_status_and_stop(dirs):
    home, watched = dirs
    started = posttrain("watch", str(watched), "--home", str(home), "--daemon", "--interval", "60")
    assert started.returncode == 0, started.stderr
    pid = json.loads((home / "watch.pid").read_text())["pid"]
    try:
        proc = psutil.Process(pid)
        assert proc.is_running()
        if sys.platform != "win32":
            assert os.getsid(pid) == pid  # its own session: no terminal to lose
        assert f"PID {pid}" in started.stdout
        code, doc = status_json(home)
        assert code == 0 and doc["watcher"]["pid"] == pid and doc["watcher"]["poll_interval_s"] == 60
        assert posttrain("stop", "--home", str(home)).returncode == 0
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    finally:
        if psutil.pid_exists(pid):
            psutil.Process(pid).kill()


def test_the_log_rotates_by_size(tmp_path):
    import logging

    from posttrain.pipeline._daemon import setup_file_logging

    path = setup_file_logging(tmp_path, max_bytes=10_000, backups=2)
    log = logging.getLogger("posttrain.pipeline")
    for i in range(2000):
        log.info("line %d %s", i, "x" * 40)
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["watch.log", "watch.log.1", "watch.log.2"]
    assert all((path.parent / f).stat().st_size <= 10_000 for f in files)
    for h in list(logging.getLogger("posttrain").handlers):
        if getattr(h, "baseFilename", None) == str(path):
            logging.getLogger("posttrain").removeHandler(h)
            h.close()


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4] == "once"))
