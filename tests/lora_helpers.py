"""Train a real LoRA on a tiny base with PEFT and transformers' Trainer (a few steps, seconds)."""

from __future__ import annotations

from pathlib import Path

from posttrain.tiny import corpus


def train_lora(base: Path, out: Path, *, steps: int = 6, rank: int = 8, seed: int = 0, use_dora: bool = False,
               targets: tuple[str, ...] = ("q_proj", "v_proj", "down_proj")) -> Path:
    """`out` becomes what a LoRA fine-tune leaves: adapter_config.json + adapter_model.safetensors."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(targets),
                                             lora_dropout=0.0, use_dora=use_dora, task_type="CAUSAL_LM"))
    rows = []
    for line in corpus(64, seed=seed + 7):
        ids = tok(line)["input_ids"]
        rows.append({"input_ids": ids, "labels": ids, "attention_mask": [1] * len(ids)})
    args = TrainingArguments(output_dir=str(out.parent / f".{out.name}-trainer"), max_steps=steps,
                             per_device_train_batch_size=1, learning_rate=2e-2, report_to=[], save_strategy="no",
                             logging_strategy="no", use_cpu=True, seed=seed, disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=rows).train()
    model.save_pretrained(out)
    return out
