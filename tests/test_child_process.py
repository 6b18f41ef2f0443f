"""The one child runner (`posttrain._child_process`) every isolated piece uses: a result comes back, a
crash is named, a child without a result is quoted, a time limit stops it, a stop request reaches it."""

from __future__ import annotations

import textwrap
import threading
import time

import pytest

from posttrain._child_process import run_module
from posttrain.errors import NativeCrash, PosttrainError

CHILD = """
    import faulthandler, json, os, sys, time
    from posttrain._child_process import child_args

    args = child_args(sys.argv[1:])
    if args is None:
        sys.exit(1)
    action, result = args[0], args[1]
    if action == "answer":
        json.dump({"args": args, "env": os.environ.get("CHILD_TEST_VALUE")}, open(result, "w"))
    elif action == "crash":
        faulthandler._sigsegv()
    elif action == "fail":
        print("the last words", flush=True)
        sys.exit(3)
    elif action == "hang":
        time.sleep(60)
    elif action == "wait-for-stop":
        while not os.path.exists(args[2]):
            time.sleep(0.05)
        json.dump({"stopped": True}, open(result, "w"))
"""


@pytest.fixture
def child(tmp_path):
    (tmp_path / "child_for_test.py").write_text(textwrap.dedent(CHILD))

    def run(action: str, *extra: str, **kw):
        env = {"PYTHONPATH": str(tmp_path), **kw.pop("env", {})}
        return run_module("child_for_test", [action, tmp_path / "result.json", *extra], log=tmp_path / "logs" / "c.log",
                          result=tmp_path / "result.json", env=env, **kw)

    return run


def test_the_result_comes_back_with_the_environment_and_the_log_header(child, tmp_path):
    ended = child("answer", "x", env={"CHILD_TEST_VALUE": "seen"}, header="piece one", measure_rss=True)
    assert ended.returncode == 0 and not ended.timed_out
    assert ended.result_or_raise("piece") == {"args": ["answer", str(tmp_path / "result.json"), "x"], "env": "seen"}
    assert not (tmp_path / "result.json").exists()  # read once, then gone
    assert "piece one =====" in (tmp_path / "logs" / "c.log").read_text()


def test_a_crash_is_named_with_its_signal_and_log(child, tmp_path):
    ended = child("crash")
    with pytest.raises(NativeCrash, match=r"^piece crashed \(.* in native code\); log: "):
        ended.result_or_raise("piece")


def test_a_child_without_a_result_is_quoted_from_its_log(child, tmp_path):
    ended = child("fail")
    with pytest.raises(PosttrainError, match=r"^piece exited with code 3 without a result \(the last words\); log: "):
        ended.result_or_raise("piece")


def test_the_time_limit_stops_the_child(child):
    started = time.monotonic()
    ended = child("hang", timeout_s=1)
    assert ended.timed_out and ended.result is None
    assert time.monotonic() - started < 30


def test_a_stop_request_reaches_the_child_as_a_file(child, tmp_path):
    stop = threading.Event()
    stop.set()
    stop_file = tmp_path / "piece.stop"
    ended = child("wait-for-stop", str(stop_file), stop_event=stop, stop_file=stop_file, timeout_s=60)
    assert ended.result == {"stopped": True}
    assert not stop_file.exists()  # the request was this child's, not the next one's

