"""Voice and desktop notifications pick the platform's own programs (issue 15).

Windows and macOS cannot run here, so `sys.platform` is set to each value and the programs are small
recording scripts on PATH: the test sees exactly which program posttrain chose and what it passed
(argv, stdin, environment), with no shell in between. What stays unverified: that SAPI, `say` and
apprise's windows:// / macosx:// toasts really speak and show on those systems."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import apprise  # noqa: F401  imported under the real sys.platform (urllib reads it at import)
import pytest

from posttrain.notify import NotifySummary, notify

pytestmark = pytest.mark.skipif(os.name != "posix", reason="the stand-in programs are shell scripts")

HOSTILE = "モデル $(touch pwned); `id` -rf"


def _recorder(bin_dir: Path, name: str, rc: int = 0) -> Path:
    """`name` on PATH that writes its argv (one per line), its stdin and $POSTTRAIN_SAY into files."""
    out = bin_dir / f"{name}.rec"
    script = bin_dir / name
    script.write_text("#!/bin/sh\n"
                      f'for a in "$@"; do printf "%s\\n" "$a"; done > "{out}.argv"\n'
                      f'/bin/cat > "{out}.stdin"\n'
                      f'printf "%s" "$POSTTRAIN_SAY" > "{out}.env"\n'
                      f"exit {rc}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return out


def _read(rec: Path, part: str) -> str:
    return Path(f"{rec}.{part}").read_text(encoding="utf-8")


@pytest.fixture()
def programs(tmp_path, monkeypatch):
    """Every platform's speech and notifier programs, and nothing else on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    recs = {name: _recorder(bin_dir, name)
            for name in ("espeak-ng", "say", "powershell.exe", "osascript", "notify-send")}
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("PATHEXT", ".exe")  # how shutil.which finds programs once sys.platform is win32
    monkeypatch.chdir(tmp_path)
    return recs


def _summary() -> NotifySummary:
    return NotifySummary(run_id="r1", status="succeeded", model_name=HOSTILE, headline="1 comparison(s).")


@pytest.mark.parametrize("platform, program", [("win32", "powershell.exe"), ("darwin", "say"), ("linux", "espeak-ng"),
                                               ("freebsd14", "espeak-ng")])
def test_voice_uses_the_platforms_own_speech(programs, monkeypatch, platform, program):
    monkeypatch.setattr(sys, "platform", platform)
    [outcome] = notify(_summary(), desktop=False, voice=True)

    assert outcome == {"channel": "voice", "target": program, "ok": True, "skipped": False, "detail": ""}
    ran = [name for name, rec in programs.items() if Path(f"{rec}.argv").exists()]
    assert ran == [program]
    spoken = f"posttrain run for {HOSTILE} succeeded. 1 comparison(s)."
    argv = _read(programs[program], "argv").splitlines()
    if platform == "win32":  # SAPI via PowerShell; the text only in the environment, never in the script
        assert argv[:3] == ["-NoProfile", "-NonInteractive", "-Command"]
        assert "System.Speech" in argv[3] and HOSTILE not in argv[3]
        assert _read(programs[program], "env") == spoken
    elif platform == "darwin":  # `say` reads the text from stdin
        assert argv == ["-f", "-"] and _read(programs[program], "stdin") == spoken
    else:
        assert argv == ["--", spoken]
    assert not Path("pwned").exists()


@pytest.mark.parametrize("platform, needed", [("win32", "PowerShell"), ("darwin", "say"), ("linux", "espeak-ng")])
def test_a_missing_speech_program_is_skipped_with_a_note(tmp_path, monkeypatch, platform, needed):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing to run
    monkeypatch.setattr(sys, "platform", platform)
    [outcome] = notify(_summary(), desktop=False, voice=True)
    assert outcome["skipped"] and not outcome["ok"] and needed in outcome["detail"]


def test_desktop_on_macos_without_terminal_notifier_falls_back_to_osascript(programs, monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    [outcome] = notify(_summary(), desktop=True)

    assert outcome["target"] == "osascript" and outcome["ok"]
    recorded = _read(programs["osascript"], "argv")
    # The text as the script's arguments (after `end run`), never inside the AppleScript source.
    script, _, texts = recorded.partition("end run\n")
    assert texts == f"posttrain: {HOSTILE} succeeded\nRun r1 succeeded.\n1 comparison(s).\n"
    assert HOSTILE not in script


def test_desktop_on_windows_without_pywin32_is_skipped_with_the_remedy(programs, monkeypatch):
    try:
        import win32api  # noqa: F401
        pytest.skip("pywin32 is installed: the toast would really be attempted")
    except ImportError:
        pass
    monkeypatch.setattr(sys, "platform", "win32")
    [outcome] = notify(_summary(), desktop=True)
    assert outcome["skipped"] and outcome["target"] == "windows://" and "pywin32" in outcome["detail"]
    assert not any(Path(f"{rec}.argv").exists() for rec in programs.values())


def test_desktop_on_linux_without_a_notifier_names_both_ways(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent")
    monkeypatch.setattr(sys, "platform", "linux")
    [outcome] = notify(_summary(), desktop=True)
    assert outcome["skipped"] and "notify-send" in outcome["detail"] and "dbus://" in outcome["detail"]
