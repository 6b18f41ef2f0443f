"""The pipeline on a real Ray cluster (three nodes on this machine over loopback, ray_cluster.py):
`posttrain stop` cancels the running step's cluster units and a rerun resumes with the same items;
a ladder's quantizations as units give the local conversion's files.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from polling import wait_for

pytest.importorskip("ray")

from posttrain.store import Store  # noqa: E402
from test_evaluate_offline import write_hellaswag  # noqa: E402

pytestmark = pytest.mark.slow

N_DOCS = 24


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("benchmarks")
    write_hellaswag(root, n=N_DOCS)
    return root


@pytest.fixture(scope="module")
def local_items(tiny_gguf, data_dir, tmp_path_factory) -> dict[str, list]:
    """HellaSwag's items for the tiny model's F16 and Q8_0, evaluated the usual way (in process, no executor)."""
    items = {}
    for quant in ("F16", "Q8_0"):
        home = tmp_path_factory.mktemp("local")
        done = subprocess.run([sys.executable, "-m", "posttrain", "eval", str(tiny_gguf[quant]), "--tasks",
                               "hellaswag", "--data-dir", str(data_dir), "--home", str(home)], capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        store = Store(home / "posttrain.db")
        items[quant] = store.evals.items([store.query("SELECT id FROM evals")[0]["id"]])
    return items


def _config(root: Path, cluster, data_dir: Path, baseline: Path, **extra) -> Path:
    lines = ['quants = ["q8_0"]', 'tasks = ["hellaswag"]', f'data_dir = "{data_dir}"', f'baseline = "{baseline}"',
             'executor = "ray"', f'ray_address = "{cluster.address}"', "shard_docs = 1",
             *(f"{k} = {v}" for k, v in extra.items()), "[ollama]", 'url = "http://127.0.0.1:9"']
    path = root / "posttrain.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _watch(config: Path, home: Path, watched: Path) -> list[str]:
    return [sys.executable, "-m", "posttrain", "watch", str(watched), "--once", "--config", str(config),
            "--home", str(home)]


def _running_units(cluster) -> int:
    return sum(len(cluster.running_units(node)) for node in range(len(cluster.temp_dirs)))


def test_posttrain_stop_cancels_the_cluster_units_and_a_rerun_resumes(cluster, tiny_spm, tiny_gguf, data_dir,
                                                                      local_items, tmp_path):
    watched, home = tmp_path / "watched", tmp_path / "home"
    shutil.copytree(tiny_spm, watched / "exp1" / "final_model")
    config = _config(tmp_path, cluster, data_dir, tiny_gguf["Q8_0"])
    proc = subprocess.Popen(_watch(config, home, watched), env=cluster.env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        # The evaluate step is on the cluster once one of its shards runs on a node.
        assert wait_for(lambda: _running_units(cluster) > 0 or proc.poll() is not None, timeout=300)
        assert proc.poll() is None, "the watcher ended before any shard ran"
        t0 = time.monotonic()
        stop = subprocess.run([sys.executable, "-m", "posttrain", "stop", "--home", str(home), "--config",
                               str(config), "--grace", "120"], capture_output=True, text=True, timeout=180,
                              env=cluster.env)
        stop_s = time.monotonic() - t0
        assert stop.returncode == 0 and "stopped cleanly" in stop.stdout, stop.stdout + stop.stderr
        # Cancelled, not finished: nothing of posttrain's runs on the cluster a few seconds later.
        assert wait_for(lambda: _running_units(cluster) == 0, timeout=20), "cluster units outlived the stop"
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    # The whole evaluation would take many shard-lengths; a stop that waited for the step would too.
    assert stop_s < 30, f"posttrain stop took {stop_s:.1f} s"
    print(f"posttrain stop returned in {stop_s:.1f} s")
    store = Store(home / "posttrain.db")
    (run,) = store.query("SELECT id, status FROM runs")
    assert run["status"] == "interrupted"
    steps = {r["name"]: r for r in store.steps.of_run(run["id"])}
    stopped = [name for name, r in steps.items() if r["status"] == "interrupted"]
    assert stopped in (["evaluate"], ["evaluate_baseline"]), {n: r["status"] for n, r in steps.items()}
    assert "outstanding; they were cancelled" in steps[stopped[0]]["error"]
    store.close()

    rerun = subprocess.run(_watch(config, home, watched), env=cluster.env, capture_output=True, text=True,
                           timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    store = Store(home / "posttrain.db")
    (run,) = store.query("SELECT id, status FROM runs")
    assert run["status"] == "succeeded"
    linked = store.query("SELECT label, eval_id FROM run_evals WHERE run_id=?", (run["id"],))
    # The run converts F16 and Q8_0 of the same checkpoint the local items come from; the baseline is that Q8_0.
    want = {"exp1-F16": local_items["F16"], "exp1-Q8_0": local_items["Q8_0"], "baseline": local_items["Q8_0"]}
    assert {r["label"] for r in linked} == set(want)
    for r in linked:
        assert store.evals.items([r["eval_id"]]) == want[r["label"]], r["label"]
    # One evaluation per (model, task): the interrupted attempt stored nothing half-done.
    assert store.query("SELECT COUNT(*) AS n FROM evals WHERE task='hellaswag'")[0]["n"] == len(
        {r["eval_id"] for r in linked})


def _convert(ckpt: Path, out: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "posttrain", "convert", str(ckpt), "--out", str(out), "--quant",
                           "q4_k_m,q5_k_m", "--verbose", *extra], capture_output=True, text=True, timeout=600,
                          env=env)


@pytest.fixture(scope="module")
def local_ladder(tiny_spm, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local-ladder")
    local = _convert(tiny_spm, out)
    assert local.returncode == 0, local.stderr[-3000:]
    return out


@pytest.mark.parametrize("shared", [False, True], ids=["object-store", "shared-dir"])
def test_quantizing_a_ladder_on_the_cluster_gives_the_local_files(cluster, tiny_spm, local_ladder, tmp_path, shared):
    import json

    # Under --shared-dir the F16 is read in place and the variants are written there by the workers.
    extra = ("--shared-dir", str(tmp_path)) if shared else ()
    t0 = time.monotonic()
    remote = _convert(tiny_spm, tmp_path / "ray", "--executor", "ray", "--ray-address", cluster.address, *extra,
                      env=cluster.env)
    print(f"cluster conversion ({'shared dir' if shared else 'object store'}): {time.monotonic() - t0:.1f} s")
    assert remote.returncode == 0, remote.stdout[-3000:] + remote.stderr[-3000:]
    want = json.loads((local_ladder / "manifest.json").read_text())["variants"]
    got = json.loads((tmp_path / "ray" / "manifest.json").read_text())["variants"]
    assert set(got) == {"F16", "Q4_K_M", "Q5_K_M"}
    for quant in got:
        assert got[quant]["sha256"] == want[quant]["sha256"], quant
        from posttrain._files import sha256_file

        assert sha256_file(tmp_path / "ray" / got[quant]["path"]) == want[quant]["sha256"], quant
    # Both variants were units on the cluster's nodes (the converter's own log says where each was made).
    made_on = [line for line in (remote.stdout + remote.stderr).splitlines() if "made on" in line]
    assert len(made_on) == 2, remote.stdout[-3000:] + remote.stderr[-3000:]
    assert not list((tmp_path / "ray").glob(".*partial*")), "a partial file was left behind"


def test_the_watcher_runs_two_checkpoints_at_once_on_the_cluster(cluster, tiny_gguf, data_dir, tmp_path):
    """`--jobs 2`: two finished checkpoints are two runs at once, and their evaluation units share the cluster."""
    import threading

    from posttrain.tiny import make_tiny

    watched, home = tmp_path / "watched", tmp_path / "home"
    for i, name in enumerate(("exp1", "exp2")):
        make_tiny(watched / name / "final_model", seed=10 + i)
    config = _config(tmp_path, cluster, data_dir, tiny_gguf["Q8_0"], jobs=2, limit=8)
    # Q4_K_M comes from the quantizer: in a pipeline run too, a unit on the cluster (convert/_remote.py).
    config.write_text(config.read_text().replace('quants = ["q8_0"]', 'quants = ["q4_k_m"]'))
    seen: list[tuple[float, int, str]] = []  # (time, node, the unit's name from its worker's process title)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            now = time.monotonic()
            for node in range(len(cluster.temp_dirs)):
                for proc in cluster.running_units(node):
                    try:
                        seen.append((now, node, " ".join(proc.cmdline())))
                    except Exception:  # noqa: BLE001 - the unit ended between listing and reading
                        pass
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.monotonic()
    try:
        run = subprocess.run(_watch(config, home, watched), env=cluster.env, capture_output=True, text=True,
                             timeout=900)
    finally:
        done.set()
        sampler.join(timeout=30)
    print(f"two checkpoints with --jobs 2 on the cluster: {time.monotonic() - t0:.1f} s")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    store = Store(home / "posttrain.db")
    runs = store.query("SELECT id, status, run_dir FROM runs ORDER BY id")
    assert [r["status"] for r in runs] == ["succeeded", "succeeded"], runs
    for r in runs:
        logged = (Path(r["run_dir"]) / "logs" / "convert.log").read_text()
        assert " Q4_K_M of exp" in logged and " quantized on " in logged, logged[-2000:]
    # The two runs' evaluate steps ran at the same time (the store's step times) ...
    spans = [(r["started_at"], r["finished_at"]) for r in store.query(
        "SELECT started_at, finished_at FROM steps WHERE name='evaluate' ORDER BY run_id")]
    assert max(start for start, _ in spans) < min(end for _, end in spans), spans
    # ... and so did their units on the cluster: each run's first and last unit seen span the same time.
    units: dict[str, list[float]] = {"exp1-": [], "exp2-": []}
    for when, _node, title in seen:
        for model, times in units.items():
            if f" of {model}" in title:
                times.append(when)
    assert all(units.values()), f"units of a run never seen on the cluster: {sorted({t for _, _, t in seen})[:10]}"
    assert max(min(t) for t in units.values()) < min(max(t) for t in units.values()), "one run's units all came first"
    # How often units of both were running at the very same moment depends on Ray's queue order (a figure only).
    at: dict[float, set[str]] = {}
    for when, _node, title in seen:
        for model in units:
            if f" of {model}" in title:
                at.setdefault(when, set()).add(model)
    print(f"samples with units of both runs running: {sum(len(m) == 2 for m in at.values())} of {len(at)}")


def test_a_foreground_run_with_its_display_shards_on_the_cluster(cluster, tiny_spm, tiny_gguf, data_dir, tmp_path):
    # `posttrain run` in the foreground shows one display and its step children report to it through
    # progress files; a sharded evaluation also notes the nodes in use (detail), which the children's
    # reporter lacked: every such run failed in its evaluate step with an AttributeError (issue 30).
    home = tmp_path / "home"
    config = _config(tmp_path, cluster, data_dir, tiny_gguf["F16"])
    ckpt = tmp_path / "exp" / "final_model"
    shutil.copytree(tiny_spm, ckpt)
    done = subprocess.run([sys.executable, "-m", "posttrain", "run", str(ckpt), "--config", str(config),
                           "--home", str(home)], capture_output=True, text=True, timeout=900, env=cluster.env)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    store = Store(home / "posttrain.db")
    steps = {r["name"]: r["status"] for r in store.query("SELECT name, status FROM steps")}
    assert steps["evaluate"] == "done", steps
    assert "report:" in done.stdout
