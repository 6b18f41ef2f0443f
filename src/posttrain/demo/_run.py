"""`posttrain demo`: the whole loop on a laptop, offline, in a few minutes.

1. write the demo task (data + lm-eval YAML) and a `posttrain.toml` into the work directory;
2. start a watcher daemon on `<workdir>/runs` (pattern `**/final_model`);
3. train the tiny Llama with transformers' Trainer into `<workdir>/runs/demo/`: `checkpoint-early/`
   (the baseline) after a few steps, `final_model/` at the end, with a `PosttrainCallback` attached
   (it sees that the watcher covers `final_model/` and leaves it to the watcher);
4. the watcher picks `final_model/` up and runs the pipeline: convert (F16, Q8_0, Q4_K_M), evaluate
   the three variants and the baseline on the demo task, compare, report;
5. wait for that run, stop the watcher, print the report's path and the verdicts.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from posttrain.contracts import RunLayout
from posttrain.demo._task import TASK_NAME, write_demo_task
from posttrain.demo._train import DEFAULT_STEPS, EARLY_DIR, FINAL_DIR, train_demo_model
from posttrain.errors import PosttrainError
from posttrain.pipeline import log_tail, watcher_health
from posttrain._lifeline import no_window_kwargs

MARKER = ".posttrain-demo"
RUN_NAME = "demo"


@dataclass
class DemoResult:
    workdir: Path
    report: Path | None
    run_id: str | None
    status: str
    verdicts: list[str] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)


def _toml_str(value: str | Path) -> str:
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def write_demo_config(workdir: Path, task_dir: Path, baseline: Path) -> Path:
    """The demo's posttrain.toml: its own home, its own task, the early checkpoint as baseline."""
    path = workdir / "posttrain.toml"
    path.write_text(f"""\
# Written by `posttrain demo`.
home = {_toml_str(workdir / "home")}
quants = ["f16", "q8_0", "q4_k_m"]
tasks = ["{TASK_NAME}"]
task_paths = [{_toml_str(task_dir)}]
baseline = {_toml_str(baseline)}
retries = 2
retry_backoff_s = 1.0

[notify]
urls = []

[watch]
pattern = "**/{FINAL_DIR}"
settle_s = 1.0
check_interval_s = 10
""")
    return path


def _prepare(workdir: Path) -> None:
    """A fresh work directory; a previous demo's (marked) one is cleared, anything else is refused."""
    if workdir.exists() and any(workdir.iterdir()):
        if not (workdir / MARKER).exists():
            raise PosttrainError(f"{workdir} is not empty and was not made by `posttrain demo`",
                                 remedy="pass --workdir with a new or empty directory")
        for name in ("runs", "home", "task", "posttrain.toml"):
            target = workdir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).write_text("made by `posttrain demo`; running it again clears this directory\n")


def _posttrain(*args: str) -> list[str]:
    return [sys.executable, "-m", "posttrain", *args]


def _processed(home: Path, checkpoint: Path) -> dict | None:
    from posttrain.store import Store

    db = home / "posttrain.db"
    if not db.exists():
        return None
    store = Store(db)
    try:
        return store.processed.by_path(str(checkpoint))
    finally:
        store.close()


def _finished_row(row: dict | None) -> bool:
    return bool(row) and row["status"] in ("succeeded", "failed")


def _finished(home: Path, checkpoint: Path) -> bool:
    return _finished_row(_processed(home, checkpoint))


def _say_log_tail(home: Path, say: Callable[[str], None]) -> None:
    lines = log_tail(home)
    if lines:
        say(f"last lines of {home / 'logs' / 'watch.log'}:")
        for line in lines:
            say(f"  {line}")


def _current_step(home: Path) -> str | None:
    from posttrain._files import read_json_file
    from posttrain.pipeline import STATUS_FILE

    doc = read_json_file(home / STATUS_FILE) or {}
    steps = [v.get("step") for v in (doc.get("current") or {}).values() if v.get("step")]
    return steps[0] if steps else None


