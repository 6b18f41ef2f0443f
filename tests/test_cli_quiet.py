"""Every command of the CLI, as a scheduled job runs it (issue 29, item 3) and as a user watches it
in a terminal (item 2).

With stdout and stderr going to a file, no command lets a library line through (tqdm bars, datasets'
split messages, git's complaint, llama.cpp's load logs, other loggers' WARNING:/INFO:, torch and
transformers warnings: they belong in the log file the display names), and each one prints at least
one line of its own. The list of commands comes from `posttrain --help` (and a group's own --help),
so a command added later without a case here fails the test instead of being forgotten.

In a pseudo-terminal, no long command leaves the display empty for more than 2 s: every wait (the
converter, model loads, child processes, the quality pass, the speed runs) shows as a stage.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from ollama_standin import OllamaStandin
from platforms import posix_only
from polling import wait_for
from test_evaluate_offline import write_hellaswag

pytestmark = pytest.mark.slow

# What the libraries print when they are let through; none of it is posttrain's.
LIBRARY_LINE = re.compile(
    r"\|[^|\n]*\|\s*\d+/\d+"                       # tqdm bars: 100%|██████| 3/3 [00:00<00:00, ...]
    r"|Generating \S+ split|^\s*Map\b|Tokenizing"  # datasets, lm-eval
    r"|fatal: not a git repository"                # git, asked by lm-eval for a commit hash
    r"|llama_model_load|llm_load|load_tensors|^llama_\w+:|^print_info:|^ggml_\w+:"  # llama.cpp's native log
    r"|^(WARNING|INFO|DEBUG|ERROR)[:\s]"          # other loggers' records (posttrain's own say "warning:")
    r"|\b\w*Warning: |warnings\.warn|Traceback",   # torch/transformers/Python warnings, tracebacks
    re.M)


def library_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if LIBRARY_LINE.search(line)]


def own_lines(text: str) -> list[str]:
    """posttrain's lines: not blank, not a library's, not just the display's pointer to the log."""
    return [line for line in text.splitlines()
            if line.strip() and not LIBRARY_LINE.search(line) and not line.startswith("library output:")]


def cli(*args: object) -> list[str]:
    return [sys.executable, "-m", "posttrain", *map(str, args)]


def commands(*group: str) -> list[tuple[str, ...]]:
    """Every leaf command, read from the help the user reads (a group's commands from its own --help)."""
    out = subprocess.run(cli(*group, "--help"), capture_output=True, text=True, timeout=120,
                         env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    panel = out.stdout.split("Commands", 1)[1]
    names = re.findall(r"^[│|] ([a-z][a-z0-9-]*)\s{2,}", panel, re.M)
    assert names, out.stdout
    leaves = []
    for name in names:
        sub = subprocess.run(cli(*group, name, "--help"), capture_output=True, text=True, timeout=120,
                             env={**os.environ, "COLUMNS": "200"})
        leaves += commands(*group, name) if re.search(r"Commands", sub.stdout) else [(*group, name)]
    return leaves


# ---------------------------------------------------------------- a terminal, watched with a clock

_ESCAPE = re.compile(rb"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-_]|[\x00-\x20\x7f]")


class TerminalRun:
    """A command whose stdout and stderr are a pseudo-terminal (so rich draws its live line, refreshed
    about ten times a second while a stage is shown). A reader thread keeps every byte (also written to
    `log`) and the time of each read that put something visible on the screen: text, not only
    cursor movements and erasures, which is all the display writes when no stage is shown.
    POSIX only: Windows has no pseudo-terminal to hand a child (its test is marked posix_only)."""

    def __init__(self, argv: list[str], cwd: Path, env: dict, log: Path):
        if sys.platform == "win32":
            raise NotImplementedError("no pseudo-terminal on Windows")
        # Here, not at the top: these modules do not exist on Windows, where the file-output test runs too.
        import fcntl
        import pty
        import termios

        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        env = {k: v for k, v in env.items() if k != "COLUMNS"} | {"TERM": "xterm-256color"}
        self.started = time.monotonic()
        # A session of its own: the pseudo-terminal is all it has, and the test's own terminal's
        # signals (Ctrl-C in the shell that runs pytest) do not reach it.
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave,
                                     start_new_session=True)
        os.close(slave)
        self.visible: list[float] = []
        self._log = open(log, "wb")  # noqa: SIM115 - closed by the reader when the terminal closes
        self._reader = threading.Thread(target=self._read, args=(master,), daemon=True)
        self._reader.start()

    def _read(self, master: int) -> None:
        try:
            while True:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every process holding the terminal has closed it
                    break
                if not data:
                    break
                if _ESCAPE.sub(b"", data):
                    self.visible.append(time.monotonic())
                self._log.write(data)
                self._log.flush()
        finally:
            os.close(master)
            self._log.close()

    def poll(self):
        return self.proc.poll()

    def terminate(self) -> None:
        self.proc.terminate()

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(30)  # a detached child (the watcher) may keep the terminal: not waited for
        return code

    def longest_silence(self, startup: float = 0.0) -> tuple[float, float]:
        """The longest time with nothing new on the screen, from the start to the last thing shown,
        and when (seconds after the start) it began. `startup`: what the interpreter needs to start and
        import posttrain on this machine just now, taken off the first gap: nothing can be shown
        before that, and on a loaded machine it alone can pass 2 s."""
        stamps = [self.started, *self.visible]
        gaps = [(b - a - (startup if i == 0 else 0.0), a - self.started)
                for i, (a, b) in enumerate(zip(stamps, stamps[1:]))]
        return max(gaps, default=(0.0, 0.0))


