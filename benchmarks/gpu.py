"""Evaluation speed on a GPU (issue 18): posttrain's engine against the usual ways to score with torch.

A Llama of TinyLlama's shape (1.0B parameters; 22 layers, 2048 wide, 32 heads, 4 KV heads) with an
8k vocabulary and random weights is made on the spot (float16 safetensors), converted to F16 and
Q4_K_M GGUFs with posttrain's converter, and scored on HellaSwag-shaped requests: items of one
context of 40-90 tokens and 4 endings of 10-40 tokens (random token ids; the tokenizer is not used).

Rows (each prints its time, requests/s, its ratio to the first engine row, and for how many items it
picks the same ending as the float32 torch reference):
  engine    posttrain's llama.cpp engine, F16 and Q4_K_M, at several n_batch / sequences-per-batch /
            n_ubatch / flash-attention settings (all layers offloaded on a GPU build)
  torch     a plain transformers loop as lm-eval's `hf` does it: context + ending concatenated,
            length-sorted, right-padded batches (bf16 on a GPU, float32 on a CPU)
  lm-eval   lm-eval's real `hf` backend (HFLM._loglikelihood_tokens) on the same token ids
  vllm      vLLM's prompt log-probs, where vllm is importable
  limit     llama.cpp's prefill throughput (one sequence, best of the n_batch/n_ubatch settings) over
            the token bill with each context once: what no scorer on this build can beat
and generation: greedy, GSM8K-like (8-shot prompts sharing a prefix), batched in the engine against
the sequential one-prompt-at-a-time loop.

    python benchmarks/gpu.py                  # the issue's size: needs a GPU build of llama.cpp
    python benchmarks/gpu.py --small          # a 6M model and 200 requests: checks the rows on a CPU
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import posttrain  # noqa: F401  loads llama.cpp before numpy and torch (a CUDA build needs that order)

FULL = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
        "num_key_value_heads": 4, "items": 1000, "torch_batch": 128, "gen_prompts": 128, "gen_tokens": 256,
        "gen_sequential": 8, "shot_tokens": 90}
SMALL = {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "items": 50, "torch_batch": 32, "gen_prompts": 8, "gen_tokens": 16,
         "gen_sequential": 2, "shot_tokens": 20}
VOCAB = 8192
# (label, n_batch, n_seq_max, n_ubatch, flash_attn); the first row is the one the others are compared to.
ENGINE_SETTINGS = [("F16", 512, 64, 512, False), ("F16", 2048, 256, 512, False), ("F16", 2048, 256, 2048, False),
                   ("F16", 2048, 256, 512, True), ("Q4_K_M", 2048, 256, 512, False)]


def make_model(out: Path, shape: dict) -> Path:
    """A random Llama of `shape`, float16 safetensors, with make_tiny's SentencePiece tokenizer files
    (the converter pads the GGUF vocabulary up to VOCAB)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from posttrain.tiny import make_tiny

    tok = make_tiny(out.parent / "tokenizer-source", tokenizer="spm")
    config = LlamaConfig(vocab_size=VOCAB, max_position_embeddings=2048, rope_theta=10000.0, bos_token_id=1,
                         eos_token_id=2, tie_word_embeddings=False, initializer_range=0.02,
                         **{k: shape[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                  "num_attention_heads", "num_key_value_heads")})
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.float16)
    model.save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        if (tok / name).exists():
            shutil.copy(tok / name, out / name)
    return out


def make_items(n_items: int, seed: int = 0) -> list[tuple[list[int], list[list[int]]]]:
    """HellaSwag-shaped: a 40-90 token context and 4 endings of 10-40 tokens, random ids (no specials)."""
    rng = random.Random(seed)
    ids = lambda n: [rng.randrange(3, VOCAB) for _ in range(n)]  # noqa: E731
    return [(ids(rng.randint(40, 90)), [ids(rng.randint(10, 40)) for _ in range(4)]) for _ in range(n_items)]


def flat(items) -> list[tuple[list[int], list[int]]]:
    return [(ctx, end) for ctx, ends in items for end in ends]


def token_bill(items) -> tuple[int, int]:
    naive = sum(len(c) + len(e) for c, e in flat(items))
    return naive, sum(len(c) + sum(map(len, ends)) for c, ends in items)


