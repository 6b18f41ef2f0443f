"""Make a tiny Llama checkpoint on the spot: no Hub, a few seconds, both tokenizer kinds.

Used by `posttrain make-tiny`, the demo and the tests. Sizes are multiples of 256 so llama.cpp's
k-quants apply to every matrix (a smaller row falls back to another type). The tokenizer is trained
here, on text the project writes, so nothing is downloaded.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import tempfile
import uuid
from pathlib import Path

from posttrain._versions import package_version
from posttrain._files import sha256_file
from posttrain.errors import PosttrainError

# Written last into every make_tiny folder: which files this run wrote, with their hashes.
MARKER = ".posttrain-tiny.json"

_SUBJECTS = ["the cat", "a dog", "my friend", "the teacher", "our model", "the river", "a small bird",
             "the old man", "the engineer", "a student"]
_VERBS = ["sees", "likes", "finds", "builds", "reads", "paints", "counts", "follows", "carries", "opens"]
_OBJECTS = ["the door", "a red ball", "seven apples", "the long road", "a new book", "the blue sky",
            "twelve stones", "a quiet song", "the last train", "a paper boat"]


def corpus(n_lines: int = 3000, seed: int = 0) -> list[str]:
    """Plain sentences plus arithmetic, enough for a tokenizer and a demo language model."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        if rng.random() < 0.5:
            lines.append(f"{rng.choice(_SUBJECTS).capitalize()} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}.")
        else:
            a, b = rng.randint(0, 99), rng.randint(0, 99)
            lines.append(f"{a} plus {b} is {a + b}.")
    return lines


def _train_sentencepiece(lines: list[str], vocab_size: int, out: Path) -> None:
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, split_digits=True, bos_id=1, eos_id=2, unk_id=0,
        pad_id=-1, num_threads=1, minloglevel=2,
    )
    (out / "tokenizer.model").write_bytes(model.getvalue())


def _spm_tokenizer(lines: list[str], vocab_size: int, out: Path, add_bos: bool):
    from transformers import LlamaTokenizer

    _train_sentencepiece(lines, vocab_size, out)
    # transformers 5: LlamaTokenizer(vocab_file=...) silently builds a 3-token vocab; from_pretrained
    # on a folder holding tokenizer.model reads it properly.
    tok = LlamaTokenizer.from_pretrained(out, add_bos_token=add_bos, add_eos_token=False, legacy=False)
    return tok


def _bpe_tokenizer(lines: list[str], vocab_size: int, add_bos: bool):
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(lines, trainer)
    if add_bos:
        tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                          special_tokens=[("<s>", tk.token_to_id("<s>"))])
    else:
        tk.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   add_bos_token=add_bos)