def interpreter_startup(env: dict) -> float:
    """Seconds for a Python process to start and import the CLI (llama.cpp's library first, by design)."""
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", "import posttrain.cli"], env=env, check=True, timeout=120)
    return time.monotonic() - started


# ---------------------------------------------------------------- what the cases share


@dataclass
class World:
    root: Path
    home: Path
    ckpt: Path          # the tiny model every case uses
    gguf_dir: Path      # its conversion (F16, Q8_0) with manifest.json
    data: Path          # local HellaSwag
    text: Path          # held-out text for ship
    baseline: Path      # an lm-eval folder of Q8_0, for compare
    adapter: Path       # a LoRA on the tiny model
    env: dict = field(default_factory=dict)
    terminal: bool = False  # run the commands in a pseudo-terminal (the last one is `last`)
    last: TerminalRun | None = None

    def gguf(self, quant: str) -> Path:
        return next(self.gguf_dir.glob(f"*-{quant}.gguf"))

    def run_id(self) -> str:
        """The latest run in the store (the `run` case's); a name no run has when there is none."""
        if not (self.home / "posttrain.db").is_file():
            return "no-run"
        with sqlite3.connect(self.home / "posttrain.db") as db:
            row = db.execute("SELECT id FROM runs ORDER BY created_at DESC LIMIT 1").fetchone()
        return row[0] if row else "no-run"


@pytest.fixture(scope="module")
def world(tiny_spm, tiny_lora, tmp_path_factory) -> World:
    """One tiny model, one conversion and one evaluation for every case (made in this process)."""
    from posttrain.convert import convert_checkpoint
    from posttrain.evaluate import evaluate
    from posttrain.store import Store
    from posttrain.tiny import corpus

    root = tmp_path_factory.mktemp("quiet")
    home = root / "home"
    data = root / "data"
    write_hellaswag(data, n=6)
    gguf_dir = root / "gguf"
    convert_checkpoint(tiny_spm, gguf_dir, ["f16", "q8_0"], verify=False)
    text = root / "held-out.txt"
    text.write_text("\n".join(corpus(400, seed=3)), encoding="utf-8")
    w = World(root, home, tiny_spm, gguf_dir, data, text, root / "evals" / "q8", tiny_lora)
    evaluate(w.gguf("Q8_0"), ["hellaswag"], data_dir=data, limit=3, store=Store(root / "baseline.db"),
             out_dir=w.baseline)
    # A file, not a terminal; offline; the home every case shares.
    w.env = {**os.environ, "POSTTRAIN_HOME": str(home), "COLUMNS": "100", "HF_HUB_OFFLINE": "1",
             "HF_DATASETS_OFFLINE": "1"}
    return w


