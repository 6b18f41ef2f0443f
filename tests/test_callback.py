"""PosttrainCallback on real Trainer runs: hands the final checkpoint over exactly once, on the main
process only, and never breaks training, whatever goes wrong on posttrain's side."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from platforms import kill_tree
from transformers import TrainerState, TrainingArguments

from posttrain.demo import train_demo_model
from posttrain.integrations import PosttrainCallback
from posttrain.store import Store


def _train(workdir: Path, callback: PosttrainCallback):
    """A real, short Trainer run that saves final_model/ after train() returns, as scripts do."""
    return train_demo_model(workdir, steps=3, early_step=1, callback=callback, threads=1)


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def _end_group(pid: int) -> None:
    """Kill the helper and everything it started."""
    kill_tree(pid)


def _runs(home: Path) -> list[dict]:
    db = home / "posttrain.db"
    if not db.exists():
        return []
    store = Store(db)
    try:
        return [dict(r) for r in store.query("SELECT checkpoint, status FROM runs")]
    finally:
        store.close()


def test_subprocess_starts_posttrain_run_once_after_the_checkpoint_is_saved(tmp_path):
    home = tmp_path / "home"
    cb = PosttrainCallback(home=home, mode="auto", checkpoint=tmp_path / "train" / "final_model")
    ck = _train(tmp_path / "train", cb)
    h = cb.handoff
    assert h is not None and h.mode == "subprocess", h
    try:
        assert h.argv == [sys.executable, "-m", "posttrain", "run", str(ck.final), "--home", str(home)]
        # The helper waits for the saved checkpoint, then becomes `posttrain run`: a run appears in the store.
        runs = _wait_for(lambda: _runs(home), 180, "posttrain run to record its run")
        assert [r["checkpoint"] for r in runs] == [str(ck.final)]
        assert "is complete; running:" in h.log.read_text()
        # Exactly once: a second train-end event (e.g. a resumed train()) starts nothing more.
        cb.on_train_end(TrainingArguments(output_dir=str(tmp_path / "train")), TrainerState(), None)
        assert cb.handoff is h
        assert list((home / "logs").glob("callback-*.log")) == [h.log]
    finally:
        _end_group(h.pid)


def test_a_failing_posttrain_command_does_not_touch_training(tmp_path, caplog):
    home = tmp_path / "home"
    cb = PosttrainCallback(home=home, config=tmp_path / "missing.toml", mode="subprocess",
                           checkpoint=tmp_path / "train" / "final_model")
    ck = _train(tmp_path / "train", cb)  # returns normally: training finished and saved
    assert ck.final.is_dir()
    h = cb.handoff
    assert h.mode == "subprocess"
    try:
        # posttrain itself refuses (no such config file); only its log says so.
        _wait_for(lambda: "does not exist" in h.log.read_text(), 120, "posttrain's error in the log")
    finally:
        _end_group(h.pid)
    assert _runs(home) == []


def test_a_missing_executable_is_logged_and_swallowed(tmp_path, caplog):
    cb = PosttrainCallback(home=tmp_path / "home", executable=str(tmp_path / "no-such-posttrain"),
                           mode="subprocess", checkpoint=tmp_path / "train" / "final_model")
    with caplog.at_level(logging.ERROR, logger="posttrain.integrations"):
        ck = _train(tmp_path / "train", cb)
    assert ck.final.is_dir()
    assert cb.handoff.mode == "failed" and "no such executable" in cb.handoff.detail
    assert any("no-such-posttrain" in r.getMessage() for r in caplog.records)


def test_an_unwritable_home_is_logged_and_swallowed(tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    cb = PosttrainCallback(home=blocker / "home", checkpoint=tmp_path / "train" / "final_model")
    with caplog.at_level(logging.ERROR, logger="posttrain.integrations"):
        ck = _train(tmp_path / "train", cb)
    assert ck.final.is_dir()
    assert cb.handoff.mode == "failed" and "NotADirectoryError" in cb.handoff.detail
    assert any("training is unaffected" in r.getMessage() for r in caplog.records)


def test_other_processes_do_nothing(tmp_path):
    home = tmp_path / "home"
    cb = PosttrainCallback(home=home, checkpoint=tmp_path / "final_model")
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    state = TrainerState(is_local_process_zero=True, is_world_process_zero=False)  # rank 1 of a DDP job
    cb.on_train_begin(args, state, None)
    cb.on_train_end(args, state, None)
    assert cb.handoff is None
    assert not home.exists()


def test_helper_runs_the_command_only_for_a_complete_fresh_checkpoint(tmp_path, tiny_spm):
    def helper(since: float, timeout: float):
        return subprocess.run([sys.executable, "-m", "posttrain.integrations._handoff", "--checkpoint", str(tiny_spm),
                               "--since", repr(since), "--timeout", repr(timeout), "--settle", "0", "--poll", "0.2",
                               "--", sys.executable, "-c", "print('handed over')"],
                              capture_output=True, text=True, timeout=120)

    fresh = helper(since=0.0, timeout=5)
    assert fresh.returncode == 0 and "handed over" in fresh.stdout
    # Weights older than the training run: a leftover from an earlier run, not this one.
    stale = helper(since=time.time() + 3600, timeout=1)
    assert stale.returncode == 2 and "handed over" not in stale.stdout
    assert "predate this training run" in stale.stdout


@pytest.fixture
def watcher_home(tmp_path):
    """A real watcher daemon on tmp_path/runs; stopped (by its PID file) afterwards."""
    home, root = tmp_path / "wh", tmp_path / "runs"
    root.mkdir()
    subprocess.run([sys.executable, "-m", "posttrain", "watch", str(root), "--daemon", "--home", str(home)],
                   check=True, capture_output=True, timeout=120)
    try:
        yield home, root
    finally:
        subprocess.run([sys.executable, "-m", "posttrain", "stop", "--home", str(home), "--grace", "30"],
                       capture_output=True, timeout=120)


def test_a_running_watcher_that_covers_the_path_gets_it_without_a_subprocess(tmp_path, watcher_home):
    from posttrain.pipeline import read_pid_file

    home, root = watcher_home
    pid = read_pid_file(home).pid
    args = TrainingArguments(output_dir=str(root / "exp1"), report_to=[], use_cpu=True)
    state = TrainerState(is_world_process_zero=True)

    covered = PosttrainCallback(home=home, checkpoint=root / "exp1" / "final_model")
    covered.on_train_end(args, state, None)
    assert covered.handoff.mode == "watcher" and covered.handoff.pid == pid

    # Outside the watched tree: enqueue-only mode hands nothing over, and says so.
    elsewhere = PosttrainCallback(home=home, mode="enqueue", checkpoint=tmp_path / "other" / "final_model")
    elsewhere.on_train_end(args, state, None)
    assert elsewhere.handoff.mode == "skipped"
    assert not list((home / "logs").glob("callback-*.log"))


def test_a_hung_watcher_is_not_handed_the_checkpoint(tmp_path, watcher_home):
    # Alive by PID but silent: it would take the checkpoint and never process it (issue 10).
    import json

    from posttrain.pipeline import STATUS_FILE, read_pid_file

    home, root = watcher_home
    pid = read_pid_file(home).pid
    frozen = psutil.Process(pid)
    frozen.suspend()  # its heartbeat stops (SIGSTOP; NtSuspendProcess on Windows)
    try:
        status = home / STATUS_FILE
        doc = json.loads(status.read_text())
        doc["heartbeat"] = time.time() - 120  # as if two minutes had passed without a beat
        status.write_text(json.dumps(doc))
        args = TrainingArguments(output_dir=str(root / "exp1"), report_to=[], use_cpu=True)
        cb = PosttrainCallback(home=home, mode="enqueue", checkpoint=root / "exp1" / "final_model")
        cb.on_train_end(args, TrainerState(is_world_process_zero=True), None)
        assert cb.handoff.mode == "skipped"
    finally:
        frozen.resume()
