"""The tiny quantized GGUF that llama.cpp's self-test (`posttrain.llamacpp._selftest`) decodes: a random
tiny Llama through llama.cpp's own converter and quantizer, made in a child process.

It lives above the native floor because making it takes `convert`; the self-test only names this
module for its child, so `posttrain.llamacpp` imports nothing from the stages.

    python -m posttrain.convert._selftest_model DEST QUANT PARENT_PID   (one JSON line)
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from posttrain._child_process import child_args

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


def main(argv: list[str]) -> int:
    args = child_args(argv)
    if args is None or len(args) != 2:  # `posttrain doctor` is gone already, or a wrong call
        return 1
    try:
        make(Path(args[0]), args[1])
        doc = {"ok": True}
    except Exception as e:  # noqa: BLE001 - the parent reports it
        doc = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    print(json.dumps(doc), flush=True)
    return 0 if doc["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