# ---------------------------------------------------------------- one case per command

def _serve(w: World, log: Path, command: tuple[str, ...]) -> int:
    """serve until it says where it serves, then SIGTERM (what systemd sends): started and stopped."""
    proc = _spawn(w, log, "serve", w.gguf("Q8_0"), "--ctx", "256", "--threads", "1")
    deadline = time.monotonic() + 180
    while "Ctrl-C to stop" not in log.read_text(errors="replace") and proc.poll() is None:
        assert time.monotonic() < deadline, log.read_text(errors="replace")
        time.sleep(0.2)
    # POSIX: SIGTERM, serve's clean stop (what systemd sends). Windows: TerminateProcess, a hard stop
    # that runs no handler, after everything this test reads was written; the exit code says nothing there.
    proc.terminate()
    code = proc.wait(60)
    return 0 if sys.platform == "win32" else code


def _register(w: World, log: Path, command: tuple[str, ...]) -> int:
    with OllamaStandin(w.root / "ollama") as standin:
        return _run(w, log, "register", w.gguf_dir, "--ollama", standin.url, "--home", w.home)


def _watch(w: World, log: Path, command: tuple[str, ...]) -> int:
    (w.root / "incoming").mkdir(exist_ok=True)
    code = _run(w, log, "watch", w.root / "incoming", "--daemon", "--home", w.home, "--quant", "f16",
                "--tasks", "hellaswag", "--data-dir", w.data, "--limit", "2")
    # The detached watcher is up (its first status written) before the next case: `status` then
    # reports it running, and is timed alone, not against the watcher's own start-up on the same cores.
    wait_for(lambda: _watcher_up(w.home), timeout=120)
    return code


def _watcher_up(home: Path) -> bool:
    from posttrain._files import read_json_file

    pid = (read_json_file(home / "watch.pid") or {}).get("pid")
    return pid is not None and (read_json_file(home / "watch.status.json") or {}).get("pid") == pid


@contextlib.contextmanager
def _watcher_stopped(w: World):
    """The cases, then no watcher left behind: the `watch` case starts one that only the `stop` case
    ends, and a failure in between would leave it running after the test."""
    try:
        yield
    finally:
        subprocess.run(cli("stop", "--home", w.home, "--grace", "30"), env=w.env, capture_output=True, timeout=120)


def _run(w: World, log: Path, *args: object) -> int:
    return _spawn(w, log, *args).wait(900)


def _spawn(w: World, log: Path, *args: object):
    """The command with stdout and stderr into `log` (a file), or through a pseudo-terminal when `w.terminal`."""
    if w.terminal:
        w.last = TerminalRun(cli(*args), w.root, w.env, log)
        return w.last
    with open(log, "wb") as out:
        return subprocess.Popen(cli(*args), cwd=w.root, env=w.env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)


def _args(*args):
    return lambda w, log, command: _run(w, log, *command, *(a(w) if callable(a) else a for a in args))


