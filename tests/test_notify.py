"""Notifications reach a real HTTP receiver through apprise, and a broken channel never fails a run."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from report_samples import sample_inputs

from posttrain.notify import NotifySummary, notify


@pytest.fixture()
def receiver():
    """A real HTTP server on 127.0.0.1 that records every POST (path, headers, JSON body)."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            length = int(self.headers.get("Content-Length", 0))
            received.append({"path": self.path, "content_type": self.headers.get("Content-Type"),
                             "body": json.loads(self.rfile.read(length) or b"{}")})
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], received
    server.shutdown()
    server.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed when the block exits: connections are refused


def _success_summary() -> NotifySummary:
    inputs = sample_inputs()
    return NotifySummary.from_run(inputs["run"], inputs["compare"], inputs["failures"],
                                  report="/runs/20261125-0930-ab12/report.html")


def test_success_summary_reaches_json_receiver_with_verdicts(receiver):
    port, received = receiver
    outcomes = notify(_success_summary(), urls=[f"json://127.0.0.1:{port}/hook"], desktop=False)

    assert [o["ok"] for o in outcomes] == [True]
    assert len(received) == 1
    payload = received[0]
    assert payload["path"] == "/hook"
    assert payload["content_type"].startswith("application/json")
    assert payload["body"]["title"] == "posttrain: smollm2-ft succeeded"
    message = payload["body"]["message"]
    assert "Run 20261125-0930-ab12 succeeded." in message
    assert "loses 1.8 points on mmlu" in message and "gains 3.2 points on gsm8k" in message
    assert "Report: /runs/20261125-0930-ab12/report.html" in message


def test_failure_summary_names_the_failed_stage(receiver):
    port, received = receiver
    inputs = sample_inputs()
    run = {**inputs["run"], "status": "failed"}
    failures = [{"step": "convert", "error": "convert_hf_to_gguf.py exited 1:\nNotImplementedError: "
                                             "Architecture 'FooForCausalLM' not supported"}]
    notify(NotifySummary.from_run(run, {}, failures), urls=[f"json://127.0.0.1:{port}/"], desktop=False)

    body = received[0]["body"]
    assert body["title"] == "posttrain: smollm2-ft failed at convert"
    assert "failed at stage convert" in body["message"]
    assert "Architecture 'FooForCausalLM' not supported" in body["message"]


def test_dead_and_unknown_urls_are_reported_not_raised(receiver):
    port, received = receiver
    dead = f"json://127.0.0.1:{_closed_port()}/"
    outcomes = notify(_success_summary().model_dump(), urls=[dead, "nosuchscheme://x", f"json://127.0.0.1:{port}/"],
                      desktop=False)

    assert [o["ok"] for o in outcomes] == [False, False, True]
    assert "apprise understands" in outcomes[1]["detail"]
    assert len(received) == 1  # the good channel still delivered after the dead one


def test_malformed_summary_does_not_raise():
    outcomes = notify({"status": "succeeded"}, urls=["json://127.0.0.1:9/"], desktop=False)
    assert outcomes[0]["channel"] == "summary" and outcomes[0]["ok"] is False


def test_url_secrets_are_not_echoed_in_outcomes(receiver):
    port, _ = receiver
    outcomes = notify(_success_summary(), urls=[f"json://user:hunter2@127.0.0.1:{port}/"], desktop=False)
    assert "hunter2" not in json.dumps(outcomes)


def _fake_program(bin_dir: Path, name: str, record: Path, rc: int = 0) -> None:
    """A stand-in for a desktop/voice program that cannot run on this headless machine: it records its
    argv (one argument per line) so the test sees exactly what posttrain passed, with no shell between."""
    script = bin_dir / name
    script.write_text(f'#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done > "{record}"\nexit {rc}\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


@pytest.mark.skipif(os.name != "posix" or os.uname().sysname != "Linux", reason="notify-send path is Linux-only")
def test_desktop_notification_passes_text_as_arguments(tmp_path, monkeypatch):
    record = tmp_path / "argv.txt"
    _fake_program(tmp_path, "notify-send", record)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent")
    summary = _success_summary()
    summary.model_name = "evil; rm -rf / $(touch pwned)"

    [outcome] = notify(summary, urls=[], desktop=True)

    assert outcome == {"channel": "desktop", "target": "notify-send", "ok": True, "skipped": False, "detail": ""}
    argv = record.read_text().splitlines()
    assert argv[:3] == ["--app-name=posttrain", "--", "posttrain: evil; rm -rf / $(touch pwned) succeeded"]
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


@pytest.mark.skipif(os.name != "posix" or os.uname().sysname != "Linux", reason="notify-send path is Linux-only")
def test_desktop_is_skipped_without_a_session(monkeypatch, tmp_path):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    _fake_program(tmp_path, "notify-send", tmp_path / "argv.txt")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    [outcome] = notify(_success_summary(), desktop=True)
    assert outcome["skipped"] and "desktop session" in outcome["detail"]
    assert not (tmp_path / "argv.txt").exists()


def test_failing_voice_program_is_reported_not_raised(tmp_path, monkeypatch):
    record = tmp_path / "argv.txt"
    _fake_program(tmp_path, "espeak-ng", record, rc=3)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    inputs = sample_inputs()
    [outcome] = notify(NotifySummary.from_run(inputs["run"], {}, [{"step": "evaluate", "error": "OOM"}]),
                       desktop=False, voice=True)

    assert outcome["channel"] == "voice" and outcome["ok"] is False and outcome["detail"] == "exit 3"
    assert record.read_text().splitlines() == ["--", "posttrain run for smollm2-ft failed at evaluate."]
