"""Tell the user a run finished: apprise URLs, a desktop notification, and an optional spoken summary.

A notifier is a courtesy, never a reason for a run to fail: every channel's outcome is returned as a
dict (`{"channel", "target", "ok", "skipped", "detail"}`), failures are logged, and nothing raises.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from posttrain._lifeline import no_window_kwargs

log = logging.getLogger(__name__)

SUBPROCESS_TIMEOUT_S = 60


class NotifySummary(BaseModel):
    """What the notification says. `verdicts` are the compare sentences (one per comparison)."""

    run_id: str
    status: str  # succeeded | failed | interrupted
    model_name: str | None = None
    headline: str | None = None  # e.g. the report's verdict line
    verdicts: list[str] = Field(default_factory=list)
    failed_step: str | None = None
    error: str | None = None
    report: str | None = None  # path or URL of report.html
    tracking: list[str] = Field(default_factory=list)  # trackers that could not record the run

    @classmethod
    def from_run(cls, run: dict[str, Any], compare: dict[str, Any] | None = None,
                 failures: list[dict[str, Any]] | None = None, report: str | Path | None = None, *,
                 tracking: list[dict[str, Any]] | None = None) -> NotifySummary:
        """Build the summary from the same inputs a report is made of. `tracking`: the failed outcomes
        of posttrain.track ({tracker, error})."""
        failures = failures or []
        comps = (compare or {}).get("comparisons") or []
        status = "failed" if failures else (run.get("status") or "succeeded")
        counts: dict[str, int] = {}
        for c in comps:
            verdict = c.get("verdict") or "no significant difference"
            counts[verdict] = counts.get(verdict, 0) + 1
        headline = (f"{len(comps)} comparison(s) against {(compare or {}).get('baseline', {}).get('label')}: "
                    + ", ".join(f"{n} {k}" for k, n in counts.items()) + ".") if comps else None
        return cls(run_id=run["id"], status=status, model_name=run.get("model_name"), headline=headline,
                   verdicts=[c["sentence"] for c in comps if c.get("sentence")],
                   failed_step=failures[0]["step"] if failures else None,
                   error=failures[0].get("error") if failures else None,
                   report=str(report) if report else None,
                   tracking=[f"{t.get('tracker')}: {t.get('error') or 'failed'}" for t in tracking or []])

    def title(self) -> str:
        name = self.model_name or self.run_id
        if self.status == "failed":
            return f"posttrain: {name} failed" + (f" at {self.failed_step}" if self.failed_step else "")
        return f"posttrain: {name} {self.status}"

    def body(self) -> str:
        lines: list[str] = []
        if self.status == "failed":
            stage = self.failed_step or "an unknown stage"
            lines.append(f"Run {self.run_id} failed at stage {stage}.")
            if self.error:
                lines.append(_one_line(self.error, 300))
        else:
            lines.append(f"Run {self.run_id} {self.status}.")
            if self.headline:
                lines.append(self.headline)
            lines.extend(self.verdicts)
        for line in self.tracking:
            lines.append("Not tracked in " + _one_line(line, 300))
        if self.report:
            lines.append(f"Report: {self.report}")
        return "\n".join(lines)

    def spoken(self) -> str:
        """Short enough to listen to: the outcome and the first verdict or the failed stage."""
        name = self.model_name or "the model"
        if self.status == "failed":
            return f"posttrain run for {name} failed at {self.failed_step or 'an unknown stage'}."
        first = self.headline or (self.verdicts[0] if self.verdicts else "")
        return f"posttrain run for {name} {self.status}. {first}".strip()


def _one_line(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _outcome(channel: str, target: str, ok: bool, detail: str = "", skipped: bool = False) -> dict[str, Any]:
    return {"channel": channel, "target": target, "ok": ok, "skipped": skipped, "detail": detail}


# --- apprise ----------------------------------------------------------------------------------------


def _apprise(url: str, title: str, body: str) -> dict[str, Any]:
    import apprise

    shown = url.split("://", 1)[0] + "://…"  # never log a URL's credentials or tokens
    try:
        ap = apprise.Apprise()
        if not ap.add(url):
            return _outcome("apprise", shown, False, "not a URL apprise understands")
        shown = ap[0].url(privacy=True)
        ok = bool(ap.notify(body=body, title=title))
        return _outcome("apprise", shown, ok, "" if ok else "delivery failed (see log)")
    except Exception as e:  # a notifier must never end a run
        return _outcome("apprise", shown, False, f"{type(e).__name__}: {e}")


# --- desktop ---------------------------------------------------------------------------------------
# The platform decides which program speaks or shows a toast; `sys.platform` (not platform.system())
# so the choice is one value a test can set. Programs always get argv lists, never a shell.

# apprise's local toast plugins, and what each needs (apprise disables a plugin whose needs are missing).
_TOASTS = {"win32": ("windows://", "pywin32 (pip install pywin32)"),
           "darwin": ("macosx://", "terminal-notifier (brew install terminal-notifier)"),
           "linux": ("dbus://", "dbus-python and PyGObject")}


def _os_family() -> str:
    return "linux" if sys.platform.startswith(("linux", "freebsd", "openbsd", "netbsd")) else sys.platform


def _session_bus() -> bool:
    if os.environ.get("DBUS_SESSION_BUS_ADDRESS"):
        return True
    return Path(f"/run/user/{os.getuid()}/bus").exists() if hasattr(os, "getuid") else False


def _run(args: list[str], **kw: Any) -> subprocess.CompletedProcess:
    kw = {**no_window_kwargs(), **kw}  # no console window flashing up for a PowerShell child of the watcher
    return subprocess.run(args, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S, check=False, **kw)


def _run_outcome(channel: str, target: str, args: list[str], **kw: Any) -> dict[str, Any]:
    try:
        proc = _run(args, **kw)
    except (OSError, subprocess.TimeoutExpired) as e:
        return _outcome(channel, target, False, f"{type(e).__name__}: {e}")
    if proc.returncode != 0:
        return _outcome(channel, target, False, _one_line(proc.stderr or f"exit {proc.returncode}", 200))
    return _outcome(channel, target, True)


def _apprise_toast(url: str, title: str, body: str) -> dict[str, Any] | None:
    """A toast through apprise's local plugin, or None when apprise has it disabled here."""
    import apprise

    plugin = apprise.Apprise.instantiate(url)
    if plugin is None:
        return None
    try:
        ok = bool(plugin.notify(body=body, title=title))
    except Exception as e:  # a notifier must never end a run
        return _outcome("desktop", url, False, f"{type(e).__name__}: {e}")
    return _outcome("desktop", url, ok, "" if ok else "delivery failed (see log)")


