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
from pathlib import Path

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
              init_std: float = 0.08, chat_template: str | None = None) -> Path:
    """Write a tiny, randomly initialised (seeded) Llama checkpoint to `out` and return it.

    `tokenizer`: "spm" (SentencePiece, what Llama 2 uses) or "bpe" (byte-level BPE, GPT-2 style;
    llama.cpp's converter does not know its pre-tokenizer hash, so converting it needs an explicit
    pre-tokenizer name). `add_bos=False` makes a model that, like SmolLM2 or Qwen, starts without BOS.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if tokenizer not in ("spm", "bpe"):
        raise ValueError(f"tokenizer must be 'spm' or 'bpe', not {tokenizer!r}")
    out = Path(out)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
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
    model = LlamaForCausalLM(config)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    _pin_bos_setting(tmp, add_bos)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def _pin_bos_setting(path: Path, add_bos: bool) -> None:
    """Write add_bos_token into tokenizer_config.json: the converter reads it from there."""
    cfg_path = path / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    cfg["add_bos_token"] = add_bos
    cfg.setdefault("add_eos_token", False)
    cfg_path.write_text(json.dumps(cfg, indent=2))
