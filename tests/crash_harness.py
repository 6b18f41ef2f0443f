"""Crash consistency the way SQLite tests it (issue 33): a real `posttrain run` killed at an instant,
or given an I/O error at its k-th write, then run again, must end as a clean run does.

Used by tests/test_crash_consistency.py (a few cases) and benchmarks/crash_consistency.py (many).
Everything is real: the tiny model is converted by llama.cpp, evaluated by lm-eval, compared against
a baseline converted by llama.cpp, recorded in SQLite. Each case runs in a fresh home.

- `kill_case`: start the run, kill its whole process tree (kill -9) after `at_s` seconds, check what
  the kill left (the store's integrity, every output under its final name complete), run the same
  command again to completion, check it ends with the clean run's report, no temporary file left,
  and no process of either run alive.
- `fault_case`: the k-th write of the run (a file posttrain writes atomically, or a store
  transaction; counted across the whole process tree) fails with ENOSPC or EIO, through
  tests/fault_site/ which wraps posttrain's seam `_files.about_to_write` in the processes this
  harness starts. The run must exit 1 with an error line naming the file; the rerun, the fault
  cleared, must finish with the clean report.

Each case returns a list of problems, empty when it passed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
FAULT_SITE = HERE / "fault_site"
TAG = "CRASH_HARNESS_TAG"  # marks every process of a case (inherited), to find survivors
RUN_TIMEOUT_S = 900

# What differs between two clean runs of the same command: times, memory, when, where.
_VOLATILE = {"created_at", "finished_at", "started_at", "updated_at", "wall_s", "seconds", "peak_rss_bytes",
             "gpu_mem_bytes", "requests_per_s", "elapsed_s"}
# Writes left out of the count: a step child's progress file (the display's counts), rewritten every
# half second, so counting it would make the k-th write another one in each run. Its writes are
# best-effort by design (_progress.FileReporter ignores an OSError): a fault there changes nothing.
IGNORED_WRITES = ("posttrain-progress-",)
_TEMPORARY = re.compile(r"^\..+\.(tmp|partial)$|^\.tasks-|\.merging-")


@dataclass
class Inputs:
    root: Path
    checkpoint: Path
    baseline: Path
    config: Path


@dataclass
class Clean:
    """The reference: a clean run's wall time, normalised report and the writes it made."""

    wall_s: float
    report: dict[str, Any]
    writes: list[tuple[int, int, str]]  # (n, pid, path)


@dataclass
class Case:
    kind: str
    detail: str
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems


def make_inputs(root: Path) -> Inputs:
    """A tiny checkpoint, a tiny baseline checkpoint (converted by the run), 6 hellaswag items, and a
    config for two variants (F16, Q8_0); Ollama at a port nobody listens on (register: skipped)."""
    from posttrain.tiny import make_tiny

    root.mkdir(parents=True, exist_ok=True)
    checkpoint = make_tiny(root / "exp" / "final_model", seed=0)
    baseline = make_tiny(root / "base", seed=3)
    from test_evaluate_offline import write_hellaswag  # the suite's own 4-way items, as every pipeline test writes them

    write_hellaswag(root / "data", n=6)
    config = root / "posttrain.toml"
    config.write_text(f'quants = ["f16", "q8_0"]\ntasks = ["hellaswag"]\ndata_dir = {json.dumps(str(root / "data"))}\n'
                      f'limit = 6\nretry_backoff_s = 0.1\n[ollama]\nurl = "http://127.0.0.1:9"\n')
    return Inputs(root, checkpoint, baseline, config)


def command(inputs: Inputs, home: Path) -> list[str]:
    return [sys.executable, "-m", "posttrain", "run", str(inputs.checkpoint), "--baseline", str(inputs.baseline),
            "--config", str(inputs.config), "--home", str(home)]


def _env(tag: str, writes: Path | None = None, fault: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRASH_HARNESS_")}
    env[TAG] = tag
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    if writes is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(FAULT_SITE), env.get("PYTHONPATH")]))
        env["CRASH_HARNESS_WRITES"] = str(writes)
        env["CRASH_HARNESS_IGNORE"] = ";".join(IGNORED_WRITES)
        if fault:
            env["CRASH_HARNESS_FAULT"] = fault
    return env


