"""One progress display per long command, and the libraries' own output kept off the terminal.

A command that runs libraries (`eval`, `convert`, `run`, `ship`, `serve`, …) shows one rich progress
line for the stage it is in (spinner, stage, done/total, rate, ETA, elapsed) and prints one line per
stage when it ends; a stage with nothing to count (a model load, a build, a child process) still shows
its name, the spinner and the time it has taken. Code deep inside a
stage (the llama.cpp scoring loop, `MeasuredLM`) reports its work through the module functions
`work` / `advance`, which do nothing when no display is active (library use, tests, step children).

A step child of the pipeline reports the same way into a small file (`FileReporter`) that the
parent's display reads. What the libraries print meanwhile is `posttrain.llamacpp`'s business (`library_output_to`).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

# A command whose work is over within this shows nothing of its display: its result, or its one error
# line for bad input, is all it prints (a stage that began and failed at once is no news). Once work
# takes longer, the title, the log's name and every stage's line are printed, those that ended before
# included; on a terminal the live line shows each stage as it runs anyway.
QUIET_UNDER_S = 2.0


def fmt_duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


class Display:
    """The stage in progress as one live line; each finished stage as a printed line.

    Thread-safe (rich's Progress is): the runner's steps and the scoring loop report from wherever they run.
    """

    def __init__(self, console, *, log_path: Path | None = None, title: str | None = None):
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.console = console
        self.log_path = log_path
        self._lock = threading.Lock()
        self._progress = Progress(
            # The spinner and the elapsed time move while a stage waits (a model load, a build, a child
            # process) with nothing to count: a wait shows as a wait, not as a hung command.
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=None), _CountColumn(),
            _RateColumn(), _EtaColumn(), TimeElapsedColumn(),
            # The live line stays at the bottom; nothing of sys.stdout/stderr is routed through it
            # (that is where the libraries write, and it goes to the log file).
            console=console, transient=True, expand=True, redirect_stdout=False, redirect_stderr=False)
        self._task = None
        self._stage: str | None = None
        self._unit = "items"
        self._started = 0.0
        self._title = title
        self._live = False
        self._headed = False
        self._header_timer: threading.Timer | None = None
        self._held: list[str] = []  # stage lines that ended before the header, printed with it
        self._closed = threading.Event()
        self._children: Path | None = None
        self._started_wall = 0.0

    # -- lifetime --------------------------------------------------------------------------------
    def __enter__(self) -> Display:
        # Not a terminal (a pipe, a file, a test): no live line, only the stage lines.
        self._live = self.console.is_terminal
        if self._live:
            self._progress.start()
        _set_current(self)
        return self

    def __exit__(self, *exc) -> None:
        self._closed.set()
        if self._header_timer is not None:
            self._header_timer.cancel()
        _set_current(None, only=self)
        if self._stage is not None:
            self.end("stopped" if exc[0] is not None else "", ok=exc[0] is None)
        if self._live:
            self._progress.stop()

    # -- stages ----------------------------------------------------------------------------------
    @property
    def stage(self) -> str | None:
        """The stage shown now, None between stages."""
        return self._stage

    def _head_late(self) -> None:
        """The work has gone on past QUIET_UNDER_S: from now on the command says what it does."""
        with self._lock:
            if not self._headed and not self._closed.is_set():
                self._header()

    def _header(self) -> None:
        # Printed with the first stage: a command that fails before any work prints its one error line only.
        from posttrain._terminal import esc

        self._headed = True
        if self._title:
            self._progress.console.print(esc(self._title), highlight=False, soft_wrap=True)
        if self.log_path is not None:
            self._progress.console.print(f"[dim]library output: {esc(self.log_path)}[/]", highlight=False,
                                         soft_wrap=True)
        for line in self._held:
            self._progress.console.print(line, highlight=False)
        self._held.clear()

    def begin(self, stage: str, total: int | None = None, unit: str = "items") -> None:
        """Start showing `stage` (ending the one before it)."""
        from posttrain._terminal import esc

        with self._lock:
            if self._stage is not None:
                self._end_locked("")
            if not self._headed and self._header_timer is None:
                self._header_timer = threading.Timer(QUIET_UNDER_S, self._head_late)
                self._header_timer.daemon = True
                self._header_timer.start()
            self._stage, self._unit, self._started = stage, unit, time.perf_counter()
            self._started_wall = time.time()
            self._task = self._progress.add_task(esc(stage), total=total, unit=unit)

    def add_total(self, n: int, unit: str | None = None) -> None:
        with self._lock:
            if self._task is None:
                return
            task = self._progress.tasks[-1]
            fields = {"unit": unit} if unit else {}
            self._progress.update(self._task, total=(task.total or 0) + n, **fields)
            if unit:
                self._unit = unit

    def advance(self, n: int = 1) -> None:
        if self._task is not None:
            self._progress.advance(self._task, n)

    def detail(self, text: str | None) -> None:
        """A short note beside the stage's name on the live line (e.g. nodes in use); None clears it."""
        from posttrain._terminal import esc

        with self._lock:
            if self._task is not None:
                self._progress.update(self._task, description=esc(f"{self._stage} · {text}" if text else self._stage))

    def log(self, text: str) -> None:
        """One line into the log file the display names (where stderr goes meanwhile); nothing with --verbose,
        where stderr is the terminal and the display's own lines say it."""
        if self.log_path is None:
            return
        import sys

        with contextlib.suppress(Exception):  # a log line is a nicety; a closed stream must not fail the work
            print(f"{time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)

    def done_count(self) -> int:
        with self._lock:
            return int(self._progress.tasks[-1].completed) if self._task is not None else 0

    def catch_up(self, to: int) -> None:
        """At least `to` done: for backends that report their work only when all of it is finished."""
        with self._lock:
            if self._task is not None and self._progress.tasks[-1].completed < to:
                self._progress.update(self._task, completed=to)

    def end(self, note: str = "", ok: bool = True) -> None:
        with self._lock:
            if self._stage is not None:
                self._end_locked(note, ok)

    def _end_locked(self, note: str, ok: bool = True) -> None:
        from posttrain._terminal import esc

        self._sync_children()  # the child's last counts, written just before it ended
        task = next(t for t in self._progress.tasks if t.id == self._task)
        seconds = time.perf_counter() - self._started
        parts = [f"{'[green]✓[/]' if ok else '[red]✗[/]'} {esc(self._stage)}"]
        if task.total:
            pct = 100.0 * task.completed / task.total
            parts.append(f"{int(task.completed)}/{int(task.total)} {esc(self._unit)} ({pct:.0f} %)")
            if task.completed and seconds > 0:
                parts.append(f"{task.completed / seconds:.1f} {esc(self._unit)}/s")
        parts.append(fmt_duration(seconds))
        if note:
            parts.append(esc(note))
        self._progress.remove_task(self._task)
        self._task, self._stage = None, None
        if not self._headed and seconds < QUIET_UNDER_S:
            self._held.append("  ".join(parts))  # over at once: see QUIET_UNDER_S
            return
        if not self._headed:
            self._header()
        self._progress.console.print("  ".join(parts), highlight=False)

    def follow_children(self, folder: Path) -> None:
        """Show the counts that child processes report into `folder` (FileReporter) in the current stage."""
        self._children = folder

        def poll() -> None:
            while not self._closed.wait(0.5):
                with self._lock:
                    self._sync_children()

        threading.Thread(target=poll, name="posttrain-progress", daemon=True).start()

    def _sync_children(self) -> None:
        # Only what a child wrote since this stage began: an earlier step's file is not this one's.
        if self._children is None or self._task is None:
            return
        state = latest_child_progress(self._children, since=self._started_wall)
        if not state or not state.get("stage"):
            return
        from posttrain._terminal import esc

        self._unit = state.get("unit") or "items"
        self._progress.update(self._task, description=esc(f"{self._stage} · {state['stage']}"),
                              total=state.get("total"), completed=state.get("done") or 0, unit=self._unit)

    def line(self, text: str) -> None:
        """A line above the live display (already escaped markup)."""
        if not self._headed:
            self._header()
        self._progress.console.print(text, highlight=False, soft_wrap=True)


def _columns():
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task):
            speed = task.finished_speed or task.speed
            return Text("" if not speed else f"{speed:.1f} {task.fields.get('unit', '')}/s", style="cyan")

    class EtaColumn(ProgressColumn):
        max_refresh = 0.5

        def render(self, task):
            remaining = task.time_remaining
            return Text("" if remaining is None else f"ETA {fmt_duration(remaining)}", style="dim")

    class CountColumn(ProgressColumn):
        """done/total and the percentage; nothing for a wait that has no count ("0/? 0%" says nothing)."""

        def render(self, task):
            if task.total is None:
                return Text("")
            return Text(f"{int(task.completed)}/{int(task.total)} {task.percentage:>3.0f}%", style="progress.percentage")

    return RateColumn, EtaColumn, CountColumn


_RateColumn, _EtaColumn, _CountColumn = _columns()

# -- the reporting side: used by code that does not know whether anyone is watching ---------------

_current: Display | None = None
_current_lock = threading.Lock()


def _set_current(display: Display | None, only: Display | None = None) -> None:
    global _current
    with _current_lock:
        if only is None or _current is only:
            _current = display


def current() -> Display | None:
    return _current


def begin(stage: str, total: int | None = None, unit: str = "items") -> None:
    if _current is not None:
        _current.begin(stage, total, unit)


def end(note: str = "") -> None:
    if _current is not None:
        _current.end(note)


def advance(n: int = 1) -> None:
    if _current is not None:
        _current.advance(n)


@contextlib.contextmanager
def aside(then: str, unit: str = "items") -> Iterator[Callable[[str], None]]:
    """A `say` for a wait that happens only sometimes (measuring the machine profile): what it says
    begins a stage of its own, and after the block the display comes back to `then`. When nothing was
    said, nothing is begun (the stage in progress stays as it is)."""
    said: list[str] = []

    def say(text: str) -> None:
        said.append(text)
        begin(text)

    yield say
    if said:
        begin(then, unit=unit)


@contextlib.contextmanager
def work(n: int, unit: str = "requests") -> Iterator[None]:
    """`n` more units of work in the current stage; when the block ends they count as done, for
    backends that do not report item by item."""
    display = _current
    if display is None:
        yield
        return
    before = display.done_count()
    display.add_total(n, unit)
    yield
    display.catch_up(before + n)


@contextlib.contextmanager
def busy(text: str) -> Iterator[None]:
    """A wait of unknown length that a user would otherwise sit through in silence (a one-time download
    and extraction): a stage of its own when none is shown, else a note beside the stage in progress
    (ending it would print that stage as done); either way the live line's spinner and elapsed time
    run, a line says how long it took, and the log file gets both ends."""
    display = _current
    if not isinstance(display, Display):  # no display, or a step child's FileReporter
        yield
        return
    started = time.perf_counter()
    stage = display.stage
    display.log(f"posttrain: {text} ...")
    ok = False
    try:
        if stage is None:
            display.begin(text)
        else:
            display.detail(text)
        yield
        ok = True
    finally:
        seconds = time.perf_counter() - started
        if stage is None:
            display.end(ok=ok)
        else:
            if display.stage == stage:
                display.detail(None)
            from posttrain._terminal import esc

            display.line(f"{'[green]✓[/]' if ok else '[red]✗[/]'} {esc(text)}  {fmt_duration(seconds)}")
        display.log(f"posttrain: {text}: {'done' if ok else 'failed'} in {fmt_duration(seconds)}")


# -- progress from child processes (the pipeline's isolated steps) ---------------------------------

# Set by a display that follows child processes; a step child that sees it reports into that folder.
PROGRESS_DIR_ENV = "POSTTRAIN_PROGRESS_DIR"


class FileReporter:
    """Stands in for a Display in a child process: the current stage and its counts as a small JSON
    file (`<dir>/<pid>.json`, replaced atomically, at most every half second) that the parent's
    display reads."""

    def __init__(self, path: Path, prefix: str = ""):
        self.path, self.prefix = path, prefix
        self._state = {"stage": None, "done": 0, "total": None, "unit": "items"}
        self._lock = threading.Lock()
        self._written = 0.0

    def _write(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._written < 0.5:
            return
        self._written = now
        from posttrain._files import write_json_atomic

        with contextlib.suppress(OSError):  # progress is a nicety; a full disk must not fail the step
            write_json_atomic(self.path, self._state)

    def begin(self, stage: str, total: int | None = None, unit: str = "items") -> None:
        with self._lock:
            self._state = {"stage": f"{self.prefix}{stage}", "done": 0, "total": total, "unit": unit}
            self._write(force=True)

    def add_total(self, n: int, unit: str | None = None) -> None:
        with self._lock:
            self._state["total"] = (self._state["total"] or 0) + n
            if unit:
                self._state["unit"] = unit
            self._write()

    def advance(self, n: int = 1) -> None:
        with self._lock:
            self._state["done"] += n
            self._write()

    def detail(self, text: str) -> None:
        """The parent's line shows the counts only: a note (nodes in use) is not passed on."""

    def done_count(self) -> int:
        return int(self._state["done"])

    def catch_up(self, to: int) -> None:
        with self._lock:
            self._state["done"] = max(self._state["done"], to)
            self._write(force=True)

    def end(self, note: str = "", ok: bool = True) -> None:
        with self._lock:
            self._write(force=True)


def report_to_parent(prefix: str = "") -> None:
    """In a child process: report progress to the parent's display, when it asked for it."""
    folder = os.environ.get(PROGRESS_DIR_ENV)
    if folder:
        _set_current(FileReporter(Path(folder) / f"{os.getpid()}.json", prefix))  # type: ignore[arg-type]


def latest_child_progress(folder: Path, since: float = 0.0) -> dict | None:
    """The most recently written progress file of a child process in `folder` (written at or after
    `since`, a time.time()), or None."""
    from posttrain._files import read_json_file

    try:
        stamped = [(p.stat().st_mtime, p) for p in folder.glob("*.json")]
    except OSError:
        return None
    stamped = [(m, p) for m, p in stamped if m >= since]
    return read_json_file(max(stamped)[1]) if stamped else None
