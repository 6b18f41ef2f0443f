"""HF checkpoint → verified GGUF variants, with a manifest that makes reruns no-ops."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from posttrain import contracts
from posttrain._files import sha256_file
from posttrain._locks import FileLock
from posttrain.checkpoint import checkpoint_sha256 as hash_checkpoint
from posttrain.checkpoint import human_bytes, inspect_checkpoint, tensor_sizes
from posttrain.convert import _remote, _verify
from posttrain.convert._built import BuiltVariant
from posttrain.convert._gguf_info import read_header
from posttrain.contracts import Variant
from posttrain.convert._manifest import MANIFEST, load_manifest, manifest_entries, refuse_foreign, write_manifest
from posttrain.convert._quant_types import CONVERTER_TYPES, parse_quant_list
from posttrain.convert._quantizer import QuantizerPool, longest_first, slots_for
from posttrain.errors import CheckpointIncomplete, PosttrainError
from posttrain.paths import confined, model_label, safe_name
from posttrain.store import utcnow
from posttrain.toolchain import ConverterTree, converter_env, find_converter
from posttrain._lifeline import no_window_kwargs

MANIFEST_SCHEMA = contracts.MANIFEST_SCHEMA
_SHIM = Path(__file__).with_name("_converter_shim.py")
# Bytes per parameter of each output, for the disk-space check (k-quants and IQ types ≤ 0.75).
_BYTES_PER_PARAM = {"F32": 4.0, "F16": 2.0, "BF16": 2.0, "Q8_0": 1.07}

Progress = Callable[[str, str], None]  # (variant, status text)


# What a manifest entry holds: the fields BuiltVariant.to_json() writes.
_VARIANT_FIELDS = {f for f in BuiltVariant.__dataclass_fields__ if f != "cached"}


@dataclass
class ConvertResult:
    checkpoint: Path
    checkpoint_sha256: str
    model_name: str
    out_dir: Path
    manifest_path: Path
    toolchain: dict
    variants: list[BuiltVariant]

    def variant(self, quant: str) -> BuiltVariant:
        return next(v for v in self.variants if v.quant == quant.upper())

    def handover(self) -> list[Variant]:
        """The variants as the stages after convert take them."""
        return [Variant(path=v.path, quant=v.quant, sha256=v.sha256, model_name=self.model_name,
                        size_bytes=v.size_bytes, checkpoint=self.checkpoint) for v in self.variants]


def default_model_name(checkpoint: Path) -> str:
    """`runs/exp1/final_model` → `exp1`; `runs/exp1/checkpoint-500` → `exp1-checkpoint-500` (paths.model_label)."""
    return safe_name(model_label(Path(checkpoint).resolve()))


def _check_disk(out_dir: Path, n_params: int, quants: list[str]) -> None:
    need = int(1.1 * sum(n_params * _BYTES_PER_PARAM.get(q, 0.75) for q in quants))
    free = shutil.disk_usage(out_dir).free
    if free < need:
        raise PosttrainError(f"not enough disk space in {out_dir}: these variants need about {human_bytes(need)}, "
                             f"{human_bytes(free)} is free", remedy="free some space or pass --out on another disk")


def _in_background(fn: Callable, *args) -> Future:
    """`fn(*args)` on a daemon thread: an interrupted conversion exits at once instead of waiting for
    a pool thread to finish reading a checkpoint of many gigabytes."""
    future: Future = Future()

    def run() -> None:
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fn(*args))
            except BaseException as e:  # handed to whoever waits for the result
                future.set_exception(e)

    threading.Thread(target=run, daemon=True, name="posttrain-checkpoint-hash").start()
    return future


@contextmanager
def _locked(out_dir: Path):
    # Two conversions into the same folder (a watcher and a manual run) take turns.
    with FileLock(out_dir / ".lock"):
        yield


def _converter_error(output: str, checkpoint: Path, quant: str, log: Path) -> PosttrainError:
    if "BPE pre-tokenizer was not recognized" in output:
        m = re.search(r"chkhsh:\s*([0-9a-f]{64})", output)
        hsh = f" (hash {m.group(1)[:16]}…)" if m else ""
        return PosttrainError(
            f"llama.cpp's converter does not recognise this tokenizer's BPE pre-tokenizer{hsh}",
            remedy="pass --pre-tokenizer NAME with the pre-tokenizer of the base model you fine-tuned "
                   "(e.g. gpt-2, llama-bpe, qwen2, smollm; llama.cpp accepts 'gpt-2', not 'gpt2')")
    m = re.search(r"Model (\S+) is not supported", output) or re.search(r"Architecture '?(\S+?)'? not supported", output)
    if m:
        return PosttrainError(f"architecture {m.group(1)} is not supported by llama.cpp's converter",
                              remedy="check llama.cpp's supported models, or pass --llama-cpp-dir with a newer checkout")
    if "No space left on device" in output or "Errno 28" in output:
        return PosttrainError(f"out of disk space while writing {quant}", remedy="free some space or pass --out elsewhere")
    if re.search(r"tokenizer", output, re.I) and ("FileNotFoundError" in output or "not found" in output):
        return PosttrainError(f"the converter found no usable tokenizer in {checkpoint}",
                              remedy="save the tokenizer next to the weights (tokenizer.save_pretrained(dir))")
    last = next((ln for ln in reversed(output.strip().splitlines()) if ln.strip()), "no output")
    return PosttrainError(f"llama.cpp's converter failed for {quant}: {last.strip()}", remedy=f"full log: {log}")


def _run_converter(tree: ConverterTree, checkpoint: Path, quant: str, dest: Path, pre_tokenizer: str | None,
                   log: Path) -> None:
    # The converter ends with this process (the calling thread waits for it, so Linux's parent-death
    # signal, which follows the thread, is safe to ask for).
    cmd = [sys.executable, str(_SHIM), str(tree.root), f"--parent={os.getpid()}"]
    if pre_tokenizer:
        cmd.append(f"--pre-tokenizer={pre_tokenizer}")
    cmd += ["--", str(checkpoint), "--outtype", quant.lower(), "--outfile", str(dest)]
    with open(log, "w") as logf:
        proc = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, env=converter_env(tree),
                              **no_window_kwargs())
    from posttrain.llamacpp import was_interrupted

    if was_interrupted(proc.returncode):
        # Ctrl-C reaches the whole process group (the console's, on Windows): the converter's death
        # by it is the user's interrupt (exit 130), not a conversion failure.
        raise KeyboardInterrupt
    if proc.returncode != 0:
        raise _converter_error(log.read_text(errors="replace"), checkpoint, quant, log)


def _reusable(entry: dict | None, out_dir: Path, ckpt_sha: str, toolchain: dict, options: dict,
              manifest: dict) -> bool:
    if not entry or manifest.get("checkpoint_sha256") != ckpt_sha or manifest.get("options") != options:
        return False
    recorded = manifest.get("toolchain")
    if not isinstance(recorded, dict) or recorded.get("llama_cpp_python") != toolchain["llama_cpp_python"]:
        return False
    try:
        path = confined(out_dir, entry["path"])  # a manifest entry names a file in out_dir, nowhere else
    except PosttrainError:
        return False
    return path.is_file() and path.stat().st_size == entry["size_bytes"] and sha256_file(path) == entry["sha256"]


def convert_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    quants: str | list[str] = ("f16", "q8_0", "q4_k_m"),
    *,
    model_name: str | None = None,
    pre_tokenizer: str | None = None,
    imatrix: str | Path | None = None,
    llama_cpp_dir: str | Path | None = None,
    verify: bool = True,
    hf_reference: bool | None = None,
    allow_pickle: bool = False,
    settle_seconds: float = 0.0,
    progress: Progress | None = None,
    n_gpu_layers: int | None = None,
    checkpoint_sha256: str | None = None,
    force: bool = False,
    quantize_q8_0: bool = False,
    executor=None,
) -> ConvertResult:
    """Convert `checkpoint` into GGUF variants under `out_dir`; skip variants already made and verified.

    F16 is always made (it is the quantizer's source and the verification reference). Q8_0, F32 and
    BF16 come from llama.cpp's converter, every other type from its quantizer. Each file is written
    under a temporary name and renamed only once its header reads back and it loads in llama.cpp.
    `n_gpu_layers`: layers llama.cpp offloads while checking the variants (default: all on a GPU build).
    `checkpoint_sha256`: the checkpoint's content hash when the caller has it (the pipeline), so the
    weights are not read again just to hash them.
    A file in `out_dir` that posttrain's manifest there does not list is never replaced unless
    `force` (PosttrainError before any work).
    `quantize_q8_0`: make Q8_0 with the quantizer from F16 instead of a second converter run (the
    converter's start-up, mostly imports, dominates for small models; a ladder pays it once).
    `executor`: an `Executor` other than local makes the quantizer's variants as units on it, in
    parallel (convert/_remote.py); F16 and the converter's variants are still made here.
    """
    checkpoint = Path(checkpoint)
    out_dir = Path(out_dir)
    say = progress or (lambda variant, text: None)
    wanted = parse_quant_list(quants)
    verdict = inspect_checkpoint(checkpoint, settle_seconds=settle_seconds, allow_pickle=allow_pickle)
    if not verdict.complete:
        raise CheckpointIncomplete(f"{checkpoint} is not a complete checkpoint: {verdict.reason}")
    tree = find_converter(llama_cpp_dir)
    toolchain = {"llama_cpp_python": tree.llama_cpp_python, "converter": tree.source,
                 "sdist_sha256": tree.sdist_sha256, "converter_root": str(tree.root)}
    name = safe_name(model_name) if model_name else default_model_name(checkpoint)
    if not force:  # before anything is written there, the lock file included
        refuse_foreign(out_dir, [f"{name}-{q}.gguf" for q in wanted], load_manifest(out_dir), _VARIANT_FIELDS)
    out_dir.mkdir(parents=True, exist_ok=True)
    imatrix_path = Path(imatrix) if imatrix else None
    if imatrix_path is not None and not imatrix_path.is_file():
        raise PosttrainError(f"importance matrix {imatrix_path} does not exist")

    with _locked(out_dir):
        # Under the lock no other conversion writes here: leftovers are from a killed run (named by _produce).
        for stale in out_dir.glob(".*.gguf.*.partial"):
            stale.unlink(missing_ok=True)
        manifest = load_manifest(out_dir)
        hashing: Future | None = None
        if checkpoint_sha256 is None and not manifest_entries(manifest, _VARIANT_FIELDS):
            # Nothing here to reuse, so the hash decides nothing yet: it runs beside the converter (mostly
            # one core of imports and tensor copies) and is in the manifest once the first file is placed.
            hashing = _in_background(hash_checkpoint, verdict)
            ckpt_sha = None
        else:
            if checkpoint_sha256 is None:
                say("checkpoint", "hashing")
            ckpt_sha = checkpoint_sha256 or hash_checkpoint(verdict)
        options = {"pre_tokenizer": pre_tokenizer,
                   "imatrix_sha256": sha256_file(imatrix_path) if imatrix_path else None}
        same_source = manifest.get("checkpoint_sha256") == ckpt_sha and manifest.get("options") == options
        entries: dict = manifest_entries(manifest, _VARIANT_FIELDS) if same_source else {}
        todo = [q for q in wanted if not _reusable(entries.get(q), out_dir, ckpt_sha, toolchain, options, manifest)]
        sizes = tensor_sizes(verdict.weight_files) if todo else []  # headers only: disk and memory estimates
        if todo:
            _check_disk(out_dir, sum(sizes), todo)
        manifest = {"schema": MANIFEST_SCHEMA, "model_name": name, "checkpoint": str(checkpoint.resolve()),
                    "checkpoint_sha256": ckpt_sha, "architecture": verdict.architecture, "toolchain": toolchain,
                    "options": options, "variants": entries}
        if todo:
            # Claimed before they exist: a rerun after a crash knows these names are posttrain's to replace.
            manifest["pending"] = [f"{name}-{q}.gguf" for q in todo]
            write_manifest(out_dir, manifest)
        by_converter = tuple(q for q in CONVERTER_TYPES if not (quantize_q8_0 and q == "Q8_0"))
        remote = _remote.remote_quants(executor, todo, by_converter)
        try:
            variants = _make_variants([q for q in wanted if q not in remote], todo, entries, checkpoint, out_dir,
                                      name, tree, pre_tokenizer, imatrix_path, say, manifest, by_converter, hashing,
                                      max(sizes, default=0))
        finally:
            if hashing is not None:
                hashing.cancel()  # not started yet: never will be
        if remote:
            variants = _remote.quantize_rest(executor, remote, wanted, variants, out_dir, name, tree, imatrix_path,
                                             say, entries, manifest)
        ckpt_sha = manifest["checkpoint_sha256"]
        if verify and any(not v.cached or not v.verification for v in variants):
            try:
                _verify.verify_variants(variants, checkpoint, verdict.total_bytes, hf_reference, say, n_gpu_layers)
            except PosttrainError:
                # A variant that fails verification is not kept: neither its file nor its manifest entry.
                for v in variants:
                    if not v.path.exists():
                        entries.pop(v.quant, None)
                write_manifest(out_dir, manifest)
                raise
            for v in variants:
                entries[v.quant] = v.to_json()
            manifest["updated_at"] = utcnow()
        manifest.pop("pending", None)
        write_manifest(out_dir, manifest)
    return ConvertResult(checkpoint, ckpt_sha, name, out_dir, out_dir / MANIFEST, toolchain, variants)


def _make_variants(wanted: list[str], todo: list[str], entries: dict, checkpoint: Path, out_dir: Path, name: str,
                   tree: ConverterTree, pre_tokenizer: str | None, imatrix: Path | None, say: Progress,
                   manifest: dict, by_converter: tuple[str, ...] = CONVERTER_TYPES,
                   checkpoint_hash: Future | None = None, largest_tensor: int = 0) -> list[BuiltVariant]:
    """Make the variants in `todo`, reuse the others. The converter's variants are made here, one after
    another, and checked (header, a load in llama.cpp, sha256) on a thread while the next is made; the
    quantizer's are made and checked in child processes, side by side (`_quantizer.QuantizerPool`),
    from F16 as soon as it is checked and placed. `checkpoint_hash`: the checkpoint's sha256 still
    being computed; the manifest gets it before it lists any variant. `largest_tensor`: elements of the
    checkpoint's largest tensor, which bounds how many quantizations fit in memory at once."""
    done: dict[str, BuiltVariant] = {}
    made: dict[str, Future] = {}
    converted = [q for q in wanted if q in todo and q in by_converter]
    quantized = longest_first([q for q in wanted if q in todo and q not in by_converter])
    slots = slots_for(len(quantized), largest_tensor) if quantized else 0
    with ThreadPoolExecutor(max_workers=1) as checker, QuantizerPool(slots, tree) as pool:
        # What the first check needs (gguf-py, llama.cpp's library) is loaded while the converter runs, on
        # the core it leaves idle, instead of between F16 and the quantizations that wait for it.
        checker.submit(_load_checking_tools, tree)
        try:
            # F16 first: the quantizer's source, so that the quantizations overlap the converter's other types.
            for quant in sorted(converted, key=lambda q: q != "F16"):
                final = confined(out_dir, f"{name}-{quant}.gguf")
                partial, seconds = _produce(quant, checkpoint, out_dir, final, tree, pre_tokenizer, say)
                placed = checker.submit(_check_and_place, quant, partial, final, tree, "converter", seconds, say)
                made[quant] = checker.submit(_hashed, placed)
                if quant == "F16":  # the quantizations start once it is checked and under its final name
                    _quantize(pool, quantized, out_dir, name, imatrix, placed, say, made)
            if "F16" not in converted:
                _quantize(pool, quantized, out_dir, name, imatrix, None, say, made)
            for future in as_completed(made.values()):
                future.result()  # the first failure ends the conversion (and the quantizations in progress)
        except BaseException:
            pool.close(now=True)
            raise
        finally:
            # Every variant that was made is recorded, also when another failed or Ctrl-C came: a rerun
            # keeps it. (The quantizations still running were ended above; a check on the thread ends soon.)
            for quant, future in made.items():
                try:
                    done[quant] = future.result()
                except BaseException:  # noqa: BLE001 - failed or stopped: not recorded; the error is raised above
                    continue
                if checkpoint_hash is not None:  # an entry is reusable only under its checkpoint's hash
                    manifest["checkpoint_sha256"] = checkpoint_hash.result()
                entries[quant] = done[quant].to_json()
                manifest["updated_at"] = utcnow()
                write_manifest(out_dir, manifest)
    for quant in wanted:
        if quant not in todo:
            say(quant, "cached")
            entry = entries[quant]
            done[quant] = BuiltVariant(**{**entry, "path": out_dir / entry["path"], "cached": True})
    return [done[q] for q in wanted]


def _load_checking_tools(tree: ConverterTree) -> None:
    from posttrain import llamacpp
    from posttrain.convert._gguf_info import gguf_module

    gguf_module(tree)
    llamacpp.load_llama_cpp()


def _quantize(pool: QuantizerPool, quants: list[str], out_dir: Path, name: str, imatrix: Path | None,
              after: Future | None, say: Progress, made: dict[str, Future]) -> None:
    """Queue `quants` on the pool (from F16 once `after`, its placement, succeeded); each future gives
    the BuiltVariant under its final name."""
    for quant in quants:
        final = confined(out_dir, f"{name}-{quant}.gguf")
        partial = out_dir / f".{final.name}.{os.getpid()}.partial"
        job = pool.submit(quant, out_dir / f"{name}-F16.gguf", partial, imatrix, out_dir / f"convert-{quant}.log",
                          after=after, say=say)
        made[quant] = _placed_when_done(job, quant, partial, final)


def _placed_when_done(job: Future, quant: str, partial: Path, final: Path) -> Future:
    placed: Future = Future()

    def place(job: Future) -> None:
        try:
            r = job.result()
            os.replace(partial, final)
            placed.set_result(BuiltVariant(quant, final, r["sha256"], r["size"], round(r["seconds"], 3),
                                           "quantizer", header=r["header"]))
        except BaseException as e:
            partial.unlink(missing_ok=True)
            placed.set_exception(e)

    job.add_done_callback(place)
    return placed


def _produce(quant: str, checkpoint: Path, out_dir: Path, final: Path, tree: ConverterTree,
             pre_tokenizer: str | None, say: Progress) -> tuple[Path, float]:
    """One of the converter's types, under a temporary name; the seconds it took."""
    partial = out_dir / f".{final.name}.{os.getpid()}.partial"
    started = time.perf_counter()
    try:
        say(quant, "converting (llama.cpp convert_hf_to_gguf.py)")
        _run_converter(tree, checkpoint, quant, partial, pre_tokenizer, out_dir / f"convert-{quant}.log")
        return partial, time.perf_counter() - started
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _check_and_place(quant: str, partial: Path, final: Path, tree: ConverterTree, made_by: str,
                     seconds: float, say: Progress) -> BuiltVariant:
    """Header reads back and the file loads in llama.cpp: only then does it get its final name."""
    started = time.perf_counter()
    try:
        say(quant, "checking header and load")
        header = read_header(partial, tree, intended=quant)
        if header.tensor_count == 0:
            raise PosttrainError(f"{quant}: the written GGUF holds no tensors")
        _verify.load_check(partial)
        os.replace(partial, final)
    finally:
        partial.unlink(missing_ok=True)
    seconds += time.perf_counter() - started
    return BuiltVariant(quant, final, "", final.stat().st_size, round(seconds, 3), made_by, header=header.to_json())


def _hashed(placed: Future) -> BuiltVariant:
    """The placed variant with its sha256 (run on the checker thread after `_check_and_place`, so a
    failed check raises here too). Nothing writes a placed file: the folder's lock is held."""
    variant = placed.result()
    started = time.perf_counter()
    variant.sha256 = sha256_file(variant.path)
    variant.seconds = round(variant.seconds + time.perf_counter() - started, 3)
    return variant