# In the order they run (later cases read what earlier ones made: the run for report, the watcher for stop).
# Each value: the case, and the exit codes that are the command's normal answer here.
CASES = {
    ("init",): (_args(lambda w: w.root / "posttrain.toml"), {0}),
    ("make-tiny",): (_args(lambda w: w.root / "another-tiny"), {0}),
    ("check",): (_args(lambda w: w.ckpt, "--settle", "0.5"), {0}),
    ("doctor",): (_args("--out", lambda w: w.root, "--ollama", "http://127.0.0.1:9"), {0, 1}),
    ("convert",): (_args(lambda w: w.ckpt, "--out", lambda w: w.root / "converted", "--quant", "f16,q4_k_m"), {0}),
    ("eval",): (_args(lambda w: w.gguf("F16"), "--tasks", "hellaswag", "--data-dir", lambda w: w.data, "--limit", "3",
                      "--out", lambda w: w.root / "evals" / "f16", "--home", lambda w: w.home), {0}),
    ("compare",): (_args(lambda w: w.root / "evals" / "f16", lambda w: w.baseline), {0}),
    ("ship",): (_args(lambda w: w.ckpt, "--quant", "f16,q8_0", "--text", lambda w: w.text, "--tasks", "hellaswag",
                      "--data-dir", lambda w: w.data, "--limit", "3", "--n-ctx", "64", "--max-tokens", "512",
                      "--reps", "1", "--home", lambda w: w.home), {0}),
    ("run",): (_args(lambda w: w.ckpt, "--quant", "f16", "--tasks", "hellaswag", "--data-dir", lambda w: w.data,
                     "--limit", "3", "--home", lambda w: w.home), {0}),
    ("report",): (_args(lambda w: w.run_id(), "--home", lambda w: w.home), {0}),
    ("runs",): (_args("--html", "--home", lambda w: w.home), {0}),
    # The folder holding the checkpoint the `run` case evaluated: a series of one.
    ("series",): (_args(lambda w: w.ckpt.parent, "--home", lambda w: w.home), {0}),
    ("register",): (_register, {0}),
    ("serve",): (_serve, {0}),
    ("lora", "merge"): (_args(lambda w: w.adapter, lambda w: w.root / "merged"), {0}),
    ("lora", "gguf"): (_args(lambda w: w.adapter, lambda w: w.root / "lora-F16.gguf"), {0}),
    ("watch",): (_watch, {0}),
    ("status",): (_args("--home", lambda w: w.home), {0, 3}),
    ("stop",): (_args("--home", lambda w: w.home, "--grace", "60"), {0}),
    ("demo",): (_args("--workdir", lambda w: w.root / "demo", "--steps", "20"), {0}),
}


def test_every_command_with_its_output_in_a_file_prints_its_own_lines_and_no_library_line(world):
    listed = commands()
    assert ("ship",) in listed and ("lora", "merge") in listed, listed  # the help was read
    missing = [" ".join(c) for c in listed if c not in CASES]
    assert not missing, f"commands without a case here (add one): {missing}"
    problems = {}
    with _watcher_stopped(world):
        for command, (case, codes) in CASES.items():
            if command not in listed:
                continue  # a command that no longer exists
            log = world.root / f"out-{'-'.join(command)}.txt"
            code = case(world, log, command)
            text = log.read_text(encoding="utf-8", errors="replace")
            if code not in codes:
                problems[" ".join(command)] = f"exit {code}:\n{text[-3000:]}"
            elif library_lines(text):
                problems[" ".join(command)] = "library lines:\n" + "\n".join(library_lines(text)[:20])
            elif not own_lines(text):
                problems[" ".join(command)] = f"no line of its own:\n{text[-1000:]}"
    assert not problems, "\n\n".join(f"posttrain {c}: {p}" for c, p in problems.items())


@posix_only
def test_no_command_leaves_the_terminal_without_a_stage_for_more_than_2_s(world, tmp_path):
    """Every command again, each in a pseudo-terminal, timed by a reader that notes when something
    visible reached the screen. While a stage is shown, rich redraws it (spinner, elapsed time) about
    ten times a second; when none is, it writes nothing visible. So a silence of more than 2 s means a
    wait the display did not name: before the first stage (imports, loads), between stages, or a
    native call holding the interpreter. No seam in the product: the real commands, on inputs whose
    steps (imports, conversion, model loads, children, lm-eval) take seconds here anyway."""
    home = tmp_path / "home"
    w = dataclasses.replace(world, root=tmp_path, home=home, terminal=True,
                            env={**world.env, "POSTTRAIN_HOME": str(home)})
    silent = {}
    with _watcher_stopped(w):
        for command, (case, codes) in CASES.items():
            log = tmp_path / f"tty-{'-'.join(command)}.txt"
            startup = interpreter_startup(w.env)
            code = case(w, log, command)
            assert code in codes, f"posttrain {' '.join(command)}: exit {code}\n{log.read_text(errors='replace')[-3000:]}"
            gap, at = w.last.longest_silence(startup)
            if gap > 2.0:
                silent[" ".join(command)] = f"{gap:.1f} s silent from {at:.1f} s after the start"
    assert not silent, silent
