"""Training the demo model: both checkpoints are real, complete HF checkpoints, and the final one
really is better than the early one (the demo's promise)."""

from __future__ import annotations

import json

import pytest
from safetensors.numpy import load_file
from transformers import TrainerCallback

from posttrain.checkpoint import inspect_checkpoint
from posttrain.demo import TASK_NAME, train_demo_model, write_demo_task


class _Events(TrainerCallback):
    """Records which Trainer events reached an attached callback."""

    def __init__(self):
        self.events = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.events.append("begin")

    def on_train_end(self, args, state, control, **kwargs):
        self.events.append(("end", state.global_step))


def test_short_training_writes_early_and_final_checkpoints(tmp_path):
    import torch

    seen = _Events()
    threads = torch.get_num_threads()
    ck = train_demo_model(tmp_path, steps=6, early_step=2, callback=seen, threads=1)
    assert torch.get_num_threads() == threads  # the caller's thread setting is given back
    assert ck.early == tmp_path / "checkpoint-early" and ck.final == tmp_path / "final_model"
    for path in (ck.early, ck.final):
        verdict = inspect_checkpoint(path, settle_seconds=0)
        assert verdict.complete, verdict.reason
        assert verdict.architecture == "LlamaForCausalLM"
        assert (path / "model.safetensors").is_file() and (path / "tokenizer.model").is_file()
        cfg = json.loads((path / "config.json").read_text())
        # Multiples of 256: Q4_K_M uses k-quants for every matrix.
        assert cfg["hidden_size"] % 256 == 0 and cfg["intermediate_size"] % 256 == 0
    assert not list(tmp_path.glob("*.partial"))
    early, final = load_file(ck.early / "model.safetensors"), load_file(ck.final / "model.safetensors")
    assert set(early) == set(final)
    assert any(not (early[k] == final[k]).all() for k in early), "four more steps changed no weight"
    assert seen.events == ["begin", ("end", 6)]
    assert ck.steps == 6 and ck.train_seconds > 0 and ck.final_loss is not None


def test_training_is_deterministic_for_a_seed(tmp_path):
    a = train_demo_model(tmp_path / "a", steps=4, early_step=1, threads=1)
    b = train_demo_model(tmp_path / "b", steps=4, early_step=1, threads=1)
    wa, wb = load_file(a.final / "model.safetensors"), load_file(b.final / "model.safetensors")
    assert all((wa[k] == wb[k]).all() for k in wa)


def test_early_step_must_come_before_the_end(tmp_path):
    with pytest.raises(ValueError, match="early_step"):
        train_demo_model(tmp_path, steps=3, early_step=3)


def _per_item_acc(model_dir, task) -> list[float]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    res = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={model_dir},dtype=float32", device="cpu",
                                  tasks=[task.name], task_manager=TaskManager(include_path=task.include_path),
                                  log_samples=True, batch_size=32)
    samples = sorted(res["samples"][TASK_NAME], key=lambda s: s["doc_id"])
    return [s["acc"] for s in samples]


@pytest.mark.slow
def test_full_training_makes_the_final_model_significantly_better_than_the_early_one(tmp_path):
    from scipy.stats import binomtest

    task = write_demo_task(tmp_path / "task")
    ck = train_demo_model(tmp_path / "train")
    early, final = _per_item_acc(ck.early, task), _per_item_acc(ck.final, task)
    assert len(early) == len(final) == task.n_test
    acc_early, acc_final = sum(early) / len(early), sum(final) / len(final)
    assert acc_early < 0.40, f"the baseline should be near chance (25 %), got {acc_early:.2f}"
    assert acc_final - acc_early >= 0.30, f"{acc_early:.2f} -> {acc_final:.2f}"
    # Exact McNemar: among the discordant items, how many flipped each way.
    gained = sum(1 for e, f in zip(early, final) if f > e)
    lost = sum(1 for e, f in zip(early, final) if e > f)
    assert binomtest(gained, gained + lost, 0.5).pvalue < 0.01
