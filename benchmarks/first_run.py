"""The first run as a new user has it: README line 1, `bash scripts/setup.sh && .venv/bin/posttrain demo`,
in a fresh clone with empty caches, phase by phase.

    python benchmarks/first_run.py [--repo .] [--keep]          the whole first run (~20 min of 2 cores)
    .venv/bin/python benchmarks/first_run.py --provisioning [--before]
                                                                only the converter's provisioning

The whole run clones the repository's committed HEAD into a temporary folder and runs README line 1
there with nothing cached: PIP_NO_CACHE_DIR=1 (llama.cpp compiles, no wheel from pip's cache), an
empty POSTTRAIN_CACHE and a POSTTRAIN_HOME of its own. It prints the time of each phase: setup in
total, its llama.cpp build and the converter's provisioning (both from setup's own lines), the demo
in total and the demo's convert step (from the demo's store). Compare figures only between runs on
the same, equally loaded machine (the load average is printed).

`--provisioning` times the provisioning of llama.cpp's converter alone, each with an empty cache, in
this environment (the installed llama-cpp-python's version): from a local sdist (what setup does: the
file the runtime was built from) and with the download at run time (`pip download --no-binary
llama-cpp-python`, pip's cache off). `--before` adds the fetch posttrain used before issue 29,
`pip download --no-binary :all:`, which also builds every build backend from source (minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUILD_LINE = re.compile(r"llama-cpp-python built and installed in (\d+) s")
# The display's line for the provisioning stage: "✓ provisioning llama.cpp's converter from X  3.1 s".
PROVISION_LINE = re.compile(r"provisioning llama\.cpp's converter.*?\s([\d.]+) (s|min)\s*$")


def _seconds(value: str, unit: str) -> float:
    return float(value) * (60 if unit == "min" else 1)


def _run_timed(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> tuple[int, float, list[str]]:
    """Run `cmd`, its output (both streams) into `log` and kept as lines; (exit code, seconds, lines)."""
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    return proc.returncode, seconds, log.read_text(errors="replace").splitlines()


def _clean_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTTRAIN_", "VIRTUAL_ENV", "PYTHONPATH"))}
    env.update({"PIP_NO_CACHE_DIR": "1", "POSTTRAIN_CACHE": str(root / "cache"),
                "POSTTRAIN_HOME": str(root / "home"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    return env


def first_run(ns) -> int:
    root = Path(tempfile.mkdtemp(prefix="posttrain-first-run-"))
    clone = root / "posttrain"
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(ns.repo.resolve()), str(clone)], check=True)
    env = _clean_env(root)
    load_before = os.getloadavg()[0]
    phases: dict[str, float | None] = {}
    print(f"fresh clone of {ns.repo.resolve()} (HEAD) in {clone}; logs beside it", flush=True)

    code, seconds, lines = _run_timed(["bash", "scripts/setup.sh"], clone, env, root / "setup.log")
    phases["setup (total)"] = seconds
    built = [m for line in lines if (m := BUILD_LINE.search(line))]
    phases["  llama.cpp build"] = float(built[-1][1]) if built else None
    provisioned = [m for line in lines if (m := PROVISION_LINE.search(line))]
    phases["  converter provisioning"] = _seconds(*provisioned[-1].groups()) if provisioned else None
    if code == 0:
        code, seconds, lines = _run_timed([".venv/bin/posttrain", "demo"], clone, env, root / "demo.log")
        phases["demo (total)"] = seconds
        phases["  demo's convert step"] = _convert_step(clone / "posttrain-demo" / "home" / "posttrain.db")

    print(f"{'phase':<28} {'seconds':>8}")
    for name, value in phases.items():
        print(f"{name:<28} {'–' if value is None else f'{value:8.1f}':>8}")
    print(f"(load average {load_before:.1f} → {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs; "
          f"logs: {root / 'setup.log'}, {root / 'demo.log'})")
    if code != 0:
        print(f"failed (exit {code}); last lines:\n" + "\n".join(lines[-15:]))
    if not ns.keep and code == 0:
        shutil.rmtree(clone, ignore_errors=True)
    return code


def _convert_step(db: Path) -> float | None:
    if not db.is_file():
        return None
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT wall_s FROM steps WHERE name = 'convert' ORDER BY started_at DESC").fetchone()
    return row[0] if row else None


def provisioning(ns) -> int:
    """The converter's provisioning alone, each way with an empty posttrain cache and pip's cache off."""
    os.environ["PIP_NO_CACHE_DIR"] = "1"
    from posttrain import toolchain

    ver = toolchain.llama_cpp_python_version()
    rows = []
    with tempfile.TemporaryDirectory(prefix="posttrain-provision-bench-") as tmp:
        tmp = Path(tmp)
        if ns.before:
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                            f"llama-cpp-python=={ver}", "-d", str(tmp / "before"), "-q"], check=True)
            rows.append(("before: pip download --no-binary :all: (fetch only)", time.perf_counter() - started))
        os.environ["POSTTRAIN_CACHE"] = str(tmp / "cache-runtime")
        started = time.perf_counter()
        tree = toolchain.provision_converter(ver)
        rows.append(("after, at run time: download --no-binary llama-cpp-python + extract",
                     time.perf_counter() - started))
        sdist = toolchain.kept_sdist_dir() / json.loads((tree.root / toolchain.PROVENANCE).read_text())["sdist"]
        local = tmp / sdist.name
        shutil.copyfile(sdist, local)  # outside the next cache, as setup's file is
        os.environ["POSTTRAIN_CACHE"] = str(tmp / "cache-setup")
        started = time.perf_counter()
        toolchain.provision_converter(ver, sdist=local)
        rows.append(("after, in setup: from the local sdist", time.perf_counter() - started))
    print(f"llama-cpp-python {ver}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    for name, seconds in rows:
        print(f"{name:<70} {seconds:7.1f} s")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--keep", action="store_true", help="keep the clone (and its .venv) afterwards")
    parser.add_argument("--provisioning", action="store_true", help="time only the converter's provisioning")
    parser.add_argument("--before", action="store_true", help="with --provisioning: also the old `:all:` fetch")
    ns = parser.parse_args()
    sys.exit(provisioning(ns) if ns.provisioning else first_run(ns))


if __name__ == "__main__":
    main()
