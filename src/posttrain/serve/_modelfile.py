"""The Modelfile posttrain writes beside each GGUF, and reading back what Ollama's /api/show says."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from posttrain.errors import PosttrainError

DEFAULT_PARAMETERS: dict[str, object] = {"temperature": 0.7, "top_p": 0.9, "num_ctx": 4096}

# Ollama's PARAMETER types (api.Options): everything else is a float, `stop` a list of strings.
_INT_PARAMS = {"num_ctx", "num_predict", "num_keep", "top_k", "repeat_last_n", "seed", "num_batch",
               "num_gpu", "main_gpu", "num_thread", "mirostat"}
_BOOL_PARAMS = {"penalize_newline", "use_mmap", "use_mlock", "numa", "low_vram", "vocab_only", "f16_kv"}
_STR_PARAMS = {"stop"}


def coerce_parameter(key: str, value: object) -> object:
    """A `--param key=value` string typed the way Ollama's API expects it."""
    if key in _STR_PARAMS:
        return [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)]
    if not isinstance(value, str):
        return value
    try:
        if key in _INT_PARAMS:
            return int(value)
        if key in _BOOL_PARAMS:
            if value.lower() not in {"true", "false", "1", "0"}:
                raise ValueError(value)
            return value.lower() in {"true", "1"}
        return float(value)
    except ValueError:
        raise PosttrainError(f"parameter {key}={value!r} is not a valid value",
                             remedy="see the PARAMETER table in Ollama's Modelfile docs") from None


def merge_parameters(overrides: Mapping[str, object] | None, stop: tuple[str, ...] = ()) -> dict[str, object]:
    """Defaults, then the family's stop tokens, then the user's overrides (a user `stop` replaces ours)."""
    params: dict[str, object] = dict(DEFAULT_PARAMETERS)
    if stop:
        params["stop"] = list(stop)
    for key, value in (overrides or {}).items():
        params[key] = coerce_parameter(key, value)
    return params


def quote_value(text: str, what: str, *, bare: bool = False) -> str:
    """`text` written so that Ollama's Modelfile parser reads back exactly `text`, never more.

    Ollama's parser (parser/parser.go) has no escape sequences: a value is bare up to the end of its
    line, `"…"` up to the first line end after a closing `"`, or `\"\"\"…\"\"\"` up to the first line end
    after a closing `\"\"\"`; characters that are not printable are dropped. So a value with `\"\"\"` in it,
    or with control characters other than newline and tab, cannot be written faithfully: it is refused
    rather than allowed to end early and add lines (a second FROM, say) of its own. `what` names the
    value in that error.
    """
    if '"""' in text:
        raise PosttrainError(f'{what} contains """, which a Modelfile cannot quote', remedy='remove the """ from it')
    odd = next((c for c in text if not (c.isprintable() or c in "\n\r\t")), None)
    if odd is not None:
        raise PosttrainError(f"{what} contains the control character {odd!r}, which a Modelfile cannot hold",
                             remedy="remove it")
    if bare and text and not any(c.isspace() or c == '"' for c in text):
        return text
    if '"' not in text and "\n" not in text and "\r" not in text:
        return f'"{text}"'
    return f'"""{text}"""'


