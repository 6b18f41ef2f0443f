"""llama.cpp's converter provisioned from the runtime's own sdist (issue 29): from a local file during
setup, with nothing to download; at run time on the display and in the log, never in silence."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from posttrain import _progress, toolchain
from posttrain.errors import PosttrainError, TransientError


@pytest.fixture(scope="session")
def sdist() -> Path:
    """The real llama-cpp-python sdist of the installed runtime: the one kept in posttrain's cache, fetched
    once (as a first provisioning would) when it is not there."""
    ver = toolchain.llama_cpp_python_version()
    try:
        return toolchain.download_sdist(ver)
    except TransientError as e:
        pytest.skip(f"the llama-cpp-python {ver} sdist is not kept here and the index is unreachable: {e}")


def _no_index_env(cache: Path) -> dict[str, str]:
    # pip pointed at nothing: provisioning that tried to download would fail instead of passing quietly.
    return {**os.environ, "POSTTRAIN_CACHE": str(cache), "POSTTRAIN_HOME": str(cache.parent / "home"),
            "COLUMNS": "200", "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "",
            "PIP_INDEX_URL": "http://127.0.0.1:9/simple"}


def test_doctor_after_setup_provisions_from_the_local_sdist_and_passes(sdist, tmp_path):
    # What scripts/setup.sh runs last, then what the user runs next: both exit 0, nothing downloaded.
    cache = tmp_path / "cache"
    posttrain = [sys.executable, "-m", "posttrain", "doctor", "--no-selftest", "--out", str(tmp_path)]
    setup = subprocess.run([*posttrain, "--sdist", str(sdist)], capture_output=True, text=True,
                           env=_no_index_env(cache), timeout=300)
    assert setup.returncode == 0, setup.stdout + setup.stderr
    # The provisioning line says where from and how long it took.
    line = next(ln for ln in setup.stderr.splitlines() if "provisioning llama.cpp's converter from" in ln)
    assert sdist.name in line and line.rstrip().endswith(" s"), line
    assert "converter" in setup.stdout and "sdist" in setup.stdout
    ver = toolchain.llama_cpp_python_version()
    assert (cache / "llama.cpp" / ver / toolchain.CONVERTER).is_file()
    assert (cache / "llama.cpp" / "sdist" / sdist.name).is_file()  # kept for the imatrix tools' build

    after = subprocess.run(posttrain, capture_output=True, text=True, env=_no_index_env(cache), timeout=300)
    assert after.returncode == 0, after.stdout + after.stderr
    assert "provisioning" not in after.stderr  # found, verified, nothing to do


def test_a_sdist_of_another_version_is_refused(sdist, tmp_path, monkeypatch):
    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path / "cache"))
    other = tmp_path / "llama_cpp_python-0.0.1.tar.gz"
    os.symlink(sdist, other)
    with pytest.raises(PosttrainError, match="0.0.1.*the installed runtime is"):
        toolchain.find_converter(sdist=other)
    assert not (tmp_path / "cache" / "llama.cpp" / toolchain.llama_cpp_python_version()).exists()


def _display(log_path: Path | None = None) -> tuple[_progress.Display, io.StringIO]:
    out = io.StringIO()
    return _progress.Display(Console(file=out, width=200, force_terminal=False), log_path=log_path), out


def _kept_in(cache: Path, sdist: Path) -> None:
    # The runtime case without a download: the sdist is kept (as after setup or an earlier provisioning).
    (cache / "llama.cpp" / "sdist").mkdir(parents=True)
    shutil.copyfile(sdist, cache / "llama.cpp" / "sdist" / sdist.name)


def test_provisioning_at_run_time_is_a_stage_on_the_display_and_in_the_log(sdist, tmp_path, monkeypatch, capsys):
    # `posttrain convert` or `demo` with a llama-cpp-python that setup did not install: the wait shows.
    cache = tmp_path / "cache"
    _kept_in(cache, sdist)
    monkeypatch.setenv("POSTTRAIN_CACHE", str(cache))
    # From a local sdist this takes about a second: alone, under the display's quiet bound (a command that
    # is over that soon prints only its result). What is tested here is the stage, not that bound.
    monkeypatch.setattr(_progress, "QUIET_UNDER_S", 0.0)
    display, out = _display(log_path=tmp_path / "command.log")
    with display:
        tree = toolchain.find_converter()
    assert tree.script.is_file()
    shown = out.getvalue()
    assert "✓ provisioning llama.cpp's converter" in shown, shown
    assert shown.rstrip().endswith(" s"), shown  # its time
    logged = capsys.readouterr().err  # stderr is the command's log file while a display is up
    assert "provisioning llama.cpp's converter" in logged and "done in" in logged, logged


def test_provisioning_inside_a_step_is_a_line_and_the_step_goes_on(sdist, tmp_path, monkeypatch):
    # The pipeline's convert step is the stage shown: it is not ended early by the provisioning.
    cache = tmp_path / "cache"
    _kept_in(cache, sdist)
    monkeypatch.setenv("POSTTRAIN_CACHE", str(cache))
    display, out = _display()
    with display:
        display.begin("convert")
        toolchain.find_converter()
        assert display.stage == "convert"
        display.end()
    lines = out.getvalue().splitlines()
    ver = toolchain.llama_cpp_python_version()
    assert [ln.split("  ")[0] for ln in lines] == [f"✓ provisioning llama.cpp's converter ({ver} sdist, ~75 MB, once)",
                                                   "✓ convert"], lines
