"""The commented `posttrain.toml` that `posttrain init` writes, from the settings' own defaults."""

from __future__ import annotations

from posttrain.pipeline._config import Config


def config_template() -> str:
    """The commented `posttrain.toml` that `posttrain init` writes: every setting at its default."""
    d = Config.model_construct(**{k: f.get_default(call_default_factory=True)
                                  for k, f in Config.model_fields.items()})
    q = ", ".join(f'"{x}"' for x in d.quants)
    t = ", ".join(f'"{x}"' for x in d.tasks)
    return f"""\
# posttrain.toml: settings for `posttrain run` and `posttrain watch`.
# Precedence: command-line flags > POSTTRAIN_* environment variables > this file > defaults.
# A table's keys map to variables with a double underscore: [ollama] url -> POSTTRAIN_OLLAMA__URL.

# Where GGUF files (gguf/<model>/...), runs (runs/<run_id>/...) and the store (posttrain.db) go.
# Default: $POSTTRAIN_HOME, else $XDG_DATA_HOME/posttrain (~/.local/share/posttrain).
# home = "~/posttrain"

# GGUF types to produce. F16 is always made first: the others are quantized from it and checked against it.
quants = [{q}]

# The 16-bit file evaluated as the model itself; "f16" in quants stands for it. "auto": BF16 where
# this CPU runs BF16 faster (the machine profile, `posttrain doctor`) and the checkpoint is bfloat16,
# or agrees with F16 on >= 99.5 % of a probe text's next tokens; else F16. Or "f16", "bf16".
reference = "{d.reference}"

# lm-evaluation-harness tasks to run on every variant and on the baseline.
tasks = [{t}]

# Local copies of the benchmark data (no network is used). Default: posttrain's own lookup.
# data_dir = "/data/benchmarks"

# Directories of your own lm-eval task YAMLs; their tasks can then be named in `tasks`.
# task_paths = ["/path/to/my_tasks"]

# Evaluate only the first N items of each task (N per subject for MMLU with per_subject). Unset: all.
# limit = 200
# per_subject = 10
seed = {d.seed}

# What the new model is compared against: a Hugging Face directory (converted once, cached by
# content hash; to BF16 when the reference is BF16 and it is bfloat16, else to F16), a .gguf file, or an Ollama model as "ollama:NAME".
# baseline = "/models/base_model"

# Accept pytorch_model.bin (pickle) weights. Pickle can run code when loaded: only for trusted checkpoints.
allow_pickle = {str(d.allow_pickle).lower()}

# Attempts for a step that fails with a transient error (a busy server, a dropped connection),
# with exponential backoff starting at retry_backoff_s seconds.
retries = {d.retries}
retry_backoff_s = {d.retry_backoff_s}

# Measure the quant ladder and answer "which quant should I ship?" (a step before the report):
# KL divergence on ship_text (default: the tasks' own documents), speed, and equivalence with F16
# within ship_margin points on every task (TOST, Holm); ship_max_kld bounds the mean KLD of the pick.
ship = false
# ship_text = "/data/heldout.txt"
# ship_margin = 1.0
# ship_max_kld = 0.1
# ship_alpha = 0.05
# Held-out text in chunks of ship_n_ctx tokens, ship_max_tokens at most; speed: median of ship_speed_reps runs.
# ship_n_ctx = 512
# ship_max_tokens = 20480
# ship_speed = true
# ship_speed_reps = 3
# Also make every K/IQ rung with an importance matrix computed on this text (llama.cpp's llama-imatrix):
# ship_imatrix_text = "/data/train-sample.txt"

# Checkpoints processed at the same time (1: one after another).
jobs = {d.jobs}

# Layers llama.cpp puts on the GPU when converting checks and evaluates GGUF files: -1 all, 0 none.
# Unset: all of them when llama-cpp-python was built for a GPU (POSTTRAIN_CUDA=1 scripts/setup.sh).
# n_gpu_layers = -1

# Experiment trackers every run is recorded in: "mlflow" (a local store under <home>/mlruns unless
# MLFLOW_TRACKING_URI is set), "wandb" (offline unless WANDB_MODE=online). Empty: none.
track = []
# Also send the GGUF files to the trackers ("gguf"); the reports and documents always go.
track_artifacts = []
# Where evaluation shards run (docs/executors.md): "local" (this machine, as always), "ray" (a
# private Ray cluster on 127.0.0.1, or the cluster ray_address names: "auto", "HOST:PORT"), or
# "ray://HOST:PORT". shared_dir: a folder every node sees at the same path (models under it are
# read in place). shard_docs: documents per shard (default: about a minute's worth).
executor = "{d.executor}"
# ray_address = "auto"
# shared_dir = "/mnt/shared"
# shard_docs = 200

[ollama]
# Registration is skipped (not failed) when nothing answers here.
url = "{d.ollama.url}"
temperature = {d.ollama.temperature}
top_p = {d.ollama.top_p}
num_ctx = {d.ollama.num_ctx}

[notify]
# apprise URLs, e.g. "ntfy://my-topic", "mailto://user:pass@example.com". Empty: no notification.
urls = []
# Speak the verdict aloud on this machine (needs a speech synthesizer such as espeak).
voice = {str(d.notify.voice).lower()}

[watch]
# Directories under the watched ones that are checkpoints (glob; ** matches any depth).
pattern = "{d.watch.pattern}"
# Checkpoint series: also take the checkpoint-N folders saved beside what the pattern matches, and
# rewrite the training run's series report (<home>/series/...) after each one (docs/pipeline.md).
series = {str(d.watch.series).lower()}
# Full rescan interval in seconds, the fallback when file events do not arrive (network filesystems).
check_interval_s = {d.watch.check_interval_s:g}
# Seconds a checkpoint's files must stay unchanged before it counts as finished.
settle_s = {d.watch.settle_s:g}
# The watcher's log (<home>/logs/watch.log) rotates at this size, keeping this many old files.
log_max_bytes = {d.watch.log_max_bytes}
log_backups = {d.watch.log_backups}
"""
