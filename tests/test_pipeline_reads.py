"""A run reads the checkpoint's bytes once (issue 12): hashing a multi-GB checkpoint takes minutes, and
the first version did it three or four times per run. Counted from posttrain's own "hashing" log line,
in-process (the runner's isolation off, so every step logs here)."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from posttrain.pipeline import load_config
from posttrain.pipeline._stages import Stages, plan_run
from posttrain.pipeline._runner import Runner
from posttrain.store import Store

pytestmark = pytest.mark.slow


def test_a_run_hashes_its_checkpoint_once(tmp_path, tiny_spm, caplog):
    data = tmp_path / "data" / "hellaswag"
    data.mkdir(parents=True)
    rows = [{"ind": i, "activity_label": "Pets", "ctx_a": "The cat walks home.", "ctx_b": "the cat", "ctx": "",
             "label": "0", "split": "val", "split_type": "indomain", "source_id": f"x{i}",
             "endings": [f"sees door {i}.", f"finds ball {i}.", f"opens book {i}.", f"eats {i} apples."]}
            for i in range(4)]
    (data / "hellaswag_val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ckpt = tmp_path / "exp" / "final_model"
    shutil.copytree(tiny_spm, ckpt)
    config = load_config(None, discover=False, home=tmp_path / "home", quants="f16", tasks="hellaswag",
                         data_dir=tmp_path / "data", limit=4, ollama={"url": "http://127.0.0.1:9"})
    caplog.set_level(logging.INFO, logger="posttrain.checkpoint")

    spec = plan_run(ckpt, config)
    result = Runner(Store(config.store_path), Stages(config).steps(), isolate=False).run(spec)

    assert result.status == "succeeded", [(s.name, s.error) for s in result.failures()]
    hashed = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"hashing {ckpt}")]
    assert len(hashed) == 1, hashed
