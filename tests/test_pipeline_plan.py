"""Run ids: the same checkpoint and settings always name the same run (so a rerun resumes it)."""

from __future__ import annotations

import shutil

import pytest

from posttrain.errors import CheckpointIncomplete
from posttrain.pipeline import Stages, load_config, plan_run


def test_the_same_checkpoint_and_settings_give_the_same_run(tiny_spm, tmp_path):
    config = load_config(discover=False, home=tmp_path / "home")
    first, second = plan_run(tiny_spm, config), plan_run(tiny_spm, config)
    assert first.run_id == second.run_id
    assert first.run_id.startswith("tiny-spm-") and first.checkpoint_sha256[:10] in first.run_id
    assert first.run_dir == tmp_path / "home" / "runs" / first.run_id
    # A copy elsewhere with the same content and the same settings is the same run.
    copy = tmp_path / "elsewhere" / "tiny-spm"
    shutil.copytree(tiny_spm, copy)
    assert plan_run(copy, config).run_id == first.run_id
    # Settings that change results give another run; where outputs go does not.
    assert plan_run(tiny_spm, load_config(discover=False, home=tmp_path / "home", limit=10)).run_id != first.run_id
    assert plan_run(tiny_spm, load_config(discover=False, home=tmp_path / "other")).run_id == first.run_id


def test_an_incomplete_checkpoint_is_not_planned(tiny_spm, tmp_path):
    half = tmp_path / "half"
    shutil.copytree(tiny_spm, half)
    (half / "tokenizer.model").unlink()
    (half / "tokenizer.json").unlink()
    with pytest.raises(CheckpointIncomplete, match="no tokenizer"):
        plan_run(half, load_config(discover=False))


def test_the_stage_list_and_its_dependencies():
    steps = {s.name: s for s in Stages(load_config(discover=False)).steps()}
    assert tuple(steps) == ("detect", "convert", "register", "baseline", "evaluate", "evaluate_baseline", "compare",
                            "report", "track", "notify")
    # Evaluating the variants needs neither Ollama nor the baseline.
    assert steps["evaluate"].depends_on == ("convert",)
    assert "register" not in steps["compare"].depends_on
    assert steps["report"].always and steps["notify"].always
    # Tracking comes after the report (it sends it) and before notify (which says when it failed).
    assert steps["track"].always and steps["track"].depends_on == ("report",)
    assert "track" in steps["notify"].depends_on
