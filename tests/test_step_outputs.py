"""What each pipeline step hands on survives the store: written as JSON, read back as the same record.

The runner keeps step outputs in SQLite and hands them to later steps (and to a resumed run, and to a
step's child process) as the type the step declared; report, track and series read the same rows.
A row written by an older posttrain, in the old dict shape, is not guessed at: it reads as nothing,
and the runner recomputes the step.
"""

from __future__ import annotations

import json
from pathlib import Path

from posttrain.contracts import (
    STEP_OUTPUTS,
    AdapterFacts,
    AdapterRoute,
    AdapterRoutes,
    BaselineOut,
    ConvertOut,
    DetectOut,
    DocumentOut,
    EvalOut,
    NotifyOut,
    NotifyOutcome,
    RegisterOut,
    Registration,
    ReportOut,
    ShipOut,
    TrackerOutcome,
    TrackOut,
    Variant,
    decode_outputs,
    encode_outputs,
    step_outputs,
)

RUN = Path("/runs/r1")
F16 = Variant(path=Path("/gguf/m/m-F16.gguf"), quant="F16", sha256="a" * 64, model_name="m", size_bytes=10,
              checkpoint=Path("/ckpt"))


def one_of_each() -> dict:
    route = AdapterRoute(base_gguf=Path("/gguf/b/b-F16.gguf"), base_sha256="b" * 64, lora=Path("/gguf/m/lora.gguf"),
                         lora_sha256="c" * 64, size_bytes=3, base_4bit_gguf=None)
    return {
        "detect": DetectOut(checkpoint=Path("/ckpt"), sha256="d" * 64, total_bytes=10, architecture="LlamaForCausalLM",
                            adapter=AdapterFacts(base="/base", rank=8, lora_alpha=16.0, target_modules=("q_proj",),
                                                 qlora=True, routes=("merge", "adapter"))),
        "convert": ConvertOut(model_name="m", manifest=Path("/gguf/m/manifest.json"), variants=(F16,),
                              routes=AdapterRoutes(merged=RUN / "merged", adapter=route)),
        "register": RegisterOut((Registration(name="m_f16:latest", quant="F16", status="created", template="llama3",
                                              warnings=("a warning",)),)),
        "baseline": BaselineOut(model="ollama:base", source="ollama:base"),
        "evaluate": EvalOut(evals={"m-F16": (1, 2)}, sources={"m-F16": "/gguf/m/m-F16.gguf"}),
        "evaluate_baseline": EvalOut(evals={"baseline": (3,)}, sources={"baseline": "ollama:base"}),
        "compare": DocumentOut(path=RUN / "compare.json", sha256="e" * 64),
        "ship": ShipOut(path=RUN / "ship.json", sentence="Ship Q8_0.", pick="Q8_0", strength="indicated"),
        "report": ReportOut(html=RUN / "report.html", md=RUN / "report.md", json=RUN / "report.json"),
        "track": TrackOut(trackers=(TrackerOutcome(tracker="mlflow", ok=True, run="abc", attempts=1),),
                          report=RUN / "report.json", report_sha256="f" * 64),
        "notify": NotifyOut((NotifyOutcome(channel="json", target="http://127.0.0.1:9", ok=True),)),
    }


def test_every_steps_record_reads_back_equal_after_the_store_kept_it_as_json():
    records = one_of_each()
    assert set(records) == set(STEP_OUTPUTS)  # a new step without a record here is caught
    for name, record in records.items():
        stored = json.dumps(encode_outputs(record))  # what the steps table's outputs_json holds
        assert step_outputs(name, stored) == record, name
        assert decode_outputs(STEP_OUTPUTS[name], json.loads(stored)) == record, name


def test_a_row_in_the_old_dict_shape_or_not_json_reads_as_nothing():
    old_convert = {"model_name": "m", "manifest": "/gguf/m/manifest.json",
                   "variants": [{"path": "/gguf/m/m-F16.gguf", "quant": "F16"}]}  # no sha256, model_name
    assert step_outputs("convert", json.dumps(old_convert)) is None
    assert step_outputs("evaluate", json.dumps({"evals": {"m-F16": ["x"]}, "sources": {}})) is None
    assert step_outputs("compare", "{not json") is None
    assert step_outputs("compare", None) is None and step_outputs("a step of another runner", "{}") is None


def test_convert_outputs_are_intact_only_while_every_file_is_there_at_its_size(tmp_path):
    gguf, lora, base = tmp_path / "m-F16.gguf", tmp_path / "lora.gguf", tmp_path / "b-F16.gguf"
    for path, size in ((gguf, 10), (lora, 3), (base, 5)):
        path.write_bytes(b"x" * size)
    route = AdapterRoute(base_gguf=base, base_sha256="b" * 64, lora=lora, lora_sha256="c" * 64, size_bytes=3)
    out = ConvertOut(model_name="m", manifest=tmp_path / "manifest.json",
                     variants=(Variant(path=gguf, quant="F16", sha256="a" * 64, model_name="m", size_bytes=10),),
                     routes=AdapterRoutes(merged=tmp_path / "merged", adapter=route))
    assert out.intact()
    lora.write_bytes(b"x" * 4)  # a GGUF LoRA of another size: not the one convert made
    assert not out.intact()
    lora.write_bytes(b"x" * 3)
    gguf.unlink()
    assert not out.intact()
    assert not ConvertOut(model_name="m", manifest=tmp_path / "manifest.json", variants=()).intact()
