"""The ship ladder's measurements on a real tiny model: KL divergence on real text and llama-bench speed.

The tiny model (hidden 256, so every k-quant applies without fallback types) separates the variants
by about an order of magnitude each in mean KLD, with standard errors of ~2% of the mean: the order
below is not a coin flip (checked on this model: Q8_0 0.0010, Q6_K 0.0092, Q4_K_M 0.107, Q3_K_M 0.32).
"""

from __future__ import annotations

import pytest

from posttrain.errors import PosttrainError
from posttrain.ship import read_text, run_child
from posttrain.tiny import corpus

LADDER = ["f16", "q8_0", "q6_k", "q4_k_m", "q3_k_m"]


@pytest.fixture(scope="module")
def ladder(tiny_spm, tmp_path_factory) -> dict[str, str]:
    from posttrain.convert import convert_checkpoint

    result = convert_checkpoint(tiny_spm, tmp_path_factory.mktemp("ladder"), LADDER, verify=False)
    return {v.quant: str(v.path) for v in result.variants}


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    # Sentences the tiny tokenizer knows, from a different seed than its training corpus.
    path = tmp_path_factory.mktemp("text") / "heldout.txt"
    path.write_text("\n".join(corpus(2000, seed=7)))
    return path


def test_kld_orders_the_ladder_and_f16_against_itself_is_zero(ladder, held_out, tmp_path):
    variants = {q: p for q, p in ladder.items() if q != "F16"}
    variants["F16 again"] = ladder["F16"]  # a second, independent load of the same file
    res = run_child({"kind": "quality", "base": ladder["F16"], "variants": variants, "text_file": str(held_out),
                     "n_ctx": 128, "max_chunks": 6}, tmp_path / "quality.log")
    assert res["n_chunks"] == 6 and res["n_scored"] == 6 * 63
    v = res["variants"]
    klds = [v[q]["kld_mean"] for q in ("Q8_0", "Q6_K", "Q4_K_M", "Q3_K_M")]
    assert klds == sorted(klds), klds
    # Each step of the ladder is separated by far more than its standard errors.
    for lo, hi in zip(("Q8_0", "Q6_K", "Q4_K_M"), ("Q6_K", "Q4_K_M", "Q3_K_M")):
        assert v[hi]["kld_mean"] - v[lo]["kld_mean"] > 5 * (v[hi]["kld_se"] + v[lo]["kld_se"])
    assert v["Q8_0"]["same_top_pct"] > v["Q3_K_M"]["same_top_pct"]
    assert v["Q8_0"]["rms_dp_pct"] < v["Q3_K_M"]["rms_dp_pct"]
    same = v["F16 again"]
    assert abs(same["delta_ppl"]) < 1e-6 and same["kld_mean"] == pytest.approx(0, abs=1e-9)
    assert same["delta_ppl_ci"][0] <= 0 <= same["delta_ppl_ci"][1] and same["same_top_pct"] == 100.0
    # The quantized variants' ΔPPL interval is a real interval around its estimate.
    q3 = v["Q3_K_M"]
    assert q3["delta_ppl_ci"][0] < q3["delta_ppl"] < q3["delta_ppl_ci"][1]
    assert q3["kld_median"] <= q3["kld_p99"] <= q3["kld_p999"] <= q3["kld_max"]


