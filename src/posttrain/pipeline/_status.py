"""What `posttrain status` reports, gathered from the PID file, the watcher's status file and the store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from posttrain import paths
from posttrain._files import read_json_file
from posttrain.contracts import RunLayout
from posttrain.pipeline._daemon import STATUS_FILE, read_pid_file
from posttrain.pipeline._runner import run_is_live


def _verdicts(run_dir: str | None) -> list[str]:
    from posttrain.compare import verdict_sentences

    return verdict_sentences(RunLayout(Path(run_dir)).compare_json) if run_dir else []


def gather_status(home: Path, last: int = 5) -> dict[str, Any]:
    info = read_pid_file(home)
    running = bool(info and info.alive)
    doc: dict[str, Any] = {"home": str(home), "running": running, "watcher": None, "runs": [], "active_runs": []}
    if running:
        status = read_json_file(home / STATUS_FILE) or {}
        doc["watcher"] = {**status, "pid": info.pid, "started_at": info.started_at, "uptime_s": info.uptime_s}
    elif info is not None:
        doc["stale_pid"] = info.pid
    db = paths.store_path(home)
    if not db.exists():
        return doc
    from posttrain.store import Store

    store = Store(db)
    try:
        for r in store.runs.latest_activity(last):
            failed = store.steps.failed(r["id"])
            status = r["status"]
            if status == "running" and not run_is_live(r["run_dir"]):
                status = "interrupted"  # its process died (kill -9, power loss): rerunning its command resumes it
            doc["runs"].append({"id": r["id"], "status": status, "finished_at": r["finished_at"],
                                "verdicts": _verdicts(r["run_dir"]),
                                "failed": "; ".join(f"{f['name']}: {f['error']}" for f in failed) or None})
        for r in store.runs.marked_running():
            if not run_is_live(r["run_dir"]):
                continue  # crashed: it resumes when its command runs again
            doc["active_runs"].append({"id": r["id"], "owner_pid": r["owner_pid"], "step": store.steps.running(r["id"])})
    finally:
        store.close()
    return doc