def run_demo(workdir: str | Path, *, steps: int = DEFAULT_STEPS, seed: int = 0, threads: int | None = None,
             timeout_s: float = 1800.0, say: Callable[[str], None] = print, lora: bool = False) -> DemoResult:
    """Run the demo in `workdir`; returns where the report is and what it concluded. `lora`: train a
    LoRA adapter on the frozen tiny base instead, which becomes the baseline (docs/lora.md)."""
    # transformers and PEFT take seconds to import: a stage of the demo's display, not a silent start.
    say("loading transformers and PEFT ...")
    from posttrain.integrations.transformers import PosttrainCallback

    workdir = Path(workdir).expanduser().resolve()
    _prepare(workdir)
    times: dict[str, float] = {}
    started = time.perf_counter()
    home, runs = workdir / "home", workdir / "runs"
    train_dir = runs / RUN_NAME
    runs.mkdir(parents=True)
    task = write_demo_task(workdir / "task")
    config = write_demo_config(workdir, task.directory, train_dir / ("init_model" if lora else EARLY_DIR))
    say(f"demo task: {task.n_train} training and {task.n_test} test items ({task.yaml_path})")
    # Here, on the demo's display, not inside the watcher's convert step where nobody would see it: the
    # converter's one-time provisioning (nothing after scripts/setup.sh, a download after a plain pip install).
    from posttrain.toolchain import find_converter

    # The watcher is a posttrain process of its own (seconds to start): shown as the wait it is, ended
    # by the watcher's own line below.
    say("starting the watcher in the background ...")
    find_converter()

    start = time.perf_counter()
    proc = subprocess.run(_posttrain("watch", str(runs), "--daemon", "--config", str(config), "--home", str(home)),
                          capture_output=True, text=True, **no_window_kwargs())
    if proc.returncode != 0:
        raise PosttrainError(f"could not start the demo's watcher: {(proc.stderr or proc.stdout).strip()}")
    times["start watcher"] = time.perf_counter() - start
    say(proc.stdout.strip())
    try:
        callback = PosttrainCallback(home=home, config=config, mode="enqueue", checkpoint=train_dir / FINAL_DIR)
        what = "a LoRA adapter on a tiny Llama (PEFT)" if lora else "a tiny Llama"
        say(f"training {what} for {steps} steps on the CPU (transformers Trainer) ...")
        start = time.perf_counter()
        ck = train_demo_model(train_dir, steps=steps, seed=seed, callback=callback, threads=threads, quiet=True,
                              lora=lora)
        times["train"] = time.perf_counter() - start
        loss = f", final loss {ck.final_loss:.3f}" if ck.final_loss is not None else ""
        say(f"trained in {ck.train_seconds:.0f} s{loss}: baseline {ck.early}, final {ck.final}")
        if callback.handoff is not None:
            say(f"callback: {callback.handoff.mode} ({callback.handoff.detail})")

        # Until the watcher's first step shows: it waits for the checkpoint to settle, then starts a run.
        say(f"waiting for the watcher to pick up {ck.final.name} ...")
        start = time.perf_counter()
        deadline = time.monotonic() + timeout_s
        last_step = None
        while True:
            row = _processed(home, ck.final)
            if _finished_row(row):
                break
            step = _current_step(home)
            if step and step != last_step:
                say(f"pipeline: {step} ...")
                last_step = step
            health = watcher_health(home)
            if not health.alive and not _finished(home, ck.final):  # it may have finished, then exited
                _say_log_tail(home, say)
                raise PosttrainError(f"the demo's watcher stopped while processing {ck.final}: {health.reason}",
                                     remedy=f"see {home / 'logs' / 'watch.log'}; `posttrain doctor` checks llama.cpp")
            if time.monotonic() > deadline:
                raise PosttrainError(f"the watcher did not finish {ck.final} within {timeout_s:g} s",
                                     remedy=f"see {home / 'logs' / 'watch.log'}")
            time.sleep(0.5)
        times["pipeline"] = time.perf_counter() - start
    finally:
        subprocess.run(_posttrain("stop", "--home", str(home), "--grace", "60"), capture_output=True, text=True,
                       **no_window_kwargs())
    times["total"] = time.perf_counter() - started

    layout = RunLayout(Path(row["run_dir"])) if row.get("run_dir") else None
    report = layout.report_html if layout and layout.report_html.exists() else None
    from posttrain.compare import verdict_sentences  # statsmodels behind it: seconds, paid only here

    # compare's own reader: the sentences `status` and `run` show, from the document's one owner.
    verdicts = verdict_sentences(layout.compare_json) if layout and layout.compare_json.exists() else []
    return DemoResult(workdir, report, row.get("run_id"), row["status"], verdicts, times)
