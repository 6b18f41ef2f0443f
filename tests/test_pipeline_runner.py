"""The step runner: resume after kill -9, retries, permanent failures, SIGTERM. Real processes, real SQLite.

The runner is driven by this very file run as a script (see the bottom): its steps sleep and write
files, so a test can kill the process at a step boundary or in the middle of a step and run the same
command again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from platforms import posix_only
from pydantic import ValidationError

from posttrain.errors import PosttrainError, TransientError
from posttrain.pipeline import Runner, RunSpec, Step, StepSkipped
from posttrain.store import Store

HERE = Path(__file__)


@dataclass(frozen=True)
class FileOut:
    """What the file steps hand on (the pipeline's own steps hand on the records of posttrain.contracts)."""

    path: Path


# -- the steps the subprocess runs ---------------------------------------------------------------
def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _log(ctx, what: str) -> None:
    with open(ctx.run_dir / "events.log", "a") as f:
        f.write(f"{what}\n")


def _file_step(name: str, chunks: int, delay: float):
    """A step that writes <name>.txt slowly (in chunks, to a temp name), then renames it."""

    def run(ctx):
        _log(ctx, f"start {name}")
        upstream = "".join(o.path.read_text() for o in ctx.outputs.values())
        body = f"{name}<-[{upstream}]"
        tmp = ctx.run_dir / f".{name}.partial"
        with open(tmp, "w") as f:
            for i in range(chunks):
                f.write(body[i * len(body) // chunks:(i + 1) * len(body) // chunks])
                f.flush()
                time.sleep(delay)
        os.replace(tmp, ctx.run_dir / f"{name}.txt")
        _log(ctx, f"end {name}")
        return FileOut(ctx.run_dir / f"{name}.txt")

    return run


def _verify_file(outputs: FileOut) -> bool:
    return outputs.path.is_file()


def _summary(ctx):
    """Like the report: always runs, says which steps failed, lists what the others produced."""
    _log(ctx, "start summary")
    doc = {"steps": {k: v[0] for k, v in sorted(ctx.step_status.items())},
           "errors": {k: v[1] for k, v in sorted(ctx.step_status.items()) if v[1]},
           "texts": {k: o.path.read_text() for k, o in sorted(ctx.outputs.items())}}
    _atomic_write(ctx.run_dir / "summary.json", json.dumps(doc, sort_keys=True))
    _log(ctx, "end summary")
    return FileOut(ctx.run_dir / "summary.json")


def script_steps(delay: float) -> list[Step]:
    return [
        Step("a", _file_step("a", 4, delay), FileOut, _verify_file),
        Step("b", _file_step("b", 8, delay), FileOut, _verify_file, depends_on=("a",)),
        Step("c", _file_step("c", 4, delay), FileOut, _verify_file, depends_on=("b",)),
        Step("summary", _summary, FileOut, _verify_file, depends_on=("a", "b", "c"), always=True),
    ]


def _main(home: str, run_dir: str, delay: float, pause_after: str | None) -> int:
    from posttrain.pipeline._daemon import install_stop_handlers

    stop = threading.Event()
    install_stop_handlers(stop)

    def on_event(run_id, step, event):
        # A pause right after a step is recorded done: the test kills the process exactly at a boundary.
        print(f"{step} {event}", flush=True)
        if event == "done" and step == pause_after:
            time.sleep(30)

    runner = Runner(Store(Path(home) / "posttrain.db"), script_steps(delay), stop_event=stop, on_event=on_event)
    result = runner.run(RunSpec("run-1", "ckpt", Path(run_dir)))
    print(f"status {result.status}", flush=True)
    return 0 if result.status in ("succeeded", "interrupted") else 1


# -- helpers -------------------------------------------------------------------------------------
def _spawn(tmp_path: Path, run_dir: Path, delay: float = 0.2, pause_after: str | None = None) -> subprocess.Popen:
    args = [sys.executable, str(HERE), str(tmp_path / "home"), str(run_dir), str(delay), pause_after or ""]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_line(proc: subprocess.Popen, wanted: str, timeout: float = 60) -> list[str]:
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line.strip())
        if line.strip() == wanted:
            return seen
    raise AssertionError(f"never saw {wanted!r}; saw {seen}")


def _events(run_dir: Path) -> list[str]:
    return (run_dir / "events.log").read_text().split("\n")[:-1]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The summary of an uninterrupted run: what every resumed run must end with."""
    tmp = tmp_path_factory.mktemp("ref")
    proc = _spawn(tmp, tmp / "run", delay=0.0)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    return json.loads((tmp / "run" / "summary.json").read_text())


# -- tests ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("boundary", ["a", "b", "c"])
def test_kill9_at_a_step_boundary_resumes_at_the_next_step(tmp_path, reference, boundary):
    run_dir = tmp_path / "run"
    proc = _spawn(tmp_path, run_dir, delay=0.01, pause_after=boundary)
    _wait_line(proc, f"{boundary} done")
    proc.kill()
    proc.wait()

    again = _spawn(tmp_path, run_dir, delay=0.01)
    out, _ = again.communicate(timeout=60)
    assert again.returncode == 0, out
    assert f"{boundary} reused" in out
    assert json.loads((run_dir / "summary.json").read_text()) == reference
    events = _events(run_dir)
    # The finished step ran once; nothing before it ran again.
    assert events.count(f"start {boundary}") == 1
    assert events.count("start a") == 1


def test_kill9_inside_a_step_reruns_that_step_and_leaves_no_corrupt_file(tmp_path, reference):
    run_dir = tmp_path / "run"
    proc = _spawn(tmp_path, run_dir, delay=0.3)
    _wait_line(proc, "b running")
    time.sleep(0.7)  # b is writing its partial file now
    proc.kill()
    proc.wait()
    assert (run_dir / ".b.partial").exists() and not (run_dir / "b.txt").exists()
    store = Store(tmp_path / "home" / "posttrain.db")
    assert store.query("SELECT status FROM steps WHERE name='b'")[0]["status"] == "running"

    again = _spawn(tmp_path, run_dir, delay=0.01)
    out, _ = again.communicate(timeout=60)
    assert again.returncode == 0, out
    assert json.loads((run_dir / "summary.json").read_text()) == reference
    assert (run_dir / "b.txt").read_text() == "b<-[a<-[]]"
    events = _events(run_dir)
    assert events.count("start a") == 1 and events.count("start b") == 2
    run = store.query("SELECT status, finished_at, owner_pid FROM runs WHERE id='run-1'")[0]
    assert run["status"] == "succeeded" and run["finished_at"] and run["owner_pid"] is None


@posix_only
def test_sigterm_mid_step_finishes_the_step_exits_0_and_resumes(tmp_path, reference):
    run_dir = tmp_path / "run"
    proc = _spawn(tmp_path, run_dir, delay=0.2)
    _wait_line(proc, "b running")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "b done" in out and "c running" not in out and "status interrupted" in out
    store = Store(tmp_path / "home" / "posttrain.db")
    assert store.query("SELECT status FROM runs")[0]["status"] == "interrupted"

    again = _spawn(tmp_path, run_dir, delay=0.01)
    out, _ = again.communicate(timeout=60)
    assert again.returncode == 0, out
    assert "b reused" in out
    assert json.loads((run_dir / "summary.json").read_text()) == reference


def test_a_second_process_on_the_same_run_is_refused_while_the_first_lives(tmp_path):
    run_dir = tmp_path / "run"
    proc = _spawn(tmp_path, run_dir, delay=0.01, pause_after="a")
    _wait_line(proc, "a done")
    try:
        with pytest.raises(PosttrainError, match=rf"already in progress \(PID {proc.pid}\)"):
            Runner(Store(tmp_path / "home" / "posttrain.db"), script_steps(0)).run(RunSpec("run-1", "ckpt", run_dir))
    finally:
        proc.kill()
        proc.wait()


def _run_inline(tmp_path: Path, steps: list[Step], **kw):
    store = Store(tmp_path / "posttrain.db")
    return store, Runner(store, steps, backoff_s=0.01, **kw).run(RunSpec("r", "ckpt", tmp_path / "run"))


def test_a_transient_failure_is_retried_with_backoff_then_succeeds(tmp_path):
    calls = []

    def flaky(ctx):
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise TransientError("server busy")
        return {"ok": True}

    store, result = _run_inline(tmp_path, [Step("flaky", flaky, dict)], max_retries=3)
    assert result.ok and len(calls) == 3
    assert calls[2] - calls[1] >= calls[1] - calls[0]  # exponential, not immediate
    row = store.query("SELECT status, attempts, error FROM steps")[0]
    assert (row["status"], row["attempts"], row["error"]) == ("done", 3, None)


def test_transient_failures_beyond_the_retry_budget_fail_the_step(tmp_path):
    calls = []

    def down(ctx):
        calls.append(1)
        raise ConnectionResetError("connection reset by peer")

    store, result = _run_inline(tmp_path, [Step("down", down, dict)], max_retries=2,
                                transient=(TransientError, ConnectionError))
    assert len(calls) == 2 and result.status == "failed"
    assert "ConnectionResetError: connection reset by peer" in result.steps[0].error


def test_a_permanent_failure_skips_dependents_but_not_independent_steps(tmp_path):
    made = []

    def convert(ctx):
        made.append("convert")
        return {"variants": ["f16"]}

    def register(ctx):
        raise PosttrainError("Ollama refused the model", remedy="check the Ollama log")

    def evaluate(ctx):
        made.append("evaluate")
        return {"scores": [1]}

    def smoke(ctx):
        made.append("smoke")
        return {}

    def summary(ctx):
        made.append("summary")
        return {"failed": sorted(k for k, v in ctx.step_status.items() if v[0] == "failed")}

    never = []
    steps = [Step("convert", convert, dict), Step("register", register, dict, depends_on=("convert",)),
             Step("smoke", smoke, dict, depends_on=("register",)),
             Step("evaluate", evaluate, dict, depends_on=("convert",)),
             Step("summary", summary, dict, depends_on=("register", "evaluate"), always=True)]
    store, result = _run_inline(tmp_path, steps)
    assert result.status == "failed" and not never
    assert made == ["convert", "evaluate", "summary"]
    by_name = {s.name: s for s in result.steps}
    assert by_name["register"].error == "Ollama refused the model — check the Ollama log"
    assert by_name["smoke"].status == "skipped" and by_name["smoke"].error == "skipped: register failed"
    assert by_name["summary"].outputs == {"failed": ["register"]}
    rows = {r["name"]: r["status"] for r in store.query("SELECT name, status FROM steps")}
    assert rows == {"convert": "done", "register": "failed", "smoke": "skipped", "evaluate": "done",
                    "summary": "done"}


def test_a_step_that_skips_itself_is_not_a_failure(tmp_path):
    def register(ctx):
        raise StepSkipped("Ollama not reachable at http://127.0.0.1:9")

    _, result = _run_inline(tmp_path, [Step("register", register, dict), Step("after", lambda ctx: {}, dict)])
    assert result.ok
    assert result.steps[0].status == "skipped"
    assert result.steps[0].error == "skipped: Ollama not reachable at http://127.0.0.1:9"


def test_outputs_that_no_longer_verify_are_recomputed_and_dependents_follow(tmp_path):
    runs = []

    def make(name):
        def run(ctx):
            runs.append(name)
            path = tmp_path / f"{name}.txt"
            path.write_text(f"{name}:{len(runs)}")
            return TextOut(path, path.read_text())
        return run

    steps = [Step("a", make("a"), TextOut, _verify_file), Step("b", make("b"), TextOut, _verify_file, depends_on=("a",)),
             Step("c", make("c"), TextOut, _verify_file)]
    _run_inline(tmp_path, steps)
    assert runs == ["a", "b", "c"]
    (tmp_path / "a.txt").unlink()
    _run_inline(tmp_path, steps)
    # a is redone because its file vanished; b because a's outputs (content) changed; c is kept.
    assert runs == ["a", "b", "c", "a", "b"]


@dataclass(frozen=True)
class TextOut:
    path: Path
    text: str


def test_outputs_are_handed_on_as_the_declared_type_also_when_reused(tmp_path):
    seen = []

    def first(ctx):
        return TextOut(tmp_path / "a.txt", "a")

    def second(ctx):
        seen.append(ctx.output("first", TextOut))
        return {}

    steps = [Step("first", first, TextOut), Step("second", second, dict, depends_on=("first",))]
    _run_inline(tmp_path, steps)
    with Store(tmp_path / "posttrain.db").connect() as db:  # a later run of the same spec redoes "second"
        db.execute("UPDATE steps SET status='failed' WHERE name='second'")
    _, result = _run_inline(tmp_path, steps)
    assert result.steps[0].reused and seen == [TextOut(tmp_path / "a.txt", "a")] * 2


def test_a_step_that_returns_another_type_fails_and_a_stored_row_of_an_older_shape_is_recomputed(tmp_path):
    def wrong(ctx):
        return {"path": "x"}

    _, result = _run_inline(tmp_path, [Step("wrong", wrong, TextOut)])
    assert result.status == "failed" and result.steps[0].error == "TypeError: step wrong returned dict, not TextOut"

    runs = []

    def right(ctx):
        runs.append(1)
        return TextOut(tmp_path / "b.txt", "b")

    _run_inline(tmp_path, [Step("right", right, TextOut)])
    with Store(tmp_path / "posttrain.db").connect() as db:  # as an older posttrain wrote it
        db.execute("""UPDATE steps SET outputs_json='{"path": "b.txt"}' WHERE name='right'""")
    _, result = _run_inline(tmp_path, [Step("right", right, TextOut)])
    assert runs == [1, 1] and not result.steps[0].reused
    with pytest.raises(ValidationError):  # what the runner met in the stored row
        from posttrain.contracts import decode_outputs
        decode_outputs(TextOut, {"path": "b.txt"})


def test_step_wall_time_and_peak_rss_are_recorded(tmp_path):
    def hungry(ctx):
        block = bytearray(64 * 1024 * 1024)
        time.sleep(0.3)
        return {"n": len(block)}

    store, result = _run_inline(tmp_path, [Step("hungry", hungry, dict)])
    row = store.query("SELECT wall_s, peak_rss_bytes FROM steps")[0]
    assert row["wall_s"] >= 0.3
    assert row["peak_rss_bytes"] > 64 * 1024 * 1024


if __name__ == "__main__":
    home_arg, run_dir_arg, delay_arg, pause_arg = sys.argv[1:5]
    sys.exit(_main(home_arg, run_dir_arg, float(delay_arg), pause_arg or None))
