"""The pipeline's settings: `posttrain.toml`, then `POSTTRAIN_*` variables, then command-line flags.

Later sources win (flags over environment over file over defaults). Nested tables map to variables
with a double underscore: `[ollama] url` is `POSTTRAIN_OLLAMA__URL`. List settings accept a comma-
separated string in the environment (`POSTTRAIN_QUANTS=f16,q4_k_m`). Unknown keys are errors, so a
typo never silently falls back to a default.
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from posttrain import paths
from posttrain.errors import PosttrainError
from posttrain.store import dumps

CONFIG_NAME = "posttrain.toml"
WINDOWS_PATH_REMEDY = ("in TOML, write a Windows path in single quotes ('D:\\webdataset\\run'), with doubled "
                       "backslashes in double quotes, or with forward slashes")
_QUANT = re.compile(r"^[a-z0-9_]+$")
_TASK = re.compile(r"^[A-Za-z0-9_.\-]+$")


def _split(value: Any) -> Any:
    # Environment and flags give "a,b,c"; TOML gives a real list.
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


StrList = Annotated[list[str], NoDecode]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OllamaSettings(_Section):
    url: str = "http://127.0.0.1:11434"
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    num_ctx: int = Field(4096, ge=128)

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError("must be an http(s) URL such as http://127.0.0.1:11434")
        return v.rstrip("/")


class NotifySettings(_Section):
    urls: StrList = Field(default_factory=list)
    voice: bool = False

    _split_urls = field_validator("urls", mode="before")(_split)


class WatchSettings(_Section):
    pattern: str = "**/final_model"
    # Checkpoint series (posttrain.series): the checkpoint-N folders beside what `pattern` matches are
    # taken too, and the training run's series report is rewritten after each of them.
    series: bool = False
    check_interval_s: float = Field(300.0, gt=0)
    settle_s: float = Field(1.0, ge=0)
    log_max_bytes: int = Field(10_000_000, ge=10_000)
    log_backups: int = Field(5, ge=0)

    @property
    def effective_pattern(self) -> str:
        """What the watcher matches: `pattern`, widened to the checkpoint-N folders with `series`."""
        from posttrain.pipeline._watcher import series_pattern

        return series_pattern(self.pattern) if self.series else self.pattern


class Config(BaseSettings):
    """Everything `posttrain run` and `posttrain watch` need to know."""

    model_config = SettingsConfigDict(env_prefix="POSTTRAIN_", env_nested_delimiter="__", extra="forbid",
                                      validate_default=True)

    home: Path | None = None
    quants: StrList = Field(default_factory=lambda: ["f16", "q8_0", "q4_k_m"], min_length=1)
    # The 16-bit type evaluated as the model itself (f16 in `quants` stands for it): auto picks BF16
    # where this CPU runs it faster and the checkpoint allows it (convert/_reference.py), else F16.
    reference: Literal["auto", "f16", "bf16"] = "auto"
    tasks: StrList = Field(default_factory=lambda: ["mmlu", "gsm8k", "hellaswag"], min_length=1)
    data_dir: Path | None = None
    # Extra directories of lm-eval task YAMLs (your own tasks, e.g. the demo's), searched by name.
    task_paths: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    limit: int | None = Field(None, ge=1)
    per_subject: int | None = Field(None, ge=1)
    seed: int = 0
    baseline: str | None = None
    # The base model directory of LoRA adapter checkpoints (default: adapter_config.json's base).
    base: Path | None = None
    allow_pickle: bool = False
    retries: int = Field(3, ge=1, le=20)
    retry_backoff_s: float = Field(2.0, ge=0)
    jobs: int = Field(1, ge=1, le=64)
    # Layers llama.cpp offloads to the GPU (-1 all, 0 none); None: all on a build that offloads.
    n_gpu_layers: int | None = Field(None, ge=-1)
    # Experiment trackers each run is recorded in (posttrain.track): "mlflow", "wandb".
    track: StrList = Field(default_factory=list)
    # Artifacts sent on top of the reports and documents: "gguf" (the model files; large).
    track_artifacts: StrList = Field(default_factory=list)
    # Where evaluation shards run (docs/executors.md): local, ray (a private cluster or ray_address), ray://HOST:PORT.
    executor: str = "local"
    ray_address: str | None = None
    shared_dir: Path | None = None
    shard_docs: int | None = Field(None, ge=1)
    # The "which quant to ship" ladder (posttrain.ship) as a step: KLD on ship_text (else the tasks'
    # documents), speed, and TOST equivalence against F16 within ship_margin points on every task.
    ship: bool = False
    ship_text: Path | None = None
    ship_margin: float = Field(1.0, gt=0)
    ship_max_kld: float = Field(0.1, gt=0)
    ship_alpha: float = Field(0.05, gt=0, lt=1)
    # The quality measurement: chunks of ship_n_ctx tokens (llama-perplexity's -c), ship_max_tokens at most.
    ship_n_ctx: int = Field(512, ge=16)
    ship_max_tokens: int = Field(20_480, ge=16)
    # pp512/tg128 speed of every variant, the median of ship_speed_reps runs (llama-bench's -r).
    ship_speed: bool = True
    ship_speed_reps: int = Field(3, ge=1)
    # Text for an importance matrix: every K/IQ rung of the ladder also made with it (`--imatrix-text`).
    ship_imatrix_text: Path | None = None
    ollama: OllamaSettings = Field(default_factory=OllamaSettings)
    notify: NotifySettings = Field(default_factory=NotifySettings)
    watch: WatchSettings = Field(default_factory=WatchSettings)

    _split_lists = field_validator("quants", "tasks", "task_paths", "track", "track_artifacts",
                                   mode="before")(_split)

    @field_validator("quants")
    @classmethod
    def _quants(cls, v: list[str]) -> list[str]:
        out: list[str] = []
        for q in (q.strip().lower().replace("-", "_") for q in v):
            if not _QUANT.match(q):
                raise ValueError(f"{q!r} is not a GGUF type name (like f16, q8_0, q4_k_m)")
            if q not in out:
                out.append(q)
        return out

    @field_validator("reference", mode="before")
    @classmethod
    def _reference(cls, v: Any) -> Any:
        return v.strip().lower() if isinstance(v, str) else v

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, v: list[str]) -> list[str]:
        for t in v:
            if not _TASK.match(t):
                raise ValueError(f"{t!r} is not a task name (like mmlu, gsm8k, hellaswag)")
        return list(dict.fromkeys(v))

    @field_validator("track", "track_artifacts")
    @classmethod
    def _tracking(cls, v: list[str], info: ValidationInfo) -> list[str]:
        from posttrain.track import ARTIFACT_KINDS, tracker_names

        if info.field_name == "track":
            allowed, what = tracker_names(), "a tracker"
        else:
            allowed, what = list(ARTIFACT_KINDS), "an artifact kind"
        out = list(dict.fromkeys(x.strip().lower() for x in v))
        for x in out:
            if x not in allowed:
                raise ValueError(f"{x!r} is not {what} (one of: {', '.join(allowed)})")
        return out

    @field_validator("executor")
    @classmethod
    def _executor(cls, v: str) -> str:
        if v not in ("local", "ray") and not v.startswith("ray://"):
            raise ValueError(f"{v!r} is not an executor (local, ray or ray://HOST:PORT)")
        return v

    @field_validator("home", "data_dir", "base", "ship_text", "ship_imatrix_text")
    @classmethod
    def _expand(cls, v: Path | None) -> Path | None:
        return v.expanduser() if v is not None else None

    @field_validator("home", "data_dir", "baseline", mode="before")
    @classmethod
    def _no_control_characters(cls, v: Any) -> Any:
        # "D:\new\run" in double quotes parses, as a newline and a carriage return: refuse it.
        if isinstance(v, str) and any(ord(c) < 32 for c in v):
            raise ValueError(f"{v!r} contains a control character; {WINDOWS_PATH_REMEDY}")
        return v

    @field_validator("task_paths")
    @classmethod
    def _task_dirs(cls, v: list[Path]) -> list[Path]:
        out = [p.expanduser() for p in v]
        for p in out:
            if not p.is_dir():
                raise ValueError(f"{p} is not a directory (of lm-eval task YAMLs)")
        return out

    # -- derived ---------------------------------------------------------------------------------
    @property
    def base_dir(self) -> Path:
        return self.home or paths.home()

    @property
    def store_path(self) -> Path:
        return paths.store_path(self.base_dir)

    def gguf_dir(self, model_name: str) -> Path:
        return self.base_dir / "gguf" / model_name

    def run_dir(self, run_id: str) -> Path:
        return self.base_dir / "runs" / run_id

    def fingerprint(self) -> dict[str, Any]:
        """The settings that change a run's results. Where outputs go, retries or notification do not."""
        return {
            "quants": self.quants, "tasks": self.tasks,
            # Only when set, so that runs from before the choice keep their fingerprint.
            **({"reference": self.reference} if self.reference != "auto" else {}),
            "data_dir": str(self.data_dir) if self.data_dir else None,
            "task_paths": [str(p) for p in self.task_paths],
            "limit": self.limit, "per_subject": self.per_subject, "seed": self.seed, "baseline": self.baseline,
            "ollama": {"temperature": self.ollama.temperature, "top_p": self.ollama.top_p,
                       "num_ctx": self.ollama.num_ctx},
            # Only when on, so that runs without the ladder keep their fingerprint.
            **({"ship": {"text": str(self.ship_text) if self.ship_text else None, "margin": self.ship_margin,
                         "max_kld": self.ship_max_kld,
                         # Only when changed, so that ladders with the defaults keep their fingerprint.
                         **self._ship_changes()}}
               if self.ship else {}),
        }

    def _ship_changes(self) -> dict[str, Any]:
        """The ladder's measurement settings that differ from their defaults (`imatrix_text`, `n_ctx`…)."""
        changed = {}
        for name in ("ship_imatrix_text", "ship_alpha", "ship_n_ctx", "ship_max_tokens", "ship_speed",
                     "ship_speed_reps"):
            value = getattr(self, name)
            if value != type(self).model_fields[name].default:
                changed[name.removeprefix("ship_")] = str(value) if isinstance(value, Path) else value
        return changed

    def fingerprint_sha256(self) -> str:
        return hashlib.sha256(dumps(self.fingerprint()).encode()).hexdigest()