def test_too_little_text_is_one_line_with_a_remedy(ladder, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("The cat sees the door.")
    with pytest.raises(PosttrainError, match="at least 256 are needed") as err:
        run_child({"kind": "quality", "base": ladder["F16"], "variants": {"Q8_0": ladder["Q8_0"]},
                   "text_file": str(short), "n_ctx": 128}, tmp_path / "quality.log")
    assert "--text" in err.value.remedy


def test_speed_records_threads_build_and_bits_per_weight(ladder, tmp_path):
    res = run_child({"kind": "speed", "paths": {"F16": ladder["F16"], "Q4_K_M": ladder["Q4_K_M"]}, "reps": 3},
                    tmp_path / "speed.log")
    for quant in ("F16", "Q4_K_M"):
        r = res[quant]
        assert r["pp_tok_s"] > 0 and r["tg_tok_s"] > 0 and len(r["pp_tok_s_all"]) == 3
        assert r["threads"] >= 1 and "CPU" in r["build"]
    assert res["Q4_K_M"]["bits_per_weight"] < res["F16"]["bits_per_weight"]
    assert 15 < res["F16"]["bits_per_weight"] < 20  # 16 bits plus the GGUF's metadata and vocabulary


def test_text_from_a_folder_of_compressed_and_plain_files(tmp_path):
    import bz2

    (tmp_path / "b.txt.bz2").write_bytes(bz2.compress("second file".encode()))
    (tmp_path / "a.txt").write_text("first file")
    (tmp_path / "skip.bin").write_bytes(b"\x00\x01")
    text, files = read_text(tmp_path)
    assert text == "first file\n\nsecond file" and len(files) == 2
    with pytest.raises(PosttrainError, match="does not exist"):
        read_text(tmp_path / "missing")


def test_stored_f16_rows_give_the_exact_kld_to_well_within_its_error(tmp_path):
    # F16's rows go through uint16 on disk (the quality pass loads one model at a time); renormalised on
    # reading, a row against itself is ~0 and against another distribution moves by a tiny fraction.
    import numpy as np
    from scipy import special

    from posttrain.ship._base_rows import BaseRows

    rng = np.random.default_rng(0)
    n_chunks, scored, vocab = 3, 70, 5000  # 70 rows: more than one block of 64
    logits = rng.normal(0, 4, (n_chunks, scored, vocab))
    logits[0, 0, :10] = -80.0  # far below the stored range: stored as "zero probability"
    base = special.log_softmax(logits, axis=2)
    other = special.log_softmax(base + rng.normal(0, 0.05, base.shape), axis=2)
    nxt = rng.integers(0, vocab, (n_chunks, scored))
    rows = BaseRows.create(tmp_path / "f16.rows", n_chunks, scored, vocab)
    for c in range(n_chunks):
        rows.append(base[c], nxt[c])
    rows.finish()
    assert (tmp_path / "f16.rows").stat().st_size == rows.nbytes == n_chunks * scored * vocab * 2
    for c in range(n_chunks):
        assert np.array_equal(rows.nll[c], -base[c][np.arange(scored), nxt[c]])
        assert np.array_equal(rows.top[c], base[c].argmax(axis=1))
        got = np.concatenate([b for _, b in rows.blocks(c)])
        exact = (np.exp(base[c]) * (base[c] - other[c])).sum(axis=1)
        with np.errstate(invalid="ignore"):
            stored = np.nansum(np.exp(got) * (got - other[c]), axis=1)
            self_kld = np.nansum(np.exp(got) * (got - base[c]), axis=1)
        assert np.abs(self_kld).max() < 1e-7
        # A Q8_0-sized KLD (~1e-3 nats): per position within 1%, the mean within 0.1%.
        assert np.abs(stored - exact).max() < 1e-2 * exact.mean()
        assert abs(stored.mean() - exact.mean()) < 1e-3 * exact.mean()


def test_stale_scratch_of_a_killed_ladder_is_removed_and_a_live_one_kept(tmp_path):
    import os
    import subprocess
    import sys

    from posttrain.ship._ladder import SCRATCH_PREFIX, remove_stale_scratch

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / f"{SCRATCH_PREFIX}{gone.stdout.strip()}-abc"
    live = tmp_path / f"{SCRATCH_PREFIX}{os.getpid()}-def"
    for folder in (dead, live):
        folder.mkdir()
        (folder / "f16.rows").write_bytes(b"\0" * 10)
    remove_stale_scratch(tmp_path)
    assert not dead.exists() and (live / "f16.rows").exists()
