"""How many real chat templates get an exact Ollama TEMPLATE, and what deriving and checking one costs.

    python benchmarks/chat_templates.py [--list]

Reads the corpus in tests/data/chat_templates/ (sources in its SOURCES.md), runs
`posttrain.serve.derive_template` on each (render with transformers, assemble, check the four
conversations) and prints the counts by outcome, by where the system prompt goes and of those that
print today's date, and the wall time per template (median and slowest). `--list` prints each template's outcome too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import Counter
from pathlib import Path

from posttrain.serve import Tokens, derive_template

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "chat_templates"
STAND_IN = Tokens(bos="<s>", eos="</s>")  # the corpus files carry no tokenizer
KNOWN = {"HuggingFaceTB-SmolLM2-135M-Instruct": Tokens("<|im_start|>", "<|im_end|>", "<|endoftext|>", False)}


def corpus() -> dict[str, tuple[str, Tokens]]:
    found = {p.stem: (p.read_text(encoding="utf-8"), KNOWN.get(p.stem, STAND_IN)) for p in sorted(CORPUS.glob("*.jinja"))}
    for name, case in json.loads((CORPUS / "llamacpp-test-chat-template.json").read_text(encoding="utf-8")).items():
        found[f"llama.cpp test: {name}"] = (case["template"], Tokens(case["bos_token"], case["eos_token"]))
    for entry in json.loads((CORPUS / "hf-ollama-utils-automap.json").read_text(encoding="utf-8")):
        name = f"ollama library: {entry['models'][0]}"
        while name in found:  # one model name, several published templates (qwq:32b has three)
            name += "'"
        found[name] = (entry["template"], STAND_IN)
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", action="store_true", help="print every template's outcome")
    args = ap.parse_args()
    outcomes: Counter[str] = Counter()
    placements: Counter[str] = Counter()
    dated: Counter[str] = Counter()
    seconds = []
    for name, (text, tokens) in corpus().items():
        start = time.perf_counter()
        result = derive_template(text, tokens)
        seconds.append(time.perf_counter() - start)
        outcomes[result.kind] += 1
        if result.template is not None:
            placements[result.system_placement] += 1
            if result.dated:
                dated["another format than Ollama's" if result.date_formats else "Ollama's format"] += 1
        if args.list:
            print(f"{result.kind:12} {result.system_placement:9} {name}  {result.reason or ''}")
    print(f"templates: {len(seconds)}")
    print("outcome:   " + ", ".join(f"{k} {v}" for k, v in outcomes.most_common()))
    print("system:    " + ", ".join(f"{k} {v}" for k, v in placements.most_common()) + "  (of those written)")
    print(f"date:      {sum(dated.values())} print today's date with currentDate: "
          + ", ".join(f"{v} in {k}" for k, v in dated.most_common()) + "  (of those written)")
    print(f"per template: median {statistics.median(seconds) * 1000:.0f} ms, slowest {max(seconds) * 1000:.0f} ms, "
          f"all {sum(seconds):.1f} s")


if __name__ == "__main__":
    main()
