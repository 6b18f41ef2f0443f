"""A real three-node Ray cluster on this machine, over loopback: a head and two nodes joined with
`ray start --address`, each with its own temp dir and one CPU. Stopped by process id (the cluster's
raylets, GCS and their children), so no other Ray on the machine is touched."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    address: str
    temp_dirs: list[Path]
    env: dict = field(default_factory=dict)

    def processes(self, node: int | None = None) -> list[psutil.Process]:
        """Ray's processes of one node (by its temp dir), or of all; with their workers."""
        dirs = [str(d) for d in (self.temp_dirs if node is None else [self.temp_dirs[node]])]
        roots = []
        for p in psutil.process_iter(["cmdline"]):
            if p.pid == os.getpid():
                continue
            cmd = " ".join(p.info["cmdline"] or [])
            if any(d in cmd for d in dirs):
                roots.append(p)
        found = {p.pid: p for p in roots}
        for p in roots:
            try:
                found.update({c.pid: c for c in p.children(recursive=True)})
            except psutil.NoSuchProcess:
                pass
        return list(found.values())

    def raylet(self, node: int) -> psutil.Process:
        return next(p for p in self.processes(node) if p.name() == "raylet")

    def running_units(self, node: int) -> list[psutil.Process]:
        out = []
        for p in self.processes(node):
            try:
                # A busy Ray worker renames itself after its task ("ray::hellaswag shard 2/8 of …").
                if " shard " in " ".join(p.cmdline()):
                    out.append(p)
            except psutil.NoSuchProcess:
                pass
        return out

    def stop(self) -> None:
        procs = self.processes()
        for p in procs:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=10)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        for d in self.temp_dirs:
            shutil.rmtree(d, ignore_errors=True)


def start_cluster(nodes: int = 3) -> Cluster:
    # The cluster's own token (token authentication, Ray's default), not the one in ~/.ray.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    port = _free_port()
    # Short paths: Ray's unix sockets live under the temp dir and a socket path has ~100 characters
    # (pytest's own temp dirs are too deep). The system's temp dir: /tmp on Linux, %TEMP% on Windows.
    dirs = [Path(tempfile.mkdtemp(prefix=f"ptray{i}-", dir=tempfile.gettempdir())) for i in range(nodes)]
    cluster = Cluster(f"127.0.0.1:{port}", dirs, env)
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats"]
    try:
        subprocess.run([RAY, "start", "--head", "--port", str(port), "--temp-dir", str(dirs[0]),
                        "--include-dashboard", "false", "--ray-client-server-port", str(_free_port()), *common],
                       env=env, check=True, capture_output=True, timeout=120)
        for d in dirs[1:]:
            subprocess.run([RAY, "start", "--address", cluster.address, "--temp-dir", str(d), *common],
                           env=env, check=True, capture_output=True, timeout=120)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = subprocess.run([RAY, "status", "--address", cluster.address], env=env,
                                    capture_output=True, text=True, timeout=60)
            if status.stdout.count("node_") >= nodes:
                return cluster
            time.sleep(1)
        raise RuntimeError(f"the cluster did not reach {nodes} nodes: {status.stdout}{status.stderr}")
    except BaseException:
        cluster.stop()
        raise
