"""A quantizer child process (started by `_quantizer.QuantizerPool`): one JSON job per line on stdin,
one JSON reply per line on stdout, until stdin ends.

    python -m posttrain.convert._quantizer_child --parent=PID

A job: {"quant", "src", "dest", "imatrix", "log", "tree"}; the reply: {"ok": true, "result": {sha256,
size, header, seconds}} or {"ok": false, "error", "remedy"}. The real stdout is kept for replies and
fd 1 points at fd 2, so that nothing native code prints can break the protocol.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main() -> None:
    from posttrain._lifeline import die_with_parent

    args = sys.argv[1:]
    if args and args[0].startswith("--parent=") and not die_with_parent(int(args[0].split("=", 1)[1])):
        sys.exit("posttrain: the process that started this quantizer is gone")
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    from posttrain import llamacpp
    from posttrain.convert._quantizer import quantize_checked
    from posttrain.errors import PosttrainError
    from posttrain.toolchain import ConverterTree

    llamacpp.load_llama_cpp()  # now, while the parent's converter runs, not at the first job
    from llama_cpp._logger import set_verbose

    # llama.cpp's warnings and errors reach the job's log; its info lines (one per tensor) are not
    # worth a Python callback each: the quantizer's in-process runs logged the same.
    set_verbose(False)
    for line in sys.stdin:
        job = json.loads(line)
        try:
            tree = ConverterTree(**{**job["tree"], "root": Path(job["tree"]["root"])})
            result = quantize_checked(tree, Path(job["src"]), Path(job["dest"]), job["quant"],
                                      Path(job["imatrix"]) if job["imatrix"] else None, Path(job["log"]))
            reply = {"ok": True, "result": result}
        except PosttrainError as e:
            reply = {"ok": False, "error": e.message, "remedy": e.remedy}
        except Exception as e:  # noqa: BLE001 - any failure is this job's, reported to the parent
            reply = {"ok": False, "error": f"quantizing {job.get('quant')} failed: {type(e).__name__}: {e}"}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


if __name__ == "__main__":
    main()
