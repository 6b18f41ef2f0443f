"""Running the watcher as a service: one instance per home, a PID file, a status file, signals, a log.

The single-instance lock is an flock on `<home>/watch.lock`: the kernel drops it when the holder
dies, however it dies, so a PID file left by a killed watcher is recognised as stale and replaced.
`posttrain status` and `posttrain stop` work from any shell through the PID file (checked against
the process's start time, so a recycled PID is not mistaken for the watcher) and the status file the
watcher rewrites atomically.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from posttrain._files import read_json_file, write_json_atomic
from posttrain._lifeline import detached_kwargs
from posttrain._locks import FileLock
from posttrain.errors import PosttrainError
from posttrain.store import utcnow

log = logging.getLogger("posttrain.pipeline")

PID_FILE = "watch.pid"
LOCK_FILE = "watch.lock"
STATUS_FILE = "watch.status.json"
STOP_FILE = "watch.stop"
LOG_FILE = "logs/watch.log"
# The watcher rewrites its status file at least this often, alive or busy; a reader that finds it
# older than STALE_AFTER_S treats the watcher as hung, whatever its PID says.
HEARTBEAT_S = 2.0
STALE_AFTER_S = 30.0




@dataclass
class DaemonInfo:
    """What the PID file says, and whether that process is really the watcher and still alive."""

    pid: int
    started_at: str
    create_time: float
    alive: bool
    args: list[str]

    @property
    def uptime_s(self) -> float:
        return max(0.0, time.time() - self.create_time)


def read_pid_file(home: Path) -> DaemonInfo | None:
    doc = read_json_file(home / PID_FILE)
    if not doc or not isinstance(doc.get("pid"), int):
        return None
    pid, created = doc["pid"], float(doc.get("create_time") or 0)
    try:
        proc = psutil.Process(pid)
        # A recycled PID belongs to a process that started later than the one that wrote the file.
        alive = abs(proc.create_time() - created) < 1.0 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        alive = False
    return DaemonInfo(pid, str(doc.get("started_at")), created, alive, list(doc.get("args") or []))


@dataclass
class Health:
    """Whether the watcher for a home is alive: its PID runs and its heartbeat is recent."""

    alive: bool
    reason: str
    pid: int | None = None


def watcher_health(home: Path, stale_after_s: float = STALE_AFTER_S) -> Health:
    info = read_pid_file(home)
    if info is None:
        return Health(False, f"no watcher is running for {home} (no PID file)")
    if not info.alive:
        return Health(False, f"the watcher (PID {info.pid}) is no longer running", info.pid)
    status = read_json_file(home / STATUS_FILE)
    if status is None and (home / STATUS_FILE).exists():
        # There but unreadable: on Windows another process (a reader, Defender, OneDrive) holds it
        # longer than the read retries. That says nothing about the watcher; its PID is alive.
        return Health(True, "alive (status file busy)", info.pid)
    status = status or {}
    if status.get("pid") != info.pid:
        if info.uptime_s < stale_after_s:
            return Health(True, "starting", info.pid)  # it writes its first status once it has scanned
        return Health(False, f"the watcher (PID {info.pid}) has written no status in {info.uptime_s:.0f} s", info.pid)
    age = time.time() - float(status.get("heartbeat") or 0)
    if age > stale_after_s:
        return Health(False, f"the watcher (PID {info.pid}) has not written a heartbeat for {age:.0f} s: hung?",
                      info.pid)
    return Health(True, "alive", info.pid)


def log_tail(home: Path, lines: int = 15) -> list[str]:
    """The last lines of the watcher's log, for messages about a watcher that died."""
    try:
        return (home / LOG_FILE).read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


