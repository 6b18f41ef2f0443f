"""Run llama.cpp's official convert_hf_to_gguf.py from its tree, unchanged.

Executed as a script (not imported from posttrain) so the converter sees a clean interpreter:
    python _converter_shim.py TREE [--parent=PID] [--lora] [--pre-tokenizer=NAME] -- CONVERTER_ARGS...
`--lora`: run the tree's convert_lora_to_gguf.py (a PEFT adapter → a GGUF LoRA) instead.
`--parent=PID`: end with that process, however it ends (posttrain killed with -9 must not leave a
converter running on and writing beside the rerun); posttrain's `_lifeline` is loaded from its file
so that nothing else of posttrain is imported here.
The one optional hook: `--pre-tokenizer=NAME` answers the converter's BPE pre-tokenizer lookup
with NAME for tokenizers whose hash it does not know (freshly trained byte-level BPE), the same
thing a user would do by editing get_vocab_base_pre() by hand.
"""

import importlib.util
import runpy
import sys
from pathlib import Path


def _die_with(parent: int) -> None:
    spec = importlib.util.spec_from_file_location("_posttrain_lifeline", Path(__file__).parent.parent / "_lifeline.py")
    lifeline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lifeline)
    if not lifeline.die_with_parent(parent):
        sys.exit("posttrain: the process that started this conversion is gone")


def main() -> None:
    args = sys.argv[1:]
    tree = Path(args.pop(0))
    if args and args[0].startswith("--parent="):
        _die_with(int(args.pop(0).split("=", 1)[1]))
    script_name = "convert_hf_to_gguf.py"
    if args and args[0] == "--lora":
        script_name = "convert_lora_to_gguf.py"
        args.pop(0)
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
    script = tree / script_name
    sys.argv = [str(script), *args]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