def _quote(key: str, value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return quote_value(value, f"parameter {key}")
    return str(value)


def _file_reference(beside: Path, other: Path, what: str) -> str:
    """`other` as a Modelfile beside `beside` names it: `./name` in the same folder, else its absolute path."""
    if any(c in "\r\n\x00" for c in str(other)):
        raise PosttrainError(f"the path {str(other)!r} contains a line break or NUL, which a Modelfile cannot hold",
                             remedy="rename the file")
    # The same folder by name, links not followed: the Modelfile names the file the user gave.
    same_folder = other.absolute().parent == beside.absolute().parent
    ref = f"./{other.name}" if same_folder else str(other.absolute())
    return quote_value(ref, what, bare=True)


def render_modelfile(gguf: Path, params: Mapping[str, object], template: str | None, system: str | None,
                     notes: Sequence[str] = (), adapter: Path | None = None) -> str:
    """A Modelfile with the same content as the API call: `ollama create NAME -f <gguf>.Modelfile`.

    Every value is quoted by `quote_value`: a value that cannot be quoted is refused, so no
    template, system prompt, parameter or file name can add lines of its own. `notes` become comment
    lines (which template is meant, and why); a line break in one starts another comment line.
    """
    if any(c in "\r\n" for c in gguf.name):  # it also goes into the comment line, which a line end would close
        raise PosttrainError(f"the file name {gguf.name!r} contains a line break, which a Modelfile cannot hold",
                             remedy="rename the file")
    # With an adapter the Modelfile lies beside the adapter (the base GGUF has its own Modelfile).
    beside = adapter if adapter is not None else gguf
    source = _file_reference(beside, gguf, f"the file name {gguf.name!r}")
    lines = [f"{_HEADER} Reproduce by hand: ollama create NAME -f {modelfile_path(beside).name}",
             *(f"# {line}" for note in notes for line in note.splitlines()),
             f"FROM {source}"]
    if adapter is not None:  # a GGUF LoRA Ollama applies to FROM's weights
        lines.append(f"ADAPTER {_file_reference(beside, adapter, f'the adapter file {adapter.name!r}')}")
    if template is not None:
        lines.append(f"TEMPLATE {quote_value(template, f'the chat template for {gguf.name}')}")
    if system:
        lines.append(f"SYSTEM {quote_value(system, 'the system prompt (--system)')}")
    for key, value in params.items():
        if not (key.replace("_", "").isalnum() and key.isascii()):
            raise PosttrainError(f"parameter name {key!r} is not a Modelfile PARAMETER name",
                                 remedy="use letters, digits and _ only, e.g. --param num_ctx=8192")
        for v in value if isinstance(value, list) else [value]:
            lines.append(f"PARAMETER {key} {_quote(key, v)}")
    return "\n".join(lines) + "\n"


_HEADER = "# Written by posttrain."


def is_posttrain_modelfile(path: Path) -> bool:
    """True when `path` is a regular file that starts with the header line posttrain writes."""
    try:
        if path.is_symlink() or not path.is_file():
            return False
        with open(path, "rb") as f:
            return f.read(len(_HEADER)) == _HEADER.encode()
    except OSError:
        return False


def modelfile_path(gguf: Path) -> Path:
    return gguf.with_name(gguf.name + ".Modelfile")


def parse_show_parameters(text: str | None) -> dict[str, object]:
    """/api/show's `parameters` ("key   value" lines; strings quoted Go-style; `stop` repeated)."""
    params: dict[str, object] = {}
    for line in (text or "").splitlines():
        key, _, raw = line.strip().partition(" ")
        if not key:
            continue
        raw = raw.strip()
        try:
            value: object = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if key in _STR_PARAMS:
            params.setdefault(key, []).append(str(value))  # type: ignore[union-attr]
        else:
            params[key] = value
    return params


def same_parameters(a: Mapping[str, object], b: Mapping[str, object]) -> bool:
    """Equal as Ollama stores them: numbers by value (4096 == 4096.0), stop lists as sets."""
    if set(a) != set(b):
        return False
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, list) or isinstance(y, list):
            if sorted(map(str, x if isinstance(x, list) else [x])) != sorted(map(str, y if isinstance(y, list) else [y])):
                return False
        elif isinstance(x, bool) or isinstance(y, bool):
            if bool(x) != bool(y):
                return False
        elif isinstance(x, int | float) and isinstance(y, int | float):
            if abs(float(x) - float(y)) > 1e-6 * max(1.0, abs(float(x))):
                return False
        elif str(x) != str(y):
            return False
    return True


_FROM_BLOB = re.compile(r"^FROM\s+(\S.*?)\s*$", re.MULTILINE)
_DIGEST = re.compile(r"sha256[-:]([0-9a-f]{64})")


def from_line_path(modelfile: str | None) -> str | None:
    """The FROM target of the Modelfile /api/show returns (Ollama writes its blob path there)."""
    m = _FROM_BLOB.search(modelfile or "")
    return m.group(1) if m else None


_ADAPTER_LINE = re.compile(r"^ADAPTER\s+(\S.*?)\s*$", re.MULTILINE)


def adapter_digest_of(modelfile: str | None) -> str | None:
    """`sha256:<hex>` of the adapter blob named by an ADAPTER line of /api/show's Modelfile, if any."""
    m = _ADAPTER_LINE.search(modelfile or "")
    d = _DIGEST.search(m.group(1)) if m else None
    return f"sha256:{d.group(1)}" if d else None


def blob_digest_of(modelfile: str | None) -> str | None:
    """`sha256:<hex>` of the weights blob named by the FROM line, if it names one."""
    target = from_line_path(modelfile)
    m = _DIGEST.search(target or "")
    return f"sha256:{m.group(1)}" if m else None
