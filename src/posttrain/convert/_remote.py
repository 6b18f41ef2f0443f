"""Quantizing a ladder's variants as executor units: one unit per variant, in parallel across nodes.

The F16 conversion stays with whoever holds the checkpoint (the coordinator); each variant the
quantizer makes from that F16 is a unit: the worker reads the F16 through a `SharedFile` (its
node's copy, or in place under --shared-dir), quantizes it, checks that the header reads back and
that the file loads in llama.cpp, and hands the file back with its sha256. The coordinator puts it
under its final name only once the bytes it holds have that sha256; the probe-text verification
against F16 then runs as for a local conversion.

How the file comes back: written straight into the output folder when that folder is under
--shared-dir (every node sees it at the same path), else as the unit's return value through Ray's
object store (one object the size of the variant).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from posttrain._files import sha256_file
from posttrain.convert._built import BuiltVariant
from posttrain.errors import PosttrainError
from posttrain.executors import Executor, SharedFile, Unit

log = logging.getLogger("posttrain.convert")


@dataclass(frozen=True)
class QuantizeSpec:
    quant: str
    f16: SharedFile
    final_name: str  # the variant's file name in the output folder
    tree: object  # the ConverterTree (gguf-py for the header; llama-quantize with an importance matrix)
    imatrix: SharedFile | None
    shared_out: str | None  # the output folder when every node sees it at this path, else None


def quantize_unit(spec: QuantizeSpec) -> dict:
    """Runs on a worker: quantize, check header and load, and return the file (or its shared path)."""
    from posttrain.convert._quantizer import quantize_checked

    src = spec.f16.local_path()
    imatrix = spec.imatrix.local_path() if spec.imatrix is not None else None
    # The partial file's name is one the coordinator's stale-file sweep recognises (.NAME.*.partial).
    if spec.shared_out is not None:
        work = None
        partial = Path(spec.shared_out) / f".{spec.final_name}.{os.getpid()}-remote.partial"
    else:
        work = Path(tempfile.mkdtemp(prefix="posttrain-quantize-"))
        partial = work / f".{spec.final_name}.partial"
    quantizer_log = partial.with_name(partial.name + ".log")
    try:
        try:
            out = quantize_checked(spec.tree, src, partial, spec.quant, imatrix, quantizer_log)
        except PosttrainError as e:
            # The quantizer's log is on the worker's disk (and removed): its last line travels instead of
            # "see LOG"; a remedy that is advice (pass --imatrix) stays.
            tail = _last_line(quantizer_log)
            raise PosttrainError(f"{e.message}: {tail}" if tail else e.message,
                                 remedy=None if (e.remedy or "").startswith("see ") else e.remedy) from None
        if spec.shared_out is not None:
            return {**out, "path": str(partial)}
        return {**out, "data": partial.read_bytes()}
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        quantizer_log.unlink(missing_ok=True)
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


@contextmanager
def quantizing_executor(quants, executor: str | None, *, ray_address: str | None = None,
                        shared_dir: Path | None = None, stop=None) -> Iterator[Executor | None]:
    """The executor a ladder's quantizations run on, for as long as the block: None (in this process)
    for the local executor or a ladder the converter makes alone (F16, Q8_0), so no cluster is
    started for nothing; with `stop` (a threading.Event) its runs end when a stop is asked for."""
    from posttrain.convert._quant_types import CONVERTER_TYPES, parse_quant_list
    from posttrain.executors import StopOn, make_executor

    if ((executor or "local") == "local" and not ray_address) or all(
            q in CONVERTER_TYPES for q in parse_quant_list(quants)):
        yield None
        return
    with make_executor(executor, ray_address=ray_address, shared_dir=shared_dir) as made:
        yield StopOn(made, stop) if stop is not None else made


def remote_quants(executor: Executor | None, todo: list[str], by_converter: tuple[str, ...]) -> list[str]:
    """The variants to make as units: those the quantizer makes, when the executor is not this process."""
    if executor is None or executor.name == "local":
        return []
    return [q for q in todo if q not in by_converter]


def quantize_rest(executor: Executor, remote: list[str], wanted: list[str], made_here: list, out_dir: Path,
                  name: str, tree, imatrix: Path | None, say, entries: dict, manifest: dict) -> list:
    """After the local part of a conversion (F16 made and checked): the `remote` variants as units,
    each recorded in the manifest as it arrives. All variants, in the order of `wanted`."""
    from posttrain.convert._manifest import write_manifest
    from posttrain.store import utcnow

    f16 = next(v for v in made_here if v.quant == "F16")
    made = {v.quant: v for v in made_here}
    for v in quantize_on(executor, remote, f16.path, f16.sha256, out_dir, name, tree, imatrix, say):
        made[v.quant] = v
        entries[v.quant] = v.to_json()  # recorded at once, as a local conversion does: a crash later keeps it
        manifest["updated_at"] = utcnow()
        write_manifest(Path(out_dir), manifest)
    return [made[q] for q in wanted]


def quantize_on(executor: Executor, quants: list[str], f16: Path, f16_sha256: str, out_dir: Path, name: str,
                tree, imatrix: Path | None, say) -> list:
    """Make `quants` from the checked F16 at `f16` as units on `executor`; each placed under its final
    name in `out_dir` once its sha256 matches. BuiltVariants in the order of `quants`."""
    from posttrain.paths import confined

    out_dir = Path(out_dir).resolve()
    shared_dir = getattr(executor, "shared_dir", None)
    shared_out = str(out_dir) if shared_dir is not None and out_dir.is_relative_to(shared_dir) else None
    source = executor.share(f16, f16_sha256)
    matrix = executor.share(imatrix, sha256_file(imatrix)) if imatrix is not None else None
    units = []
    for quant in quants:
        say(quant, f"quantizing on the {executor.name} executor")
        spec = QuantizeSpec(quant, source, f"{name}-{quant}.gguf", tree, matrix, shared_out)
        units.append(Unit(f"quantize {quant} of {name}", quantize_unit, (spec,)))
    built = {}
    for done in executor.run(units):
        quant = done.unit.args[0].quant
        final = _place(done.value, confined(out_dir, f"{name}-{quant}.gguf"), quant, done.node)
        say(quant, f"made on {done.node}")
        log.info("%s of %s quantized on %s in %.1f s", quant, name, done.node, done.value["seconds"])
        built[quant] = BuiltVariant(quant, final, done.value["sha256"], done.value["size"],
                                    round(done.value["seconds"], 3), "quantizer", header=done.value["header"])
    return [built[q] for q in quants]


def _place(value: dict, final: Path, quant: str, node: str) -> Path:
    """The unit's file under its final name, once the bytes here have the sha256 the worker computed."""
    if "path" in value:
        partial = Path(value["path"])
    else:
        partial = final.with_name(f".{final.name}.{os.getpid()}.partial")
        partial.write_bytes(value["data"])
    try:
        got = sha256_file(partial)
        if got != value["sha256"] or partial.stat().st_size != value["size"]:
            raise PosttrainError(f"{quant} arrived damaged from node {node} (sha256 {got[:12]}… instead of "
                                 f"{value['sha256'][:12]}…)", remedy="run again; check the node's disk and network")
        os.replace(partial, final)
    finally:
        partial.unlink(missing_ok=True)
    return final
