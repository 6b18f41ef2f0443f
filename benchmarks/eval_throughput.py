"""Throughput of the in-process `posttrain-llamacpp` backend against lm-eval's usual routes.

Same GGUF, same items (N HellaSwag + K per MMLU subject, built by lm-eval's own task objects from
offline YAMLs over local data files), scored by:
  ours   posttrain-llamacpp (batched, in-process llama.cpp)
  hf     lm-eval's `hf` backend on the source Hugging Face checkpoint (the reference), float32
  server lm-eval's `gguf` backend against llama-cpp-python's server (--logits_all true); very slow,
         so only a small subset is run and its time extrapolated (optional: --server-requests 0 skips)

First the machine profile the run uses (`posttrain.llamacpp`: measured once per CPU and build), and
at the end one table: ours with the safe settings (every CPU, micro-batch 256, no extra buffer
types: posttrain before the profile), ours with the profile's settings (the default now), ours on
the BF16 GGUF (`--bf16`, the profile's reference type where BF16 is faster), lm-eval `hf`, and
llama.cpp's prefill limit, each with its ratio to `hf` and its per-item agreement with `hf`.

Printed: wall times and ratios, tokens evaluated, per-item agreement of the chosen answer with `hf`,
llama.cpp's own prefill throughput for this GGUF (a 512-token batch, last-token logits only), the
token bill with each distinct context counted once, bill / throughput = the physical limit of this
evaluation on this machine, and how close `ours` comes to it. Then the generation row: GSM8K
5-shot (--gsm8k N questions), ours against hf, with the share of identical generated texts.
--also GGUF times other variants of the same model (Q8_0, Q4_K_M) on the same items.

    python benchmarks/eval_throughput.py --gguf smollm2-f16.gguf --hf /tmp/smollm2 \\
        --data /work/shared/data/benchmarks --hellaswag 200 --mmlu-per-subject 2 --gsm8k 30 \\
        --bf16 smollm2-BF16.gguf --also smollm2-Q8_0.gguf --also smollm2-Q4_K_M.gguf
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_requests(data: Path, n_hellaswag: int, mmlu_per_subject: int, work: Path):
    """lm-eval Instances for the selected items, through the official task configs."""
    from lm_eval.tasks import TaskManager, get_task_dict

    from posttrain.evaluate._tasks import write_offline_tasks

    # The offline task writer expects `hellaswag/hellaswag_val.jsonl`; point it at the shared file.
    layout = work / "data"
    (layout / "hellaswag").mkdir(parents=True, exist_ok=True)
    link = layout / "hellaswag" / "hellaswag_val.jsonl"
    if not link.exists():
        link.symlink_to(data / "hellaswag" / "hellaswag_val_subset1000_official_schema.jsonl")
    if not (layout / "mmlu").exists():
        (layout / "mmlu").symlink_to(data / "mmlu")
    names = write_offline_tasks(["hellaswag", "mmlu"], layout, work / "tasks")
    leaves = [n for n in names if n != "mmlu"]
    tm = TaskManager(include_path=str(work / "tasks"), include_defaults=False)
    tasks = get_task_dict(leaves, tm)
    instances = []
    for name, task in tasks.items():
        limit = n_hellaswag if name == "hellaswag" else mmlu_per_subject
        if not limit:
            continue
        task.build_all_requests(limit=limit, rank=0, world_size=1)
        instances.extend(task.instances)
    return instances


def build_gsm8k_requests(data: Path, n_items: int, work: Path):
    """lm-eval generate_until Instances for the first `n_items` GSM8K test questions, 5-shot (the
    task's default: five training examples drawn per question, so prompts share no few-shot prefix)."""
    from lm_eval.tasks import TaskManager, get_task_dict

    from posttrain.evaluate._tasks import write_offline_tasks

    write_offline_tasks(["gsm8k"], data, work / "gsm8k-tasks")
    tm = TaskManager(include_path=str(work / "gsm8k-tasks"), include_defaults=False)
    task = get_task_dict(["gsm8k"], tm)["gsm8k"]
    task.build_all_requests(limit=n_items, rank=0, world_size=1)
    return list(task.instances)


def chosen(instances, results) -> dict[tuple[str, int], int]:
    """Per item (task, doc_id): the index of the highest-scoring choice (the `acc` decision)."""
    best: dict[tuple[str, int], tuple[float, int]] = {}
    for inst, (lp, _) in zip(instances, results):
        key = (inst.task_name, inst.doc_id)
        if key not in best or lp > best[key][0]:
            best[key] = (lp, inst.idx)
    return {k: v[1] for k, v in best.items()}


def agreement(a: dict, b: dict) -> float:
    return sum(a[k] == b[k] for k in a) / len(a)


def token_bill(lm, instances) -> tuple[int, int]:
    """(naive, shared): tokens of context + ending per request, and with each distinct context once."""
    naive = 0
    contexts: dict[tuple[int, ...], int] = {}
    endings = 0
    for inst in instances:
        ctx, cont = lm._encode_pair(*inst.args)
        naive += len(ctx) + len(cont)
        contexts[tuple(ctx)] = len(ctx)
        endings += len(cont)
    return naive, sum(contexts.values()) + endings


def prefill_throughput(lm, n_tokens: int = 512, repeats: int = 3) -> tuple[float, float]:
    """llama.cpp tokens per wall second and per CPU second (best of `repeats`) for one n_tokens
    batch of a single sequence, last-token logits only."""
    engine = lm.engine
    toks = [(i * 7919) % (engine.n_vocab - 10) + 5 for i in range(n_tokens)]
    best_wall = best_cpu = 0.0
    for _ in range(repeats):
        engine._clear()
        t, c = time.perf_counter(), time.process_time()
        engine._decode([(tok, p, (0,), p == n_tokens - 1) for p, tok in enumerate(toks)])
        best_wall = max(best_wall, n_tokens / (time.perf_counter() - t))
        best_cpu = max(best_cpu, n_tokens / (time.process_time() - c))
    engine._clear()
    engine.tokens_evaluated -= repeats * n_tokens
    return best_wall, best_cpu


def run_ours(gguf: Path, instances, **model_args):
    from posttrain.evaluate._llamacpp_lm import LlamaCppLM

    lm = LlamaCppLM(model=str(gguf), **model_args)
    t, c = time.perf_counter(), time.process_time()
    res = lm.loglikelihood(instances, disable_tqdm=True)
    return lm, res, time.perf_counter() - t, time.process_time() - c


def run_hf(ckpt: Path, instances, batch_size: int, method: str = "loglikelihood"):
    from lm_eval.models.huggingface import HFLM

    hf = HFLM(pretrained=str(ckpt), dtype="float32", device="cpu", batch_size=batch_size)
    t, c = time.perf_counter(), time.process_time()
    res = getattr(hf, method)(instances, disable_tqdm=True)
    return res, time.perf_counter() - t, time.process_time() - c


def run_ours_generation(gguf: Path, instances, **model_args):
    from posttrain.evaluate._llamacpp_lm import LlamaCppLM

    lm = LlamaCppLM(model=str(gguf), **model_args)
    t, c = time.perf_counter(), time.process_time()
    res = lm.generate_until(instances, disable_tqdm=True)
    return res, time.perf_counter() - t, time.process_time() - c


def generation_rows(args, figures: dict) -> None:
    """GSM8K 5-shot: ours on --gguf (and each --also GGUF) against hf on the same questions, with the
    share of identical generated texts."""
    with tempfile.TemporaryDirectory() as tmp:
        gen = build_gsm8k_requests(args.data, args.gsm8k, Path(tmp))
    print(f"GSM8K: {len(gen)} questions, 5-shot, greedy")
    ours_text, t_g, cpu_g = run_ours_generation(args.gguf, gen, n_threads=args.threads)
    row = figures.setdefault("gsm8k", {"items": len(gen)})
    row.update(ours_s=t_g, ours_cpu_s=cpu_g)
    print(f"  ours ({args.gguf.name}): {t_g:.1f} s wall / {cpu_g:.1f} CPU-s")
    for extra in args.also:
        text_x, t_x, cpu_x = run_ours_generation(extra, gen, n_threads=args.threads)
        same = sum(a == b for a, b in zip(text_x, ours_text))
        row.setdefault("also", {})[extra.name] = {"s": t_x, "cpu_s": cpu_x, "same_text_as_reference": same}
        print(f"  ours ({extra.name}): {t_x:.1f} s wall / {cpu_x:.1f} CPU-s = {t_g / t_x:.2f}x the reference; "
              f"same text as the reference on {same} of {len(gen)}")
    if not args.skip_hf:
        ref, t_hf, cpu_hf = run_hf(args.hf, gen, args.hf_batch_size, "generate_until")
        same = sum(a == b for a, b in zip(ours_text, ref))
        row.update(hf_s=t_hf, hf_cpu_s=cpu_hf, speedup_vs_hf=t_hf / t_g, same_text_as_hf=same)
        print(f"  hf (float32, batch {args.hf_batch_size}): {t_hf:.1f} s wall / {cpu_hf:.1f} CPU-s; ours is "
              f"{t_hf / t_g:.2f}x faster by wall time, {cpu_hf / cpu_g:.2f}x by CPU time; "
              f"identical text on {same} of {len(gen)}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_server(gguf: Path, instances, n_threads: int):
    """lm-eval's `gguf` backend against llama-cpp-python's server; returns (results, seconds)."""
    import httpx
    from lm_eval.models.gguf import GGUFLM

    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
         "--port", str(port), "--logits_all", "true", "--n_threads", str(n_threads), "--n_ctx", "2048"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"{base}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        lm = GGUFLM(base_url=base)
        t = time.perf_counter()
        res = lm.loglikelihood(instances, disable_tqdm=True)
        return res, time.perf_counter() - t
    finally:
        proc.terminate()
        proc.wait(timeout=30)


SAFE_SETTINGS = {"POSTTRAIN_LLAMA_EXTRA_BUFTS": "0", "POSTTRAIN_LLAMA_UBATCH": "256"}


def run_with_settings(env: dict[str, str], fn, *args, **kwargs):
    """`fn(...)` with these environment variables set (the engine reads its settings at each load)."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return fn(*args, **kwargs)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def describe_profile() -> str:
    from posttrain import llamacpp
    from posttrain.llamacpp import _settings

    profile = llamacpp.ensure_profile(say=print)
    if profile is None:
        return "machine profile: off (POSTTRAIN_MACHINE_PROFILE=0): the safe settings"
    busy = profile.conditions is not None and profile.conditions.busy
    speedup = profile.speedup("BF16")
    return (f"machine profile: {profile.cpu}; extra CPU buffer types {'on' if _settings.extra_bufts_allowed() else 'off'} "
            f"({profile.extra_bufts_detail.split(':')[0]}); {_settings.best_threads()} threads; n_ubatch "
            f"{_settings.n_ubatch()}; faster reference {_settings.reference_type()}"
            + (f" (BF16 {speedup:.2f}x F16 on the probe)" if speedup else "")
            + ("; measured while busy: the safe settings" if busy else "")
            + (f"; fallback: {profile.fallback}" if profile.fallback else ""))


def summary_table(rows: list[tuple[str, float, float | None]], t_hf: float | None, limit: float,
                  kind: str = "F16") -> None:
    """One table: each route's wall time, its speed against hf, its agreement with hf, % of the limit."""
    print()
    print(f"| route | wall s | x hf | same answer as hf | % of llama.cpp's prefill limit ({limit:.1f} s) |")
    print("|---|---|---|---|---|")
    for name, seconds, agree in rows:
        ratio = f"{t_hf / seconds:.2f}x" if t_hf else "-"
        same = f"{100 * agree:.1f} %" if agree is not None else "-"
        print(f"| {name} | {seconds:.1f} | {ratio} | {same} | {100 * limit / seconds:.0f} % |")
    if t_hf:
        print(f"| lm-eval hf, float32 | {t_hf:.1f} | 1.00x | - | {100 * limit / t_hf:.0f} % |")
    print(f"| llama.cpp prefill limit ({kind}) | {limit:.1f} | {t_hf / limit:.2f}x | - | 100 % |" if t_hf else
          f"| llama.cpp prefill limit ({kind}) | {limit:.1f} | - | - | 100 % |")


def gguf_type(path: Path) -> str:
    """The type in a GGUF's usual file name (`model-BF16.gguf` → BF16), for the table's labels."""
    import re

    found = re.search(r"-([A-Za-z0-9_]+)\.gguf$", path.name)
    return found.group(1).upper() if found else "GGUF"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", type=Path, required=True)
    ap.add_argument("--hf", type=Path, required=True, help="the Hugging Face checkpoint the GGUF came from")
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data/benchmarks"))
    ap.add_argument("--hellaswag", type=int, default=200)
    ap.add_argument("--mmlu-per-subject", type=int, default=2)
    ap.add_argument("--hf-batch-size", type=int, default=8)
    ap.add_argument("--server-requests", type=int, default=20, help="requests for the server route (0: skip)")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--gsm8k", type=int, default=30, help="GSM8K questions for the generation row (0: skip)")
    ap.add_argument("--also", type=Path, action="append", default=[], metavar="GGUF",
                    help="also time this GGUF (e.g. the Q8_0 and Q4_K_M of the same model) on the same items, "
                         "with its agreement with the --gguf reference (repeatable)")
    ap.add_argument("--bf16", type=Path, help="the BF16 GGUF of the same model: a row of its own in the table")
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: the machine profile's)")
    ap.add_argument("--sequential", action="store_true", help="also time the one-request-per-decode path")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--try", dest="settings", action="append", default=[], metavar="K=V[,K=V]",
                    help="also time ours with these engine settings (e.g. n_batch=2048,n_ubatch=2048,n_seq_max=256), "
                         "each against the default row: time ratio and agreement of the chosen answer (repeatable)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        instances = build_requests(args.data, args.hellaswag, args.mmlu_per_subject, Path(tmp))
    n_items = len({(i.task_name, i.doc_id) for i in instances})
    load = os.getloadavg()
    print(f"items {n_items}, loglikelihood requests {len(instances)}; load average {load[0]:.2f} on {os.cpu_count()} cores")

    figures: dict = {"items": n_items, "requests": len(instances), "loadavg_start": load[0]}
    profile_line = describe_profile()
    print(profile_line)
    figures["machine_profile"] = profile_line
    from posttrain.evaluate._llamacpp_lm import LlamaCppLM

    lm0 = LlamaCppLM(model=str(args.gguf), n_threads=args.threads)
    tps_before = prefill_throughput(lm0)
    del lm0
    lm, ours, t_ours, cpu_ours = run_ours(args.gguf, instances, n_threads=args.threads)
    tps_after = prefill_throughput(lm)
    naive, bill = token_bill(lm, instances)
    # Other people's work shares these cores: wall-clock throughput moves with their load, so the
    # limit is computed both from wall time (prefill measured before and after, averaged) and from
    # CPU time (which the load barely moves).
    tps = (tps_before[0] + tps_after[0]) / 2
    tps_cpu = (tps_before[1] + tps_after[1]) / 2
    limit, limit_cpu = bill / tps, bill / tps_cpu
    figures.update(ours_s=t_ours, ours_cpu_s=cpu_ours, ours_tokens=lm.tokens_evaluated, naive_bill=naive, bill=bill,
                   prefill_tps=tps, prefill_tps_per_cpu_s=tps_cpu, limit_s=limit, limit_cpu_s=limit_cpu,
                   pct_of_limit=100 * limit / t_ours, pct_of_limit_cpu=100 * limit_cpu / cpu_ours)
    print(f"token bill: {naive} naive (context + ending per request), {bill} with each distinct context once")
    print(f"llama.cpp prefill (512-token batch): {tps_before[0]:.0f} / {tps_after[0]:.0f} tokens/s before/after, "
          f"{tps_cpu:.0f} tokens per CPU-second -> physical limit {limit:.1f} s wall, {limit_cpu:.1f} CPU-s")
    print(f"ours (posttrain-llamacpp, batched): {t_ours:.1f} s wall / {cpu_ours:.1f} CPU-s, {lm.tokens_evaluated} tokens "
          f"evaluated -> {100 * limit / t_ours:.0f}% of the limit by wall time, {100 * limit_cpu / cpu_ours:.0f}% by CPU time")
    ours_choice = chosen(instances, ours)
    kind = gguf_type(args.gguf)
    table_rows: list[tuple[str, object, float]] = [(f"ours, {kind}, profile settings (the default)", ours, t_ours)]
    from posttrain import llamacpp

    safe = {**SAFE_SETTINGS, "POSTTRAIN_LLAMA_THREADS": str(llamacpp.cpu_threads())}
    _, res_safe, t_safe, _ = run_with_settings(safe, run_ours, args.gguf, instances,
                                               n_threads=args.threads)
    figures.update(safe_s=t_safe)
    print(f"ours with the safe settings (every CPU, n_ubatch 256, no extra buffer types): {t_safe:.1f} s; the profile's "
          f"settings are {t_safe / t_ours:.2f}x as fast")
    table_rows.insert(0, (f"ours, {kind}, safe settings (before the profile)", res_safe, t_safe))
    if args.bf16:
        _, res_bf16, t_bf16, _ = run_ours(args.bf16, instances, n_threads=args.threads)
        figures.update(bf16_s=t_bf16, bf16_agreement_with_f16=agreement(chosen(instances, res_bf16), ours_choice))
        print(f"ours on {args.bf16.name}: {t_bf16:.1f} s = {t_ours / t_bf16:.2f}x F16; chosen answer = F16's on "
              f"{100 * figures['bf16_agreement_with_f16']:.1f} %")
        table_rows.append(("ours, BF16, profile settings", res_bf16, t_bf16))

    for setting in args.settings:
        extra = dict(kv.split("=", 1) for kv in setting.split(",") if kv)
        lm_x, res_x, t_x, cpu_x = run_ours(args.gguf, instances, n_threads=args.threads, **extra)
        agree_x = agreement(chosen(instances, res_x), ours_choice)
        dmax_x = max(abs(a[0] - b[0]) for a, b in zip(res_x, ours))
        figures.setdefault("settings", {})[setting] = {"s": t_x, "cpu_s": cpu_x, "speedup": t_ours / t_x,
                                                       "agreement": agree_x, "max_abs_dlogprob": dmax_x}
        print(f"ours with {setting}: {t_x:.1f} s wall / {cpu_x:.1f} CPU-s = {t_ours / t_x:.2f}x the default "
              f"({cpu_ours / cpu_x:.2f}x by CPU time); chosen answer agrees on {100 * agree_x:.1f}% of items, "
              f"max |dlogprob| {dmax_x:.2e}")
        del lm_x

    for extra in args.also:
        lm_x, res_x, t_x, cpu_x = run_ours(extra, instances, n_threads=args.threads)
        agree_x = agreement(chosen(instances, res_x), ours_choice)
        tps_x = prefill_throughput(lm_x)
        figures.setdefault("also", {})[extra.name] = {"s": t_x, "cpu_s": cpu_x, "speedup": t_ours / t_x,
                                                      "agreement_with_reference": agree_x,
                                                      "prefill_tps": tps_x[0], "prefill_tps_per_cpu_s": tps_x[1]}
        print(f"ours on {extra.name}: {t_x:.1f} s wall / {cpu_x:.1f} CPU-s = {t_ours / t_x:.2f}x the reference "
              f"({cpu_ours / cpu_x:.2f}x by CPU time); chosen answer agrees with the reference on {100 * agree_x:.1f}% of items; "
              f"prefill {tps_x[0]:.0f} tokens/s, {tps_x[1]:.0f} per CPU-second")
        del lm_x

    if args.sequential:
        lm_seq, seq, t_seq, _ = run_ours(args.gguf, instances, batched=False, n_threads=args.threads)
        figures.update(sequential_s=t_seq, sequential_tokens=lm_seq.tokens_evaluated)
        print(f"ours, one request per decode with prefix reuse: {t_seq:.1f} s ({t_seq / t_ours:.1f}x the batched path), "
              f"max |dlogprob| vs batched {max(abs(a[0] - b[0]) for a, b in zip(seq, ours)):.2e}")

    if not args.skip_hf:
        ref, t_hf, cpu_hf = run_hf(args.hf, instances, args.hf_batch_size)
        hf_choice = chosen(instances, ref)
        agree = agreement(ours_choice, hf_choice)
        dmax = max(abs(a[0] - b[0]) for a, b in zip(ours, ref))
        figures.update(hf_s=t_hf, hf_cpu_s=cpu_hf, speedup_vs_hf_cpu=cpu_hf / cpu_ours, hf_agreement=agree, hf_max_abs_dlogprob=dmax, speedup_vs_hf=t_hf / t_ours)
        print(f"hf backend (float32, batch {args.hf_batch_size}): {t_hf:.1f} s wall / {cpu_hf:.1f} CPU-s; ours is "
              f"{t_hf / t_ours:.1f}x faster by wall time, {cpu_hf / cpu_ours:.1f}x by CPU time; "
              f"chosen answer agrees on {100 * agree:.1f}% of items; max |dlogprob| {dmax:.3f}")
        by_task: dict[str, list[bool]] = defaultdict(list)
        for k in ours_choice:
            by_task["hellaswag" if k[0] == "hellaswag" else "mmlu"].append(ours_choice[k] == hf_choice[k])
        for task, flags in sorted(by_task.items()):
            print(f"  {task}: agreement {100 * sum(flags) / len(flags):.1f}% of {len(flags)} items")

    hf_choice_all = chosen(instances, ref) if not args.skip_hf else None
    summary_table([(name, t, agreement(chosen(instances, res), hf_choice_all) if hf_choice_all else None)
                   for name, res, t in table_rows], None if args.skip_hf else t_hf, limit, kind)
    figures["table"] = [{"route": name, "s": t} for name, _, t in table_rows]

    if args.server_requests:
        subset = instances[: args.server_requests]
        srv, t_srv = run_server(args.gguf, subset, lm.engine.n_threads)
        # Its speed is the server's; only wall time is measurable from here.
        per_req = t_srv / len(subset)
        est = per_req * len(instances)
        d = max(abs(a[0] - b[0]) for a, b in zip(srv, ours[: len(subset)]))
        figures.update(server_s_per_request=per_req, server_estimated_s=est, speedup_vs_server=est / t_ours,
                       server_max_abs_dlogprob_vs_ours=d)
        print(f"gguf backend vs llama-cpp-python server: {per_req:.2f} s/request on {len(subset)} requests "
              f"-> ~{est / 60:.1f} min extrapolated for all {len(instances)}; ours is ~{est / t_ours:.0f}x faster; "
              f"max |dlogprob| vs ours on the subset {d:.2f}")

    if args.gsm8k:
        generation_rows(args, figures)

    figures["loadavg_end"] = os.getloadavg()[0]
    print(f"load average at the end {figures['loadavg_end']:.2f} (other work on this machine shares its cores)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
