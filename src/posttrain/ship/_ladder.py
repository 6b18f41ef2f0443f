"""The ladder, end to end: convert once, evaluate every variant, measure quality and speed, decide.

Each part reuses a stage: variants come from `posttrain.convert` (content-addressed: a rerun with the
same checkpoint and toolchain makes nothing; Q8_0 is quantized from F16 so the converter starts once),
task scores from `posttrain.evaluate` (paired items, cached in the store), pairing from
`posttrain.compare`. The measurements that load llama.cpp for a long time run in child processes.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from posttrain.contracts import SHIP_SCHEMA
from posttrain.errors import PosttrainError
from posttrain.ship._child import run_child
from posttrain.ship._document import write_ship
from posttrain.ship._quality import DEFAULT_N_CTX
from posttrain.ship._text import read_text, text_from_items
from posttrain.ship._verdict import DEFAULT_MARGIN_POINTS, DEFAULT_MAX_KLD, Rung, decide
from posttrain.store import Store, utcnow

SCHEMA = SHIP_SCHEMA
DEFAULT_LADDER = ("F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "IQ4_XS", "Q3_K_M")
# Text read for the quality measurement: 40 chunks of 512, ≥ 10,000 scored tokens (half of each chunk).
DEFAULT_MAX_TOKENS = 20_480
# The quality pass's scratch folder in --out: this prefix, then the owning process's id.
SCRATCH_PREFIX = ".posttrain-ship-scratch-"
# Which per-item score stands for a task when lm-eval reports several (HellaSwag: acc and acc_norm).
_METRIC_ORDER = ("acc_norm", "acc", "exact_match")
_FILTER_ORDER = ("none", "strict-match", "flexible-extract")

Say = Callable[[str], None]


def _primary(keys: list[tuple[str, str, str]]) -> dict[str, tuple[str, str, str]]:
    """One (task, filter, metric) per task: the headline score lm-eval users quote."""
    def rank(key):
        _, flt, metric = key
        return (_METRIC_ORDER.index(metric) if metric in _METRIC_ORDER else len(_METRIC_ORDER),
                _FILTER_ORDER.index(flt) if flt in _FILTER_ORDER else len(_FILTER_ORDER), flt, metric)
    out: dict[str, tuple[str, str, str]] = {}
    for key in sorted(keys, key=rank):
        out.setdefault(key[0], key)
    return out


def paired_diffs(f16_items, variant_items) -> dict[str, dict]:
    """Per task: the per-item differences variant − F16 on the headline metric, and the items' clusters."""
    from posttrain.compare import pair_items

    paired, _ = pair_items(variant_items, f16_items)
    out = {}
    for task, key in _primary(list(paired)).items():
        ps = paired[key]
        out[task] = {"metric": key[2], "filter": key[1], "n": len(ps.pairs),
                     "d": np.array([a.value - b.value for a, b in ps.pairs], dtype=float),
                     "clusters": (np.array([b.cluster for _, b in ps.pairs], dtype=object)
                                  if all(b.cluster for _, b in ps.pairs) else None),
                     "f16_mean": float(np.mean([b.value for _, b in ps.pairs])) if ps.pairs else None}
    return out