class _DictSource(PydanticBaseSettingsSource):
    """The already-parsed TOML file, as the lowest-priority source after the defaults."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]):
        super().__init__(settings_cls)
        self.data = data

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return self.data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return self.data


def find_config_file(explicit: Path | None = None) -> Path | None:
    """--config, else $POSTTRAIN_CONFIG, else ./posttrain.toml when there is one."""
    if explicit is not None:
        if not explicit.is_file():
            raise PosttrainError(f"config file {explicit} does not exist", remedy="run `posttrain init` to write one")
        return explicit
    if env := os.environ.get("POSTTRAIN_CONFIG"):
        return find_config_file(Path(env).expanduser())
    here = Path.cwd() / CONFIG_NAME
    return here if here.is_file() else None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        # The usual cause on Windows: a path like "D:\webdataset" in double quotes, where `\` escapes.
        remedy = WINDOWS_PATH_REMEDY if str(e).startswith(("Unescaped '\\'", "Invalid hex value")) \
            else "fix the line it names"
        raise PosttrainError(f"{path} is not valid TOML: {e}", remedy=remedy) from None
    except UnicodeDecodeError as e:  # TOML is UTF-8 by definition
        raise PosttrainError(f"{path} is not valid TOML: not UTF-8 text (byte {e.start})",
                             remedy="save it as UTF-8") from None
    except OSError as e:
        raise PosttrainError(f"cannot read {path}: {e.strerror}") from None


def _explain(e: ValidationError, source: Path | None) -> PosttrainError:
    parts = []
    for err in e.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown setting"
        parts.append(f"{where}: {msg}")
    origin = f"{source}, POSTTRAIN_* variables or flags" if source else "POSTTRAIN_* variables or flags"
    return PosttrainError(f"invalid configuration ({origin}): " + "; ".join(parts),
                          remedy="see `posttrain init` for every setting and its default")


# POSTTRAIN_* variables that are not settings of Config: read elsewhere (paths, the toolchain,
# scripts/setup.sh, the tests' crash hook, notify's voice command); llama.cpp's load settings are
# added from posttrain.llamacpp. tests/test_pipeline_config.py finds every name the code spells.
OTHER_VARIABLES = {"POSTTRAIN_HOME", "POSTTRAIN_CACHE", "POSTTRAIN_CONFIG", "POSTTRAIN_LLAMA_CPP_DIR",
                   "POSTTRAIN_TEST_CRASH", "POSTTRAIN_CUDA", "POSTTRAIN_CUDA_ARCH",
                   "POSTTRAIN_LLAMA_CMAKE_ARGS", "POSTTRAIN_SAY",
                   "POSTTRAIN_NODE_CACHE",  # a Ray worker's file cache (executors/_files.py)
                   "POSTTRAIN_PROGRESS_DIR"}  # set by a progress display for its child processes (_progress)


def _known_variables() -> set[str]:
    from posttrain.llamacpp import SETTING_VARIABLES  # each load's llama.cpp settings (docs/hardware.md)

    known = set(OTHER_VARIABLES) | SETTING_VARIABLES
    for name, field in Config.model_fields.items():
        known.add(f"POSTTRAIN_{name.upper()}")
        section = field.annotation if isinstance(field.annotation, type) else None
        if section is not None and issubclass(section, BaseModel):
            known |= {f"POSTTRAIN_{name.upper()}__{key.upper()}" for key in section.model_fields}
    return known


def check_variables(environ: dict[str, str] | None = None) -> None:
    """A mistyped POSTTRAIN_* variable is an error, as an unknown key in the file is: otherwise the
    setting the user meant silently keeps its default."""
    import difflib

    known = _known_variables()
    for name in sorted(environ if environ is not None else os.environ):
        if name.upper().startswith("POSTTRAIN_") and name.upper() not in known:
            close = difflib.get_close_matches(name.upper(), sorted(known), n=1)
            hint = f"did you mean {close[0]}?" if close else "see `posttrain init` for the settings"
            raise PosttrainError(f"unknown environment variable {name}", remedy=f"{hint} (or unset it)")


def load_config(file: Path | None = None, *, discover: bool = True, **flags: Any) -> Config:
    """Build the settings from the file (explicit or discovered), the environment and `flags`.

    Flags that are None are "not given". Nested flags use the section name: `ollama={"url": ...}`.
    """
    check_variables()
    path = find_config_file(file) if (file is not None or discover) else None
    data = _read_toml(path) if path else {}
    given = {k: v for k, v in flags.items() if v is not None and v != {}}

    class _Bound(Config):
        @classmethod
        def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                       file_secret_settings) -> tuple[PydanticBaseSettingsSource, ...]:
            return init_settings, env_settings, _DictSource(settings_cls, data)

    try:
        bound = _Bound(**given)
    except ValidationError as e:
        raise _explain(e, path) from None
    # A plain Config (not the throwaway subclass) so it pickles for --jobs and compares equal.
    return Config.model_construct(**dict(bound))
