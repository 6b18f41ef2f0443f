"""Run llama.cpp's official convert_hf_to_gguf.py from its tree, unchanged.

Executed as a script (not imported from posttrain) so the converter sees a clean interpreter:
    python _converter_shim.py TREE [--pre-tokenizer=NAME] -- CONVERTER_ARGS...
The one optional hook: `--pre-tokenizer=NAME` answers the converter's BPE pre-tokenizer lookup
with NAME for tokenizers whose hash it does not know (freshly trained byte-level BPE), the same
thing a user would do by editing get_vocab_base_pre() by hand.
"""

import runpy
import sys
from pathlib import Path


def main() -> None:
    args = sys.argv[1:]
    tree = Path(args.pop(0))
    pre_tokenizer = None
    if args and args[0].startswith("--pre-tokenizer="):
        pre_tokenizer = args.pop(0).split("=", 1)[1]
    if args and args[0] == "--":
        args.pop(0)
    sys.path[:0] = [str(tree / "gguf-py"), str(tree)]
    if pre_tokenizer:
        import conversion.base as base

        def forced_pre(self, tokenizer, _name=pre_tokenizer):
            return _name

        patched = 0
        for obj in list(vars(base).values()):
            if isinstance(obj, type) and "get_vocab_base_pre" in obj.__dict__:
                obj.get_vocab_base_pre = forced_pre
                patched += 1
        if not patched:
            sys.exit("posttrain: this converter has no get_vocab_base_pre() to override")
    script = tree / "convert_hf_to_gguf.py"
    sys.argv = [str(script), *args]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