def run_ladder(checkpoint: str | Path, *, out_dir: Path, store: Store, tasks: list[str],
               data_dir: Path | None = None, quants: list[str] | str = DEFAULT_LADDER,
               text: str | Path | None = None, margin_points: float = DEFAULT_MARGIN_POINTS, alpha: float = 0.05,
               max_kld: float | None = DEFAULT_MAX_KLD, n_ctx: int = DEFAULT_N_CTX,
               max_tokens: int = DEFAULT_MAX_TOKENS, limit: int | None = None, per_subject: int | None = None, seed: int = 0,
               speed: bool = True, speed_reps: int = 3, n_gpu_layers: int | None = None,
               model_name: str | None = None, say: Say | None = None, task_paths: list[Path] | None = None,
               gguf_dir: Path | None = None, verify: bool = False, imatrix_text: str | Path | None = None,
               imatrix_chunks: int | None = None, checkpoint_sha256: str | None = None,
               evaluations: dict[str, tuple[int, ...]] | None = None) -> dict:
    """Measure the ladder and return the ship document (schema posttrain.ship/1), also written to
    `out_dir/ship.json`. `gguf_dir`: where the variants live (default `out_dir/gguf`); pass the same
    folder as `posttrain convert` to share its files. `verify`: also run convert's probe-text check
    (and F16 against the HF model); off by default because the ladder's own KLD on thousands of
    tokens of real text checks every variant far more closely, and the conversion should cost no more
    than the tools run by hand (each file still has to read back and load before it is kept).
    `imatrix_text`: FILE|DIR of text for an importance matrix (llama.cpp's llama-imatrix on F16); every
    K/IQ rung then gets a second variant quantized with it, `<QUANT>-imatrix`, measured like the others.
    `imatrix_chunks`: chunks of `n_ctx` tokens it reads at most (default 100).
    Inside a pipeline run the ladder takes what the run's steps already have: `checkpoint_sha256`
    (detect's hash: the weights are not read again) and `evaluations` (quant → the store's eval ids
    of the evaluate step: those variants are not evaluated again, not even looked up by cache key)."""
    from posttrain.convert import (
        IMATRIX_SUFFIX,
        NEEDS_IMATRIX,
        convert_checkpoint,
        parse_quant_list,
        takes_imatrix,
    )
    from posttrain.evaluate import evaluate

    say = say or (lambda text: None)
    if margin_points <= 0 or not math.isfinite(margin_points):
        raise PosttrainError(f"--margin must be a positive number of points, not {margin_points}")
    out_dir = Path(out_dir)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    say("converting")
    wanted = parse_quant_list(quants)
    if imatrix_text is not None:
        # IQ1_S, IQ2_XXS… cannot be made without a matrix: with one, they are made only with it.
        wanted = [q for q in wanted if q not in NEEDS_IMATRIX]
    gguf_dir = gguf_dir or out_dir / "gguf"
    converted = convert_checkpoint(checkpoint, gguf_dir, wanted, model_name=model_name,
                                   n_gpu_layers=n_gpu_layers, quantize_q8_0=True, verify=verify,
                                   checkpoint_sha256=checkpoint_sha256,
                                   progress=lambda variant, status: say(f"{variant}: {status}"))
    variants = list(converted.variants)
    seconds["convert"] = time.perf_counter() - started
    imatrix_doc = None
    if imatrix_text is not None:
        started = time.perf_counter()
        with_matrix = [q for q in parse_quant_list(quants) if takes_imatrix(q)]
        extra, imatrix_doc = _imatrix_variants(converted, with_matrix, imatrix_text, gguf_dir, n_ctx,
                                               imatrix_chunks, say)
        variants += extra
        seconds["imatrix"] = time.perf_counter() - started
    paths = {v.quant: v.path for v in variants}

    items: dict[str, list] = {}
    if tasks:
        from posttrain.compare import items_for_evals

        started = time.perf_counter()
        for quant, path in paths.items():
            ids = (evaluations or {}).get(quant)
            if ids is None:
                say(f"{quant}: evaluating {', '.join(tasks)}")
                results = evaluate(path, tasks, data_dir=data_dir, limit=limit, per_subject=per_subject, seed=seed,
                                   store=store, out_dir=out_dir / "evals" / quant, n_gpu_layers=n_gpu_layers,
                                   task_paths=task_paths)
                ids = tuple(r.eval_id for r in results)
            items[quant] = items_for_evals(store, list(ids))[1]
        seconds["evaluate"] = time.perf_counter() - started

    started = time.perf_counter()
    if text is not None:
        held_out, files = read_text(text, max_chars=max_tokens * 16)
        text_source = {"kind": "user", "files": files}
    else:
        held_out = text_from_items(items.get("F16", []))
        text_source = {"kind": "task documents", "files": [],
                       "note": "no --text given: measured on the evaluation tasks' own documents"}
        if not held_out:
            raise PosttrainError("no held-out text: --text was not given and there are no task documents to use",
                                 remedy="pass --text FILE|DIR (for example a slice of the fine-tuning data)")
    quality = None
    others = {q: str(p) for q, p in paths.items() if q != "F16"}
    if others:
        say(f"quality on held-out text ({len(others)} variants against F16, chunks of {n_ctx})")
        # Scratch beside the results, not in /tmp (often a RAM disk): F16's stored rows are ~2 bytes × vocabulary
        # per scored token. The folder is this process's, so it goes even when the child is killed.
        out_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_scratch(out_dir)
        with tempfile.TemporaryDirectory(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=out_dir) as tmp:
            text_file = Path(tmp) / "text.txt"
            text_file.write_text(held_out, encoding="utf-8")
            quality = run_child({"kind": "quality", "base": str(paths["F16"]), "variants": others,
                                 "text_file": str(text_file), "n_ctx": n_ctx, "max_chunks": max(1, max_tokens // n_ctx),
                                 "n_gpu_layers": n_gpu_layers, "scratch_dir": tmp}, out_dir / "logs" / "quality.log")
    seconds["quality"] = time.perf_counter() - started

    speeds: dict[str, dict] = {}
    if speed:
        started = time.perf_counter()
        say(f"speed: pp512 and tg128, {speed_reps} repetitions per variant")
        speeds = run_child({"kind": "speed", "paths": {q: str(p) for q, p in paths.items()}, "reps": speed_reps,
                            "n_gpu_layers": n_gpu_layers}, out_dir / "logs" / "speed.log")
        seconds["speed"] = time.perf_counter() - started

    rungs, tasks_doc = [], {}
    sizes = {v.quant: v.size_bytes for v in variants}
    for v in variants:
        if v.quant == "F16":
            continue
        sp = speeds.get(v.quant, {})
        q = (quality or {}).get("variants", {}).get(v.quant, {})
        pairs = paired_diffs(items["F16"], items[v.quant]) if v.quant in items else {}
        for task, p in pairs.items():
            tasks_doc.setdefault(task, {"metric": p["metric"], "filter": p["filter"], "f16_mean": p["f16_mean"]})
        twin = sizes.get(v.quant.removesuffix(IMATRIX_SUFFIX), v.size_bytes)
        rungs.append(Rung(v.quant, v.size_bytes, sp.get("bits_per_weight"), sp.get("tg_tok_s"), q.get("kld_mean"),
                          diffs={t: p["d"] for t, p in pairs.items()},
                          clusters={t: p["clusters"] for t, p in pairs.items()}, order_size=twin,
                          kld_se=q.get("kld_se"), speed_busy=bool((sp.get("conditions") or {}).get("busy"))))
    verdict = decide(rungs, margin=margin_points / 100, alpha=alpha, max_kld=max_kld)
    doc = {
        "schema": SCHEMA, "created_at": utcnow(), "checkpoint": str(Path(checkpoint).resolve()),
        "model_name": converted.model_name, "manifest": str(converted.manifest_path), "toolchain": converted.toolchain,
        "text": {**text_source, "n_ctx": n_ctx, "max_tokens": max_tokens,
                 **({k: quality[k] for k in ("n_tokens_text", "n_chunks", "n_scored", "add_bos")} if quality else {})},
        "tasks": tasks_doc, "imatrix": imatrix_doc,
        "variants": [{"quant": v.quant, "file": v.path.name, "sha256": v.sha256, "size_bytes": v.size_bytes,
                      "made_by": v.made_by, "imatrix": v.quant.endswith(IMATRIX_SUFFIX), "speed": speeds.get(v.quant),
                      "quality": (quality or {}).get("variants", {}).get(v.quant)} for v in variants],
        "f16_ppl": (quality or {}).get("f16", {}).get("ppl"),
        "verdict": verdict, "seconds": {k: round(s, 2) for k, s in seconds.items()},
    }
    doc = _jsonable(doc)
    write_ship(out_dir, doc)
    return doc


def _imatrix_variants(converted, quants: list[str], source: str | Path, gguf_dir: Path, n_ctx: int,
                      max_chunks: int | None, say: Say) -> tuple[list, dict]:
    """The importance matrix of the F16 on the user's text, and `quants` made with it (cached both)."""
    from posttrain.convert import (
        IMATRIX_MAX_CHUNKS,
        compute_imatrix,
        make_imatrix_variants,
    )
    from posttrain.llamacpp import find_llama_tools

    say("imatrix: finding llama.cpp's llama-imatrix and llama-quantize")
    tools = find_llama_tools(say=lambda line: say(f"imatrix: {line}"))
    # Enough characters for every chunk it may read (a token is rarely more than 16 characters).
    text, files = read_text(source, max_chars=(max_chunks or IMATRIX_MAX_CHUNKS) * n_ctx * 16)
    f16 = converted.variant("F16")
    with tempfile.TemporaryDirectory(prefix="posttrain-imatrix-text-") as tmp:
        text_file = Path(tmp) / "text.txt"
        text_file.write_text(text, encoding="utf-8")
        say(f"imatrix: computing on {len(text):,} characters of text")
        imatrix = compute_imatrix(f16.path, text_file, gguf_dir / "imatrix", chunk=n_ctx, tools=tools,
                                  max_chunks=max_chunks or IMATRIX_MAX_CHUNKS, f16_sha256=f16.sha256)
    made = make_imatrix_variants(f16, quants, imatrix, gguf_dir / "imatrix", converted.model_name, tools=tools,
                                 say=lambda variant, status: say(f"{variant}: {status}"))
    return made, {**imatrix.to_json(), "text_files": files, "tools": tools.to_json()}


def remove_stale_scratch(out_dir: Path) -> None:
    """Scratch folders of ladders whose process is gone (killed with -9: no cleanup ran); a live
    process's folder, another ladder's in the same --out, is left alone."""
    import shutil

    import psutil

    for folder in Path(out_dir).glob(f"{SCRATCH_PREFIX}*"):
        pid = folder.name.removeprefix(SCRATCH_PREFIX).split("-", 1)[0]
        if folder.is_dir() and pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _jsonable(x):
    """numpy scalars and arrays out, NaN/inf as None: the document is plain JSON."""
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_ship_reports(doc: dict, out_dir: Path) -> dict[str, Path]:
    """ship.md and ship.html next to ship.json (atomically); returns their paths."""
    from posttrain._files import write_text_atomic
    from posttrain.ship._render import render_html, render_markdown

    out_dir = Path(out_dir)
    files = {"json": write_ship(out_dir, doc), "md": out_dir / "ship.md", "html": out_dir / "ship.html"}
    write_text_atomic(files["md"], render_markdown(doc))
    write_text_atomic(files["html"], render_html(doc))
    return files