def choices(logprobs: list[float]) -> list[int]:
    return [max(range(4), key=lambda j: logprobs[4 * i + j]) for i in range(len(logprobs) // 4)]


def timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


# ------------------------------------------------------------------------------------------- scorers

def engine_scorer(gguf: Path, n_batch: int, n_seq: int, n_ubatch: int, flash_attn: bool):
    from posttrain.llamacpp import LlamaCppEngine, ScoreRequest

    engine = LlamaCppEngine(gguf, n_batch=n_batch, n_seq_max=n_seq, n_ubatch=n_ubatch, flash_attn=flash_attn)

    def score(requests):
        return [s.logprob for s in engine.score_batched([ScoreRequest(tuple(c), tuple(e)) for c, e in requests])]
    return engine, score


def torch_scorer(model_dir: Path, dtype: str, device: str, batch: int):
    """lm-eval-hf style: context + ending concatenated, longest first, right-padded batches."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).to(device).eval()

    @torch.inference_mode()
    def score(requests):
        order = sorted(range(len(requests)), key=lambda i: -(len(requests[i][0]) + len(requests[i][1])))
        out = [0.0] * len(requests)
        for start in range(0, len(order), batch):
            chunk = order[start:start + batch]
            seqs = [requests[i][0] + requests[i][1] for i in chunk]
            width = max(map(len, seqs)) - 1
            ids = torch.zeros(len(chunk), width, dtype=torch.long)
            mask = torch.zeros(len(chunk), width, dtype=torch.long)
            for row, s in enumerate(seqs):
                ids[row, :len(s) - 1] = torch.tensor(s[:-1])
                mask[row, :len(s) - 1] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            for row, i in enumerate(chunk):
                ctx, end = requests[i]
                rows = logits[row, len(ctx) - 1:len(ctx) - 1 + len(end)].float().log_softmax(-1)
                out[i] = float(rows.gather(1, torch.tensor(end, device=device)[:, None]).sum())
        return out
    return model, score


def lmeval_hf_scorer(model_dir: Path, dtype: str, device: str, batch: int):
    """lm-eval's `hf` backend, from its token-level entry point (its own batching, sorting, caching)."""
    from lm_eval.models.huggingface import HFLM

    hf = HFLM(pretrained=str(model_dir), dtype=dtype, device=device, batch_size=batch)

    def score(requests):
        reqs = [((f"r{i}", ""), list(c), list(e)) for i, (c, e) in enumerate(requests)]
        return [lp for lp, _ in hf._loglikelihood_tokens(reqs, disable_tqdm=True)]
    return hf, score


def vllm_scorer(model_dir: Path, dtype: str):
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=str(model_dir), dtype=dtype, skip_tokenizer_init=True, gpu_memory_utilization=0.5)
    params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)

    def score(requests):
        outs = llm.generate([TokensPrompt(prompt_token_ids=c + e) for c, e in requests], params, use_tqdm=False)
        return [sum(o.prompt_logprobs[len(c) + j][tok].logprob for j, tok in enumerate(e))
                for o, (c, e) in zip(outs, requests)]
    return llm, score


def prefill_limit(gguf: Path) -> tuple[float, str]:
    """llama.cpp's best tokens/s for one long sequence (logits for the last token only)."""
    from posttrain.llamacpp import LlamaCppEngine

    best, where = 0.0, ""
    for n_batch, n_ubatch, fa in [(512, 512, False), (2048, 512, False), (2048, 2048, False), (2048, 512, True)]:
        engine = LlamaCppEngine(gguf, n_batch=n_batch, n_ubatch=n_ubatch, n_seq_max=1, flash_attn=fa)
        toks = [(i * 7919) % (VOCAB - 10) + 5 for i in range(n_batch)]
        for _ in range(3):
            engine._clear()
            _, s = timed(engine._decode, [(t, p, (0,), p == n_batch - 1) for p, t in enumerate(toks)])
            if n_batch / s > best:
                best, where = n_batch / s, f"n_batch {n_batch}, n_ubatch {n_ubatch}, flash_attn {fa}"
        engine.close()
    return best, where


def generation(gguf: Path, shape: dict, n_seq: int) -> list[tuple[str, int, float]]:
    """GSM8K-like: 8 shots shared by every prompt, then a question; greedy, batched vs one at a time."""
    from posttrain.llamacpp import LlamaCppEngine

    rng = random.Random(1)
    prefix = [1] + [rng.randrange(3, VOCAB) for _ in range(8 * shape["shot_tokens"])]
    prompts = [prefix + [rng.randrange(3, VOCAB) for _ in range(rng.randint(30, 60))]
               for _ in range(shape["gen_prompts"])]
    n_new = shape["gen_tokens"]
    engine = LlamaCppEngine(gguf, n_batch=2048, n_seq_max=n_seq, n_ctx=max(2048, n_seq * (len(prompts[0]) + 80 + n_new)))
    engine.generate_greedy_many(prompts[:2], max_tokens=[4, 4], stops=[[], []])  # warm-up
    outs, s = timed(lambda: engine.generate_greedy_many(prompts, max_tokens=[n_new] * len(prompts),
                                                        stops=[[]] * len(prompts), max_parallel=n_seq))
    rows = [(f"batched, {len(prompts)} prompts, up to {n_seq} at once", sum(map(len, outs)), s)]
    few = prompts[:shape["gen_sequential"]]
    t = time.perf_counter()
    made = sum(len(engine.generate_greedy(p, max_tokens=n_new)) for p in few)
    rows.append((f"sequential, {len(few)} prompts one at a time", made, time.perf_counter() - t))
    engine.close()
    return rows


