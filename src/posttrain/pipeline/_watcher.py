"""Watch directories for finished checkpoints and hand each one, once, to a handler.

File events (watchdog: inotify on Linux) say *where* something changed; a checkpoint is queued only
when `inspect_checkpoint` says it is complete after its files have been quiet for `settle_s`, so a
half-written checkpoint is never processed. A full rescan every `poll_interval_s` catches what events
miss (network filesystems, inotify limits). Each checkpoint is identified by its content hash and
recorded in the store's `processed_checkpoints`, so it is processed exactly once, across restarts too.
A bad checkpoint is logged with its reason and the watcher carries on with the others.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from posttrain.checkpoint import Verdict, checkpoint_sha256, inspect_checkpoint
from posttrain.errors import PosttrainError
from posttrain.store import Store, utcnow

log = logging.getLogger("posttrain.pipeline")

# Statuses in processed_checkpoints that mean "handled; never again". Anything else (queued,
# running, interrupted) was cut short by a stop or a crash and is picked up on the next start.
FINAL = ("succeeded", "failed")
# After a change, incomplete checkpoints are re-inspected this often for this long, in case the
# event for the last write was lost (a directory created and filled faster than its watch was added).
_RECHECK_EVERY_S = 2.0
_RECHECK_FOR_S = 120.0

# handler(checkpoint_dir, checkpoint_sha256) -> {"status": "succeeded"|"failed"|"interrupted", "run_id": ...}
Handler = Callable[[Path, str], dict[str, Any] | None]


def _glob_name(part: str) -> str:
    """One path component: `*` and `?` within the name, `{a,b}` either alternative (no nesting)."""
    if (m := re.fullmatch(r"(.*?)\{([^{}/]*)\}(.*)", part)) is not None:
        head, options, tail = m.groups()
        return _glob_name(head) + "(?:" + "|".join(_glob_name(o) for o in options.split(",")) + ")" + _glob_name(tail)
    return "".join("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c) for c in part)


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """A glob over relative directory paths: `*` and `?` stay within one name, `{a,b}` is either name,
    `**` spans any depth (including none), so `**/final_model` matches `final_model` and
    `a/b/final_model`, and `**/{final_model,checkpoint-*}` also `a/checkpoint-500`."""
    parts = [p for p in pattern.strip().strip("/").split("/") if p]
    if not parts:
        raise PosttrainError(f"empty watch pattern {pattern!r}", remedy="use e.g. '**/final_model'")
    rx = ""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            rx += ".*" if last else "(?:[^/]+/)*"
            continue
        rx += _glob_name(part)
        rx += "" if last else "/"
    return re.compile(rx + r"\Z")


SERIES_NAME = "checkpoint-*"


def series_pattern(pattern: str) -> str:
    """The pattern that also takes the `checkpoint-N` folders saved beside what `pattern` matches
    (watch's `series = true`): `**/final_model` becomes `**/{final_model,checkpoint-*}`."""
    head, _, last = pattern.strip().rstrip("/").rpartition("/")
    if SERIES_NAME in last:
        return pattern
    inner = last[1:-1] if last.startswith("{") and last.endswith("}") and "{" not in last[1:-1] else last
    return f"{head}/{{{inner},{SERIES_NAME}}}" if head else f"{{{inner},{SERIES_NAME}}}"


def _signature(path: Path) -> tuple | None:
    """Names, sizes, modification and change times of a directory's files: equal means nothing was
    written (ctime also moves on chmod, so fixing a permission makes a checkpoint be looked at again)."""
    try:
        return tuple(sorted((e.name, st.st_size, st.st_mtime_ns, st.st_ctime_ns) for e in os.scandir(path)
                            if e.is_file() for st in (e.stat(),)))
    except OSError:
        return None


@dataclass
class _Candidate:
    path: Path
    last_event: float = 0.0
    last_check: float = 0.0
    reason: str = ""


@dataclass
class WatchStatus:
    """What `posttrain status` shows; written to the status file on every change."""

    roots: list[str]
    pattern: str
    started_at: str = field(default_factory=utcnow)
    queue: list[str] = field(default_factory=list)
    current: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_scan_at: str | None = None
    events: bool = True
    poll_interval_s: float = 300.0


class Watcher:
    """Finds finished checkpoints under `roots` that match `pattern` and feeds them to `handler`."""

    def __init__(self, roots: list[Path], handler: Handler, *, store: Store, pattern: str = "**/final_model",
                 poll_interval_s: float = 300.0, settle_s: float = 1.0, use_events: bool = True,
                 allow_pickle: bool = False, jobs: int = 1, stop_event: threading.Event | None = None,
                 on_status: Callable[[dict[str, Any]], None] | None = None):
        self.roots = [Path(r).resolve() for r in roots]
        for root in self.roots:
            if not root.is_dir():
                raise PosttrainError(f"cannot watch {root}: not a directory", remedy="create it or fix the path")
        self.handler = handler
        self.store = store
        self.pattern = pattern
        self.regex = compile_pattern(pattern)
        self.poll_interval_s = poll_interval_s
        self.settle_s = settle_s
        self.use_events = use_events
        self.allow_pickle = allow_pickle
        self.jobs = max(1, jobs)
        self.stop = stop_event or threading.Event()
        self.on_status = on_status
        self.status = WatchStatus([str(r) for r in self.roots], pattern, events=use_events,
                                  poll_interval_s=poll_interval_s)
        self._lock = threading.Lock()
        self._candidates: dict[Path, _Candidate] = {}
        self._queue: queue.Queue[tuple[Path, str]] = queue.Queue()
        self._in_session: set[str] = set()
        # path → file signature when last inspected: unchanged directories are not inspected again.
        self._seen: dict[Path, tuple | None] = {}
        # (path, file sizes and mtimes) → sha256: a rescan does not re-hash gigabytes that did not change.
        self._hashes: dict[tuple[Path, tuple], str] = {}
        self.results: list[dict[str, Any]] = []

    # -- finding candidates --------------------------------------------------------------------
    def _match(self, path: Path) -> Path | None:
        """The checkpoint directory (matching the pattern) that `path` is or lies in, if any."""
        for root in self.roots:
            try:
                rel = path.relative_to(root)
            except ValueError:
                continue
            parts = rel.parts
            for i in range(len(parts), 0, -1):
                if self.regex.match("/".join(parts[:i])):
                    return root.joinpath(*parts[:i])
        return None

    def scan(self) -> list[Path]:
        """Every directory under the roots that matches the pattern (not descending into matches)."""
        found = []
        for root in self.roots:
            for dirpath, dirnames, _ in os.walk(root, onerror=lambda e: log.warning("cannot list %s: %s",
                                                                                    e.filename, e.strerror)):
                keep = []
                for d in sorted(dirnames):
                    rel = os.path.relpath(os.path.join(dirpath, d), root).replace(os.sep, "/")
                    if self.regex.match(rel):
                        found.append(Path(dirpath) / d)
                    else:
                        keep.append(d)
                dirnames[:] = keep
        return found

    # -- deciding ------------------------------------------------------------------------------
    def _processed(self, sha: str) -> str | None:
        return self.store.processed.status(sha)

    def _record(self, sha: str, path: Path, status: str, run_id: str | None = None) -> None:
        self.store.processed.record(sha, str(path), status, run_id)

    def _sha(self, verdict: Verdict) -> str:
        key = (verdict.path, verdict.content_signature())
        if key not in self._hashes:
            self._hashes[key] = checkpoint_sha256(verdict)
        return self._hashes[key]

    def check(self, path: Path, *, settle_s: float, quiet: bool = False) -> bool:
        """Inspect one candidate; queue it when complete and not yet processed. True when queued."""
        with self._lock:
            cand = self._candidates.setdefault(path, _Candidate(path))
            cand.last_check = time.monotonic()
        # Taken before inspecting: if the files change meanwhile, the next look sees a new signature.
        self._seen[path] = _signature(path)
        try:
            verdict = inspect_checkpoint(path, settle_seconds=settle_s, allow_pickle=self.allow_pickle)
        except Exception as e:  # the detector promises not to raise; if it does, one bad dir must not stop us
            verdict = Verdict(path, False, f"inspection failed: {e.__class__.__name__}: {e}")
        if not verdict.complete:
            if verdict.reason != cand.reason:
                # Said once per reason: a checkpoint being written passes through a few, a broken one stays.
                level = logging.INFO if quiet else logging.WARNING
                log.log(level, "not a complete checkpoint (yet): %s: %s", path, verdict.reason)
                cand.reason = verdict.reason
            return False
        try:
            sha = self._sha(verdict)
        except OSError as e:
            log.warning("cannot read %s to hash it: %s", path, e)
            return False
        with self._lock:
            self._candidates.pop(path, None)
        if sha in self._in_session:
            return False
        self._in_session.add(sha)
        done = self._processed(sha)
        if done in FINAL:
            log.info("already processed (%s): %s [%s]", done, path, sha[:12])
            return False
        self._record(sha, path, "queued")
        self._queue.put((path, sha))
        with self._lock:
            self.status.queue.append(str(path))
        self._publish()
        log.info("queued %s [%s]", path, sha[:12])
        return True

    def scan_and_check(self) -> int:
        """Look at every candidate whose files changed since it was last looked at.

        One settle wait covers the whole scan (not one per checkpoint), and checkpoints already
        handled are recognised by their file signature without reading them again, so a directory
        with hundreds of finished checkpoints costs a directory listing per rescan.
        """
        changed = {p: sig for p in self.scan() if (sig := _signature(p)) is None or self._seen.get(p) != sig}
        if changed and self.settle_s > 0:
            self.stop.wait(self.settle_s)
        queued = 0
        for path, before in changed.items():
            if self.stop.is_set():
                break
            if _signature(path) != before:
                log.info("still being written: %s", path)
                continue
            queued += self.check(path, settle_s=0)
        self.status.last_scan_at = utcnow()
        self._publish()
        return queued

    # -- processing ----------------------------------------------------------------------------
    def note_stage(self, path: Path, run_id: str | None, step: str | None) -> None:
        """Called by the handler as its run moves from step to step (shown by `posttrain status`)."""
        with self._lock:
            entry = self.status.current.setdefault(str(path), {})
            entry.update({"run_id": run_id, "step": step, "since": utcnow()})
        self._publish()

    def _process(self, path: Path, sha: str) -> dict[str, Any]:
        with self._lock:
            if str(path) in self.status.queue:
                self.status.queue.remove(str(path))
            self.status.current[str(path)] = {"run_id": None, "step": None, "since": utcnow()}
        self._publish()
        self._record(sha, path, "running")
        log.info("processing %s [%s]", path, sha[:12])
        try:
            out = dict(self.handler(path, sha) or {})
            out.setdefault("status", "succeeded")
        except PosttrainError as e:
            out = {"status": "failed", "error": e.one_line()}
        except Exception as e:  # a crashing handler must not take the watcher down with it
            log.exception("processing %s crashed", path)
            out = {"status": "failed", "error": f"{e.__class__.__name__}: {e}"}
        out.update(path=str(path), checkpoint_sha256=sha)
        self._record(sha, path, out["status"], out.get("run_id"))
        level = logging.INFO if out["status"] != "failed" else logging.ERROR
        log.log(level, "%s %s%s", out["status"], path, f": {out['error']}" if out.get("error") else "")
        with self._lock:
            self.status.current.pop(str(path), None)
            self.results.append(out)
        self._publish()
        return out

    def _worker(self, until_empty: bool) -> None:
        while True:
            if self.stop.is_set():
                return
            try:
                path, sha = self._queue.get(timeout=0.2)
            except queue.Empty:
                if until_empty:
                    return
                continue
            try:
                self._process(path, sha)
            finally:
                self._queue.task_done()

    def _start_workers(self, until_empty: bool) -> list[threading.Thread]:
        workers = [threading.Thread(target=self._worker, args=(until_empty,), name=f"posttrain-worker-{i}",
                                    daemon=True) for i in range(self.jobs)]
        for w in workers:
            w.start()
        return workers

    # -- modes ---------------------------------------------------------------------------------
    def run_once(self) -> list[dict[str, Any]]:
        """Scan, process every finished checkpoint not processed before, return (cron: `watch --once`)."""
        self.scan_and_check()
        for w in self._start_workers(until_empty=True):
            w.join()
        return self.results

    def serve(self) -> None:
        """Watch until `stop` is set; then let the current runs reach a step boundary and return."""
        observer = self._start_observer() if self.use_events else None
        workers = self._start_workers(until_empty=False)
        try:
            self.scan_and_check()
            next_poll = time.monotonic() + self.poll_interval_s
            while not self.stop.wait(0.1):
                now = time.monotonic()
                with self._lock:
                    due = [c for c in self._candidates.values()
                           if c.last_event and now - c.last_event >= self.settle_s and c.last_check < c.last_event]
                    # Quiet but still incomplete after a recent change: look again now and then,
                    # in case the event for the last write was lost.
                    recheck = [c for c in self._candidates.values()
                               if c.last_event and self.settle_s <= now - c.last_event < _RECHECK_FOR_S
                               and now - c.last_check >= _RECHECK_EVERY_S and c not in due]
                for cand in due + recheck:
                    # Events already proved the files quiet for settle_s: no second settle wait here.
                    self.check(cand.path, settle_s=0, quiet=True)
                if now >= next_poll:
                    self.scan_and_check()
                    next_poll = time.monotonic() + self.poll_interval_s
        finally:
            self.stop.set()
            if observer is not None:
                observer.stop()
                observer.join(timeout=10)
            for w in workers:
                w.join()
            log.info("watcher stopped")

    def _on_fs_event(self, *paths: str) -> None:
        now = time.monotonic()
        for p in paths:
            if not p:
                continue
            target = self._match(Path(os.fsdecode(p)))
            if target is not None:
                with self._lock:
                    cand = self._candidates.setdefault(target, _Candidate(target))
                    cand.last_event = now

    def _start_observer(self):
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        watcher = self

        class _Events(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type in ("opened", "closed_no_write"):
                    return  # reads (our own inspection included) change nothing
                watcher._on_fs_event(event.src_path, getattr(event, "dest_path", ""))

        observer = Observer()
        try:
            for root in self.roots:
                observer.schedule(_Events(), str(root), recursive=True)
            observer.start()
        except OSError as e:  # e.g. inotify watch limit reached: polling still works
            log.warning("file events unavailable (%s); relying on the %g s rescan", e, self.poll_interval_s)
            self.status.events = False
            return None
        return observer

    def publish(self) -> None:
        """Write the status now (the daemon's heartbeat calls this every few seconds)."""
        self._publish()

    def _publish(self) -> None:
        if self.on_status is None:
            return
        with self._lock:
            doc = {"roots": self.status.roots, "pattern": self.status.pattern, "started_at": self.status.started_at,
                   "queue": list(self.status.queue), "current": {k: dict(v) for k, v in self.status.current.items()},
                   "last_scan_at": self.status.last_scan_at, "events": self.status.events,
                   "poll_interval_s": self.status.poll_interval_s}
        try:
            self.on_status(doc)
        except Exception:
            log.exception("writing the status file failed")
