"""Crash consistency the way SQLite tests it (issue 33), on a few cases; benchmarks/crash_consistency.py
runs many more (50 instants, every write).

A real `posttrain run` (tiny Llama → F16 and Q8_0 by llama.cpp, a tiny baseline converted too,
hellaswag through lm-eval, compare, report) is run once cleanly, then

- killed with its whole process tree (kill -9) at instants spread over the clean run's wall time,
  and run again: the rerun ends with the clean run's report, the store passes `PRAGMA
  integrity_check`, no temporary file and no process is left, and every output that exists, after
  the kill as after the rerun, is complete (GGUFs parse to the end and match their manifest);
- given ENOSPC or EIO at its k-th write (posttrain's atomic writes and store transactions, counted
  across its process tree; tests/fault_site/ wraps posttrain's one seam in the processes the harness
  starts): the run exits 1 with a line naming the file, and the rerun ends with the clean report.

The cases and checks are in tests/crash_harness.py.
"""

from __future__ import annotations

import crash_harness as h
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[h.Inputs, h.Clean, object]:
    root = tmp_path_factory.mktemp("crash")
    inputs = h.make_inputs(root / "inputs")
    return inputs, h.clean_run(inputs, root / "clean"), root


def test_the_clean_run_is_its_own_reference(reference):
    _, clean, root = reference
    # The harness's checks hold for the clean run itself, and its writes were all counted.
    home = root / "clean"
    assert h.integrity_problems(home) == [] and h.temporary_files(home) == [] and h.incomplete_outputs(home) == []
    written = {w[2] for w in clean.writes}
    assert str(home / "posttrain.db") in written
    assert any(p.endswith("manifest.json") for p in written) and any(p.endswith("report.json") for p in written)


def test_a_run_killed_at_any_instant_resumes_to_the_clean_report(reference):
    inputs, clean, root = reference
    failed = []
    for i, at in enumerate(h.spread(clean.wall_s, 3)):
        case = h.kill_case(inputs, root / f"kill-{i}", at, clean)
        if not case.ok:
            failed.append((case.detail, case.problems))
    assert failed == []


@pytest.mark.parametrize("where, error", [(0.1, "ENOSPC"), (0.3, "EIO"), (0.9, "ENOSPC")])
def test_an_io_error_at_a_write_fails_the_run_and_the_rerun_recovers(reference, where, error):
    inputs, clean, root = reference
    k = max(1, round(where * len(clean.writes)))
    case = h.fault_case(inputs, root / f"fault-{k}", k, error, clean)
    assert "not reached" not in case.detail
    assert case.problems == [], case.detail