# ------------------------------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="a 6M model and 50 items, for a CPU")
    ap.add_argument("--items", type=int, help="HellaSwag-shaped items (4 requests each)")
    ap.add_argument("--work", type=Path, help="keep the model and GGUFs here (default: a temporary folder)")
    ap.add_argument("--skip", default="", help="comma list of rows to skip: torch,lmeval,vllm,limit,generation")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    shape = dict(SMALL if args.small else FULL)
    if args.items:
        shape["items"] = args.items
    skip = set(filter(None, args.skip.split(",")))

    import torch

    from posttrain import llamacpp
    from posttrain.convert import convert_checkpoint

    gpu_build = llamacpp.gpu_offload_supported()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = "bfloat16" if device == "cuda" else "float32"
    work = args.work or Path(tempfile.mkdtemp(prefix="posttrain-gpu-bench-"))
    model_dir = work / "model"
    if not (model_dir / "config.json").exists():
        (model_dir, s) = timed(make_model, model_dir, shape)
        print(f"model: {sum(p.stat().st_size for p in model_dir.glob('*.safetensors')) / 1e9:.2f} GB fp16 "
              f"in {s:.0f} s", flush=True)
    result = convert_checkpoint(model_dir, work / "gguf", ["f16", "q4_k_m"], verify=False)
    ggufs = {v.quant: v.path for v in result.variants}

    items = make_items(shape["items"])
    requests = flat(items)
    naive, shared = token_bill(items)
    print(f"{len(requests)} requests ({len(items)} items), {naive} tokens naive, {shared} with each context once; "
          f"llama.cpp {'GPU' if gpu_build else 'CPU'} build, torch on {device}", flush=True)

    # The float32 torch reference every row's choices are compared with (not timed).
    ref_model, ref_score = torch_scorer(model_dir, "float32", device, shape["torch_batch"])
    reference = choices(ref_score(requests))
    del ref_model, ref_score  # its memory back before the timed rows

    rows: list[dict] = []

    def run(name: str, make, *make_args):
        try:
            handle, score = make(*make_args)
        except ImportError as e:
            print(f"{name}: skipped ({e})", flush=True)
            return
        score(requests[:16])  # warm-up: kernels, caches, allocator
        logprobs, s = timed(score, requests)
        picked = choices(logprobs)
        row = {"scorer": name, "seconds": s, "requests_per_s": len(requests) / s,
               "agreement": sum(a == b for a, b in zip(picked, reference)) / len(reference)}
        rows.append(row)
        base = rows[0]["requests_per_s"]
        print(f"{name:<62} {s:8.2f} s {row['requests_per_s']:9.0f} req/s {row['requests_per_s'] / base:6.2f}x  "
              f"same ending as float32: {row['agreement']:.1%}", flush=True)
        if hasattr(handle, "close"):
            handle.close()
        del handle, score
        gc.collect()
        if device == "cuda":  # torch's cached blocks would count as used when vLLM sizes its share
            torch.cuda.empty_cache()

    for quant, n_batch, n_seq, n_ubatch, fa in ENGINE_SETTINGS:
        run(f"engine {quant}, n_batch {n_batch}, {n_seq} seq, n_ubatch {n_ubatch}{', flash attn' if fa else ''}",
            engine_scorer, ggufs[quant], n_batch, n_seq, n_ubatch, fa)
    if "torch" not in skip:
        run(f"torch {dtype} loop (transformers), batches of {shape['torch_batch']}", torch_scorer, model_dir, dtype,
            device, shape["torch_batch"])
    if "lmeval" not in skip:
        run(f"lm-eval hf backend, {dtype}, batch {shape['torch_batch']}", lmeval_hf_scorer, model_dir, dtype, device,
            shape["torch_batch"])
    if "vllm" not in skip:
        run(f"vllm {dtype}", vllm_scorer, model_dir, dtype)

    figures: dict = {"requests": len(requests), "tokens_naive": naive, "tokens_shared": shared, "rows": rows,
                     "gpu_build": gpu_build, "torch_device": device}
    if "limit" not in skip:
        tps, where = prefill_limit(ggufs["F16"])
        limit = len(requests) * tps / shared
        figures["prefill"] = {"tokens_per_s": tps, "settings": where, "requests_per_s_limit": limit}
        best = max(r["requests_per_s"] for r in rows if r["scorer"].startswith("engine"))
        print(f"llama.cpp prefill, F16, best ({where}): {tps:.0f} tokens/s -> at most {limit:.0f} req/s on these "
              f"requests; the best engine row reaches {best / limit:.0%} of it", flush=True)
    if "generation" not in skip:
        figures["generation"] = []
        for label, made, s in generation(ggufs["Q4_K_M"], shape, 64):
            figures["generation"].append({"row": label, "tokens": made, "seconds": s, "tokens_per_s": made / s})
            print(f"generation Q4_K_M, {label}: {made} tokens in {s:.2f} s = {made / s:.0f} tok/s", flush=True)
        batched, sequential = figures["generation"]
        print(f"batched / sequential: {batched['tokens_per_s'] / sequential['tokens_per_s']:.1f}x", flush=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return None


if __name__ == "__main__":
    sys.exit(main())
