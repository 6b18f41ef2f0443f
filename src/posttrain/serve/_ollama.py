"""Import GGUF variants into Ollama through the official `ollama` client, idempotently.

Per variant: upload the weights blob only when Ollama lacks that digest (`HEAD /api/blobs/…`),
create `{model}_{quant}:latest` with `files`, `parameters` and a TEMPLATE mapped from the
checkpoint's chat template, write the equivalent Modelfile beside the GGUF, then send one short chat
as a smoke test. A model whose blob, parameters and template already match is left alone.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx
import ollama
from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from posttrain import _progress
from posttrain._files import write_text_atomic
from posttrain.errors import PosttrainError, TransientError
from posttrain.serve._chat_templates import (
    TemplateChoice,
    chat_template_from_checkpoint,
    choose_template,
    tokens_from_checkpoint,
)
from posttrain.serve._modelfile import (
    adapter_digest_of,
    blob_digest_of,
    from_line_path,
    is_posttrain_modelfile,
    merge_parameters,
    modelfile_path,
    parse_show_parameters,
    render_modelfile,
    same_parameters,
)
from posttrain.serve._names import DEFAULT_TAG, variant_name
from posttrain.contracts import Variant
from posttrain.serve._render_check import Tokens
from posttrain.serve._variants import discover_variants, gguf_header
from posttrain.store import Store

T = TypeVar("T")

DEFAULT_URL = "http://127.0.0.1:11434"
SMOKE_PROMPT = "Reply with one short sentence: what are you?"
# Messages Ollama sends when a model cannot be loaded or a Modelfile is refused: retrying won't help.
_PERMANENT_MARKERS = ("requires more system memory", "too large", "out of memory", "invalid", "unsupported",
                      "unknown", "not found", "template:", "parse", "runner process has terminated")
# Waits between attempts; tests shorten it.
RETRY_WAIT = wait_exponential(multiplier=0.5, min=0.5, max=8)


@dataclass
class Registration:
    """What happened to one variant. `status` is created, replaced, unchanged, or "skipped: …"."""

    name: str
    variant: Path
    quant: str
    digest: str
    status: str
    modelfile: Path
    parameters: dict[str, object]
    template_family: str | None = None  # "derived" (from the model's Jinja), a family name, or None: not set
    uploaded: bool = False
    smoke_text: str | None = None
    smoke_latency_s: float | None = None
    warnings: list[str] = field(default_factory=list)
    template: str | None = None  # the TEMPLATE written, checked against the model's own rendering
    system: str | None = None  # the SYSTEM written: --system, else the chat template's default

    @property
    def template_set(self) -> bool:
        return self.template_family is not None

    @property
    def skipped(self) -> bool:
        return self.status.startswith("skipped")


def normalize_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = f"http://{url}"
    scheme, _, rest = url.partition("://")
    if ":" not in rest.split("/")[0]:
        host, slash, path = rest.partition("/")
        rest = f"{host}:11434{slash}{path}"
    return f"{scheme}://{rest}"


def _classify(e: Exception, what: str) -> Exception:
    """Turn a client error into TransientError (retry) or PosttrainError naming the variant."""
    if isinstance(e, ollama.ResponseError):
        status, message = e.status_code, str(e.error)
        lowered = message.lower()
        if any(m in lowered for m in _PERMANENT_MARKERS) or 400 <= status < 500 and status != 429:
            return PosttrainError(f"Ollama refused {what}: {message}",
                                  remedy="check the Modelfile written beside the GGUF; a smaller quant if memory ran out")
        if status == 429 or status >= 500 or status == -1:
            return TransientError(f"Ollama failed {what} ({status}): {message}")
        return PosttrainError(f"Ollama refused {what} ({status}): {message}")
    return TransientError(f"connection to Ollama lost during {what}: {e}")


def _retrying(attempts: int, what: str, fn: Callable[[], T]) -> T:
    for attempt in Retrying(stop=stop_after_attempt(attempts), wait=RETRY_WAIT,
                            retry=retry_if_exception_type(TransientError), reraise=True):
        with attempt:
            try:
                return fn()
            except (ollama.ResponseError, httpx.TransportError, ConnectionError) as e:
                raise _classify(e, what) from e
    raise AssertionError("unreachable")  # Retrying re-raises the last error


class _Ollama:
    """The official client plus the one documented endpoint it has no method for (HEAD blob)."""

    def __init__(self, url: str, timeout: float, attempts: int):
        self.url = url
        self.attempts = attempts
        self.client = ollama.Client(host=url, timeout=timeout)
        self.http = httpx.Client(base_url=url, timeout=timeout)

    def close(self) -> None:
        self.http.close()
        self.client._client.close()  # the client exposes no close() of its own in 0.6

    def reachable(self) -> bool:
        def probe() -> bool:
            try:
                r = self.http.get("/api/version")
            except (httpx.ConnectError, httpx.ConnectTimeout):
                return False  # nothing listening: not a fault that passes by retrying

            if r.status_code >= 500:
                raise ollama.ResponseError(r.text, r.status_code)
            return r.is_success

        return _retrying(self.attempts, "GET /api/version", probe)

    def show(self, name: str) -> ollama.ShowResponse | None:
        def call() -> ollama.ShowResponse | None:
            try:
                return self.client.show(name)
            except ollama.ResponseError as e:
                if e.status_code == 404:
                    return None
                raise

        return _retrying(self.attempts, f"show {name}", call)

    def has_blob(self, digest: str) -> bool:
        def call() -> bool:
            r = self.http.head(f"/api/blobs/{digest}")
            if r.status_code == 404:
                return False
            if not r.is_success:
                raise ollama.ResponseError(r.text or r.reason_phrase, r.status_code)
            return True

        return _retrying(self.attempts, f"HEAD blob {digest}", call)


def _chat_template_for(variant: Variant, chat_template: str | None, checkpoint: Path | None) -> TemplateChoice:
    """The template choice for a variant; its special tokens come from the GGUF (what Ollama runs), else
    from the checkpoint's tokenizer files when the GGUF cannot be read here (Ollama will then refuse it,
    but the Modelfile for a later import by hand is still written)."""
    ckpts = [Path(c) for c in (checkpoint, variant.checkpoint) if c is not None]
    try:
        metadata, tokens = gguf_header(variant.path)
    except PosttrainError:
        if not ckpts:
            raise
        metadata, tokens = {}, next((t for c in ckpts if (t := tokens_from_checkpoint(c))), Tokens())
    if not chat_template:
        found = (chat_template_from_checkpoint(c) for c in ckpts)
        chat_template = next((t for t in found if t), None) or metadata.get("tokenizer.chat_template")
    return choose_template(chat_template, tokens, metadata.get("tokenizer.chat_template"))


def _model_and_tag(name: str | None, variant: Variant) -> tuple[str, str]:
    if not name:
        return variant.model_name, DEFAULT_TAG
    base, sep, tag = name.rpartition(":")
    return (base, tag) if sep and "/" not in tag else (name, DEFAULT_TAG)


def _created_by_posttrain(store: Store | None, url: str, name: str) -> bool:
    if store is None:
        return True  # without a store there is no record to check; the caller chose to trust the name
    return store.registrations.exists(url, name)


def _record(store: Store, url: str, reg: Registration, variant: Variant) -> None:
    store.registrations.put(url=url, name=reg.name, variant_sha256=variant.sha256, blob_digest=reg.digest,
                            parameters=reg.parameters, template_set=reg.template_set, smoke_text=reg.smoke_text,
                            smoke_latency_s=reg.smoke_latency_s)


def register_variants(
    target: Path | list[Path] | list[Variant],
    *,
    url: str = DEFAULT_URL,
    name: str | None = None,
    params: Mapping[str, object] | None = None,
    store: Store | None = None,
    system: str | None = None,
    chat_template: str | None = None,
    checkpoint: Path | None = None,
    smoke: bool = True,
    replace_foreign: bool = False,
    attempts: int = 3,
    timeout: float = 600.0,
) -> list[Registration]:
    """Import every GGUF variant in `target` (a directory, a file, a list of files, or the `Variant`s
    a caller already knows, as the pipeline does from its convert step) into Ollama.

    `name` overrides the model part of `{model}_{quant}:latest` (`name:tag` sets the tag). `params`
    override the default PARAMETERs. The chat template comes from `chat_template`, else the
    checkpoint's tokenizer files, else the GGUF's `tokenizer.chat_template`. With a `store`, a model
    that exists in Ollama but that posttrain did not create is never replaced unless
    `replace_foreign` is set. An unreachable server gives registrations whose status says so.
    """
    url = normalize_url(url)
    plans: list[tuple[Variant, Registration]] = []
    modelfiles: dict[Path, str] = {}
    known = isinstance(target, list) and all(isinstance(t, Variant) for t in target) and target
    _progress.begin("reading the variants and their chat templates")
    for variant in (target if known else discover_variants(target)):
        choice = _chat_template_for(variant, chat_template, checkpoint)
        model, tag = _model_and_tag(name, variant)
        reg = Registration(
            name=variant_name(model, variant.quant, tag), variant=variant.path, quant=variant.quant,
            digest=f"sha256:{variant.sha256}", status="pending", modelfile=modelfile_path(variant.adapter or variant.path),
            parameters=merge_parameters(params, choice.stop), template_family=choice.source,
            warnings=list(choice.warnings), template=choice.template,
            system=system if system is not None else choice.system,
        )
        # Rendered for every variant before any is written: a value that cannot be quoted stops the
        # command with nothing written.
        modelfiles[reg.modelfile] = render_modelfile(variant.path, reg.parameters, reg.template, reg.system,
                                                     choice.notes, adapter=variant.adapter)
        plans.append((variant, reg))
    # The Modelfiles are written whether or not Ollama is reachable: they are how a user imports by hand.
    # One posttrain did not write (no header line of ours) is never replaced.
    for path in modelfiles:
        if (path.exists() or path.is_symlink()) and not is_posttrain_modelfile(path):
            raise PosttrainError(f"{path} exists and posttrain did not write it; nothing was changed",
                                 remedy="move it away (posttrain writes <gguf>.Modelfile beside each GGUF)")
    for path, text in modelfiles.items():
        write_text_atomic(path, text)

    api = _Ollama(url, timeout, attempts)
    try:
        # Each wait on Ollama is a stage of the command's display (nothing without one: library use, the pipeline).
        _progress.begin(f"reaching Ollama at {url}")
        if not api.reachable():
            for _, reg in plans:
                reg.status = f"skipped: Ollama not reachable at {url}"
            return [reg for _, reg in plans]
        for variant, reg in plans:
            _register_one(api, variant, reg, store, replace_foreign, smoke)
            if store is not None:
                _record(store, url, reg, variant)
    finally:
        api.close()
    return [reg for _, reg in plans]


def _register_one(api: _Ollama, variant: Variant, reg: Registration, store: Store | None,
                  replace_foreign: bool, smoke: bool) -> None:
    template, system = reg.template, reg.system
    _progress.begin(f"{reg.name}: asking Ollama what it has")
    existing = api.show(reg.name)
    if existing is not None:
        adapter = f"sha256:{variant.adapter_sha256}" if variant.adapter is not None else None
        same = (blob_digest_of(existing.modelfile) == reg.digest
                and adapter_digest_of(existing.modelfile) == adapter
                and same_parameters(parse_show_parameters(existing.parameters), reg.parameters)
                and (template is None or (existing.template or "") == template)
                and (not system or system in (existing.modelfile or "")))
        if same:
            reg.status = "unchanged"
        elif not replace_foreign and not _created_by_posttrain(store, api.url, reg.name):
            raise PosttrainError(f"{reg.name} already exists in Ollama and was not created by posttrain "
                                 f"(variant {variant.path.name}); not replacing it",
                                 remedy="choose another --name, or remove it yourself with `ollama rm`")
    if reg.status != "unchanged":
        if not api.has_blob(reg.digest):
            _progress.begin(f"{reg.name}: uploading {variant.path.name}")
            uploaded = _retrying(api.attempts, f"upload of {variant.path.name}",
                                 lambda: api.client.create_blob(variant.path))
            if uploaded != reg.digest:
                raise PosttrainError(f"{variant.path.name} changed on disk: sha256 is {uploaded}, manifest says {reg.digest}",
                                     remedy="re-run `posttrain convert`")
            reg.uploaded = True
        adapters = _upload_adapter(api, variant)

        def create() -> list[str]:
            statuses = []
            for progress in api.client.create(model=reg.name, files={variant.path.name: reg.digest},
                                              adapters=adapters, parameters=reg.parameters, template=template,
                                              system=system, stream=True):
                statuses.append(progress.status or "")
            return statuses

        _progress.begin(f"{reg.name}: creating the model")
        statuses = _retrying(api.attempts, f"create of {reg.name} from {variant.path.name}", create)
        if not statuses or statuses[-1] != "success":
            raise PosttrainError(f"Ollama did not finish creating {reg.name} from {variant.path.name}: "
                                 f"last status {statuses[-1] if statuses else 'none'!r}")
        reg.status = "replaced" if existing is not None else "created"
    if smoke:
        _progress.begin(f"{reg.name}: smoke chat (Ollama loads the model)")
        _smoke(api, reg, variant)


def _upload_adapter(api: _Ollama, variant: Variant) -> dict[str, str] | None:
    """The `adapters` argument of create for a variant with a GGUF LoRA (its blob uploaded when missing)."""
    if variant.adapter is None:
        return None
    digest = f"sha256:{variant.adapter_sha256}"
    if not api.has_blob(digest):
        uploaded = _retrying(api.attempts, f"upload of {variant.adapter.name}",
                             lambda: api.client.create_blob(variant.adapter))
        if uploaded != digest:
            raise PosttrainError(f"{variant.adapter.name} changed on disk: sha256 is {uploaded}, expected {digest}",
                                 remedy="build the adapter GGUF again")
    return {variant.adapter.name: digest}


def _smoke(api: _Ollama, reg: Registration, variant: Variant) -> None:
    def chat() -> str:
        response = api.client.chat(model=reg.name, messages=[{"role": "user", "content": SMOKE_PROMPT}],
                                   options={"num_predict": 32}, stream=False)
        return response.message.content or ""

    start = time.perf_counter()
    reg.smoke_text = _retrying(api.attempts, f"smoke chat with {reg.name} ({variant.path.name})", chat)
    reg.smoke_latency_s = round(time.perf_counter() - start, 3)


def resolve_ollama_gguf(name: str, url: str = DEFAULT_URL, *, timeout: float = 30.0) -> Path | None:
    """The GGUF blob behind an Ollama model, when this machine can read it (Ollama on localhost).

    Ollama's /api/show returns a Modelfile whose FROM line is the blob path. None when the server is
    unreachable, the model unknown, or the path is not readable here.
    """
    api = _Ollama(normalize_url(url), timeout, attempts=1)
    try:
        shown = api.show(name if ":" in name else f"{name}:{DEFAULT_TAG}")
    except (TransientError, PosttrainError):
        return None
    finally:
        api.close()
    target = from_line_path(shown.modelfile if shown else None)
    if not target:
        return None
    path = Path(target)
    return path if path.is_file() and os.access(path, os.R_OK) else None


def unregister(url: str, store: Store, names: list[str] | None = None, *, attempts: int = 3) -> list[str]:
    """Delete models from Ollama that posttrain registered there (all of them, or `names`).

    A name posttrain has no record of creating is refused, never deleted.
    """
    url = normalize_url(url)
    recorded = store.registrations.names(url)
    wanted = recorded if names is None else names
    foreign = [n for n in wanted if n not in recorded]
    if foreign:
        raise PosttrainError(f"not deleting {', '.join(foreign)}: posttrain did not create it at {url}")
    api = _Ollama(url, 60.0, attempts)
    deleted = []
    try:
        for n in wanted:
            def call(n: str = n) -> None:
                try:
                    api.client.delete(n)
                except ollama.ResponseError as e:
                    if e.status_code != 404:  # already gone is what we wanted
                        raise
            _retrying(attempts, f"delete of {n}", call)
            store.registrations.delete(url, n)
            deleted.append(n)
    finally:
        api.close()
    return deleted