class InstanceLock:
    """Held for the watcher's whole life: a second watcher on the same home is refused with our PID."""

    def __init__(self, home: Path):
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        self._lock: FileLock | None = None

    def acquire(self, args: list[str] | None = None) -> InstanceLock:
        lock = FileLock(self.home / LOCK_FILE)
        if not lock.try_acquire():
            info = read_pid_file(self.home)
            pid = f"PID {info.pid}" if info else "PID unknown"
            raise PosttrainError(f"a watcher is already running for {self.home} ({pid})",
                                 remedy="`posttrain status` shows it; `posttrain stop` stops it")
        self._lock = lock
        (self.home / STOP_FILE).unlink(missing_ok=True)  # a request left for an earlier watcher is not ours
        stale = read_pid_file(self.home)
        if stale is not None and stale.pid != os.getpid():
            # We hold the lock, so whoever wrote this file is gone (or never released it by dying).
            log.warning("removed a stale PID file: PID %d (started %s) is no longer running", stale.pid,
                        stale.started_at)
        me = psutil.Process()
        write_json_atomic(self.home / PID_FILE, {"pid": os.getpid(), "started_at": utcnow(),
                                                 "create_time": me.create_time(), "args": args or sys.argv})
        return self

    def release(self) -> None:
        if self._lock is None:
            return
        for name in (PID_FILE, STATUS_FILE, STOP_FILE):
            doc = read_json_file(self.home / name) or {}
            if doc.get("pid") == os.getpid():
                (self.home / name).unlink(missing_ok=True)
        self._lock.release()
        self._lock = None

    def __enter__(self) -> InstanceLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def install_stop_handlers(stop: threading.Event) -> None:
    """SIGTERM/SIGINT: let the current step finish, then exit 0. A second SIGINT aborts at once."""

    def handler(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        log.info("%s received: finishing the current step, then stopping (resumable)%s", name,
                 "; press Ctrl-C again to abort now" if signum == signal.SIGINT else "")
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def setup_file_logging(home: Path, max_bytes: int = 10_000_000, backups: int = 5) -> Path:
    """posttrain's log to <home>/logs/watch.log, rotated by size, `backups` old files kept."""
    path = home / LOG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger("posttrain")
    if not any(isinstance(h, logging.handlers.RotatingFileHandler) and Path(h.baseFilename) == path
               for h in root.handlers):
        handler = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups,
                                                       encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(process)d] %(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    return path


def spawn_detached(argv: list[str], home: Path, timeout: float = 30.0) -> int:
    """Start `posttrain <argv>` in a new session, detached from this terminal; return its PID once
    it holds the lock (or raise with the reason it gave up)."""
    home.mkdir(parents=True, exist_ok=True)
    out = home / "logs" / "watch.stdout.log"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "ab") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "posttrain", *argv], stdin=subprocess.DEVNULL,
                                stdout=sink, stderr=subprocess.STDOUT, close_fds=True, **detached_kwargs())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = read_pid_file(home)
        if info is not None and info.alive and started_by(info.pid, proc.pid):
            return info.pid
        code = proc.poll()
        if code is not None:
            tail = out.read_text(errors="replace").strip().splitlines()[-1:] if out.exists() else []
            raise PosttrainError(f"the watcher exited at once (code {code}): {' '.join(tail) or 'no output'}",
                                 remedy=f"see {out}")
        time.sleep(0.1)
    raise PosttrainError(f"the watcher (PID {proc.pid}) did not start within {timeout:g} s", remedy=f"see {out}")


def started_by(pid: int, spawned: int) -> bool:
    """Whether process `pid` is the one we spawned or runs under it. On Windows a venv's
    `Scripts\\python.exe` is a launcher that runs the real interpreter as its child: the PID that
    `Popen` returns is the launcher's, the watcher writes its own (issue 28)."""
    if pid == spawned:
        return True
    try:
        return any(parent.pid == spawned for parent in psutil.Process(pid).parents())
    except psutil.Error:
        return False


