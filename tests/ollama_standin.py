"""A STAND-IN for an Ollama server, for tests only: Ollama cannot be installed on the test machine.

It implements, on 127.0.0.1 with the standard library's HTTP server, the documented Ollama API
endpoints posttrain uses — `GET /api/version`, `GET /api/tags`, `POST /api/show`,
`HEAD`/`POST /api/blobs/sha256:<hex>`, `POST /api/create` (streamed JSON status lines),
`POST /api/chat` and `DELETE /api/delete` — with Ollama's field names and status codes. It keeps
blobs as files named like Ollama's (`blobs/sha256-<hex>`), verifies uploaded bytes against the
digest (400 on mismatch, as Ollama does), validates model names with Ollama's rules, records every
request, and can be told to answer an error a number of times. It runs no model: `/api/chat`
returns a canned reply. posttrain's code talks to it exactly as it talks to a real Ollama.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CANNED_REPLY = "I am a stand-in for Ollama; no model ran."
_BLOB_PATH = re.compile(r"^/api/blobs/(sha256:[0-9a-f]{64})$")
_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}$")


@dataclass
class Recorded:
    method: str
    path: str
    body: dict | None
    size: int


@dataclass
class Failure:
    status: int
    message: str
    times: int
    paths: tuple[str, ...] | None  # None: any path


@dataclass
class StandinModel:
    name: str
    blob: str
    files: dict[str, str]
    parameters: dict[str, object]
    template: str
    system: str | None
    adapters: dict[str, str] = field(default_factory=dict)  # name → digest (create's `adapters`)
    modified_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())


def _valid_name(name: str) -> bool:
    model, _, tag = name.partition(":")
    parts = model.split("/")
    return all(_PART.match(p) and ".." not in p for p in [*parts, tag or "latest"])


def _go_value(v: object) -> str:
    # Ollama prints parameters with Go's %#v: strings quoted, numbers bare.
    return json.dumps(v) if isinstance(v, str) else (str(v).lower() if isinstance(v, bool) else f"{v:g}" if isinstance(v, float) else str(v))


class OllamaStandin:
    """Start with `with OllamaStandin(tmp_path) as s:`; `s.url` is its base URL."""

    # What Ollama falls back to when no TEMPLATE is given and it does not recognise the GGUF's.
    DEFAULT_TEMPLATE = "{{ .Prompt }}"

    def __init__(self, root: Path):
        self.root = Path(root)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        self.models: dict[str, StandinModel] = {}
        self.requests: list[Recorded] = []
        self.failures: list[Failure] = []
        self.create_error: str | None = None  # streamed as {"error": …}, as Ollama does mid-create
        self.chat_error: tuple[int, str] | None = None
        self.reply = CANNED_REPLY
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> OllamaStandin:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail(self, times: int, status: int = 503, message: str = "service unavailable",
             paths: tuple[str, ...] | None = None) -> None:
        """Answer the next `times` requests (to `paths`, or any) with this status and error."""
        self.failures.append(Failure(status, message, times, paths))

    def requests_to(self, method: str, prefix: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method and r.path.startswith(prefix)]

    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / digest.replace(":", "-")

    def _take_failure(self, path: str) -> Failure | None:
        with self._lock:
            for f in self.failures:
                if f.times > 0 and (f.paths is None or any(path.startswith(p) for p in f.paths)):
                    f.times -= 1
                    return f
        return None

    def _handler(self):
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _send_json(self, status: int, obj: object) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _send_empty(self, status: int) -> None:
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _stream(self, lines: list[dict]) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ndjson")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for line in lines:
                    data = json.dumps(line).encode() + b"\n"
                    self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")

            def _read(self) -> bytes:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    return self.rfile.read(length)
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            break
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    return b"".join(chunks)
                return b""

            def _dispatch(self) -> None:
                raw = self._read() if self.command in {"POST", "DELETE"} else b""
                body = None
                if raw and not self.path.startswith("/api/blobs/"):
                    body = json.loads(raw)
                standin.requests.append(Recorded(self.command, self.path, body, len(raw)))
                if failure := standin._take_failure(self.path):
                    return self._send_json(failure.status, {"error": failure.message})
                route = getattr(self, f"_{self.command.lower()}_{self.path.split('/')[2] if self.path.count('/') >= 2 else ''}", None)
                if route is None:
                    return self._send_json(404, {"error": "not found"})
                route(body, raw)

            do_GET = do_POST = do_HEAD = do_DELETE = _dispatch

            def _get_version(self, body, raw) -> None:
                self._send_json(200, {"version": "0.12.6"})

            def _get_tags(self, body, raw) -> None:
                self._send_json(200, {"models": [
                    {"name": m.name, "model": m.name, "modified_at": m.modified_at,
                     "size": standin.blob_path(m.blob).stat().st_size,
                     "digest": hashlib.sha256(json.dumps(m.files).encode()).hexdigest(),
                     "details": {"format": "gguf", "family": "llama"}}
                    for m in standin.models.values()]})

            def _head_blobs(self, body, raw) -> None:
                m = _BLOB_PATH.match(self.path)
                if not m:
                    return self._send_empty(400)
                self._send_empty(200 if standin.blob_path(m.group(1)).is_file() else 404)

            def _post_blobs(self, body, raw) -> None:
                m = _BLOB_PATH.match(self.path)
                if not m:
                    return self._send_json(400, {"error": "invalid digest format"})
                if f"sha256:{hashlib.sha256(raw).hexdigest()}" != m.group(1):
                    return self._send_json(400, {"error": "digest mismatch"})
                standin.blob_path(m.group(1)).write_bytes(raw)
                self._send_empty(201)

            def _post_show(self, body, raw) -> None:
                name = _full(body.get("model") or body.get("name") or "")
                model = standin.models.get(name)
                if model is None:
                    return self._send_json(404, {"error": f"model '{name}' not found"})
                params = "\n".join(f"{k:<30} {_go_value(v)}"
                                   for k, vs in model.parameters.items()
                                   for v in (vs if isinstance(vs, list) else [vs]))
                # Ollama's layout: a commented FROM with the model's name, then FROM with the blob's path.
                modelfile = ['# Modelfile generated by "ollama show"',
                             "# To build a new Modelfile based on this, replace FROM with:",
                             f"# FROM {name}", "", f"FROM {standin.blob_path(model.blob)}",
                             f'TEMPLATE """{model.template}"""']
                # Ollama lists each adapter layer as an ADAPTER line with its blob's path.
                modelfile += [f"ADAPTER {standin.blob_path(d)}" for d in model.adapters.values()]
                if model.system:
                    modelfile.append(f'SYSTEM """{model.system}"""')
                modelfile += [f"PARAMETER {line}" for line in params.splitlines()]
                self._send_json(200, {"modelfile": "\n".join(modelfile) + "\n", "parameters": params,
                                      "template": model.template, "system": model.system,
                                      "details": {"format": "gguf", "family": "llama"},
                                      "model_info": {"general.architecture": "llama"},
                                      "capabilities": ["completion"], "modified_at": model.modified_at})

            def _post_create(self, body, raw) -> None:
                name = body.get("model") or ""
                if not _valid_name(name):
                    return self._send_json(400, {"error": "invalid model name"})
                files = body.get("files") or {}
                if not files:
                    return self._send_json(400, {"error": "neither 'from' or 'files' was specified"})
                adapters = body.get("adapters") or {}
                for digest in [*files.values(), *adapters.values()]:
                    if not standin.blob_path(digest).is_file():
                        return self._send_json(400, {"error": f"blob {digest} not found"})
                lines = [{"status": "parsing GGUF"}]
                if standin.create_error:
                    lines.append({"error": standin.create_error})
                    return self._stream(lines)
                blob = next(iter(files.values()))
                lines.append({"status": f"using existing layer {blob}"})
                standin.models[_full(name)] = StandinModel(
                    name=_full(name), blob=blob, files=dict(files), parameters=dict(body.get("parameters") or {}),
                    template=body.get("template") or standin.DEFAULT_TEMPLATE, system=body.get("system"),
                    adapters=dict(adapters))
                lines += [{"status": "writing manifest"}, {"status": "success"}]
                if body.get("stream", True):
                    return self._stream(lines)
                self._send_json(200, {"status": "success"})

            def _post_chat(self, body, raw) -> None:
                name = _full(body.get("model") or "")
                if name not in standin.models:
                    return self._send_json(404, {"error": f"model '{name}' not found, try pulling it first"})
                if standin.chat_error:
                    return self._send_json(*standin.chat_error[:1], {"error": standin.chat_error[1]})
                time.sleep(0.01)
                reply = {"model": name, "created_at": datetime.now(UTC).isoformat(),
                         "message": {"role": "assistant", "content": standin.reply},
                         "done": True, "done_reason": "stop", "total_duration": 10_000_000,
                         "eval_count": 9, "prompt_eval_count": 12}
                if body.get("stream", True):
                    return self._stream([reply])
                self._send_json(200, reply)

            def _delete_delete(self, body, raw) -> None:
                name = _full((body or {}).get("model") or (body or {}).get("name") or "")
                if standin.models.pop(name, None) is None:
                    return self._send_json(404, {"error": f"model '{name}' not found"})
                self._send_empty(200)

        return Handler


def _full(name: str) -> str:
    return name if ":" in name.rpartition("/")[2] else f"{name}:latest"
