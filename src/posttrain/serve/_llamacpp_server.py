"""llama-cpp-python's OpenAI-compatible server as a child process with a strict lifecycle.

Bound to 127.0.0.1 on a free port, ready only once `/v1/models` answers, its log streamed to a file,
stopped with SIGTERM then SIGKILL, and never outliving posttrain (see `_child`).
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from posttrain import llamacpp
from posttrain._lifeline import detached_kwargs
from posttrain.errors import PosttrainError

# Strong references: a server dropped without stop() is still stopped when posttrain exits.
_LIVE: set[LlamaServer] = set()


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        server.stop()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_threads() -> int:
    """Physical cores this process may use, llama.cpp's own default: hyper-threads and oversubscribed
    cores slow its thread barrier down (on a loaded 2-core box, 2 threads were 10-40x slower than 1)."""
    import psutil

    allowed = llamacpp.cpu_threads()
    return max(1, min(allowed, psutil.cpu_count(logical=False) or allowed))


def _cause(log: str) -> str:
    """The line of a server log that says why it stopped: the last exception line, else the last line."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    for line in reversed(lines):
        if line.split(":", 1)[0].endswith(("Error", "Exception")):
            return line
    return lines[-1] if lines else "no output"


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class LlamaServer:
    """`with LlamaServer(gguf) as server: httpx.post(server.url + "/v1/completions", ...)`.

    `parallel` is the number of requests served at once. llama-cpp-python's server (0.3.x) has no
    slot option: it serves one request at a time behind a lock, so only 1 is accepted; for
    concurrent requests start several servers.
    """

    def __init__(self, gguf: Path, *, n_ctx: int = 4096, n_threads: int | None = None, parallel: int = 1,
                 port: int | None = None, log_path: Path | None = None, startup_timeout: float = 120.0,
                 stop_grace: float = 10.0, extra_args: list[str] | None = None, n_gpu_layers: int | None = None):
        self.gguf = Path(gguf)
        if not self.gguf.is_file():
            raise PosttrainError(f"{self.gguf} does not exist", remedy="give the path of a .gguf file")
        with open(self.gguf, "rb") as fh:
            if fh.read(4) != b"GGUF":  # said now, not as a server that dies while starting
                raise PosttrainError(f"{self.gguf} is not a GGUF file (it does not start with the GGUF magic bytes)",
                                     remedy="give a .gguf made by `posttrain convert`")
        if parallel != 1:
            raise PosttrainError(f"parallel={parallel}: llama-cpp-python's server serves one request at a time",
                                 remedy="use parallel=1 and start one server per concurrent client")
        self.n_ctx = n_ctx
        self.n_threads = n_threads or default_threads()
        self.parallel = parallel
        self.port = port
        self.log_path = Path(log_path) if log_path else None
        self.startup_timeout = startup_timeout
        self.stop_grace = stop_grace
        self.extra_args = list(extra_args or [])
        # Resolved here (all layers on a build that offloads) so the command line says what runs.
        self.n_gpu_layers = llamacpp.llama_kwargs(n_gpu_layers)["n_gpu_layers"]
        self.process: subprocess.Popen | None = None
        self._log_file = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("server not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def command(self, port: int) -> list[str]:
        from_main_thread = threading.current_thread() is threading.main_thread()
        return [sys.executable, "-m", "posttrain.serve._child", str(os.getpid()),
                *(["--pdeathsig"] if from_main_thread else []), "--",
                "--model", str(self.gguf), "--host", "127.0.0.1", "--port", str(port),
                "--n_ctx", str(self.n_ctx), "--n_threads", str(self.n_threads),
                "--n_threads_batch", str(self.n_threads), "--n_gpu_layers", str(self.n_gpu_layers),
                *self.extra_args]

    def start(self) -> LlamaServer:
        if self.process is not None and self.process.poll() is None:
            return self
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix=f"posttrain-llama-server-{self.gguf.stem}-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        fixed_port = self.port is not None
        for attempt in range(3):
            port = self.port if fixed_port else free_port()
            self._spawn(port)
            try:
                self._wait_ready(port)
                self.port = port
                return self
            except _PortTaken:
                if fixed_port or attempt == 2:
                    raise PosttrainError(f"port {port} on 127.0.0.1 is in use",
                                         remedy="pick another --port or leave it out for a free one") from None
            except BaseException:
                self.stop()  # Ctrl-C or an error while waiting: do not leave a half-started server
                raise
        raise AssertionError("unreachable")

    def _spawn(self, port: int) -> None:
        self._log_file = self.log_path.open("ab", buffering=0)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(self.command(port), stdin=subprocess.DEVNULL, stdout=self._log_file,
                                        stderr=subprocess.STDOUT, env=env, **detached_kwargs())
        # A new session keeps the terminal's Ctrl-C away from the child: posttrain stops it in order.
        _LIVE.add(self)

    def _wait_ready(self, port: int) -> None:
        deadline = time.monotonic() + self.startup_timeout
        url = f"http://127.0.0.1:{port}/v1/models"
        with httpx.Client(timeout=2.0) as http:
            while time.monotonic() < deadline:
                code = self.process.poll()
                if code is not None:
                    self._close_log()
                    tail = _tail(self.log_path)
                    if _port_taken(tail):
                        raise _PortTaken()
                    # One line: the cause, and where the whole log is (a traceback is no message).
                    raise PosttrainError(f"llama.cpp server for {self.gguf.name} exited with code {code} while "
                                         f"starting: {_cause(tail)}",
                                         remedy=f"full log: {self.log_path}; `posttrain convert` verifies a GGUF")
                try:
                    if http.get(url).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
        tail = _tail(self.log_path)
        self.stop()
        raise PosttrainError(f"llama.cpp server for {self.gguf.name} not ready after {self.startup_timeout:.0f} s: "
                             f"{_cause(tail)}", remedy=f"full log: {self.log_path}; a larger startup_timeout for "
                                                      f"big models")

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after the grace period. Returns the exit code (None if never started)."""
        proc = self.process
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(self.stop_grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        _LIVE.discard(self)
        self._close_log()
        return proc.returncode

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _port_taken(log_tail: str) -> bool:
    """Whether the server died because its port was taken by then: uvicorn's bind error, as Linux and
    macOS word it (EADDRINUSE) or as Windows does (WinError 10048, in the system's language, so the
    code is what is matched there)."""
    text = log_tail.lower()
    return "address already in use" in text or "errno 98" in text or "errno 48" in text or "10048" in text


class _PortTaken(Exception):
    pass
