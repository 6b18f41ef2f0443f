"""Is this directory a finished PEFT adapter, and onto which local base does it go?

A LoRA run's output holds `adapter_config.json` and `adapter_model.safetensors`, no full weights.
It is complete when the config follows PEFT's schema, the adapter safetensors are whole (the same
header and length checks as full weights), a tokenizer is at hand (here or in the base), and the
base resolves to a complete local checkpoint whose weights have every module the adapter targets,
with matching shapes. Everything is read from headers: no tensor is loaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from posttrain._files import human_bytes
from posttrain.checkpoint._full import TOKENIZER_SETS, Verdict, inspect_full, settled
from posttrain.checkpoint._read import (
    inside,
    parse_json,
    safetensors_expected_size,
    safetensors_header,
    shown,
)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_PICKLE = "adapter_model.bin"
# Files of an adapter directory that define it besides config and weights.
_ADAPTER_AUX = ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "added_tokens.json")
# A base named like this was loaded in 4 bits for training (Unsloth, TRL examples): QLoRA.
_FOUR_BIT_NAME = re.compile(r"(bnb|4bit|4-bit|nf4|int4)", re.I)
# PEFT's key prefix in adapter files, and the parts naming the two low-rank factors.
_PEFT_PREFIX = "base_model.model."
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[^.]+)?\.weight$")


@dataclass
class AdapterVerdict(Verdict):
    """A `Verdict` for an adapter directory. `architecture`/`model_type` are the base's; `routes` the
    ways it can be built: "merge" (PEFT into the base) and "adapter" (a GGUF LoRA for llama.cpp)."""

    kind: str = "adapter"
    base: Path | None = None
    base_ref: str | None = None  # what adapter_config.json named
    remedy: str | None = None
    peft_type: str | None = None
    rank: int | None = None
    lora_alpha: float | None = None
    target_modules: list[str] = field(default_factory=list)
    qlora: bool = False
    routes: tuple[str, ...] = ()
    route_note: str = ""  # why a route is missing
    base_verdict: Verdict | None = None

    def content_files(self) -> list[Path]:
        files = [self.path / ADAPTER_CONFIG, *self.tokenizer_files, *self.weight_files]
        files += [self.path / n for n in _ADAPTER_AUX if (self.path / n).is_file()]
        if self.base_verdict is not None:  # the same adapter on another base is another model
            files += self.base_verdict.content_files()
        return sorted(set(files))


def is_adapter_dir(path: str | Path) -> bool:
    """A PEFT adapter directory (adapter_config.json and no config.json of full weights)."""
    path = Path(path)
    return (path / ADAPTER_CONFIG).is_file() and not (path / "config.json").is_file()


def _fail(path: Path, reason: str, remedy: str | None = None, **kw) -> AdapterVerdict:
    return AdapterVerdict(path, False, reason, remedy=remedy, **kw)


def _resolve_base(path: Path, named: object, given: Path | None) -> tuple[Path | None, str | None, str | None]:
    """(base directory, None, None), or (None, reason, remedy)."""
    if given is not None:
        given = Path(given).expanduser()
        if given.is_dir():
            return given.resolve(), None, None
        if given.suffix == ".gguf":
            return None, f"--base {given} is a GGUF file; the adapter needs the base's Hugging Face directory", \
                "pass --base DIR (the base's config.json and safetensors)"
        return None, f"--base {given} is not a directory", "pass --base DIR (the base model's local directory)"
    if named is None or named == "":
        return None, f"{ADAPTER_CONFIG} names no base model (base_model_name_or_path is empty)", \
            "pass --base DIR (the base model's local directory)"
    if not isinstance(named, str) or "\0" in named:
        return None, f"{ADAPTER_CONFIG}: base_model_name_or_path is not a string", "pass --base DIR"
    for candidate in (Path(named).expanduser(), path / named):
        try:
            if candidate.is_dir():
                return candidate.resolve(), None, None
        except OSError:
            break
    if named.count("/") == 1 and not named.startswith((".", "/", "~")):
        try:  # a Hub id already in the local Hugging Face cache needs no network
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(named, local_files_only=True)), None, None
        except Exception:  # noqa: BLE001 - not cached, or a malformed id: both mean "not here"
            pass
        return None, (f"the base model {shown(named[:100])!r} is a Hugging Face Hub id, and the Hub cannot be "
                      f"reached from here"), "download the base model elsewhere and pass --base DIR"
    return None, f"the base model directory {shown(named[:200])} does not exist", "pass --base DIR"


def _config_fields(config: dict) -> tuple[str | None, dict]:
    """(reason it is not a usable PEFT config, or None; the fields read)."""
    peft_type = config.get("peft_type")
    if not isinstance(peft_type, str) or not peft_type:
        return f"{ADAPTER_CONFIG} has no peft_type (not a PEFT adapter?)", {}
    out: dict = {"peft_type": peft_type.upper()}
    if out["peft_type"] != "LORA":
        return None, out
    rank, alpha = config.get("r"), config.get("lora_alpha")
    if not (isinstance(rank, int) and not isinstance(rank, bool) and rank > 0):
        return f"{ADAPTER_CONFIG}: r (the LoRA rank) is not a positive integer", out
    if not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and alpha == alpha):
        return f"{ADAPTER_CONFIG}: lora_alpha is not a number", out
    targets = config.get("target_modules")
    if isinstance(targets, str):
        targets = [targets]  # PEFT accepts one regular expression
    if not (isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets)):
        return f"{ADAPTER_CONFIG}: target_modules is not a list of module names", out
    out.update(rank=rank, lora_alpha=float(alpha), target_modules=targets, use_dora=config.get("use_dora") is True)
    return None, out


def _check_shapes(adapter: Path, base: Verdict, rank: int, rank_pattern: bool) -> str | None:
    """Each LoRA pair must sit on a base weight that exists, with A (r × in) and B (out × r)."""
    base_shapes: dict[str, list[int]] = {}
    for shard in base.weight_files:
        if shard.suffix == ".safetensors":
            for name, info in safetensors_header(shard).items():
                if name != "__metadata__" and isinstance(info, dict):
                    base_shapes[name] = info.get("shape")
    pairs: dict[str, dict[str, list[int]]] = {}
    for name, info in safetensors_header(adapter).items():
        m = _LORA_KEY.match(name)
        if m and isinstance(info, dict):
            pairs.setdefault(m["module"].removeprefix(_PEFT_PREFIX), {})[m["which"]] = info.get("shape")
    if not pairs:
        return f"{ADAPTER_WEIGHTS} holds no lora_A/lora_B tensors"
    if not base_shapes:
        return None  # pickle-only base: its shapes are checked by PEFT when merging
    for module, ab in sorted(pairs.items()):
        weight = base_shapes.get(f"{module}.weight")
        if weight is None:
            return f"target module {shown(module[:120])} does not exist in the base model"
        a, b = ab.get("A"), ab.get("B")
        if not (isinstance(a, list) and isinstance(b, list) and len(a) == len(b) == len(weight) == 2):
            return f"{module}: lora_A/lora_B are missing or not matrices"
        if a[0] != b[1] or (not rank_pattern and a[0] != rank):
            return f"{module}: rank mismatch (lora_A has rank {a[0]}, lora_B {b[1]}, adapter_config r={rank})"
        if a[1] != weight[1] or b[0] != weight[0]:
            return (f"{module}: shape mismatch: the adapter is {b[0]}×{a[1]}, the base weight {weight[0]}×{weight[1]} "
                    f"(an adapter trained on another base?)")
    return None


def _is_four_bit(named: object, adapter_dir: Path) -> bool:
    """Was the adapter trained against a 4-bit base (QLoRA)? The base it names says so: by its
    quantization_config when that base is a local folder, else by its name (Unsloth's `…-bnb-4bit`)."""
    if not isinstance(named, str) or "\0" in named:
        return False
    for folder in (Path(named).expanduser(), adapter_dir / named):
        try:
            config, _ = parse_json((folder / "config.json").read_bytes())
        except OSError:
            continue
        q = config.get("quantization_config") if isinstance(config, dict) else None
        if isinstance(q, dict):
            return q.get("load_in_4bit") is True or q.get("bits") == 4
    return bool(_FOUR_BIT_NAME.search(named))


def inspect_adapter(path: str | Path, *, base: str | Path | None = None, allow_pickle: bool = False) -> AdapterVerdict:
    """Decide whether `path` holds a complete adapter and resolve its base; never raises for bad input."""
    path = Path(path)
    try:
        return _inspect(path, Path(base) if base else None, allow_pickle)
    except PermissionError as e:
        return _fail(path, f"cannot read {e.filename or path}: permission denied")
    except OSError as e:
        return _fail(path, f"cannot read {e.filename or path}: {e.strerror}")
    except (ValueError, RecursionError) as e:  # a header that changed between checks
        return _fail(path, f"unreadable adapter or base header ({type(e).__name__}; still being written?)")


def _inspect(path: Path, given_base: Path | None, allow_pickle: bool) -> AdapterVerdict:
    if inside(path, ADAPTER_CONFIG) is None:
        return _fail(path, f"{ADAPTER_CONFIG} is a link that leads outside the adapter directory")
    config, error = parse_json((path / ADAPTER_CONFIG).read_bytes())
    if error:
        return _fail(path, f"{ADAPTER_CONFIG} does not parse as JSON ({error}; still being written?)")
    if not isinstance(config, dict):
        return _fail(path, f"{ADAPTER_CONFIG} is not a JSON object")
    reason, fields = _config_fields(config)
    if reason:
        return _fail(path, reason, peft_type=fields.get("peft_type"))

    weights = path / ADAPTER_WEIGHTS
    if not weights.is_file():
        if (path / ADAPTER_PICKLE).is_file():
            return _fail(path, f"only pickle adapter weights ({ADAPTER_PICKLE}) were found; posttrain reads "
                               "safetensors only", "save the adapter with safe_serialization=True (PEFT's default)")
        return _fail(path, f"{ADAPTER_WEIGHTS} is missing")
    if inside(path, ADAPTER_WEIGHTS) is None:
        return _fail(path, f"{ADAPTER_WEIGHTS} is a link that leads outside the adapter directory")
    size = weights.stat().st_size
    try:
        expected = safetensors_expected_size(weights)
    except ValueError as e:
        return _fail(path, f"{ADAPTER_WEIGHTS} is unreadable: {e}")
    if size != expected:
        return _fail(path, f"{ADAPTER_WEIGHTS} is {'truncated' if size < expected else 'longer than its header says'}"
                           f": {human_bytes(size)} of {human_bytes(expected)}")

    named = config.get("base_model_name_or_path")
    base_dir, reason, remedy = _resolve_base(path, named, given_base)
    if base_dir is None:
        return _fail(path, reason, remedy, base_ref=named if isinstance(named, str) else None)
    base_verdict = settled(base_dir, partial(look, base=None, allow_pickle=allow_pickle), 0)
    if not base_verdict.complete:
        return _fail(path, f"the base model {base_dir} is not a complete checkpoint: {base_verdict.reason}",
                     "pass --base DIR with the full-precision base model", base=base_dir)
    base_config, _ = parse_json((base_dir / "config.json").read_bytes())
    if isinstance(base_config.get("quantization_config"), dict):
        return _fail(path, f"the base model {base_dir} is stored quantized (quantization_config); a LoRA merges "
                           "only onto full-precision weights", "pass --base DIR with the unquantized base model",
                     base=base_dir)

    tokenizer = next((s for s in TOKENIZER_SETS if all((path / f).is_file() for f in s)), None)
    tokenizer_files = [path / f for f in tokenizer] if tokenizer else []
    if any(inside(path, str(f.relative_to(path))) is None for f in tokenizer_files):
        return _fail(path, "a tokenizer file is a link that leads outside the adapter directory")

    common = dict(base=base_dir, base_ref=named if isinstance(named, str) else None, base_verdict=base_verdict,
                  architecture=base_verdict.architecture, model_type=base_verdict.model_type,
                  peft_type=fields["peft_type"])
    if fields["peft_type"] == "LORA":
        mismatch = _check_shapes(weights, base_verdict, fields["rank"], bool(config.get("rank_pattern")))
        if mismatch:
            return _fail(path, mismatch, "pass --base DIR with the model this adapter was trained on", **common)
        routes, note = ("merge", "adapter"), ""
        if fields["use_dora"]:
            routes, note = ("merge",), "DoRA: llama.cpp's LoRA converter cannot write its magnitude vectors"
        elif config.get("use_rslora") is True or config.get("alpha_pattern") or config.get("rank_pattern"):
            # A GGUF LoRA carries one alpha and llama.cpp scales by alpha/r: rsLoRA (alpha/sqrt(r)) and
            # per-module ranks or alphas would be applied with the wrong strength.
            routes, note = ("merge",), "rsLoRA or per-module rank/alpha: a GGUF LoRA has one alpha/r scale"
    else:
        routes, note = ("merge",), f"{fields['peft_type']}: llama.cpp's converter writes LoRA adapters only"
    return AdapterVerdict(
        path, True, "complete", weight_files=[weights], tokenizer_files=tokenizer_files,
        total_bytes=size, rank=fields.get("rank"), lora_alpha=fields.get("lora_alpha"),
        target_modules=fields.get("target_modules", []), qlora=_is_four_bit(named, path),
        routes=routes, route_note=note, **common)


def tokenizer_source(verdict: AdapterVerdict) -> Path:
    """Where the adapter's tokenizer lives: its own directory (fine-tunes may add tokens) or the base's."""
    return verdict.path if verdict.tokenizer_files else verdict.base


def look(path: Path, *, base: str | Path | None, allow_pickle: bool) -> Verdict:
    """One look at a checkpoint folder: an adapter's checks for a PEFT adapter folder (which look at its
    base the same way), full weights' otherwise; raises OSError as `inspect_full` does."""
    if is_adapter_dir(path):
        return inspect_adapter(path, base=base, allow_pickle=allow_pickle)
    return inspect_full(path, allow_pickle)
