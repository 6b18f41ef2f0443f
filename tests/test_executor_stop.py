"""A stop request (`posttrain stop`, SIGTERM) reaching units in flight, without a cluster: the local
executor stops between units, the runner records the step as interrupted (not failed), and the
same run resumes it. The cluster side is in test_ray_pipeline.py."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from posttrain.errors import Interrupted
from posttrain.executors import LocalExecutor, StopOn, Unit, WorkInterrupted
from posttrain.pipeline import Runner, RunSpec, Step
from posttrain.store import Store


def test_the_local_executor_stops_between_units_when_asked():
    stop = threading.Event()
    ran = []

    def unit(i):
        ran.append(i)
        if i == 1:
            stop.set()
        return i

    with pytest.raises(WorkInterrupted) as caught:
        list(LocalExecutor().run([Unit(f"u{i}", unit, (i,)) for i in range(4)], stop=stop))
    assert ran == [0, 1] and caught.value.outstanding == 2
    assert isinstance(caught.value, Interrupted)


def test_stop_on_gives_a_callers_runs_the_stop_it_cannot_pass():
    """The convert step's quantization units: convert_checkpoint knows nothing of stop requests."""
    stop = threading.Event()
    executor = StopOn(LocalExecutor(), stop)
    assert executor.name == "local" and executor.shared_dir is None
    assert [d.value for d in executor.run([Unit("u", int, ("7",))])] == [7]
    stop.set()
    with pytest.raises(WorkInterrupted):
        list(executor.run([Unit("u", int, ("7",))]))


def _write(name):
    def run(ctx):
        out = ctx.run_dir / f"{name}.txt"
        out.write_text(name)
        return {"path": str(out)}
    return run


@pytest.mark.parametrize("isolated", [False, True])
def test_an_interrupted_step_ends_the_run_as_interrupted_and_a_rerun_resumes_it(tmp_path, monkeypatch, isolated):
    # The step's child unpickles this module's functions: it must find this folder.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(Path(__file__).parent),
                                                                  os.environ.get("PYTHONPATH")])))
    store = Store(tmp_path / "db.sqlite")
    stop = threading.Event()
    spec = RunSpec("r1", "ckpt", tmp_path / "run")
    steps = [Step("first", _write("first"), dict),
             Step("units", _stop_then_units if isolated else _interrupt_once, dict, depends_on=("first",),
                  isolated=isolated),
             Step("last", _write("last"), dict, depends_on=("units",))]
    if isolated:
        # The parent's stop event must reach the child: the child waits for it, then raises.
        threading.Timer(1.0, stop.set).start()
    result = Runner(store, steps, stop_event=stop).run(spec)
    assert result.status == "interrupted"
    assert [(s.name, s.status) for s in result.steps] == [("first", "done"), ("units", "interrupted")]
    assert {r["name"]: r["status"] for r in store.steps.of_run("r1")}["units"] == "interrupted"
    rerun = Runner(store, [steps[0], Step("units", _write("units"), dict, depends_on=("first",)), steps[2]]).run(spec)
    assert rerun.status == "succeeded"
    assert [(s.name, s.reused) for s in rerun.steps] == [("first", True), ("units", False), ("last", False)]


def _interrupt_once(ctx):
    ctx.stop_requested.set()  # in this process the step sees the runner's own event: a stop arrives now
    raise Interrupted("stopped with 3 unit(s) outstanding")


def _stop_then_units(ctx):
    """In the step's child: wait (bounded) for the stop the parent forwards, then stop like an executor."""
    if not ctx.stop_requested.wait(60):
        return {"never": "stopped"}
    raise WorkInterrupted(3)