def _run(inputs: Inputs, home: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(command(inputs, home), capture_output=True, text=True, env=env, timeout=RUN_TIMEOUT_S,
                          stdin=subprocess.DEVNULL, check=False)


def _read_writes(path: Path) -> list[tuple[int, int, str]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        n, pid, written = line.split("\t", 2)
        rows.append((int(n), int(pid), written))
    return rows


# -- the report, without what differs between clean runs ----------------------------------------
def normalised_report(home: Path) -> dict[str, Any] | None:
    reports = sorted((home / "runs").glob("*/report.json"))
    if len(reports) != 1:
        return None
    doc = json.loads(reports[0].read_text(encoding="utf-8"))
    return _normalise(doc, str(home))


def _normalise(value: Any, home: str) -> Any:
    if isinstance(value, dict):
        return {k: _normalise(v, home) for k, v in value.items() if k not in _VOLATILE}
    if isinstance(value, list):
        return [_normalise(v, home) for v in value]
    if isinstance(value, str):
        # lm-eval's result files carry their date in their names
        return re.sub(r"\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d\.\d+", "<date>", value.replace(home, "<home>"))
    return value


def report_differences(got: dict[str, Any] | None, want: dict[str, Any], where: str = "report") -> list[str]:
    if got is None:
        return ["no report.json (or more than one)"]
    out: list[str] = []

    def walk(a: Any, b: Any, path: str) -> None:
        if len(out) >= 5:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k, "<missing>"), b.get(k, "<missing>"), f"{path}.{k}")
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                walk(x, y, f"{path}[{i}]")
        elif a != b:
            out.append(f"{path}: {str(a)[:120]!r} != clean {str(b)[:120]!r}")

    walk(got, want, where)
    return out


# -- what a home must look like ------------------------------------------------------------------
def integrity_problems(home: Path) -> list[str]:
    db = home / "posttrain.db"
    if not db.exists():
        return []
    con = sqlite3.connect(db, timeout=30)
    try:
        rows = [r[0] for r in con.execute("PRAGMA integrity_check")]
    except sqlite3.DatabaseError as e:
        return [f"posttrain.db: {e}"]
    finally:
        con.close()
    return [] if rows == ["ok"] else [f"posttrain.db integrity_check: {rows[:3]}"]


def temporary_files(home: Path) -> list[str]:
    found = [str(p) for p in home.rglob("*") if _TEMPORARY.search(p.name)]
    found += [str(p) for p in home.rglob(".steps/*")]  # a step's job or result file, a stop request
    return sorted(found)


def incomplete_outputs(home: Path) -> list[str]:
    """Every output under its final name must be whole: GGUFs parse to the end and match the manifest
    that lists them, JSON parses, the report's three files exist together."""
    problems: list[str] = []
    for path in sorted(home.rglob("*")):
        if not path.is_file() or _TEMPORARY.search(path.name) or ".steps" in path.parts:
            continue
        if path.suffix == ".json":
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except ValueError as e:
                problems.append(f"{path}: not JSON ({e})")
        elif path.suffix == ".jsonl":
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
                try:
                    json.loads(line)
                except ValueError:
                    problems.append(f"{path}: line {i + 1} is not JSON")
                    break
        elif path.suffix == ".gguf":
            problems += _gguf_problems(path)
    for manifest in home.glob("gguf/*/manifest.json"):
        try:
            doc = json.loads(manifest.read_text(encoding="utf-8"))
        except ValueError:
            continue  # said above
        for quant, entry in (doc.get("variants") or {}).items():
            path = manifest.parent / entry["path"]
            if not path.exists():
                continue  # listed, since removed: a rerun remakes it (the run verifies before reuse)
            if path.stat().st_size != entry["size_bytes"]:
                problems.append(f"{path}: {path.stat().st_size} bytes, the manifest says {entry['size_bytes']}")
            else:
                from posttrain._files import sha256_file

                if sha256_file(path) != entry["sha256"]:
                    problems.append(f"{path}: sha256 differs from {manifest}'s {quant} entry")
    for run_dir in home.glob("runs/*"):
        have = [n for n in ("report.html", "report.md", "report.json") if (run_dir / n).exists()]
        if have and len(have) != 3:
            problems.append(f"{run_dir}: only {have} of the report's three files")
    return problems


def _gguf_problems(path: Path) -> list[str]:
    data = path.read_bytes()
    if data[:4] != b"GGUF":
        return [f"{path}: no GGUF magic"]
    try:
        reader = _gguf().GGUFReader(path)
        short = [t.name for t in reader.tensors if t.data.nbytes != t.n_bytes]
    except Exception as e:  # noqa: BLE001 - any failure to parse is what is looked for
        return [f"{path}: does not parse as GGUF ({e.__class__.__name__}: {e})"]
    return [f"{path}: tensors {short[:3]} run past the end of the file"] if short else []


def _gguf():
    from posttrain.convert._gguf_info import gguf_module
    from posttrain.toolchain import find_converter

    return gguf_module(find_converter())


def survivors(tag: str) -> list[str]:
    """Processes of the case still alive (not zombies), found by the tag every one inherits."""
    alive = []
    for proc in psutil.process_iter(["pid", "name"]):
        try:
            if proc.environ().get(TAG) == tag and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{proc.pid} {' '.join(proc.cmdline())[:160]}")
        except (psutil.Error, OSError):
            continue
    return alive


