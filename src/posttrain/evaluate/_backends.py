"""How a model reference becomes an lm-eval model: a GGUF file, an HF checkpoint, an endpoint, or Ollama.

| reference                    | lm-eval model          | model id (cache key)                        |
|------------------------------|------------------------|---------------------------------------------|
| `x.gguf`                     | `posttrain-llamacpp`   | sha256 of the file                          |
| HF checkpoint directory      | `hf` (CPU, float32)    | `posttrain.checkpoint.checkpoint_sha256`    |
| NAME with `--endpoint URL`   | `local-completions`    | none: an endpoint's weights cannot be pinned, never reused |
| `ollama:NAME`                | `posttrain-ollama`     | the sha256 of the model's GGUF blob         |

Ollama returns no prompt log-probs, so loglikelihood tasks of an `ollama:` model run on the same
GGUF blob in-process with llama.cpp when that file is readable here.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tenacity import (
    retry,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from posttrain._files import sha256_file
from posttrain._model_spec import ModelSpec
from posttrain.errors import PosttrainError, TransientError

GGUF_MAGIC = b"GGUF"
LLAMACPP_BACKEND = "posttrain-llamacpp"
OLLAMA_BACKEND = "posttrain-ollama"


@dataclass(frozen=True)
class Backend:
    """What posttrain knows about one lm-eval model type: the one place a backend is described."""

    name: str  # lm-eval's model name
    kind: str  # the reference it serves: gguf, hf, endpoint, ollama
    version_of: str  # the distribution whose version is part of the result cache key
    load_args: tuple[tuple[str, object], ...] = ()  # lm-eval's extra arguments at instantiation
    cacheable: bool = True  # results reusable by model id (an endpoint's weights cannot be pinned)
    loglikelihood: bool = True  # returns prompt log-probs (MMLU, HellaSwag); Ollama does not
    gpu_layers: bool = False  # takes llama.cpp's n_gpu_layers


BACKENDS = {b.kind: b for b in (
    Backend(LLAMACPP_BACKEND, "gguf", "llama_cpp_python", gpu_layers=True),
    Backend("hf", "hf", "transformers", load_args=(("batch_size", 8),)),
    Backend("local-completions", "endpoint", "lm_eval", cacheable=False),
    # Cacheable when its GGUF blob is readable here (the blob's sha256 pins the weights).
    Backend(OLLAMA_BACKEND, "ollama", "ollama", loglikelihood=False),
)}
DEFAULT_OLLAMA_URL = "http://127.0.0.1:11434"

log = logging.getLogger("posttrain.evaluate")


@dataclass(frozen=True)
class ModelRef:
    reference: str
    kind: str  # gguf, hf, endpoint, ollama
    backend: str
    model_id: str
    model_args: dict = field(default_factory=dict)
    cacheable: bool = True
    gguf: Path | None = None
    # For Ollama: where loglikelihood tasks run instead (the same GGUF in llama.cpp), or None.
    loglikelihood: ModelRef | None = None

    @property
    def label(self) -> str:
        return Path(self.reference).name if self.kind in ("gguf", "hf") else self.reference


_sha_cache: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _sha_cache:
        _sha_cache[key] = sha256_file(path)
    return _sha_cache[key]


def _gguf_ref(path: Path, reference: str | None = None, sha256: str | None = None) -> ModelRef:
    with path.open("rb") as fh:
        if fh.read(4) != GGUF_MAGIC:
            raise PosttrainError(f"{path} is not a GGUF file (no GGUF magic)",
                                 remedy="give a .gguf made by `posttrain convert`, or an HF checkpoint directory")
    return ModelRef(reference or str(path), "gguf", BACKENDS["gguf"].name, sha256 or file_sha256(path),
                    {"model": str(path.resolve())}, gguf=path.resolve())


def with_gpu_layers(ref: ModelRef, n_gpu_layers: int | None) -> ModelRef:
    """`ref` with llama.cpp's GPU layer count set wherever it runs a GGUF in-process (None: the
    backend's default, every layer on a build that offloads). Not part of the model id: where the
    layers run does not change which model is evaluated."""
    if n_gpu_layers is None:
        return ref
    ll = with_gpu_layers(ref.loglikelihood, n_gpu_layers) if ref.loglikelihood is not None else None
    args = {**ref.model_args, "n_gpu_layers": n_gpu_layers} if BACKENDS[ref.kind].gpu_layers else ref.model_args
    return replace(ref, model_args=args, loglikelihood=ll)


def with_lora(ref: ModelRef, lora: str | Path | None, scale: float = 1.0) -> ModelRef:
    """`ref` (a GGUF) with a GGUF LoRA applied by llama.cpp at run time: another model, so another id."""
    if lora is None:
        return ref
    lora = Path(lora).expanduser()
    if ref.kind != "gguf":
        raise PosttrainError(f"a LoRA adapter applies to a GGUF base, not to {ref.reference}",
                             remedy="give the base model's .gguf file")
    if not lora.is_file():
        raise PosttrainError(f"LoRA adapter {lora} not found", remedy="give the adapter's .gguf file")
    return replace(ref, reference=f"{ref.reference}+{lora.name}",
                   model_id=f"{ref.model_id}+lora:{file_sha256(lora)}@{float(scale):g}",
                   model_args={**ref.model_args, "lora": str(lora.resolve()), "lora_scale": float(scale)})


def _hf_ref(path: Path) -> ModelRef:
    from posttrain.checkpoint import checkpoint_sha256, inspect_checkpoint

    verdict = inspect_checkpoint(path, settle_seconds=0)
    if not verdict.complete:
        raise PosttrainError(f"{path} is not a complete Hugging Face checkpoint: {verdict.reason}")
    return ModelRef(str(path), "hf", BACKENDS["hf"].name, checkpoint_sha256(verdict),
                    {"pretrained": str(path.resolve()), "dtype": "float32", "device": "cpu",
                     "trust_remote_code": False})


def _completions_url(url: str) -> str:
    url = url.rstrip("/")
    if url.endswith("/completions"):
        return url
    return url + ("/completions" if url.endswith("/v1") else "/v1/completions")


def resolve_ollama_blob(name: str, url: str) -> Path | None:
    """The GGUF blob behind an Ollama model (the modelfile's FROM path), or None when not readable here
    (the serve stage's resolver: one reading of Ollama's answer)."""
    from posttrain.serve import resolve_ollama_gguf

    return resolve_ollama_gguf(name, url)


def _ollama_ref(name: str, url: str) -> ModelRef:
    blob = resolve_ollama_blob(name, url)
    if blob is not None:
        # Ollama names blobs by the sha256 of their content: no need to hash gigabytes again.
        m = re.fullmatch(r"sha256[-:]([0-9a-f]{64})", blob.name)
        ll = _gguf_ref(blob, reference=f"ollama:{name}", sha256=m.group(1) if m else None)
        model_id = ll.model_id
    else:
        ll = None
        model_id = f"ollama:{name}@{url}"
    return ModelRef(f"ollama:{name}", "ollama", BACKENDS["ollama"].name, model_id,
                    {"model": name, "base_url": url}, cacheable=blob is not None, gguf=blob, loglikelihood=ll)


def resolve_model(model: str | Path, *, endpoint: str | None = None, tokenizer: Path | None = None,
                  ollama_url: str | None = None) -> ModelRef:
    """Turn what the user typed into a backend, its arguments and a content-based model id."""
    text = str(model)
    if endpoint:
        if tokenizer is None or not Path(tokenizer).is_dir():
            raise PosttrainError("--endpoint needs --tokenizer DIR (a local Hugging Face tokenizer directory)",
                                 remedy="lm-eval tokenizes locally; the Hub is not reachable from here")
        return ModelRef(text, "endpoint", BACKENDS["endpoint"].name, f"endpoint:{endpoint}|{text}",
                        {"model": text, "base_url": _completions_url(endpoint), "tokenizer": str(tokenizer),
                         "tokenizer_backend": "huggingface", "tokenized_requests": False,
                         "num_concurrent": 1, "max_retries": 3},
                        cacheable=BACKENDS["endpoint"].cacheable)
    spec = ModelSpec.parse(text)
    if spec.kind == "ollama":
        return _ollama_ref(spec.ollama_name, ollama_url or os.environ.get("OLLAMA_HOST") or DEFAULT_OLLAMA_URL)
    if spec.kind in ("gguf", "file"):  # any file: its first bytes say whether it is a GGUF
        return _gguf_ref(spec.path)
    if spec.kind == "checkpoint":
        return _hf_ref(spec.path)
    if spec.kind == "directory":
        ggufs = sorted(spec.path.glob("*.gguf"))
        hint = f"give one of its GGUF files, e.g. {ggufs[0]}" if ggufs else "give a .gguf file or an HF checkpoint"
        raise PosttrainError(f"{spec.path} is a directory without config.json", remedy=hint)
    raise PosttrainError(f"model {text!r} not found",
                         remedy="give a .gguf file, an HF checkpoint directory, ollama:NAME, or NAME with --endpoint URL")


def _backend_registered(name: str) -> bool:
    from lm_eval.api.registry import model_registry

    return name in model_registry


def make_lm(ref: ModelRef) -> LM:
    """Instantiate the lm-eval model for `ref` (this is where weights are loaded)."""
    from lm_eval.api.registry import get_model

    if ref.backend == LLAMACPP_BACKEND and not _backend_registered(LLAMACPP_BACKEND):
        raise PosttrainError("the in-process llama.cpp backend (posttrain-llamacpp) is not available",
                             remedy="evaluate the HF checkpoint directory instead, or update posttrain")
    extra = dict(BACKENDS[ref.kind].load_args)
    log.info("loading %s for evaluation (%s)", ref.reference, ref.backend)
    try:
        return get_model(ref.backend).create_from_arg_obj(dict(ref.model_args), extra)
    except PosttrainError:
        raise
    except Exception as e:  # noqa: BLE001 - any load failure is reported as one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise PosttrainError(f"could not load {ref.reference} with {ref.backend}: {first}",
                             remedy="check that the file is a complete, valid model") from None


# ---------------------------------------------------------------- Ollama as an lm-eval model

def _cut_at_stop(text: str, until: list[str]) -> str:
    for stop in until:
        if stop and stop in text:
            text = text.split(stop, 1)[0]
    return text


@register_model(OLLAMA_BACKEND)
class OllamaLM(LM):
    """Generation through Ollama's `/api/generate` (official client): greedy, honours `until` and `max_gen_toks`.

    The prompt is sent `raw` (lm-eval builds the whole prompt, few-shot included). Ollama returns no
    log-probs of the prompt, so loglikelihood requests are refused with the way out.
    """

    def __init__(self, model: str, base_url: str = DEFAULT_OLLAMA_URL, max_gen_toks: int = 256,
                 timeout: float = 600.0, seed: int = 0, **_ignored):
        super().__init__()
        import ollama

        self.model = model
        self.base_url = base_url
        self.max_gen_toks = int(max_gen_toks)
        self.seed = int(seed)
        self.client = ollama.Client(host=base_url, timeout=float(timeout))

    @retry(retry=retry_if_exception_type(TransientError), stop=stop_after_attempt(3),
           wait=wait_exponential(multiplier=0.5, max=8), reraise=True)
    def _generate(self, prompt: str, until: list[str], max_tokens: int) -> str:
        import httpx
        import ollama

        try:
            resp = self.client.generate(model=self.model, prompt=prompt, raw=True, stream=False,
                                        options={"temperature": 0.0, "top_k": 1, "seed": self.seed,
                                                 "num_predict": max_tokens, "stop": until or None})
        except ollama.ResponseError as e:
            if e.status_code >= 500:
                raise TransientError(f"Ollama {self.base_url}: {e.error}") from None
            raise PosttrainError(f"Ollama {self.base_url} refused {self.model!r}: {e.error}") from None
        except (httpx.TransportError, ConnectionError) as e:
            raise TransientError(f"cannot reach Ollama at {self.base_url}: {e}") from None
        return _cut_at_stop(resp.response, until)

    def generate_until(self, requests) -> list[str]:
        out = []
        for req in requests:
            context, gen_kwargs = req.args[0], dict(req.args[1] or {})
            until = gen_kwargs.get("until") or []
            if isinstance(until, str):
                until = [until]
            out.append(self._generate(context, list(until), int(gen_kwargs.get("max_gen_toks", self.max_gen_toks))))
        return out

    def _no_logprobs(self, requests):
        raise PosttrainError("Ollama returns no prompt log-probabilities, so loglikelihood tasks cannot run through it",
                             remedy="evaluate the model's GGUF file in-process (posttrain does this automatically "
                                    "when Ollama's blob is readable on this machine)")

    loglikelihood = _no_logprobs
    loglikelihood_rolling = _no_logprobs