def _wait_gone(proc: psutil.Process, timeout: float) -> bool:
    """True once the process has exited. A zombie counts as exited: it has stopped, only its parent
    (when that is not init, e.g. a test) has not collected its exit status yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def request_stop(home: Path, pid: int) -> None:
    """Ask watcher `pid` to finish its current step and exit, through a file it polls: the way that
    works on every OS (Windows has no SIGTERM to deliver to another process)."""
    write_json_atomic(home / STOP_FILE, {"pid": pid, "requested_at": utcnow()})


def stop_daemon(home: Path, grace_s: float = 60.0, *, use_signal: bool = True) -> tuple[int, str]:
    """Ask the watcher to stop (stop file, and SIGTERM where there are signals), wait up to `grace_s`
    for a clean stop, then kill it. (pid, how it ended)."""
    info = read_pid_file(home)
    if info is None or not info.alive:
        if info is not None:
            (home / PID_FILE).unlink(missing_ok=True)
            (home / STATUS_FILE).unlink(missing_ok=True)
        raise PosttrainError(f"no watcher is running for {home}", remedy="start one with `posttrain watch DIR --daemon`")
    proc = psutil.Process(info.pid)
    request_stop(home, info.pid)
    if use_signal and sys.platform != "win32":  # on Windows terminate() would be TerminateProcess: a kill
        proc.terminate()
    if _wait_gone(proc, grace_s):
        return info.pid, "stopped"
    proc.kill()
    if not _wait_gone(proc, 10):
        raise PosttrainError(f"watcher PID {info.pid} survived SIGKILL", remedy="check it with `ps`")
    # A killed process cleans nothing up; the lock went with it, the files stay.
    (home / PID_FILE).unlink(missing_ok=True)
    (home / STATUS_FILE).unlink(missing_ok=True)
    return info.pid, "killed"


def _beat(watcher, done: threading.Event, home: Path, stop: threading.Event) -> None:
    """Rewrite the status file every HEARTBEAT_S, so waiting commands can tell a live watcher from a
    hung or dead one (a PID alone cannot say 'hung'); and look for a stop request (`request_stop`)."""
    while not done.wait(HEARTBEAT_S):
        watcher.publish()
        asked = read_json_file(home / STOP_FILE)
        if asked is not None and asked.get("pid") == os.getpid() and not stop.is_set():
            log.info("stop requested (%s): finishing the current step, then stopping (resumable)", STOP_FILE)
            stop.set()


def _keep_native_traces(home: Path) -> None:
    """A fault in native code kills the process before any Python handler runs: faulthandler writes
    the Python stacks of every thread to the log first, so the watcher does not die without a word."""
    import faulthandler

    trace = open(home / "logs" / "watch.faults.log", "a")  # noqa: SIM115 - held open for the process's life
    faulthandler.enable(file=trace, all_threads=True)


def serve_watch(home: Path, roots: list[Path], handler_factory, *, pattern: str, poll_interval_s: float,
                settle_s: float, once: bool = False, use_events: bool = True, jobs: int = 1,
                allow_pickle: bool = False, log_max_bytes: int = 10_000_000, log_backups: int = 5,
                stop_event: threading.Event | None = None, settings: dict[str, Any] | None = None) -> int:
    """The watcher as a service: lock, PID file, log, signals, status file; serve (or scan once).

    `handler_factory(watcher, stop_event)` returns the per-checkpoint handler, so the handler can
    report its stage to the watcher and stop at a step boundary when asked. Returns the exit code:
    0, or 1 when `once` and a checkpoint failed.
    """
    from posttrain import paths
    from posttrain.pipeline._watcher import Watcher
    from posttrain.store import Store

    stop = stop_event or threading.Event()
    log_path = setup_file_logging(home, log_max_bytes, log_backups)  # first: the stale-PID note goes there
    _keep_native_traces(home)
    lock = InstanceLock(home).acquire(args=sys.argv)
    # Its own event: a stop request lets the current step finish, and the heartbeat goes on meanwhile.
    done_beating = threading.Event()
    beat = threading.Thread(target=lambda: _beat(watcher, done_beating, home, stop), name="heartbeat",
                            daemon=True)
    try:
        install_stop_handlers(stop)
        store = Store(paths.store_path(home))
        status_path = home / STATUS_FILE
        pid = os.getpid()

        def publish(doc: dict[str, Any]) -> None:
            write_json_atomic(status_path, {**doc, "pid": pid, "home": str(home), "log": str(log_path),
                                            "updated_at": utcnow(), "heartbeat": time.time(),
                                            "mode": "once" if once else "watch", "settings": settings})

        watcher = Watcher(roots, lambda p, s: handler(p, s), store=store, pattern=pattern,
                          poll_interval_s=poll_interval_s, settle_s=settle_s, use_events=use_events,
                          allow_pickle=allow_pickle, jobs=jobs, stop_event=stop, on_status=publish)
        handler = handler_factory(watcher, stop)
        beat.start()
        log.info("watcher started (PID %d): %s, pattern %s, %s, rescan every %g s", pid,
                 ", ".join(map(str, watcher.roots)), pattern, "file events on" if use_events else "polling only",
                 poll_interval_s)
        if once:
            results = watcher.run_once()
            return 1 if any(r.get("status") == "failed" for r in results) else 0
        watcher.serve()
        return 0
    finally:
        done_beating.set()
        if beat.is_alive():
            beat.join()  # before the status file is removed, so no late beat writes it again
        lock.release()
