"""The GGUFs that llama.cpp's self-test and the machine profile decode, made in a child process:
- the self-test's tiny quantized model (`posttrain.llamacpp._selftest`): a random tiny Llama through
  llama.cpp's own converter and quantizer;
- the profile's probe (`posttrain.llamacpp._profile`), in F16 and BF16: a random Llama with
  SmolLM2-135M's matrix shapes (hidden 576, MLP 1536, 9 heads, 3 KV heads) and 6 of its 30 layers,
  so the timed kernels are those of a real small model at a fifth of the cost.

It lives above the native floor because making it takes `convert`; the self-test only names this
module for its child, so `posttrain.llamacpp` imports nothing from the stages.

    python -m posttrain.convert._selftest_model DEST QUANT PARENT_PID     (one JSON line)
    python -m posttrain.convert._selftest_model DEST_DIR probe PARENT_PID (DEST_DIR/probe-F16.gguf, -BF16)
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from posttrain._child_process import child_args, print_answer

MODULE = "posttrain.convert._selftest_model"


def make(dest: Path, quant: str) -> None:
    from posttrain.convert import convert_checkpoint
    from posttrain.tiny import make_tiny

    with tempfile.TemporaryDirectory(prefix="posttrain-selftest-") as tmp:
        ckpt = make_tiny(Path(tmp) / "tiny")
        # Made without the probe-text check: that check decodes, which is what the self-test tests.
        result = convert_checkpoint(ckpt, Path(tmp) / "gguf", ["f16", quant], model_name="selftest", verify=False)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(result.variant(quant.upper()).path, dest)


PROBE_TYPES = ("F16", "BF16")
PROBE_SHAPE = {"hidden_size": 576, "intermediate_size": 1536, "num_layers": 6, "num_heads": 9, "num_kv_heads": 3,
               "vocab_size": 512, "init_std": 0.02}


def probe_path(folder: Path, reference: str) -> Path:
    return folder / f"probe-{reference}.gguf"


def make_probe(folder: Path) -> None:
    from posttrain.convert import convert_checkpoint
    from posttrain.tiny import make_tiny

    with tempfile.TemporaryDirectory(prefix="posttrain-probe-") as tmp:
        ckpt = make_tiny(Path(tmp) / "probe", **PROBE_SHAPE)
        result = convert_checkpoint(ckpt, Path(tmp) / "gguf", [t.lower() for t in PROBE_TYPES], model_name="probe",
                                    verify=False)
        folder.mkdir(parents=True, exist_ok=True)
        for reference in PROBE_TYPES:
            os.replace(result.variant(reference).path, probe_path(folder, reference))


def main(argv: list[str]) -> int:
    args = child_args(argv)
    if args is None or len(args) != 2:  # `posttrain doctor` is gone already, or a wrong call
        return 1

    def work() -> dict:
        if args[1] == "probe":
            make_probe(Path(args[0]))
        else:
            make(Path(args[0]), args[1])
        return {"ok": True}

    return print_answer(work)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