def make_tiny(out: str | Path, *, tokenizer: str = "spm", add_bos: bool = True, seed: int = 0,
              hidden_size: int = 256, intermediate_size: int = 512, num_layers: int = 2,
              num_heads: int = 4, num_kv_heads: int = 2, vocab_size: int = 512,
              init_std: float = 0.08, chat_template: str | None = None, dtype: str = "float32",
              force: bool = False) -> Path:
    """Write a tiny, randomly initialised (seeded) Llama checkpoint to `out` and return it.

    `tokenizer`: "spm" (SentencePiece, what Llama 2 uses) or "bpe" (byte-level BPE, GPT-2 style;
    llama.cpp's converter does not know its pre-tokenizer hash, so converting it needs an explicit
    pre-tokenizer name). `add_bos=False` makes a model that, like SmolLM2 or Qwen, starts without BOS.
    `dtype`: the weights' type on disk, "float32", "bfloat16" (as most fine-tunes are saved) or "float16".

    `out` may be missing, empty, or an unchanged earlier make_tiny output (its marker file lists
    what it wrote); anything else is refused with a PosttrainError unless `force=True`.
    """
    if tokenizer not in ("spm", "bpe"):
        raise ValueError(f"tokenizer must be 'spm' or 'bpe', not {tokenizer!r}")
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype must be 'float32', 'bfloat16' or 'float16', not {dtype!r}")
    out = Path(out)
    _check_replaceable(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    # A fresh name of our own: a killed run leaves a hidden .partial folder, never a half checkpoint
    # under `out`, and nothing of the user's is touched while the model is made.
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial"))
    try:
        tmp.chmod(0o755)  # mkdtemp makes 0700; a checkpoint folder is meant to be read by others too
        _write_model(tmp, tokenizer=tokenizer, add_bos=add_bos, seed=seed, hidden_size=hidden_size,
                     intermediate_size=intermediate_size, num_layers=num_layers, num_heads=num_heads,
                     num_kv_heads=num_kv_heads, vocab_size=vocab_size, init_std=init_std,
                     chat_template=chat_template, dtype=dtype)
        _write_marker(tmp)
        _check_replaceable(out, force)  # again: the user may have written there in the meantime
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_model(tmp: Path, *, tokenizer: str, add_bos: bool, seed: int, hidden_size: int,
                 intermediate_size: int, num_layers: int, num_heads: int, num_kv_heads: int, vocab_size: int,
                 init_std: float, chat_template: str | None, dtype: str = "float32") -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    lines = corpus(seed=seed)
    tok = (_spm_tokenizer(lines, vocab_size, tmp, add_bos) if tokenizer == "spm"
           else _bpe_tokenizer(lines, vocab_size, add_bos))
    if chat_template:
        tok.chat_template = chat_template
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        max_position_embeddings=2048, initializer_range=init_std, rms_norm_eps=1e-5,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).to(getattr(torch, dtype))  # initialised in float32, then rounded
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    _pin_bos_setting(tmp, add_bos)


# ---------------------------------------------------------------- never replacing what is not ours


def _files_of(folder: Path) -> dict[str, Path]:
    return {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*"))
            if (p.is_file() or p.is_symlink()) and p.name != MARKER}


def _write_marker(folder: Path) -> None:
    """Record every file this run wrote, with its hash: the proof a later run needs to replace them."""
    files = {name: sha256_file(p) for name, p in _files_of(folder).items()}
    # The installed version, as `posttrain.__version__` says it (the package root imports this module).
    doc = {"made_by": "posttrain make-tiny", "version": package_version("posttrain") or "0.0.0", "files": files}
    (folder / MARKER).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def made_by_make_tiny(folder: Path) -> bool:
    """True when `folder` holds exactly the files a `make_tiny` wrote, unchanged (its marker says which)."""
    try:
        doc = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        recorded = doc["files"]
        present = _files_of(folder)
        if not isinstance(recorded, dict) or set(recorded) != set(present):
            return False
        return all(not p.is_symlink() and sha256_file(p) == recorded[name] for name, p in present.items())
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return False


def _check_replaceable(out: Path, force: bool) -> None:
    """Refuse to replace anything at `out` but nothing, an empty folder, or an unchanged make_tiny output."""
    if force or not (out.exists() or out.is_symlink()):
        return
    if out.is_symlink() or not out.is_dir():
        raise PosttrainError(f"{out} exists and is not a folder; nothing was changed",
                             remedy="choose another path, or pass --force to replace it")
    if next(out.iterdir(), None) is None or made_by_make_tiny(out):
        return
    raise PosttrainError(f"{out} is not empty and holds files `make-tiny` did not write; nothing was changed",
                         remedy="choose another folder, or pass --force to replace it")


def _swap_in(tmp: Path, out: Path) -> None:
    """Put `tmp` at `out`; what stood there is moved aside first and removed only once `tmp` is in place."""
    if not (out.exists() or out.is_symlink()):
        os.replace(tmp, out)
        return
    old = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.old")
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)
    else:
        old.unlink()


def _pin_bos_setting(path: Path, add_bos: bool) -> None:
    """Write add_bos_token into tokenizer_config.json: the converter reads it from there."""
    cfg_path = path / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    cfg["add_bos_token"] = add_bos
    cfg.setdefault("add_eos_token", False)
    cfg_path.write_text(json.dumps(cfg, indent=2))