def _desktop(title: str, body: str) -> dict[str, Any]:
    family = _os_family()
    if family == "linux" and not ((os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) and _session_bus()):
        return _outcome("desktop", "notify-send", False, "no desktop session (DISPLAY/WAYLAND_DISPLAY and "
                        "a D-Bus session bus are needed)", skipped=True)
    url, needs = _TOASTS.get(family, (None, ""))
    if url and (done := _apprise_toast(url, title, body)) is not None:
        return done
    # Without apprise's plugin: the platform's own command-line notifier, where there is one.
    if family == "darwin":
        if not (osa := shutil.which("osascript")):
            return _outcome("desktop", "osascript", False, f"osascript not found and {url} needs {needs}",
                            skipped=True)
        # The text travels as argv, never spliced into the AppleScript source.
        return _run_outcome("desktop", "osascript", [osa, "-e", "on run argv", "-e", "display notification "
                            "(item 2 of argv) with title (item 1 of argv)", "-e", "end run", title, body])
    if family == "linux":
        if not (exe := shutil.which("notify-send")):
            return _outcome("desktop", "notify-send", False, f"notify-send not installed and {url} needs {needs}",
                            skipped=True)
        return _run_outcome("desktop", "notify-send", [exe, "--app-name=posttrain", "--", title, body])
    if url:
        return _outcome("desktop", url, False, f"apprise's {url} needs {needs}", skipped=True)
    return _outcome("desktop", family or "unknown", False, f"no desktop notifier for {family}", skipped=True)


# --- voice ------------------------------------------------------------------------------------------

# SAPI through PowerShell. The text goes through the environment, so nothing the model wrote is ever
# parsed as PowerShell.
_SAPI = ("Add-Type -AssemblyName System.Speech; "
         "(New-Object System.Speech.Synthesis.SpeechSynthesizer).Speak($env:POSTTRAIN_SAY)")


def _voice(text: str) -> dict[str, Any]:
    family = _os_family()
    kw: dict[str, Any] = {}
    if family == "win32":
        exe, wanted = shutil.which("powershell") or shutil.which("pwsh"), "PowerShell (for SAPI)"
        args = [exe, "-NoProfile", "-NonInteractive", "-Command", _SAPI]
        kw["env"] = {**os.environ, "POSTTRAIN_SAY": text}
    elif family == "darwin":
        exe, wanted = shutil.which("say"), "say"
        args = [exe, "-f", "-"]  # the text on stdin: nothing in it can be read as an option
        kw["input"] = text
    else:
        exe, wanted = shutil.which("espeak-ng") or shutil.which("espeak"), "espeak-ng or espeak"
        args = [exe, "--", text]
    if not exe:
        return _outcome("voice", "tts", False, f"no speech program ({wanted} not found)", skipped=True)
    return _run_outcome("voice", Path(exe).name, args, **kw)


def notify(summary: NotifySummary | dict[str, Any], *, urls: list[str] | tuple[str, ...] = (),
           desktop: bool = True, voice: bool = False) -> list[dict[str, Any]]:
    """Send the summary to every apprise URL, the desktop and (if asked) the speakers.

    Returns one outcome per channel; never raises (a broken notifier is logged as a warning)."""
    outcomes: list[dict[str, Any]] = []
    try:
        s = summary if isinstance(summary, NotifySummary) else NotifySummary.model_validate(summary)
        title, body = s.title(), s.body()
    except Exception as e:  # even a malformed summary must not fail the run
        log.warning("notification not sent: bad summary: %s", e)
        return [_outcome("summary", "", False, f"{type(e).__name__}: {e}")]
    for url in urls:
        outcomes.append(_apprise(url, title, body))
    if desktop:
        outcomes.append(_desktop(title, body))
    if voice:
        outcomes.append(_voice(s.spoken()))
    for o in outcomes:
        if not o["ok"] and not o["skipped"]:
            log.warning("notification via %s (%s) failed: %s", o["channel"], o["target"], o["detail"])
        elif o["skipped"]:
            log.info("notification via %s skipped: %s", o["channel"], o["detail"])
    return outcomes