def _wait_no_survivors(tag: str, within_s: float) -> list[str]:
    deadline = time.monotonic() + within_s
    while True:
        alive = survivors(tag)
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def kill_tree(pid: int) -> None:
    """kill -9 of the process and all it started (tests/platforms.py's, here for the benchmark too)."""
    sys.path.insert(0, str(HERE))
    from platforms import kill_tree as kill

    kill(pid)


# -- the cases ----------------------------------------------------------------------------------
def clean_run(inputs: Inputs, home: Path) -> Clean:
    """The reference run, its writes counted (through the same seam the faults use)."""
    discard(home)
    writes = home.parent / f"{home.name}.writes"
    started = time.monotonic()
    proc = _run(inputs, home, _env(uuid.uuid4().hex, writes))
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"the clean run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    report = normalised_report(home)
    if report is None:
        raise RuntimeError("the clean run wrote no report.json")
    return Clean(wall, report, _read_writes(writes))


def warm_wall_s(inputs: Inputs, home: Path) -> float:
    """Seconds of a run as the kill cases make it: after the clean run (caches warm) and without its
    write counting. The clean run's own time can be twice this, and instants spread over it would
    then land after the run had ended: nothing killed."""
    discard(home)
    started = time.monotonic()
    proc = _run(inputs, home, _env(uuid.uuid4().hex))
    wall = time.monotonic() - started
    discard(home)
    if proc.returncode != 0:
        raise RuntimeError(f"the timing run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return wall


def _after_rerun(inputs: Inputs, home: Path, tag: str, clean: Clean, case: Case) -> None:
    again = _run(inputs, home, _env(tag))
    if again.returncode != 0:
        case.problems.append(f"rerun exit {again.returncode}: {(again.stderr or again.stdout).strip()[-600:]}")
    case.problems += report_differences(normalised_report(home), clean.report)
    case.problems += integrity_problems(home)
    case.problems += [f"left behind: {p}" for p in temporary_files(home)]
    case.problems += incomplete_outputs(home)
    case.problems += [f"still running after the rerun: {p}" for p in _wait_no_survivors(tag, 10)]


def kill_case(inputs: Inputs, home: Path, at_s: float, clean: Clean) -> Case:
    case = Case("kill", f"kill -9 at {at_s:.1f} s")
    discard(home)
    started = time.monotonic()
    tag = uuid.uuid4().hex
    proc = subprocess.Popen(command(inputs, home), env=_env(tag), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=at_s)
        case.detail += " (the run had ended)"
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        proc.wait()
    case.problems += [f"alive 5 s after kill -9: {p}" for p in _wait_no_survivors(tag, 5)]
    case.problems += [f"after the kill: {p}" for p in integrity_problems(home) + incomplete_outputs(home)]
    _after_rerun(inputs, home, tag, clean, case)
    case.seconds = time.monotonic() - started
    return case


def fault_case(inputs: Inputs, home: Path, k: int, error: str, clean: Clean) -> Case:
    """The k-th write fails with `error` (ENOSPC or EIO), once."""
    case = Case("fault", f"{error} at write {k}")
    discard(home)
    started = time.monotonic()
    tag = uuid.uuid4().hex
    writes = home.parent / f"{home.name}.writes"
    proc = _run(inputs, home, _env(tag, writes, f"{k}:{error}"))
    done = _read_writes(writes)
    hit = [w for w in done if w[0] == k]
    if not hit:
        case.detail += " (not reached: the run made fewer writes)"
    else:
        path = hit[0][2]
        case.detail += f" ({path.replace(str(home), '<home>')})"
        if proc.returncode != 1:
            case.problems.append(f"exit {proc.returncode}, not 1, with {error} writing {path}")
        lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if path in ln]
        if not lines:
            case.problems.append(f"no output line names {path}: {proc.stderr.strip()[-400:]}")
        if "this is a bug in posttrain" in proc.stderr:
            case.problems.append(f"a bug was reported: {proc.stderr.strip()[-400:]}")
    case.problems += [f"alive after the faulty run: {p}" for p in _wait_no_survivors(tag, 10)]
    case.problems += [f"after the fault: {p}" for p in integrity_problems(home) + incomplete_outputs(home)]
    _after_rerun(inputs, home, tag, clean, case)
    case.seconds = time.monotonic() - started
    return case


def spread(total: float, n: int) -> list[float]:
    """n instants evenly inside (0, total)."""
    return [total * (i + 1) / (n + 1) for i in range(n)]


def discard(home: Path) -> None:
    shutil.rmtree(home, ignore_errors=True)
    for extra in home.parent.glob(f"{home.name}.writes*"):
        extra.unlink(missing_ok=True)
