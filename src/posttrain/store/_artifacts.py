"""The `variants` table (GGUF files convert made and verified) and `registrations` (Ollama models
posttrain created, so it deletes only its own)."""

from __future__ import annotations

from typing import Any

from posttrain.store._db import Database, dumps, utcnow


class Variants:
    def __init__(self, db: Database):
        self._db = db

    def put(self, *, sha256: str, path: str, quant: str, model_name: str | None, checkpoint_sha256: str | None,
            size_bytes: int, toolchain: str | None, manifest: Any) -> None:
        with self._db.connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO variants (sha256, path, quant, model_name, checkpoint_sha256, size_bytes,"
                " toolchain, manifest_json, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (sha256, path, quant, model_name, checkpoint_sha256, size_bytes, toolchain, dumps(manifest),
                 utcnow()))

    def of_checkpoint(self, checkpoint_sha256: str) -> list[dict[str, Any]]:
        """The variants made from one checkpoint, largest first."""
        return [dict(r) for r in self._db.query(
            "SELECT * FROM variants WHERE checkpoint_sha256 = ? ORDER BY size_bytes DESC", (checkpoint_sha256,))]


class Registrations:
    def __init__(self, db: Database):
        self._db = db

    def exists(self, url: str, name: str) -> bool:
        return bool(self._db.query("SELECT 1 FROM registrations WHERE ollama_url=? AND name=?", (url, name)))

    def names(self, url: str) -> list[str]:
        return [r["name"] for r in self._db.query(
            "SELECT name FROM registrations WHERE ollama_url=? ORDER BY name", (url,))]

    def put(self, *, url: str, name: str, variant_sha256: str, blob_digest: str, parameters: Any,
            template_set: bool, smoke_text: str | None, smoke_latency_s: float | None) -> None:
        with self._db.connect() as db:
            db.execute(
                """INSERT INTO registrations (variant_sha256, ollama_url, name, blob_digest, params_json,
                                              template_set, smoke_text, smoke_latency_s, created_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (ollama_url, name) DO UPDATE SET
                     variant_sha256=excluded.variant_sha256, blob_digest=excluded.blob_digest,
                     params_json=excluded.params_json, template_set=excluded.template_set,
                     smoke_text=excluded.smoke_text, smoke_latency_s=excluded.smoke_latency_s""",
                (variant_sha256, url, name, blob_digest, dumps(parameters), int(template_set), smoke_text,
                 smoke_latency_s, utcnow()))

    def delete(self, url: str, name: str) -> None:
        with self._db.connect() as db:
            db.execute("DELETE FROM registrations WHERE ollama_url=? AND name=?", (url, name))


class ProcessedCheckpoints:
    """`processed_checkpoints`: what the watcher has handled, by content, so a restart skips it."""

    def __init__(self, db: Database):
        self._db = db

    def status(self, checkpoint_sha256: str) -> str | None:
        rows = self._db.query("SELECT status FROM processed_checkpoints WHERE checkpoint_sha256=?",
                              (checkpoint_sha256,))
        return rows[0]["status"] if rows else None

    def by_path(self, path: str) -> dict[str, Any] | None:
        """What became of the checkpoint last seen at `path`: status, run id and that run's folder."""
        rows = self._db.query("SELECT p.status, p.run_id, r.run_dir FROM processed_checkpoints p "
                              "LEFT JOIN runs r ON r.id = p.run_id WHERE p.path = ? ORDER BY p.updated_at DESC",
                              (path,))
        return dict(rows[0]) if rows else None

    def record(self, checkpoint_sha256: str, path: str, status: str, run_id: str | None = None) -> None:
        now = utcnow()
        with self._db.connect() as db:
            db.execute(
                "INSERT INTO processed_checkpoints (checkpoint_sha256, path, run_id, status, first_seen, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(checkpoint_sha256) DO UPDATE SET path=excluded.path,"
                " run_id=COALESCE(excluded.run_id, run_id), status=excluded.status, updated_at=excluded.updated_at",
                (checkpoint_sha256, path, run_id, status, now, now))
