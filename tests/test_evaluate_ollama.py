"""Ollama through `posttrain eval`, and think-stripping.

Ollama itself cannot be installed here, so generation goes to a STAND-IN: a tiny HTTP server on
127.0.0.1 that speaks the documented `/api/generate` and `/api/show` (Ollama's field names), records
each request, and answers with a fixed reasoning-model style reply. Everything on posttrain's side —
the official `ollama` client, lm-eval, its GSM8K filters, llama.cpp for the loglikelihood tasks, the
store — is real.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from test_evaluate_offline import write_hellaswag

from posttrain.errors import PosttrainError
from posttrain.evaluate import evaluate, items_for_eval, strip_think
from posttrain.store import Store

THINK = "<think>First I add the numbers carefully: forty plus two.</think>"
REPLY = THINK + "\nThe answer is 42.\n\nQuestion: and then?"


class OllamaGenerateStandin:
    """A STAND-IN for Ollama's /api/generate and /api/show (no model runs; the reply is fixed)."""

    def __init__(self, blob: Path | None):
        self.blob = blob
        self.requests: list[tuple[str, dict]] = []
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _json(self, status: int, obj: dict) -> None:
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                standin.requests.append((self.path, body))
                if self.path == "/api/show":
                    src = str(standin.blob) if standin.blob else "/nonexistent/blobs/sha256-" + "0" * 64
                    self._json(200, {"modelfile": f"# Modelfile\nFROM {src}\n", "parameters": "", "template": "",
                                     "details": {"format": "gguf", "family": "llama"}, "model_info": {}})
                elif self.path == "/api/generate":
                    text = REPLY
                    for stop in (body.get("options") or {}).get("stop") or []:
                        text = text.split(stop, 1)[0]  # Ollama stops at the first stop sequence
                    self._json(200, {"model": body["model"], "created_at": "2026-11-25T10:00:00Z",
                                     "response": text, "done": True, "done_reason": "stop",
                                     "eval_count": len(text.split())})
                else:
                    self._json(404, {"error": f"no route {self.path}"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def data_dir(tmp_path) -> Path:
    root = tmp_path / "data"
    (root / "gsm8k").mkdir(parents=True)
    for split, n in (("test", 3), ("train", 6)):
        with (root / "gsm8k" / f"{split}.jsonl").open("w") as fh:
            for i in range(n):
                fh.write(json.dumps({"question": f"What is 40 + {2 + i * 0}? ({i})", "answer": "40+2=42\n#### 42"}) + "\n")
    write_hellaswag(root)
    return root


def test_strip_think_keeps_only_a_hash():
    kept, digest = strip_think(REPLY)
    assert "carefully" not in kept and kept.startswith("The answer is 42.")
    assert digest == hashlib.sha256(THINK.encode()).hexdigest()
    assert strip_think("plain answer") == ("plain answer", None)
    # a generation that starts inside the block (template opened <think> in the prompt)
    assert strip_think("still reasoning</think> 7")[0] == "7"
    # custom patterns replace the defaults
    assert strip_think("[[r]]x", [r"\[\[.*?\]\]"]) == ("x", hashlib.sha256(b"[[r]]").hexdigest())


def test_ollama_generation_scores_think_stripped_answers_and_stores_only_the_hash(tiny_gguf, data_dir, tmp_path):
    standin = OllamaGenerateStandin(tiny_gguf["F16"])
    try:
        store = Store(tmp_path / "posttrain.db")
        out = tmp_path / "out"
        gsm, hs = evaluate("ollama:tiny", ["gsm8k", "hellaswag"], data_dir=data_dir, store=store, out_dir=out,
                           ollama_url=standin.url, gen_kwargs={"max_gen_toks": 32})
    finally:
        standin.close()

    generate = [body for path, body in standin.requests if path == "/api/generate"]
    assert len(generate) == 3
    for body in generate:
        assert body["raw"] is True and body["model"] == "tiny"
        assert body["options"]["temperature"] == 0 and body["options"]["num_predict"] == 32
        assert "Question:" in body["options"]["stop"]
        assert body["prompt"].count("Question:") == 6  # lm-eval's 5-shot prompt + the item

    assert gsm.backend == "posttrain-ollama" and gsm.value("exact_match", "flexible-extract") == 1.0
    assert gsm.value("exact_match", "strict-match") == 0.0  # no "#### 42" in the reply: lm-eval's filter says so
    rows = store.query("SELECT * FROM items WHERE eval_id = ?", (gsm.eval_id,))
    assert {r["think_sha256"] for r in rows} == {hashlib.sha256(THINK.encode()).hexdigest()}
    # lm-eval's flexible-extract takes the last number ("42."); exact_match then ignores the final dot
    assert {r["response"] for r in rows if r["filter"] == "flexible-extract"} == {"42."}
    # the reasoning text itself is nowhere: not in the store, not in lm-eval's sample logs
    assert not any("carefully" in str(v) for r in store.query("SELECT * FROM items") for v in tuple(r))
    assert not any("carefully" in p.read_text() for p in out.rglob("*.jsonl"))

    # HellaSwag needs prompt log-probs: it ran on the model's GGUF in llama.cpp, same model id
    assert hs.backend == "posttrain-llamacpp" and hs.model_id == gsm.model_id
    assert hashlib.sha256(tiny_gguf["F16"].read_bytes()).hexdigest() == hs.model_id
    assert len(items_for_eval(store, hs.eval_id)) == 2 * 4  # acc and acc_norm for 4 items


def test_loglikelihood_task_through_ollama_without_a_readable_blob_says_why(data_dir, tmp_path):
    standin = OllamaGenerateStandin(None)
    try:
        with pytest.raises(PosttrainError) as e:
            evaluate("ollama:tiny", ["hellaswag"], data_dir=data_dir, store=Store(tmp_path / "db"),
                     out_dir=tmp_path / "o", ollama_url=standin.url)
    finally:
        standin.close()
    assert "log-prob" in e.value.message and "Ollama" in e.value.message
