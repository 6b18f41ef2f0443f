"""Train the demo's tiny Llama on the demo task with transformers' Trainer, on the CPU.

Two checkpoints come out: `checkpoint-early/` after a few optimiser steps (the demo's baseline:
it has seen the prompt format but not learned the numbers) and `final_model/` (via
`trainer.save_model`). Both are plain Hugging Face model directories with safetensors weights and
the tokenizer, written under a temporary name and renamed when complete, so a watcher never sees
half a checkpoint.

With `lora=True` the base stays frozen and PEFT trains a LoRA on every linear layer: `final_model/`
is then an adapter folder (adapter_config.json naming `init_model/` as its base), and the base itself
is the baseline.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from posttrain.demo._task import make_items, training_texts

log = logging.getLogger(__name__)

EARLY_DIR = "checkpoint-early"
FINAL_DIR = "final_model"
DEFAULT_STEPS = 400
DEFAULT_EARLY_STEP = 5
# The demo's LoRA: every linear layer of the tiny model, rank 16 (its hidden size is 256).
LORA_RANK = 16


@dataclass(frozen=True)
class DemoCheckpoints:
    early: Path
    final: Path
    train_seconds: float
    steps: int
    final_loss: float | None


# One thread by default, measured: the model is so small that every matrix product is tiny, and a
# second thread mostly waits at barriers. On 2 cores shared with other work, 40 steps took 4.0 s with
# one thread and 32.6 s with two; two threads on a lightly loaded machine ran at the same ~0.1 s a step.
DEFAULT_THREADS = 1


class _TextDataset:
    """Tokenised training texts, each ending with EOS so the model learns where an answer stops."""

    def __init__(self, texts: list[str], tokenizer) -> None:
        eos = tokenizer.eos_token_id
        self.rows = [tokenizer(t)["input_ids"] + [eos] for t in texts]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.rows[i]}


class _PadCollator:
    """Right-pad a batch; padding positions get label -100 so they never count in the loss."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, batch: list[dict]) -> dict:
        import torch

        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[row, :n] = torch.tensor(b["input_ids"])
            mask[row, :n] = 1
        labels = ids.masked_fill(mask == 0, -100)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _save_atomic(out: Path, save) -> None:
    """Call `save(tmp_dir)` then rename to `out`: the final name only ever holds a whole checkpoint."""
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    save(tmp)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


_MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json")


def _copy_tokenizer(init_dir: Path, out: Path) -> None:
    """The tokenizer files exactly as `make_tiny` wrote them (tokenizer.model included, which
    llama.cpp's converter reads for SentencePiece; a re-save by the fast tokenizer drops it)."""
    from posttrain.tiny import MARKER  # make_tiny's record of its own output; it describes init_dir only

    for f in init_dir.iterdir():
        if f.is_file() and f.name not in _MODEL_FILES and f.name != MARKER:
            shutil.copy2(f, out / f.name)


def _early_saver(step: int, out: Path, init_dir: Path):
    from transformers import TrainerCallback

    class SaveEarly(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == step and state.is_world_process_zero:
                def save(tmp: Path) -> None:
                    model.save_pretrained(tmp, safe_serialization=True)
                    _copy_tokenizer(init_dir, tmp)
                _save_atomic(out, save)
            return control

    return SaveEarly()


def train_demo_model(workdir: str | Path, *, steps: int = DEFAULT_STEPS, seed: int = 0,
                     early_step: int = DEFAULT_EARLY_STEP, callback=None, batch_size: int = 32,
                     learning_rate: float = 3e-3, threads: int | None = None, quiet: bool = False,
                     lora: bool = False) -> DemoCheckpoints:
    """Train the demo model in `workdir`; returns the early and final checkpoint directories
    (with `lora`: the base model's directory and the adapter's).

    `callback` is an extra `transformers.TrainerCallback` (e.g. `PosttrainCallback`) attached to
    the Trainer. Training is seeded and single-process, so a given seed gives the same model.
    `quiet` drops the Trainer's printed log lines and transformers' progress bars.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    if not lora and not 0 < early_step < steps:  # a LoRA saves no early checkpoint
        raise ValueError(f"early_step must lie between 0 and steps ({steps}), not {early_step}")
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads or DEFAULT_THREADS)
    try:
        return _train(workdir, steps=steps, seed=seed, early_step=early_step, callback=callback,
                      batch_size=batch_size, learning_rate=learning_rate, quiet=quiet, lora=lora)
    finally:
        torch.set_num_threads(threads_before)  # the caller's setting, not ours, once training is done


def _train(workdir: Path, *, steps: int, seed: int, early_step: int, callback, batch_size: int,
           learning_rate: float, quiet: bool, lora: bool = False) -> DemoCheckpoints:
    import torch
    from transformers import (
        AutoTokenizer,
        LlamaForCausalLM,
        Trainer,
        TrainingArguments,
        set_seed,
    )
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from transformers.utils import logging as hf_logging

    from posttrain.tiny import make_tiny

    if quiet:
        hf_logging.disable_progress_bar()
    set_seed(seed)

    init_dir = make_tiny(workdir / "init_model", tokenizer="spm", seed=seed)
    tokenizer = AutoTokenizer.from_pretrained(init_dir)
    model = LlamaForCausalLM.from_pretrained(init_dir, dtype=torch.float32)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=LORA_RANK, lora_alpha=2 * LORA_RANK, target_modules="all-linear",
                                                 lora_dropout=0.0, task_type="CAUSAL_LM"))
    train_items, _ = make_items(seed=seed)
    dataset = _TextDataset(training_texts(train_items), tokenizer)

    # A LoRA's baseline is its base: no early checkpoint is saved.
    early_dir, final_dir = (init_dir if lora else workdir / EARLY_DIR), workdir / FINAL_DIR
    args = TrainingArguments(
        output_dir=str(workdir / "trainer"),
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, steps // 20),
        weight_decay=0.0,
        logging_steps=max(1, steps // 10),
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    callbacks = [] if lora else [_early_saver(early_step, early_dir, init_dir)]
    if callback is not None:
        callbacks.append(callback)
    trainer = Trainer(model=model, args=args, train_dataset=dataset,
                      data_collator=_PadCollator(tokenizer.eos_token_id), processing_class=tokenizer,
                      callbacks=callbacks)
    if quiet:
        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
    start = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - start

    def save_final(tmp: Path) -> None:
        trainer.save_model(str(tmp))
        _copy_tokenizer(init_dir, tmp)

    _save_atomic(final_dir, save_final)
    final_loss = _last_loss(trainer)
    log.info("demo model trained: %d steps in %.1f s, mean loss %.3f, last logged loss %s", steps, seconds,
             result.training_loss, f"{final_loss:.3f}" if final_loss is not None else "n/a")
    return DemoCheckpoints(early=early_dir, final=final_dir, train_seconds=seconds, steps=steps,
                           final_loss=final_loss)


def _last_loss(trainer) -> float | None:
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return float(losses[-1]) if losses else None
